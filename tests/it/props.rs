//! Property tests of the pure decoder (it never panics, and it never drops a field silently), and
//! of intake and read-back through the running service (every accepted push reads back and
//! evaluates).

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
        let object = Value::Object(fields.clone().into_iter().collect::<Map<_, _>>());
        prop_assume!(!holds_nul(&object), "intake refuses NUL characters");
        let body = object.to_string();
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

/// How deep a JSON value nests arrays and objects (a scalar is 0, `[]` is 1).
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// A value nested `levels` deep (arrays and objects in turn) around a leaf.
fn deep_value() -> impl Strategy<Value = Value> {
    (90usize..=102, any::<bool>(), json_value()).prop_map(|(levels, objects, leaf)| {
        (0..levels).fold(leaf, |inner, level| {
            if objects && level % 2 == 0 {
                Value::Object(Map::from_iter([("k".to_string(), inner)]))
            } else {
                Value::Array(vec![inner])
            }
        })
    })
}

/// Values at the edges of what intake and the store take: deep nesting either side of the
/// limit, long search keys, extreme numbers, NUL characters.
fn edge_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => json_value(),
        2 => deep_value(),
        1 => "[0-9a-z]{200,300}".prop_map(Value::String),
        1 => prop_oneof![
            Just(Value::from(u64::MAX)),
            Just(Value::from(i64::MIN)),
            Just(Value::from(1.7e308)),
            Just(Value::from(-0.0)),
            Just(Value::from(5e-324)),
        ],
        1 => "[a-z]{0,3}\u{0}[a-z]{0,3}".prop_map(Value::String),
    ]
}

/// A push body: a JSON object, or a form (whose `extend` is JSON text), with its content type.
fn push_body() -> impl Strategy<Value = (Vec<u8>, Option<&'static str>, Value)> {
    let fields = prop::collection::btree_map(field_name(), edge_value(), 1..8);
    let json = fields.prop_map(|fields| {
        let value = Value::Object(fields.into_iter().collect::<Map<_, _>>());
        (value.to_string().into_bytes(), None, value)
    });
    let form = (
        prop::collection::btree_map(field_name(), "[a-z0-9 :+-]{0,12}", 0..5),
        deep_value(),
    )
        .prop_map(|(mut fields, extend)| {
            fields.insert("extend".into(), extend.to_string());
            let body = serde_urlencoded::to_string(&fields).unwrap().into_bytes();
            let value = Value::Object(
                fields
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect(),
            );
            (body, Some("application/x-www-form-urlencoded"), value)
        });
    prop_oneof![3 => json, 1 => form]
}

/// Through the real service on both stores: a push is refused exactly when it nests deeper
/// than intake's limit or holds a NUL; every push accepted reads back as it was decoded,
/// evaluates against the shipped rules (a dry run), and is processed, none quarantined.
#[test]
fn every_accepted_body_reads_back_and_evaluates() {
    use crate::util::{ADMIN_TOKEN, TestServer, eventually, send};
    use proptest::test_runner::{TestCaseError, TestRunner};
    use reqwest::StatusCode;
    use std::time::Duration;
    use switchboard::event::MAX_NESTING;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(TestServer::start_with(|config| {
        config.rules_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    }));
    let accepted = std::cell::RefCell::new(Vec::new());
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    });
    let outcome = runner.run(&push_body(), |(body, content_type, value)| {
        runtime.block_on(async {
            let (status, answer) = server.post(body.clone(), content_type).await;
            let too_deep = content_type.is_none() && depth(&value) > MAX_NESTING;
            if too_deep || holds_nul(&value) {
                prop_assert_eq!(status, StatusCode::BAD_REQUEST, "{}", answer);
                let code = if too_deep { "too_deep" } else { "invalid_text" };
                prop_assert_eq!(&answer["error"], code, "{}", answer);
                return Ok(());
            }
            prop_assert!(status.is_success(), "{} {}", status, answer);
            let id = answer["id"].as_i64().unwrap();
            accepted.borrow_mut().push(id);
            let (status, trace) = server.admin_get(&format!("/v1/events/{id}")).await;
            prop_assert_eq!(status, StatusCode::OK, "{}", trace);
            prop_assert!(trace.get("unreadable").is_none(), "{}", trace);
            let parsed = parse_body(&body, content_type).unwrap();
            let expected = serde_json::to_value(decode(&parsed).event).unwrap();
            prop_assert_eq!(
                &trace["event"],
                &expected,
                "the stored view reads back as decoded"
            );
            let (status, dry) = send(
                server
                    .client
                    .post(server.url(&format!("/v1/events/{id}/replay")))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&serde_json::json!({})),
            )
            .await;
            prop_assert_eq!(status, StatusCode::OK, "{}", dry);
            Ok::<(), TestCaseError>(())
        })
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    let accepted = accepted.into_inner();
    runtime.block_on(async {
        for id in &accepted {
            eventually(
                Duration::from_secs(60),
                "every accepted event to be processed",
                || async {
                    let (_, trace) = server.admin_get(&format!("/v1/events/{id}")).await;
                    (trace["state"] == "processed").then_some(())
                },
            )
            .await;
        }
        let (_, overview) = server.admin_get("/v1/overview").await;
        assert_eq!(overview["quarantined_events"], 0, "{overview}");
        server.stop().await;
    });
}
