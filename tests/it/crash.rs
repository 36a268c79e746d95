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
