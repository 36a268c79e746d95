//! Events that fail to load or to process: the failure records the processor writes
//! ([`EventFailure`]), what the store lists as quarantined ([`QuarantinedEvent`]), and the SQL
//! both backends run for them.

use super::{EventId, Millis};
use serde::Serialize;

/// One failed processing attempt of a claimed event, and what happens next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFailure {
    pub event_id: EventId,
    /// Failed attempts so far, this one included.
    pub failures: i64,
    /// Why it failed (no secrets: never the stored values themselves).
    pub reason: String,
    pub next: EventNext,
}

/// What happens to an event after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventNext {
    /// Claimable again from this time on.
    RetryAt(Millis),
    /// Left out of processing until an operator retries it.
    Quarantine,
}

/// A quarantined event, as the overview lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct QuarantinedEvent {
    pub event_id: EventId,
    pub failures: i64,
    pub last_error: Option<String>,
    pub quarantined_at: Millis,
}

/// An event left out of a listing, replay or what-if because its stored row could not be read
/// back (processing quarantines it; its trace shows the raw push).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    pub id: EventId,
    pub reason: String,
}

/// Binds: failures, reason, retry at (0 when quarantined), quarantined at (or NULL), event id,
/// owner.
pub(super) const FAIL_EVENT: &str = "UPDATE event_queue SET failures = $1, last_error = $2, \
     lease_owner = NULL, lease_until = $3, quarantined_at = $4 \
     WHERE event_id = $5 AND lease_owner = $6";

/// Binds: event id. The last error stays, so that the trace still says why it was quarantined.
pub(super) const RETRY_EVENT: &str = "UPDATE event_queue SET quarantined_at = NULL, failures = 0, \
     lease_owner = NULL, lease_until = 0 WHERE event_id = $1 AND quarantined_at IS NOT NULL";

/// Binds: limit.
pub(super) const LIST_QUARANTINED: &str = "SELECT event_id, failures, last_error, quarantined_at \
     FROM event_queue WHERE quarantined_at IS NOT NULL ORDER BY event_id DESC LIMIT $1";

/// The number of quarantined events.
pub(super) const COUNT_QUARANTINED: &str =
    "SELECT COUNT(*) FROM event_queue WHERE quarantined_at IS NOT NULL";

/// A reason as stored: NUL characters (which PostgreSQL text cannot hold) dropped, and cut to
/// a length an operator can read.
pub(super) fn stored_reason(reason: &str) -> String {
    const MAX_CHARS: usize = 2_000;
    let clean: String = reason
        .chars()
        .filter(|c| *c != '\0')
        .take(MAX_CHARS)
        .collect();
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_storable() {
        assert_eq!(stored_reason("a\0b"), "ab");
        assert_eq!(stored_reason(&"x".repeat(5_000)).len(), 2_000);
    }
}
