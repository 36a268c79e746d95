//! Dispatch of new callback tasks: where they go (`[callback_dispatch]`), `prepare_web_callback`
//! (PURE) builds the signed request to Udesk's web callback API (Udesk rings the customer, then
//! an agent), `classify_answer` (PURE) reads Udesk's `{"code": 1000}` answer; the task-as-webhook
//! body for a webhook target.
//!
//! The request is authenticated by query parameters (`email`, `timestamp`, `nonce`,
//! `sign_version=v2`, `sign = sha256("email&token&timestamp&nonce&v2")`): the URL carries a
//! credential, so it never appears in attempt records or logs.

use super::retry::AttemptResult;
use super::signing::udesk_sign;
use super::webhook::{PreparedRequest, WebhookTarget};
use crate::secret::{self, ReadError, Secret};
use crate::store::CallbackTask;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The path of the web callback API under the account's base URL.
pub const WEB_CALLBACK_PATH: &str = "/open_api_v1/callcenter/web_callback";

/// Udesk's success code in an answer body.
pub const UDESK_OK: i64 = 1000;

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

/// `[callback_dispatch]` as written in the configuration file: exactly one of
/// `webhook = "NAME"` or `[callback_dispatch.udesk]`.
#[derive(Deserialize)] // no Debug: it holds a secret as written
#[serde(deny_unknown_fields)]
pub struct CallbackDispatchFile {
    webhook: Option<String>,
    udesk: Option<UdeskApiFile>,
}

#[derive(Deserialize)] // no Debug: it holds a secret as written
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

/// Why `[callback_dispatch]` is refused.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("no webhook target named `{0}` ([webhooks.{0}])")]
    UnknownTarget(String),
    #[error("give `token` or `token_file`")]
    NoToken,
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("`{0}` is not an http(s) URL")]
    BaseUrl(String),
    #[error("give exactly one of `webhook = \"NAME\"` or `[callback_dispatch.udesk]`")]
    NotExactlyOne,
}

impl DispatchError {
    /// The setting at fault.
    pub fn setting(&self) -> &'static str {
        match self {
            DispatchError::UnknownTarget(_) => "callback_dispatch.webhook",
            DispatchError::NoToken => "callback_dispatch.udesk.token",
            DispatchError::Read(_) => "callback_dispatch.udesk.token_file",
            DispatchError::BaseUrl(_) => "callback_dispatch.udesk.base_url",
            DispatchError::NotExactlyOne => "callback_dispatch",
        }
    }
}

impl CallbackDispatchFile {
    /// The destination, checked: a webhook must be one of `targets`; Udesk's token is read from
    /// its file if it is given as one.
    pub fn build(
        self,
        targets: &BTreeMap<String, WebhookTarget>,
    ) -> Result<CallbackDispatch, DispatchError> {
        match (self.webhook, self.udesk) {
            (Some(target), None) if targets.contains_key(&target) => {
                Ok(CallbackDispatch::Webhook(target))
            }
            (Some(target), None) => Err(DispatchError::UnknownTarget(target)),
            (None, Some(udesk)) => {
                let token = secret::inline_or_file(udesk.token, udesk.token_file.as_deref())?
                    .ok_or(DispatchError::NoToken)?;
                let base_url = udesk.base_url.trim_end_matches('/').to_string();
                if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
                    return Err(DispatchError::BaseUrl(base_url));
                }
                Ok(CallbackDispatch::Udesk(UdeskApi {
                    base_url,
                    email: udesk.email,
                    token: Secret::new(token.trim()),
                    relay_number: udesk.relay_number,
                    timeout: Duration::from_secs(udesk.timeout_secs.unwrap_or(10)),
                    allow_private: udesk.allow_private,
                }))
            }
            _ => Err(DispatchError::NotExactlyOne),
        }
    }
}

/// The web callback request for `task`: `from_number` is the customer, `to_number` the relay
/// number, and `variables` (strings and numbers only, as Udesk requires) say which task and why.
/// `nonce_seed` makes the nonce unique per attempt (e.g. the job key and attempt number).
pub fn prepare_web_callback(
    api: &UdeskApi,
    task: &CallbackTask,
    nonce_seed: &str,
    timestamp: i64,
) -> PreparedRequest {
    let nonce = hex::encode(&Sha256::digest(format!("{nonce_seed}:{timestamp}"))[..16]);
    let sign = udesk_sign(&api.email, api.token.expose(), timestamp, &nonce);
    let query = serde_urlencoded::to_string([
        ("email", api.email.as_str()),
        ("timestamp", &timestamp.to_string()),
        ("nonce", &nonce),
        ("sign_version", "v2"),
        ("sign", &sign),
    ])
    .unwrap_or_default();
    let reason = task
        .reasons
        .as_array()
        .and_then(|reasons| reasons.last())
        .and_then(|r| r["reason"].as_str())
        .unwrap_or_default();
    let body = serde_json::json!({
        "from_number": task.phone,
        "to_number": api.relay_number,
        "variables": {
            "switchboard_task_id": task.id,
            "priority": task.priority,
            "reason": reason,
        },
    });
    PreparedRequest {
        method: "POST".into(),
        url: format!("{}{WEB_CALLBACK_PATH}?{query}", api.base_url),
        headers: vec![("content-type".into(), "application/json".into())],
        body: serde_json::to_vec(&body).unwrap_or_default(),
        timeout: api.timeout,
        allow_private: api.allow_private,
    }
}

/// What Udesk's answer means, given the HTTP result (`http`) and the body. A 2xx answer succeeds
/// only with `"code": 1000`; another code is Udesk refusing the request (permanent), and an
/// unreadable body is treated as a proxy or outage page (retry).
pub fn classify_answer(http: AttemptResult, body: &[u8]) -> AttemptResult {
    if !matches!(http, AttemptResult::Success) {
        return http;
    }
    let answer: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    match answer.as_ref().and_then(|a| a["code"].as_i64()) {
        Some(UDESK_OK) => AttemptResult::Success,
        Some(code) => {
            let message = answer
                .as_ref()
                .and_then(|a| a["message"].as_str())
                .unwrap_or("no message");
            AttemptResult::Permanent {
                reason: format!("Udesk refused the web callback: code {code}: {message}"),
            }
        }
        None => AttemptResult::Transient {
            reason: format!(
                "Udesk's answer has no numeric `code`: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
            retry_after: None,
        },
    }
}

/// The body sent to a webhook target for a new task.
pub fn task_webhook_body(task: &CallbackTask) -> serde_json::Value {
    serde_json::json!({ "type": "callback_task.created", "callback_task": task })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> UdeskApi {
        UdeskApi {
            base_url: "https://demo.udesk.cn".into(),
            email: "admin@udesk.cn".into(),
            token: Secret::new("tok-123"),
            relay_number: "01086465040".into(),
            timeout: Duration::from_secs(5),
            allow_private: false,
        }
    }

    fn task() -> CallbackTask {
        CallbackTask {
            id: 7,
            phone: "13666666666".into(),
            customer_name: None,
            status: crate::store::TaskStatus::Open,
            priority: 2,
            due_at: 0,
            reasons: serde_json::json!([{ "reason": "abandoned after 95 s", "event_id": 1 }]),
            claimed_by: None,
            outcome: None,
            created_at: 0,
            updated_at: 0,
            closed_at: None,
        }
    }

    #[test]
    fn request_is_signed_and_carries_the_task() {
        let request =
            prepare_web_callback(&api(), &task(), "callback-task:7:dispatch:1", 1_494_474_404);
        let (base, query) = request.url.split_once('?').unwrap();
        assert_eq!(
            base,
            "https://demo.udesk.cn/open_api_v1/callcenter/web_callback"
        );
        let params: std::collections::HashMap<String, String> =
            serde_urlencoded::from_str(query).unwrap();
        assert_eq!(params["email"], "admin@udesk.cn");
        assert_eq!(params["timestamp"], "1494474404");
        assert_eq!(params["sign_version"], "v2");
        assert_eq!(
            params["sign"],
            udesk_sign("admin@udesk.cn", "tok-123", 1_494_474_404, &params["nonce"])
        );
        assert!(
            !request.url.contains("tok-123"),
            "the token itself is never sent"
        );
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["from_number"], "13666666666");
        assert_eq!(body["to_number"], "01086465040");
        assert_eq!(body["variables"]["switchboard_task_id"], 7);
        assert_eq!(body["variables"]["reason"], "abandoned after 95 s");
    }

    #[test]
    fn nonce_differs_per_attempt() {
        let a = prepare_web_callback(&api(), &task(), "k:1", 100);
        let b = prepare_web_callback(&api(), &task(), "k:2", 100);
        assert_ne!(a.url, b.url);
    }

    #[test]
    fn answers_are_classified() {
        let ok = || AttemptResult::Success;
        assert_eq!(
            classify_answer(ok(), br#"{"code":1000}"#),
            AttemptResult::Success
        );
        assert!(matches!(
            classify_answer(ok(), br#"{"code":2001,"message":"bad sign"}"#),
            AttemptResult::Permanent { reason } if reason.contains("2001") && reason.contains("bad sign")
        ));
        assert!(matches!(
            classify_answer(ok(), b"<html>gateway</html>"),
            AttemptResult::Transient { .. }
        ));
        let down = AttemptResult::Transient {
            reason: "HTTP 503".into(),
            retry_after: None,
        };
        assert_eq!(classify_answer(down.clone(), b""), down);
    }
}
