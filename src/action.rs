//! What a rule's `then` asks for and the delivery queue executes (PURE): each action fully
//! rendered from the event, as it is stored in a job's `spec`, and the kinds of job that run them.
//! Rules make them (`rules::actions`); delivery reads them back; neither needs the other.

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
    /// The kind of job that runs it (its `kind` tag).
    pub fn kind(&self) -> JobKind {
        match self {
            ActionRequest::Email(_) => JobKind::Email,
            ActionRequest::Webhook { .. } => JobKind::Webhook,
            ActionRequest::CallbackTask { .. } => JobKind::CallbackTask,
            ActionRequest::CloseCallbackTasks { .. } => JobKind::CloseCallbackTasks,
        }
    }
}

/// What a job does: one kind per action (named as [`ActionRequest`]'s `kind` tag), and the
/// dispatch of a new callback task. Each kind has its own worker. Stored and shown by its
/// snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Email,
    Webhook,
    CallbackTask,
    CloseCallbackTasks,
    /// Sends a new callback task out (Udesk's web callback API or a webhook); queued by the
    /// store with the task, its spec is `{"task_id": …}`.
    CallbackDispatch,
}

impl JobKind {
    pub const ALL: [JobKind; 5] = [
        JobKind::Email,
        JobKind::Webhook,
        JobKind::CallbackTask,
        JobKind::CloseCallbackTasks,
        JobKind::CallbackDispatch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Email => "email",
            JobKind::Webhook => "webhook",
            JobKind::CallbackTask => "callback_task",
            JobKind::CloseCallbackTasks => "close_callback_tasks",
            JobKind::CallbackDispatch => "callback_dispatch",
        }
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for JobKind {
    type Err = UnknownName;

    fn from_str(name: &str) -> Result<Self, UnknownName> {
        UnknownName::find("job kind", name, Self::ALL, Self::as_str)
    }
}

/// A name that is none of a closed set's (a job kind, a status), e.g. read from a stored row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{name}`")]
pub struct UnknownName {
    pub what: &'static str,
    pub name: String,
}

impl UnknownName {
    /// The one of `all` named `name`.
    pub fn find<T: Copy>(
        what: &'static str,
        name: &str,
        all: impl IntoIterator<Item = T>,
        name_of: impl Fn(T) -> &'static str,
    ) -> Result<T, UnknownName> {
        all.into_iter()
            .find(|value| name_of(*value) == name)
            .ok_or_else(|| UnknownName {
                what,
                name: name.to_string(),
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_kinds_are_named_alike_everywhere() {
        for kind in JobKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
            assert_eq!(kind.as_str().parse(), Ok(kind));
        }
        let action = ActionRequest::CloseCallbackTasks {
            phone: "1".into(),
            note: None,
        };
        assert_eq!(
            serde_json::to_value(&action).unwrap()["kind"],
            action.kind().as_str()
        );
        assert!("teleport".parse::<JobKind>().is_err());
    }
}
