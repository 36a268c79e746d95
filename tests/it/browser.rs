//! The dashboard end to end in a real browser: the service runs in-process with data behind every
//! page (an hour of call history, callback tasks, a webhook job that went dead), then
//! `tests/browser/console.mjs` drives headless Chromium through it with playwright-core. The test
//! also hands the script a candidate rules directory for what-if, and records a second instance
//! with another rule set when the script asks for one.
//!
//! Needs Debian's `chromium` and `npm ci` in `tests/browser`; `scripts/test` provisions both. This
//! test fails (never skips) when they are missing.

use crate::util::*;
use chrono::{FixedOffset, TimeZone};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use switchboard::config::{Secret, WebhookTarget};
use switchboard::delivery::retry::Schedule;
use switchboard::store::NewEvent;

/// The VIP sample's phone: its event opens a callback task and posts to the chat webhook.
const VIP_PHONE: &str = "13800138000";

fn chromium_path() -> PathBuf {
    std::env::var_os("CHROMIUM_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// What the browser test needs besides the service; panics with how to get it.
fn require_browser_tools(root: &Path) {
    let mut missing = Vec::new();
    if !chromium_path().is_file() {
        missing.push(format!(
            "Chromium at {} (Debian package `chromium`)",
            chromium_path().display()
        ));
    }
    if Command::new("node").arg("--version").output().is_err() {
        missing.push("Node.js (`node` on PATH)".to_string());
    }
    if !root
        .join("tests/browser/node_modules/playwright-core/package.json")
        .is_file()
    {
        missing.push("tests/browser/node_modules (`npm ci` in tests/browser)".to_string());
    }
    assert!(
        missing.is_empty(),
        "the dashboard browser test cannot run: missing {}. Run `scripts/test` (it installs \
         Chromium with apt and runs `npm ci` in tests/browser), or install them by hand.",
        missing.join(", ")
    );
}

/// A webhook receiver on loopback that answers 404 to its first request (a permanent failure:
/// the job goes dead at once) and 204 to every later one (the operator's retry succeeds).
async fn flaky_receiver() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/chat",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                    axum::http::StatusCode::NOT_FOUND
                } else {
                    axum::http::StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let url = format!("{}/chat", serve_on_loopback(app).await);
    (url, hits)
}

/// The starter rules of `rules/`, copied into a fresh directory the browser test may edit.
fn starter_rules(root: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(root.join("rules")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rhai") {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// A candidate rules directory for what-if: the starter rules, with `agent-missed-call` narrowed
/// to rejected calls only, so the stored calls an agent did not answer stop matching it.
fn candidate_rules(root: &Path) -> tempfile::TempDir {
    let dir = starter_rules(root);
    let path = dir.path().join("agent-missed.rhai");
    let text = std::fs::read_to_string(&path).unwrap();
    let narrowed = text.replace(
        r#"ev.outcome == "agent_no_answer" || ev.outcome == "agent_rejected""#,
        r#"ev.outcome == "agent_rejected""#,
    );
    assert_ne!(
        text, narrowed,
        "agent-missed.rhai no longer has the condition the test narrows"
    );
    std::fs::write(&path, narrowed).unwrap();
    dir
}

/// Records a second, made-up instance that runs another rule set, in the service's database (as
/// another process sharing it would), so that the dashboard shows the disagreement.
async fn second_instance(database: &str) {
    let store = switchboard::store::open(database).await.unwrap();
    let now = switchboard::time::now_millis();
    store
        .heartbeat(&switchboard::store::InstanceInfo {
            id: "sb-other-test".into(),
            started_at: now - 3_600_000,
            seen_at: now,
            ruleset_version: "0ther0ru1e5e7000000000000000000000000000".into(),
            rules_dir: "/srv/switchboard/rules-old".into(),
            listen: "10.0.0.2:8080".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        })
        .await
        .unwrap();
    store.close().await;
}

/// An hour of call history, stored with past receive times so that the overview has a shape:
/// answered calls, abandoned ones (callback tasks, some overdue), missed and outbound calls.
fn history(now_ms: i64) -> Vec<NewEvent> {
    let people = [
        ("佐藤 健", "13912340001"),
        ("鈴木 美咲", "13912340002"),
        ("高橋 翔", "13912340003"),
        ("田中 結衣", "13912340004"),
        ("伊藤 蓮", "13912340005"),
        ("渡辺 さくら", "13912340006"),
        ("Li Wei", "15000001111"),
        ("Chen Jing", "15000002222"),
    ];
    let tokyo = FixedOffset::east_opt(9 * 3600).unwrap();
    // Calls per minute, oldest first: a quiet start, a busy stretch, a few empty minutes.
    let times: Vec<i64> = (1..=58i64)
        .rev()
        .flat_map(|minutes_ago| {
            let calls = match minutes_ago {
                m if m % 11 == 0 => 0,
                18..=27 => 2 + minutes_ago % 3,
                m => 1 + i64::from(m % 4 == 1),
            };
            (0..calls).map(move |k| now_ms - minutes_ago * 60_000 + k * 13_000)
        })
        .collect();
    times
        .into_iter()
        .zip(0u32..)
        .map(|(at, i)| {
            let person = (i as usize * 5) % people.len();
            let (name, phone) = people[person];
            let (workflow, call_result, queue_time) = match i % 9 {
                0 | 4 => ("in", "待機放棄", 61 + i64::from(i) * 3),
                2 => ("in", "オペレーター未応答", 12),
                6 => ("out_auto", "顧客未応答", 0),
                // The last three people are never reached: their callback tasks stay open.
                _ if person >= 5 => ("in", "顧客切断", 0),
                _ => ("in", "オペレーター応答", 8 + i64::from(i % 4) * 5),
            };
            let time = tokyo
                .timestamp_millis_opt(at)
                .unwrap()
                .format("%Y-%m-%d %H:%M:%S %z")
                .to_string();
            let body = json!({
                "call_id": format!("hist-{i:04}-{}", now_ms % 100_000),
                "conversation_id": 30_000 + i,
                "timestamp": time,
                "nick_name": name,
                "customer_phone": phone,
                "mobile_area": "東京",
                "workflow": workflow,
                "call_result": call_result,
                "queue_time": queue_time,
                "task_name": if workflow == "in" { "" } else { "November renewals" },
                "extend": {"team": "support"},
            });
            let raw = serde_json::to_vec(&body).unwrap();
            let parsed = switchboard::event::parse_body(&raw, Some("application/json")).unwrap();
            let decoded = switchboard::event::decode(&parsed);
            NewEvent {
                dedupe_key: switchboard::event::dedupe_key(&parsed.fields),
                received_at: at,
                source_addr: Some("203.0.113.7:443".into()),
                content_type: Some("application/json".into()),
                raw_body: raw,
                event: decoded.event,
                warnings: decoded.warnings,
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    require_browser_tools(root);

    let (hook_url, hits) = flaky_receiver().await;
    let rules = starter_rules(root);
    let rules_dir = rules.path().to_path_buf();
    let candidate = candidate_rules(root);
    let server = TestServer::start_with(|config| {
        config.rules_dir = rules_dir.clone();
        config.allow_private_targets = true;
        config.retry_schedule = Schedule {
            delays: vec![Duration::from_millis(200); 3],
        };
        config.webhook_targets.insert(
            "chat".into(),
            WebhookTarget {
                url: Secret::new(hook_url.clone()),
                method: "POST".into(),
                headers: Default::default(),
                timeout: Duration::from_secs(2),
                secret: None,
                allow_private: true,
            },
        );
    })
    .await;

    // History goes straight into the store (the API stamps receive times itself); the service's
    // processor picks it up like any accepted event.
    let store = switchboard::store::open(&server.database).await.unwrap();
    let history = history(switchboard::time::now_millis());
    let history_len = history.len();
    store.insert_events(&history).await.unwrap();
    store.close().await;

    // The live event: a VIP caller abandoned in the queue. It opens a callback task, emails ops
    // and posts to the chat webhook, whose first answer is a 404.
    let (status, ack) = server
        .post(sample("abandoned-long-wait.json"), Some("application/json"))
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{ack}");
    let event_id = ack["id"].as_i64().unwrap();
    let path = format!("/v1/events/{event_id}");
    let dead: Value = eventually(
        Duration::from_secs(20),
        "the chat webhook job to go dead",
        || async {
            let (_, trace) = server.admin_get(&path).await;
            let jobs = trace["jobs"].as_array()?;
            jobs.iter()
                .find(|j| j["kind"] == "webhook" && j["status"] == "dead")
                .cloned()
        },
    )
    .await;
    assert_eq!(hits.load(Ordering::SeqCst), 1, "{dead}");
    eventually(
        Duration::from_secs(20),
        "the VIP caller's callback task",
        || async {
            let (_, tasks) = server
                .admin_get(&format!("/v1/callback-tasks?status=open&phone={VIP_PHONE}"))
                .await;
            (!tasks.as_array()?.is_empty()).then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "the history to be processed",
        || async {
            let (_, page) = server.admin_get("/v1/events?limit=500").await;
            let events = page["events"].as_array()?;
            (events.len() == history_len + 1 && events.iter().all(|e| e["state"] == "processed"))
                .then_some(())
        },
    )
    .await;
    // And their jobs run (a later answered call closes an earlier task: the queue must be final
    // before the browser looks at it).
    eventually(Duration::from_secs(30), "every job to settle", || async {
        for status in ["pending", "retrying"] {
            let (_, page) = server.admin_get(&format!("/v1/jobs?status={status}")).await;
            if !page["jobs"].as_array()?.is_empty() {
                return None;
            }
        }
        Some(())
    })
    .await;

    let artifacts = root.join("target/browser-artifacts");
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts).unwrap();
    let log_path = artifacts.join("console.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new("node")
        .arg(root.join("tests/browser/console.mjs"))
        .arg(server.url("/"))
        .arg(ADMIN_TOKEN)
        .arg(rules.path())
        .arg(candidate.path())
        .arg(&artifacts)
        .env("CHROMIUM_PATH", chromium_path())
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("node starts");
    // The script asks for a second instance (by creating a file) once it has checked that this
    // one is alone and agrees with itself.
    let want_second = artifacts.join("second-instance.request");
    let mut second_recorded = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break Some(exit);
        }
        if !second_recorded && want_second.exists() {
            second_instance(&server.database).await;
            std::fs::write(artifacts.join("second-instance.ready"), b"").unwrap();
            second_recorded = true;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    match exit {
        Some(exit) if exit.success() => println!("{output}"),
        Some(exit) => panic!(
            "the browser test failed ({exit}); screenshots in {}:\n{output}",
            artifacts.display()
        ),
        None => panic!("the browser test did not finish within 240 s:\n{output}"),
    }

    // What the browser did is real: the retried job was delivered, the task is closed.
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "the retry reached the receiver"
    );
    let (_, job) = server.admin_get(&format!("/v1/jobs/{}", dead["id"])).await;
    assert_eq!(job["status"], "done", "{job}");
    let (_, done) = server
        .admin_get(&format!("/v1/callback-tasks?status=done&phone={VIP_PHONE}"))
        .await;
    assert_eq!(
        done[0]["outcome"], "Called back: rebooked for Friday",
        "{done}"
    );
    // The mute added in the browser was lifted there.
    let (_, mutes) = server.admin_get("/v1/mutes?all=true").await;
    let mute = &mutes["mutes"][0];
    assert_eq!(mute["value"], "vip-missed", "{mutes}");
    assert!(
        mute["lifted_at"].is_i64(),
        "the mute was not lifted: {mutes}"
    );
    let (_, active) = server.admin_get("/v1/mutes").await;
    assert_eq!(
        active["mutes"].as_array().map(Vec::len),
        Some(0),
        "{active}"
    );
    assert!(
        second_recorded,
        "the script never asked for the second instance"
    );
    server.stop().await;
}
