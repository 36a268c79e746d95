//! Retry decisions as data (PURE): how an attempt's result is classified, and when, if ever, a
//! job is tried again. No clock, no I/O: the caller passes `now`, and jitter is derived from the
//! job's key so that the same inputs always give the same answer.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Unix time in milliseconds.
pub type Millis = i64;

/// The delays between attempts. The first attempt runs as soon as the job exists; attempt
/// `n + 1` runs `delays[n - 1]` after attempt `n` failed; after the last one the job is dead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub delays: Vec<Duration>,
}

impl Default for Schedule {
    /// Common webhook-delivery practice: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (8 attempts,
    /// about 27.6 hours in all).
    fn default() -> Self {
        let min = 60;
        let hour = 60 * min;
        Schedule {
            delays: [
                5,
                5 * min,
                30 * min,
                2 * hour,
                5 * hour,
                10 * hour,
                10 * hour,
            ]
            .into_iter()
            .map(Duration::from_secs)
            .collect(),
        }
    }
}

impl Schedule {
    /// How many attempts a job gets in all.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.delays.len()).unwrap_or(u32::MAX - 1) + 1
    }
}

/// What one attempt came to, as the sender classified it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AttemptResult {
    Success,
    /// Worth trying again (timeouts, connection errors, 5xx, 429, SMTP 4xx); the peer may say
    /// how long to wait.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Trying again cannot help (most 4xx, SMTP 5xx, an invalid job).
    Permanent {
        reason: String,
    },
    /// Nothing to do any more (e.g. the callback task was closed before it was dispatched): the
    /// job is done, and the reason is recorded with the attempt.
    Skipped {
        reason: String,
    },
}

/// What happens to the job next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Done,
    RetryAt(Millis),
    /// No attempts left, or a permanent failure: the job is dead-lettered, never dropped.
    Dead {
        reason: String,
    },
}

/// Decides after attempt number `attempt` (1-based) ended with `result` at `now`. Retries wait
/// for the schedule's delay plus up to 10% jitter (derived from `key`, so retries of many jobs
/// spread out but a given job's plan is reproducible), or for the peer's `Retry-After` when that
/// is longer.
pub fn decide(
    schedule: &Schedule,
    attempt: u32,
    result: &AttemptResult,
    now: Millis,
    key: &str,
) -> Decision {
    match result {
        AttemptResult::Success | AttemptResult::Skipped { .. } => Decision::Done,
        AttemptResult::Permanent { reason } => Decision::Dead {
            reason: reason.clone(),
        },
        AttemptResult::Transient {
            reason,
            retry_after,
        } => {
            let Some(delay) = attempt
                .checked_sub(1)
                .and_then(|i| schedule.delays.get(i as usize))
            else {
                return Decision::Dead {
                    reason: format!("gave up after {attempt} attempts; last: {reason}"),
                };
            };
            let jittered = *delay + jitter(*delay, key, attempt);
            let wait = retry_after.map_or(jittered, |peer| peer.max(jittered));
            Decision::RetryAt(now.saturating_add(millis(wait)))
        }
    }
}

/// Up to a tenth of `delay`, picked by hashing the job key and attempt number.
fn jitter(delay: Duration, key: &str, attempt: u32) -> Duration {
    let digest = Sha256::new()
        .chain_update(key.as_bytes())
        .chain_update(attempt.to_be_bytes())
        .finalize();
    let fraction = f64::from(u16::from_be_bytes([digest[0], digest[1]])) / f64::from(u16::MAX);
    delay.mul_f64(0.1 * fraction)
}

fn millis(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

/// Classifies an HTTP response: 2xx success; 408, 429 and 5xx transient; other statuses
/// permanent. `retry_after` is the parsed `Retry-After` header, if any.
pub fn classify_http(status: u16, retry_after: Option<Duration>) -> AttemptResult {
    match status {
        200..=299 => AttemptResult::Success,
        408 | 429 | 500..=599 => AttemptResult::Transient {
            reason: format!("HTTP {status}"),
            retry_after,
        },
        _ => AttemptResult::Permanent {
            reason: format!("HTTP {status}"),
        },
    }
}

/// Parses a `Retry-After` value given in seconds (the HTTP-date form is accepted as "unknown"
/// and ignored: the schedule's delay applies). Values are capped at a day.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(24 * 3600)))
}

/// Classifies an SMTP reply code: 2xx success, 4xx transient, 5xx (and anything else) permanent.
pub fn classify_smtp(code: u16, text: &str) -> AttemptResult {
    let reason = format!("SMTP {code} {text}").trim_end().to_string();
    match code {
        200..=299 => AttemptResult::Success,
        400..=499 => AttemptResult::Transient {
            reason,
            retry_after: None,
        },
        _ => AttemptResult::Permanent { reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient(retry_after: Option<Duration>) -> AttemptResult {
        AttemptResult::Transient {
            reason: "HTTP 503".into(),
            retry_after,
        }
    }

    #[test]
    fn default_schedule_has_eight_attempts() {
        let schedule = Schedule::default();
        assert_eq!(schedule.max_attempts(), 8);
        assert_eq!(schedule.delays[0], Duration::from_secs(5));
        assert_eq!(schedule.delays[6], Duration::from_secs(36_000));
    }

    #[test]
    fn transient_failures_follow_the_schedule_with_bounded_jitter() {
        let schedule = Schedule::default();
        for attempt in 1..schedule.max_attempts() {
            let delay = schedule.delays[attempt as usize - 1];
            let Decision::RetryAt(at) = decide(&schedule, attempt, &transient(None), 1_000, "k")
            else {
                panic!("attempt {attempt} should be retried");
            };
            let wait = Duration::from_millis((at - 1_000) as u64);
            assert!(
                wait >= delay && wait <= delay + delay / 10,
                "attempt {attempt}: {wait:?}"
            );
        }
        let last = decide(&schedule, 8, &transient(None), 1_000, "k");
        assert!(matches!(last, Decision::Dead { reason } if reason.contains("after 8 attempts")));
    }

    #[test]
    fn jitter_is_reproducible_and_spreads_jobs() {
        let schedule = Schedule::default();
        let plan = |key: &str| decide(&schedule, 3, &transient(None), 0, key);
        assert_eq!(plan("a"), plan("a"));
        let distinct: std::collections::HashSet<_> = (0..20)
            .map(|i| format!("{:?}", plan(&i.to_string())))
            .collect();
        assert!(distinct.len() > 15);
    }

    #[test]
    fn retry_after_wins_when_longer() {
        let schedule = Schedule::default();
        let hour = Duration::from_secs(3600);
        assert_eq!(
            decide(&schedule, 1, &transient(Some(hour)), 0, "k"),
            Decision::RetryAt(3_600_000)
        );
        let Decision::RetryAt(at) = decide(&schedule, 1, &transient(Some(Duration::ZERO)), 0, "k")
        else {
            panic!()
        };
        assert!(at >= 5_000);
    }

    #[test]
    fn success_and_permanent_end_the_job() {
        let schedule = Schedule::default();
        assert_eq!(
            decide(&schedule, 1, &AttemptResult::Success, 0, "k"),
            Decision::Done
        );
        let dead = decide(
            &schedule,
            1,
            &AttemptResult::Permanent {
                reason: "HTTP 404".into(),
            },
            0,
            "k",
        );
        assert_eq!(
            dead,
            Decision::Dead {
                reason: "HTTP 404".into()
            }
        );
    }

    #[test]
    fn http_and_smtp_classification() {
        assert_eq!(classify_http(204, None), AttemptResult::Success);
        for status in [408, 429, 500, 502, 503, 599] {
            assert!(
                matches!(classify_http(status, None), AttemptResult::Transient { .. }),
                "{status}"
            );
        }
        for status in [301, 400, 401, 403, 404, 410, 422] {
            assert!(
                matches!(classify_http(status, None), AttemptResult::Permanent { .. }),
                "{status}"
            );
        }
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert!(matches!(classify_smtp(250, "OK"), AttemptResult::Success));
        assert!(matches!(
            classify_smtp(451, "try later"),
            AttemptResult::Transient { .. }
        ));
        assert!(matches!(
            classify_smtp(550, "no such user"),
            AttemptResult::Permanent { .. }
        ));
    }
}
