//! The rate limits: per scoped token, and (when on) per client address
//! for requests no token of ours vouches for. Both are governor's keyed
//! GCRA limiter, swept every [`SWEEP_EVERY`] checks so memory stays bounded.
//!
//! The scoped tokens' key is a hash of the token's signature, so that every
//! token, however many a backend mints, gets its own budget, and the limiter
//! never holds a token. The address key is the client's IPv4 address, or
//! the /64 of its IPv6 address (one host's or one home's share of IPv6,
//! which it can otherwise walk through to get a fresh budget per request).
//! Static tokens are limited by neither.

use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::error::{Error, Limited};

/// Every this many checks, keys whose budget has refilled are dropped, so
/// memory stays bounded by the keys seen in the last few seconds (plus
/// this many).
const SWEEP_EVERY: u32 = 1024;

/// A keyed GCRA limiter, swept every [`SWEEP_EVERY`] checks.
struct Keyed<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    checks: AtomicU32,
    limited: Limited,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(per_second: NonZeroU32, burst: NonZeroU32, limited: Limited) -> Self {
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Self { limiter: DefaultKeyedRateLimiter::keyed(quota), checks: AtomicU32::new(0), limited }
    }

    /// One request of `key`; 429 with the seconds to wait when its budget is spent.
    fn check(&self, key: &K) -> Result<(), Error> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            Error::RateLimited { retry_after: wait.as_secs_f64().ceil().max(1.0) as u64, by: self.limited }
        })
    }
}

/// Reads per token: `per_second` sustained, `burst` at once.
pub struct ScopedLimiter {
    keyed: Keyed<u64>,
    hasher: foldhash::quality::RandomState,
}

impl ScopedLimiter {
    /// A limiter of `per_second` sustained reads and bursts of `burst` per token.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self { keyed: Keyed::new(per_second, burst, Limited::Token), hasher: foldhash::quality::RandomState::default() }
    }

    /// One request with `token` (its signature is the key); 429 with the
    /// seconds to wait when its budget is spent.
    pub fn check(&self, token: &[u8]) -> Result<(), Error> {
        let signature = token.rsplit(|&b| b == b'.').next().unwrap_or(token);
        self.keyed.check(&self.hasher.hash_one(signature))
    }

    /// Tokens with state held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.keyed.limiter.len()
    }
}

/// Requests per client address: `per_second` sustained, `burst` at once.
pub struct AddressLimiter {
    keyed: Keyed<IpAddr>,
}

impl AddressLimiter {
    /// A limiter of `per_second` sustained requests and bursts of `burst` per address.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self { keyed: Keyed::new(per_second, burst, Limited::Address) }
    }

    /// One request from `client` (canonical: IPv4 as IPv4).
    pub fn check(&self, client: IpAddr) -> Result<(), Error> {
        self.keyed.check(&key(client))
    }
}

/// An IPv4 address as it is, an IPv6 address as its /64.
fn key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: u32, burst: u32) -> ScopedLimiter {
        ScopedLimiter::new(NonZeroU32::new(per_second).unwrap(), NonZeroU32::new(burst).unwrap())
    }

    #[test]
    fn a_burst_then_429_with_retry_after() {
        let l = limiter(1, 3);
        for n in 0..3 {
            assert!(l.check(b"h.p.sig-a").is_ok(), "request {n} of the burst");
        }
        match l.check(b"h.p.sig-a") {
            Err(Error::RateLimited { retry_after, by: Limited::Token }) => {
                assert!((1..=2).contains(&retry_after), "{retry_after}")
            }
            other => panic!("expected 429, got {other:?}"),
        }
        assert!(l.check(b"h.p.sig-b").is_ok(), "another token has its own budget");
        assert!(l.check(b"other-header.p.sig-a").is_err(), "the key is the signature");
    }

    #[test]
    fn memory_stays_bounded() {
        let l = limiter(1000, 1);
        for n in 0..(3 * SWEEP_EVERY) {
            let _ = l.check(format!("h.p.{n}").as_bytes());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        for n in 0..SWEEP_EVERY {
            let _ = l.check(format!("h.p.again-{n}").as_bytes());
        }
        assert!(l.held() <= SWEEP_EVERY as usize + 1, "{} keys held", l.held());
    }

    fn address_limiter(per_second: u32, burst: u32) -> AddressLimiter {
        AddressLimiter::new(NonZeroU32::new(per_second).unwrap(), NonZeroU32::new(burst).unwrap())
    }

    #[test]
    fn per_address_a_burst_then_429() {
        let l = address_limiter(1, 2);
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        assert!(l.check(a).is_ok() && l.check(a).is_ok());
        match l.check(a) {
            Err(Error::RateLimited { retry_after, by: Limited::Address }) => assert!((1..=2).contains(&retry_after)),
            other => panic!("expected 429, got {other:?}"),
        }
        assert!(l.check("203.0.113.8".parse().unwrap()).is_ok(), "another address has its own budget");
        assert!(l.check("2001:db8::1".parse().unwrap()).is_ok());
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        let l = address_limiter(1, 2);
        assert!(l.check("2001:db8:0:1::1".parse().unwrap()).is_ok());
        assert!(l.check("2001:db8:0:1:ffff::2".parse().unwrap()).is_ok());
        assert!(l.check("2001:db8:0:1:abcd::3".parse().unwrap()).is_err(), "the same /64");
        assert!(l.check("2001:db8:0:2::1".parse().unwrap()).is_ok(), "the next /64");
        assert_eq!(key("2001:db8:0:1:abcd::3".parse().unwrap()), "2001:db8:0:1::".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn addresses_held_stay_bounded() {
        let l = address_limiter(1000, 1);
        for n in 0..(3 * SWEEP_EVERY) {
            let _ = l.check(IpAddr::from(n.to_be_bytes()));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        for n in 0..SWEEP_EVERY {
            let _ = l.check(IpAddr::from((n + 1_000_000).to_be_bytes()));
        }
        assert!(l.keyed.limiter.len() <= SWEEP_EVERY as usize + 1, "{} keys held", l.keyed.limiter.len());
    }
}
