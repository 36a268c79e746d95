//! Dispatch of new callback tasks: to a stand-in for Udesk's web callback API that checks the
//! `sign` the way Udesk does, and to a signed webhook target. Duplicate matches for one phone
//! make one task and one dispatch.

use crate::util::*;
use axum::extract::{Query, State};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard::config::{CallbackDispatch, Secret, UdeskApi};
use switchboard::delivery::retry::Schedule;
use switchboard::delivery::signing::udesk_sign;

const EMAIL: &str = "admin@example.com";
const TOKEN: &str = "udesk-open-api-token";
const RELAY: &str = "01086465040";

const CALLBACK_RULE: &str = "const NAME = \"cb\";\nfn when(ev) { ev.call_id.starts_with(\"cb\") }\nfn then(ev) { [callback_task(#{ phone: ev.customer_phone, reason: `missed ${ev.call_id}`, priority: 2 })] }";

#[derive(Debug, Clone)]
struct Call {
    sign_ok: bool,
    nonce: String,
    body: Value,
}

/// A stand-in for `POST /open_api_v1/callcenter/web_callback`: verifies the query signature
/// with the account's token and answers Udesk-style; answers `503` for the first `fail_first`
/// requests.
#[derive(Clone)]
struct Udesk {
    calls: Arc<Mutex<Vec<Call>>>,
    fail_first: usize,
}

impl Udesk {
    async fn start(fail_first: usize) -> (Udesk, String) {
        let udesk = Udesk {
            calls: Arc::default(),
            fail_first,
        };
        let app = axum::Router::new()
            .route(
                "/open_api_v1/callcenter/web_callback",
                axum::routing::post(Self::handle),
            )
            .with_state(udesk.clone());
        let base = serve_on_loopback(app).await;
        (udesk, base)
    }

    async fn handle(
        State(udesk): State<Udesk>,
        Query(query): Query<HashMap<String, String>>,
        body: axum::body::Bytes,
    ) -> (axum::http::StatusCode, axum::Json<Value>) {
        let param = |name: &str| query.get(name).cloned().unwrap_or_default();
        let timestamp: i64 = param("timestamp").parse().unwrap_or(0);
        let fresh = (switchboard::time::now_millis() / 1000 - timestamp).abs() < 300;
        let sign_ok = fresh
            && param("email") == EMAIL
            && param("sign_version") == "v2"
            && !param("nonce").is_empty()
            && param("sign") == udesk_sign(EMAIL, TOKEN, timestamp, &param("nonce"));
        let n = {
            let mut calls = udesk.calls.lock().unwrap();
            calls.push(Call {
                sign_ok,
                nonce: param("nonce"),
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            });
            calls.len()
        };
        if n <= udesk.fail_first {
            return (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({})),
            );
        }
        let answer = if sign_ok {
            json!({"code": 1000})
        } else {
            json!({"code": 2002, "message": "签名错误"})
        };
        (axum::http::StatusCode::OK, axum::Json(answer))
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

async fn service(dispatch: CallbackDispatch) -> (TestServer, tempfile::TempDir) {
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("cb.rhai"), CALLBACK_RULE).unwrap();
    let rules_dir = rules.path().to_path_buf();
    let server = TestServer::start_with(move |config| {
        config.rules_dir = rules_dir;
        config.retry_schedule = Schedule {
            delays: vec![Duration::from_millis(50); 3],
        };
        config.callback_dispatch = Some(dispatch);
    })
    .await;
    (server, rules)
}

fn udesk_api(base_url: String, token: &str) -> CallbackDispatch {
    CallbackDispatch::Udesk(UdeskApi {
        base_url,
        email: EMAIL.into(),
        token: Secret::new(token),
        relay_number: RELAY.into(),
        timeout: Duration::from_secs(2),
        allow_private: true,
    })
}

async fn miss(server: &TestServer, call_id: &str) {
    let body = json!({"call_id": call_id, "customer_phone": "13800138000"});
    let (status, _) = server.post(body.to_string(), None).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED);
}

/// Waits until the one dispatch job is done or dead; returns it with its attempt log.
async fn settled_dispatch(server: &TestServer) -> Value {
    let job = eventually(
        Duration::from_secs(20),
        "the dispatch job to settle",
        || async {
            let (_, page) = server.admin_get("/v1/jobs").await;
            page["jobs"]
                .as_array()?
                .iter()
                .find(|j| {
                    j["kind"] == "callback_dispatch"
                        && (j["status"] == "done" || j["status"] == "dead")
                })
                .cloned()
        },
    )
    .await;
    server.admin_get(&format!("/v1/jobs/{}", job["id"])).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_task_is_dispatched_once_to_udesk_with_a_valid_sign() {
    let (udesk, base) = Udesk::start(1).await;
    let (server, _rules) = service(udesk_api(base, TOKEN)).await;
    miss(&server, "cb-1").await;
    miss(&server, "cb-2").await;
    let job = settled_dispatch(&server).await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(job["attempts"], 2, "a 503 is retried: {job}");
    // The two misses share one task, and the task went out once (after one retry).
    let tasks = eventually(Duration::from_secs(10), "both reasons", || async {
        let (_, page) = server.admin_get("/v1/callback-tasks").await;
        let tasks = page.as_array()?.clone();
        (tasks.len() == 1 && tasks[0]["reasons"].as_array()?.len() == 2).then_some(tasks)
    })
    .await;
    let calls = udesk.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls.iter().all(|c| c.sign_ok), "{calls:?}");
    assert_ne!(calls[0].nonce, calls[1].nonce, "a fresh nonce per attempt");
    assert_eq!(calls[1].body["from_number"], "13800138000");
    assert_eq!(calls[1].body["to_number"], RELAY);
    assert_eq!(
        calls[1].body["variables"]["switchboard_task_id"],
        tasks[0]["id"]
    );
    // The signed URL is not in the attempt record.
    assert!(!job.to_string().contains("sign="), "{job}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_sign_is_dead_lettered_with_udesks_message() {
    let (udesk, base) = Udesk::start(0).await;
    let (server, _rules) = service(udesk_api(base, "wrong-token")).await;
    miss(&server, "cb-1").await;
    let job = settled_dispatch(&server).await;
    assert_eq!(job["status"], "dead", "{job}");
    let detail = job["attempt_log"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("2002") && detail.contains("签名错误"),
        "{detail}"
    );
    assert!(!detail.contains("wrong-token"), "{detail}");
    assert_eq!(udesk.calls().len(), 1, "a refusal is not retried");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_task_can_go_to_a_signed_webhook_target_instead() {
    use switchboard::delivery::signing::WebhookKey;
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let received: Arc<Mutex<Vec<(bool, Value)>>> = Arc::default();
    let seen = received.clone();
    let app = axum::Router::new().route(
        "/crm",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                let h = |n: &str| headers[n].to_str().unwrap().to_string();
                let ok = WebhookKey::parse(SECRET).unwrap().verify(
                    &h("webhook-id"),
                    h("webhook-timestamp").parse().unwrap(),
                    &body,
                    &h("webhook-signature"),
                );
                seen.lock()
                    .unwrap()
                    .push((ok, serde_json::from_slice(&body).unwrap()));
                axum::http::StatusCode::NO_CONTENT
            },
        ),
    );
    let url = format!("{}/crm", serve_on_loopback(app).await);

    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("cb.rhai"), CALLBACK_RULE).unwrap();
    let rules_dir = rules.path().to_path_buf();
    let server = TestServer::start_with(move |config| {
        config.rules_dir = rules_dir;
        config.webhook_targets.insert(
            "crm".into(),
            switchboard::config::WebhookTarget {
                url: Secret::new(url),
                method: "POST".into(),
                headers: Default::default(),
                timeout: Duration::from_secs(2),
                secret: Some(WebhookKey::parse(SECRET).unwrap()),
                allow_private: true,
            },
        );
        config.callback_dispatch = Some(CallbackDispatch::Webhook("crm".into()));
    })
    .await;
    miss(&server, "cb-1").await;
    let job = settled_dispatch(&server).await;
    assert_eq!(job["status"], "done", "{job}");
    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    assert!(received[0].0, "signature verifies");
    assert_eq!(received[0].1["type"], "callback_task.created");
    assert_eq!(received[0].1["callback_task"]["phone"], "13800138000");
    server.stop().await;
}
