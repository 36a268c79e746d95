//! Delivery throughput: webhook jobs completed per second against a local receiver that answers
//! at once. Runs the whole service in-process on a temporary SQLite database.
//!
//! ```text
//! cargo run --release --example delivery_load -- [JOBS]            # default 20000
//! cargo run --release --example delivery_load -- [JOBS] --queued
//! cargo run --release --example delivery_load -- [JOBS] --queued --database postgres://… [--instances 3]
//! ```
//! By default it posts JOBS notifications (each fires one webhook rule) over 32 connections and
//! waits until every webhook job is done: intake, evaluation and delivery all share the one
//! SQLite writer (end to end).
//!
//! `--queued` measures the delivery path alone: JOBS webhook jobs are written to the store first
//! (as evaluations that asked for them), then the service starts and the clock runs until the
//! receiver has every one and the store records every job done. `--database` runs it on another
//! store (an empty PostgreSQL database, say) and `--instances N` starts N services on it in this
//! process, each with its own pools and workers, as N instances would.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use switchboard::config::{Config, Secret, WebhookTarget};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let queued = args.iter().any(|a| a == "--queued");
    let flag = |name: &str| {
        args.iter().position(|a| a == name).map(|i| {
            args.get(i + 1)
                .unwrap_or_else(|| panic!("{name} needs a value"))
                .clone()
        })
    };
    let database = flag("--database");
    let instances: usize =
        flag("--instances").map_or(1, |n| n.parse().expect("--instances: a number"));
    let values: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| {
            !a.starts_with("--")
                && (*i == 0 || !matches!(args[i - 1].as_str(), "--database" | "--instances"))
        })
        .map(|(_, a)| a)
        .collect();
    let jobs: u64 = values
        .first()
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
    config.database_url = Secret::new(
        database.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("sb.db").display())),
    );
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
    if queued {
        return delivery_only(config, jobs, received, instances).await;
    }
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

/// Queues `jobs` webhook jobs in the store, then starts the service and times their delivery.
async fn delivery_only(config: Config, jobs: u64, received: Arc<AtomicU64>, instances: usize) {
    use switchboard::event::{decode, dedupe_key, parse_body};
    use switchboard::store::{Finished, JobKind, JobStatus, Lease, NewEvent, NewJob};
    use switchboard::time::now_millis;
    let store = switchboard::store::open(config.database_url.expose())
        .await
        .unwrap();
    let queued_at = Instant::now();
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(1000) {
        let batch: Vec<NewEvent> = chunk
            .iter()
            .map(|n| {
                let text = format!("{{\"call_id\":\"load\",\"conversation_id\":{n}}}");
                let parsed = parse_body(text.as_bytes(), None).unwrap();
                let decoded = decode(&parsed);
                NewEvent {
                    dedupe_key: dedupe_key(&parsed.fields),
                    received_at: now_millis(),
                    source_addr: None,
                    content_type: None,
                    raw_body: text.into_bytes(),
                    event: decoded.event,
                    warnings: decoded.warnings,
                }
            })
            .collect();
        store.insert_events(&batch).await.unwrap();
        let lease = Lease {
            owner: "bench".into(),
            now: now_millis(),
            until: now_millis() + 60_000,
        };
        let claimed = store.claim_events(&lease, 1000).await.unwrap();
        let finished: Vec<Finished> = claimed
            .iter()
            .map(|event| Finished {
                event_id: event.id,
                ruleset_version: "bench".into(),
                record: Default::default(),
                jobs: vec![NewJob {
                    rule: "hook".into(),
                    action_index: 0,
                    kind: JobKind::Webhook,
                    spec: serde_json::json!({
                        "kind": "webhook", "target": "hook", "body": { "n": event.id },
                    }),
                }],
                throttles: Vec::new(),
            })
            .collect();
        store
            .finish_events(&finished, "bench", now_millis())
            .await
            .unwrap();
    }
    store.close().await;
    println!(
        "{jobs} webhook jobs queued in {:.1}s; delivering",
        queued_at.elapsed().as_secs_f64()
    );

    let database = config.database_url.expose().to_string();
    let began = Instant::now();
    for _ in 0..instances {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        tokio::spawn(switchboard::run(
            config.clone(),
            listener,
            std::future::pending(),
        ));
    }
    while received.load(Ordering::Relaxed) < jobs {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            began.elapsed() < Duration::from_secs(600),
            "not all jobs were delivered"
        );
    }
    // Delivered is not finished: wait until the store has every job recorded done.
    let store = switchboard::store::open(&database).await.unwrap();
    loop {
        let mut open = 0;
        for status in [JobStatus::Pending, JobStatus::Retrying] {
            open += store.list_jobs(Some(status), None, 1).await.unwrap().len();
        }
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = began.elapsed().as_secs_f64();
    println!(
        "{jobs} queued webhook jobs delivered (signed, HTTP/1.1 on loopback) and recorded done by \
         {instances} instance(s) in {total:.2}s = {:.0} jobs/s",
        jobs as f64 / total
    );
}
