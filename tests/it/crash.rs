//! The real binary stopped with SIGTERM: it drains and commits everything. (kill -9 during
//! intake, processing and delivery is in the fault suite, `faults::storage`.)

use crate::util::*;
use reqwest::StatusCode;

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
