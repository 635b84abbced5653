//! Per-source rate limit: a token bucket per client address, in a map of
//! bounded size.
//!
//! A source is an IPv4 address or an IPv6 /64 (one host usually holds a
//! whole /64, so finer keys would let it mint fresh buckets at will).
//! When the map is full, buckets that have refilled completely are
//! dropped first (losslessly: a new bucket starts full, too); if none
//! has, the source seen longest ago is evicted.
//!
//! [`ConnectionCounts`] caps the connections one source (same key) holds
//! open at once, so that one address cannot take every connection slot
//! of the listener with idle or half-open connections.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Token buckets keyed by source.
pub(crate) struct RateLimiter {
    rate: f64,
    burst: f64,
    max_sources: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn refilled(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (self.tokens + elapsed * rate).min(burst)
    }
}

impl RateLimiter {
    /// `rate` tokens per second, at most `burst` saved, at most
    /// `max_sources` buckets. The caller has checked `rate > 0`,
    /// `burst >= 1` and `max_sources >= 1`.
    pub(crate) fn new(rate: f64, burst: u32, max_sources: usize) -> Self {
        RateLimiter {
            rate,
            burst: f64::from(burst),
            max_sources,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `ip`; false when its bucket is empty.
    pub(crate) fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let key = source_key(ip);
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !buckets.contains_key(&key) && buckets.len() >= self.max_sources {
            self.evict(&mut buckets, now);
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        bucket.tokens = bucket.refilled(now, self.rate, self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn evict(&self, buckets: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        buckets.retain(|_, b| b.refilled(now, self.rate, self.burst) < self.burst);
        if buckets.len() >= self.max_sources {
            let oldest = buckets.iter().min_by_key(|(_, b)| b.last).map(|(k, _)| *k);
            if let Some(k) = oldest {
                buckets.remove(&k);
            }
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

/// Open connections per source, at most `max` each. The map holds only
/// sources with an open connection, so it is bounded by the listener's
/// connection limit.
pub(crate) struct ConnectionCounts {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection of a source; gives its place back when dropped.
pub(crate) struct ConnectionPermit {
    counts: Arc<ConnectionCounts>,
    key: IpAddr,
}

impl ConnectionCounts {
    /// At most `max` (checked `>= 1` by the caller) per source.
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(ConnectionCounts {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more connection of `ip`; `None` when its source
    /// already holds `max`.
    pub(crate) fn open(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionPermit> {
        let key = source_key(ip);
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ConnectionPermit {
            counts: self.clone(),
            key,
        })
    }

    #[cfg(test)]
    fn sources(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self
            .counts
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The bucket key of an address: IPv4 (also when IPv4-mapped) as is,
/// IPv6 cut to its /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn burst_then_refill() {
        let rl = RateLimiter::new(2.0, 3, 10);
        let t0 = Instant::now();
        assert!((0..3).all(|_| rl.allow(v4(1), t0)));
        assert!(!rl.allow(v4(1), t0));
        // Other sources have their own bucket.
        assert!(rl.allow(v4(2), t0));
        // Half a second at 2 tokens/s refills one token, no more.
        let t1 = t0 + Duration::from_millis(500);
        assert!(rl.allow(v4(1), t1));
        assert!(!rl.allow(v4(1), t1));
        // A long pause refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(3600);
        assert!((0..3).all(|_| rl.allow(v4(1), t2)));
        assert!(!rl.allow(v4(1), t2));
    }

    #[test]
    fn ipv6_is_limited_per_64_and_mapped_v4_as_v4() {
        let rl = RateLimiter::new(0.001, 1, 10);
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("addr");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("addr");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("addr");
        assert!(rl.allow(a, t0));
        assert!(!rl.allow(b, t0));
        assert!(rl.allow(c, t0));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("addr");
        assert!(rl.allow(v4(7), t0));
        assert!(!rl.allow(mapped, t0));
    }

    #[test]
    fn the_map_stays_bounded() {
        let rl = RateLimiter::new(0.001, 2, 4);
        let t0 = Instant::now();
        for i in 0..=255u8 {
            assert!(rl.allow(v4(i), t0 + Duration::from_millis(u64::from(i))));
            assert!(rl.tracked() <= 4);
        }
        // A refilled bucket is dropped before an older one that is still
        // draining, and the draining one keeps its state.
        let rl = RateLimiter::new(1.0, 2, 2);
        assert!(rl.allow(v4(2), t0));
        assert!(rl.allow(v4(2), t0));
        assert!(rl.allow(v4(1), t0 + Duration::from_millis(500)));
        let later = t0 + Duration::from_millis(1500);
        assert!(rl.allow(v4(3), later));
        assert_eq!(rl.tracked(), 2);
        assert!(rl.allow(v4(2), later));
        assert!(!rl.allow(v4(2), later));
    }

    #[test]
    fn connections_are_capped_per_source_and_given_back() {
        let counts = ConnectionCounts::new(2);
        let a1 = counts.open(v4(1)).expect("first");
        let a2 = counts.open(v4(1)).expect("second");
        assert!(counts.open(v4(1)).is_none(), "a third of the same source");
        // Another source is not affected; an IPv6 /64 is one source.
        let b = counts.open(v4(2)).expect("other source");
        let x: IpAddr = "2001:db8::1".parse().expect("addr");
        let y: IpAddr = "2001:db8::2".parse().expect("addr");
        let _x = counts.open(x).expect("v6");
        let _x2 = counts.open(y).expect("v6, same /64");
        assert!(counts.open(x).is_none());
        drop(a1);
        let _a3 = counts.open(v4(1)).expect("a place was given back");
        drop((a2, b));
        assert_eq!(
            counts.sources(),
            2,
            "sources without connections are forgotten"
        );
    }
}
