//! Email actions: building the MIME message is PURE (`build_message`); sending it over SMTP or
//! into an `.eml` file is the I/O edge.

use lettre::Message;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Mailboxes, MultiPart, SinglePart};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// An email as a rule asks for it, fully rendered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailSpec {
    /// One or more recipients.
    pub to: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    pub subject: String,
    /// Plain-text body.
    #[serde(default)]
    pub body: String,
    /// Optional HTML alternative to `body`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
}

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
