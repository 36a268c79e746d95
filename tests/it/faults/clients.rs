//! Slow, greedy and malformed clients: timeouts, connection limits, JSON errors, bounded admin input.
//!
//! The slow clients are raw TCP connections (the test decides every byte and when it is sent),
//! against a service configured with short deadlines so that each test takes seconds. No test
//! asserts how long anything took: each waits (with a generous deadline) for the answer or the
//! close that the configuration promises, and checks what it was.

use crate::util::*;
use reqwest::StatusCode;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use switchboard::api::HttpLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous: a loaded CI box may be slow, never this slow.
const PATIENCE: Duration = Duration::from_secs(60);

/// Short deadlines for the slow-client tests.
fn short_limits() -> HttpLimits {
    HttpLimits {
        header_read_timeout: Duration::from_secs(2),
        body_read_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(3),
        max_connections: 64,
    }
}

/// A service with `limits`, whose test client opens a fresh connection for every request (an
/// idle pooled connection could be closed by the header deadline just as it is reused).
async fn start(limits: HttpLimits) -> TestServer {
    let mut server = TestServer::start_with(|config| config.http = limits).await;
    server.client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    server
}

/// One answer read off a raw connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawResponse {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}\n{}",
                self.head,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }
}

/// Reads one response (head, then `content-length` bytes of body), or `None` if the server
/// closed the connection before sending any byte.
async fn read_response(stream: &mut TcpStream) -> Option<RawResponse> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            Err(e) if bytes.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => panic!("reading the response: {e}"),
        };
        if n == 0 {
            assert!(
                bytes.is_empty(),
                "connection closed mid-response: {:?}",
                String::from_utf8_lossy(&bytes)
            );
            return None;
        }
        bytes.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head}"));
    let mut response = RawResponse {
        status,
        head,
        body: bytes[head_end + 4..].to_vec(),
    };
    let length: usize = response
        .header("content-length")
        .map(|v| v.parse().unwrap())
        .unwrap_or(0);
    while response.body.len() < length {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed mid-body");
        response.body.extend_from_slice(&chunk[..n]);
    }
    Some(response)
}

/// Waits for the server to close `stream` (end of file or a reset), reading nothing more.
async fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(PATIENCE, stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

async fn within<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, work)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The value of one sample line of `/metrics`, 0 when absent.
async fn metric(server: &TestServer, sample: &str) -> f64 {
    let response = server
        .client
        .get(server.url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn stored_events(server: &TestServer) -> usize {
    let (status, page) = server.admin_get("/v1/events").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["events"].as_array().unwrap().len()
}

fn push_head(content_length: usize) -> String {
    format!(
        "POST /v1/notifications HTTP/1.1\r\nhost: switchboard\r\nauthorization: Bearer {INGEST_TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: {content_length}\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_without_the_body_get_408_json_and_the_connection_closes() {
    let server = start(short_limits()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(push_head(100).as_bytes()).await.unwrap();
    let response = within("the 408", read_response(&mut stream))
        .await
        .expect("an answer before the close");
    assert_eq!(response.status, 408, "{response:?}");
    assert!(
        response
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{response:?}"
    );
    let body = response.json();
    assert_eq!(body["error"], "body_timeout", "{body}");
    assert!(body["message"].as_str().unwrap().contains("2s"), "{body}");
    assert!(closed(&mut stream).await, "the connection stays open");

    assert_eq!(stored_events(&server).await, 0);
    assert_eq!(
        metric(&server, "switchboard_http_timeouts_total{phase=\"body\"}").await,
        1.0
    );
    assert_eq!(
        metric(
            &server,
            "switchboard_notifications_total{result=\"rejected\",reason=\"body_timeout\"}"
        )
        .await,
        1.0
    );
    // The service goes on as before.
    let (status, _) = server.post(sample("abandoned-long-wait.json"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripped_body_is_cut_off_at_the_body_deadline_and_nothing_is_stored() {
    let server = start(short_limits()).await;
    let body = sample("abandoned-long-wait.json");
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(push_head(body.len()).as_bytes())
        .await
        .unwrap();
    // One byte every 100 ms: the whole body would take minutes, each byte comes well within
    // the deadline, and the deadline is for the whole body.
    let drip = tokio::spawn(async move {
        let mut sent = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        for byte in body.iter().take(body.len() - 1) {
            tick.tick().await;
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            sent += 1;
        }
        (sent, body.len())
    });
    let mut answer = Vec::new();
    within("the 408", reader.read_to_end(&mut answer))
        .await
        .unwrap();
    let (sent, length) = drip.await.unwrap();
    assert!(sent < length, "the whole body was taken ({sent} bytes)");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let json = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let json: Value = serde_json::from_str(json).unwrap();
    assert_eq!(json["error"], "body_timeout");

    assert_eq!(stored_events(&server).await, 0);
    assert_eq!(
        metric(&server, "switchboard_http_timeouts_total{phase=\"body\"}").await,
        1.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_no_complete_head_is_disconnected() {
    let server = start(short_limits()).await;
    // Half a head, then nothing.
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"POST /v1/notifications HTTP/1.1\r\nhost: switchboard\r\n")
        .await
        .unwrap();
    // A head dripped a header line at a time: the deadline is for the whole head.
    let dripped = TcpStream::connect(server.addr).await.unwrap();
    let (mut dripped_reader, mut dripped_writer) = dripped.into_split();
    let drip = tokio::spawn(async move {
        dripped_writer
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .ok()?;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        for n in 0.. {
            tick.tick().await;
            dripped_writer
                .write_all(format!("x-drip-{n}: 1\r\n").as_bytes())
                .await
                .ok()?;
        }
        Some(())
    });
    // Connected, and silent.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();

    assert!(
        within("the close", read_response(&mut half))
            .await
            .is_none()
    );
    assert!(
        within("the close", read_response(&mut silent))
            .await
            .is_none()
    );
    let mut answer = Vec::new();
    let _ = within("the close", dripped_reader.read_to_end(&mut answer)).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    drip.abort();

    eventually(PATIENCE, "three header timeouts counted", || async {
        let n = metric(
            &server,
            "switchboard_http_timeouts_total{phase=\"headers\"}",
        )
        .await;
        (n >= 3.0).then_some(())
    })
    .await;
    assert_eq!(stored_events(&server).await, 0);
    let (status, _) = send(server.client.get(server.url("/healthz"))).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_holds_and_the_service_answers_after() {
    const LIMIT: usize = 3;
    // Long head and body deadlines: here only the test closes connections.
    let server = start(HttpLimits {
        header_read_timeout: Duration::from_secs(600),
        body_read_timeout: Duration::from_secs(600),
        request_timeout: Duration::from_secs(900),
        max_connections: LIMIT,
    })
    .await;
    let health = b"GET /healthz HTTP/1.1\r\nhost: switchboard\r\n\r\n";
    // Fill every slot: each connection is answered once (so it was surely accepted), then
    // starts a request it never finishes.
    let mut held = Vec::new();
    for _ in 0..LIMIT {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(health).await.unwrap();
        let response = within(
            "a held connection's first answer",
            read_response(&mut stream),
        )
        .await
        .unwrap();
        assert_eq!(response.status, 200);
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    // One more: the kernel completes the handshake, the service does not take it.
    let mut waiting = TcpStream::connect(server.addr).await.unwrap();
    waiting.write_all(health).await.unwrap();
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_secs(1), waiting.peek(&mut byte))
            .await
            .is_err(),
        "a connection over the limit was answered"
    );
    // A slot frees: the waiting connection is taken and answered.
    drop(held.pop());
    let response = within(
        "the waiting connection's answer",
        read_response(&mut waiting),
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200);
    drop(held);
    drop(waiting);

    // All closed: the service answers as usual, and counts no connection left open but this one.
    eventually(PATIENCE, "the held connections to be released", || async {
        let open = metric(&server, "switchboard_http_connections").await;
        (open == 1.0).then_some(())
    })
    .await;
    let (status, _) = server.post(sample("abandoned-long-wait.json"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_gets_503_json_and_the_store_finishes_its_work() {
    let server = start(short_limits()).await;
    // Another client holds the write lock the service needs to store a mute.
    let lock = StoreLock::take(&server.database).await;
    let mute = serde_json::json!({
        "scope": "rule", "value": "slow", "for": "1h", "reason": "testing the deadline"
    });
    let response = server
        .client
        .post(server.url("/v1/mutes"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&mute)
        .send()
        .await
        .unwrap();
    let retry_after = response.headers().get("retry-after").cloned();
    let (status, body) = json_response(response).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "timeout", "{body}");
    assert!(retry_after.is_some(), "no Retry-After");
    lock.release().await;

    // The write was not abandoned: it completes once the lock is gone.
    eventually(PATIENCE, "the mute to be stored", || async {
        let (_, mutes) = server.admin_get("/v1/mutes").await;
        let stored = mutes["mutes"]
            .as_array()?
            .iter()
            .any(|m| m["value"] == "slow");
        stored.then_some(())
    })
    .await;
    assert_eq!(
        metric(
            &server,
            "switchboard_http_timeouts_total{phase=\"request\"}"
        )
        .await,
        1.0
    );
    let (status, _) = server.post(sample("abandoned-long-wait.json"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    server.stop().await;
}

/// A transaction of another client holding the lock that storing a mute needs.
enum StoreLock {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl StoreLock {
    async fn take(database: &str) -> StoreLock {
        use sqlx::Connection;
        if database.starts_with("postgres") {
            let mut conn = sqlx::PgConnection::connect(database).await.unwrap();
            sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
            sqlx::query("LOCK TABLE mutes IN ACCESS EXCLUSIVE MODE")
                .execute(&mut conn)
                .await
                .unwrap();
            StoreLock::Postgres(conn)
        } else {
            let mut conn = sqlx::SqliteConnection::connect(database).await.unwrap();
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut conn)
                .await
                .unwrap();
            StoreLock::Sqlite(conn)
        }
    }

    async fn release(self) {
        use sqlx::Connection;
        match self {
            StoreLock::Sqlite(mut conn) => {
                sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
                conn.close().await.unwrap();
            }
            StoreLock::Postgres(mut conn) => {
                sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
                conn.close().await.unwrap();
            }
        }
    }
}

/// Asserts a JSON error answer: status, `error` code, and (when given) the `parameter` named.
async fn expect_error(
    what: &str,
    request: reqwest::RequestBuilder,
    status: u16,
    code: &str,
    parameter: Option<&str>,
) -> Value {
    let response = request.send().await.unwrap();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let (got, body) = json_response(response).await;
    assert_eq!(got.as_u16(), status, "{what}: {body}");
    assert_eq!(
        content_type.as_deref(),
        Some("application/json"),
        "{what}: {body}"
    );
    assert_eq!(body["error"], code, "{what}: {body}");
    assert!(body["message"].is_string(), "{what}: {body}");
    if let Some(parameter) = parameter {
        assert_eq!(body["parameter"], parameter, "{what}: {body}");
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_json_and_admin_input_is_bounded() {
    let server = start(HttpLimits::default()).await;
    let c = &server.client;
    let url = |path: &str| server.url(path);
    let long = "x".repeat(2000);

    // Routing.
    expect_error(
        "unknown path",
        c.get(url("/v1/nope")),
        404,
        "not_found",
        None,
    )
    .await;
    expect_error(
        "wrong method",
        c.delete(url("/v1/notifications")),
        405,
        "method_not_allowed",
        None,
    )
    .await;
    expect_error(
        "no admin token",
        c.get(url("/v1/jobs")),
        401,
        "unauthorized",
        None,
    )
    .await;
    let admin_get = |path: &str| c.get(url(path)).bearer_auth(ADMIN_TOKEN);
    let admin_post =
        |path: &str, body: Value| c.post(url(path)).bearer_auth(ADMIN_TOKEN).json(&body);

    // Body fields of the wrong type: JSON, with the place.
    let body = expect_error(
        "a note that is not a string",
        admin_post("/v1/jobs/1/cancel", serde_json::json!({"note": {}})),
        400,
        "invalid_body",
        None,
    )
    .await;
    assert_eq!(
        (body["line"].as_u64(), body["column"].as_u64()),
        (Some(1), Some(8))
    );
    expect_error(
        "cancel without a body: the job is looked up",
        c.post(url("/v1/jobs/1/cancel")).bearer_auth(ADMIN_TOKEN),
        404,
        "not_found",
        None,
    )
    .await;
    // Path parameters that are not text.
    expect_error(
        "an id that is not UTF-8",
        admin_get("/v1/jobs/%FF"),
        400,
        "invalid_parameter",
        Some("id"),
    )
    .await;

    // Query parameters: repeated, too long, out of range.
    for path in [
        "/v1/events?limit=1&limit=2",
        "/v1/jobs?limit=1&limit=2",
        "/v1/callback-tasks?limit=1&limit=2",
    ] {
        expect_error(
            path,
            admin_get(path),
            400,
            "invalid_parameter",
            Some("limit"),
        )
        .await;
    }
    expect_error(
        "a repeated flag",
        admin_get("/v1/mutes?all=true&all=false"),
        400,
        "invalid_parameter",
        Some("all"),
    )
    .await;
    expect_error(
        "a long call id",
        admin_get(&format!("/v1/events?call_id={long}")),
        400,
        "invalid_parameter",
        Some("call_id"),
    )
    .await;
    expect_error(
        "limit 0",
        admin_get("/v1/events?limit=0"),
        400,
        "invalid_parameter",
        Some("limit"),
    )
    .await;

    // Durations and times: capped, never overflowing.
    let mute = |field: &str, value: &str| {
        let mut body = serde_json::json!({"scope": "rule", "value": "r", "reason": "why"});
        body[field] = value.into();
        body
    };
    for (field, value) in [
        ("for", "100000000000d"),
        ("for", "367d"),
        ("for", "99999999999999999999999d"),
        ("until", "253402300800000"),
        ("until", "9223372036854775807"),
    ] {
        expect_error(
            &format!("mute {field} {value}"),
            admin_post("/v1/mutes", mute(field, value)),
            400,
            "invalid_parameter",
            Some(field),
        )
        .await;
    }
    for since in ["100000000000d", "400d"] {
        expect_error(
            &format!("replay since {since}"),
            admin_post("/v1/replay", serde_json::json!({ "since": since })),
            400,
            "invalid_parameter",
            Some("since"),
        )
        .await;
    }
    expect_error(
        "replay limit",
        admin_post("/v1/replay", serde_json::json!({"since": "1d", "limit": 0})),
        400,
        "invalid_parameter",
        Some("limit"),
    )
    .await;

    // Long texts in bodies, named by their field.
    let mut long_value = mute("for", "1h");
    long_value["value"] = long.clone().into();
    expect_error(
        "a long mute value",
        admin_post("/v1/mutes", long_value),
        400,
        "invalid_parameter",
        Some("value"),
    )
    .await;
    let mut long_reason = mute("for", "1h");
    long_reason["reason"] = long.clone().into();
    expect_error(
        "a long mute reason",
        admin_post("/v1/mutes", long_reason),
        400,
        "invalid_parameter",
        Some("reason"),
    )
    .await;
    expect_error(
        "a long note",
        admin_post("/v1/jobs/1/cancel", serde_json::json!({ "note": long })),
        400,
        "invalid_parameter",
        Some("note"),
    )
    .await;
    expect_error(
        "a long agent",
        admin_post(
            "/v1/callback-tasks/1/claim",
            serde_json::json!({ "agent": long }),
        ),
        400,
        "invalid_parameter",
        Some("agent"),
    )
    .await;
    // A body over the limit, on the admin API too.
    let huge = "y".repeat(300 * 1024);
    expect_error(
        "a huge admin body",
        admin_post("/v1/mutes", serde_json::json!({ "reason": huge })),
        413,
        "body_too_large",
        None,
    )
    .await;
    // Nothing of it was stored, and what is within bounds still works.
    let (_, mutes) = server.admin_get("/v1/mutes?all=true").await;
    assert_eq!(mutes["mutes"].as_array().unwrap().len(), 0, "{mutes}");
    let (status, created) = send(admin_post("/v1/mutes", mute("for", "366d"))).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");

    // What the HTTP parser answers itself (before the service sees the request): two
    // Content-Length headers get an empty 400, and the connection is closed.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "POST /v1/notifications HTTP/1.1\r\nhost: s\r\nauthorization: Bearer {INGEST_TOKEN}\r\n\
                 content-length: 2\r\ncontent-length: 3\r\n\r\n{{}}"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let response = within("the parser's answer", read_response(&mut stream))
        .await
        .unwrap();
    assert_eq!(response.status, 400, "{response:?}");
    assert!(closed(&mut stream).await);
    assert_eq!(stored_events(&server).await, 0);
    server.stop().await;
}

#[test]
fn the_openapi_document_lists_the_error_answers() {
    let doc: Value = serde_json::from_str(switchboard::api::OPENAPI).unwrap();
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            let has = |status: &str| responses.contains_key(status);
            assert!(has("503"), "{method} {path}: no 503 (request deadline)");
            if method == "post" {
                assert!(has("408") && has("413"), "{method} {path}: no 408 or 413");
                assert!(has("400"), "{method} {path}: no 400");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_from_clients_are_used_only_when_short_and_plain() {
    let dir = tempfile::tempdir().unwrap();
    let database = test_database(dir.path()).await;
    let server = Binary::start_with(dir.path(), &database, &dir.path().join("rules"), &[]);
    let client = reqwest::Client::new();
    // Refused pushes are logged (with the request's id), so each leaves a line in the log.
    let refused_push = |id: &str| {
        client
            .post(server.url("/v1/notifications"))
            .header("x-request-id", id)
            .body("{}")
            .send()
    };
    let forged = "abc status=200 user=admin";
    let response = refused_push(forged).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let given = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_ne!(given, forged);
    assert!(!given.contains(' '), "{given}");
    for unplain in ["a\"b", &"z".repeat(65), "semi;colon", "two words"] {
        let response = refused_push(unplain).await.unwrap();
        let given = response.headers()["x-request-id"]
            .to_str()
            .unwrap_or("?")
            .to_string();
        assert_ne!(given, unplain);
    }
    let plain = "push-2024.11_20-abc";
    let response = refused_push(plain).await.unwrap();
    assert_eq!(response.headers()["x-request-id"], plain);

    let log = eventually(PATIENCE, "the plain id in the log", || async {
        let log = server.log();
        log.contains(&format!("request_id={plain}")).then_some(log)
    })
    .await;
    assert!(log.contains(&format!("request_id={given}")), "{log}");
    assert!(!log.contains("user=admin"), "{log}");
    assert!(!log.contains(&"z".repeat(65)), "{log}");
}

/// Runs the binary to its exit (killed after [`PATIENCE`]).
fn run_to_exit(mut command: Command) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("the binary did not exit");
        }
    }
}

fn serve_command(dir: &Path, listen: &str, database: &str, rules: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .arg("serve")
        .args(["--listen", listen])
        .args(["--database", database])
        .args(["--rules", &rules.display().to_string()])
        .env("SWITCHBOARD_INGEST_TOKEN", INGEST_TOKEN)
        .env("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("SWITCHBOARD_CONFIG")
        .current_dir(dir);
    command
}

/// A failed start: exit code 1, and a last line `error: …` that says all of `expected`;
/// never a claim to be listening.
fn assert_failed_start(output: &Output, expected: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{stderr}");
    for part in expected {
        assert!(last.contains(part), "`{part}` missing from `{last}`");
    }
    assert!(!stderr.contains("listening on"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_errors_name_what_failed() {
    let dir = tempfile::tempdir().unwrap();
    let database = test_database(dir.path()).await;
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();

    // The port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = taken.local_addr().unwrap();
    let output = run_to_exit(serve_command(
        dir.path(),
        &addr.to_string(),
        &database,
        &rules,
    ));
    assert_failed_start(&output, &[&format!("cannot listen on {addr}"), "in use"]);
    drop(taken);

    // The rules "directory" is a file, or under one.
    let file = dir.path().join("rules.txt");
    std::fs::write(&file, "not a directory").unwrap();
    let output = run_to_exit(serve_command(dir.path(), "127.0.0.1:0", &database, &file));
    assert_failed_start(
        &output,
        &[
            "cannot read the rules directory",
            &file.display().to_string(),
            "not a directory",
        ],
    );
    let under = file.join("rules");
    let output = run_to_exit(serve_command(dir.path(), "127.0.0.1:0", &database, &under));
    assert_failed_start(&output, &[&under.display().to_string(), "Not a directory"]);

    // A directory this process may not list (only where permissions bind: not as root).
    use std::os::unix::fs::PermissionsExt;
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read_dir(&locked).is_err() {
        let output = run_to_exit(serve_command(dir.path(), "127.0.0.1:0", &database, &locked));
        assert_failed_start(
            &output,
            &[&locked.display().to_string(), "Permission denied"],
        );
    }
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();

    // A good start says it listens only once the store is open and the rules are loaded.
    let mut server = Binary::start_with(dir.path(), &database, &rules, &[]);
    let log = server.log();
    let at = |needle: &str| {
        log.find(needle)
            .unwrap_or_else(|| panic!("`{needle}` missing from the log:\n{log}"))
    };
    assert!(at("store ready") < at("listening on"), "{log}");
    assert!(at("rules loaded") < at("listening on"), "{log}");
    server.child.kill().unwrap();
    server.wait();
}
