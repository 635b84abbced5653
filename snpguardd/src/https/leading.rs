//! The start of a `/v1/renew` body, read before the body is whole: a
//! renewal body must open with its nonce, so that a request whose nonce
//! is bad is refused before megabytes of kernel and initrd are received.
//! Public for the fuzz target `renew_leading_nonce`, which checks that a
//! verdict never changes as more of the body arrives and that the nonce
//! read here is the one the whole body carries.

/// Most bytes a `/v1/renew` body may take to reach the end of its nonce.
pub const LEADING_MAX: usize = 1024;
/// Longest nonce text read from the start of a renewal body (a nonce is
/// 43 characters; the handler refuses anything else by its own rules).
pub const MAX_NONCE_TEXT: usize = 128;

/// What the start of a `/v1/renew` body says about its nonce.
#[derive(Debug, PartialEq, Eq)]
pub enum Leading {
    /// The body opens with `{"nonce": "<nonce>"`.
    Nonce(String),
    /// Not enough has arrived to tell.
    NeedMore,
    /// The body does not open with a `nonce` member.
    NotFirst,
}

/// Reads the `nonce` member a `/v1/renew` body must open with: `{`, the
/// key `"nonce"` written literally, `:`, and a string of base64url
/// characters, with JSON whitespace between (at most [`LEADING_MAX`]
/// bytes in all).
pub fn leading_nonce(buf: &[u8]) -> Leading {
    // Only the first LEADING_MAX bytes count, however many have arrived:
    // the verdict must not depend on how the body was cut into reads.
    let buf = &buf[..buf.len().min(LEADING_MAX)];
    let mut i = 0;
    let ws = |i: &mut usize| {
        while buf
            .get(*i)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            *i += 1;
        }
    };
    // Each literal part must match as far as it has arrived.
    let lit = |i: &mut usize, want: &[u8]| -> Option<Leading> {
        let have = &buf[(*i).min(buf.len())..];
        let n = have.len().min(want.len());
        if have[..n] != want[..n] {
            return Some(Leading::NotFirst);
        }
        if n < want.len() {
            return Some(Leading::NeedMore);
        }
        *i += want.len();
        None
    };
    for part in [&b"{"[..], b"\"nonce\"", b":", b"\""] {
        ws(&mut i);
        if let Some(end) = lit(&mut i, part) {
            return too_long(buf, end);
        }
    }
    let start = i;
    while let Some(&b) = buf.get(i) {
        match b {
            b'"' => {
                // Only base64url characters were accepted.
                let nonce = String::from_utf8_lossy(&buf[start..i]).into_owned();
                return Leading::Nonce(nonce);
            }
            b if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' => {}
            _ => return Leading::NotFirst,
        }
        if i - start >= MAX_NONCE_TEXT {
            return Leading::NotFirst;
        }
        i += 1;
    }
    too_long(buf, Leading::NeedMore)
}

fn too_long(buf: &[u8], verdict: Leading) -> Leading {
    if verdict == Leading::NeedMore && buf.len() >= LEADING_MAX {
        Leading::NotFirst
    } else {
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewal_body_opens_with_its_nonce() {
        let n = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let full = format!("{{\"nonce\":\"{n}\",\"report\":\"");
        assert_eq!(leading_nonce(full.as_bytes()), Leading::Nonce(n.into()));
        // Every prefix of it waits for more.
        for cut in 0..full.find(n).unwrap() + n.len() + 1 {
            assert_eq!(
                leading_nonce(&full.as_bytes()[..cut]),
                Leading::NeedMore,
                "{cut}"
            );
        }
        let spaced = format!(" \n{{ \"nonce\"\t:\r\n \"{n}\" }}");
        assert_eq!(leading_nonce(spaced.as_bytes()), Leading::Nonce(n.into()));
        for bad in [
            "[",
            "{}",
            "{\"report\":\"x\",\"nonce\":\"x\"}",
            "{\"nonce\":1}",
            "{\"nonce\":null}",
            "{\"Nonce\":\"x\"}",
            "{\"\\u006eonce\":\"x\"}",
            "{\"nonce\":\"a\\u0041\"}",
            "{\"nonce\":\"a+b\"}",
        ] {
            assert_eq!(leading_nonce(bad.as_bytes()), Leading::NotFirst, "{bad}");
        }
        // Bounded: a nonce text or leading whitespace without end.
        let long = format!("{{\"nonce\":\"{}", "A".repeat(MAX_NONCE_TEXT + 1));
        assert_eq!(leading_nonce(long.as_bytes()), Leading::NotFirst);
        let padded = " ".repeat(LEADING_MAX);
        assert_eq!(leading_nonce(padded.as_bytes()), Leading::NotFirst);
        assert_eq!(leading_nonce(&padded.as_bytes()[1..]), Leading::NeedMore);
        // A nonce that ends beyond the bound is refused whether the body
        // arrived in one read or in several (found by the fuzzer).
        let late = format!("{padded}{{\"nonce\":\"{n}\"}}");
        assert_eq!(leading_nonce(late.as_bytes()), Leading::NotFirst);
        assert_eq!(
            leading_nonce(&late.as_bytes()[..LEADING_MAX]),
            Leading::NotFirst
        );
    }
}
