//! Webhook delivery against a real HTTP receiver on loopback: signatures, retries after
//! transient failures, Retry-After, dead letters, timeouts and the SSRF guard.

use crate::util::*;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard::config::{Config, Secret, WebhookTarget};
use switchboard::delivery::retry::Schedule;
use switchboard::delivery::signing::WebhookKey;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the receiver answers, request by request (the last entry repeats).
#[derive(Clone, Copy, Debug)]
enum Answer {
    Ok,
    Status(u16),
    RetryAfter(u64),
    Hang,
}

#[derive(Debug, Clone)]
struct Received {
    id: String,
    signature_ok: bool,
    body: Value,
    at: std::time::Instant,
}

#[derive(Clone)]
struct Receiver {
    answers: Arc<Vec<Answer>>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// Starts a receiver on a free loopback port; returns it and its URL.
    async fn start(answers: Vec<Answer>) -> (Receiver, String) {
        let receiver = Receiver {
            answers: Arc::new(answers),
            received: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(Self::handle))
            .with_state(receiver.clone());
        let url = format!("{}/hook", serve_on_loopback(app).await);
        (receiver, url)
    }

    async fn handle(
        axum::extract::State(receiver): axum::extract::State<Receiver>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let key = WebhookKey::parse(SECRET).unwrap();
        let timestamp: i64 = header("webhook-timestamp").parse().unwrap_or(0);
        let n = {
            let mut received = receiver.received.lock().unwrap();
            received.push(Received {
                id: header("webhook-id"),
                signature_ok: key.verify(
                    &header("webhook-id"),
                    timestamp,
                    &body,
                    &header("webhook-signature"),
                ),
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                at: std::time::Instant::now(),
            });
            received.len()
        };
        let answer = receiver
            .answers
            .get(n - 1)
            .or(receiver.answers.last())
            .copied()
            .unwrap_or(Answer::Ok);
        match answer {
            Answer::Ok => StatusCode::NO_CONTENT.into_response(),
            Answer::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
            Answer::RetryAfter(secs) => (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", secs.to_string())],
            )
                .into_response(),
            Answer::Hang => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                StatusCode::NO_CONTENT.into_response()
            }
        }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

const HOOK_RULE: &str = "const NAME = \"hook\";\nfn when(ev) { ev.call_id == \"hook\" }\nfn then(ev) { [webhook(#{ target: \"chat\", body: #{ n: ev.conversation_id, text: `呼損 ${ev.customer_phone}` } })] }";

/// A service with one webhook target at `url`, a rule that posts to it, and a short schedule.
async fn service(
    url: &str,
    allow_private: bool,
    adjust: impl FnOnce(&mut Config),
) -> (TestServer, tempfile::TempDir) {
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("hook.rhai"), HOOK_RULE).unwrap();
    let rules_dir = rules.path().to_path_buf();
    let url = url.to_string();
    let server = TestServer::start_with(move |config| {
        config.rules_dir = rules_dir;
        config.allow_private_targets = allow_private;
        config.retry_schedule = Schedule {
            delays: vec![Duration::from_millis(50); 3],
        };
        config.webhook_targets.insert(
            "chat".into(),
            WebhookTarget {
                url: Secret::new(url),
                method: "POST".into(),
                headers: Default::default(),
                timeout: Duration::from_secs(1),
                secret: Some(WebhookKey::parse(SECRET).unwrap()),
                allow_private: false,
            },
        );
        config.processing_poll = Duration::from_millis(50);
        adjust(config);
    })
    .await;
    (server, rules)
}

/// Posts one event that fires the hook rule; returns its id.
async fn fire(server: &TestServer, n: u64) -> i64 {
    let (status, ack) = server
        .post(
            json!({"call_id": "hook", "conversation_id": n, "customer_phone": "13800138000"})
                .to_string(),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED);
    ack["id"].as_i64().unwrap()
}

/// Waits until the event's webhook job is done or dead; returns the job.
async fn settled_job(server: &TestServer, event: i64) -> Value {
    server.settled_trace(event).await["jobs"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_once_signed_after_transient_failures() {
    let (receiver, url) =
        Receiver::start(vec![Answer::Status(503), Answer::Status(502), Answer::Ok]).await;
    let (server, _rules) = service(&url, true, |_| {}).await;
    let event = fire(&server, 7).await;
    let job = settled_job(&server, event).await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(job["attempts"], 3);
    let received = receiver.received();
    assert_eq!(received.len(), 3);
    assert!(
        received.iter().all(|r| r.signature_ok),
        "signatures verify: {received:?}"
    );
    assert!(
        received.iter().all(|r| r.id == received[0].id),
        "webhook-id is the same on every retry"
    );
    assert_eq!(
        received[2].body,
        json!({"n": 7, "text": "呼損 13800138000"})
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_lettered_after_the_schedule_and_on_permanent_errors() {
    let (always_500, url) = Receiver::start(vec![Answer::Status(500)]).await;
    let (server, _rules) = service(&url, true, |_| {}).await;
    let job = settled_job(&server, fire(&server, 1).await).await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("dead"), Some(4)),
        "{job}"
    );
    assert_eq!(
        always_500.received().len(),
        4,
        "one attempt and three retries"
    );
    server.stop().await;

    let (gone, url) = Receiver::start(vec![Answer::Status(404)]).await;
    let (server, _rules) = service(&url, true, |_| {}).await;
    let job = settled_job(&server, fire(&server, 2).await).await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("dead"), Some(1)),
        "{job}"
    );
    assert_eq!(gone.received().len(), 1, "a 404 is not retried");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_and_a_hanging_target_times_out() {
    let (receiver, url) =
        Receiver::start(vec![Answer::RetryAfter(1), Answer::Hang, Answer::Ok]).await;
    let (server, _rules) = service(&url, true, |_| {}).await;
    let job = settled_job(&server, fire(&server, 3).await).await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("done"), Some(3)),
        "{job}"
    );
    let received = receiver.received();
    assert!(
        received[1].at - received[0].at >= Duration::from_millis(1_000),
        "waited for Retry-After"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ssrf_guard_refuses_private_targets() {
    let (receiver, url) = Receiver::start(vec![Answer::Ok]).await;
    let (server, _rules) = service(&url, false, |_| {}).await;
    let job = settled_job(&server, fire(&server, 4).await).await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("dead"), Some(1)),
        "{job}"
    );
    assert!(receiver.received().is_empty(), "nothing was sent");
    let store = switchboard::store::open(&server.database).await.unwrap();
    let attempts = store
        .list_job_attempts(job["id"].as_i64().unwrap())
        .await
        .unwrap();
    assert!(
        attempts[0]
            .record
            .detail
            .as_deref()
            .unwrap()
            .contains("SSRF guard"),
        "{attempts:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_inspect_retry_and_cancel_jobs() {
    // 404 first (permanent: dead), then fine once an operator retries.
    let (receiver, url) = Receiver::start(vec![Answer::Status(404), Answer::Ok]).await;
    let (server, _rules) = service(&url, true, |_| {}).await;
    let job = settled_job(&server, fire(&server, 5).await).await;
    assert_eq!(job["status"], "dead");
    let id = job["id"].as_i64().unwrap();

    let (status, page) = server.admin_get("/v1/jobs?status=dead").await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(page["jobs"][0]["id"], id);
    let (_, view) = server.admin_get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(view["attempt_log"][0]["code"], 404, "{view}");
    assert_eq!(view["attempt_log"][0]["outcome"], "permanent");

    let retry = |path: String| {
        send(
            server
                .client
                .post(server.url(&path))
                .bearer_auth(ADMIN_TOKEN),
        )
    };
    let (status, _) = retry(format!("/v1/jobs/{id}/retry")).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let path = format!("/v1/jobs/{id}");
    let done = eventually(
        Duration::from_secs(10),
        "the retried job to be delivered",
        || async {
            let (_, view) = server.admin_get(&path).await;
            (view["status"] == "done").then_some(view)
        },
    )
    .await;
    assert_eq!(done["attempts"], 2);
    assert_eq!(receiver.received().len(), 2);
    // A done job cannot be retried or cancelled: 409 naming its status.
    let (status, body) = retry(format!("/v1/jobs/{id}/retry")).await;
    assert_eq!(status, reqwest::StatusCode::CONFLICT);
    assert!(
        body["message"].as_str().unwrap().contains("is done"),
        "{body}"
    );
    let (status, _) = retry(format!("/v1/jobs/{id}/cancel")).await;
    assert_eq!(status, reqwest::StatusCode::CONFLICT);
    // Bad parameters and missing tokens.
    for (path, parameter) in [
        ("/v1/jobs?status=lost", "status"),
        ("/v1/jobs?limit=0", "limit"),
        ("/v1/jobs?x=1", "x"),
    ] {
        let (status, body) = server.admin_get(path).await;
        assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(body["parameter"], parameter, "{path}");
    }
    assert_eq!(
        server.admin_get("/v1/jobs/999999").await.0,
        reqwest::StatusCode::NOT_FOUND
    );
    assert_eq!(
        server.admin_get("/v1/jobs/abc").await.0,
        reqwest::StatusCode::BAD_REQUEST
    );
    let (status, _) = send(server.client.get(server.url("/v1/jobs"))).await;
    assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED);
    server.stop().await;
}
