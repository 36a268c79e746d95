//! Time (PURE, but for reading the clock): unix milliseconds, and the durations (`30m`, `1d`) and
//! times that rules, the configuration, the admin API and the command line take.

use std::time::Duration;

/// Unix time in milliseconds.
pub type Millis = i64;

/// The current time in unix milliseconds.
pub fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// Parses `"45s"`, `"30m"`, `"2h"`, `"1d"`, `"1h 30m"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("`{text}` is not a duration like \"45s\", \"30m\", \"2h\", \"1d\" ({e})")
    })
}

/// A start time: a duration back from `now` (`7d`, `90m`), unix milliseconds, RFC 3339, or
/// Udesk's `YYYY-MM-DD HH:MM:SS +ZZZZ`.
/// The error says what was expected (`must be …, got …`).
pub fn parse_since(text: &str, now: Millis) -> Result<Millis, String> {
    if let Ok(ago) = parse_duration(text) {
        return Ok(now.saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX)));
    }
    time_millis(text).ok_or_else(|| {
        format!("must be {TIME_FORMS} or a duration back from now (`7d`, `12h`), got `{text}`")
    })
}

/// A time: unix milliseconds, RFC 3339, or Udesk's `YYYY-MM-DD HH:MM:SS +ZZZZ`. The error says
/// what was expected (`must be …, got …`).
pub fn parse_instant(text: &str) -> Result<Millis, String> {
    time_millis(text).ok_or_else(|| format!("must be {TIME_FORMS}, got `{text}`"))
}

const TIME_FORMS: &str = "a time (RFC 3339, `2026-11-20 10:15:42 +0800`, or unix milliseconds)";

fn time_millis(text: &str) -> Option<Millis> {
    let text = text.trim();
    text.parse::<i64>()
        .ok()
        .or_else(|| crate::event::parse_time(text).map(|t| t.timestamp_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86400));
        assert!(parse_duration("soon").unwrap_err().contains("soon"));
    }
}
