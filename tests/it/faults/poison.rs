//! Poison pushes: nothing accepted is unreadable, and an event that cannot be processed is quarantined on its own.
//!
//! Two real poisons, each stored in one transaction among ordinary events so that the processor
//! claims them in one batch: a row whose decoded view cannot be read back (what an earlier
//! version stored for a push nested 126 levels deep), and a row the database refuses to record
//! the evaluation of (a trigger raises for it). Each must end quarantined, with its reason,
//! after the configured number of attempts, while the rest of its batch is processed; listing,
//! replay and what-if over the range answer and name it; an operator's retry puts it back.

use crate::util::{ADMIN_TOKEN, INGEST_TOKEN, TestServer, eventually, sample_with_id, send};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use switchboard::event::{decode, dedupe_key, parse_body};
use switchboard::store::NewEvent;
use switchboard::time::now_millis;

/// Attempts before quarantine in these tests, and the backoff after the first failure.
const MAX_FAILURES: u32 = 3;
const BACKOFF: Duration = Duration::from_millis(50);
/// Generous: a loaded CI box may be slow to get round to the retries.
const DEADLINE: Duration = Duration::from_secs(60);

/// A service that quarantines after three quick attempts, with one rule matching every event.
async fn start() -> TestServer {
    TestServer::start_with(|config| {
        config.processing_max_failures = MAX_FAILURES;
        config.processing_retry_backoff = BACKOFF;
        std::fs::create_dir_all(&config.rules_dir).unwrap();
        std::fs::write(
            config.rules_dir.join("every-call.rhai"),
            "const NAME = \"every-call\";\nfn when(ev) { true }\nfn then(ev) { [] }\n",
        )
        .unwrap();
    })
    .await
}

/// An event as the intake would store it for `body`.
fn new_event(body: &[u8]) -> NewEvent {
    let parsed = parse_body(body, None).unwrap();
    let decoded = decode(&parsed);
    NewEvent {
        dedupe_key: dedupe_key(&parsed.fields),
        received_at: now_millis(),
        source_addr: Some("127.0.0.1:1".into()),
        content_type: Some("application/json".into()),
        raw_body: body.to_vec(),
        event: decoded.event,
        warnings: decoded.warnings,
    }
}

/// Stores ordinary events with `poison` in their middle, in one transaction (so the processor
/// claims them together), through a second handle on the service's database. Returns the
/// ordinary ids and the poison's.
async fn store_batch_with(server: &TestServer, poison: NewEvent, seed: u64) -> (Vec<i64>, i64) {
    let mut batch: Vec<NewEvent> = (0..4)
        .map(|n| new_event(&sample_with_id("abandoned-long-wait.json", seed + n)))
        .collect();
    batch.insert(2, poison);
    let store = switchboard::store::open(&server.database).await.unwrap();
    let inserted = store.insert_events(&batch).await.unwrap();
    store.close().await;
    assert!(inserted.iter().all(|i| !i.duplicate));
    let mut ids: Vec<i64> = inserted.iter().map(|i| i.id).collect();
    let poison = ids.remove(2);
    (ids, poison)
}

async fn event(server: &TestServer, id: i64) -> Value {
    let (status, body) = server.admin_get(&format!("/v1/events/{id}")).await;
    assert_eq!(status, StatusCode::OK, "event {id}: {body}");
    body
}

async fn wait_for_state(server: &TestServer, id: i64, state: &str) -> Value {
    eventually(DEADLINE, &format!("event {id} to be {state}"), || async {
        let body = event(server, id).await;
        (body["state"] == state).then_some(body)
    })
    .await
}

async fn metrics(server: &TestServer) -> String {
    server
        .client
        .get(server.url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of a metric line without labels, e.g. `switchboard_quarantined_events`.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Runs SQL on the service's database from outside (as an operator, or a fault, would).
async fn execute(database: &str, statements: &[&str]) {
    use sqlx::{Connection, Executor};
    if database.starts_with("sqlite:") {
        use sqlx::sqlite::SqliteConnectOptions;
        use std::str::FromStr;
        let options = SqliteConnectOptions::from_str(database)
            .unwrap()
            .busy_timeout(Duration::from_secs(30));
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .unwrap();
        for sql in statements {
            conn.execute(*sql).await.unwrap();
        }
        conn.close().await.unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(database).await.unwrap();
        for sql in statements {
            conn.execute(*sql).await.unwrap();
        }
        conn.close().await.unwrap();
    }
}

/// A JSON array nested `levels` deep around `1`.
fn nested(levels: usize) -> Value {
    (0..levels).fold(json!(1), |inner, _| Value::Array(vec![inner]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_event_is_quarantined_alone_and_flagged_then_retried() {
    let server = start().await;
    // What an earlier version stored for `{"call_id":"x","zz":[[[…]]]}`: a decoded view nested
    // past serde_json's recursion limit, so it cannot be read back.
    let mut poison = new_event(br#"{"call_id":"poison-deep","zz":1}"#);
    poison.event.extra.insert("zz".into(), nested(130));
    let (ordinary, poison) = store_batch_with(&server, poison, 1_000).await;

    // The rest of its batch is processed.
    for id in &ordinary {
        wait_for_state(&server, *id, "processed").await;
    }
    // The poison is quarantined after exactly the configured attempts, with its reason; its
    // trace still answers, with the raw push.
    let trace = wait_for_state(&server, poison, "quarantined").await;
    assert_eq!(trace["failures"], MAX_FAILURES, "{trace}");
    let reason = trace["last_error"].as_str().unwrap();
    assert!(reason.contains("recursion limit"), "{reason}");
    assert!(
        trace["unreadable"]
            .as_str()
            .unwrap()
            .contains("decoded view"),
        "{trace}"
    );
    assert!(trace["quarantined_at"].is_string(), "{trace}");
    assert!(
        trace["raw_body"].as_str().unwrap().contains("poison-deep"),
        "{trace}"
    );

    // Visible on the overview, the quarantine list and /metrics.
    let (status, overview) = server.admin_get("/v1/overview").await;
    assert_eq!(status, StatusCode::OK, "{overview}");
    assert_eq!(overview["quarantined_events"], 1, "{overview}");
    let (status, list) = server.admin_get("/v1/quarantine").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["events"][0]["id"], poison, "{list}");
    assert_eq!(list["events"][0]["failures"], MAX_FAILURES, "{list}");
    let text = metrics(&server).await;
    assert_eq!(metric(&text, "switchboard_quarantined_events"), Some(1.0));
    assert_eq!(
        metric(&text, "switchboard_events_quarantined_total"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "switchboard_event_failures_total"),
        Some(f64::from(MAX_FAILURES))
    );

    // Listing, replay and what-if over the range answer, and name it instead of failing.
    let (status, page) = server.admin_get("/v1/events?limit=50").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let listed: Vec<i64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, ordinary.iter().rev().copied().collect::<Vec<_>>());
    assert_eq!(page["unreadable"][0]["id"], poison, "{page}");
    let (status, replayed) = server
        .admin_post("/v1/replay", json!({"since": "1h", "dry_run": true}))
        .await;
    assert_eq!(status, StatusCode::OK, "{replayed}");
    assert_eq!(replayed["events"].as_array().unwrap().len(), ordinary.len());
    assert_eq!(replayed["unreadable"][0]["id"], poison, "{replayed}");
    let (status, refused) = server
        .admin_post(&format!("/v1/events/{poison}/replay"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"], "unreadable_event", "{refused}");
    let rules_dir = server.dir.path().join("rules");
    let (status, report) = server
        .admin_post(
            "/v1/what-if",
            json!({"rules_dir": rules_dir.display().to_string(), "since": "1h"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["events_compared"], ordinary.len(), "{report}");
    assert_eq!(report["unreadable"][0]["id"], poison, "{report}");

    // Only a quarantined event can be retried.
    let (status, refused) = server
        .admin_post(&format!("/v1/events/{}/retry", ordinary[0]), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"], "not_quarantined", "{refused}");
    assert_eq!(refused["state"], "processed", "{refused}");
    let (status, missing) = server
        .admin_post("/v1/events/999999/retry", json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");

    // An operator repairs the row and retries it: it is processed like any other.
    let repair = format!(
        "UPDATE events SET decoded = '{{\"call_id\":\"poison-deep\"}}' WHERE id = {poison}"
    );
    execute(&server.database, &[&repair]).await;
    let (status, retried) = server
        .admin_post(&format!("/v1/events/{poison}/retry"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_ne!(retried["state"], "quarantined", "{retried}");
    let done = wait_for_state(&server, poison, "processed").await;
    assert_eq!(
        done["evaluation"]["record"]["verdicts"][0]["rule"],
        "every-call"
    );
    let (_, list) = server.admin_get("/v1/quarantine").await;
    assert_eq!(list["events"], json!([]), "{list}");
    assert_eq!(
        metric(&metrics(&server).await, "switchboard_quarantined_events"),
        Some(0.0)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_evaluation_the_database_refuses_is_quarantined_alone() {
    let server = start().await;
    // A fault for one row only: the database raises when this event's evaluation is recorded.
    let trigger: &[&str] = if server.database.starts_with("sqlite:") {
        &["CREATE TRIGGER poison BEFORE INSERT ON evaluations \
           WHEN (SELECT call_id FROM events WHERE id = NEW.event_id) = 'poison-row' \
           BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"]
    } else {
        &[
            "CREATE FUNCTION poison_check() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF (SELECT call_id FROM events WHERE id = NEW.event_id) = 'poison-row' \
             THEN RAISE EXCEPTION 'poisoned row'; END IF; RETURN NEW; END $$",
            "CREATE TRIGGER poison BEFORE INSERT ON evaluations FOR EACH ROW \
             EXECUTE FUNCTION poison_check()",
        ]
    };
    execute(&server.database, trigger).await;
    let poison = new_event(r#"{"call_id":"poison-row","call_result":"放弃排队"}"#.as_bytes());
    let (ordinary, poison) = store_batch_with(&server, poison, 2_000).await;

    for id in &ordinary {
        wait_for_state(&server, *id, "processed").await;
    }
    let trace = wait_for_state(&server, poison, "quarantined").await;
    assert_eq!(trace["failures"], MAX_FAILURES, "{trace}");
    let reason = trace["last_error"].as_str().unwrap();
    assert!(
        reason.contains("recording its evaluation failed") && reason.contains("poisoned row"),
        "{reason}"
    );
    assert!(trace.get("unreadable").is_none(), "{trace}");
    // Readable, so listing and replay show it as usual.
    let (status, page) = server.admin_get("/v1/events?call_id=poison-row").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["events"][0]["state"], "quarantined", "{page}");
    let (status, dry) = server
        .admin_post(&format!("/v1/events/{poison}/replay"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{dry}");

    // New pushes go on being processed meanwhile.
    let (status, ack) = send(
        server
            .client
            .post(server.url("/v1/notifications"))
            .bearer_auth(INGEST_TOKEN)
            .body(sample_with_id("abandoned-long-wait.json", 2_100)),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{ack}");
    wait_for_state(&server, ack["id"].as_i64().unwrap(), "processed").await;

    // The fault is cleared; the operator retries the event and it goes through.
    let drop: &[&str] = if server.database.starts_with("sqlite:") {
        &["DROP TRIGGER poison"]
    } else {
        &["DROP TRIGGER poison ON evaluations"]
    };
    execute(&server.database, drop).await;
    let (status, retried) = server
        .admin_post(&format!("/v1/events/{poison}/retry"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    wait_for_state(&server, poison, "processed").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_refuses_what_could_not_be_read_back_and_the_deepest_accepted_push_is_processed() {
    let server = start().await;
    // The reproduction: 126 levels were accepted and then wedged processing.
    let body = json!({"call_id": "deep", "zz": nested(126)}).to_string();
    let (status, refused) = server.post(body, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert_eq!(refused["error"], "too_deep", "{refused}");
    assert_eq!(refused["limit"], 100, "{refused}");

    // The deepest push accepted (the body object is level 1) reads back and is evaluated.
    let body = json!({"call_id": "deepest", "zz": nested(99)}).to_string();
    let (status, ack) = server.post(body, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{ack}");
    let id = ack["id"].as_i64().unwrap();
    let trace = wait_for_state(&server, id, "processed").await;
    assert_eq!(trace["event"]["extra"]["zz"], nested(99));
    assert_eq!(trace["rules"][0]["verdict"], "matched", "{trace}");

    // Text PostgreSQL cannot hold is refused by either store, naming the field (PostgreSQL
    // failed the push with 503 for ever, and with it every push committed in the same batch).
    let (status, refused) = server.post(r#"{"call_id":"a\u0000b"}"#, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert_eq!(refused["error"], "invalid_text", "{refused}");
    assert_eq!(refused["field"], "call_id", "{refused}");
    // A search key too long for a database index is left out of the typed view with a
    // warning; the push is kept (raw body) and processed.
    let long: String = (0..3_000u32)
        .map(|i| char::from_u32(0x4e00 + (i * 7_919) % 20_000).unwrap())
        .collect();
    let (status, ack) = server
        .post(
            json!({"call_id": "long-phone", "customer_phone": long}).to_string(),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{ack}");
    assert_eq!(ack["warnings"][0]["field"], "customer_phone", "{ack}");
    let trace = wait_for_state(&server, ack["id"].as_i64().unwrap(), "processed").await;
    assert!(trace["event"].get("customer_phone").is_none(), "{trace}");
    assert!(trace["raw_body"].as_str().unwrap().contains(&long));

    // A form's `extend` is JSON text: held to the same limit, kept as text beyond it.
    let deep_extend = format!("{}1{}", "[".repeat(120), "]".repeat(120));
    let form = format!(
        "call_id=form-deep&extend={}",
        deep_extend.replace('[', "%5B").replace(']', "%5D")
    );
    let (status, ack) = server
        .post(form, Some("application/x-www-form-urlencoded"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{ack}");
    assert_eq!(ack["warnings"][0]["field"], "extend", "{ack}");
    let trace = wait_for_state(&server, ack["id"].as_i64().unwrap(), "processed").await;
    assert_eq!(trace["event"]["extend"], deep_extend.as_str());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_building_deeply_nested_data_fails_alone_and_the_service_stays_up() {
    // Nested arrays as deep as the rule's size limits allow, sent as a webhook body: copying,
    // checking and dropping them recursed past a thread's stack and aborted the process, on
    // every restart, for as long as the event stayed queued.
    let server = TestServer::start_with(|config| {
        std::fs::create_dir_all(&config.rules_dir).unwrap();
        std::fs::write(
            config.rules_dir.join("every-call.rhai"),
            "const NAME = \"every-call\";\nfn when(ev) { true }\nfn then(ev) { [] }\n",
        )
        .unwrap();
        std::fs::write(
            config.rules_dir.join("deep.rhai"),
            "const NAME = \"deep\";\nfn when(ev) { ev.call_id == \"deep-rule\" }\n\
             fn then(ev) { let x = []; for i in 0..9000 { x = [x]; } \
             [webhook(#{ target: \"t\", body: #{ x: x } })] }\n",
        )
        .unwrap();
    })
    .await;
    let (status, ack) = server.post(r#"{"call_id":"deep-rule"}"#, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{ack}");
    let trace = wait_for_state(&server, ack["id"].as_i64().unwrap(), "processed").await;
    let verdict = |rule: &str| {
        trace["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == rule)
            .cloned()
            .unwrap_or_else(|| panic!("no verdict of {rule}: {trace}"))
    };
    assert_eq!(verdict("deep")["verdict"], "error", "{trace}");
    assert_eq!(verdict("every-call")["verdict"], "matched", "{trace}");
    assert_eq!(trace["jobs"], json!([]), "{trace}");
    // Still up, and still processing.
    let (status, ack) = server.post(r#"{"call_id":"after"}"#, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{ack}");
    wait_for_state(&server, ack["id"].as_i64().unwrap(), "processed").await;
    server.stop().await;
}
