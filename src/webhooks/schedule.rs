//! When a failed delivery is tried again: about 5 s after the first
//! attempt, about 30 s after the second, then 2, 10 and 30 minutes, then
//! every hour, each ±20 % so that receivers that failed together are not
//! retried together; a receiver's `Retry-After` is honoured (up to an hour).
//!
//! Not a retry crate: the state of a retry (attempts made, when the next is
//! due) lives in the outbox and outlives the process and the instance that
//! made the attempt, where retry crates drive a loop inside one process.

use std::time::Duration;

/// The longest wait between two attempts.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// The wait after each failed attempt, before jitter (then [`MAX_INTERVAL`]).
const STEPS: [u64; 5] = [5, 30, 120, 600, 1800];

/// The wait after `attempts` failed attempts (1: after the first), at least
/// `retry_after` when the receiver asked for it, at most [`MAX_INTERVAL`].
/// `jitter` is in [0, 1) (0.5: none).
pub fn retry_delay(attempts: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    let index = usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX);
    let base = STEPS.get(index).copied().map_or(MAX_INTERVAL, Duration::from_secs);
    let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
    let delay = base.mul_f64(factor).min(MAX_INTERVAL);
    match retry_after {
        Some(asked) => delay.max(asked).min(MAX_INTERVAL),
        None => delay,
    }
}

/// `Retry-After` as seconds or as an HTTP date, from now.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let at = std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(at.timestamp()).ok()?);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_retries_come_within_about_5_and_30_seconds_then_grow_to_an_hour() {
        for jitter in [0.0, 0.5, 0.999] {
            let first = retry_delay(1, None, jitter).as_secs_f64();
            let second = retry_delay(2, None, jitter).as_secs_f64();
            assert!((4.0..=6.0).contains(&first), "{first}");
            assert!((24.0..=36.0).contains(&second), "{second}");
            let mut last = second;
            for attempts in 3..40 {
                let d = retry_delay(attempts, None, jitter).as_secs_f64();
                assert!(d <= 3600.0, "at most an hour apart: {d}");
                assert!(d >= last.min(2880.0), "grows: {d} after {last}");
                last = d;
            }
        }
        assert_eq!(retry_delay(1, None, 0.5), Duration::from_secs(5));
        assert_eq!(retry_delay(9, None, 0.999), MAX_INTERVAL);
    }

    #[test]
    fn retry_after_is_honoured_up_to_an_hour() {
        assert_eq!(retry_delay(1, Some(Duration::from_secs(90)), 0.5), Duration::from_secs(90));
        assert_eq!(retry_delay(2, Some(Duration::from_secs(1)), 0.5), Duration::from_secs(30), "never sooner");
        assert_eq!(retry_delay(1, Some(Duration::from_secs(86_400)), 0.5), MAX_INTERVAL);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        // 2023-11-14T22:13:20Z is 1_700_000_000; 30 s later:
        assert_eq!(parse_retry_after("Tue, 14 Nov 2023 22:13:50 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now), Some(Duration::ZERO), "past: now");
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
