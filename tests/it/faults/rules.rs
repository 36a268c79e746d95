//! Runaway and hostile rules: time budget, action cap, symlinks outside the rules directory,
//! what-if roots. A rule that misbehaves fails alone, with an error that says why; every other
//! rule still runs and the service goes on.

use crate::util::{ADMIN_TOKEN, TestServer, send};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use switchboard::rules::{RuleLimits, Rules, tools};

/// Within the operation limit (a few thousand operations), but each operation copies a 32 KB
/// string: far beyond any time budget.
const RUNAWAY: &str = r#"const NAME = "runaway";
fn when(ev) {
    let big = "x";
    for i in 0..14 { big += big; }
    for i in 0..10000 { let copy = big + big; }
    true
}
fn then(ev) { [] }
"#;

/// Asks for far more actions than one rule may.
const FLOOD: &str = r#"const NAME = "flood";
fn when(ev) { true }
fn then(ev) {
    let out = [];
    for i in 0..100 { out.push(callback_task(#{ phone: `1380000${i}`, reason: "flood" })); }
    out
}
"#;

const WELL_BEHAVED: &str = r#"const NAME = "well-behaved";
fn when(ev) { ev.call_id == "runaway-1" }
fn then(ev) { [callback_task(#{ phone: "13800000000", reason: "still here" })] }
"#;

fn limits() -> RuleLimits {
    RuleLimits {
        time_budget: Duration::from_millis(5),
        ..RuleLimits::default()
    }
}

fn write_rules(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("runaway.rhai"), RUNAWAY).unwrap();
    std::fs::write(dir.join("flood.rhai"), FLOOD).unwrap();
    std::fs::write(dir.join("well-behaved.rhai"), WELL_BEHAVED).unwrap();
}

fn verdict<'a>(trace: &'a Value, rule: &str) -> &'a Value {
    trace["rules"]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["rule"] == rule))
        .unwrap_or_else(|| panic!("no verdict of {rule} in {trace}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_rule_and_an_action_flood_fail_alone_in_serve() {
    let server = TestServer::start_with(|config| {
        write_rules(&config.rules_dir);
        config.rule_limits = limits();
    })
    .await;
    let body = json!({"call_id": "runaway-1", "conversation_id": 1, "call_result": "待機放棄",
        "customer_phone": "13800000000", "queue_time": 90});
    let (status, ack) = server.post(body.to_string(), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{ack}");
    let trace = server.processed_trace(ack["id"].as_i64().unwrap()).await;

    let runaway = verdict(&trace, "runaway");
    assert_eq!(runaway["verdict"], "error", "{trace}");
    let detail = runaway["detail"].as_str().unwrap();
    assert!(
        detail.contains("ran out of its time budget of 5 ms"),
        "{detail}"
    );
    let flood = verdict(&trace, "flood");
    assert_eq!(flood["verdict"], "error", "{trace}");
    assert!(
        flood["detail"]
            .as_str()
            .unwrap()
            .contains("returned 100 actions; a rule may ask for at most 20"),
        "{flood}"
    );
    assert_eq!(verdict(&trace, "well-behaved")["verdict"], "matched");
    // Only the well-behaved rule's action became a job: the flood made none.
    let jobs = trace["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{trace}");
    assert_eq!(jobs[0]["rule"], "well-behaved", "{trace}");

    // The rules' status counts the failures, and the service still takes pushes.
    let (_, rules) = server.admin_get("/v1/rules").await;
    let errors = |name: &str| {
        rules["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["errors"].as_u64().unwrap())
    };
    assert_eq!(errors("runaway"), Some(1), "{rules}");
    assert_eq!(errors("flood"), Some(1), "{rules}");
    let (status, _) = server
        .post(
            json!({"call_id": "after", "conversation_id": 2}).to_string(),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    server.stop().await;
}

#[test]
fn the_same_limits_apply_in_try_and_test() {
    let dir = tempfile::tempdir().unwrap();
    write_rules(dir.path());
    let rules = Rules::load_with(dir.path(), Default::default(), limits());
    let body = json!({"call_id": "runaway-1", "conversation_id": 1}).to_string();
    let evaluation = tools::try_payload(&rules, body.as_bytes()).unwrap();
    let error = |rule: &str| {
        evaluation
            .verdicts
            .iter()
            .find(|v| v.rule == rule)
            .and_then(|v| v.error.clone())
            .unwrap_or_else(|| panic!("{rule} did not fail: {evaluation:?}"))
    };
    assert!(error("runaway").contains("time budget"));
    assert!(error("flood").contains("at most 20"));

    std::fs::create_dir(dir.path().join("tests")).unwrap();
    std::fs::write(
        dir.path().join("tests/runaway.toml"),
        "[[case]]\nname = \"fires\"\nbody = '{\"call_id\": \"runaway-1\"}'\nmatched = [\"runaway\", \"flood\", \"well-behaved\"]\n",
    )
    .unwrap();
    let report = tools::run_tests(dir.path(), &Default::default(), limits());
    assert!(!report.passed(), "{report}");
    assert!(report.to_string().contains("time budget"), "{report}");

    // A generous budget: the same rule runs to the end (it is slow, not broken).
    let patient = Rules::load_with(
        dir.path(),
        Default::default(),
        RuleLimits {
            time_budget: Duration::from_secs(10),
            max_actions: 5000,
        },
    );
    let evaluation = tools::try_payload(&patient, body.as_bytes()).unwrap();
    assert!(
        evaluation.verdicts.iter().all(|v| v.error.is_none()),
        "{evaluation:?}"
    );
}

#[cfg(unix)]
#[test]
fn the_loader_reads_only_what_is_inside_the_rules_directory() {
    use std::os::unix::fs::symlink;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.rhai"), WELL_BEHAVED).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // A Kubernetes ConfigMap: the files are links through `..data` into a hidden folder.
    std::fs::create_dir(root.join("..2026_12_01")).unwrap();
    std::fs::write(root.join("..2026_12_01/flood.rhai"), FLOOD).unwrap();
    symlink("..2026_12_01", root.join("..data")).unwrap();
    symlink("..data/flood.rhai", root.join("flood.rhai")).unwrap();
    // Links to outside: a file, a directory, and something that is no rule at all.
    symlink(outside.path().join("secret.rhai"), root.join("passwd.rhai")).unwrap();
    symlink(outside.path(), root.join("elsewhere")).unwrap();
    // A loop: a folder linking back to the root.
    std::fs::create_dir(root.join("sub")).unwrap();
    std::fs::write(root.join("sub/runaway.rhai"), RUNAWAY).unwrap();
    symlink("..", root.join("sub/loop")).unwrap();

    let rules = Rules::load(root, Default::default());
    let statuses = rules.statuses();
    let status = |file: &str| {
        statuses
            .iter()
            .find(|s| s.file == file)
            .unwrap_or_else(|| panic!("{file} not listed: {statuses:#?}"))
    };
    assert!(status("flood.rhai").error.is_none(), "{statuses:#?}");
    assert!(status("sub/runaway.rhai").error.is_none(), "{statuses:#?}");
    for refused in ["passwd.rhai", "elsewhere"] {
        let error = status(refused)
            .error
            .as_ref()
            .expect("refused with an error");
        assert!(
            error.message.contains("outside the rules directory"),
            "{error}"
        );
    }
    let looped = status("sub/loop")
        .error
        .as_ref()
        .expect("a loop is an error");
    assert!(looped.message.contains("already read"), "{looped}");
    // Each rule loaded once; nothing from outside runs.
    let mut names: Vec<_> = rules
        .current()
        .rules()
        .iter()
        .map(|r| r.name.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["flood", "runaway"]);
    // `check` counts the refused entries as errors, so a bad deploy does not pass unnoticed.
    let report = tools::check(root, Default::default());
    assert_eq!(report.errors.len(), 3, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_if_reads_candidates_only_from_its_roots() {
    let allowed = tempfile::tempdir().unwrap();
    std::fs::create_dir(allowed.path().join("candidate")).unwrap();
    std::fs::write(allowed.path().join("candidate/ok.rhai"), WELL_BEHAVED).unwrap();
    let root = allowed.path().to_path_buf();
    let server = TestServer::start_with(|config| config.what_if_roots = vec![root]).await;
    let what_if = |rules_dir: String| {
        send(
            server
                .client
                .post(server.url("/v1/what-if"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"rules_dir": rules_dir, "since": "1h"})),
        )
    };
    let inside = allowed.path().join("candidate");
    let (status, report) = what_if(inside.display().to_string()).await;
    assert_eq!(status, StatusCode::OK, "{report}");

    let escapes = [
        "/etc".to_string(),
        "/proc/self/root/etc".to_string(),
        format!("{}/candidate/../../..", allowed.path().display()),
        server.dir.path().display().to_string(),
    ];
    for rules_dir in escapes {
        let (status, answer) = what_if(rules_dir.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{rules_dir}: {answer}");
        assert_eq!(answer["parameter"], "rules_dir", "{answer}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap()
                .contains("what_if_roots"),
            "{rules_dir}: {answer}"
        );
    }

    // With no roots configured, what-if over the API says how to allow it.
    let closed = TestServer::start_with(|config| config.what_if_roots.clear()).await;
    let (status, answer) = send(
        closed
            .client
            .post(closed.url("/v1/what-if"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"rules_dir": inside, "since": "1h"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("none are configured"),
        "{answer}"
    );
    closed.stop().await;
    server.stop().await;
}
