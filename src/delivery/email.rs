//! Email actions: building the MIME message is PURE (`build_message`); sending it over SMTP or
//! into an `.eml` file is the I/O edge. The `[smtp]` settings are here too.

use super::retry::AttemptResult;
use crate::action::EmailSpec;
use crate::secret::{self, ReadError, Secret};
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Mailboxes, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::Duration;

/// Why a message cannot be built. Permanent: retrying the same spec cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("invalid address in `{field}`: `{address}`")]
    Address {
        field: &'static str,
        address: String,
    },
    #[error("an email needs at least one recipient in `to`")]
    NoRecipient,
    #[error("the message could not be built: {0}")]
    Build(String),
}

/// Builds the message. `key` (the job's idempotency key) fixes the Message-ID, so that every
/// retry of one job is recognizably the same message. Non-ASCII subjects and bodies (Japanese,
/// Chinese) are MIME-encoded by lettre (RFC 2047 headers, base64 or quoted-printable bodies).
pub fn build_message(from: &Mailbox, spec: &EmailSpec, key: &str) -> Result<Message, EmailError> {
    if spec.to.is_empty() {
        return Err(EmailError::NoRecipient);
    }
    let mut builder = Message::builder()
        .from(from.clone())
        .subject(spec.subject.clone())
        .message_id(Some(message_id(key, from)));
    for to in parse_all("to", &spec.to)? {
        builder = builder.to(to);
    }
    for cc in parse_all("cc", &spec.cc)? {
        builder = builder.cc(cc);
    }
    if let Some(reply_to) = &spec.reply_to {
        builder = builder.reply_to(parse("reply_to", reply_to)?);
    }
    let text = SinglePart::builder()
        .header(ContentType::TEXT_PLAIN)
        .body(spec.body.clone());
    let result = match &spec.html {
        Some(html) => builder.multipart(
            MultiPart::alternative()
                .singlepart(text)
                .singlepart(SinglePart::html(html.clone())),
        ),
        None => builder.singlepart(text),
    };
    result.map_err(|e| EmailError::Build(e.to_string()))
}

/// The SMTP server emails go through (`[smtp]`).
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

/// `[smtp]` as written in the configuration file.
#[derive(Deserialize)] // no Debug: it holds a secret as written
#[serde(deny_unknown_fields)]
pub struct SmtpFile {
    host: String,
    port: Option<u16>,
    tls: Option<SmtpTls>,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    timeout_secs: Option<u64>,
}

impl SmtpFile {
    /// The server's settings: STARTTLS unless said otherwise, the port following from the TLS
    /// mode, the password read from its file if it is given as one.
    pub fn build(self) -> Result<SmtpConfig, ReadError> {
        let tls = self.tls.unwrap_or(SmtpTls::Starttls);
        let password = secret::inline_or_file(self.password, self.password_file.as_deref())?;
        Ok(SmtpConfig {
            host: self.host,
            port: self.port.unwrap_or(match tls {
                SmtpTls::None => 25,
                SmtpTls::Starttls => 587,
                SmtpTls::Implicit => 465,
            }),
            tls,
            username: self.username,
            password: password.map(Secret::new),
            timeout: Duration::from_secs(self.timeout_secs.unwrap_or(30)),
        })
    }
}

/// Where messages go: an SMTP server (pooled connections), or `.eml` files in a folder.
#[derive(Clone)]
pub enum Mailer {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Outbox(AsyncFileTransport<Tokio1Executor>),
}

impl Mailer {
    /// The SMTP transport the configuration describes.
    pub fn smtp(config: &SmtpConfig) -> Result<Mailer, String> {
        let builder = match config.tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host),
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&config.host)
                .map_err(|e| e.to_string())?,
            SmtpTls::Implicit => AsyncSmtpTransport::<Tokio1Executor>::relay(&config.host)
                .map_err(|e| e.to_string())?,
        };
        let mut builder = builder.port(config.port).timeout(Some(config.timeout));
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose().to_string(),
            ));
        }
        Ok(Mailer::Smtp(builder.build()))
    }

    /// Writes each message as `<id>.eml` into `dir` (created if needed).
    pub fn outbox(dir: &std::path::Path) -> std::io::Result<Mailer> {
        std::fs::create_dir_all(dir)?;
        Ok(Mailer::Outbox(AsyncFileTransport::new(dir)))
    }

    /// Sends one message: SMTP 2xx is success, 4xx and connection errors are transient, 5xx
    /// permanent. Returns the reply code when there was one.
    pub async fn send(&self, message: Message) -> (AttemptResult, Option<i64>) {
        match self {
            Mailer::Smtp(transport) => match transport.send(message).await {
                Ok(response) => (AttemptResult::Success, Some(smtp_code(&response.code()))),
                Err(error) => {
                    let code = error.status().map(|c| smtp_code(&c));
                    let reason = error.to_string();
                    let result = if error.is_permanent() {
                        AttemptResult::Permanent { reason }
                    } else {
                        AttemptResult::Transient {
                            reason,
                            retry_after: None,
                        }
                    };
                    (result, code)
                }
            },
            Mailer::Outbox(transport) => match transport.send(message).await {
                Ok(_) => (AttemptResult::Success, None),
                Err(error) => (
                    AttemptResult::Transient {
                        reason: format!("writing the .eml file failed: {error}"),
                        retry_after: None,
                    },
                    None,
                ),
            },
        }
    }
}

fn smtp_code(code: &lettre::transport::smtp::response::Code) -> i64 {
    code.to_string().parse().unwrap_or(0)
}

fn message_id(key: &str, from: &Mailbox) -> String {
    let digest = hex::encode(&Sha256::digest(key.as_bytes())[..16]);
    format!("<{digest}@{}>", from.email.domain())
}

fn parse(field: &'static str, address: &str) -> Result<Mailbox, EmailError> {
    address.trim().parse().map_err(|_| EmailError::Address {
        field,
        address: address.to_string(),
    })
}

fn parse_all(field: &'static str, addresses: &[String]) -> Result<Mailboxes, EmailError> {
    addresses
        .iter()
        .map(|a| parse(field, a))
        .collect::<Result<Vec<_>, _>>()
        .map(|list| list.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> EmailSpec {
        EmailSpec {
            to: vec!["ops@example.com".into(), "山田 <yamada@example.jp>".into()],
            cc: vec!["lead@example.com".into()],
            reply_to: Some("noreply@example.com".into()),
            subject: "待機放棄: 13800138000 (放弃排队)".into(),
            body: "顧客が81秒待って切断しました。".into(),
            html: Some("<p>顧客が<b>81秒</b>待って切断しました。</p>".into()),
        }
    }

    #[test]
    fn builds_a_mime_encoded_multipart_message() {
        let from: Mailbox = "Switchboard <switchboard@example.com>".parse().unwrap();
        let message = build_message(&from, &spec(), "1:0:rules/a.rhai").unwrap();
        let raw = String::from_utf8(message.formatted()).unwrap();
        assert!(raw.is_ascii(), "the wire form is 7-bit: {raw}");
        assert!(raw.contains("Subject: =?utf-8?b?"), "{raw}");
        assert!(raw.contains("multipart/alternative"), "{raw}");
        assert!(raw.contains("Cc: lead@example.com"), "{raw}");
        assert!(raw.contains("Reply-To: noreply@example.com"), "{raw}");
        let again = build_message(&from, &spec(), "1:0:rules/a.rhai").unwrap();
        assert_eq!(
            message.headers().get_raw("Message-ID"),
            again.headers().get_raw("Message-ID")
        );
    }

    #[test]
    fn bad_addresses_are_named() {
        let from: Mailbox = "switchboard@example.com".parse().unwrap();
        let mut bad = spec();
        bad.cc = vec!["not an address".into()];
        assert_eq!(
            build_message(&from, &bad, "k").unwrap_err(),
            EmailError::Address {
                field: "cc",
                address: "not an address".into()
            }
        );
        bad.to.clear();
        assert_eq!(
            build_message(&from, &bad, "k").unwrap_err(),
            EmailError::NoRecipient
        );
    }
}
