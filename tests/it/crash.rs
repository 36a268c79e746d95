//! The real binary, killed with SIGKILL right after acknowledging a burst: every acknowledged
//! notification is there after restart, and the ones not yet processed get processed.

use crate::util::*;
use reqwest::StatusCode;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

const BURST: u64 = 600;
const CONCURRENCY: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_the_last_ack_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A short lease, so that events the killed process had claimed are taken over quickly.
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        "processing_lease_secs = 1\nprocessing_poll_ms = 50\n",
    )
    .unwrap();
    let config_arg = config.display().to_string();
    let mut server = Binary::start(dir.path(), &["--config", &config_arg]);

    let client = reqwest::Client::new();
    let url = Arc::new(server.url("/v1/notifications"));
    let gate = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..BURST {
        let (client, url, gate) = (client.clone(), url.clone(), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            let body = sample_with_id("abandoned-long-wait.json", 1_000_000 + n);
            let response = client
                .post(url.as_str())
                .bearer_auth(INGEST_TOKEN)
                .body(body)
                .send()
                .await
                .unwrap();
            let (status, ack) = json_response(response).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{ack}");
            (n, ack["id"].as_i64().unwrap())
        });
    }
    let acked = tasks.join_all().await;
    server.kill_9();
    assert_eq!(acked.len() as u64, BURST);

    let server = Binary::start(dir.path(), &["--config", &config_arg]);
    let admin = |path: String| {
        let client = client.clone();
        let url = server.url(&path);
        async move { send(client.get(url).bearer_auth(ADMIN_TOKEN)).await }
    };
    for (n, id) in &acked {
        let (status, stored) = admin(format!("/v1/events/{id}")).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "acknowledged id {id} lost; log:\n{}",
            server.log()
        );
        assert_eq!(
            stored["event"]["conversation_id"],
            Value::from(1_000_000 + n)
        );
    }
    // Accepted-but-unprocessed events are picked up after the restart.
    for (_, id) in &acked {
        let path = format!("/v1/events/{id}");
        eventually(
            Duration::from_secs(30),
            "every event to be processed",
            || async {
                let (_, stored) = admin(path.clone()).await;
                (stored["state"] == "processed").then_some(())
            },
        )
        .await;
    }
}

#[tokio::test]
async fn sigterm_stops_cleanly_with_everything_committed() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Binary::start(dir.path(), &[]);
    let client = reqwest::Client::new();
    let response = client
        .post(server.url("/v1/notifications"))
        .bearer_auth(INGEST_TOKEN)
        .body(sample("udesk-example.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let pid = server.child.id().to_string();
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(signalled.success());
    let status = server.wait();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        server.log()
    );
    let log = server.log();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("store closed"), "{log}");
    // Secrets never reach the log.
    assert!(
        !log.contains(INGEST_TOKEN) && !log.contains(ADMIN_TOKEN),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_delivery_loses_no_job_and_completes_none_twice() {
    // A receiver that takes a while to answer, so that deliveries are in flight at the kill.
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let sink = sink.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                sink.lock().unwrap().push(id);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let hook = format!("{}/hook", serve_on_loopback(app).await);

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::write(
        dir.path().join("rules/hook.rhai"),
        "fn when(ev) { true }\nfn then(ev) { [webhook(#{ target: \"hook\", body: #{ n: ev.conversation_id } })] }",
    )
    .unwrap();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "processing_lease_secs = 1\nprocessing_poll_ms = 100\n[delivery]\nallow_private_targets = true\nretry_schedule = [\"100ms\"]\n[webhooks.hook]\nurl = \"{hook}\"\ntimeout_secs = 1\n"
        ),
    )
    .unwrap();
    let config_arg = config.display().to_string();
    let mut server = Binary::start(dir.path(), &["--config", &config_arg]);
    let client = reqwest::Client::new();
    const EVENTS: u64 = 40;
    for n in 0..EVENTS {
        let body = sample_with_id("udesk-example.json", 5_000 + n);
        let response = client
            .post(server.url("/v1/notifications"))
            .bearer_auth(INGEST_TOKEN)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    // Kill while the first deliveries are in flight.
    eventually(Duration::from_secs(20), "deliveries to start", || async {
        (!seen.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    server.kill_9();
    let delivered_before = seen.lock().unwrap().len();
    assert!(
        delivered_before < EVENTS as usize,
        "the kill came too late to test anything"
    );

    let server = Binary::start(dir.path(), &["--config", &config_arg]);
    let jobs = eventually(
        Duration::from_secs(60),
        "every job to be delivered",
        || async {
            let response = client
                .get(server.url("/v1/jobs?limit=500"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .ok()?;
            let (_, page) = json_response(response).await;
            let jobs = page["jobs"].as_array()?.clone();
            (jobs.len() == EVENTS as usize && jobs.iter().all(|j| j["status"] == "done"))
                .then_some(jobs)
        },
    )
    .await;
    // Every job was delivered; a webhook-id arrives twice only for a delivery in flight at the kill.
    let seen = seen.lock().unwrap().clone();
    let mut counts = std::collections::HashMap::new();
    for id in &seen {
        *counts.entry(id.clone()).or_insert(0) += 1;
    }
    assert_eq!(
        counts.len(),
        EVENTS as usize,
        "every job reached the receiver"
    );
    let repeated = counts.values().filter(|&&c| c > 1).count();
    assert!(
        repeated <= 64,
        "only in-flight deliveries repeat: {repeated}"
    );
    // And each job was completed once: one successful attempt recorded.
    for job in &jobs {
        let response = client
            .get(server.url(&format!("/v1/jobs/{}", job["id"])))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let (_, view) = json_response(response).await;
        let successes = view["attempt_log"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["outcome"] == "success")
            .count();
        assert_eq!(successes, 1, "{view}");
    }
}
