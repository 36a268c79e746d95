//! Service configuration: one [`Config`], built from defaults, then a TOML file (`--config`), then
//! environment variables (`SWITCHBOARD_*`), then command-line flags, and checked in one place
//! ([`Config::load`]). The file's shape is in `file`, the flags in `args`; each sender's settings
//! and their checks are beside the sender, in [`crate::delivery`].

mod args;
mod file;

pub use args::ServeArgs;
// The settings a `Config` is made of, so that one import can build a whole configuration.
pub use crate::delivery::email::{SmtpConfig, SmtpTls};
pub use crate::delivery::udesk::{CallbackDispatch, UdeskApi};
pub use crate::delivery::webhook::WebhookTarget;
pub use crate::secret::Secret;

use crate::api::HttpLimits;
use crate::delivery::address::AllowedUrl;
use crate::delivery::retry::Schedule;
use crate::delivery::udesk::DispatchError;
use crate::rules::RuleLimits;
use crate::secret::{self, ReadError};
use crate::time::parse_duration;
use file::{FileConfig, OneOrMany};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything `switchboard serve` needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// Directory of `.rhai` rule files (watched for changes).
    pub rules_dir: PathBuf,
    /// `sqlite://PATH` (embedded, the default) or `postgres://…` (shared by several instances).
    pub database_url: Secret,
    /// Tokens accepted on `POST /v1/notifications`; several at once allow rotation. Empty means
    /// intake is open, which is only allowed on a loopback listen address.
    pub ingest_tokens: Vec<Secret>,
    /// Token for the admin API. `None` means the admin API is open, only allowed on loopback.
    pub admin_token: Option<Secret>,
    /// Largest accepted request body; larger pushes get 413.
    pub max_body_bytes: usize,
    /// Log line format.
    pub log_format: LogFormat,
    /// Most notifications committed in one transaction (group commit).
    pub commit_batch_max: usize,
    /// How long a processor holds claimed events before another may take them over.
    pub processing_lease: Duration,
    /// How often processors look for work when nothing wakes them (other instances' events).
    pub processing_poll: Duration,
    /// Failed attempts to load or process an event before it is quarantined (kept out of
    /// processing until an operator retries it); the rest of its batch goes on either way.
    pub processing_max_failures: u32,
    /// The wait after an event's first failed attempt; it doubles after each further one.
    pub processing_retry_backoff: Duration,
    /// Processors per instance (each claims and evaluates a batch at a time). Windowed counters
    /// stay exact however many there are; more keep the CPU busy while others wait on the
    /// store's round trips.
    pub processors: usize,
    /// How long windowed-counter hits are kept (a `count_in_window` over a longer window
    /// undercounts); expired throttle windows are dropped as well.
    pub counter_retention: Duration,
    /// Values rules read with `setting("name")`, e.g. a supervisor's address (`[rule_settings]`).
    pub rule_settings: crate::rules::RuleSettings,
    /// Named webhook targets rules refer to (`[webhooks.NAME]`).
    pub webhook_targets: BTreeMap<String, WebhookTarget>,
    /// URLs a rule may post to directly with `webhook(#{ url })`, or below them (scheme, host and
    /// port exactly, the path on a segment boundary).
    pub webhook_url_allowlist: Vec<crate::delivery::address::AllowedUrl>,
    /// Allow every target to resolve to loopback, private or link-local addresses (tests, local
    /// development). Off: only targets with `allow_private = true` may.
    pub allow_private_targets: bool,
    /// Delays between delivery attempts; after the last, a job is dead-lettered.
    pub retry_schedule: Schedule,
    /// The SMTP server emails go through; `None` writes them as `.eml` files to `outbox_dir`.
    pub smtp: Option<SmtpConfig>,
    /// The sender of every email.
    pub email_from: String,
    /// Where emails are written when no SMTP server is configured.
    pub outbox_dir: PathBuf,
    /// Where each new callback task is sent, if anywhere.
    pub callback_dispatch: Option<CallbackDispatch>,
    /// Limits every rule call runs under, in `serve` and in the rule tools alike
    /// (`rule_time_budget_ms`, `rule_max_actions`).
    pub rule_limits: crate::rules::RuleLimits,
    /// Directories `POST /v1/what-if` may read candidate rules from (its `rules_dir` must be one
    /// of them or inside one). Empty: what-if over the API is refused with a 400 that says so.
    pub what_if_roots: Vec<PathBuf>,
    /// Limits on HTTP clients: header, body and request deadlines, most connections (`[http]`).
    pub http: HttpLimits,
}

impl Config {
    /// What rules see of this configuration: its rule settings and webhook target names.
    pub fn rule_env(&self) -> crate::rules::RuleEnv {
        crate::rules::RuleEnv {
            settings: self.rule_settings.clone(),
            webhook_targets: self.webhook_targets.keys().cloned().collect(),
            config_known: true,
        }
    }

    /// The configuration with every default.
    pub fn with_defaults() -> Self {
        Config {
            // Loopback only, so a fresh `serve` exposes nothing.
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            rules_dir: PathBuf::from("./rules"),
            database_url: Secret::new("sqlite://./data/switchboard.db"),
            ingest_tokens: Vec::new(),
            admin_token: None,
            max_body_bytes: 256 * 1024,
            log_format: LogFormat::Text,
            commit_batch_max: 512,
            processing_lease: Duration::from_secs(30),
            processing_poll: Duration::from_secs(1),
            processing_max_failures: 5,
            processing_retry_backoff: Duration::from_millis(2000),
            processors: 4,
            counter_retention: Duration::from_secs(30 * 24 * 3600),
            rule_settings: Default::default(),
            webhook_targets: BTreeMap::new(),
            webhook_url_allowlist: Vec::new(),
            allow_private_targets: false,
            retry_schedule: Schedule::default(),
            smtp: None,
            email_from: "Switchboard <switchboard@localhost>".into(),
            outbox_dir: PathBuf::from("./data/outbox"),
            callback_dispatch: None,
            rule_limits: RuleLimits::default(),
            what_if_roots: Vec::new(),
            http: HttpLimits::default(),
        }
    }

    /// Builds the configuration and checks it: each setting from `args` (a flag, else its
    /// `SWITCHBOARD_*` environment variable), else from `file` (if any), else its default.
    pub fn load(args: &ServeArgs, file: Option<&Path>) -> Result<Config, ConfigError> {
        let file = match file {
            Some(path) => FileConfig::read(path)?,
            None => FileConfig::default(),
        };
        // Each source's tokens are read with it, the file's first; a later source's replace them.
        let file_ingest = ingest_tokens(
            file.ingest_token.map(OneOrMany::joined),
            file.ingest_token_file.as_deref(),
        )?;
        let file_admin = admin_token(file.admin_token, file.admin_token_file.as_deref())?;
        let args_ingest = ingest_tokens(
            (!args.ingest_token.is_empty()).then(|| args.ingest_token.join(",")),
            args.ingest_token_file.as_deref(),
        )?;
        let args_admin = admin_token(args.admin_token.clone(), args.admin_token_file.as_deref())?;
        let mut webhook_targets = BTreeMap::new();
        for (name, target) in file.webhooks.unwrap_or_default() {
            let target = target
                .build()
                .map_err(|e| ConfigError::invalid(e.setting(), format!("target `{name}`: {e}")))?;
            webhook_targets.insert(name, target);
        }
        let callback_dispatch = match file.callback_dispatch {
            Some(dispatch) => Some(dispatch.build(&webhook_targets)?),
            None => None,
        };
        let delivery = file.delivery.unwrap_or_default();
        let http = file.http.unwrap_or_default();
        let d = Config::with_defaults();
        let config = Config {
            listen: args.listen.or(file.listen).unwrap_or(d.listen),
            rules_dir: args.rules.clone().or(file.rules).unwrap_or(d.rules_dir),
            database_url: args
                .database
                .clone()
                .or(file.database)
                .map_or(d.database_url, Secret::new),
            ingest_tokens: args_ingest.or(file_ingest).unwrap_or(d.ingest_tokens),
            admin_token: args_admin.or(file_admin).or(d.admin_token),
            max_body_bytes: args
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(d.max_body_bytes),
            log_format: args.log_format.or(file.log_format).unwrap_or(d.log_format),
            commit_batch_max: file.commit_batch_max.unwrap_or(d.commit_batch_max),
            processing_lease: file
                .processing_lease_secs
                .map_or(d.processing_lease, Duration::from_secs),
            processing_poll: file
                .processing_poll_ms
                .map_or(d.processing_poll, Duration::from_millis),
            processing_max_failures: file
                .processing_max_failures
                .unwrap_or(d.processing_max_failures),
            processing_retry_backoff: file
                .processing_retry_backoff_ms
                .map_or(d.processing_retry_backoff, Duration::from_millis),
            processors: file.processors.unwrap_or(d.processors),
            counter_retention: duration_or(
                "counter_retention",
                file.counter_retention,
                d.counter_retention,
            )?,
            rule_settings: file.rule_settings.unwrap_or(d.rule_settings),
            webhook_targets,
            webhook_url_allowlist: delivery
                .webhook_url_allowlist
                .iter()
                .map(|entry| AllowedUrl::parse(entry))
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    ConfigError::invalid("delivery.webhook_url_allowlist", e.to_string())
                })?,
            allow_private_targets: delivery.allow_private_targets,
            retry_schedule: match delivery.retry_schedule {
                Some(delays) => Schedule {
                    delays: delays
                        .iter()
                        .map(|delay| parse_duration(delay))
                        .collect::<Result<_, _>>()
                        .map_err(|e| ConfigError::invalid("delivery.retry_schedule", e))?,
                },
                None => d.retry_schedule,
            },
            smtp: file.smtp.map(|smtp| smtp.build()).transpose()?,
            email_from: file.email_from.unwrap_or(d.email_from),
            outbox_dir: file.outbox_dir.unwrap_or(d.outbox_dir),
            callback_dispatch,
            rule_limits: RuleLimits {
                time_budget: file
                    .rule_time_budget_ms
                    .map_or(d.rule_limits.time_budget, Duration::from_millis),
                max_actions: file.rule_max_actions.unwrap_or(d.rule_limits.max_actions),
            },
            what_if_roots: file.what_if_roots.unwrap_or(d.what_if_roots),
            http: HttpLimits {
                header_read_timeout: duration_or(
                    "http.header_read_timeout",
                    http.header_read_timeout,
                    d.http.header_read_timeout,
                )?,
                body_read_timeout: duration_or(
                    "http.body_read_timeout",
                    http.body_read_timeout,
                    d.http.body_read_timeout,
                )?,
                request_timeout: duration_or(
                    "http.request_timeout",
                    http.request_timeout,
                    d.http.request_timeout,
                )?,
                max_connections: http.max_connections.unwrap_or(d.http.max_connections),
            },
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks what no setting's type does: numbers in range, an email sender that parses, HTTP
    /// deadlines that fit together, and tokens off loopback.
    fn validate(&self) -> Result<(), ConfigError> {
        for (setting, is_zero) in [
            ("processors", self.processors == 0),
            ("processing_max_failures", self.processing_max_failures == 0),
            ("max_body_bytes", self.max_body_bytes == 0),
            ("commit_batch_max", self.commit_batch_max == 0),
            ("http.max_connections", self.http.max_connections == 0),
        ] {
            if is_zero {
                return Err(ConfigError::invalid(setting, "must be at least 1"));
            }
        }
        let budget_ms = self.rule_limits.time_budget.as_millis();
        if !(1..=10_000).contains(&budget_ms) {
            return Err(ConfigError::invalid(
                "rule_time_budget_ms",
                format!("must be from 1 to 10000 (milliseconds), got {budget_ms}"),
            ));
        }
        let max_actions = self.rule_limits.max_actions;
        if !(1..=1_000).contains(&max_actions) {
            return Err(ConfigError::invalid(
                "rule_max_actions",
                format!("must be from 1 to 1000, got {max_actions}"),
            ));
        }
        if self.email_from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(ConfigError::invalid(
                "email_from",
                format!(
                    "`{}` is not an address like `Switchboard <switchboard@example.com>`",
                    self.email_from
                ),
            ));
        }
        // Every deadline positive, the request's longer than the body's (so that a slow body is
        // answered 408, not taken for a slow service).
        let http = &self.http;
        for (setting, value) in [
            ("http.header_read_timeout", http.header_read_timeout),
            ("http.body_read_timeout", http.body_read_timeout),
            ("http.request_timeout", http.request_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::invalid(setting, "must be longer than 0s"));
            }
        }
        if http.request_timeout <= http.body_read_timeout {
            return Err(ConfigError::invalid(
                "http.request_timeout",
                "must be longer than http.body_read_timeout",
            ));
        }
        let open_to_network = !self.listen.ip().is_loopback();
        if open_to_network && self.ingest_tokens.is_empty() {
            return Err(ConfigError::invalid(
                "ingest_token",
                format!(
                    "listening on {} (not loopback) requires an ingest token: set SWITCHBOARD_INGEST_TOKEN or --ingest-token-file",
                    self.listen
                ),
            ));
        }
        if open_to_network && self.admin_token.is_none() {
            return Err(ConfigError::invalid(
                "admin_token",
                format!(
                    "listening on {} (not loopback) requires an admin token: set SWITCHBOARD_ADMIN_TOKEN or --admin-token-file",
                    self.listen
                ),
            ));
        }
        Ok(())
    }
}

/// Why the configuration could not be built. Each names the file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file or a secret's file.
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting `{setting}`: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
}

impl ConfigError {
    fn invalid(setting: &'static str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            setting,
            message: message.into(),
        }
    }
}

impl From<DispatchError> for ConfigError {
    fn from(error: DispatchError) -> Self {
        match error {
            DispatchError::Read(error) => ConfigError::Read(error),
            error => ConfigError::invalid(error.setting(), error.to_string()),
        }
    }
}

/// A duration setting such as `"30d"`, else `default`.
fn duration_or(
    setting: &'static str,
    text: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    text.map_or(Ok(default), |text| {
        parse_duration(&text).map_err(|e| ConfigError::invalid(setting, e))
    })
}

/// The ingest tokens one source gives: a list split on commas and newlines (blanks dropped),
/// else the same from a file.
fn ingest_tokens(
    list: Option<String>,
    file: Option<&Path>,
) -> Result<Option<Vec<Secret>>, ReadError> {
    let tokens = |text: String| {
        text.split([',', '\n'])
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(Secret::new)
            .collect()
    };
    Ok(secret::inline_or_file(list, file)?.map(tokens))
}

/// The admin token one source gives, or that of its file.
fn admin_token(token: Option<String>, file: Option<&Path>) -> Result<Option<Secret>, ReadError> {
    Ok(secret::inline_or_file(token, file)?.map(|t| Secret::new(t.trim())))
}

#[cfg(test)]
mod tests;
