//! When to try a registry request again: jittered exponential backoff,
//! `Retry-After` (seconds or an HTTP date), and the HTTP and RFC 3339 dates
//! registries send.

use std::{
    hash::{BuildHasher, Hasher},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// How often and how long requests are tried again after 429, 502, 503,
/// 504 or a dropped connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries of one request in all (the first one included).
    pub max_attempts: u32,
    /// The first backoff; each further one doubles, up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// No retry starts after this much time since the first try.
    pub max_total: Duration,
    /// A longer `Retry-After` is cut to this (a registry asking for an hour
    /// is not waited for: the request fails once the total time is spent).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            max_total: Duration::from_secs(120),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// A random number for jitter (std's per-instance random hasher keys; no
/// need for a good generator).
pub(crate) fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

impl RetryPolicy {
    /// The wait before try `attempt + 1` (`attempt` >= 1 tries failed):
    /// between half and all of `base_delay * 2^(attempt-1)`, capped at
    /// `max_delay`; `rand` picks the point (full jitter over the upper half,
    /// so waits never collapse to zero).
    pub(crate) fn backoff(&self, attempt: u32, rand: u64) -> Duration {
        let shift = attempt.saturating_sub(1).min(30);
        let full = self
            .base_delay
            .saturating_mul(1u32 << shift)
            .min(self.max_delay);
        let half = full / 2;
        let span = (full - half).as_millis() as u64;
        half + Duration::from_millis(if span == 0 { 0 } else { rand % (span + 1) })
    }

    /// The wait before the next try after `attempt` failed tries, `elapsed`
    /// after the first, or `None` to give up. `retry_after` (from the
    /// response) replaces the backoff, capped at `max_retry_after`.
    pub(crate) fn next_wait(
        &self,
        attempt: u32,
        elapsed: Duration,
        retry_after: Option<Duration>,
        rand: u64,
    ) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let wait = match retry_after {
            Some(d) => d.min(self.max_retry_after),
            None => self.backoff(attempt, rand),
        };
        (elapsed.saturating_add(wait) <= self.max_total).then_some(wait)
    }
}

/// A `Retry-After` value: delay-seconds, or an HTTP date (the time from
/// `now` until it; zero if it has passed). `None` if it is neither.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(v.parse().unwrap_or(u64::MAX)));
    }
    let at = parse_http_date(v)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Days from 1970-01-01 to a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn num<T: std::str::FromStr>(s: &str, digits: usize) -> Option<T> {
    if s.len() != digits || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The time of a calendar date and clock time (UTC), if they are valid and
/// not before 1970.
fn time_of(y: i64, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Option<SystemTime> {
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let secs = days_from_civil(y, mo, d) * 86_400
        + i64::from(h) * 3600
        + i64::from(mi) * 60
        + i64::from(s);
    UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(secs).ok()?))
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form HTTP/1.1
/// senders must use.
pub(crate) fn parse_http_date(s: &str) -> Option<SystemTime> {
    let (_, rest) = s.trim().split_once(", ")?;
    let f: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, clock, "GMT"] = f[..] else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mo = MONTHS.iter().position(|m| *m == month)? as u32 + 1;
    let c: Vec<&str> = clock.split(':').collect();
    let [h, mi, sec] = c[..] else { return None };
    time_of(
        num(year, 4)?,
        mo,
        num(day, 2)?,
        num(h, 2)?,
        num(mi, 2)?,
        num(sec, 2)?,
    )
}

/// An RFC 3339 time (`2024-05-01T10:00:00Z`, `...T10:00:00.123+02:00`), as
/// token services write `issued_at`.
pub(crate) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let (date, rest) = s.split_once(['T', 't', ' '])?;
    let d: Vec<&str> = date.split('-').collect();
    let [y, mo, day] = d[..] else { return None };
    if rest.len() < 8 || !rest.is_char_boundary(8) {
        return None;
    }
    let (clock, mut tail) = rest.split_at(8);
    let c: Vec<&str> = clock.split(':').collect();
    let [h, mi, sec] = c[..] else { return None };
    let mut nanos = 0u32;
    if let Some(frac) = tail.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        // Nanoseconds from the first nine digits.
        let digits = &frac[..n.min(9)];
        nanos = digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32);
        tail = &frac[n..];
    }
    let offset: i64 = match tail {
        "Z" | "z" => 0,
        _ => {
            let sign = match tail.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = tail.get(1..)?.split_once(':')?;
            let (oh, om): (i64, i64) = (num(oh, 2)?, num(om, 2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    let t = time_of(
        num(y, 4)?,
        num(mo, 2)?,
        num(day, 2)?,
        num(h, 2)?,
        num(mi, 2)?,
        num(sec, 2)?,
    )? + Duration::from_nanos(u64::from(nanos));
    // Local time minus its offset is UTC.
    if offset >= 0 {
        t.checked_sub(Duration::from_secs(offset as u64))
    } else {
        t.checked_add(Duration::from_secs(offset.unsigned_abs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = at(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:40 GMT", now),
            Some(Duration::from_secs(3))
        );
        // A date in the past: retry now.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in ["", "-1", "1.5", "soon", "Sun, 06 Nov 1994 08:49:37 UTC"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn http_and_rfc3339_dates() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(at(784_111_777))
        );
        assert_eq!(
            parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(at(0))
        );
        assert_eq!(parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun, 6 Nov 1994 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 24:49:37 GMT"), None);
        assert_eq!(parse_rfc3339("1994-11-06T08:49:37Z"), Some(at(784_111_777)));
        assert_eq!(
            parse_rfc3339("1994-11-06T10:49:37.123456+02:00"),
            Some(at(784_111_777) + Duration::from_micros(123_456))
        );
        assert_eq!(
            parse_rfc3339("1994-11-06T08:49:37.5000000001Z"),
            Some(at(784_111_777) + Duration::from_millis(500))
        );
        assert_eq!(
            parse_rfc3339("1994-11-06T07:49:37-01:00"),
            Some(at(784_111_777))
        );
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(at(951_782_400)));
        for bad in [
            "",
            "1994-11-06",
            "1994-11-06T08:49Z",
            "1994-13-06T08:49:37Z",
            "1994-11-06T08:49:37",
            "1994-11-06T08:49:37.Z",
            "x994-11-06T08:49:37Z",
            "1994-11-06T08:49:3é",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn backoff_is_bounded_and_grows() {
        let p = RetryPolicy::default();
        for attempt in 1..40 {
            for rand in [0, 1, 7, u64::MAX / 3, u64::MAX] {
                let full = p
                    .base_delay
                    .saturating_mul(1 << (attempt - 1).min(30))
                    .min(p.max_delay);
                let d = p.backoff(attempt, rand);
                assert!(d >= full / 2 && d <= full, "{attempt} {rand}: {d:?}");
            }
        }
        assert!(p.backoff(1, 0) >= Duration::from_millis(125));
        assert_eq!(
            p.backoff(30, u64::MAX).min(p.max_delay),
            p.backoff(30, u64::MAX)
        );
        // Jitter: different random numbers give different waits.
        assert_ne!(p.backoff(3, 0), p.backoff(3, 400));
    }

    #[test]
    fn gives_up_after_attempts_or_total_time() {
        let p = RetryPolicy::default();
        assert!(p.next_wait(1, Duration::ZERO, None, 0).is_some());
        assert_eq!(p.next_wait(p.max_attempts, Duration::ZERO, None, 0), None);
        // Retry-After is honoured, capped.
        assert_eq!(
            p.next_wait(1, Duration::ZERO, Some(Duration::from_secs(3)), 0),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            p.next_wait(1, Duration::ZERO, Some(Duration::from_secs(3600)), 0),
            Some(p.max_retry_after)
        );
        // A wait that would pass the total time is not started.
        assert_eq!(
            p.next_wait(
                1,
                p.max_total - Duration::from_secs(1),
                Some(Duration::from_secs(2)),
                0
            ),
            None
        );
    }
}
