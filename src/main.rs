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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Rule variables (`[rule_settings]`) come from the configuration file, for the rule tools too.
    let rule_settings = || -> anyhow::Result<_> {
        Ok(Config::load(&ServeArgs::default(), cli.config.as_deref())?.rule_settings)
    };
    match cli.command {
        Command::Check(RulesArg { rules }) => {
            let report = switchboard::rules::tools::check(&rules, rule_settings()?);
            println!("{report}");
            std::process::exit(if report.errors.is_empty() { 0 } else { 1 });
        }
        Command::Try { rules, payloads } => {
            let rules = switchboard::rules::Rules::load(&rules.rules, rule_settings()?);
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
            let report = switchboard::rules::tools::run_tests(&rules, &rule_settings()?);
            println!("{report}");
            std::process::exit(if report.passed() { 0 } else { 1 });
        }
        Command::Jobs { db, action } => {
            let url = database_url(db, cli.config.as_deref())?;
            run_async(jobs_command(url, action))
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
    let now = switchboard::store::now_millis();
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

async fn tasks_command(url: String, action: TasksAction) -> anyhow::Result<()> {
    let store = switchboard::store::open(&url).await?;
    let now = switchboard::store::now_millis();
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
    let addr = listener.local_addr()?;
    tracing::info!(%addr, rules = %config.rules_dir.display(), "listening on {addr}");
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
