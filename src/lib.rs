//! Switchboard receives Udesk call-trigger notifications, stores each durably, matches it against
//! hot-reloaded Rhai rules and runs the actions they ask for.
//!
//! # Layout
//! The store is the spine: each stage reads its input from it and commits its output to it.
//!
//! ```text
//! POST /v1/notifications ─▶ api::intake ─▶ committer (group commit) ─▶ store ─▶ 202
//!                                                                        │
//!                  processor (claims unprocessed, evaluates, queues jobs) ◀──┘
//!                                                                        │
//!            delivery workers (claim due jobs: webhook, email, callback) ◀──┘
//! ```
//!
//! - [`event`]: PURE. The typed, leniently decoded notification (`CallEvent`), outcomes, warnings.
//! - [`action`]: PURE. The actions a rule asks for, as delivery executes them.
//! - [`time`]: PURE. Unix milliseconds, and parsing durations and times.
//! - [`config`]: the one `Config`, from defaults, file, environment and flags.
//! - [`secret`]: secret values that never show in logs, and reading them from files.
//! - [`store`]: the `Store` trait and its SQLite and PostgreSQL backends.
//! - [`committer`]: group commit of accepted notifications.
//! - [`processor`]: claims accepted events from the store, evaluates them, records the result.
//! - [`rules`]: Rhai rules: compile, evaluate (PURE), load and hot-reload, check/try/test,
//!   what-if comparison (PURE).
//! - [`evaluation`]: rules over stored events: counters in the store, the evaluation thread, the
//!   record an evaluation leaves.
//! - [`delivery`]: the retry policy and signing (PURE), the senders, and the job workers.
//! - [`wakeup`]: waking the processor and each job kind's worker when work is queued.
//! - [`replay`]: replay and what-if over stored events.
//! - [`instance`]: this process's id and heartbeat row: which rule set it runs.
//! - [`maintenance`]: periodic pruning of counter hits and throttle windows.
//! - [`health`]: whether the store takes this instance's writes (readiness), and retry backoff.
//! - [`metrics`]: Prometheus metrics.
//! - [`api`]: the HTTP surface (`router(state)`), auth, errors, the OpenAPI document.
//! - [`console`]: the embedded operator dashboard.

pub mod action;
pub mod api;
mod committer;
pub mod config;
mod console;
pub mod delivery;
mod evaluation;
pub mod event;
mod health;
mod instance;
mod maintenance;
mod metrics;
mod processor;
pub mod replay;
pub mod rules;
pub mod secret;
pub mod store;
pub mod time;
mod wakeup;

use action::JobKind;
use config::Config;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("HTTP server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the HTTP client could not be set up: {0}")]
    Http(String),
    #[error("email delivery could not be set up: {0}")]
    Mail(String),
    #[error("cannot read the rules directory {}: {reason}", path.display())]
    RulesDir {
        path: std::path::PathBuf,
        reason: String,
    },
}

/// Start-up check of the rules directory: it may not exist yet (rules are loaded once it does),
/// but when it does it must be a directory this process can list; otherwise start-up fails and
/// says which path and why.
fn check_rules_dir(dir: &std::path::Path) -> Result<(), ServeError> {
    let failed = |reason: String| ServeError::RulesDir {
        path: dir.to_path_buf(),
        reason,
    };
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(
                dir = %dir.display(),
                "the rules directory does not exist (yet): no rules run until it does"
            );
            Ok(())
        }
        Err(e) => Err(failed(e.to_string())),
        Ok(meta) if !meta.is_dir() => Err(failed("it is not a directory".into())),
        Ok(_) => std::fs::read_dir(dir)
            .map(drop)
            .map_err(|e| failed(e.to_string())),
    }
}

/// Logs the loaded rule set, and every rule that does not compile.
fn log_rules(rules: &rules::Rules) {
    let statuses = rules.statuses();
    for status in &statuses {
        if let Some(error) = &status.error {
            tracing::error!(%error, "rule does not compile");
        }
    }
    tracing::info!(
        dir = %rules.dir().display(),
        rules = statuses.len(),
        version = %rules.current().version,
        "rules loaded"
    );
}

/// Where dispatched tasks go, for the start-up log (no credentials).
fn dispatch_target(dispatch: &config::CallbackDispatch) -> String {
    match dispatch {
        config::CallbackDispatch::Udesk(api) => format!(
            "Udesk web callback at {}",
            delivery::address::redact(&api.base_url)
        ),
        config::CallbackDispatch::Webhook(target) => format!("webhook target `{target}`"),
    }
}

/// Runs the service on `listener` until `shutdown` resolves; then stops accepting, finishes
/// in-flight requests, commits what they queued, lets the processor finish its batch, and closes
/// the store.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    check_rules_dir(&config.rules_dir)?;
    let store = store::open(config.database_url.expose()).await?;
    tracing::info!(
        database = %store::redact_url(config.database_url.expose()),
        "store ready"
    );
    let rules = Arc::new(rules::Rules::load_with(
        &config.rules_dir,
        config.rule_env(),
        config.rule_limits,
    ));
    log_rules(&rules);
    let _watch = rules::watch::watch(rules.clone(), |outcome| {
        for error in &outcome.errors {
            tracing::error!(%error, "rule does not compile; its last good version keeps running");
        }
        if let Some(version) = &outcome.new_version {
            tracing::info!(
                %version,
                added = ?outcome.added,
                changed = ?outcome.changed,
                removed = ?outcome.removed,
                "rules reloaded"
            );
        }
    });
    let instance_id = instance::new_id();
    let metrics = Arc::new(metrics::Metrics::new());
    let health = Arc::new(health::WriteHealth::new(metrics.clone()));
    let committed = Arc::new(Notify::new());
    let mut wakers = wakeup::Wakers::default();
    let webhook_ready = wakers.of(JobKind::Webhook);
    let email_ready = wakers.of(JobKind::Email);
    let callback_kinds = [JobKind::CallbackTask, JobKind::CloseCallbackTasks];
    let callbacks_ready = callback_kinds.map(|kind| wakers.of(kind));
    let dispatch_ready = config
        .callback_dispatch
        .as_ref()
        .map(|_| wakers.of(JobKind::CallbackDispatch));
    let job_workers = Arc::new(wakers);
    let (committer, commit_task) = committer::Committer::spawn(
        store.clone(),
        committed.clone(),
        config.commit_batch_max,
        metrics.clone(),
        health.clone(),
    );
    let stop_processing = CancellationToken::new();
    let rule_errors = Arc::new(processor::RuleErrorLog::default());
    let processor_tasks: Vec<_> = (0..config.processors)
        .map(|n| {
            tokio::spawn(processor::run(
                store.clone(),
                rules.clone(),
                committed.clone(),
                job_workers.clone(),
                metrics.clone(),
                health.clone(),
                rule_errors.clone(),
                processor::ProcessorConfig {
                    owner: format!("{instance_id}-p{n}"),
                    batch: 64,
                    lease: config.processing_lease,
                    poll: config.processing_poll,
                    settle: std::time::Duration::from_millis(10),
                    max_failures: config.processing_max_failures,
                    retry_backoff: config.processing_retry_backoff,
                },
                stop_processing.clone(),
            ))
        })
        .collect();

    let stop_delivery = CancellationToken::new();
    let longest_timeout = config
        .webhook_targets
        .values()
        .map(|t| t.timeout)
        .chain(match &config.callback_dispatch {
            Some(config::CallbackDispatch::Udesk(api)) => Some(api.timeout),
            _ => None,
        })
        .max()
        .unwrap_or_default();
    let schedule = Arc::new(config.retry_schedule.clone());
    let worker = |deliver: Arc<dyn delivery::worker::Deliver>,
                  ready: Arc<Notify>,
                  max_in_flight: usize,
                  attempt_timeout: std::time::Duration| {
        tokio::spawn(delivery::worker::run(
            store.clone(),
            deliver,
            schedule.clone(),
            ready,
            metrics.clone(),
            health.clone(),
            delivery::worker::WorkerConfig {
                owner: instance_id.clone(),
                batch: 64,
                max_in_flight,
                lease: config.processing_lease.max(attempt_timeout * 2),
                poll: config.processing_poll,
            },
            stop_delivery.clone(),
        ))
    };
    let webhook_settings = delivery::deliver::WebhookSettings {
        targets: Arc::new(config.webhook_targets.clone()),
        allowlist: Arc::new(config.webhook_url_allowlist.clone()),
        allow_private: config.allow_private_targets,
    };
    let clients = delivery::webhook::Clients::new().map_err(|e| ServeError::Http(e.to_string()))?;
    let mut delivery_tasks = vec![worker(
        Arc::new(delivery::deliver::WebhookDeliverer {
            store: store.clone(),
            settings: webhook_settings.clone(),
            clients: clients.clone(),
        }),
        webhook_ready,
        256,
        longest_timeout,
    )];

    let mailer = match &config.smtp {
        Some(smtp) => {
            tracing::info!(host = %smtp.host, port = smtp.port, tls = ?smtp.tls, "emails go through SMTP");
            delivery::email::Mailer::smtp(smtp).map_err(ServeError::Mail)?
        }
        None => {
            tracing::info!(
                outbox = %config.outbox_dir.display(),
                "no SMTP server configured ([smtp]): emails are written as .eml files"
            );
            delivery::email::Mailer::outbox(&config.outbox_dir)?
        }
    };
    let emails = delivery::deliver::EmailDeliverer {
        mailer,
        from: config
            .email_from
            .parse()
            .map_err(|_| ServeError::Mail(format!("invalid email_from `{}`", config.email_from)))?,
    };
    let smtp_timeout = config.smtp.as_ref().map(|s| s.timeout).unwrap_or_default();
    delivery_tasks.push(worker(Arc::new(emails), email_ready, 32, smtp_timeout));

    // Callback tasks: one worker records them (merged per phone), one closes them, and one sends
    // new tasks out when `[callback_dispatch]` says where.
    if let (Some(dispatch), Some(ready)) = (&config.callback_dispatch, &dispatch_ready) {
        tracing::info!(to = ?dispatch_target(dispatch), "new callback tasks are dispatched");
        delivery_tasks.push(worker(
            Arc::new(delivery::deliver::DispatchDeliverer {
                store: store.clone(),
                dispatch: dispatch.clone(),
                webhooks: webhook_settings.clone(),
                clients: clients.clone(),
            }),
            ready.clone(),
            32,
            longest_timeout,
        ));
    }
    for (kind, ready) in callback_kinds.into_iter().zip(callbacks_ready) {
        let deliver = delivery::deliver::CallbackDeliverer {
            store: store.clone(),
            kind,
            dispatch: dispatch_ready.clone(),
        };
        delivery_tasks.push(worker(Arc::new(deliver), ready, 64, Default::default()));
    }

    if config.ingest_tokens.is_empty() {
        tracing::warn!(
            "no ingest token configured: intake is open to anyone who can reach {}",
            config.listen
        );
    }
    if config.admin_token.is_none() {
        tracing::warn!(
            "no admin token configured: the admin API is open to anyone who can reach {}",
            config.listen
        );
    }
    let state = api::AppState {
        store: store.clone(),
        committer,
        rules,
        ingest_tokens: api::TokenSet::new(&config.ingest_tokens),
        admin_tokens: api::TokenSet::new(config.admin_token.as_slice()),
        max_body_bytes: config.max_body_bytes,
        instance_id: instance_id.clone(),
        rule_settings: config.rule_settings.clone(),
        what_if_roots: config.what_if_roots.clone(),
        job_workers,
        metrics: metrics.clone(),
        health: health.clone(),
        http: config.http.clone(),
    };
    let wakeup_task = match store.listen().await? {
        Some(wakeups) => {
            tracing::info!("listening for work queued by other instances (LISTEN/NOTIFY)");
            Some(tokio::spawn(wakeup::forward(
                wakeups,
                committed.clone(),
                state.job_workers.clone(),
                stop_delivery.clone(),
            )))
        }
        None => None,
    };
    let prune_task = tokio::spawn(maintenance::prune(
        store.clone(),
        config.counter_retention,
        health.clone(),
        stop_delivery.clone(),
    ));
    let heartbeat_task = tokio::spawn(instance::heartbeat(
        store.clone(),
        state.rules.clone(),
        health,
        instance::InstanceInfo {
            id: instance_id,
            started_at: time::now_millis(),
            seen_at: 0,
            ruleset_version: String::new(),
            rules_dir: config.rules_dir.display().to_string(),
            listen: listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        },
        stop_delivery.clone(),
    ));
    let app = api::router(state);
    // Only now, with the store open and the rules loaded, is the service listening.
    let addr = listener.local_addr()?;
    tracing::info!(%addr, rules = %config.rules_dir.display(), "listening on {addr}");
    api::serve::serve(listener, app, &config.http, metrics, shutdown).await;
    tracing::info!("stopped accepting requests; draining");
    // Every request (and so every committer handle) is gone: the commit task drains and ends.
    let _ = commit_task.await;
    stop_processing.cancel();
    for task in processor_tasks {
        let _ = task.await;
    }
    stop_delivery.cancel();
    for task in delivery_tasks {
        let _ = task.await;
    }
    let _ = heartbeat_task.await;
    let _ = prune_task.await;
    if let Some(task) = wakeup_task {
        let _ = task.await;
    }
    store.close().await;
    tracing::info!("store closed");
    Ok(())
}
