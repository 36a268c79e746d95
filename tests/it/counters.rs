//! Windowed counters: every hit gets its exact ordinal, across processors and instances.
//!
//! The store contract on both backends: concurrent hits of one key are numbered 1, 2, 3, …, none
//! shared and none skipped, and a hit keeps its ordinal (recorded again, recounted for another
//! window, read back for a replay). Then the whole service, with several processors in one
//! instance, and as real processes (SQLite alone, three instances on PostgreSQL) one of which is
//! `kill -9`ed midway: each key's events are posted at once from concurrent clients, and every
//! event of a key gets a different count, so the rule that fires at 10 fires exactly once per
//! key; a replay and a what-if see the same counts.

use crate::store::{backends, new_event};
use crate::util::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchboard::store::Store;

/// Fires on the 10th event of each key: 20 events per key (`queue_time` 0–19 is key `k0`, …).
const SPIKE_RULE: &str = "const NAME = \"spike\";\nfn when(ev) { count_in_window(`k${ev.queue_time / 20}`, \"5m\") == 10 }\nfn then(ev) { [] }";
/// One key every event hits: the most contended counter there can be.
const HOT_RULE: &str = "const NAME = \"hot\";\nfn when(ev) { count_in_window(\"all\", \"1h\") == 1000 }\nfn then(ev) { [] }";

const EVENTS: usize = 2_000;
const PER_KEY: usize = 20;
const CLIENTS: usize = 32;

fn write_rules(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("spike.rhai"), SPIKE_RULE).unwrap();
    std::fs::write(dir.join("hot.rhai"), HOT_RULE).unwrap();
}

fn body(n: usize) -> String {
    json!({"call_id": format!("c{n}"), "conversation_id": n, "queue_time": n,
        "customer_phone": format!("139{n:08}")})
    .to_string()
}

/// Where notifications go: instance URLs, replaced when an instance restarts on a new port.
type Targets = Arc<Mutex<Vec<String>>>;

/// Posts notification `n` until it is acknowledged, to `targets[n % len]` as they are at each
/// try (a retry of a push that was stored is a duplicate, answered with the same id; while an
/// instance is down, pushes to it fail and are tried again); its event id.
async fn post_until_accepted(client: &reqwest::Client, targets: &Targets, n: usize) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let url = {
            let targets = targets.lock().unwrap();
            targets[n % targets.len()].clone()
        };
        let sent = client
            .post(format!("{url}/v1/notifications"))
            .bearer_auth(INGEST_TOKEN)
            .body(body(n))
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        let problem = match sent {
            Ok(response) if response.status().is_success() => {
                if let Ok(ack) = response.json::<Value>().await {
                    return ack["id"].as_i64().unwrap();
                }
                "the acknowledgement was cut off".to_string()
            }
            Ok(response) if response.status().is_server_error() => response.status().to_string(),
            Ok(response) => panic!("push {n} refused: {}", response.status()),
            Err(error) => error.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "push {n} never accepted: {problem}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Posts the notifications 0..EVENTS from concurrent clients, in order of n (so each key's
/// events are in flight together), spread over `targets`; `sent` counts those taken. Resolves
/// to their event ids.
fn post_all(targets: Targets, sent: Arc<AtomicUsize>) -> tokio::task::JoinHandle<Vec<i64>> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..CLIENTS {
            let (client, sent, targets) = (client.clone(), sent.clone(), targets.clone());
            clients.spawn(async move {
                let mut ids = Vec::new();
                loop {
                    let n = sent.fetch_add(1, Ordering::Relaxed);
                    if n >= EVENTS {
                        return ids;
                    }
                    ids.push(post_until_accepted(&client, &targets, n).await);
                }
            });
        }
        let ids: BTreeSet<i64> = clients.join_all().await.into_iter().flatten().collect();
        assert_eq!(ids.len(), EVENTS, "one event per notification");
        ids.into_iter().collect()
    })
}

/// The evaluation records of `ids`, once every one of them is processed.
async fn evaluations(store: &dyn Store, ids: &[i64]) -> HashMap<i64, Value> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let found = store.list_evaluations(ids).await.unwrap();
        if found.len() == ids.len() {
            return found
                .into_iter()
                .map(|(id, evaluation)| (id, json!(evaluation.record.unwrap())))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {} events evaluated",
            found.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The count an evaluation record shows for a counter key.
fn count_of(record: &Value, key: &str) -> Option<u64> {
    record["counter_hits"]
        .as_array()?
        .iter()
        .find(|hit| hit["key"] == key)?["count"]
        .as_u64()
}

/// The per-key counter key an event hit (`k0` … `k99`).
fn spike_key(record: &Value) -> String {
    let keys: Vec<&str> = record["counter_hits"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|hit| hit["key"].as_str())
        .filter(|key| key.starts_with('k'))
        .collect();
    assert_eq!(keys.len(), 1, "{record}");
    keys[0].to_string()
}

fn matched(record: &Value) -> BTreeSet<String> {
    record["verdicts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["matched"] == true)
        .map(|v| v["rule"].as_str().unwrap().to_string())
        .collect()
}

/// What exact counters guarantee: each key's events got the counts 1, 2, … (each once, none
/// skipped), on the per-key counters and on the one every event hits; the spike rule matched
/// exactly once per key (the 10th event), the hot rule exactly once.
fn assert_exact(records: &HashMap<i64, Value>) {
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut hot = Vec::new();
    for record in records.values() {
        assert!(
            record["verdicts"]
                .as_array()
                .unwrap()
                .iter()
                .all(|v| v.get("error").is_none()),
            "no rule failed: {record}"
        );
        let key = spike_key(record);
        let count = count_of(record, &key).unwrap_or_else(|| panic!("{record}"));
        per_key.entry(key).or_default().push(count);
        hot.push(count_of(record, "all").unwrap_or_else(|| panic!("{record}")));
    }
    assert_eq!(per_key.len(), EVENTS / PER_KEY);
    let expected: Vec<u64> = (1..=PER_KEY as u64).collect();
    for (key, counts) in &mut per_key {
        counts.sort_unstable();
        assert_eq!(*counts, expected, "the counts of key {key}");
    }
    hot.sort_unstable();
    assert_eq!(
        hot,
        (1..=EVENTS as u64).collect::<Vec<_>>(),
        "the counts of the key every event hits"
    );
    let spikes: Vec<String> = records
        .values()
        .filter(|r| matched(r).contains("spike"))
        .map(spike_key)
        .collect();
    let keys: BTreeSet<&String> = spikes.iter().collect();
    assert_eq!(spikes.len(), EVENTS / PER_KEY, "one spike alert per key");
    assert_eq!(keys.len(), EVENTS / PER_KEY, "one spike alert per key");
    let hot_matches = records
        .values()
        .filter(|r| matched(r).contains("hot"))
        .count();
    assert_eq!(hot_matches, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_hits_of_one_key_are_numbered_one_by_one() {
    for (name, store, _dir) in backends().await {
        let batch: Vec<_> = (0..202)
            .map(|i| new_event(json!({"ordinal": i}), 1_000 + i))
            .collect();
        let ids: Vec<i64> = store
            .insert_events(&batch)
            .await
            .unwrap()
            .iter()
            .map(|i| i.id)
            .collect();
        // Two at once on one key: n and n + 1.
        let (a, b) = tokio::join!(
            store.record_hit("pair", ids[0], 5_000, 60_000),
            store.record_hit("pair", ids[1], 5_000, 60_000)
        );
        let mut pair = [a.unwrap(), b.unwrap()];
        pair.sort_unstable();
        assert_eq!(pair, [1, 2], "{name}");

        // Eight writers, 25 events each, all on one key (and each on a key of its own): the hot
        // key's ordinals are 1..=200, each once.
        let events: Vec<(i64, i64)> = ids[2..]
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, 1_000 + i as i64))
            .collect();
        let mut writers = tokio::task::JoinSet::new();
        for (writer, chunk) in events.chunks(25).enumerate() {
            let (store, chunk) = (store.clone(), chunk.to_vec());
            writers.spawn(async move {
                let mut got = Vec::new();
                for (n, (id, at)) in chunk.into_iter().enumerate() {
                    let ordinal = store.record_hit("hot", id, at, 60_000).await.unwrap();
                    let own = store
                        .record_hit(&format!("own-{writer}"), id, at, 60_000)
                        .await
                        .unwrap();
                    assert_eq!(own, n as u64 + 1);
                    got.push((id, at, ordinal));
                }
                got
            });
        }
        let hits: Vec<(i64, i64, u64)> = writers.join_all().await.into_iter().flatten().collect();
        let mut ordinals: Vec<u64> = hits.iter().map(|h| h.2).collect();
        ordinals.sort_unstable();
        assert_eq!(ordinals, (1..=200).collect::<Vec<u64>>(), "{name}");
        assert_eq!(store.count_hits("hot", 0).await.unwrap(), 200, "{name}");

        // A hit keeps its ordinal: recorded again (an event evaluated again after a crash), and
        // read back for a replay. Nothing is added.
        for &(id, at, ordinal) in &hits {
            assert_eq!(
                store.record_hit("hot", id, at, 60_000).await.unwrap(),
                ordinal,
                "{name}"
            );
            assert_eq!(
                store
                    .hit_ordinal_as_of("hot", id, at, 60_000)
                    .await
                    .unwrap(),
                ordinal,
                "{name}"
            );
        }
        assert_eq!(store.count_hits("hot", 0).await.unwrap(), 200, "{name}");
        // Another window (50 ms) recounts up to the hit's place: the hits within it that were
        // recorded before it, and itself.
        let hits_ref = &hits;
        let recount = |at: i64, ordinal: u64| {
            hits_ref
                .iter()
                .filter(|&&(_, other_at, other)| other_at >= at - 50 && other <= ordinal)
                .count() as u64
        };
        for &(id, at, ordinal) in hits.iter().step_by(7) {
            let expected = recount(at, ordinal);
            assert_eq!(
                store.hit_ordinal_as_of("hot", id, at, 50).await.unwrap(),
                expected,
                "{name}"
            );
            assert_eq!(
                store.record_hit("hot", id, at, 50).await.unwrap(),
                expected,
                "{name}: the same when recorded again"
            );
        }
        // A key the event never hit: the earlier events' hits up to its time, plus one.
        assert_eq!(
            store
                .hit_ordinal_as_of("pair", ids[5], 5_000, 60_000)
                .await
                .unwrap(),
            3,
            "{name}"
        );
        assert_eq!(
            store
                .hit_ordinal_as_of("never", ids[5], 5_000, 60_000)
                .await
                .unwrap(),
            1,
            "{name}"
        );
    }
}

/// PostgreSQL serializes hits per key with a transaction-scoped advisory lock on the key's hash:
/// while one key's lock is held, its hits wait and other keys' go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_of_different_keys_do_not_wait_on_each_other() {
    let Some(url) = postgres_database().await else {
        return;
    };
    let store = switchboard::store::open(&url).await.unwrap();
    let batch: Vec<_> = (0..2)
        .map(|i| new_event(json!({"lock": i}), 1_000 + i))
        .collect();
    let ids: Vec<i64> = store
        .insert_events(&batch)
        .await
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let mut holder = pool.begin().await.unwrap();
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtext('switchboard.counter_hits'), hashtext('busy'))",
    )
    .execute(&mut *holder)
    .await
    .unwrap();
    let waiting = {
        let store = store.clone();
        let id = ids[0];
        tokio::spawn(async move { store.record_hit("busy", id, 1_000, 60_000).await })
    };
    eventually(
        Duration::from_secs(30),
        "the busy key's hit to wait for its lock",
        || async {
            let (waiters,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            (waiters == 1).then_some(())
        },
    )
    .await;
    assert_eq!(
        store
            .record_hit("free", ids[1], 1_000, 60_000)
            .await
            .unwrap(),
        1,
        "another key is not held up"
    );
    assert!(!waiting.is_finished(), "the busy key waits for its lock");
    holder.commit().await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), 1);
}

/// Several processors in one instance (SQLite, or PostgreSQL when the suite runs on it): exact
/// counts; a dry-run replay and a what-if of those events see the counts they saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_processors_in_one_instance_count_exactly_and_replays_agree() {
    let server = TestServer::start_with(|config| {
        config.processors = 4;
        write_rules(&config.rules_dir);
    })
    .await;
    let (_, rules) = server.admin_get("/v1/rules").await;
    assert_eq!(rules["rules"].as_array().unwrap().len(), 2, "{rules}");
    let targets = Arc::new(Mutex::new(vec![format!("http://{}", server.addr)]));
    let ids = post_all(targets, Arc::default()).await.unwrap();
    let store = switchboard::store::open(&server.database).await.unwrap();
    let records = evaluations(&*store, &ids).await;
    assert_exact(&records);

    // A dry-run replay of them all matches what processing matched.
    let (status, replayed) = send(
        server
            .client
            .post(server.url("/v1/replay"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"since": "1h", "limit": 10_000})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{replayed}");
    let events = replayed["events"].as_array().unwrap();
    assert_eq!(events.len(), EVENTS);
    for event in events {
        let id = event["event_id"].as_i64().unwrap();
        let again: BTreeSet<String> = event["matched"]
            .as_array()
            .unwrap()
            .iter()
            .map(|rule| rule.as_str().unwrap().to_string())
            .collect();
        assert_eq!(again, matched(&records[&id]), "event {id}");
    }
    // Replayed one by one, the events of a few keys count what they counted.
    let keys = ["k0", "k37", "k99"];
    for (&id, record) in records
        .iter()
        .filter(|(_, r)| keys.contains(&&*spike_key(r)))
    {
        let (status, replayed) = send(
            server
                .client
                .post(server.url(&format!("/v1/events/{id}/replay")))
                .bearer_auth(ADMIN_TOKEN),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{replayed}");
        let evaluation = &replayed["evaluation"];
        for key in [spike_key(record), "all".to_string()] {
            assert_eq!(
                count_of(evaluation, &key),
                count_of(record, &key),
                "event {id}, key {key}"
            );
        }
    }
    // What-if: the same rules change nothing; the spike at 5 over a longer window (recounted
    // up to each hit's place) moves every alert from each key's 10th event to its 5th.
    let candidate = tempfile::tempdir().unwrap();
    write_rules(candidate.path());
    let what_if = |dir: &Path| {
        server
            .client
            .post(server.url("/v1/what-if"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"rules_dir": dir, "since": "1h", "limit": 10_000}))
    };
    let (status, report) = send(what_if(candidate.path())).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["events_compared"], EVENTS, "{report}");
    assert_eq!(report["events_changed"], 0, "{report}");
    std::fs::write(
        candidate.path().join("spike.rhai"),
        SPIKE_RULE.replace("\"5m\") == 10", "\"10m\") == 5"),
    )
    .unwrap();
    let (status, report) = send(what_if(candidate.path())).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let changed = &report["changed_rules"];
    assert_eq!(changed.as_array().unwrap().len(), 1, "{report}");
    assert_eq!(changed[0]["rule"], "spike", "{report}");
    assert_eq!(changed[0]["newly_matching"], EVENTS / PER_KEY, "{report}");
    assert_eq!(changed[0]["stops_matching"], EVENTS / PER_KEY, "{report}");
    assert_eq!(report["unchanged_rules"], json!(["hot"]), "{report}");
}

/// Real processes with four processors each, one of them `kill -9`ed midway (its claimed events
/// and counted hits left behind, some of them stored) and restarted: still exact counts. On
/// PostgreSQL, three instances share the database, each key's events spread over them.
async fn exact_through_a_kill_9(database: &str, dir: &Path, instances: usize) {
    let rules = dir.join("rules");
    write_rules(&rules);
    let config = dir.join("switchboard.toml");
    std::fs::write(
        &config,
        "processors = 4\nprocessing_lease_secs = 3\nprocessing_poll_ms = 200\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let start = |i: usize| {
        let home = dir.join(format!("instance-{i}"));
        std::fs::create_dir_all(&home).unwrap();
        Binary::start_with(&home, database, &rules, &["--config", &config])
    };
    let mut running: Vec<Binary> = std::thread::scope(|s| {
        let started: Vec<_> = (0..instances).map(|i| s.spawn(move || start(i))).collect();
        started.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let targets: Targets = Arc::new(Mutex::new(running.iter().map(|b| b.url("")).collect()));
    let sent = Arc::new(AtomicUsize::new(0));
    let posting = post_all(targets.clone(), sent.clone());
    eventually(
        Duration::from_secs(120),
        "half the notifications sent",
        || async { (sent.load(Ordering::Relaxed) >= EVENTS / 2).then_some(()) },
    )
    .await;
    running[0].kill_9();
    running[0] = start(0);
    targets.lock().unwrap()[0] = running[0].url("");
    let ids = posting.await.unwrap();
    let store = switchboard::store::open(database).await.unwrap();
    let records = evaluations(&*store, &ids).await;
    assert_exact(&records);
    drop(running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_on_sqlite_stays_exact_through_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("sb.db").display());
    exact_through_a_kill_9(&database, dir.path(), 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_postgres_stay_exact_through_a_kill_9() {
    let Some(database) = postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    exact_through_a_kill_9(&database, dir.path(), 3).await;
}
