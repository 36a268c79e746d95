//! The `switchboard` command: parses the command line, sets up logging, stops on signals, and
//! dispatches to `serve` or to the operator commands in `cli`.

mod cli;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cli::{DatabaseArg, jobs, rule_tools, tasks, what_if};
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
        action: jobs::JobsAction,
    },
    /// What a candidate rules directory would change on the stored events of a time range, per
    /// rule: events that would newly match or stop matching, actions added or removed
    /// (reads the database directly; nothing is stored or sent)
    WhatIf(what_if::WhatIfArgs),
    /// List, claim, complete or cancel callback tasks (reads the database directly)
    Tasks {
        #[command(flatten)]
        db: DatabaseArg,
        #[command(subcommand)]
        action: tasks::TasksAction,
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
    let config_file = cli.config.as_deref();
    // Rule variables (`[rule_settings]`) and limits come from the configuration file, for the
    // rule tools too, so a rule behaves in `try`, `test` and what-if as it does in `serve`.
    let rule_settings = || -> anyhow::Result<_> {
        Ok(Config::load(&ServeArgs::default(), config_file)?.rule_settings)
    };
    let rule_limits = || -> anyhow::Result<_> {
        Ok(Config::load(&ServeArgs::default(), config_file)?.rule_limits)
    };
    match cli.command {
        Command::Check(RulesArg { rules }) => rule_tools::check(&rules, rule_settings()?),
        Command::Try { rules, payloads } => {
            rule_tools::try_payloads(&rules.rules, rule_settings()?, rule_limits()?, payloads)
        }
        Command::Test(RulesArg { rules }) => {
            rule_tools::test(&rules, &rule_settings()?, rule_limits()?)
        }
        Command::Jobs { db, action } => run_async(jobs::run(db.url(config_file)?, action)),
        Command::WhatIf(args) => {
            let url = args.db.url(config_file)?;
            run_async(what_if::run(url, args, rule_settings()?, rule_limits()?))
        }
        Command::Tasks { db, action } => run_async(tasks::run(db.url(config_file)?, action)),
        Command::Serve(args) => {
            let config = Config::load(&args, config_file)?;
            init_logging(config.log_format);
            tokio::runtime::Runtime::new()
                .context("starting the async runtime")?
                .block_on(serve(config))
        }
    }
}

fn run_async(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(work)
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
