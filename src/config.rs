//! Service configuration: one [`Config`], built from defaults, then a TOML file (`--config`), then
//! environment variables (`SWITCHBOARD_*`), then command-line flags, and validated once.

use crate::delivery::retry::Schedule;
use crate::delivery::signing::WebhookKey;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default listen address: loopback only, so a fresh `serve` exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_RULES_DIR: &str = "./rules";
pub const DEFAULT_DATABASE: &str = "sqlite://./data/switchboard.db";
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;

/// A secret value (token, password). Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself; call only where it is compared or sent, never where it is logged.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

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
    pub http: crate::api::HttpLimits,
}

/// Where a new callback task is sent (through the job queue), besides being stored.
#[derive(Debug, Clone)]
pub enum CallbackDispatch {
    /// Udesk's web callback API: Udesk rings the customer, then an agent.
    Udesk(UdeskApi),
    /// A configured webhook target (`[webhooks.NAME]`), with the task as the body.
    Webhook(String),
}

/// Udesk open API access for the web callback (`POST /open_api_v1/callcenter/web_callback`).
#[derive(Debug, Clone)]
pub struct UdeskApi {
    /// e.g. `https://demo.udesk.cn`
    pub base_url: String,
    /// The admin account's email, sent as `email`.
    pub email: String,
    /// The open API token (signs each request; never sent or logged).
    pub token: Secret,
    /// The relay number customers are called from (`to_number`).
    pub relay_number: String,
    pub timeout: Duration,
    /// May resolve to loopback, private or link-local addresses (SSRF guard off).
    pub allow_private: bool,
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain SMTP (a local relay).
    None,
    /// STARTTLS after connecting (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
}

/// The SMTP server (`[smtp]`).
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Per-attempt timeout.
    pub timeout: Duration,
}

/// A webhook target: where a rule's `webhook(#{ target: "NAME" })` goes.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    pub url: Secret,
    /// HTTP method (default POST).
    pub method: String,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// Per-attempt timeout (default 10 s).
    pub timeout: Duration,
    /// Standard Webhooks signing secret (`whsec_…`); requests are signed when set.
    pub secret: Option<WebhookKey>,
    /// May resolve to loopback, private or link-local addresses (SSRF guard off for it).
    pub allow_private: bool,
}

impl Config {
    /// The configuration with every default and the given database and rules.
    pub fn with_defaults() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            rules_dir: PathBuf::from(DEFAULT_RULES_DIR),
            database_url: Secret::new(DEFAULT_DATABASE),
            ingest_tokens: Vec::new(),
            admin_token: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
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
            rule_limits: crate::rules::RuleLimits::default(),
            what_if_roots: Vec::new(),
            http: crate::api::HttpLimits::default(),
        }
    }

    /// Builds the configuration: defaults, then `file` (if any), then `args` (flags and their
    /// `SWITCHBOARD_*` environment variables), then validates it.
    pub fn load(args: &ServeArgs, file: Option<&Path>) -> Result<Config, ConfigError> {
        let file_config = match file {
            Some(path) => FileConfig::read(path)?,
            None => FileConfig::default(),
        };
        let mut config = Config::with_defaults();
        file_config.apply(&mut config)?;
        args.apply(&mut config)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks rules that no single field can: tokens are required off loopback.
    pub fn validate(&self) -> Result<(), ConfigError> {
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
        if self.max_body_bytes == 0 {
            return Err(ConfigError::invalid("max_body_bytes", "must be at least 1"));
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
        if self.commit_batch_max == 0 {
            return Err(ConfigError::invalid(
                "commit_batch_max",
                "must be at least 1",
            ));
        }
        self.validate_http()?;
        Ok(())
    }
}

/// Why the configuration could not be built. Each names the file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
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

impl ServeArgs {
    fn apply(&self, config: &mut Config) -> Result<(), ConfigError> {
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(rules) = &self.rules {
            config.rules_dir = rules.clone();
        }
        if let Some(database) = &self.database {
            config.database_url = Secret::new(database.clone());
        }
        if !self.ingest_token.is_empty() {
            config.ingest_tokens = parse_tokens(&self.ingest_token.join(","));
        } else if let Some(path) = &self.ingest_token_file {
            config.ingest_tokens = parse_tokens(&read_secret_file(path)?);
        }
        if let Some(token) = &self.admin_token {
            config.admin_token = Some(Secret::new(token.trim()));
        } else if let Some(path) = &self.admin_token_file {
            config.admin_token = Some(Secret::new(read_secret_file(path)?.trim()));
        }
        if let Some(bytes) = self.max_body_bytes {
            config.max_body_bytes = bytes;
        }
        if let Some(format) = self.log_format {
            config.log_format = format;
        }
        Ok(())
    }
}

/// The TOML configuration file. Every key is optional; unknown keys are errors (a typo must not
/// silently fall back to a default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    rules: Option<PathBuf>,
    database: Option<String>,
    /// One token, several comma-separated, or a list.
    ingest_token: Option<OneOrMany>,
    ingest_token_file: Option<PathBuf>,
    admin_token: Option<String>,
    admin_token_file: Option<PathBuf>,
    max_body_bytes: Option<usize>,
    log_format: Option<LogFormat>,
    commit_batch_max: Option<usize>,
    processing_lease_secs: Option<u64>,
    processing_poll_ms: Option<u64>,
    processing_max_failures: Option<u32>,
    processing_retry_backoff_ms: Option<u64>,
    processors: Option<usize>,
    counter_retention: Option<String>,
    rule_settings: Option<crate::rules::RuleSettings>,
    webhooks: Option<BTreeMap<String, WebhookTargetFile>>,
    delivery: Option<DeliveryFile>,
    smtp: Option<SmtpFile>,
    email_from: Option<String>,
    outbox_dir: Option<PathBuf>,
    callback_dispatch: Option<CallbackDispatchFile>,
    rule_time_budget_ms: Option<u64>,
    rule_max_actions: Option<usize>,
    what_if_roots: Option<Vec<PathBuf>>,
    http: Option<HttpFile>,
}

/// `[http]`: limits on HTTP clients; durations such as `"10s"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    header_read_timeout: Option<String>,
    body_read_timeout: Option<String>,
    request_timeout: Option<String>,
    max_connections: Option<usize>,
}

impl HttpFile {
    fn apply(self, limits: &mut crate::api::HttpLimits) -> Result<(), ConfigError> {
        let duration = |setting: &'static str, text: Option<String>, into: &mut Duration| {
            if let Some(text) = text {
                *into = crate::time::parse_duration(&text)
                    .map_err(|e| ConfigError::invalid(setting, e))?;
            }
            Ok::<_, ConfigError>(())
        };
        duration(
            "http.header_read_timeout",
            self.header_read_timeout,
            &mut limits.header_read_timeout,
        )?;
        duration(
            "http.body_read_timeout",
            self.body_read_timeout,
            &mut limits.body_read_timeout,
        )?;
        duration(
            "http.request_timeout",
            self.request_timeout,
            &mut limits.request_timeout,
        )?;
        if let Some(n) = self.max_connections {
            limits.max_connections = n;
        }
        Ok(())
    }
}

impl Config {
    /// `[http]`: every deadline positive, the request's longer than the body's (so that a slow
    /// body is answered 408, not taken for a slow service), at least one connection.
    fn validate_http(&self) -> Result<(), ConfigError> {
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
        if http.max_connections == 0 {
            return Err(ConfigError::invalid(
                "http.max_connections",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// `[callback_dispatch]`: exactly one of `webhook = "NAME"` or `[callback_dispatch.udesk]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallbackDispatchFile {
    webhook: Option<String>,
    udesk: Option<UdeskApiFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UdeskApiFile {
    base_url: String,
    email: String,
    token: Option<String>,
    token_file: Option<PathBuf>,
    relay_number: String,
    timeout_secs: Option<u64>,
    #[serde(default)]
    allow_private: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SmtpFile {
    host: String,
    port: Option<u16>,
    tls: Option<SmtpTls>,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    timeout_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookTargetFile {
    url: String,
    method: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    timeout_secs: Option<u64>,
    secret: Option<String>,
    #[serde(default)]
    allow_private: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveryFile {
    /// Delays such as `["5s", "5m", "30m"]`.
    retry_schedule: Option<Vec<String>>,
    #[serde(default)]
    webhook_url_allowlist: Vec<String>,
    #[serde(default)]
    allow_private_targets: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl FileConfig {
    fn read(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    fn apply(self, config: &mut Config) -> Result<(), ConfigError> {
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(rules) = self.rules {
            config.rules_dir = rules;
        }
        if let Some(database) = self.database {
            config.database_url = Secret::new(database);
        }
        match (self.ingest_token, self.ingest_token_file) {
            (Some(OneOrMany::One(tokens)), _) => config.ingest_tokens = parse_tokens(&tokens),
            (Some(OneOrMany::Many(tokens)), _) => {
                config.ingest_tokens = parse_tokens(&tokens.join(","))
            }
            (None, Some(path)) => config.ingest_tokens = parse_tokens(&read_secret_file(&path)?),
            (None, None) => {}
        }
        match (self.admin_token, self.admin_token_file) {
            (Some(token), _) => config.admin_token = Some(Secret::new(token.trim())),
            (None, Some(path)) => {
                config.admin_token = Some(Secret::new(read_secret_file(&path)?.trim()))
            }
            (None, None) => {}
        }
        if let Some(bytes) = self.max_body_bytes {
            config.max_body_bytes = bytes;
        }
        if let Some(format) = self.log_format {
            config.log_format = format;
        }
        if let Some(batch) = self.commit_batch_max {
            config.commit_batch_max = batch;
        }
        if let Some(secs) = self.processing_lease_secs {
            config.processing_lease = Duration::from_secs(secs);
        }
        if let Some(n) = self.processors {
            if n == 0 {
                return Err(ConfigError::invalid("processors", "must be at least 1"));
            }
            config.processors = n;
        }
        if let Some(retention) = self.counter_retention {
            config.counter_retention = crate::time::parse_duration(&retention)
                .map_err(|e| ConfigError::invalid("counter_retention", e))?;
        }
        if let Some(ms) = self.processing_poll_ms {
            config.processing_poll = Duration::from_millis(ms);
        }
        if let Some(n) = self.processing_max_failures {
            if n == 0 {
                return Err(ConfigError::invalid(
                    "processing_max_failures",
                    "must be at least 1",
                ));
            }
            config.processing_max_failures = n;
        }
        if let Some(ms) = self.processing_retry_backoff_ms {
            config.processing_retry_backoff = Duration::from_millis(ms);
        }
        if let Some(vars) = self.rule_settings {
            config.rule_settings = vars;
        }
        if let Some(ms) = self.rule_time_budget_ms {
            if !(1..=10_000).contains(&ms) {
                return Err(ConfigError::invalid(
                    "rule_time_budget_ms",
                    format!("must be from 1 to 10000 (milliseconds), got {ms}"),
                ));
            }
            config.rule_limits.time_budget = Duration::from_millis(ms);
        }
        if let Some(n) = self.rule_max_actions {
            if !(1..=1_000).contains(&n) {
                return Err(ConfigError::invalid(
                    "rule_max_actions",
                    format!("must be from 1 to 1000, got {n}"),
                ));
            }
            config.rule_limits.max_actions = n;
        }
        if let Some(roots) = self.what_if_roots {
            config.what_if_roots = roots;
        }
        for (name, target) in self.webhooks.unwrap_or_default() {
            let secret = target
                .secret
                .map(|s| WebhookKey::parse(&s))
                .transpose()
                .map_err(|e| {
                    ConfigError::invalid("webhooks.*.secret", format!("target `{name}`: {e}"))
                })?;
            // The URL itself is not shown: it may carry a credential.
            if !url::Url::parse(&target.url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            {
                return Err(ConfigError::invalid(
                    "webhooks.*.url",
                    format!("target `{name}`: not an http or https URL"),
                ));
            }
            let method = target
                .method
                .unwrap_or_else(|| "POST".into())
                .to_ascii_uppercase();
            config.webhook_targets.insert(
                name,
                WebhookTarget {
                    url: Secret::new(target.url),
                    method,
                    headers: target.headers,
                    timeout: Duration::from_secs(target.timeout_secs.unwrap_or(10)),
                    secret,
                    allow_private: target.allow_private,
                },
            );
        }
        if let Some(smtp) = self.smtp {
            let tls = smtp.tls.unwrap_or(SmtpTls::Starttls);
            let password = match (smtp.password, smtp.password_file) {
                (Some(p), _) => Some(Secret::new(p)),
                (None, Some(path)) => Some(Secret::new(read_secret_file(&path)?.trim())),
                (None, None) => None,
            };
            config.smtp = Some(SmtpConfig {
                port: smtp.port.unwrap_or(match tls {
                    SmtpTls::None => 25,
                    SmtpTls::Starttls => 587,
                    SmtpTls::Implicit => 465,
                }),
                host: smtp.host,
                tls,
                username: smtp.username,
                password,
                timeout: Duration::from_secs(smtp.timeout_secs.unwrap_or(30)),
            });
        }
        if let Some(from) = self.email_from {
            config.email_from = from;
        }
        if let Some(dir) = self.outbox_dir {
            config.outbox_dir = dir;
        }
        if let Some(delivery) = self.delivery {
            if let Some(delays) = delivery.retry_schedule {
                let delays = delays
                    .iter()
                    .map(|d| crate::time::parse_duration(d))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| ConfigError::invalid("delivery.retry_schedule", e))?;
                config.retry_schedule = Schedule { delays };
            }
            config.webhook_url_allowlist = delivery
                .webhook_url_allowlist
                .iter()
                .map(|entry| crate::delivery::address::AllowedUrl::parse(entry))
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    ConfigError::invalid("delivery.webhook_url_allowlist", e.to_string())
                })?;
            config.allow_private_targets = delivery.allow_private_targets;
        }
        if let Some(http) = self.http {
            http.apply(&mut config.http)?;
        }
        if let Some(dispatch) = self.callback_dispatch {
            config.callback_dispatch = Some(match (dispatch.webhook, dispatch.udesk) {
                (Some(target), None) => {
                    if !config.webhook_targets.contains_key(&target) {
                        return Err(ConfigError::invalid(
                            "callback_dispatch.webhook",
                            format!("no webhook target named `{target}` ([webhooks.{target}])"),
                        ));
                    }
                    CallbackDispatch::Webhook(target)
                }
                (None, Some(udesk)) => {
                    let token = match (udesk.token, udesk.token_file) {
                        (Some(token), _) => token,
                        (None, Some(path)) => read_secret_file(&path)?,
                        (None, None) => {
                            return Err(ConfigError::invalid(
                                "callback_dispatch.udesk.token",
                                "give `token` or `token_file`",
                            ));
                        }
                    };
                    let base_url = udesk.base_url.trim_end_matches('/').to_string();
                    if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
                        return Err(ConfigError::invalid(
                            "callback_dispatch.udesk.base_url",
                            format!("`{base_url}` is not an http(s) URL"),
                        ));
                    }
                    CallbackDispatch::Udesk(UdeskApi {
                        base_url,
                        email: udesk.email,
                        token: Secret::new(token.trim()),
                        relay_number: udesk.relay_number,
                        timeout: Duration::from_secs(udesk.timeout_secs.unwrap_or(10)),
                        allow_private: udesk.allow_private,
                    })
                }
                _ => {
                    return Err(ConfigError::invalid(
                        "callback_dispatch",
                        "give exactly one of `webhook = \"NAME\"` or `[callback_dispatch.udesk]`",
                    ));
                }
            });
        }
        Ok(())
    }
}

/// Splits a token list on commas and newlines, dropping blanks.
fn parse_tokens(text: &str) -> Vec<Secret> {
    text.split([',', '\n'])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(Secret::new)
        .collect()
}

fn read_secret_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
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
        assert_eq!(config.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
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
        let load = |text: &str| Config::load(&ServeArgs::default(), Some(file_with(text).path()));
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
        let load = |text: &str| Config::load(&ServeArgs::default(), Some(file_with(text).path()));
        let config = load("").unwrap();
        assert_eq!(config.processing_max_failures, 5);
        assert_eq!(config.processing_retry_backoff, Duration::from_secs(2));
        let config =
            load("processing_max_failures = 2\nprocessing_retry_backoff_ms = 50\n").unwrap();
        assert_eq!(config.processing_max_failures, 2);
        assert_eq!(config.processing_retry_backoff, Duration::from_millis(50));
        let err = load("processing_max_failures = 0\n").unwrap_err();
        assert!(err.to_string().contains("processing_max_failures"), "{err}");
    }

    #[test]
    fn callback_dispatch_takes_exactly_one_destination() {
        let load = |text: &str| Config::load(&ServeArgs::default(), Some(file_with(text).path()));
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
}

#[cfg(test)]
mod outbound_config {
    use super::*;
    use std::io::Write;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        Config::load(&ServeArgs::default(), Some(f.path()))
    }

    #[test]
    fn allowlist_entries_are_parsed_as_urls_at_load() {
        let config =
            load("[delivery]\nwebhook_url_allowlist = [\"https://hooks.example.com/in\"]\n")
                .unwrap();
        let url = url::Url::parse("https://hooks.example.com/in/x").unwrap();
        assert!(config.webhook_url_allowlist[0].admits(&url));
        let err = load("[delivery]\nwebhook_url_allowlist = [\"https://ok.example/\", \"hooks.example.com\"]\n")
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
}

#[cfg(test)]
mod http_config {
    use super::*;
    use std::io::Write;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        Config::load(&ServeArgs::default(), Some(f.path()))
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
}

#[cfg(test)]
mod example_config {
    use super::*;

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
}
