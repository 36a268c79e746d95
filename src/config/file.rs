//! The TOML configuration file's shape. Every key is optional; unknown keys are errors (a typo
//! must not silently fall back to a default). No type here derives `Debug`: they hold secrets as
//! written.

use super::{ConfigError, LogFormat};
use crate::delivery::email::SmtpFile;
use crate::delivery::udesk::CallbackDispatchFile;
use crate::delivery::webhook::WebhookTargetFile;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The file's top level.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub rules: Option<PathBuf>,
    pub database: Option<String>,
    /// One token, several comma-separated, or a list.
    pub ingest_token: Option<OneOrMany>,
    pub ingest_token_file: Option<PathBuf>,
    pub admin_token: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    pub max_body_bytes: Option<usize>,
    pub log_format: Option<LogFormat>,
    pub commit_batch_max: Option<usize>,
    pub processing_lease_secs: Option<u64>,
    pub processing_poll_ms: Option<u64>,
    pub processing_max_failures: Option<u32>,
    pub processing_retry_backoff_ms: Option<u64>,
    pub processors: Option<usize>,
    pub counter_retention: Option<String>,
    pub rule_settings: Option<crate::rules::RuleSettings>,
    pub webhooks: Option<BTreeMap<String, WebhookTargetFile>>,
    pub delivery: Option<DeliveryFile>,
    pub smtp: Option<SmtpFile>,
    pub email_from: Option<String>,
    pub outbox_dir: Option<PathBuf>,
    pub callback_dispatch: Option<CallbackDispatchFile>,
    pub rule_time_budget_ms: Option<u64>,
    pub rule_max_actions: Option<usize>,
    pub what_if_roots: Option<Vec<PathBuf>>,
    pub http: Option<HttpFile>,
}

/// `[http]`: limits on HTTP clients; durations such as `"10s"`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFile {
    pub header_read_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub max_connections: Option<usize>,
}

/// `[delivery]`: what every sender shares.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryFile {
    /// Delays such as `["5s", "5m", "30m"]`.
    pub retry_schedule: Option<Vec<String>>,
    #[serde(default)]
    pub webhook_url_allowlist: Vec<String>,
    #[serde(default)]
    pub allow_private_targets: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values as one comma-separated list.
    pub fn joined(self) -> String {
        match self {
            OneOrMany::One(text) => text,
            OneOrMany::Many(list) => list.join(","),
        }
    }
}

impl FileConfig {
    pub fn read(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = crate::secret::read_file(path)?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}
