//! Webhook actions: `prepare` (PURE) turns a job into the exact request (target resolved from
//! the config, a rule's URL checked against the allowlist, body built, Standard Webhooks
//! signature); `send` (I/O) moves the bytes and classifies the answer. Unless the target may
//! reach private addresses, every address a request connects to is checked (SSRF guard: see
//! [`super::address`]); redirects are never followed: a 3xx answer is a failed attempt naming
//! its (redacted) `Location`. The targets' settings (`[webhooks.NAME]`) are here too.

use super::address::{self, AllowedUrl, Refusal, redact};
use super::retry::{AttemptResult, classify_http, parse_retry_after};
use super::signing::{SecretError, WebhookKey};
use crate::secret::Secret;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;
use url::Url;

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
    /// The URL, redacted.
    #[error("URL `{0}` is not on the webhook allowlist (delivery.webhook_url_allowlist)")]
    NotAllowed(String),
    #[error("the job names neither a target nor a URL")]
    NoDestination,
    /// The URL, redacted.
    #[error("invalid URL `{0}`")]
    BadUrl(String),
    /// The target's name (its URL is a secret).
    #[error("webhook target `{0}` has an invalid URL")]
    BadTargetUrl(String),
}

/// A webhook target: where a rule's `webhook(#{ target: "NAME" })` goes (`[webhooks.NAME]`).
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

/// `[webhooks.NAME]` as written in the configuration file.
#[derive(Deserialize)] // no Debug: it holds a secret as written
#[serde(deny_unknown_fields)]
pub struct WebhookTargetFile {
    url: String,
    method: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    timeout_secs: Option<u64>,
    secret: Option<String>,
    #[serde(default)]
    allow_private: bool,
}

/// Why a webhook target's settings are refused.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The URL itself is not shown: it may carry a credential.
    #[error("not an http or https URL")]
    Url,
    #[error(transparent)]
    Secret(#[from] SecretError),
}

impl TargetError {
    /// The setting at fault.
    pub fn setting(&self) -> &'static str {
        match self {
            TargetError::Url => "webhooks.*.url",
            TargetError::Secret(_) => "webhooks.*.secret",
        }
    }
}

impl WebhookTargetFile {
    /// The target, its signing secret decoded and its URL checked.
    pub fn build(self) -> Result<WebhookTarget, TargetError> {
        let secret = self.secret.as_deref().map(WebhookKey::parse).transpose()?;
        if !Url::parse(&self.url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
        {
            return Err(TargetError::Url);
        }
        Ok(WebhookTarget {
            url: Secret::new(self.url),
            method: self
                .method
                .map_or_else(|| "POST".into(), |m| m.to_ascii_uppercase()),
            headers: self.headers,
            timeout: Duration::from_secs(self.timeout_secs.unwrap_or(10)),
            secret,
            allow_private: self.allow_private,
        })
    }
}

/// What the delivery side knows besides the job itself.
pub struct WebhookContext<'a> {
    pub targets: &'a BTreeMap<String, WebhookTarget>,
    pub allowlist: &'a [AllowedUrl],
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
            let parsed = Url::parse(url).map_err(|_| PrepareError::BadUrl(redact(url)))?;
            if !ctx.allowlist.iter().any(|entry| entry.admits(&parsed)) {
                return Err(PrepareError::NotAllowed(redact(url)));
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
    if let Some(name) = target
        && Url::parse(&url).is_err()
    {
        return Err(PrepareError::BadTargetUrl(name.to_string()));
    }
    let allow_private = allow_private || ctx.allow_private;
    Ok(PreparedRequest {
        method,
        url,
        headers,
        body,
        timeout,
        allow_private,
    })
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

/// Sends a prepared request. Unless the request may reach private addresses, an IP literal in
/// its URL is checked here and every DNS answer by the guarded client (see [`guarded_client`]):
/// a refusal is a permanent failure, and nothing is sent. A redirect is not followed.
pub async fn send(clients: &Clients, request: &PreparedRequest) -> Sent {
    let failed = |result: AttemptResult| Sent {
        result,
        code: None,
        body: Vec::new(),
    };
    let permanent = |reason: String| failed(AttemptResult::Permanent { reason });
    let Ok(url) = Url::parse(&request.url) else {
        return permanent(format!("invalid URL `{}`", redact(&request.url)));
    };
    if !request.allow_private
        && let Err(refusal) = address::check_url(&url)
    {
        return permanent(refusal.to_string());
    }
    let client = if request.allow_private {
        &clients.open
    } else {
        &clients.guarded
    };
    let Ok(method) = reqwest::Method::from_bytes(request.method.as_bytes()) else {
        return permanent(format!("invalid HTTP method `{}`", request.method));
    };
    let mut builder = client
        .request(method, url.clone())
        .timeout(request.timeout)
        .body(request.body.clone());
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    match builder.send().await {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let header = |name| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                    .map(str::to_string)
            };
            let retry_after = header(reqwest::header::RETRY_AFTER)
                .as_deref()
                .and_then(parse_retry_after);
            let location = header(reqwest::header::LOCATION);
            let mut body = Vec::new();
            // The answer counts once its status is in; a body cut short changes nothing.
            while let Ok(Some(chunk)) = response.chunk().await {
                let room = KEPT_BODY_BYTES.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            let result = match classify_http(status, retry_after) {
                AttemptResult::Permanent { .. } if (300..400).contains(&status) => {
                    AttemptResult::Permanent {
                        reason: redirect_reason(status, &url, location.as_deref()),
                    }
                }
                result => result,
            };
            Sent {
                result,
                code: Some(i64::from(status)),
                body,
            }
        }
        Err(error) => {
            // A refusal by the guarded resolver is the whole story.
            if let Some(refusal) = causes(&error).find_map(|c| c.downcast_ref::<Refusal>()) {
                return permanent(refusal.to_string());
            }
            let what = if error.is_timeout() {
                "timed out"
            } else if error.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            // The causes say what went wrong (DNS, refused, TLS…); the URL is left out of the
            // text, since a signed URL carries credentials.
            let causes: Vec<String> = causes(&error).map(ToString::to_string).collect();
            failed(AttemptResult::Transient {
                reason: format!("{what}: {}", causes.join(": ")),
                retry_after: None,
            })
        }
    }
}

/// The causes of an error, outermost first (the error itself excluded).
fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(error.source(), |cause| cause.source())
}

/// Why a 3xx answer failed the attempt: redirects are never followed (the next hop could be
/// anywhere, a private address included). Names where it pointed, resolved against the request's
/// URL and redacted.
pub fn redirect_reason(status: u16, url: &Url, location: Option<&str>) -> String {
    let to = match location.map(|l| url.join(l)) {
        Some(Ok(next)) => format!("redirect to `{}`", redact(next.as_str())),
        Some(Err(_)) => "redirect to an unreadable Location".to_string(),
        None => "redirect without a Location".to_string(),
    };
    format!("HTTP {status}: {to} not followed (redirects are never followed; give the final URL)")
}

/// The two HTTP clients: `guarded` refuses host names that resolve to non-public addresses,
/// `open` is for targets explicitly allowed to reach them. Neither follows redirects nor uses a
/// proxy from the environment (`HTTP_PROXY` and the like): the guard must see the address each
/// request connects to.
#[derive(Clone)]
pub struct Clients {
    pub guarded: reqwest::Client,
    pub open: reqwest::Client,
}

impl Clients {
    pub fn new() -> Result<Clients, reqwest::Error> {
        Ok(Clients {
            guarded: guarded_client()?,
            open: client_builder().build()?,
        })
    }
}

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
}

/// A client whose DNS resolution keeps only public addresses (and fails when none is left), so
/// that a public-looking host name cannot be pointed at an internal service: the connection goes
/// to one of the addresses checked, never to a second lookup's answer.
pub fn guarded_client() -> Result<reqwest::Client, reqwest::Error> {
    client_builder()
        .dns_resolver(std::sync::Arc::new(PublicOnly))
        .build()
}

struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let (public, refused): (Vec<std::net::SocketAddr>, Vec<_>) =
                tokio::net::lookup_host((host.as_str(), 0))
                    .await?
                    .partition(|a| address::is_public(a.ip()));
            if public.is_empty() {
                let refusal = match refused.first().map(|a| a.ip()) {
                    Some(ip) => match address::non_public_range(ip) {
                        Some(range) => Refusal::Resolved { host, ip, range },
                        None => Refusal::Unresolved(host),
                    },
                    None => Refusal::Unresolved(host),
                };
                return Err(refusal.into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn refuses_unknown_targets_and_unlisted_urls_redacted() {
        let targets = [("local".to_string(), target("http://127.0.0.1:9/x"))].into();
        let allowlist = vec![AllowedUrl::parse("https://hooks.example.com/in").unwrap()];
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
        for url in [
            "https://evil.example.com/in?sig=s3cret",
            "https://hooks.example.com/inx?sig=s3cret",
            "https://hooks.example.com.evil/in?sig=s3cret",
            "http://hooks.example.com/in?sig=s3cret",
        ] {
            let error = prepare(&ctx, None, Some(url), &body, "k", 0).unwrap_err();
            assert!(matches!(error, PrepareError::NotAllowed(_)), "{url}");
            assert!(!error.to_string().contains("s3cret"), "{error}");
        }
        let error = prepare(&ctx, None, Some("no url?sig=s3cret"), &body, "k", 0).unwrap_err();
        assert_eq!(error, PrepareError::BadUrl("no url?…".into()));
        let ok = prepare(
            &ctx,
            None,
            Some("https://hooks.example.com/in/a?sig=1"),
            &body,
            "k",
            0,
        )
        .unwrap();
        assert_eq!(ok.url, "https://hooks.example.com/in/a?sig=1");
        assert!(!ok.allow_private);
        // A private target is prepared; `send` refuses it unless it may reach private addresses.
        assert!(
            !prepare(&ctx, Some("local"), None, &body, "k", 0)
                .unwrap()
                .allow_private
        );
        let open = WebhookContext {
            allow_private: true,
            ..ctx
        };
        assert!(
            prepare(&open, Some("local"), None, &body, "k", 0)
                .unwrap()
                .allow_private
        );
    }

    #[test]
    fn redirects_are_named_redacted() {
        let url = Url::parse("https://hooks.example.com/in/hook?sig=1").unwrap();
        assert_eq!(
            redirect_reason(307, &url, Some("http://127.0.0.1:8080/x?sig=s3cret")),
            "HTTP 307: redirect to `http://127.0.0.1:8080/x?…` not followed (redirects are never \
             followed; give the final URL)"
        );
        assert!(
            redirect_reason(302, &url, Some("../moved"))
                .contains("`https://hooks.example.com/moved`")
        );
        assert!(redirect_reason(301, &url, Some("http://[::1")).contains("unreadable Location"));
        assert!(redirect_reason(300, &url, None).contains("without a Location"));
    }
}
