//! Fuzzes intake of `application/x-www-form-urlencoded` pushes: parsing, decoding (an `extend`
//! field carries JSON text, `relevant_agent` a list), the dedupe key, and what the store keeps.
//! Whatever intake accepts must be storable and read back unchanged: no NUL anywhere, and the
//! decoded view and warnings round-trip through their stored JSON text.
//! Run: `cargo fuzz run form_body -- -dict=dicts/form.dict` (needs cargo-fuzz; on a stable
//! toolchain prefix RUSTC_BOOTSTRAP=1).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchboard::event::{BodyFormat, CallEvent, Warning, decode, dedupe_key, parse_body};

const FORM: Option<&str> = Some("application/x-www-form-urlencoded; charset=utf-8");

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = parse_body(data, FORM) else {
        return;
    };
    // A body that looks like a JSON object is read as JSON whatever the header says.
    if parsed.format == BodyFormat::Form {
        let text = std::str::from_utf8(data).expect("accepted bodies are UTF-8");
        assert!(!text.trim_start().starts_with('{'));
    }
    for (key, value) in &parsed.fields {
        assert!(
            !key.contains('\0') && !holds_nul(value),
            "a NUL was accepted"
        );
    }
    let _ = dedupe_key(&parsed.fields);
    let decoded = decode(&parsed);
    // What the store writes and reads back.
    let stored = serde_json::to_string(&decoded.event).expect("decoded view serializes");
    let back: CallEvent = serde_json::from_str(&stored).expect("decoded view reads back");
    assert_eq!(back, decoded.event);
    let stored = serde_json::to_string(&decoded.warnings).expect("warnings serialize");
    let back: Vec<Warning> = serde_json::from_str(&stored).expect("warnings read back");
    assert_eq!(back.len(), decoded.warnings.len());
    // Search keys fit a database index.
    for key in [&decoded.event.call_id, &decoded.event.customer_phone]
        .into_iter()
        .flatten()
    {
        assert!(key.len() <= switchboard::event::MAX_SEARCH_KEY_BYTES);
    }
});

fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}
