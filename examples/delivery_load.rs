//! Delivery throughput: webhook jobs completed per second against a local receiver that answers
//! at once. Runs the whole service in-process on a temporary SQLite database.
//!
//! ```text
//! cargo run --release --example delivery_load -- [JOBS]     # default 20000
//! ```
//! It posts JOBS notifications (each fires one webhook rule) over 32 connections and waits until
//! every webhook job is done: intake, evaluation and delivery all share the one SQLite writer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use switchboard::config::{Config, Secret, WebhookTarget};

#[tokio::main]
async fn main() {
    let jobs: u64 = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("JOBS: a number"))
        .unwrap_or(20_000);
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            async { axum::http::StatusCode::NO_CONTENT }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::write(
        dir.path().join("rules/hook.rhai"),
        "fn when(ev) { true }\nfn then(ev) { [webhook(#{ target: \"hook\", body: #{ n: ev.conversation_id } })] }",
    )
    .unwrap();
    let mut config = Config::with_defaults();
    config.database_url = Secret::new(format!("sqlite://{}", dir.path().join("sb.db").display()));
    config.rules_dir = dir.path().join("rules");
    config.outbox_dir = dir.path().join("outbox");
    config.allow_private_targets = true;
    config.webhook_targets.insert(
        "hook".into(),
        WebhookTarget {
            url: Secret::new(hook),
            method: "POST".into(),
            headers: Default::default(),
            timeout: Duration::from_secs(5),
            secret: Some(
                switchboard::delivery::signing::WebhookKey::parse(
                    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                )
                .unwrap(),
            ),
            allow_private: true,
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(switchboard::run(config, listener, std::future::pending()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let client = reqwest::Client::new();
    let began = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (client, next, url) = (
            client.clone(),
            next.clone(),
            format!("{base}/v1/notifications"),
        );
        senders.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= jobs {
                    break;
                }
                let body = format!("{{\"call_id\":\"load\",\"conversation_id\":{n}}}");
                client.post(&url).body(body).send().await.unwrap();
            }
        });
    }
    senders.join_all().await;
    let start = Instant::now();
    let at_start = received.load(Ordering::Relaxed);
    while received.load(Ordering::Relaxed) < jobs {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "not all jobs were delivered"
        );
    }
    let total = began.elapsed().as_secs_f64();
    println!(
        "{jobs} notifications accepted, evaluated and delivered as signed webhooks in {total:.1}s = {:.0} jobs/s end to end \
         ({at_start} were delivered while intake was still running; the last {} took {:.1}s after it)",
        jobs as f64 / total,
        jobs - at_start,
        start.elapsed().as_secs_f64()
    );
}
