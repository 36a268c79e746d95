//! What a rule's `then` asks for and the delivery queue executes (PURE): each action fully
//! rendered from the event, as it is stored in a job's `spec`. Rules make them (`rules::actions`);
//! delivery reads them back; neither needs the other.

use serde::{Deserialize, Serialize};

/// One action, fully rendered from the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ActionRequest {
    Email(EmailSpec),
    Webhook {
        /// A configured target's name (URL, secret and headers live in the config).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
        /// A direct URL; allowed only if it matches the configured allowlist.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        /// The JSON body; by default the event and the rule name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<serde_json::Value>,
    },
    CallbackTask {
        phone: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        reason: String,
        /// Seconds from the event until the call-back is due.
        due_in_secs: u64,
        /// Higher is more urgent.
        priority: i64,
    },
    CloseCallbackTasks {
        phone: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
}

impl ActionRequest {
    /// The `kind` tag, as jobs are labelled.
    pub fn kind(&self) -> &'static str {
        match self {
            ActionRequest::Email(_) => "email",
            ActionRequest::Webhook { .. } => "webhook",
            ActionRequest::CallbackTask { .. } => "callback_task",
            ActionRequest::CloseCallbackTasks { .. } => "close_callback_tasks",
        }
    }
}

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
