//! The operator commands of the `switchboard` binary (not part of the library): the rule tools,
//! and the commands that read or change the database directly, printing plain tables.

pub mod jobs;
pub mod rule_tools;
pub mod tasks;
pub mod what_if;

use std::path::Path;
use switchboard::config::{Config, ServeArgs};

#[derive(Debug, clap::Args)]
pub struct DatabaseArg {
    /// Database URL [default: the configuration's, else sqlite://./data/switchboard.db]
    #[arg(
        long,
        env = "SWITCHBOARD_DATABASE",
        hide_env_values = true,
        value_name = "URL"
    )]
    database: Option<String>,
}

impl DatabaseArg {
    /// The database URL: this flag's, else the configuration file's, else the default.
    pub fn url(&self, config: Option<&Path>) -> anyhow::Result<String> {
        let args = ServeArgs {
            database: self.database.clone(),
            ..Default::default()
        };
        Ok(Config::load(&args, config)?
            .database_url
            .expose()
            .to_string())
    }
}

/// A time as `2026-11-20 10:15:42` (UTC), or `-`.
fn time(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}
