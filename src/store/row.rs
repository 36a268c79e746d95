//! The `events` row as both backends read and write it, and its conversion to [`StoredEvent`].

use super::{Millis, NewEvent, ProcessingState, StoreError, StoredEvent};

/// The columns every event query selects, in [`EventRow`]'s order.
pub(super) const EVENT_COLUMNS: &str = "id, dedupe_key, received_at, source_addr, content_type, \
     raw_body, decoded, warnings, state, attempts, processed_at, last_error";

#[derive(sqlx::FromRow)]
pub(super) struct EventRow {
    id: i64,
    dedupe_key: String,
    received_at: Millis,
    source_addr: Option<String>,
    content_type: Option<String>,
    raw_body: Vec<u8>,
    decoded: String,
    warnings: String,
    state: String,
    attempts: i64,
    processed_at: Option<Millis>,
    last_error: Option<String>,
}

/// The JSON text columns of a new event.
pub(super) struct JsonColumns {
    pub decoded: String,
    pub warnings: String,
}

impl EventRow {
    pub(super) fn columns_of(new: &NewEvent) -> Result<JsonColumns, StoreError> {
        let encode = |what, r: serde_json::Result<String>| {
            r.map_err(|e| StoreError::Corrupt {
                what,
                message: e.to_string(),
            })
        };
        Ok(JsonColumns {
            decoded: encode("decoded event", serde_json::to_string(&new.event))?,
            warnings: encode("warnings", serde_json::to_string(&new.warnings))?,
        })
    }

    pub(super) fn into_stored(self) -> Result<StoredEvent, StoreError> {
        let corrupt = |what: &'static str, message: String| StoreError::Corrupt { what, message };
        Ok(StoredEvent {
            id: self.id,
            dedupe_key: self.dedupe_key,
            received_at: self.received_at,
            source_addr: self.source_addr,
            content_type: self.content_type,
            raw_body: self.raw_body,
            event: serde_json::from_str(&self.decoded)
                .map_err(|e| corrupt("decoded event", e.to_string()))?,
            warnings: serde_json::from_str(&self.warnings)
                .map_err(|e| corrupt("warnings", e.to_string()))?,
            state: ProcessingState::parse(&self.state)
                .ok_or_else(|| corrupt("state", self.state.clone()))?,
            attempts: self.attempts,
            processed_at: self.processed_at,
            last_error: self.last_error,
        })
    }
}
