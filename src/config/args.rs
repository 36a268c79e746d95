//! The flags of `switchboard serve`, each also settable by the `SWITCHBOARD_*` environment
//! variable named (clap reads both; a flag wins over its variable).

use super::LogFormat;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Flags of `switchboard serve`; each can also be set by the environment variable named.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "SWITCHBOARD_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Directory of .rhai rule files [default: ./rules]
    #[arg(long, env = "SWITCHBOARD_RULES", value_name = "DIR")]
    pub rules: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://… [default: sqlite://./data/switchboard.db]
    #[arg(
        long,
        env = "SWITCHBOARD_DATABASE",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub database: Option<String>,
    /// Ingest token(s), comma-separated; prefer the environment variable or a file over the flag
    #[arg(
        long,
        env = "SWITCHBOARD_INGEST_TOKEN",
        hide_env_values = true,
        value_delimiter = ',',
        value_name = "TOKEN[,TOKEN…]"
    )]
    pub ingest_token: Vec<String>,
    /// File holding the ingest token(s), comma- or newline-separated
    #[arg(long, env = "SWITCHBOARD_INGEST_TOKEN_FILE", value_name = "PATH")]
    pub ingest_token_file: Option<PathBuf>,
    /// Admin API token; prefer the environment variable or a file over the flag
    #[arg(
        long,
        env = "SWITCHBOARD_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub admin_token: Option<String>,
    /// File holding the admin token
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// Largest accepted notification body in bytes [default: 262144]
    #[arg(long, env = "SWITCHBOARD_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Log format [default: text]
    #[arg(long, env = "SWITCHBOARD_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}
