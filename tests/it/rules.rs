//! The rules engine: the shipped rules' own test cases, compile and runtime errors, every
//! sandbox limit, odd events, and hot reload with real file operations.

use crate::util::*;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use switchboard::event::{decode, parse_body};
use switchboard::rules::{
    EvalContext, Evaluation, FixedCounters, RuleEnv, RuleState, Rules, tools,
};

fn write(dir: &Path, file: &str, text: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn evaluate(rules: &Rules, body: serde_json::Value) -> Evaluation {
    let parsed = parse_body(body.to_string().as_bytes(), None).unwrap();
    let ctx = EvalContext {
        counters: Arc::new(FixedCounters::default()),
        at_ms: 1_000_000,
        record_stats: true,
        prefilter: true,
    };
    rules.current().evaluate(&decode(&parsed).event, &ctx)
}

fn matched(evaluation: &Evaluation) -> Vec<&str> {
    let mut names: Vec<&str> = evaluation.matched().map(|v| v.rule.as_str()).collect();
    names.sort_unstable();
    names
}

fn error_of<'a>(evaluation: &'a Evaluation, rule: &str) -> &'a str {
    evaluation
        .verdicts
        .iter()
        .find(|v| v.rule == rule)
        .and_then(|v| v.error.as_deref())
        .unwrap_or_else(|| panic!("no error recorded for {rule}: {evaluation:?}"))
}

const FIRES: &str = r#"fn when(ev) { true } fn then(ev) { [] }"#;

#[test]
fn shipped_rules_pass_their_test_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let check = tools::check(&dir, Default::default());
    assert!(check.errors.is_empty(), "{check}");
    assert!(check.files >= 6, "{check}");
    let report = tools::run_tests(&dir, &Default::default(), Default::default());
    assert!(report.passed(), "{report}");
    assert!(report.cases.len() >= 12, "{report}");
}

#[test]
fn a_wrong_expectation_fails_its_case() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.rhai",
        "const NAME = \"a\";\nfn when(ev) { ev.queue_time > 60 }\nfn then(ev) { [callback_task(#{ phone: ev.customer_phone })] }",
    );
    write(
        dir.path(),
        "tests/a.toml",
        "[[case]]\nname = \"right\"\nbody = '{\"queue_time\": 61, \"customer_phone\": \"1\"}'\nmatched = [\"a\"]\n\
         [[case.actions]]\nkind = \"callback_task\"\nphone = \"1\"\n\
         [[case]]\nname = \"wrong action\"\nbody = '{\"queue_time\": 61, \"customer_phone\": \"1\"}'\nmatched = [\"a\"]\n\
         [[case.actions]]\nkind = \"callback_task\"\nphone = \"2\"\n\
         [[case]]\nname = \"wrong match\"\nbody = '{\"queue_time\": 6}'\nmatched = [\"a\"]\n",
    );
    let report = tools::run_tests(dir.path(), &Default::default(), Default::default());
    assert!(!report.passed());
    let failed: Vec<&str> = report
        .cases
        .iter()
        .filter(|c| !c.failures.is_empty())
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(failed, ["wrong action", "wrong match"], "{report}");
    assert!(
        report.to_string().contains("1 passed, 2 failed"),
        "{report}"
    );
}

#[test]
fn compile_errors_name_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "syntax.rhai",
        "fn when(ev) {\n  ev.queue_time >\n}\nfn then(ev) { [] }",
    );
    write(dir.path(), "no_then.rhai", "fn when(ev) { true }");
    write(
        dir.path(),
        "arity.rhai",
        "fn when() { true }\nfn then(ev) { [] }",
    );
    write(
        dir.path(),
        "meta.rhai",
        &format!("const ENABLED = \"yes\";\n{FIRES}"),
    );
    write(dir.path(), "top.rhai", &format!("let x = 1 / 0;\n{FIRES}"));
    write(dir.path(), "sub/ok.rhai", FIRES);
    write(dir.path(), "sub/.hidden.rhai", "not rhai at all (");
    write(dir.path(), "notes.txt", "not a rule");
    let report = tools::check(dir.path(), Default::default());
    let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(report.files, 6, "{report}");
    assert_eq!(errors.len(), 5, "{report}");
    assert!(
        errors.contains(&"syntax.rhai:3:1: Unexpected '}'".to_string()),
        "{report}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("no_then.rhai:1:1: missing `fn then(ev)`")),
        "{report}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("arity.rhai:1:1: `fn when` must take one parameter")),
        "{report}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("meta.rhai:1:1: `ENABLED` must be true or false")),
        "{report}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("top.rhai:1:") && e.contains("Division by zero")),
        "{report}"
    );
    let rules = Rules::load(dir.path(), Default::default());
    assert_eq!(rules.current().rules().len(), 1);
}

#[test]
fn runtime_errors_and_every_limit_stop_only_that_rule() {
    let dir = tempfile::tempdir().unwrap();
    let rules = [
        (
            "ok",
            "fn when(ev) { ev.call_id == \"x\" } fn then(ev) { [close_callback_tasks(#{ phone: \"1\" })] }",
        ),
        (
            "runtime",
            "fn when(ev) { ev.call_id.len() / 0 > 1 } fn then(ev) { [] }",
        ),
        ("not_bool", "fn when(ev) { 42 } fn then(ev) { [] }"),
        (
            "bad_action",
            "fn when(ev) { true } fn then(ev) { [#{ kind: \"teleport\" }] }",
        ),
        (
            "bad_field",
            "fn when(ev) { true } fn then(ev) { [email(#{ to: \"a@b.c\", subject: \"s\", colour: \"red\" })] }",
        ),
        ("operations", "fn when(ev) { loop {} } fn then(ev) { [] }"),
        (
            "recursion",
            "fn deep(n) { deep(n + 1) } fn when(ev) { deep(0) } fn then(ev) { [] }",
        ),
        (
            "string",
            "fn when(ev) { let s = \"xxxxxxxxxxxxxxxx\"; loop { s += s; } } fn then(ev) { [] }",
        ),
        (
            "array",
            "fn when(ev) { let a = [1]; loop { a += a; } } fn then(ev) { [] }",
        ),
        (
            "map",
            "fn when(ev) { let m = #{}; for i in 0..5000 { let x = #{}; x[`k${i}`] = i; m += x; } true } fn then(ev) { [] }",
        ),
        (
            "mutation",
            "fn when(ev) { ev.call_id = \"changed\"; true } fn then(ev) { [] }",
        ),
    ];
    for (name, body) in rules {
        write(
            dir.path(),
            &format!("{name}.rhai"),
            &format!("const NAME = \"{name}\";\n{body}"),
        );
    }
    let deep_expression = format!(
        "const NAME = \"depth\";\nfn when(ev) {{ {}1{} == 1 }} fn then(ev) {{ [] }}",
        "(".repeat(200),
        ")".repeat(200)
    );
    write(dir.path(), "depth.rhai", &deep_expression);
    // A time budget far beyond what any of these takes, so that each reaches its own limit
    // (the time budget has its own test in the fault suite).
    let limits = switchboard::rules::RuleLimits {
        time_budget: Duration::from_secs(60),
        ..Default::default()
    };
    let loaded = Rules::load_with(dir.path(), Default::default(), limits);
    let depth = loaded
        .statuses()
        .into_iter()
        .find(|s| s.file == "depth.rhai")
        .unwrap();
    assert_eq!(depth.status, RuleState::Error);
    assert!(
        depth
            .error
            .unwrap()
            .message
            .contains("Expression exceeds maximum complexity"),
        "expression depth limit"
    );

    let evaluation = evaluate(&loaded, json!({"call_id": "x"}));
    assert_eq!(matched(&evaluation), ["ok"], "{evaluation:#?}");
    assert!(error_of(&evaluation, "runtime").contains("Division by zero"));
    assert!(error_of(&evaluation, "not_bool").contains("`when` must return true or false"));
    assert!(error_of(&evaluation, "bad_action").contains("`then` must return a list of actions"));
    assert!(error_of(&evaluation, "bad_field").contains("unknown field `colour`"));
    assert!(error_of(&evaluation, "operations").contains("Too many operations"));
    assert!(
        error_of(&evaluation, "recursion").contains("Stack overflow"),
        "{}",
        error_of(&evaluation, "recursion")
    );
    assert!(
        error_of(&evaluation, "string").contains("Length of string"),
        "{}",
        error_of(&evaluation, "string")
    );
    assert!(
        error_of(&evaluation, "array").contains("Size of array"),
        "{}",
        error_of(&evaluation, "array")
    );
    assert!(
        error_of(&evaluation, "map").contains("Size of object map"),
        "{}",
        error_of(&evaluation, "map")
    );
    assert!(error_of(&evaluation, "mutation").contains("Cannot modify constant ev"));
    // Errors are counted per rule; the event the rules saw was not changed by the mutation.
    let status = loaded
        .statuses()
        .into_iter()
        .find(|s| s.name == "operations")
        .unwrap();
    assert_eq!(
        (status.evaluations, status.errors, status.matches),
        (1, 1, 0)
    );
    let again = evaluate(&loaded, json!({"call_id": "x"}));
    assert_eq!(matched(&again), ["ok"]);
}

#[test]
fn absent_and_oddly_typed_fields_compare_false_and_cjk_literals_match() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "long_wait.rhai",
        "const NAME = \"long_wait\";\nfn when(ev) { ev.queue_time > 60 } fn then(ev) { [] }",
    );
    write(
        dir.path(),
        "short_wait.rhai",
        "const NAME = \"short_wait\";\nfn when(ev) { ev.queue_time <= 60 } fn then(ev) { [] }",
    );
    write(
        dir.path(),
        "cjk.rhai",
        "const NAME = \"cjk\";\nfn when(ev) { ev.call_result == \"待機放棄\" || ev.call_result == \"放弃排队\" } fn then(ev) { [] }",
    );
    write(
        dir.path(),
        "extend.rhai",
        "const NAME = \"extend\";\nfn when(ev) { ev.extend?.team == \"サポート\" } fn then(ev) { [] }",
    );
    write(
        dir.path(),
        "regex.rhai",
        "const NAME = \"regex\";\nfn when(ev) { matches(ev.customer_phone, \"^1[3-9]\\\\d{9}$\") } fn then(ev) { [] }",
    );
    let rules = Rules::load(dir.path(), Default::default());
    assert!(
        rules.statuses().iter().all(|s| s.error.is_none()),
        "{:?}",
        rules.statuses()
    );

    let none = evaluate(&rules, json!({}));
    assert_eq!(matched(&none), Vec::<&str>::new(), "{none:#?}");
    assert!(
        none.verdicts.is_empty(),
        "absent fields raise nothing: {none:#?}"
    );
    let odd = evaluate(
        &rules,
        json!({"queue_time": "abc", "customer_phone": 13800138000u64}),
    );
    assert_eq!(matched(&odd), ["regex"], "{odd:#?}");
    let cjk = evaluate(
        &rules,
        json!({"call_result": "放弃排队", "queue_time": "61", "extend": {"team": "サポート"}}),
    );
    assert_eq!(matched(&cjk), ["cjk", "extend", "long_wait"], "{cjk:#?}");
    let short = evaluate(&rules, json!({"call_result": "待機放棄", "queue_time": 5}));
    assert_eq!(matched(&short), ["cjk", "short_wait"]);
}

#[test]
fn disabled_rules_and_priorities() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "b.rhai",
        &format!("const NAME = \"b\"; const PRIORITY = 1;\n{FIRES}"),
    );
    write(
        dir.path(),
        "a.rhai",
        &format!("const NAME = \"a\"; const PRIORITY = 2;\n{FIRES}"),
    );
    write(
        dir.path(),
        "off.rhai",
        &format!("const NAME = \"off\"; const ENABLED = false;\n{FIRES}"),
    );
    let rules = Rules::load(dir.path(), Default::default());
    let evaluation = evaluate(&rules, json!({}));
    let order: Vec<&str> = evaluation
        .verdicts
        .iter()
        .map(|v| v.rule.as_str())
        .collect();
    assert_eq!(order, ["b", "a"]);
    assert_eq!(evaluation.evaluated, 2);
    let off = rules
        .statuses()
        .into_iter()
        .find(|s| s.name == "off")
        .unwrap();
    assert_eq!(off.status, RuleState::Disabled);
}

/// Waits (polling, with a deadline) until `check` holds for the rules' current state.
fn wait_for(rules: &Rules, what: &str, check: impl Fn(&Rules) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check(rules) {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            rules.statuses()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn names(rules: &Rules) -> Vec<String> {
    let mut names: Vec<String> = rules
        .current()
        .rules()
        .iter()
        .map(|r| r.name.clone())
        .collect();
    names.sort();
    names
}

#[test]
fn hot_reload_follows_real_file_operations() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "a.rhai", &format!("const NAME = \"a\";\n{FIRES}"));
    let rules = Arc::new(Rules::load(root, Default::default()));
    let _watch = switchboard::rules::watch::watch(rules.clone(), |_| {});
    assert_eq!(names(&rules), ["a"]);

    // A new file.
    write(root, "b.rhai", &format!("const NAME = \"b\";\n{FIRES}"));
    wait_for(&rules, "b to load", |r| names(r) == ["a", "b"]);

    // An editor's save: write a temp file, rename it over the original.
    write(
        root,
        ".b.rhai.swp",
        &format!("const NAME = \"b2\";\n{FIRES}"),
    );
    std::fs::rename(root.join(".b.rhai.swp"), root.join("b.rhai")).unwrap();
    wait_for(&rules, "b's rename-over to apply", |r| {
        names(r) == ["a", "b2"]
    });

    // A broken edit keeps the last good version running and reports the error…
    write(
        root,
        "b.rhai",
        "const NAME = \"b3\";\nfn when(ev) { ( }\nfn then(ev) { [] }",
    );
    // (`write` truncates, then writes: under load a rescan may see the file half-written first,
    // an error of its own that also keeps b2 running; wait for the error of the finished text.)
    wait_for(&rules, "b's error", |r| {
        r.statuses().iter().any(|s| {
            s.file == "b.rhai"
                && s.status == RuleState::Error
                && s.error.as_ref().is_some_and(|e| e.line == 2)
        })
    });
    assert_eq!(names(&rules), ["a", "b2"]);
    let status = rules
        .statuses()
        .into_iter()
        .find(|s| s.file == "b.rhai")
        .unwrap();
    assert!(status.running_last_good);
    let error = status.error.unwrap();
    assert_eq!((error.line, error.file.as_str()), (2, "b.rhai"));
    // …and the fix clears it.
    write(root, "b.rhai", &format!("const NAME = \"b4\";\n{FIRES}"));
    wait_for(&rules, "b's fix", |r| names(r) == ["a", "b4"]);
    assert!(rules.statuses().iter().all(|s| s.error.is_none()));

    // A rename to another name, then a delete.
    std::fs::rename(root.join("b.rhai"), root.join("c.rhai")).unwrap();
    wait_for(&rules, "the rename", |r| {
        r.statuses()
            .iter()
            .map(|s| s.file.clone())
            .collect::<Vec<_>>()
            == ["a.rhai", "c.rhai"]
    });
    std::fs::remove_file(root.join("c.rhai")).unwrap();
    wait_for(&rules, "the delete", |r| names(r) == ["a"]);
}

#[cfg(unix)]
#[test]
fn hot_reload_follows_a_kubernetes_configmap_swap() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The ConfigMap layout: ..2026_v1/x.rhai, ..data -> ..2026_v1, x.rhai -> ..data/x.rhai
    write(
        root,
        "..2026_v1/x.rhai",
        &format!("const NAME = \"x-v1\";\n{FIRES}"),
    );
    symlink("..2026_v1", root.join("..data")).unwrap();
    symlink("..data/x.rhai", root.join("x.rhai")).unwrap();
    let rules = Arc::new(Rules::load(root, Default::default()));
    let _watch = switchboard::rules::watch::watch(rules.clone(), |_| {});
    assert_eq!(
        names(&rules),
        ["x-v1"],
        "hidden ..data folders are not loaded twice"
    );

    // Kubelet's update: a new timestamped folder, then an atomic swap of ..data.
    write(
        root,
        "..2026_v2/x.rhai",
        &format!("const NAME = \"x-v2\";\n{FIRES}"),
    );
    symlink("..2026_v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..2026_v1")).unwrap();
    wait_for(&rules, "the swap", |r| names(r) == ["x-v2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_flow_through_reloads_each_evaluated_once() {
    let rules = tempfile::tempdir().unwrap();
    let rules_dir = rules.path().to_path_buf();
    write(
        &rules_dir,
        "count.rhai",
        "const NAME = \"count\";\nfn when(ev) { true }\nfn then(ev) { [close_callback_tasks(#{ phone: ev.customer_phone })] }",
    );
    let dir = rules_dir.clone();
    let server = TestServer::start_with(move |config| config.rules_dir = dir).await;
    let mut ids = Vec::new();
    for round in 0..6 {
        // Edits between bursts: a change, a broken edit, its fix.
        let text = match round % 3 {
            0 => format!("const NAME = \"count\";\nfn when(ev) {{ {round} >= 0 }}\nfn then(ev) {{ [close_callback_tasks(#{{ phone: ev.customer_phone }})] }}"),
            1 => "fn when(ev) { (".to_string(),
            _ => "const NAME = \"count\";\nfn when(ev) { true }\nfn then(ev) { [close_callback_tasks(#{ phone: ev.customer_phone })] }".to_string(),
        };
        write(&rules_dir, "count.rhai", &text);
        for n in 0..25 {
            let body = json!({"call_id": format!("r{round}-{n}"), "customer_phone": format!("1{round}{n}")});
            let (_, ack) = server.post(body.to_string(), None).await;
            ids.push(ack["id"].as_i64().unwrap());
        }
    }
    for id in &ids {
        let path = format!("/v1/events/{id}");
        let event = eventually(
            Duration::from_secs(20),
            "every event to be evaluated",
            || async {
                let (_, event) = server.admin_get(&path).await;
                (event["state"] == "processed").then_some(event)
            },
        )
        .await;
        let evaluation = &event["evaluation"];
        assert_eq!(evaluation["attempts"], 1, "evaluated once: {event}");
        assert_eq!(
            evaluation["record"]["verdicts"][0]["rule"], "count",
            "{event}"
        );
        let jobs = event["jobs"].as_array().unwrap();
        assert_eq!(jobs.len(), 1, "{event}");
        assert_eq!(jobs[0]["kind"], "close_callback_tasks");
    }
    server.stop().await;
}

#[tokio::test]
async fn rules_api_lists_status_and_dry_runs() {
    let server = TestServer::start_with(|config| {
        config.rules_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules");
    })
    .await;
    let (status, listed) = server.admin_get("/v1/rules").await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let rules = listed["rules"].as_array().unwrap();
    assert!(rules.len() >= 6, "{listed}");
    assert!(rules.iter().all(|r| r["status"] == "active"), "{listed}");
    assert!(listed["version"].as_str().unwrap().len() >= 8);

    let response = server
        .client
        .post(server.url("/v1/rules/try"))
        .bearer_auth(ADMIN_TOKEN)
        .body(sample("abandoned-long-wait.json"))
        .send()
        .await
        .unwrap();
    let (status, evaluation) = json_response(response).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{evaluation}");
    let rules: Vec<&str> = evaluation["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["vip-missed", "abandoned-in-queue"]);
    // A dry run stores nothing and counts nothing.
    let (_, page) = server.admin_get("/v1/events").await;
    assert_eq!(page["events"], json!([]));
    let (_, listed) = server.admin_get("/v1/rules").await;
    assert!(
        listed["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["evaluations"] == 0)
    );

    let bad = server
        .client
        .post(server.url("/v1/rules/try"))
        .bearer_auth(ADMIN_TOKEN)
        .body("[1]")
        .send()
        .await
        .unwrap();
    let (status, body) = json_response(bad).await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
    assert!(
        body["message"].as_str().unwrap().contains("JSON object"),
        "{body}"
    );
    let unauthorized = server
        .client
        .get(server.url("/v1/rules"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), reqwest::StatusCode::UNAUTHORIZED);

    // End to end: a posted sample is evaluated, and its trace names rules and jobs.
    let (_, ack) = server.post(sample("abandoned-long-wait.json"), None).await;
    let event = server.processed_trace(ack["id"].as_i64().unwrap()).await;
    let kinds: Vec<&str> = event["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["webhook", "email", "callback_task"], "{event}");
    assert_eq!(event["evaluation"]["ruleset_version"], listed["version"]);
    server.stop().await;
}

#[test]
fn the_prefilter_changes_no_result() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let extra = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rhai") {
            std::fs::copy(&path, extra.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    // Rules whose leading conditions are provable, and ones whose are not.
    write(
        extra.path(),
        "p1.rhai",
        "const NAME = \"p1\";\nfn when(ev) { ev.workflow == \"in\" && ev.call_id.len() > 100 }\nfn then(ev) { [] }",
    );
    write(
        extra.path(),
        "p2.rhai",
        "const NAME = \"p2\";\nfn when(ev) { ev.call_id.len() > 100 && ev.workflow == \"in\" }\nfn then(ev) { [] }",
    );
    write(
        extra.path(),
        "p3.rhai",
        "const NAME = \"p3\";\nfn when(ev) { (ev.outcome == \"busy\" || ev.outcome == \"phone_offline\") && count_in_window(\"x\", \"1m\") > 0 }\nfn then(ev) { [] }",
    );
    let rules = Rules::load(extra.path(), Default::default());
    let outcomes = [
        "顧客未応答",
        "客户接听",
        "話中",
        "话机离线",
        "客服未接",
        "オペレーター拒否",
        "客服接听",
        "顧客即時切断",
        "客户挂机",
        "排队超时",
        "待機放棄",
        "未选择队列",
        "???",
    ];
    let (mut compared, mut not_in) = (0, 0);
    for (name, body) in samples() {
        for outcome in outcomes {
            for workflow in ["in", "out_auto", ""] {
                let mut event: serde_json::Value = serde_json::from_slice(&body).unwrap();
                event["call_result"] = outcome.into();
                event["workflow"] = workflow.into();
                let event = decode(&parse_body(event.to_string().as_bytes(), None).unwrap()).event;
                let run = |prefilter| {
                    let ctx = EvalContext {
                        counters: Arc::new(FixedCounters(
                            [("queue-abandoned".to_string(), 9)].into(),
                        )),
                        at_ms: 1_000,
                        // Counted for the prefiltered runs only: how often rules were skipped.
                        record_stats: prefilter,
                        prefilter,
                    };
                    let mut evaluation = rules.current().evaluate(&event, &ctx);
                    evaluation.elapsed_us = 0;
                    evaluation
                };
                assert_eq!(run(true), run(false), "{name} with {outcome} / {workflow}");
                compared += 1;
                if workflow != "in" {
                    not_in += 1;
                }
            }
        }
    }
    // The comparison means something only if the prefilter did skip rules: `p1` can fire only
    // on `workflow == "in"`, so every other event skipped it.
    let skipped = |name: &str| {
        let rule = rules.current();
        let rule = rule
            .rules()
            .iter()
            .find(|r| r.name == name)
            .unwrap()
            .clone();
        let skipped = rule
            .stats
            .prefiltered
            .load(std::sync::atomic::Ordering::Relaxed);
        (
            skipped,
            rule.stats
                .evaluations
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    };
    assert_eq!(skipped("p1"), (not_in, compared));
    let (p3_skipped, _) = skipped("p3");
    assert!(p3_skipped > 0, "p3 needs a busy or offline outcome");
}

#[test]
fn check_try_and_test_commands() {
    let bin = env!("CARGO_BIN_EXE_switchboard");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(args)
            .env_remove("SWITCHBOARD_CONFIG")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let shipped_arg = shipped.display().to_string();
    let (code, out) = run(&["check", "--rules", &shipped_arg]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run(&["test", "--rules", &shipped_arg]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(" passed, 0 failed"), "{out}");
    let payload =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/payloads/outbound-no-answer.json");
    let (code, out) = run(&[
        "try",
        "--rules",
        &shipped_arg,
        &payload.display().to_string(),
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("\"rule\": \"outbound-no-answer\"")
            && out.contains("\"kind\": \"callback_task\""),
        "{out}"
    );

    let broken = tempfile::tempdir().unwrap();
    write(
        broken.path(),
        "bad.rhai",
        "fn when(ev) {\n  ev.x ==\n}\nfn then(ev) { [] }",
    );
    let (code, out) = run(&["check", "--rules", &broken.path().display().to_string()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.starts_with("bad.rhai:3:1: "), "{out}");
}

#[tokio::test]
async fn a_throttled_rule_records_repeats_as_suppressed() {
    let server = TestServer::start_with(|config| {
        config.rules_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules");
    })
    .await;
    let mut traces = Vec::new();
    for conversation in [1, 2] {
        let (_, ack) = server
            .post(
                sample_with_id("abandoned-long-wait.json", conversation),
                None,
            )
            .await;
        let path = format!("/v1/events/{}", ack["id"]);
        traces.push(
            eventually(
                Duration::from_secs(10),
                "the event to be processed",
                || async {
                    let (_, event) = server.admin_get(&path).await;
                    (event["state"] == "processed").then_some(event)
                },
            )
            .await,
        );
    }
    let statuses = |trace: &serde_json::Value, rule: &str| -> Vec<String> {
        trace["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["rule"] == rule)
            .map(|j| j["status"].as_str().unwrap().to_string())
            .collect()
    };
    // abandoned-in-queue throttles per phone for 30 minutes; vip-missed has no throttle. The
    // first event's jobs go to delivery (pending, or already done by the time we look).
    let first = statuses(&traces[0], "abandoned-in-queue");
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|s| s != "suppressed"), "{first:?}");
    assert_eq!(
        statuses(&traces[1], "abandoned-in-queue"),
        ["suppressed", "suppressed"]
    );
    // Not throttled (it goes to delivery; with no `chat` target configured it is dead-lettered).
    assert_eq!(statuses(&traces[1], "vip-missed").len(), 1);
    assert_ne!(statuses(&traces[1], "vip-missed"), ["suppressed"]);
    let note = traces[1]["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["status"] == "suppressed")
        .unwrap()["note"]
        .clone();
    assert!(note.as_str().unwrap().contains("13800138000"), "{note}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matches_become_one_callback_task_per_phone_closed_when_the_customer_is_reached() {
    let server = TestServer::start_with(|config| {
        config.rules_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules");
    })
    .await;
    let store = switchboard::store::open(&server.database).await.unwrap();
    let phone = "13800138000";
    let mut outbound: serde_json::Value =
        serde_json::from_slice(&sample("outbound-no-answer.json")).unwrap();
    outbound["customer_phone"] = phone.into();
    let mut answered: serde_json::Value =
        serde_json::from_slice(&sample("udesk-example.json")).unwrap();
    answered["customer_phone"] = phone.into();
    let tasks = |status: &'static str| {
        let store = store.clone();
        async move {
            store
                .list_callback_tasks(&switchboard::store::TaskQuery {
                    status: Some(status.parse().unwrap()),
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap()
        }
    };

    server.post(sample("abandoned-long-wait.json"), None).await;
    let open = eventually(Duration::from_secs(10), "the callback task", || async {
        let open = tasks("open").await;
        (open.len() == 1).then_some(open)
    })
    .await;
    assert_eq!(open[0].phone, phone);
    assert_eq!(open[0].customer_name.as_deref(), Some("山田 花子"));

    server.post(outbound.to_string(), None).await;
    let merged = eventually(Duration::from_secs(10), "the second reason", || async {
        let open = tasks("open").await;
        (open.len() == 1 && open[0].reasons.as_array().unwrap().len() == 2).then_some(open)
    })
    .await;
    assert_eq!(merged[0].id, open[0].id, "merged, not duplicated");
    assert_eq!(merged[0].priority, 2, "the higher priority stays");

    server.post(answered.to_string(), None).await;
    let done = eventually(Duration::from_secs(10), "the task to close", || async {
        let done = tasks("done").await;
        (done.len() == 1).then_some(done)
    })
    .await;
    assert_eq!(done[0].id, open[0].id);
    assert!(done[0].outcome.as_deref().unwrap().contains("reached"));
    assert!(tasks("open").await.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_claim_and_complete_callback_tasks() {
    let server = TestServer::start_with(|config| {
        config.rules_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules");
    })
    .await;
    server.post(sample("outbound-no-answer.json"), None).await;
    let tasks = eventually(Duration::from_secs(10), "the callback task", || async {
        let (_, tasks) = server
            .admin_get("/v1/callback-tasks?status=open&phone=15000001111")
            .await;
        (tasks.as_array()?.len() == 1).then_some(tasks)
    })
    .await;
    let id = tasks[0]["id"].as_i64().unwrap();
    assert_eq!(tasks[0]["reasons"][0]["rule"], "outbound-no-answer");
    let post = |path: String, body: serde_json::Value| {
        send(
            server
                .client
                .post(server.url(&path))
                .bearer_auth(ADMIN_TOKEN)
                .json(&body),
        )
    };
    let (status, claimed) = post(
        format!("/v1/callback-tasks/{id}/claim"),
        serde_json::json!({"agent": "agent-7"}),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{claimed}");
    assert_eq!(
        (claimed["status"].as_str(), claimed["claimed_by"].as_str()),
        (Some("claimed"), Some("agent-7"))
    );
    let (status, _) = post(
        format!("/v1/callback-tasks/{id}/claim"),
        serde_json::json!({"agent": "agent-8"}),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::CONFLICT, "claimed once");
    let (status, done) = post(
        format!("/v1/callback-tasks/{id}/complete"),
        serde_json::json!({"outcome": "called back, renewed"}),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(
        (done["status"].as_str(), done["outcome"].as_str()),
        (Some("done"), Some("called back, renewed"))
    );
    assert!(done["closed_at"].is_i64());
    let (status, _) = post(
        format!("/v1/callback-tasks/{id}/cancel"),
        serde_json::json!({"outcome": "x"}),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::CONFLICT);
    let (_, single) = server.admin_get(&format!("/v1/callback-tasks/{id}")).await;
    assert_eq!(single["status"], "done");
    let (status, body) = server.admin_get("/v1/callback-tasks?due_before=soon").await;
    assert_eq!(
        (status, body["parameter"].as_str()),
        (reqwest::StatusCode::BAD_REQUEST, Some("due_before"))
    );
    server.stop().await;
}

#[test]
fn a_new_configuration_recompiles_the_rules_against_its_settings() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("to.rhai"),
        r#"fn when(ev) { true } fn then(ev) { [email(#{ to: setting("ops"), subject: "s" })] }"#,
    )
    .unwrap();
    let env = |to: &str| RuleEnv {
        settings: [("ops".to_string(), to.to_string())].into(),
        ..RuleEnv::default()
    };
    let rules = Rules::load(dir.path(), env("first@example.com"));
    let body = sample("abandoned-long-wait.json");
    let to = |rules: &Rules| {
        let evaluation = tools::try_payload(rules, &body).unwrap();
        serde_json::to_value(&evaluation.verdicts[0]).unwrap()["actions"][0]["to"].clone()
    };
    assert_eq!(to(&rules), json!(["first@example.com"]));
    let before = rules.current().version.clone();

    let outcome = rules.reconfigure(env("second@example.com"));
    assert!(outcome.new_version.is_some(), "{outcome:?}");
    assert_eq!(to(&rules), json!(["second@example.com"]));
    assert_eq!(rules.env(), env("second@example.com"));
    // The same files: the same rule-set version, only the configuration changed.
    assert_eq!(rules.current().version, before);
    // Nothing changed: nothing to do.
    assert_eq!(
        rules.reconfigure(env("second@example.com")),
        Default::default()
    );
}
