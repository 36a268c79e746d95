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
        Command::Serve(args) => {
            let config = Config::load(&args, cli.config.as_deref())?;
            init_logging(config.log_format);
            tokio::runtime::Runtime::new()
                .context("starting the async runtime")?
                .block_on(serve(config))
        }
    }
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
