//! Webhook actions: `prepare` (PURE) turns a job into the exact request (target resolved from
//! the config, body built, Standard Webhooks signature); `send` (I/O) moves the bytes and
//! classifies the answer. Requests to loopback, private and link-local addresses are refused
//! unless the target is allowed to make them (SSRF guard).

use super::retry::{AttemptResult, classify_http, parse_retry_after};
use crate::config::WebhookTarget;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// A request ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
    /// Whether the URL may resolve to private addresses.
    pub allow_private: bool,
}

/// Why a webhook job cannot be sent at all (permanent: retrying cannot help).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrepareError {
    #[error("no webhook target named `{0}` in the configuration ([webhooks.{0}])")]
    UnknownTarget(String),
    #[error("URL `{0}` is not on the webhook allowlist (delivery.webhook_url_allowlist)")]
    NotAllowed(String),
    #[error("the job names neither a target nor a URL")]
    NoDestination,
    #[error("invalid URL `{0}`")]
    BadUrl(String),
    #[error("refused: `{0}` is a loopback, private or link-local address (SSRF guard)")]
    PrivateAddress(String),
}

/// What the delivery side knows besides the job itself.
pub struct WebhookContext<'a> {
    pub targets: &'a BTreeMap<String, WebhookTarget>,
    pub allowlist: &'a [String],
    pub allow_private: bool,
}

/// The `webhook-id` of a job: derived from its idempotency key, the same on every retry.
pub fn message_id(idempotency_key: &str) -> String {
    format!(
        "msg_{}",
        hex::encode(&Sha256::digest(idempotency_key.as_bytes())[..16])
    )
}

/// Builds the request for a webhook job. `body` is the rule's body, or the default (the event
/// and the rule name) when the rule gave none; `timestamp` is the send time (unix seconds).
pub fn prepare(
    ctx: &WebhookContext,
    target: Option<&str>,
    url: Option<&str>,
    body: &serde_json::Value,
    idempotency_key: &str,
    timestamp: i64,
) -> Result<PreparedRequest, PrepareError> {
    let body = serde_json::to_vec(body).unwrap_or_default();
    let id = message_id(idempotency_key);
    let mut headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("webhook-id".to_string(), id.clone()),
        ("webhook-timestamp".to_string(), timestamp.to_string()),
    ];
    let (method, url, timeout, allow_private) = match (target, url) {
        (Some(name), _) => {
            let t = ctx
                .targets
                .get(name)
                .ok_or_else(|| PrepareError::UnknownTarget(name.to_string()))?;
            headers.extend(
                t.headers
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone())),
            );
            if let Some(key) = &t.secret {
                headers.push((
                    "webhook-signature".to_string(),
                    key.sign(&id, timestamp, &body),
                ));
            }
            (
                t.method.clone(),
                t.url.expose().to_string(),
                t.timeout,
                t.allow_private,
            )
        }
        (None, Some(url)) => {
            if !ctx
                .allowlist
                .iter()
                .any(|prefix| url.starts_with(prefix.as_str()))
            {
                return Err(PrepareError::NotAllowed(url.to_string()));
            }
            (
                "POST".to_string(),
                url.to_string(),
                Duration::from_secs(10),
                false,
            )
        }
        (None, None) => return Err(PrepareError::NoDestination),
    };
    let allow_private = allow_private || ctx.allow_private;
    let parsed = reqwest::Url::parse(&url).map_err(|_| PrepareError::BadUrl(redact(&url)))?;
    if !allow_private
        && let Some(ip) = parsed
            .host_str()
            .and_then(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().ok())
        && !is_public(ip)
    {
        return Err(PrepareError::PrivateAddress(ip.to_string()));
    }
    Ok(PreparedRequest {
        method,
        url,
        headers,
        body,
        timeout,
        allow_private,
    })
}

/// Whether an address is fit for an outbound request without explicit permission.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        } // carrier-grade NAT
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || v6.to_ipv4_mapped().is_some_and(|v4| !is_public(IpAddr::V4(v4))))
        }
    }
}

/// A URL without its query string (signed URLs carry credentials there), for messages.
pub fn redact(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?…"),
        None => url.to_string(),
    }
}

/// The result of one attempt, with the status code and the start of the body when there was an
/// answer.
pub struct Sent {
    pub result: AttemptResult,
    pub code: Option<i64>,
    /// The first [`KEPT_BODY_BYTES`] of the response body (read whole, so the connection can be
    /// reused, but not kept).
    pub body: Vec<u8>,
}

/// How much of a response body an attempt keeps.
pub const KEPT_BODY_BYTES: usize = 4096;

/// Sends a prepared request. DNS answers are checked by the guarded client (see
/// [`guarded_client`]) unless the request may reach private addresses.
pub async fn send(clients: &Clients, request: &PreparedRequest) -> Sent {
    let client = if request.allow_private {
        &clients.open
    } else {
        &clients.guarded
    };
    let Ok(method) = reqwest::Method::from_bytes(request.method.as_bytes()) else {
        return Sent {
            result: AttemptResult::Permanent {
                reason: format!("invalid HTTP method `{}`", request.method),
            },
            code: None,
            body: Vec::new(),
        };
    };
    let mut builder = client
        .request(method, &request.url)
        .timeout(request.timeout)
        .body(request.body.clone());
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    match builder.send().await {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let mut body = Vec::new();
            // The answer counts once its status is in; a body cut short changes nothing.
            while let Ok(Some(chunk)) = response.chunk().await {
                let room = KEPT_BODY_BYTES.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Sent {
                result: classify_http(status, retry_after),
                code: Some(i64::from(status)),
                body,
            }
        }
        Err(error) => {
            let what = if error.is_timeout() {
                "timed out"
            } else if error.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            // The causes say what went wrong (DNS, refused, TLS…); the URL is left out of the
            // text, since a signed URL carries credentials.
            let mut causes = Vec::new();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                causes.push(cause.to_string());
                source = cause.source();
            }
            let refused = causes.iter().any(|c| c.contains("SSRF guard"));
            let reason = format!("{what}: {}", causes.join(": "));
            Sent {
                result: if refused {
                    AttemptResult::Permanent { reason }
                } else {
                    AttemptResult::Transient {
                        reason,
                        retry_after: None,
                    }
                },
                code: None,
                body: Vec::new(),
            }
        }
    }
}

/// The two HTTP clients: `guarded` refuses host names that resolve to non-public addresses,
/// `open` is for targets explicitly allowed to reach them.
#[derive(Clone)]
pub struct Clients {
    pub guarded: reqwest::Client,
    pub open: reqwest::Client,
}

impl Clients {
    pub fn new() -> Result<Clients, reqwest::Error> {
        Ok(Clients {
            guarded: guarded_client()?,
            open: reqwest::Client::builder().build()?,
        })
    }
}

/// A client whose DNS resolution drops non-public addresses (and fails when none is left), so
/// that a public-looking host name cannot be pointed at an internal service.
pub fn guarded_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .dns_resolver(std::sync::Arc::new(PublicOnly))
        .build()
}

struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                let message =
                    format!("refused: `{host}` resolves to no public address (SSRF guard)");
                return Err(message.into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::delivery::signing::WebhookKey;

    fn target(url: &str) -> WebhookTarget {
        WebhookTarget {
            url: Secret::new(url),
            method: "POST".into(),
            headers: [("X-Team".to_string(), "ops".to_string())].into(),
            timeout: Duration::from_secs(3),
            secret: Some(WebhookKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()),
            allow_private: false,
        }
    }

    #[test]
    fn prepares_a_signed_request_for_a_named_target() {
        let targets = [("chat".to_string(), target("https://chat.example.com/hook"))].into();
        let ctx = WebhookContext {
            targets: &targets,
            allowlist: &[],
            allow_private: false,
        };
        let body = serde_json::json!({"text": "VIP call missed"});
        let req = prepare(&ctx, Some("chat"), None, &body, "1:0:vip", 1_700_000_000).unwrap();
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(header("webhook-id"), message_id("1:0:vip"));
        assert_eq!(header("x-team"), "ops");
        let key = WebhookKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert!(key.verify(
            &header("webhook-id"),
            1_700_000_000,
            &req.body,
            &header("webhook-signature")
        ));
        // The id is the same on every retry; the timestamp is not.
        let retry = prepare(&ctx, Some("chat"), None, &body, "1:0:vip", 1_700_000_060).unwrap();
        assert_eq!(retry.headers[1], req.headers[1]);
    }

    #[test]
    fn refuses_unknown_targets_unlisted_urls_and_private_addresses() {
        let targets = [("local".to_string(), target("http://127.0.0.1:9/x"))].into();
        let allowlist = vec!["https://hooks.example.com/".to_string()];
        let ctx = WebhookContext {
            targets: &targets,
            allowlist: &allowlist,
            allow_private: false,
        };
        let body = serde_json::json!({});
        assert_eq!(
            prepare(&ctx, Some("nope"), None, &body, "k", 0).unwrap_err(),
            PrepareError::UnknownTarget("nope".into())
        );
        assert!(matches!(
            prepare(&ctx, None, Some("https://evil.example.com/"), &body, "k", 0),
            Err(PrepareError::NotAllowed(_))
        ));
        assert!(
            prepare(
                &ctx,
                None,
                Some("https://hooks.example.com/a?sig=1"),
                &body,
                "k",
                0
            )
            .is_ok()
        );
        assert_eq!(
            prepare(&ctx, Some("local"), None, &body, "k", 0).unwrap_err(),
            PrepareError::PrivateAddress("127.0.0.1".into())
        );
        let open = WebhookContext {
            allow_private: true,
            ..ctx
        };
        assert!(prepare(&open, Some("local"), None, &body, "k", 0).is_ok());
        for ip in [
            "10.1.2.3",
            "192.168.0.1",
            "169.254.169.254",
            "::1",
            "fd00::1",
            "100.64.0.1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        assert!(is_public("93.184.216.34".parse().unwrap()));
    }
}
