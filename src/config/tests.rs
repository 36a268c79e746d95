//! `Config::load` from files, flags and the shipped example.

use super::*;
use std::io::Write;

fn file_with(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::load(&ServeArgs::default(), Some(file_with(text).path()))
}

#[test]
fn flags_override_file_which_overrides_defaults() {
    let f = file_with(
        "listen = \"127.0.0.1:9000\"\nrules = \"/etc/rules\"\ningest_token = [\"a\", \"b\"]\n",
    );
    let args = ServeArgs {
        rules: Some("/srv/rules".into()),
        ..Default::default()
    };
    let config = Config::load(&args, Some(f.path())).unwrap();
    assert_eq!(config.listen.port(), 9000);
    assert_eq!(config.rules_dir, PathBuf::from("/srv/rules"));
    assert_eq!(
        config.ingest_tokens,
        vec![Secret::new("a"), Secret::new("b")]
    );
    assert_eq!(config.max_body_bytes, 256 * 1024);
}

#[test]
fn unknown_keys_and_bad_values_name_the_place() {
    let f = file_with("listen = \"127.0.0.1:9000\"\nlisten_addr = 1\n");
    let err = Config::load(&ServeArgs::default(), Some(f.path())).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("line 2"), "{message}");
    assert!(message.contains("listen_addr"), "{message}");
}

#[test]
fn network_listen_requires_tokens() {
    let args = ServeArgs {
        listen: Some("0.0.0.0:8080".parse().unwrap()),
        ..Default::default()
    };
    let err = Config::load(&args, None).unwrap_err();
    assert!(err.to_string().contains("ingest token"), "{err}");
    let args = ServeArgs {
        ingest_token: vec!["t1".into()],
        admin_token: Some("adm".into()),
        ..args
    };
    assert!(Config::load(&args, None).is_ok());
}

#[test]
fn token_files_and_secret_debug() {
    let f = file_with("tok-1\ntok-2\n");
    let args = ServeArgs {
        ingest_token_file: Some(f.path().to_path_buf()),
        ..Default::default()
    };
    let config = Config::load(&args, None).unwrap();
    assert_eq!(config.ingest_tokens.len(), 2);
    let debug = format!("{config:?}");
    assert!(!debug.contains("tok-1"), "{debug}");
}

#[test]
fn processors_must_be_positive() {
    assert_eq!(load("processors = 3\n").unwrap().processors, 3);
    assert_eq!(
        load("counter_retention = \"7d\"\n")
            .unwrap()
            .counter_retention,
        Duration::from_secs(7 * 24 * 3600)
    );
    let err = load("counter_retention = \"forever\"\n").unwrap_err();
    assert!(err.to_string().contains("counter_retention"), "{err}");
    assert_eq!(load("").unwrap().processors, 4);
    let err = load("processors = 0\n").unwrap_err();
    assert!(err.to_string().contains("processors"), "{err}");
}

#[test]
fn processing_failures_are_bounded() {
    let config = load("").unwrap();
    assert_eq!(config.processing_max_failures, 5);
    assert_eq!(config.processing_retry_backoff, Duration::from_secs(2));
    let config = load("processing_max_failures = 2\nprocessing_retry_backoff_ms = 50\n").unwrap();
    assert_eq!(config.processing_max_failures, 2);
    assert_eq!(config.processing_retry_backoff, Duration::from_millis(50));
    let err = load("processing_max_failures = 0\n").unwrap_err();
    assert!(err.to_string().contains("processing_max_failures"), "{err}");
}

#[test]
fn callback_dispatch_takes_exactly_one_destination() {
    let udesk = "[callback_dispatch.udesk]\nbase_url = \"https://demo.udesk.cn/\"\n\
                 email = \"a@b.c\"\ntoken = \"s3cret\"\nrelay_number = \"0108\"\n";
    let config = load(udesk).unwrap();
    let Some(CallbackDispatch::Udesk(api)) = &config.callback_dispatch else {
        panic!("udesk expected");
    };
    assert_eq!(api.base_url, "https://demo.udesk.cn");
    assert!(!format!("{config:?}").contains("s3cret"));
    let err = load("[callback_dispatch]\nwebhook = \"crm\"\n").unwrap_err();
    assert!(err.to_string().contains("`crm`"), "{err}");
    let err = load("[callback_dispatch]\n").unwrap_err();
    assert!(err.to_string().contains("exactly one"), "{err}");
}

#[test]
fn allowlist_entries_are_parsed_as_urls_at_load() {
    let config =
        load("[delivery]\nwebhook_url_allowlist = [\"https://hooks.example.com/in\"]\n").unwrap();
    let url = url::Url::parse("https://hooks.example.com/in/x").unwrap();
    assert!(config.webhook_url_allowlist[0].admits(&url));
    let err = load(
        "[delivery]\nwebhook_url_allowlist = [\"https://ok.example/\", \"hooks.example.com\"]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("delivery.webhook_url_allowlist"), "{err}");
    assert!(err.contains("`hooks.example.com`"), "{err}");
    let err = load("[delivery]\nwebhook_url_allowlist = [\"https://h.example/?sig=s3cret\"]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("query") && !err.contains("s3cret"), "{err}");
}

#[test]
fn webhook_target_urls_must_be_http_and_are_not_echoed() {
    let err = load("[webhooks.crm]\nurl = \"ftp://crm.internal/s3cret\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("`crm`") && !err.contains("s3cret"), "{err}");
    assert!(load("[webhooks.crm]\nurl = \"https://crm.example/hook?k=1\"\n").is_ok());
}

#[test]
fn http_limits_have_defaults_and_are_validated() {
    let defaults = load("").unwrap().http;
    assert_eq!(defaults.header_read_timeout, Duration::from_secs(10));
    assert_eq!(defaults.body_read_timeout, Duration::from_secs(30));
    assert_eq!(defaults.request_timeout, Duration::from_secs(60));
    assert_eq!(defaults.max_connections, 1024);
    let set = load(
        "[http]\nheader_read_timeout = \"2s\"\nbody_read_timeout = \"5s\"\n\
         request_timeout = \"1m\"\nmax_connections = 8\n",
    )
    .unwrap()
    .http;
    assert_eq!(set.header_read_timeout, Duration::from_secs(2));
    assert_eq!(set.max_connections, 8);
    let err = load("[http]\nbody_read_timeout = \"2m\"\n").unwrap_err();
    assert!(err.to_string().contains("http.request_timeout"), "{err}");
    let err = load("[http]\nheader_read_timeout = \"0s\"\n").unwrap_err();
    assert!(
        err.to_string().contains("http.header_read_timeout"),
        "{err}"
    );
    let err = load("[http]\nmax_connections = 0\n").unwrap_err();
    assert!(err.to_string().contains("http.max_connections"), "{err}");
    let err = load("[http]\nrequest_timeout = \"soon\"\n").unwrap_err();
    assert!(err.to_string().contains("http.request_timeout"), "{err}");
}

#[test]
fn the_shipped_example_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/switchboard.toml");
    let config = Config::load(&ServeArgs::default(), Some(&path)).unwrap();
    assert!(config.webhook_targets["chat"].secret.is_some());
    assert_eq!(
        config.rule_settings["supervisor_email"],
        "supervisor@example.com"
    );
    assert_eq!(config.retry_schedule, Schedule::default());
}
