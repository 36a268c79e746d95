//! The intake endpoint over real HTTP: samples, bad and odd inputs, auth, duplicates, read-back.

use crate::util::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test]
async fn every_sample_is_accepted_and_read_back() {
    let server = TestServer::start().await;
    for (name, body) in samples() {
        let (status, ack) = server.post(body.clone(), Some("application/json")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{name}: {ack}");
        assert_eq!(ack["duplicate"], false, "{name}");
        let id = ack["id"].as_i64().unwrap();
        let (status, event) = server.admin_get(&format!("/v1/events/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_eq!(
            event["raw_body"],
            String::from_utf8(body).unwrap(),
            "{name}"
        );
        let sent: Value = serde_json::from_str(event["raw_body"].as_str().unwrap()).unwrap();
        assert_eq!(event["event"]["call_id"], sent["call_id"], "{name}");
    }
    // The shared samples, when present beside the project, are the same files.
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/payloads");
    if shared.is_dir() {
        for entry in std::fs::read_dir(shared).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(
                std::fs::read(&path).unwrap(),
                sample(&name),
                "examples/payloads/{name} is stale"
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn the_quirky_sample_decodes_field_by_field() {
    let server = TestServer::start().await;
    let (status, ack) = server.post(sample("quirky-types.json"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{ack}");
    assert!(ack.get("warnings").is_none(), "no warnings expected: {ack}");
    let (_, stored) = server.admin_get(&format!("/v1/events/{}", ack["id"])).await;
    let ev = &stored["event"];
    assert_eq!(ev["call_id"], "5f1d2c9a-77b0-4c1e-8a3e-2b9d6e4f0a21");
    assert_eq!(ev["conversation_id"], 20932); // "20932"
    assert_eq!(ev["timestamp"], "2026-11-20T22:03:07+08:00");
    assert!(ev.get("nick_name").is_none()); // ""
    assert_eq!(ev["customer_phone"], "13912345678");
    assert!(ev.get("mobile_area").is_none()); // ""
    assert_eq!(ev["workflow"], "in");
    assert!(ev.get("from_agent_id").is_none()); // ""
    assert_eq!(ev["call_result"], "待機タイムアウト");
    assert_eq!(ev["outcome"], "queue_timeout");
    assert_eq!(ev["is_leave_message"], true); // "true"
    assert_eq!(ev["total_time"], 0); // "0"
    assert!(ev.get("record_url").is_none()); // null
    assert!(ev.get("survey").is_none()); // null
    assert!(ev.get("agent_id").is_none()); // ""
    assert_eq!(ev["customer_ring_at"], "2026-11-20T22:01:30+08:00");
    assert_eq!(ev["queue_time"], 97);
    assert_eq!(ev["ivr_time"], 8);
    assert_eq!(ev["multi_ring_count"], 2);
    assert_eq!(
        ev["relevent_agent"],
        json!(["agent1@example.com", "agent2@example.com"])
    );
    assert_eq!(ev["extra"]["new_field_not_in_docs"], json!({"x": 1}));
    assert_eq!(ev["extend"], json!({}));
    assert_eq!(stored["warnings"], json!([]));
    server.stop().await;
}

#[tokio::test]
async fn samples_decode_to_their_outcomes() {
    let server = TestServer::start().await;
    for (name, outcome, queue_time) in [
        ("abandoned-long-wait.json", "queue_abandoned", json!(81)),
        ("outbound-no-answer.json", "customer_no_answer", json!(0)),
        ("udesk-example.json", "customer_answered", Value::Null),
    ] {
        let (_, ack) = server.post(sample(name), None).await;
        let (_, stored) = server.admin_get(&format!("/v1/events/{}", ack["id"])).await;
        assert_eq!(stored["event"]["outcome"], outcome, "{name}");
        assert_eq!(
            stored["event"]
                .get("queue_time")
                .cloned()
                .unwrap_or(Value::Null),
            queue_time,
            "{name}"
        );
    }
    let (_, ack) = server.post(sample("udesk-example.json"), None).await;
    assert_eq!(ack["duplicate"], true);
    let (_, stored) = server.admin_get(&format!("/v1/events/{}", ack["id"])).await;
    let ev = &stored["event"];
    assert_eq!(ev["is_leave_message"], false); // "false"
    assert_eq!(ev["extend"], json!({"code": "call test"}));
    assert_eq!(ev["from_agent_id"], 123);
    assert_eq!(ev["survey"], "評価不要");
    server.stop().await;
}

/// How a case authenticates.
#[derive(Clone, Copy)]
enum Auth {
    Bearer,
    Query,
    None,
    Wrong,
    WrongScheme,
}

struct Case {
    name: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    auth: Auth,
    status: u16,
    /// `error` code for rejections; for acceptances, a warning field that must be reported.
    expect: Option<&'static str>,
    /// A part of the error message (or of the warning message).
    message: Option<&'static str>,
}

fn case(
    name: &'static str,
    body: impl Into<Vec<u8>>,
    status: u16,
    expect: Option<&'static str>,
    message: Option<&'static str>,
) -> Case {
    Case {
        name,
        content_type: Some("application/json"),
        body: body.into(),
        auth: Auth::Bearer,
        status,
        expect,
        message,
    }
}

fn nested(depth: usize) -> Vec<u8> {
    let open = "{\"k\":".repeat(depth);
    format!(
        "{{\"call_id\":\"deep\",\"extend\":{open}1{}}}",
        "}".repeat(depth)
    )
    .into_bytes()
}

fn bad_and_odd_inputs() -> Vec<Case> {
    let many_fields = {
        let fields: Vec<String> = (0..10_000).map(|i| format!("\"f{i:05}\":{i}")).collect();
        format!("{{\"call_id\":\"many\",{}}}", fields.join(","))
    };
    vec![
        case(
            "empty body",
            "",
            400,
            Some("empty_body"),
            Some("empty body"),
        ),
        case(
            "whitespace only",
            " \n\t ",
            400,
            Some("empty_body"),
            Some("expected a JSON object"),
        ),
        case(
            "null",
            "null",
            400,
            Some("not_an_object"),
            Some("found null"),
        ),
        case(
            "array",
            "[{\"call_id\":\"x\"}]",
            400,
            Some("not_an_object"),
            Some("found an array"),
        ),
        case(
            "string",
            "\"hello\"",
            400,
            Some("not_an_object"),
            Some("found a string"),
        ),
        case(
            "number",
            "42",
            400,
            Some("not_an_object"),
            Some("found a number"),
        ),
        case(
            "truncated",
            "{\"a\":",
            400,
            Some("invalid_json"),
            Some("line 1, column 5"),
        ),
        case(
            "trailing comma",
            "{\"a\":1,}",
            400,
            Some("invalid_json"),
            Some("trailing comma"),
        ),
        case(
            "unquoted key",
            "{a:1}",
            400,
            Some("invalid_json"),
            Some("key must be a string"),
        ),
        case(
            "trailing garbage",
            "{\"a\":1} x",
            400,
            Some("invalid_json"),
            Some("trailing characters"),
        ),
        case(
            "second line error",
            "{\n\"a\": 1,\n\"b\" 2}",
            400,
            Some("invalid_json"),
            Some("line 3, column 5"),
        ),
        case(
            "invalid UTF-8",
            b"{\"nick_name\":\"\xff\xfe\"}".to_vec(),
            400,
            Some("invalid_utf8"),
            Some("offset 14"),
        ),
        case(
            "lone surrogate escape",
            "{\"nick_name\":\"\\ud800\"}",
            400,
            Some("invalid_json"),
            Some("line 1, column 21"),
        ),
        case(
            "too deep",
            nested(200),
            400,
            Some("too_deep"),
            Some("deeper than 100 levels"),
        ),
        case(
            "number out of range",
            "{\"queue_time\":1e400}",
            400,
            Some("invalid_json"),
            Some("number out of range"),
        ),
        case(
            "body over the limit",
            format!("{{\"x\":\"{}\"}}", "a".repeat(300 * 1024)),
            413,
            Some("body_too_large"),
            Some("262144 bytes"),
        ),
        Case {
            auth: Auth::None,
            ..case(
                "no token",
                "{\"call_id\":\"a\"}",
                401,
                Some("unauthorized"),
                Some("ingest token"),
            )
        },
        Case {
            auth: Auth::Wrong,
            ..case(
                "wrong token",
                "{\"call_id\":\"a\"}",
                401,
                Some("unauthorized"),
                None,
            )
        },
        Case {
            auth: Auth::WrongScheme,
            ..case(
                "basic auth",
                "{\"call_id\":\"a\"}",
                401,
                Some("unauthorized"),
                None,
            )
        },
        // Accepted, odd
        case(
            "BOM",
            b"\xEF\xBB\xBF{\"call_id\":\"bom\"}".to_vec(),
            202,
            None,
            None,
        ),
        case(
            "nested at the limit (100 levels)",
            nested(99),
            202,
            None,
            None,
        ),
        case(
            "huge integer",
            "{\"call_id\":\"big\",\"queue_time\":123456789012345678901234567890}",
            202,
            Some("queue_time"),
            Some("expected an integer"),
        ),
        case(
            "numeric string",
            "{\"call_id\":\"ns\",\"queue_time\":\" 61 \"}",
            202,
            None,
            None,
        ),
        case(
            "non-numeric queue_time",
            "{\"call_id\":\"q\",\"queue_time\":\"abc\"}",
            202,
            Some("queue_time"),
            Some("field left absent"),
        ),
        case(
            "odd boolean",
            "{\"call_id\":\"b\",\"is_leave_message\":2}",
            202,
            Some("is_leave_message"),
            Some("expected a boolean"),
        ),
        case(
            "bad time",
            "{\"call_id\":\"t\",\"timestamp\":\"yesterday\"}",
            202,
            Some("timestamp"),
            Some("expected a time"),
        ),
        case(
            "duplicate keys",
            "{\"call_id\":\"d\",\"queue_time\":1,\"queue_time\":2}",
            202,
            Some("queue_time"),
            Some("more than once"),
        ),
        case(
            "unknown call_result",
            "{\"call_id\":\"u\",\"call_result\":\"???\"}",
            202,
            Some("call_result"),
            Some("not a known call result"),
        ),
        case(
            "CJK everywhere",
            "{\"call_id\":\"中文\",\"nick_name\":\"山田 花子\",\"call_result\":\"放弃排队\",\"extend\":{\"备注\":\"ＶＩＰ\"}}",
            202,
            None,
            None,
        ),
        case("empty object", "{}", 202, None, None),
        case(
            "NUL in a string",
            "{\"call_id\":\"n\",\"nick_name\":\"a\\u0000b\"}",
            400,
            Some("invalid_text"),
            Some("field `nick_name` holds a NUL character"),
        ),
        case("10k fields", many_fields, 202, None, None),
        case(
            "extend as a string",
            "{\"call_id\":\"e\",\"extend\":\"{\\\"code\\\":\\\"vip-line\\\"}\"}",
            202,
            None,
            None,
        ),
        case(
            "extend not an object",
            "{\"call_id\":\"e2\",\"extend\":[1]}",
            202,
            Some("extend"),
            Some("kept as sent"),
        ),
        Case {
            content_type: None,
            ..case("no content type", "{\"call_id\":\"nct\"}", 202, None, None)
        },
        Case {
            content_type: Some("text/plain"),
            ..case("text/plain", "{\"call_id\":\"tp\"}", 202, None, None)
        },
        Case {
            content_type: Some("application/json;charset=utf8"),
            ..case("charset=utf8", "{\"call_id\":\"cs\"}", 202, None, None)
        },
        Case {
            content_type: Some("application/x-www-form-urlencoded"),
            ..case(
                "form body",
                "call_id=form&queue_time=75&call_result=%E5%BE%85%E6%A9%9F%E6%94%BE%E6%A3%84",
                202,
                None,
                None,
            )
        },
        Case {
            auth: Auth::Query,
            ..case("token in the URL", "{\"call_id\":\"qt\"}", 202, None, None)
        },
    ]
}

#[tokio::test]
async fn bad_and_odd_inputs_get_clear_answers_and_the_service_stays_healthy() {
    let server = TestServer::start().await;
    let cases = bad_and_odd_inputs();
    assert!(cases.len() >= 30);
    for case in cases {
        let url = match case.auth {
            Auth::Query => server.url(&format!("/v1/notifications?token={INGEST_TOKEN}")),
            _ => server.url("/v1/notifications"),
        };
        let mut request = server.client.post(url).body(case.body.clone());
        request = match case.auth {
            Auth::Bearer => request.bearer_auth(INGEST_TOKEN),
            Auth::Wrong => request.bearer_auth("not-the-token"),
            Auth::WrongScheme => request.header("authorization", format!("Basic {INGEST_TOKEN}")),
            Auth::Query | Auth::None => request,
        };
        if let Some(ct) = case.content_type {
            request = request.header("content-type", ct);
        }
        let (status, body) = send(request).await;
        assert_eq!(status.as_u16(), case.status, "{}: {body}", case.name);
        if case.status >= 400 {
            assert_eq!(body["error"], case.expect.unwrap(), "{}: {body}", case.name);
            if let Some(part) = case.message {
                let message = body["message"].as_str().unwrap();
                assert!(
                    message.contains(part),
                    "{}: `{message}` lacks `{part}`",
                    case.name
                );
            }
            continue;
        }
        let id = body["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("{}: {body}", case.name));
        let warnings = body.get("warnings").cloned().unwrap_or(json!([]));
        match case.expect {
            Some(field) => {
                let warning = warnings
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|w| w["field"] == field)
                    .unwrap_or_else(|| panic!("{}: no warning for {field}: {body}", case.name));
                let message = warning["message"].as_str().unwrap();
                assert!(
                    message.contains(case.message.unwrap()),
                    "{}: {message}",
                    case.name
                );
            }
            None => assert_eq!(warnings, json!([]), "{}", case.name),
        }
        let (status, stored) = server.admin_get(&format!("/v1/events/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{}", case.name);
        assert_eq!(
            stored["warnings"], warnings,
            "{}: stored warnings",
            case.name
        );
        match case.name {
            "form body" => {
                assert_eq!(stored["event"]["queue_time"], 75);
                assert_eq!(stored["event"]["outcome"], "queue_abandoned");
            }
            "extend as a string" => assert_eq!(stored["event"]["extend"]["code"], "vip-line"),
            "CJK everywhere" => {
                assert_eq!(stored["event"]["nick_name"], "山田 花子");
                assert_eq!(stored["event"]["outcome"], "queue_abandoned");
            }
            "10k fields" => assert_eq!(stored["event"]["extra"].as_object().unwrap().len(), 10_000),
            _ => {}
        }
    }
    // Still healthy, and still accepting.
    let (status, _) = send(server.client.get(server.url("/healthz"))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.post(sample("abandoned-long-wait.json"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    server.stop().await;
}

#[tokio::test]
async fn unknown_paths_and_methods_get_json_errors() {
    let server = TestServer::start().await;
    let (status, body) = send(server.client.get(server.url("/v1/notifications"))).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"], "method_not_allowed");
    let (status, body) = send(server.client.post(server.url("/v1/nope"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
    assert!(body["message"].as_str().unwrap().contains("/v1/nope"));
    server.stop().await;
}

#[tokio::test]
async fn duplicates_are_stored_once_whatever_the_key_order() {
    let server = TestServer::start().await;
    let (status, first) = server
        .post(
            r#"{"call_id":"dup","queue_time":5,"extend":{"a":1,"b":2}}"#,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, again) = server
        .post(
            "{ \"extend\": {\"b\":2, \"a\":1}, \"queue_time\": 5, \"call_id\": \"dup\" }",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, json!({"id": first["id"], "duplicate": true}));
    let (status, other) = server
        .post(
            r#"{"call_id":"dup","queue_time":6,"extend":{"a":1,"b":2}}"#,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_ne!(other["id"], first["id"]);
    // Concurrent copies of one body: one event.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let client = server.client.clone();
        let url = server.url("/v1/notifications");
        tasks.spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(INGEST_TOKEN)
                .body(r#"{"call_id":"burst"}"#)
                .send()
                .await
                .unwrap();
            json_response(r).await
        });
    }
    let answers = tasks.join_all().await;
    let ids: std::collections::HashSet<_> = answers
        .iter()
        .map(|(_, b)| b["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert_eq!(
        answers
            .iter()
            .filter(|(s, _)| *s == StatusCode::ACCEPTED)
            .count(),
        1
    );
    let (_, page) = server.admin_get("/v1/events?call_id=burst").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn accepted_events_are_processed() {
    let server = TestServer::start().await;
    let (_, ack) = server.post(sample("abandoned-long-wait.json"), None).await;
    let path = format!("/v1/events/{}", ack["id"]);
    let stored = eventually(
        Duration::from_secs(10),
        "the event to be processed",
        || async {
            let (_, stored) = server.admin_get(&path).await;
            (stored["state"] == "processed").then_some(stored)
        },
    )
    .await;
    assert!(stored["processed_at"].is_string());
    server.stop().await;
}

#[tokio::test]
async fn listing_filters_and_pages_newest_first() {
    let server = TestServer::start().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let phone = if i % 2 == 0 { "111" } else { "222" };
        let (_, ack) = server
            .post(
                format!(
                    r#"{{"call_id":"c{}","customer_phone":"{phone}","n":{i}}}"#,
                    i % 3
                ),
                None,
            )
            .await;
        ids.push(ack["id"].as_i64().unwrap());
    }
    let (_, page) = server
        .admin_get("/v1/events?customer_phone=111&limit=2")
        .await;
    let got: Vec<i64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, vec![ids[6], ids[4]]);
    assert!(page["events"][0].get("raw_body").is_none());
    let (_, page) = server
        .admin_get(&format!(
            "/v1/events?customer_phone=111&limit=2&before={}",
            page["next_before"]
        ))
        .await;
    let got: Vec<i64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, vec![ids[2], ids[0]]);
    let (_, page) = server
        .admin_get("/v1/events?call_id=c0&customer_phone=111")
        .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 2); // n = 0 and 6
    assert_eq!(page["next_before"], Value::Null);
    let (_, page) = server
        .admin_get("/v1/events?since=2000-01-01T00:00:00Z&until=2000-01-02T00:00:00Z")
        .await;
    assert_eq!(page["events"], json!([]));
    let (_, page) = server
        .admin_get("/v1/events?since=2000-01-01%2000:00:00%20%2B0800")
        .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 7);
    server.stop().await;
}

#[tokio::test]
async fn admin_api_rejects_bad_parameters_and_tokens() {
    let server = TestServer::start().await;
    for (path, parameter) in [
        ("/v1/events?limit=0", "limit"),
        ("/v1/events?limit=many", "limit"),
        ("/v1/events?since=yesterday", "since"),
        ("/v1/events?until=2026-13-01", "until"),
        ("/v1/events?before=x", "before"),
        ("/v1/events?mobile=1", "mobile"),
        ("/v1/events?outcome=hung", "outcome"),
    ] {
        let (status, body) = server.admin_get(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["parameter"], parameter, "{path}: {body}");
    }
    let (status, body) = server.admin_get("/v1/events/abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["message"].as_str().unwrap().contains("integer"));
    let (status, _) = server.admin_get("/v1/events/999999").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for token in [None, Some("wrong"), Some(INGEST_TOKEN)] {
        let mut request = server.client.get(server.url("/v1/events"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let (status, body) = send(request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(body["error"], "unauthorized");
    }
    // The admin token is not taken from the URL.
    let (status, _) = json_response(
        server
            .client
            .get(server.url(&format!("/v1/events?token={ADMIN_TOKEN}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    server.stop().await;
}

#[tokio::test]
async fn several_ingest_tokens_are_valid_at_once() {
    let server = TestServer::start_with(|config| {
        config.ingest_tokens = vec![
            switchboard::config::Secret::new("old"),
            switchboard::config::Secret::new("new"),
        ];
    })
    .await;
    for token in ["old", "new"] {
        let r = server
            .client
            .post(server.url(&format!("/v1/notifications?token={token}")))
            .body(format!("{{\"t\":\"{token}\"}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{token}");
    }
    let r = server
        .client
        .post(server.url("/v1/notifications?token=older"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    server.stop().await;
}

#[tokio::test]
async fn graceful_stop_keeps_everything_and_restart_reads_it() {
    let server = TestServer::start().await;
    let (_, ack) = server.post(sample("outbound-no-answer.json"), None).await;
    let db = server.database.clone();
    let dir = server.stop().await;
    let server =
        TestServer::start_with(|c| c.database_url = switchboard::config::Secret::new(db)).await;
    let (status, stored) = server.admin_get(&format!("/v1/events/{}", ack["id"])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stored["event"]["outcome"], "customer_no_answer");
    drop(dir);
    server.stop().await;
}
