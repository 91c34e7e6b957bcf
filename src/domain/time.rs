//! Wall-clock timestamps: milliseconds since the Unix epoch inside, RFC 3339 UTC outside.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time with millisecond precision, shown as `2026-11-21T22:40:30.123Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

/// The unit tests' hold on the wall clock: tokio's paused clock moves
/// timers, this moves [`Timestamp::now`] with them (per thread, so tests
/// running side by side do not see each other's). Always 0 outside tests.
#[cfg(test)]
pub(crate) mod test_clock {
    use std::cell::Cell;

    thread_local!(static OFFSET_MS: Cell<i64> = const { Cell::new(0) });

    /// Moves this thread's wall clock forward by `ms`.
    pub(crate) fn advance_ms(ms: i64) {
        OFFSET_MS.with(|o| o.set(o.get() + ms));
    }

    pub(super) fn offset_ms() -> i64 {
        OFFSET_MS.with(Cell::get)
    }
}

#[cfg(not(test))]
mod test_clock {
    #[inline(always)]
    pub(super) const fn offset_ms() -> i64 {
        0
    }
}

impl Timestamp {
    /// The current wall-clock time. Read as a duration from the epoch:
    /// `Utc::now` builds a calendar date that `timestamp_millis` takes
    /// apart again, about 220 instructions on every cached read (issue 23).
    pub fn now() -> Self {
        let since_epoch = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
            // A clock set before 1970, as `Utc::now` would show it.
            Err(before) => -i64::try_from(before.duration().as_nanos().div_ceil(1_000_000)).unwrap_or(i64::MAX),
        };
        Self(since_epoch + test_clock::offset_ms())
    }

    /// Milliseconds since the Unix epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// This time plus `ms` milliseconds (saturating).
    pub fn plus_millis(self, ms: i64) -> Self {
        Self(self.0.saturating_add(ms))
    }

    /// RFC 3339 text in UTC with milliseconds.
    pub fn to_rfc3339(self) -> String {
        DateTime::<Utc>::from_timestamp_millis(self.0)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Records carry a dozen timestamps and are written on every update:
        // the common shape is formatted by hand, the rest by chrono.
        match format_millis(self.0) {
            Some(text) => s.serialize_str(std::str::from_utf8(&text).expect("ASCII digits and separators")),
            None => s.serialize_str(&self.to_rfc3339()),
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        if let Some(ms) = parse_millis(text.as_bytes()) {
            return Ok(Self(ms));
        }
        DateTime::parse_from_rfc3339(&text).map(|t| Self(t.timestamp_millis())).map_err(serde::de::Error::custom)
    }
}

impl Timestamp {
    /// Appends the JSON string of this time (what its `Serialize` writes).
    pub(crate) fn write_json(self, out: &mut Vec<u8>) {
        out.push(b'"');
        match format_millis(self.0) {
            Some(text) => out.extend_from_slice(&text),
            None => out.extend_from_slice(self.to_rfc3339().as_bytes()),
        }
        out.push(b'"');
    }
}

const MS_PER_DAY: i64 = 86_400_000;

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for years 0 to 9999 (what `to_rfc3339`
/// gives for them); `None` outside.
fn format_millis(ms: i64) -> Option<[u8; 24]> {
    let (days, in_day) = (ms.div_euclid(MS_PER_DAY), ms.rem_euclid(MS_PER_DAY));
    let (year, month, day) = civil_from_days(days);
    if !(0..=9999).contains(&year) {
        return None;
    }
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut value: i64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, in_day / 3_600_000);
    put(14, 2, in_day / 60_000 % 60);
    put(17, 2, in_day / 1000 % 60);
    put(20, 3, in_day % 1000);
    Some(out)
}

/// Reads exactly `YYYY-MM-DDTHH:MM:SS.mmmZ` (what this server writes);
/// `None` for anything else, which chrono then reads.
fn parse_millis(text: &[u8]) -> Option<i64> {
    if text.len() != 24 || text[23] != b'Z' {
        return None;
    }
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':'), (19, b'.')];
    if separators.iter().any(|(at, c)| text[*at] != *c) {
        return None;
    }
    let number = |at: usize, width: usize| -> Option<i64> {
        text[at..at + width].iter().try_fold(0i64, |n, b| b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0')))
    };
    let (year, month, day) = (number(0, 4)?, number(5, 2)?, number(8, 2)?);
    let (hour, minute, second, milli) = (number(11, 2)?, number(14, 2)?, number(17, 2)?, number(20, 3)?);
    // Leap seconds and impossible dates are left to chrono (to refuse or read).
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * MS_PER_DAY + ((hour * 60 + minute) * 60 + second) * 1000 + milli)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_chronos_now() {
        let before = Utc::now().timestamp_millis();
        let now = Timestamp::now().millis();
        let after = Utc::now().timestamp_millis();
        assert!(before <= now && now <= after, "{before} <= {now} <= {after}");
    }

    #[test]
    fn round_trips_through_rfc3339() {
        let t = Timestamp(1_763_764_830_123);
        let text = serde_json::to_string(&t).unwrap();
        assert_eq!(text, "\"2025-11-21T22:40:30.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&text).unwrap(), t);
    }

    #[test]
    fn the_fast_paths_agree_with_chrono() {
        let mut samples = vec![
            0,
            -1,
            1,
            951_782_400_000,
            4_107_542_399_999,
            253_402_300_799_999,
            253_402_300_800_000,
            -62_167_219_200_000,
            -62_167_219_200_001,
            i64::MAX,
            i64::MIN,
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        samples.extend((0..20_000).map(|_| rng.i64(-70_000_000_000_000..260_000_000_000_000)));
        for ms in samples {
            let t = Timestamp(ms);
            let chrono_text = t.to_rfc3339();
            let ours = serde_json::to_string(&t).unwrap();
            assert_eq!(ours, format!("\"{chrono_text}\""), "{ms}");
            if let Ok(back) = DateTime::parse_from_rfc3339(&chrono_text) {
                assert_eq!(
                    parse_millis(chrono_text.as_bytes()).unwrap_or(back.timestamp_millis()),
                    back.timestamp_millis(),
                    "{chrono_text}"
                );
                assert_eq!(
                    serde_json::from_str::<Timestamp>(&ours).unwrap().0,
                    back.timestamp_millis(),
                    "{chrono_text}"
                );
            }
        }
        for text in [
            "2026-02-29T00:00:00.000Z",
            "2024-02-30T00:00:00.000Z",
            "2026-13-01T00:00:00.000Z",
            "2026-01-01T24:00:00.000Z",
            "2026-01-01T00:00:60.000Z",
            "2026-01-01T00:00:00.000+01:00",
            "2026-01-01 00:00:00.000Z",
            "2026-01-01T00:00:00Z",
            "+2026-01-01T00:00:00.00Z",
        ] {
            let chrono = DateTime::parse_from_rfc3339(text).map(|t| t.timestamp_millis()).ok();
            let ours = serde_json::from_str::<Timestamp>(&format!("\"{text}\"")).ok().map(|t| t.0);
            assert_eq!(ours, chrono, "{text}");
        }
        assert_eq!(parse_millis(b"2024-02-29T23:59:59.999Z"), Some(1_709_251_199_999));
    }
}
