//! Connection floods from one source address (review item M4): a source
//! holds at most `max_connections_per_source` connections, each accepted
//! connection costs it a rate-limit token, and a connection that sends no
//! ClientHello is closed after `client_hello_timeout`. 127.0.0.1 and
//! 127.0.0.2 are distinct sources on loopback.

use std::net::Ipv4Addr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

const OTHER_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// The first bytes of a TLS record carrying a ClientHello, and no more:
/// a handshake that never completes.
const PARTIAL_CLIENT_HELLO: [u8; 6] = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01];

/// Whether the server closes `stream` before `DEADLINE` (EOF or reset).
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_idle_connections_from_one_source_do_not_stop_another_from_attesting() {
    // Timeouts far beyond the test's deadline: only the per-source limit
    // can keep a slot free for the other source.
    let limits = Limits {
        max_connections: 64,
        max_connections_per_source: 16,
        per_ip_burst: 10_000,
        per_ip_rate: 10_000.0,
        client_hello_timeout: Duration::from_secs(120),
        handshake_timeout: Duration::from_secs(120),
        header_timeout: Duration::from_secs(120),
        ..Limits::default()
    };
    let handler = Arc::new(Double::default());
    let server = start_shared(handler.clone(), limits).await;

    // 127.0.0.1 fills its share with finished handshakes that never send
    // a request...
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(raw_tls(&server).await);
    }
    // ...then opens 300 more: idle TCP and half-open TLS handshakes.
    let mut flood = Vec::new();
    for i in 0..300 {
        // A server that stopped accepting leaves connections in the
        // listen backlog until it is full; then stop flooding and let the
        // other source show whether it is served.
        let connect = TcpStream::connect(server.addr);
        let Ok(Ok(mut tcp)) = tokio::time::timeout(Duration::from_secs(1), connect).await else {
            break;
        };
        if i % 2 == 1 {
            // The server may already have closed it; that is the point.
            let _ = tcp.write_all(&PARTIAL_CLIENT_HELLO).await;
        }
        flood.push(tcp);
    }

    // 127.0.0.2 attests at once, without waiting for any timeout.
    let other = server.target.clone().from_source(OTHER_SOURCE);
    let attest = async {
        let conn = other.connect().await.expect("connect from 127.0.0.2");
        conn.post_json("/v1/attest", serde_json::to_vec(&request()).expect("json"))
            .await
            .expect("attest")
    };
    let (status, body) = tokio::time::timeout(DEADLINE, attest)
        .await
        .expect("127.0.0.2 was served while 127.0.0.1 held its connections");
    assert_eq!(status.as_u16(), 200, "{body:?}");
    assert_eq!(
        handler.seen.lock().expect("seen").last().map(|(_, p)| *p),
        Some(OTHER_SOURCE)
    );

    // Every connection over 127.0.0.1's limit was closed at accept; the
    // ones within it are still open.
    assert_eq!(flood.len(), 300);
    for (i, tcp) in flood.iter_mut().enumerate() {
        assert!(
            closed_by_server(tcp).await,
            "flood connection {i} still open"
        );
    }
    let (status, _) = {
        let mut tls = held.pop().expect("a held connection");
        tls.write_all(b"GET /v1/health HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .expect("request");
        let raw = read_until_close(&mut tls).await;
        let text = String::from_utf8_lossy(&raw).into_owned();
        (text.get(9..12).map(str::to_owned), text)
    };
    assert_eq!(status.as_deref(), Some("200"));
    drop(held);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_connection_without_a_client_hello_is_closed_after_its_timeout() {
    // The whole handshake may take a minute; the ClientHello may not.
    let limits = Limits {
        client_hello_timeout: Duration::from_millis(300),
        handshake_timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let server = start(Double::default(), limits).await;
    for partial in [&[][..], &PARTIAL_CLIENT_HELLO[..]] {
        let started = Instant::now();
        let mut tcp = TcpStream::connect(server.addr).await.expect("tcp");
        tcp.write_all(partial).await.expect("write");
        assert!(closed_by_server(&mut tcp).await, "{partial:?}");
        assert!(started.elapsed() < Duration::from_secs(30));
    }
    // A client that says hello in time is served.
    let (status, _) = server.conn().await.get("/v1/health").await.expect("health");
    assert_eq!(status.as_u16(), 200);
}

#[tokio::test]
async fn an_accepted_connection_costs_a_rate_limit_token() {
    let limits = Limits {
        per_ip_burst: 3,
        per_ip_rate: 0.001,
        ..Limits::default()
    };
    let server = start(Double::default(), limits).await;
    // Three idle connections take the three tokens.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(server.addr).await.expect("tcp"));
    }
    // The fourth is closed at accept, before any TLS.
    let mut fourth = TcpStream::connect(server.addr).await.expect("tcp");
    assert!(closed_by_server(&mut fourth).await);
    assert!(server.target.connect().await.is_err());
    // Another source has its own bucket.
    let other = server.target.clone().from_source(OTHER_SOURCE);
    let (status, _) = other
        .connect()
        .await
        .expect("connect from 127.0.0.2")
        .get("/v1/health")
        .await
        .expect("health");
    assert_eq!(status.as_u16(), 200);
}
