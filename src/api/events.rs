//! Admin read-back of stored events: `GET /v1/events/{id}` and `GET /v1/events?…`.

use super::{ApiError, AppState};
use crate::event::{CallEvent, Warning, parse_time};
use crate::store::{EventQuery, Millis, ProcessingState, StoredEvaluation, StoredEvent, StoredJob};
use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use std::collections::HashMap;

/// Most events one page returns.
pub const MAX_PAGE: u32 = 500;
const DEFAULT_PAGE: u32 = 50;

/// One event as the API shows it.
#[derive(Debug, Serialize)]
pub struct EventView {
    pub id: i64,
    pub received_at: String,
    pub source_addr: Option<String>,
    pub content_type: Option<String>,
    pub dedupe_key: String,
    pub state: ProcessingState,
    pub attempts: i64,
    pub processed_at: Option<String>,
    /// The decoded view.
    pub event: CallEvent,
    pub warnings: Vec<Warning>,
    /// The body exactly as received (only on the single-event view).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_body: Option<String>,
    /// The evaluation record, once processed (only on the single-event view).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<StoredEvaluation>,
    /// The jobs the evaluation produced (only on the single-event view).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jobs: Option<Vec<StoredJob>>,
}

impl EventView {
    fn new(stored: StoredEvent, with_raw: bool) -> Self {
        EventView {
            id: stored.id,
            received_at: rfc3339(stored.received_at),
            source_addr: stored.source_addr,
            content_type: stored.content_type,
            dedupe_key: stored.dedupe_key,
            state: stored.state,
            attempts: stored.attempts,
            processed_at: stored.processed_at.map(rfc3339),
            event: stored.event,
            warnings: stored.warnings,
            raw_body: with_raw.then(|| String::from_utf8_lossy(&stored.raw_body).into_owned()),
            evaluation: None,
            jobs: None,
        }
    }
}

/// A page of events, newest first; pass `next_before` as `before` for the next page.
#[derive(Debug, Serialize)]
pub struct EventPage {
    pub events: Vec<EventView>,
    pub next_before: Option<i64>,
}

pub async fn get_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<EventView>, ApiError> {
    let id: i64 = id.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_parameter",
            format!("event id must be an integer, got `{id}`"),
        )
    })?;
    let stored = state
        .store
        .get_event(id)
        .await
        .map_err(|e| ApiError::unavailable("reading the event failed", &e))?
        .ok_or_else(|| ApiError::not_found(format!("no event with id {id}")))?;
    let read_failed = |e| ApiError::unavailable("reading the event's evaluation failed", &e);
    let mut view = EventView::new(stored, true);
    view.evaluation = state.store.get_evaluation(id).await.map_err(read_failed)?;
    view.jobs = Some(state.store.list_event_jobs(id).await.map_err(read_failed)?);
    Ok(Json(view))
}

pub async fn list_events(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<EventPage>, ApiError> {
    let query = parse_query(&params)?;
    let events = state
        .store
        .list_events(&query)
        .await
        .map_err(|e| ApiError::unavailable("listing events failed", &e))?;
    let next_before = (events.len() == query.limit as usize)
        .then(|| events.last().map(|e| e.id))
        .flatten();
    Ok(Json(EventPage {
        events: events
            .into_iter()
            .map(|e| EventView::new(e, false))
            .collect(),
        next_before,
    }))
}

fn parse_query(params: &HashMap<String, String>) -> Result<EventQuery, ApiError> {
    let mut query = EventQuery {
        limit: DEFAULT_PAGE,
        ..Default::default()
    };
    for (key, value) in params {
        let value = value.trim();
        match key.as_str() {
            "call_id" => query.call_id = Some(value.to_string()),
            "customer_phone" | "phone" => query.customer_phone = Some(value.to_string()),
            "outcome" => {
                // A normalized name, or a `call_result` as Udesk spells it (Japanese, Chinese).
                let outcome = crate::event::Outcome::from_call_result(value).ok_or_else(|| {
                    let names: Vec<&str> = crate::event::Outcome::ALL
                        .iter()
                        .map(|o| o.as_str())
                        .collect();
                    invalid(
                        "outcome",
                        format!("must be one of {}, got `{value}`", names.join(", ")),
                    )
                })?;
                query.outcome = Some(outcome.as_str().to_string())
            }
            "rule" => query.matched_rule = Some(value.to_string()),
            "since" => query.since = Some(parse_instant("since", value)?),
            "until" => query.until = Some(parse_instant("until", value)?),
            "before" => {
                query.before_id = Some(value.parse().map_err(|_| {
                    invalid(
                        "before",
                        format!("must be an event id (integer), got `{value}`"),
                    )
                })?)
            }
            "limit" => {
                query.limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        invalid(
                            "limit",
                            format!("must be an integer from 1 to {MAX_PAGE}, got `{value}`"),
                        )
                    })?
            }
            other => {
                return Err(ApiError::bad_request(
                    "invalid_parameter",
                    format!("unknown parameter `{other}` (known: call_id, customer_phone (or phone), outcome, rule, since, until, before, limit)"),
                )
                .with("parameter", other));
            }
        }
    }
    Ok(query)
}

/// RFC 3339, Udesk's `YYYY-MM-DD HH:MM:SS +ZZZZ`, or unix milliseconds.
pub(super) fn parse_instant(name: &str, value: &str) -> Result<Millis, ApiError> {
    if let Ok(ms) = value.parse::<i64>() {
        return Ok(ms);
    }
    parse_time(value).map(|t| t.timestamp_millis()).ok_or_else(|| {
        invalid(
            name,
            format!("must be a time (RFC 3339, `2026-11-20 10:15:42 +0800`, or unix milliseconds), got `{value}`"),
        )
    })
}

pub(super) fn invalid(parameter: &str, message: String) -> ApiError {
    ApiError::bad_request("invalid_parameter", format!("`{parameter}` {message}"))
        .with("parameter", parameter)
}

pub(super) fn rfc3339(ms: Millis) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}
