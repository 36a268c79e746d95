//! Fuzzes the admin API's query parsing: a query string decoded as axum's `Query` does
//! (serde_urlencoded) and read by `GET /v1/events?…`'s parser, and the times and durations the
//! admin API takes (`since`, `until`, mute and replay durations). Nothing may panic (overflow
//! included: fuzz builds check arithmetic), and what is accepted must be in range.
//! Run: `cargo fuzz run admin_query -- -dict=dicts/query.dict` (needs cargo-fuzz; on a stable
//! toolchain prefix RUSTC_BOOTSTRAP=1).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use switchboard::api::parse_event_query;
use switchboard::time::{parse_duration, parse_instant, parse_since};

/// A fixed "now" (2026-12-01), so that runs are reproducible.
const NOW_MS: i64 = 1_796_083_200_000;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(params) = serde_urlencoded::from_str::<HashMap<String, String>>(raw) {
        if let Ok(query) = parse_event_query(&params) {
            assert!((1..=500).contains(&query.limit), "limit {}", query.limit);
        }
        for value in params.values() {
            times(value);
        }
    }
    times(raw);
});

fn times(text: &str) {
    let _ = parse_instant(text);
    if let Ok(since) = parse_since(text, NOW_MS) {
        // A duration back from now never lands in the future.
        if parse_duration(text).is_ok() {
            assert!(since <= NOW_MS);
        }
    }
    if let Ok(duration) = parse_duration(text) {
        let _ = i64::try_from(duration.as_millis()).map(|ms| NOW_MS.saturating_add(ms));
    }
}
