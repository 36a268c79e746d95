//! Property tests of the pure decoder: it never panics, and it never drops a field silently.

use proptest::prelude::*;
use serde_json::{Map, Value};
use switchboard::event::{decode, parse_body};

const KNOWN: &[&str] = &[
    "call_id",
    "conversation_id",
    "timestamp",
    "nick_name",
    "customer_phone",
    "mobile_area",
    "display_number",
    "workflow",
    "from_agent_id",
    "call_result",
    "is_leave_message",
    "total_time",
    "record_url",
    "survey",
    "outline_phone_number",
    "agent_id",
    "customer_ring_at",
    "agent_ring_at",
    "customer_answer_at",
    "agent_answer_at",
    "customer_hangup_at",
    "agent_hangup_at",
    "agent_email",
    "category",
    "task_name",
    "queue_status",
    "queue_statue",
    "queue_time",
    "dtmf",
    "device_info",
    "drop_side",
    "defeat_cause",
    "multi_ring_count",
    "relevent_agent",
    "relevant_agent",
    "ivr_time",
    "extend",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "[0-9 .eE+-]{0,12}".prop_map(Value::String),
        "(true|false|1|0|TRUE| 7 |2018-03-22 11:48:23 \\+0800|[0-9]{4,5}-[01][0-9]-[0-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-6][0-9] [+-][01][0-9][0-5][0-9]|待機放棄|放弃排队|)".prop_map(Value::String),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(KNOWN).prop_map(str::to_string),
        "[a-z_]{1,10}",
    ]
}

fn is_absent(v: &Value) -> bool {
    v.is_null() || v.as_str().is_some_and(|s| s.trim().is_empty())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parsing_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256), form in any::<bool>()) {
        let ct = form.then_some("application/x-www-form-urlencoded");
        if let Ok(parsed) = parse_body(&bytes, ct) {
            let _ = decode(&parsed);
        }
    }

    #[test]
    fn every_present_field_is_decoded_kept_or_warned(fields in prop::collection::btree_map(field_name(), json_value(), 0..12)) {
        let body = Value::Object(fields.clone().into_iter().collect::<Map<_, _>>()).to_string();
        let parsed = parse_body(body.as_bytes(), None).unwrap();
        let decoded = decode(&parsed);
        let view = serde_json::to_value(&decoded.event).unwrap();
        let back: switchboard::event::CallEvent = serde_json::from_value(view.clone()).unwrap();
        prop_assert_eq!(&back, &decoded.event, "the stored view must read back the same");
        for (key, value) in &fields {
            if is_absent(value) {
                continue;
            }
            let canonical = match key.as_str() {
                "queue_statue" => "queue_status",
                "relevant_agent" => "relevent_agent",
                other => other,
            };
            let kept = view.get(canonical).is_some()
                || view.get("extra").and_then(|e| e.get(key)).is_some();
            let warned = decoded.warnings.iter().any(|w| &w.field == key);
            prop_assert!(kept || warned, "field `{}` = {} was dropped silently", key, value);
        }
    }
}
