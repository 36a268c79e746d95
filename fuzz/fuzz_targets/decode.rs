//! Fuzzes the intake's pure path: body parsing (JSON or form), decoding and the dedupe key.
//! Run: `cargo fuzz run decode` (needs cargo-fuzz; on a stable toolchain prefix RUSTC_BOOTSTRAP=1).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::event::{decode, dedupe_key, parse_body};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the Content-Type the body claims.
    let (content_type, body) = match data.split_first() {
        Some((b, rest)) if b % 2 == 0 => (Some("application/x-www-form-urlencoded"), rest),
        Some((_, rest)) => (Some("application/json"), rest),
        None => (None, data),
    };
    if let Ok(parsed) = parse_body(body, content_type) {
        let decoded = decode(&parsed);
        let _ = dedupe_key(&parsed.fields);
        // The decoded view is stored as JSON and read back: that must round-trip.
        let stored = serde_json::to_string(&decoded.event).expect("decoded view serializes");
        let back: switchboard::event::CallEvent =
            serde_json::from_str(&stored).expect("decoded view deserializes");
        assert_eq!(back, decoded.event);
    }
});
