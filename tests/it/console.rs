//! The operator's admin API: overview, event search by outcome and matched rule, mutes, replay
//! (dry and real), what-if (API and CLI), instances; bad parameters get 400s that name them, and
//! missing tokens 401s.

use crate::util::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

const ABANDONED_RULE: &str = "const NAME = \"abandoned\";\nfn when(ev) { ev.outcome == \"queue_abandoned\" }\nfn then(ev) { [callback_task(#{ phone: ev.customer_phone, reason: \"abandoned\" })] }";
const ANSWERED_RULE: &str = "const NAME = \"answered\";\nfn when(ev) { ev.outcome == \"agent_answered\" }\nfn then(ev) { [close_callback_tasks(#{ phone: ev.customer_phone })] }";

async fn service() -> (TestServer, tempfile::TempDir) {
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("abandoned.rhai"), ABANDONED_RULE).unwrap();
    std::fs::write(rules.path().join("answered.rhai"), ANSWERED_RULE).unwrap();
    let rules_dir = rules.path().to_path_buf();
    let server = TestServer::start_with(move |config| config.rules_dir = rules_dir).await;
    (server, rules)
}

/// Posts a call with the given `call_result` and phone; returns its event id.
async fn call(server: &TestServer, n: u64, call_result: &str, phone: &str) -> i64 {
    let body = json!({"call_id": format!("c{n}"), "conversation_id": n, "call_result": call_result, "customer_phone": phone});
    let (status, ack) = server.post(body.to_string(), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{ack}");
    ack["id"].as_i64().unwrap()
}

/// Waits until the event is processed and its jobs settled; returns its trace.
async fn processed(server: &TestServer, id: i64) -> Value {
    server.settled_trace(id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_search_and_instances() {
    let (server, _rules) = service().await;
    let a = call(&server, 1, "待機放棄", "13800000001").await;
    let b = call(&server, 2, "オペレーター応答", "13800000002").await;
    let c = call(&server, 3, "顧客未応答", "13800000003").await;
    for id in [a, b, c] {
        processed(&server, id).await;
    }
    // The trace: each rule's verdict, and the jobs with their attempts.
    let trace = processed(&server, a).await;
    assert_eq!(
        trace["rules"],
        json!([{"rule": "abandoned", "verdict": "matched"}, {"rule": "answered", "verdict": "not_matched"}]),
        "{trace}"
    );
    assert_eq!(
        trace["jobs"][0]["attempt_log"][0]["outcome"], "success",
        "{trace}"
    );
    assert!(
        trace["evaluation"]["ruleset_version"].is_string(),
        "{trace}"
    );
    let (status, overview) = server.admin_get("/v1/overview?minutes=60").await;
    assert_eq!(status, StatusCode::OK, "{overview}");
    assert_eq!(overview["events"], 3, "{overview}");
    assert_eq!(overview["matched_events"], 2, "{overview}");
    assert_eq!(overview["open_callback_tasks"], 1, "{overview}");
    assert_eq!(overview["rules"]["count"], 2, "{overview}");
    assert_eq!(overview["rules"]["broken"], 0, "{overview}");
    assert_eq!(overview["jobs"]["done"], 2, "{overview}");
    assert_eq!(overview["jobs"]["dead"], 0, "{overview}");
    let per_minute: i64 = overview["events_per_minute"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["events"].as_i64().unwrap())
        .sum();
    assert_eq!(per_minute, 3);

    // Search by outcome (normalized or as Udesk spells it) and by matched rule.
    for query in [
        "outcome=queue_abandoned",
        "outcome=待機放棄",
        "rule=abandoned",
    ] {
        let (status, page) = server.admin_get(&format!("/v1/events?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{query}: {page}");
        let ids: Vec<i64> = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, [a], "{query}");
    }
    let (_, page) = server.admin_get("/v1/events?rule=nobody").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 0);

    // Prometheus text.
    let (status, _) = server.post("{not json", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let response = server
        .client
        .get(server.url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("openmetrics-text")
    );
    let text = response.text().await.unwrap();
    for line in [
        "switchboard_notifications_total{result=\"accepted\",reason=\"\"} 3",
        "switchboard_notifications_total{result=\"rejected\",reason=\"invalid_json\"} 1",
        "switchboard_rule_matches_total{rule=\"abandoned\"} 1",
        "switchboard_job_attempts_total{kind=\"callback_task\",outcome=\"success\"} 1",
        "switchboard_open_callback_tasks 1",
        "switchboard_dead_jobs 0",
        "switchboard_evaluation_seconds_count 3",
        "switchboard_store_seconds_count{op=\"insert_events\"}",
    ] {
        assert!(text.contains(line), "`{line}` missing from:\n{text}");
    }

    // This instance reports the rule set it runs.
    let (status, instances) = server.admin_get("/v1/instances").await;
    assert_eq!(status, StatusCode::OK);
    let (_, rules) = server.admin_get("/v1/rules").await;
    assert_eq!(instances["agree"], true);
    assert_eq!(
        instances["instances"][0]["ruleset_version"],
        rules["version"]
    );

    for (path, parameter) in [
        ("/v1/overview?minutes=0", "minutes"),
        ("/v1/overview?window=5", "window"),
        ("/v1/events?outcome=lost", "outcome"),
        ("/v1/mutes?all=maybe", "all"),
    ] {
        let (status, body) = server.admin_get(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["parameter"], parameter, "{path}: {body}");
    }
    for path in ["/v1/overview", "/v1/instances", "/v1/mutes", "/metrics"] {
        let status = server
            .client
            .get(server.url(path))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        let wrong = server
            .client
            .get(server.url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(wrong, StatusCode::UNAUTHORIZED, "{path}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn muted_rules_and_phones_record_their_actions_as_muted() {
    let (server, _rules) = service().await;
    let (status, mute) = server.admin_post(
        "/v1/mutes",
        json!({"scope": "rule", "value": "abandoned", "for": "1h", "reason": "queue maintenance"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{mute}");
    let (status, phone_mute) = server.admin_post(
        "/v1/mutes",
        json!({"scope": "phone", "value": "13800000009", "until": "2099-01-01T00:00:00Z", "reason": "test line"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{phone_mute}");

    let trace = processed(&server, call(&server, 1, "待機放棄", "13800000001").await).await;
    assert_eq!(trace["jobs"][0]["status"], "muted", "{trace}");
    let verdict = |trace: &Value, rule: &str| {
        trace["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == rule)
            .map(|r| r["verdict"].clone())
    };
    assert_eq!(
        verdict(&trace, "abandoned"),
        Some(json!("muted")),
        "{trace}"
    );
    assert_eq!(
        verdict(&trace, "answered"),
        Some(json!("not_matched")),
        "{trace}"
    );
    let note = trace["jobs"][0]["note"].as_str().unwrap();
    assert!(
        note.contains("abandoned") && note.contains("queue maintenance"),
        "{note}"
    );
    let trace = processed(
        &server,
        call(&server, 2, "オペレーター応答", "13800000009").await,
    )
    .await;
    assert_eq!(
        trace["jobs"][0]["status"], "muted",
        "the phone's mute: {trace}"
    );

    let (_, listed) = server.admin_get("/v1/mutes").await;
    assert_eq!(listed["mutes"].as_array().unwrap().len(), 2);
    let id = mute["id"].as_i64().unwrap();
    let (status, _) = server
        .admin_post(&format!("/v1/mutes/{id}/lift"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .admin_post(&format!("/v1/mutes/{id}/lift"), json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "lifted already");
    let trace = processed(&server, call(&server, 3, "待機放棄", "13800000001").await).await;
    assert_eq!(trace["jobs"][0]["status"], "done", "lifted: {trace}");
    let (_, all) = server.admin_get("/v1/mutes?all=true").await;
    assert_eq!(all["mutes"].as_array().unwrap().len(), 2);
    let (_, active) = server.admin_get("/v1/mutes").await;
    assert_eq!(active["mutes"].as_array().unwrap().len(), 1);

    for (body, parameter) in [
        (
            json!({"scope": "team", "value": "x", "for": "1h", "reason": "r"}),
            "scope",
        ),
        (
            json!({"scope": "rule", "value": "x", "reason": "r"}),
            "until",
        ),
        (
            json!({"scope": "rule", "value": "x", "for": "soon", "reason": "r"}),
            "for",
        ),
        (
            json!({"scope": "rule", "value": "x", "until": "2001-01-01T00:00:00Z", "reason": "r"}),
            "until",
        ),
        (
            json!({"scope": "rule", "value": "x", "for": "1h", "reason": " "}),
            "reason",
        ),
    ] {
        let (status, answer) = server.admin_post("/v1/mutes", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["parameter"], parameter, "{body}: {answer}");
    }
    let (status, answer) = server
        .admin_post("/v1/mutes", json!({"scope": "rule"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["error"], "invalid_body", "{answer}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_dry_and_real_never_collides_with_the_first_run() {
    let (server, _rules) = service().await;
    let id = call(&server, 1, "待機放棄", "13800000001").await;
    let first = processed(&server, id).await;
    assert_eq!(first["jobs"].as_array().unwrap().len(), 1);

    let path = format!("/v1/events/{id}/replay");
    let (status, dry) = server.admin_post(&path, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(
        (dry["dry_run"].clone(), dry["queued"].clone()),
        (json!(true), json!(0))
    );
    assert_eq!(dry["actions"][0]["kind"], "callback_task", "{dry}");
    assert_eq!(
        processed(&server, id).await["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let (status, real) = server.admin_post(&path, json!({"dry_run": false})).await;
    assert_eq!(status, StatusCode::OK, "{real}");
    assert_eq!(real["queued"], 1, "{real}");
    let run = real["run"].as_str().unwrap().to_string();
    let trace = processed(&server, id).await;
    let jobs = trace["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{trace}");
    assert!(
        jobs.iter()
            .any(|j| j["idempotency_key"].as_str().unwrap().ends_with(&run))
    );
    // The replayed job is marked with its run; the first run's is not.
    let runs: Vec<&Value> = jobs.iter().map(|j| &j["replay_run"]).collect();
    assert_eq!(runs, [&Value::Null, &json!(run)], "{trace}");
    assert!(jobs.iter().all(|j| j["status"] == "done"), "{trace}");

    // A range, dry.
    let (status, range) = server
        .admin_post("/v1/replay", json!({"since": "1h"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{range}");
    assert_eq!(
        range["events"][0]["matched"],
        json!(["abandoned"]),
        "{range}"
    );

    let (status, _) = server
        .admin_post("/v1/events/999999/replay", json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, answer) = server.admin_post(&path, json!({"dry": false})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["message"].as_str().unwrap().contains("dry"),
        "{answer}"
    );
    let (status, answer) = server
        .admin_post("/v1/replay", json!({"since": "last week"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["parameter"], "since", "{answer}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_if_reports_per_rule_changes_by_api_and_cli() {
    let (server, rules) = service().await;
    // A counting rule, the same in the candidate: re-evaluated history must count what each
    // event saw then (not the hits that came after it), or it would show as a change.
    const SPIKE_RULE: &str = "const NAME = \"spike\";\nfn when(ev) { ev.outcome == \"queue_abandoned\" && count_in_window(\"abandoned\", \"1h\") >= 2 }\nfn then(ev) { [] }";
    std::fs::write(rules.path().join("spike.rhai"), SPIKE_RULE).unwrap();
    eventually(
        Duration::from_secs(10),
        "the spike rule to load",
        || async {
            let (_, view) = server.admin_get("/v1/rules").await;
            (view["rules"].as_array()?.len() == 3).then_some(())
        },
    )
    .await;
    let mut ids = Vec::new();
    for (n, (result, queue_time)) in [("待機放棄", 30), ("待機放棄", 90), ("オペレーター応答", 0)]
        .into_iter()
        .enumerate()
    {
        let body = json!({"call_id": format!("w{n}"), "conversation_id": n, "call_result": result,
            "customer_phone": format!("1380000000{n}"), "queue_time": queue_time});
        let (status, ack) = server.post(body.to_string(), None).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        ids.push(ack["id"].as_i64().unwrap());
    }
    for id in &ids {
        processed(&server, *id).await;
    }
    // The candidate: `abandoned` only after 60 s in queue, `answered` gone, a new `all-calls`.
    let candidate = tempfile::tempdir().unwrap();
    std::fs::write(
        candidate.path().join("abandoned.rhai"),
        ABANDONED_RULE.replace(
            "ev.outcome == \"queue_abandoned\"",
            "ev.outcome == \"queue_abandoned\" && ev.queue_time > 60",
        ),
    )
    .unwrap();
    std::fs::write(candidate.path().join("spike.rhai"), SPIKE_RULE).unwrap();
    std::fs::write(
        candidate.path().join("all.rhai"),
        "const NAME = \"all-calls\";\nfn when(ev) { true }\nfn then(ev) { [] }",
    )
    .unwrap();
    let (status, report) = server
        .admin_post(
            "/v1/what-if",
            json!({"rules_dir": candidate.path(), "since": "1h"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["events_compared"], 3, "{report}");
    let rule = |name: &str| {
        report["changed_rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {report}"))
    };
    let abandoned = rule("abandoned");
    assert_eq!(
        (
            abandoned["matched_before"].clone(),
            abandoned["matched_after"].clone()
        ),
        (json!(2), json!(1))
    );
    assert_eq!(abandoned["stops_matching"], 1);
    assert_eq!(abandoned["actions_removed"], 1);
    assert_eq!(abandoned["examples"][0]["event_id"], ids[0], "{abandoned}");
    assert_eq!(rule("answered")["stops_matching"], 1);
    assert_eq!(rule("all-calls")["newly_matching"], 3);
    assert!(
        report["unchanged_rules"]
            .as_array()
            .unwrap()
            .contains(&json!("spike")),
        "{report}"
    );

    let (status, answer) = server
        .admin_post(
            "/v1/what-if",
            json!({"rules_dir": "/no/such/dir", "since": "1h"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["parameter"], "rules_dir", "{answer}");

    // The same from the command line, on the database.
    let database = server.database.clone();
    let _dir = server.stop().await; // the SQLite file lives in it
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["what-if", "--since", "7d", "--rules"])
        .arg(candidate.path())
        .arg("--database")
        .arg(&database)
        .env_remove("SWITCHBOARD_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("against 3 stored events"), "{stdout}");
    assert!(
        stdout.contains("abandoned: matched 2 -> 1 (+0 newly, -1 no longer)"),
        "{stdout}"
    );
    assert!(stdout.contains("all-calls: matched 0 -> 3"), "{stdout}");
}

/// The routes the API router serves, as (method, path), read from its source: axum's `Router`
/// cannot list its routes, and a route added without documentation must fail a test.
fn served_routes() -> Vec<(String, String)> {
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/mod.rs"))
        .expect("the router's source");
    let mut routes = Vec::new();
    for (at, _) in source.match_indices(".route(") {
        // The call's arguments: up to the parenthesis that closes `.route(`.
        let rest = &source[at + ".route(".len()..];
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                depth += match c {
                    '(' => 1,
                    ')' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .map(|(i, _)| i)
            .expect("a closed .route(");
        let call = &rest[..end];
        let path = call.split('"').nth(1).expect("a route path").to_string();
        let handlers = &call[call.find(',').expect("handlers")..];
        for method in ["get", "post", "put", "patch", "delete"] {
            let called = handlers
                .match_indices(&format!("{method}("))
                .any(|(i, _)| !handlers[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_'));
            if called {
                routes.push((method.to_string(), path.clone()));
            }
        }
    }
    routes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_served_route_is_documented() {
    let server = TestServer::start().await;
    let (status, doc) = send(server.client.get(server.url("/v1/openapi.json"))).await;
    assert_eq!(status, StatusCode::OK);
    let served = served_routes();
    assert!(served.len() >= 25, "{served:?}");
    let undocumented: Vec<_> = served
        .iter()
        .filter(|(method, path)| doc["paths"][path.as_str()][method.as_str()].is_null())
        .collect();
    assert!(
        undocumented.is_empty(),
        "served but not documented: {undocumented:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_the_routes_that_exist() {
    let server = TestServer::start().await;
    let response = server
        .client
        .get(server.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value = response.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 25, "{}", paths.len());
    for (path, methods) in paths {
        for method in methods.as_object().unwrap().keys() {
            let url = server.url(&path.replace("{id}", "1"));
            let request = match method.as_str() {
                "get" => server.client.get(&url),
                "post" => server.client.post(&url),
                other => panic!("unexpected method {other} for {path}"),
            };
            let token = if path == "/v1/notifications" {
                INGEST_TOKEN
            } else {
                ADMIN_TOKEN
            };
            let (status, body) = send(request.bearer_auth(token)).await;
            let missing = status == StatusCode::NOT_FOUND
                && body["message"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("no such endpoint");
            assert!(
                !missing && status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}: {status} {body}"
            );
        }
    }
    server.stop().await;
}
