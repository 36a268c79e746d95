//! Scale-out on PostgreSQL with real processes: three `switchboard serve` instances share one
//! database; 5,000 notifications are spread across them (some sent to two instances at once);
//! one instance is `kill -9`ed midway and restarted. Afterwards every acknowledged event was
//! evaluated once, every callback task created once, and every webhook job completed; the
//! receiver saw a `webhook-id` twice only for jobs that were in flight when the instance died.

use crate::util::*;
use serde_json::json;
use sqlx::Row;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RULE: &str = "const NAME = \"scale\";\nfn when(ev) { ev.call_id.starts_with(\"m\") }\nfn then(ev) {[\n    callback_task(#{ phone: ev.customer_phone, reason: `missed ${ev.call_id}` }),\n    webhook(#{ target: \"recv\", body: #{ call_id: ev.call_id } }),\n]}";

const NOTIFICATIONS: u64 = 5_000;

/// Deliveries per `webhook-id`, with when each id was first seen.
#[derive(Default)]
struct Deliveries {
    by_id: HashMap<String, (u32, Instant)>,
}

async fn start_receiver() -> (Arc<Mutex<Deliveries>>, String) {
    let deliveries: Arc<Mutex<Deliveries>> = Arc::default();
    let seen = deliveries.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap| async move {
            let id = headers["webhook-id"].to_str().unwrap().to_string();
            let mut seen = seen.lock().unwrap();
            let entry = seen.by_id.entry(id).or_insert((0, Instant::now()));
            entry.0 += 1;
            axum::http::StatusCode::NO_CONTENT
        }),
    );
    let url = format!("{}/hook", serve_on_loopback(app).await);
    (deliveries, url)
}

fn body(n: u64) -> String {
    json!({"call_id": format!("m{n}"), "conversation_id": n, "customer_phone": format!("139{n:08}"), "call_result": "待機放棄"}).to_string()
}

/// Posts `body` to the instance at `addr`; the event id when it was acknowledged.
async fn post(client: &reqwest::Client, addr: std::net::SocketAddr, body: String) -> Option<i64> {
    let response = client
        .post(format!("http://{addr}/v1/notifications"))
        .bearer_auth(INGEST_TOKEN)
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let ack: serde_json::Value = response.json().await.ok()?;
    ack["id"].as_i64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_one_database_through_a_kill_9() {
    let Some(database) = postgres_database().await else {
        return;
    };
    let (deliveries, hook) = start_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("scale.rhai"), RULE).unwrap();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "processing_lease_secs = 3\nprocessing_poll_ms = 200\n\n[webhooks.recv]\nurl = \"{hook}\"\ntimeout_secs = 1\nallow_private = true\n\n[delivery]\nretry_schedule = [\"100ms\", \"200ms\", \"500ms\", \"1s\", \"1s\"]\n"
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let start = |i: usize| {
        let home = dir.path().join(format!("instance-{i}"));
        std::fs::create_dir_all(&home).unwrap();
        Binary::start_with(&home, &database, &rules, &["--config", &config])
    };
    // Started at once: migrations must be safe when several instances start together.
    let mut instances: Vec<Binary> = std::thread::scope(|s| {
        let started: Vec<_> = (0..3).map(|i| s.spawn(move || start(i))).collect();
        started.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (_, loaded) = send(
        reqwest::Client::new()
            .get(instances[0].url("/v1/rules"))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(loaded["rules"][0]["status"], "active", "{loaded}");
    let addrs: Arc<Mutex<Vec<std::net::SocketAddr>>> =
        Arc::new(Mutex::new(instances.iter().map(|b| b.addr).collect()));

    let client = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let acked: Arc<Mutex<BTreeSet<i64>>> = Arc::default();
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..16u64 {
        let (client, next, acked, addrs) =
            (client.clone(), next.clone(), acked.clone(), addrs.clone());
        senders.spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= NOTIFICATIONS {
                    break;
                }
                let targets = addrs.lock().unwrap().clone();
                let first = targets[(n + sender) as usize % targets.len()];
                // Every 20th notification goes to two instances at once (a duplicate push).
                let ids = if n % 20 == 0 {
                    let second = targets[(n + sender + 1) as usize % targets.len()];
                    let (a, b) = tokio::join!(
                        post(&client, first, body(n)),
                        post(&client, second, body(n))
                    );
                    if let (Some(a), Some(b)) = (a, b) {
                        assert_eq!(a, b, "a duplicate push names the stored event");
                    }
                    vec![a, b]
                } else {
                    // An instance that is down: the sender tries another, as a load balancer would.
                    let mut id = post(&client, first, body(n)).await;
                    for other in &targets {
                        if id.is_some() {
                            break;
                        }
                        id = post(&client, *other, body(n)).await;
                    }
                    vec![id]
                };
                acked.lock().unwrap().extend(ids.into_iter().flatten());
            }
        });
    }
    // Kill instance 0 midway, and restart it a little later.
    let sent = || next.load(std::sync::atomic::Ordering::Relaxed);
    eventually(
        Duration::from_secs(120),
        "2,000 notifications sent",
        || async { (sent() >= 2_000).then_some(()) },
    )
    .await;
    instances[0].kill_9();
    *killed_at.lock().unwrap() = Some(Instant::now());
    addrs.lock().unwrap().remove(0);
    eventually(
        Duration::from_secs(120),
        "3,500 notifications sent",
        || async { (sent() >= 3_500).then_some(()) },
    )
    .await;
    instances[0] = start(0);
    addrs.lock().unwrap().push(instances[0].addr);
    senders.join_all().await;
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() as u64 >= NOTIFICATIONS * 99 / 100,
        "almost every notification was acknowledged: {}",
        acked.len()
    );

    // Everything settles: queue empty, every job done.
    let pool = sqlx::PgPool::connect(&database).await.unwrap();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
                .get::<i64, _>(0)
        }
    };
    eventually(
        Duration::from_secs(180),
        "every event processed and job done",
        || async {
            let queued = count("SELECT COUNT(*) FROM event_queue").await;
            let open = count("SELECT COUNT(*) FROM jobs WHERE status <> 'done'").await;
            (queued == 0 && open == 0).then_some(())
        },
    )
    .await;

    // Every acknowledged event is stored once and was evaluated once.
    let stored: BTreeSet<i64> = sqlx::query("SELECT id FROM events")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        acked.is_subset(&stored),
        "every acknowledged event is stored"
    );
    let events = stored.len() as i64;
    assert_eq!(
        count("SELECT COUNT(DISTINCT dedupe_key) FROM events").await,
        events
    );
    assert_eq!(count("SELECT COUNT(*) FROM evaluations").await, events);
    // Each event: one callback task and one webhook job, each once.
    assert_eq!(
        count("SELECT COUNT(*) FROM jobs WHERE kind = 'webhook'").await,
        events
    );
    assert_eq!(count("SELECT COUNT(*) FROM callback_tasks").await, events);
    assert_eq!(
        count("SELECT COUNT(DISTINCT phone) FROM callback_tasks").await,
        events
    );
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM callback_tasks t WHERE (SELECT COUNT(*) \
             FROM callback_task_reasons r WHERE r.task_id = t.id) <> 1"
        )
        .await,
        0,
        "each task holds exactly one reason: no request was merged twice"
    );

    // The receiver got every webhook job; an id twice only if it was first seen before the kill.
    let killed_at = killed_at.lock().unwrap().unwrap();
    let deliveries = std::mem::take(&mut *deliveries.lock().unwrap());
    assert_eq!(
        deliveries.by_id.len() as i64,
        events,
        "one webhook-id per job"
    );
    let repeated: Vec<_> = deliveries
        .by_id
        .iter()
        .filter(|(_, (times, _))| *times > 1)
        .collect();
    for (id, (times, first)) in &repeated {
        assert!(
            *first <= killed_at,
            "{id} delivered {times} times, first after the kill: not a job of the killed instance"
        );
    }
    let taken_over = count("SELECT COUNT(*) FROM evaluations WHERE attempts > 1").await;
    eprintln!(
        "{events} events from {NOTIFICATIONS} posts; {taken_over} evaluated after a lease \
         expired (claimed by the killed instance); {} webhook ids delivered twice (in flight at \
         the kill)",
        repeated.len()
    );

    // Every instance reports its rule set; they agree.
    let (status, view) = send(
        reqwest::Client::new()
            .get(instances[1].url("/v1/instances"))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(view["agree"], true, "{view}");
    assert!(view["instances"].as_array().unwrap().len() >= 3, "{view}");
}
