//! Logging a failure that repeats at every retry without flooding the log:
//! once when it starts, again when it changes, and at most once a minute
//! while it lasts.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the same error is logged again while it lasts.
pub const REPEAT_EVERY: Duration = Duration::from_secs(60);

/// Which of one retry loop's errors to log.
#[derive(Debug, Default)]
pub struct ErrorLog {
    // A std Mutex: checked and set without awaiting.
    last: Mutex<Option<(String, Instant)>>,
}

impl ErrorLog {
    /// Whether `error` should be logged now; if so, it is remembered as logged.
    pub fn should_log(&self, error: &str) -> bool {
        self.should_log_at(error, Instant::now())
    }

    fn should_log_at(&self, error: &str, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let due = match &*last {
            Some((text, at)) => text != error || now.duration_since(*at) >= REPEAT_EVERY,
            None => true,
        };
        if due {
            *last = Some((error.to_owned(), now));
        }
        due
    }

    /// The failure is over: the next one is logged whatever it says. True
    /// when there was one.
    pub fn clear(&self) -> bool {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_then_on_change_or_after_a_minute() {
        let log = ErrorLog::default();
        let t0 = Instant::now();
        assert!(log.should_log_at("refused", t0));
        assert!(!log.should_log_at("refused", t0 + Duration::from_millis(500)), "the same error at the next retry");
        assert!(!log.should_log_at("refused", t0 + Duration::from_secs(59)));
        assert!(log.should_log_at("bad certificate", t0 + Duration::from_secs(59)), "a different error");
        assert!(log.should_log_at("refused", t0 + Duration::from_secs(60)), "it changed back");
        assert!(log.should_log_at("refused", t0 + Duration::from_secs(120)), "a minute later");
        assert!(log.clear());
        assert!(!log.clear());
        assert!(log.should_log_at("refused", t0 + Duration::from_secs(121)), "after a recovery");
    }
}
