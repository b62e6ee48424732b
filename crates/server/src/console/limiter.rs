//! Failed console logins per client address: a token bucket per address in a bounded map,
//! so guessing the API token from one address is slow and the map cannot grow without end.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// Failed attempts allowed in a burst.
    pub burst: u32,
    /// One more attempt is allowed after each such interval.
    pub refill: Duration,
    /// Addresses tracked at most; the least recently seen is forgotten first.
    pub max_addresses: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            burst: 10,
            refill: Duration::from_secs(6),
            max_addresses: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    seen: Instant,
}

#[derive(Debug)]
pub struct LoginLimiter {
    limits: LoginLimits,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl LoginLimiter {
    pub fn new(limits: LoginLimits) -> Self {
        Self {
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> Bucket {
        let earned =
            now.duration_since(bucket.seen).as_secs_f64() / self.limits.refill.as_secs_f64();
        Bucket {
            tokens: (bucket.tokens + earned).min(f64::from(self.limits.burst)),
            seen: now,
        }
    }

    /// Whether `addr` may try to log in now.
    pub fn allows(&self, addr: IpAddr, now: Instant) -> bool {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets
            .get(&addr)
            .is_none_or(|b| self.refilled(*b, now).tokens >= 1.0)
    }

    /// Counts a failed attempt of `addr`.
    pub fn failed(&self, addr: IpAddr, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(&addr) && buckets.len() >= self.limits.max_addresses {
            let oldest = buckets.iter().min_by_key(|(_, b)| b.seen).map(|(a, _)| *a);
            if let Some(oldest) = oldest {
                buckets.remove(&oldest);
            }
        }
        let full = Bucket {
            tokens: f64::from(self.limits.burst),
            seen: now,
        };
        let bucket = buckets.get(&addr).map_or(full, |b| self.refilled(*b, now));
        buckets.insert(
            addr,
            Bucket {
                tokens: (bucket.tokens - 1.0).max(0.0),
                seen: now,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max_addresses: usize) -> LoginLimiter {
        LoginLimiter::new(LoginLimits {
            burst: 3,
            refill: Duration::from_secs(10),
            max_addresses,
        })
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn a_burst_of_failures_blocks_the_address_until_the_bucket_refills() {
        let l = limiter(10);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.allows(ip(1), t0));
            l.failed(ip(1), t0);
        }
        assert!(!l.allows(ip(1), t0), "burst used up");
        assert!(l.allows(ip(2), t0), "other addresses are not affected");
        assert!(!l.allows(ip(1), t0 + Duration::from_secs(9)));
        assert!(
            l.allows(ip(1), t0 + Duration::from_secs(10)),
            "one refilled"
        );
    }

    #[test]
    fn the_map_stays_bounded_by_forgetting_the_least_recently_seen() {
        let l = limiter(2);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.failed(ip(1), t0);
        }
        l.failed(ip(2), t0 + Duration::from_millis(1));
        l.failed(ip(3), t0 + Duration::from_millis(2));
        let buckets = l.buckets.lock().expect("lock");
        assert_eq!(buckets.len(), 2);
        assert!(!buckets.contains_key(&ip(1)));
    }
}
