//! The `switchboard` command: parses the command line, sets up logging, and runs the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use switchboard::config::{Config, LogFormat, ServeArgs};
use tracing_subscriber::EnvFilter;

/// Switchboard: durable intake of Udesk call-trigger notifications, Rhai rules, reliable actions.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// TOML configuration file; flags and SWITCHBOARD_* variables override its settings
    #[arg(long, global = true, env = "SWITCHBOARD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service
    Serve(ServeArgs),
    /// Compile every rule; print each error as file:line:col: message; exit 1 on any error
    Check(RulesArg),
    /// Dry-run payload files against the rules: which rules match, and their actions
    Try {
        #[command(flatten)]
        rules: RulesArg,
        /// JSON payload files
        #[arg(required = true)]
        payloads: Vec<PathBuf>,
    },
    /// Run the rule test cases in <rules>/tests/*.toml; exit 1 on any failure
    Test(RulesArg),
    /// List, retry or cancel delivery jobs (reads the database directly)
    Jobs {
        #[command(flatten)]
        db: DatabaseArg,
        #[command(subcommand)]
        action: JobsAction,
    },
    /// What a candidate rules directory would change on the stored events of a time range, per
    /// rule: events that would newly match or stop matching, actions added or removed
    /// (reads the database directly; nothing is stored or sent)
    WhatIf {
        #[command(flatten)]
        db: DatabaseArg,
        /// The candidate rules directory
        #[arg(long, value_name = "DIR")]
        rules: PathBuf,
        /// Start of the range: a duration back from now (7d, 12h) or a time
        #[arg(long, default_value = "7d")]
        since: String,
        /// End of the range (default: now)
        #[arg(long)]
        until: Option<String>,
        /// Most events compared (the newest)
        #[arg(long, default_value_t = 10_000)]
        limit: u32,
        /// Example events per rule and kind of change
        #[arg(long, default_value_t = 3)]
        examples: usize,
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
    },
    /// List, claim, complete or cancel callback tasks (reads the database directly)
    Tasks {
        #[command(flatten)]
        db: DatabaseArg,
        #[command(subcommand)]
        action: TasksAction,
    },
}

#[derive(Debug, clap::Args)]
struct DatabaseArg {
    /// Database URL [default: the configuration's, else sqlite://./data/switchboard.db]
    #[arg(
        long,
        env = "SWITCHBOARD_DATABASE",
        hide_env_values = true,
        value_name = "URL"
    )]
    database: Option<String>,
}

#[derive(Debug, Subcommand)]
enum JobsAction {
    /// Newest first
    List {
        /// pending, retrying, done, dead, suppressed or cancelled
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Give a dead job another attempt now
    Retry { id: i64 },
    /// Cancel a pending, retrying or dead job
    Cancel {
        id: i64,
        #[arg(long, default_value = "cancelled by an operator")]
        note: String,
    },
}

#[derive(Debug, Subcommand)]
enum TasksAction {
    /// Most urgent first
    List {
        /// open, claimed, done or cancelled
        #[arg(long, default_value = "open")]
        status: String,
        #[arg(long)]
        phone: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Take an open task
    Claim {
        id: i64,
        #[arg(long)]
        agent: String,
    },
    /// Mark a task done
    Complete {
        id: i64,
        #[arg(long)]
        outcome: String,
    },
    /// Cancel a task
    Cancel {
        id: i64,
        #[arg(long)]
        outcome: String,
    },
}

#[derive(Debug, clap::Args)]
struct RulesArg {
    /// Directory of .rhai rule files
    #[arg(
        long,
        env = "SWITCHBOARD_RULES",
        default_value = "./rules",
        value_name = "DIR"
    )]
    rules: PathBuf,
}

/// Runs the command; an error is printed as one line (`error: what failed: why`) and the exit
/// code is 1.
fn main() -> std::process::ExitCode {
    match run_cli() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: a cause whose text its context
/// already quotes is not repeated.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn run_cli() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Rule variables (`[rule_settings]`) and limits come from the configuration file, for the
    // rule tools too, so a rule behaves in `try`, `test` and what-if as it does in `serve`.
    let rule_settings = || -> anyhow::Result<_> {
        Ok(Config::load(&ServeArgs::default(), cli.config.as_deref())?.rule_settings)
    };
    let rule_limits = || -> anyhow::Result<_> {
        Ok(Config::load(&ServeArgs::default(), cli.config.as_deref())?.rule_limits)
    };
    match cli.command {
        Command::Check(RulesArg { rules }) => {
            let report = switchboard::rules::tools::check(&rules, rule_settings()?);
            println!("{report}");
            std::process::exit(if report.errors.is_empty() { 0 } else { 1 });
        }
        Command::Try { rules, payloads } => {
            let rules = switchboard::rules::Rules::load_with(
                &rules.rules,
                rule_settings()?,
                rule_limits()?,
            );
            for status in rules.statuses() {
                if let Some(error) = status.error {
                    eprintln!("warning: {error}");
                }
            }
            for path in payloads {
                let body =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                match switchboard::rules::tools::try_payload(&rules, &body) {
                    Ok(evaluation) => {
                        println!(
                            "{}: {}",
                            path.display(),
                            serde_json::to_string_pretty(&evaluation)?
                        )
                    }
                    Err(error) => println!("{}: not a notification: {error}", path.display()),
                }
            }
            Ok(())
        }
        Command::Test(RulesArg { rules }) => {
            let report =
                switchboard::rules::tools::run_tests(&rules, &rule_settings()?, rule_limits()?);
            println!("{report}");
            std::process::exit(if report.passed() { 0 } else { 1 });
        }
        Command::Jobs { db, action } => {
            let url = database_url(db, cli.config.as_deref())?;
            run_async(jobs_command(url, action))
        }
        Command::WhatIf {
            db,
            rules,
            since,
            until,
            limit,
            examples,
            json,
        } => {
            let url = database_url(db, cli.config.as_deref())?;
            let now = switchboard::time::now_millis();
            let request = switchboard::replay::WhatIf {
                rules_dir: rules,
                settings: rule_settings()?,
                limits: rule_limits()?,
                since: switchboard::time::parse_since(&since, now)
                    .map_err(|e| anyhow::anyhow!("--since {e}"))?,
                until: match until {
                    Some(until) => switchboard::time::parse_instant(&until)
                        .map_err(|e| anyhow::anyhow!("--until {e}"))?,
                    None => now,
                },
                limit,
                examples,
            };
            run_async(what_if_command(url, request, json))
        }
        Command::Tasks { db, action } => {
            let url = database_url(db, cli.config.as_deref())?;
            run_async(tasks_command(url, action))
        }
        Command::Serve(args) => {
            let config = Config::load(&args, cli.config.as_deref())?;
            init_logging(config.log_format);
            tokio::runtime::Runtime::new()
                .context("starting the async runtime")?
                .block_on(serve(config))
        }
    }
}

fn database_url(db: DatabaseArg, config: Option<&std::path::Path>) -> anyhow::Result<String> {
    let args = ServeArgs {
        database: db.database,
        ..Default::default()
    };
    Ok(Config::load(&args, config)?
        .database_url
        .expose()
        .to_string())
}

fn run_async(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(work)
}

fn time(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

async fn jobs_command(url: String, action: JobsAction) -> anyhow::Result<()> {
    let store = switchboard::store::open(&url).await?;
    let now = switchboard::time::now_millis();
    match action {
        JobsAction::List { status, limit } => {
            println!(
                "{:>8}  {:<10}  {:<20}  {:>8}  {:<19}  rule / note",
                "id", "status", "kind", "attempts", "next or finished"
            );
            for job in store.list_jobs(status.as_deref(), None, limit).await? {
                let when = job
                    .finished_at
                    .map(time)
                    .unwrap_or_else(|| time(job.next_attempt_at.max(job.created_at)));
                let note = job
                    .note
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default();
                println!(
                    "{:>8}  {:<10}  {:<20}  {:>8}  {:<19}  {}{note}",
                    job.id, job.status, job.kind, job.attempts, when, job.rule
                );
            }
        }
        JobsAction::Retry { id } => {
            anyhow::ensure!(
                store.retry_job(id, now).await?,
                "job {id} is not dead (or does not exist)"
            );
            println!("job {id} will be tried again now");
        }
        JobsAction::Cancel { id, note } => {
            anyhow::ensure!(
                store.cancel_job(id, &note, now).await?,
                "job {id} cannot be cancelled (done, cancelled or missing)"
            );
            println!("job {id} cancelled");
        }
    }
    store.close().await;
    Ok(())
}

async fn what_if_command(
    url: String,
    request: switchboard::replay::WhatIf,
    json: bool,
) -> anyhow::Result<()> {
    let store = switchboard::store::open(&url).await?;
    let report = switchboard::replay::what_if(store.clone(), &request).await;
    store.close().await;
    let report = report?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "What-if: {} (version {}) against {} stored events from {} to {} UTC{}",
        report.rules_dir,
        report.candidate_version,
        report.report.events_compared,
        time(report.since),
        time(report.until),
        if report.truncated {
            " (the newest only: --limit reached)"
        } else {
            ""
        }
    );
    println!(
        "{} events would change; {} not processed yet were skipped",
        report.report.events_changed, report.report.events_skipped
    );
    for skipped in &report.unreadable {
        println!("event {} skipped: {}", skipped.id, skipped.reason);
    }
    for error in &report.candidate_errors {
        println!("candidate rule does not compile: {error}");
    }
    for change in &report.report.changed_rules {
        println!(
            "\n{}: matched {} -> {} (+{} newly, -{} no longer); actions +{} / -{}{}",
            change.rule,
            change.matched_before,
            change.matched_after,
            change.newly_matching,
            change.stops_matching,
            change.actions_added,
            change.actions_removed,
            if change.errors_after > 0 {
                format!("; fails on {} events", change.errors_after)
            } else {
                String::new()
            }
        );
        for example in &change.examples {
            println!(
                "    event {} at {} ({}, {}): {}",
                example.event.event_id,
                time(example.event.received_at),
                example
                    .event
                    .customer_phone
                    .as_deref()
                    .unwrap_or("no phone"),
                example.event.outcome.as_deref().unwrap_or("no outcome"),
                example.change.replace('_', " ")
            );
        }
    }
    if !report.report.unchanged_rules.is_empty() {
        println!("\nunchanged: {}", report.report.unchanged_rules.join(", "));
    }
    Ok(())
}

async fn tasks_command(url: String, action: TasksAction) -> anyhow::Result<()> {
    let store = switchboard::store::open(&url).await?;
    let now = switchboard::time::now_millis();
    let (id, from, to, agent, outcome) = match action {
        TasksAction::List {
            status,
            phone,
            limit,
        } => {
            let query = switchboard::store::TaskQuery {
                status: Some(status),
                phone,
                due_before: None,
                limit,
            };
            println!(
                "{:>8}  {:<9}  {:>8}  {:<19}  {:<15}  reasons",
                "id", "status", "priority", "due", "phone"
            );
            for task in store.list_callback_tasks(&query).await? {
                let reasons: Vec<&str> = task
                    .reasons
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["reason"].as_str())
                    .collect();
                println!(
                    "{:>8}  {:<9}  {:>8}  {:<19}  {:<15}  {}",
                    task.id,
                    task.status,
                    task.priority,
                    time(task.due_at),
                    task.phone,
                    reasons.join("; ")
                );
            }
            store.close().await;
            return Ok(());
        }
        TasksAction::Claim { id, agent } => (id, &["open"][..], "claimed", Some(agent), None),
        TasksAction::Complete { id, outcome } => {
            (id, &["open", "claimed"][..], "done", None, Some(outcome))
        }
        TasksAction::Cancel { id, outcome } => (
            id,
            &["open", "claimed"][..],
            "cancelled",
            None,
            Some(outcome),
        ),
    };
    let moved = store
        .update_callback_task(id, from, to, agent.as_deref(), outcome.as_deref(), now)
        .await?;
    store.close().await;
    anyhow::ensure!(
        moved,
        "callback task {id} is not {} (or does not exist)",
        from.join(" or ")
    );
    println!("callback task {id} is {to}");
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    // "listening on …" is logged by `run` once the store is open and the rules are loaded.
    switchboard::run(config, listener, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received: shutting down"),
        _ = terminate => tracing::info!("SIGTERM received: shutting down"),
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("SWITCHBOARD_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
