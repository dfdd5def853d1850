//! Protection of the host in front of the Diffie-Hellman work: a per-source handshake rate
//! limiter (token buckets in a bounded table) and a cookie for UDP under load.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use vitalwire::{EntropySource, KeyError};
use zeroize::Zeroizing;

/// Per-source token buckets: `burst` handshakes at once, refilled at `per_second`.
///
/// The table holds at most `max_sources` addresses. A new address while it is full takes the
/// place of the least recently seen one, which is the one whose bucket is fullest (forgetting
/// it only ever errs on the side of admitting). Each call costs O(log n): the buckets are
/// indexed by address and, in a second map, by the time they were last seen, so finding the
/// one to forget is a look at the first entry, not a scan of the table.
#[derive(Debug)]
pub struct RateLimiter {
    burst: f64,
    per_second: f64,
    max_sources: usize,
    buckets: HashMap<IpAddr, Bucket>,
    /// `(last seen, sequence)` → address: the least recently seen first.
    by_age: BTreeMap<(Instant, u64), IpAddr>,
    sequence: u64,
    #[cfg(test)]
    visited: usize,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
    sequence: u64,
}

impl RateLimiter {
    /// A limiter remembering at most `max_sources` addresses (at least 1).
    pub fn new(burst: u32, per_second: f64, max_sources: usize) -> Self {
        RateLimiter {
            burst: burst as f64,
            per_second,
            max_sources: max_sources.max(1),
            buckets: HashMap::new(),
            by_age: BTreeMap::new(),
            sequence: 0,
            #[cfg(test)]
            visited: 0,
        }
    }

    /// Whether `source` may start a handshake now.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        let bucket = match self.buckets.get(&source) {
            Some(b) => {
                self.by_age.remove(&(b.last, b.sequence));
                let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
                Bucket { tokens: (b.tokens + elapsed * self.per_second).min(self.burst), ..*b }
            }
            None => {
                if self.buckets.len() >= self.max_sources {
                    if let Some((_, oldest)) = self.by_age.pop_first() {
                        #[cfg(test)]
                        {
                            self.visited += 1;
                        }
                        self.buckets.remove(&oldest);
                    }
                }
                Bucket { tokens: self.burst, last: now, sequence: 0 }
            }
        };
        self.sequence += 1;
        // Time never goes back for a bucket (callers on several threads may pass instants
        // slightly out of order).
        let last = now.max(bucket.last);
        let mut bucket = Bucket { last, sequence: self.sequence, ..bucket };
        let allowed = bucket.tokens >= 1.0;
        if allowed {
            bucket.tokens -= 1.0;
        }
        self.buckets.insert(source, bucket);
        self.by_age.insert((last, self.sequence), source);
        allowed
    }

    /// Sources currently tracked (bounded by `max_sources`).
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// Stateless cookies for UDP (spec §13.8): `SHA-256(secret || epoch || address)[0..16]`, the
/// secret rotating every `period`, the previous epoch still accepted. The 32-byte secret comes
/// from the random number generator (a jar cannot be made without one: an all-zero secret
/// would make cookies forgeable), is zeroized on drop and is never printed.
pub struct CookieJar {
    secret: Zeroizing<[u8; 32]>,
    period: Duration,
    start: Instant,
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieJar").field("period", &self.period).finish_non_exhaustive()
    }
}

/// Bytes of a cookie.
pub const COOKIE_LEN: usize = 16;

impl CookieJar {
    /// A jar with a secret from the operating system's random number generator; fails with
    /// [`KeyError::Rng`] when the generator does.
    pub fn new(period: Duration) -> Result<Self, KeyError> {
        Self::with_entropy(period, &mut vitalwire::OsEntropy)
    }

    /// A jar with a secret from `entropy`; fails with [`KeyError::Rng`] when it does.
    pub fn with_entropy(period: Duration, entropy: &mut dyn EntropySource) -> Result<Self, KeyError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        entropy.fill(&mut secret[..]).map_err(|_| KeyError::Rng)?;
        Ok(CookieJar { secret, period, start: Instant::now() })
    }

    fn epoch(&self, now: Instant) -> u64 {
        (now.duration_since(self.start).as_millis() / self.period.as_millis().max(1)) as u64
    }

    fn cookie_at(&self, epoch: u64, addr: &std::net::SocketAddr) -> [u8; COOKIE_LEN] {
        let mut h = Sha256::new();
        h.update(&self.secret[..]);
        h.update(epoch.to_be_bytes());
        h.update(addr.to_string().as_bytes());
        let d = h.finalize();
        let mut c = [0u8; COOKIE_LEN];
        c.copy_from_slice(&d[..COOKIE_LEN]);
        c
    }

    /// The cookie for `addr` now.
    pub fn cookie(&self, addr: &std::net::SocketAddr, now: Instant) -> [u8; COOKIE_LEN] {
        self.cookie_at(self.epoch(now), addr)
    }

    /// Whether `cookie` is valid for `addr` (this period or the previous one).
    pub fn check(&self, cookie: &[u8], addr: &std::net::SocketAddr, now: Instant) -> bool {
        let e = self.epoch(now);
        [Some(e), e.checked_sub(1)].into_iter().flatten().any(|e| self.cookie_at(e, addr)[..] == *cookie)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_and_the_table_stays_bounded() {
        let mut r = RateLimiter::new(3, 1.0, 10);
        let t = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!((0..3).all(|_| r.allow(a, t)));
        assert!(!r.allow(a, t));
        assert!(r.allow(a, t + Duration::from_millis(1_100)));
        for i in 0..100u8 {
            r.allow(IpAddr::from([192, 0, 2, i]), t);
            assert!(r.tracked() <= 10);
        }
    }

    #[test]
    fn a_full_table_forgets_the_least_recently_seen_source_in_one_step() {
        // #14.10: with the table full of buckets that have not refilled, each new source
        // used to cost a scan of the whole table (twice). Now it is one look at the oldest.
        let n = 10_000;
        let mut r = RateLimiter::new(3, 1.0, n);
        let t = Instant::now();
        for i in 0..n as u32 {
            let b = i.to_be_bytes();
            assert!(r.allow(IpAddr::from([10, b[1], b[2], b[3]]), t));
        }
        let keep: IpAddr = "10.0.0.0".parse().unwrap();
        assert!(r.allow(keep, t + Duration::from_millis(1))); // seen again: now the newest
        r.visited = 0;
        for i in 0..1_000u32 {
            let b = i.to_be_bytes();
            r.allow(IpAddr::from([172, b[1], b[2], b[3]]), t + Duration::from_millis(2));
            assert_eq!(r.tracked(), n);
        }
        assert_eq!(r.visited, 1_000, "one bucket looked at (and forgotten) per new source");
        // The ones forgotten were the least recently seen, not the source seen again.
        assert!(r.buckets.contains_key(&keep));
        assert!(!r.buckets.contains_key(&IpAddr::from([10, 0, 0, 1])));
        assert!(r.buckets.contains_key(&IpAddr::from([10, 0, 3, 233]))); // #1001 of the first batch
        let spent: IpAddr = "10.0.0.0".parse().unwrap();
        assert!(r.allow(spent, t + Duration::from_millis(3)));
        assert!(!r.allow(spent, t + Duration::from_millis(3)), "its bucket (3) was kept, now empty");
        assert_eq!(r.by_age.len(), r.buckets.len());
    }

    #[test]
    fn cookies_bind_the_address_and_expire() {
        let jar = CookieJar::new(Duration::from_secs(10)).unwrap();
        let now = Instant::now();
        let a = "127.0.0.1:4000".parse().unwrap();
        let b = "127.0.0.1:4001".parse().unwrap();
        let c = jar.cookie(&a, now);
        assert!(jar.check(&c, &a, now));
        assert!(!jar.check(&c, &b, now));
        assert!(jar.check(&c, &a, now + Duration::from_secs(15)), "the previous period is accepted");
        assert!(!jar.check(&c, &a, now + Duration::from_secs(25)));
    }

    use vitalwire::EntropyError;

    struct Fixed(Option<u8>);
    impl EntropySource for Fixed {
        fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError> {
            let b = self.0.ok_or(EntropyError)?;
            dest.fill(b);
            Ok(())
        }
    }

    /// Issue #14 item 11: no jar without entropy (its all-zero secret made cookies anyone could
    /// compute), and the secret never shows in `Debug`.
    #[test]
    fn a_jar_needs_entropy_and_keeps_its_secret() {
        let period = Duration::from_secs(10);
        assert_eq!(CookieJar::with_entropy(period, &mut Fixed(None)).err(), Some(KeyError::Rng));
        let jar = CookieJar::with_entropy(period, &mut Fixed(Some(0xAB))).unwrap();
        let text = format!("{jar:?} {jar:#?}");
        assert!(
            text.contains("CookieJar") && !text.contains("171") && !text.to_lowercase().contains("ab, "),
            "{text}"
        );
        // The secret is the one drawn: an attacker computing cookies with a zero secret fails.
        let a = "192.0.2.1:4000".parse().unwrap();
        let now = Instant::now();
        let zero = CookieJar::with_entropy(period, &mut Fixed(Some(0))).unwrap();
        assert!(!jar.check(&zero.cookie(&a, now), &a, now));
        assert!(jar.check(&jar.cookie(&a, now), &a, now));
        // Two jars from the OS generator have different secrets.
        let (x, y) = (CookieJar::new(period).unwrap(), CookieJar::new(period).unwrap());
        assert_ne!(x.cookie(&a, now), y.cookie(&a, now));
    }
}
