//! The per-token rate limit of scoped tokens: a keyed GCRA limiter
//! (governor) whose key is a hash of the token's signature, so that every
//! token, however many a backend mints, gets its own budget, and the
//! limiter never holds a token. Static tokens are not limited.

use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::error::Error;

/// Every this many checks, keys whose budget has refilled are dropped, so
/// memory stays bounded by the tokens seen in the last few seconds (plus
/// this many).
const SWEEP_EVERY: u32 = 1024;

/// Reads per token: `per_second` sustained, `burst` at once.
pub struct ScopedLimiter {
    limiter: DefaultKeyedRateLimiter<u64>,
    hasher: foldhash::quality::RandomState,
    checks: AtomicU32,
}

impl ScopedLimiter {
    /// A limiter of `per_second` sustained reads and bursts of `burst` per token.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Self {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            hasher: foldhash::quality::RandomState::default(),
            checks: AtomicU32::new(0),
        }
    }

    /// One request with `token` (its signature is the key); 429 with the
    /// seconds to wait when its budget is spent.
    pub fn check(&self, token: &[u8]) -> Result<(), Error> {
        let signature = token.rsplit(|&b| b == b'.').next().unwrap_or(token);
        let key = self.hasher.hash_one(signature);
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            Error::RateLimited { retry_after: wait.as_secs_f64().ceil().max(1.0) as u64 }
        })
    }

    /// Tokens with state held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.limiter.len()
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
            Err(Error::RateLimited { retry_after }) => assert!((1..=2).contains(&retry_after), "{retry_after}"),
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
}
