//! The helpers rules can call (PURE, given the evaluation's context): durations, times in the
//! event's own offset, business hours, regex matching, and the windowed counter.

use crate::event::{Timestamp, parse_time};
use chrono::{Datelike, NaiveTime, Timelike, Weekday};
use regex::Regex;
use rhai::{Dynamic, EvalAltResult, Map};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// The windowed counters, as one event's evaluation sees them.
pub trait CounterSource: Send + Sync {
    /// Counts the event under `key` at `at_ms` (unix milliseconds) and returns its ordinal among
    /// the key's hits within the `window_ms` before, this one included. A source that stores
    /// hits records one per event and key, and answers every later evaluation of the event
    /// with the count it had. An error makes the calling rule fail (recorded), rather than
    /// count wrong.
    fn hit(&self, key: &str, at_ms: i64, window_ms: i64) -> Result<u64, String>;
}

/// A counter source with nothing in it, or with fixed counts (the hits already stored): for
/// dry runs and rule tests. Nothing is recorded.
#[derive(Debug, Default, Clone)]
pub struct FixedCounters(pub HashMap<String, u64>);

impl CounterSource for FixedCounters {
    fn hit(&self, key: &str, _at_ms: i64, _window_ms: i64) -> Result<u64, String> {
        Ok(self.0.get(key).copied().unwrap_or(0) + 1)
    }
}

/// One `count_in_window` call, for the evaluation record: the key, the event's time, the
/// window, and the count it returned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CounterHit {
    pub key: String,
    pub at_ms: i64,
    pub window_ms: i64,
    /// The event's ordinal in the window (absent in records written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// What helpers may see while one event is evaluated (set per evaluation, per thread).
pub(super) struct EvalState {
    pub counters: Arc<dyn CounterSource>,
    /// The event's time (its receive time): counter windows end here.
    pub at_ms: i64,
    pub hits: Vec<CounterHit>,
}

thread_local! {
    static STATE: RefCell<Option<EvalState>> = const { RefCell::new(None) };
}

/// Runs `f` with `state` installed for the helpers, and returns the state afterwards.
pub(super) fn with_state<T>(state: EvalState, f: impl FnOnce() -> T) -> (T, EvalState) {
    STATE.with(|cell| *cell.borrow_mut() = Some(state));
    let out = f();
    let state = STATE
        .with(|cell| cell.borrow_mut().take())
        .expect("state installed above");
    (out, state)
}

fn error(message: String) -> Box<EvalAltResult> {
    message.into()
}

/// `count_in_window(key, "5m")`: counts this event under `key` and returns its ordinal among the
/// key's hits within the window, this one included. Asked again for the same key and window in
/// the same evaluation (by another rule), it answers the same.
pub(crate) fn count_in_window(key: &str, window: &str) -> RhaiResult<i64> {
    let _store_wait = super::budget::pause(); // the store's time is not the rule's
    let window =
        crate::time::parse_duration(window).map_err(|e| error(format!("count_in_window: {e}")))?;
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    STATE.with(|cell| {
        let mut state = cell.borrow_mut();
        let state = state.as_mut().ok_or_else(|| {
            error("count_in_window is only available while an event is evaluated".into())
        })?;
        let asked = state
            .hits
            .iter()
            .find(|h| h.key == key && h.window_ms == window_ms)
            .and_then(|h| h.count);
        let count = match asked {
            Some(count) => count,
            None => {
                let count = state
                    .counters
                    .hit(key, state.at_ms, window_ms)
                    .map_err(|e| error(format!("count_in_window: {e}")))?;
                state.hits.push(CounterHit {
                    key: key.to_string(),
                    at_ms: state.at_ms,
                    window_ms,
                    count: Some(count),
                });
                count
            }
        };
        Ok(i64::try_from(count).unwrap_or(i64::MAX))
    })
}

/// The event's `timestamp` (the push's own time), in its own offset.
fn event_time(ev: &Map) -> RhaiResult<Timestamp> {
    let raw = ev
        .get("timestamp")
        .filter(|v| !v.is_unit())
        .ok_or_else(|| error("the event has no `timestamp`".into()))?;
    let text = raw
        .clone()
        .into_string()
        .map_err(|t| error(format!("`timestamp` is {t}")))?;
    parse_time(&text).ok_or_else(|| error(format!("`timestamp` `{text}` is not a time")))
}

/// `parse_time(s)`: seconds since the epoch (comparable), or `()` when `s` is not a time.
pub(crate) fn parse_time_secs(text: &str) -> Dynamic {
    parse_time(text.trim()).map_or(Dynamic::UNIT, |t| Dynamic::from_int(t.timestamp()))
}

/// `local_hour(ev)`: the hour (0–23) of the event's timestamp, in its own offset.
pub(crate) fn local_hour(ev: Map) -> RhaiResult<i64> {
    Ok(i64::from(event_time(&ev)?.hour()))
}

/// `weekday(ev)`: `"Mon"` … `"Sun"` of the event's timestamp, in its own offset.
pub(crate) fn weekday(ev: Map) -> RhaiResult<String> {
    Ok(event_time(&ev)?.weekday().to_string())
}

/// `in_hours(ev, "Mon-Fri 09:00-18:00")`: whether the event's timestamp, in its own offset,
/// falls in the given hours. Several spans separated by `;` (`"Mon-Fri 09:00-18:00; Sat
/// 10:00-14:00"`); days as ranges or comma lists; an end before the start spans midnight.
pub(crate) fn in_hours(ev: Map, spec: &str) -> RhaiResult<bool> {
    let spans = parse_hours(spec).map_err(|e| error(format!("in_hours: {e}")))?;
    let t = event_time(&ev)?;
    let (day, time) = (t.weekday(), t.time());
    Ok(spans.iter().any(|span| span.contains(day, time)))
}

#[derive(Debug, Clone, PartialEq)]
struct HoursSpan {
    days: Vec<Weekday>,
    start: NaiveTime,
    end: NaiveTime,
}

impl HoursSpan {
    fn contains(&self, day: Weekday, time: NaiveTime) -> bool {
        if self.start <= self.end {
            self.days.contains(&day) && time >= self.start && time < self.end
        } else {
            // Overnight: the evening part on the listed day, the morning part on the next.
            (self.days.contains(&day) && time >= self.start)
                || (self.days.contains(&day.pred()) && time < self.end)
        }
    }
}

fn parse_hours(spec: &str) -> Result<Vec<HoursSpan>, String> {
    let parse_day = |s: &str| -> Result<Weekday, String> {
        s.trim()
            .parse::<Weekday>()
            .map_err(|_| format!("`{s}` is not a weekday (Mon … Sun)"))
    };
    let parse_clock = |s: &str| -> Result<NaiveTime, String> {
        let s = s.trim();
        if s == "24:00" {
            return Ok(NaiveTime::from_hms_opt(23, 59, 59).expect("valid time"));
        }
        NaiveTime::parse_from_str(s, "%H:%M").map_err(|_| format!("`{s}` is not a time like 09:00"))
    };
    spec.split(';')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            let (days, hours) = part.trim().split_once(char::is_whitespace).ok_or_else(|| {
                format!("`{}` should look like \"Mon-Fri 09:00-18:00\"", part.trim())
            })?;
            let mut list = Vec::new();
            for item in days.split(',') {
                match item.split_once('-') {
                    Some((from, to)) => {
                        let (mut day, last) = (parse_day(from)?, parse_day(to)?);
                        list.push(day);
                        while day != last {
                            day = day.succ();
                            list.push(day);
                        }
                    }
                    None => list.push(parse_day(item)?),
                }
            }
            let (start, end) = hours
                .trim()
                .split_once('-')
                .ok_or_else(|| format!("`{}` should be a range like 09:00-18:00", hours.trim()))?;
            Ok(HoursSpan {
                days: list,
                start: parse_clock(start)?,
                end: parse_clock(end)?,
            })
        })
        .collect::<Result<Vec<_>, String>>()
        .and_then(|spans| {
            if spans.is_empty() {
                Err("no hours given".into())
            } else {
                Ok(spans)
            }
        })
}

/// `matches(text, pattern)`: whether the regex `pattern` matches somewhere in `text`.
/// Compiled patterns are cached; a bad pattern is an error naming it.
pub(crate) fn matches(text: &str, pattern: &str) -> RhaiResult<bool> {
    static CACHE: OnceLock<Mutex<HashMap<String, Regex>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(re) = cache.get(pattern) {
        return Ok(re.is_match(text));
    }
    let re = regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| error(format!("matches: bad pattern `{pattern}`: {e}")))?;
    let found = re.is_match(text);
    if cache.len() < 1024 {
        cache.insert(pattern.to_string(), re);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: &str) -> Map {
        let mut map = Map::new();
        map.insert("timestamp".into(), ts.into());
        map
    }

    #[test]
    fn business_hours_in_the_events_own_offset() {
        // 10:15 in Beijing on a Friday is 02:15 UTC: inside hours there.
        assert!(in_hours(ev("2026-11-20 10:15:42 +0800"), "Mon-Fri 09:00-18:00").unwrap());
        assert!(!in_hours(ev("2026-11-20 22:03:07 +0800"), "Mon-Fri 09:00-18:00").unwrap());
        assert!(!in_hours(ev("2026-11-21 10:00:00 +0800"), "Mon-Fri 09:00-18:00").unwrap()); // Sat
        assert!(
            in_hours(
                ev("2026-11-21 10:00:00 +0800"),
                "Mon-Fri 09:00-18:00; Sat 10:00-14:00"
            )
            .unwrap()
        );
        // Overnight: Friday 22:00 → Saturday 06:00.
        assert!(in_hours(ev("2026-11-21 05:59:00 +0800"), "Fri 22:00-06:00").unwrap());
        assert!(!in_hours(ev("2026-11-22 05:59:00 +0800"), "Fri 22:00-06:00").unwrap());
        assert_eq!(local_hour(ev("2026-11-20 22:03:07 +0800")).unwrap(), 22);
        assert_eq!(weekday(ev("2026-11-20 22:03:07 +0800")).unwrap(), "Fri");
        let err = in_hours(ev("2026-11-20 10:00:00 +0800"), "Weekdays 9-5").unwrap_err();
        assert!(err.to_string().contains("Weekdays"), "{err}");
        assert!(
            local_hour(Map::new())
                .unwrap_err()
                .to_string()
                .contains("no `timestamp`")
        );
    }

    #[test]
    fn regexes() {
        assert!(matches("13800138000", r"^1[3-9]\d{9}$").unwrap());
        assert!(matches("放弃排队", "排队").unwrap());
        assert!(
            matches("x", "(")
                .unwrap_err()
                .to_string()
                .contains("bad pattern")
        );
    }

    #[test]
    fn counter_asks_the_source_once_per_key_and_window() {
        /// Hands out 1, 2, 3, … across keys and remembers who asked.
        #[derive(Default)]
        struct Numbering(Mutex<Vec<(String, i64)>>);
        impl CounterSource for Numbering {
            fn hit(&self, key: &str, _at_ms: i64, window_ms: i64) -> Result<u64, String> {
                let mut asked = self.0.lock().unwrap();
                asked.push((key.to_string(), window_ms));
                Ok(asked.len() as u64)
            }
        }
        let counters = Arc::new(Numbering::default());
        let state = EvalState {
            counters: counters.clone(),
            at_ms: 10_000,
            hits: Vec::new(),
        };
        let (counts, state) = with_state(state, || {
            (
                count_in_window("k", "5m").unwrap(),
                count_in_window("k", "5m").unwrap(),
                count_in_window("other", "5m").unwrap(),
                count_in_window("k", "1h").unwrap(),
            )
        });
        assert_eq!(
            counts,
            (1, 1, 2, 3),
            "the same key and window answers the same"
        );
        assert_eq!(counters.0.lock().unwrap().len(), 3);
        assert_eq!(state.hits.len(), 3);
        assert_eq!(
            state.hits[0],
            CounterHit {
                key: "k".into(),
                at_ms: 10_000,
                window_ms: 300_000,
                count: Some(1),
            }
        );
        assert!(count_in_window("k", "5m").is_err(), "outside an evaluation");
        let fixed = FixedCounters([("k".to_string(), 4)].into());
        assert_eq!(
            fixed.hit("k", 0, 1).unwrap(),
            5,
            "stored hits plus this one"
        );
        assert_eq!(fixed.hit("none", 0, 1).unwrap(), 1);
    }
}
