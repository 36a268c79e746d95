//! Admin read-back of stored events: `GET /v1/events/{id}` and `GET /v1/events?…`; quarantined
//! events: `GET /v1/quarantine` and `POST /v1/events/{id}/retry`.

use super::work::JobView;
use super::{ApiError, AppState};
use super::{Path, Query};
use crate::event::{CallEvent, Warning};
use crate::store::{
    EvaluationRecord, EventQuery, JobStatus, Millis, ProcessingState, StoredEvaluation,
    StoredEvent, Unreadable,
};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
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
    /// Failed processing attempts so far (while it waits in the queue).
    #[serde(skip_serializing_if = "is_zero")]
    pub failures: i64,
    /// Why the last processing attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it was quarantined (state `quarantined`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantined_at: Option<String>,
    /// Why the stored row could not be read back; `event` and `warnings` are then empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
    /// The decoded view.
    pub event: CallEvent,
    pub warnings: Vec<Warning>,
    /// The body exactly as received (only on the single-event view).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_body: Option<String>,
    /// The evaluation record, once processed (only on the single-event view).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<StoredEvaluation>,
    /// Each rule's verdict on the event (only on the single-event view, once processed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<RuleOutcome>>,
    /// The jobs the evaluation (and any replay) produced, each with its attempts (only on the
    /// single-event view).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jobs: Option<Vec<JobView>>,
}

/// What one rule made of an event.
#[derive(Debug, Serialize)]
pub struct RuleOutcome {
    pub rule: String,
    /// `matched`, `not_matched`, `error`, `throttled` (matched, its actions suppressed by its
    /// throttle) or `muted` (matched, its actions muted by an operator).
    pub verdict: &'static str,
    /// The error, or the throttle's or mute's note.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Each rule's verdict from the evaluation record and what became of its jobs (first run only).
fn rule_outcomes(record: &EvaluationRecord, jobs: &[JobView]) -> Vec<RuleOutcome> {
    let held_back = |rule: &str| {
        jobs.iter()
            .map(|j| &j.job)
            .filter(|j| j.rule == rule && j.replay_run.is_none())
            .find(|j| matches!(j.status, JobStatus::Suppressed | JobStatus::Muted))
    };
    let verdicts = record.verdicts.iter().map(|recorded| {
        let (verdict, detail) = match (&recorded.error, held_back(&recorded.rule)) {
            (Some(error), _) => ("error", Some(error.clone())),
            (None, Some(job)) if job.status == JobStatus::Muted => ("muted", job.note.clone()),
            (None, Some(job)) => ("throttled", job.note.clone()),
            (None, None) => ("matched", None),
        };
        RuleOutcome {
            rule: recorded.rule.clone(),
            verdict,
            detail,
        }
    });
    let not_matched = record.not_matched.iter().map(|rule| RuleOutcome {
        rule: rule.clone(),
        verdict: "not_matched",
        detail: None,
    });
    verdicts.chain(not_matched).collect()
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
            failures: stored.failures,
            last_error: stored.last_error,
            quarantined_at: stored.quarantined_at.map(rfc3339),
            unreadable: stored.unreadable,
            event: stored.event,
            warnings: stored.warnings,
            raw_body: with_raw.then(|| String::from_utf8_lossy(&stored.raw_body).into_owned()),
            evaluation: None,
            rules: None,
            jobs: None,
        }
    }
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// A page of events, newest first; pass `next_before` as `before` for the next page.
#[derive(Debug, Serialize)]
pub struct EventPage {
    pub events: Vec<EventView>,
    /// Events of the page left out because their stored row could not be read back (each is
    /// quarantined by processing; `GET /v1/events/{id}` shows its raw push).
    pub unreadable: Vec<Unreadable>,
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
    let mut jobs = Vec::new();
    for job in state.store.list_event_jobs(id).await.map_err(read_failed)? {
        let attempt_log = state
            .store
            .list_job_attempts(job.id)
            .await
            .map_err(read_failed)?;
        jobs.push(JobView { job, attempt_log });
    }
    view.rules = view
        .evaluation
        .as_ref()
        .and_then(|e| e.record.as_ref())
        .map(|record| rule_outcomes(record, &jobs));
    view.jobs = Some(jobs);
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
    let mut page = EventPage {
        events: Vec::with_capacity(events.len()),
        unreadable: Vec::new(),
        next_before,
    };
    for event in events {
        match event.unreadable {
            Some(reason) => page.unreadable.push(Unreadable {
                id: event.id,
                reason,
            }),
            None => page.events.push(EventView::new(event, false)),
        }
    }
    Ok(Json(page))
}

/// `POST /v1/events/{id}/retry`: puts a quarantined event back in the processing queue.
pub async fn retry_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<EventView>, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| invalid("id", format!("must be an integer, got `{id}`")))?;
    let read_failed = |e| ApiError::unavailable("reading the event failed", &e);
    let released = state
        .store
        .retry_event(id)
        .await
        .map_err(|e| ApiError::unavailable("retrying the event failed", &e))?;
    let stored = state
        .store
        .get_event(id)
        .await
        .map_err(read_failed)?
        .ok_or_else(|| ApiError::not_found(format!("no event with id {id}")))?;
    if !released {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_quarantined",
            format!(
                "event {id} is {}, not quarantined: only a quarantined event can be retried",
                stored.state.as_str()
            ),
        )
        .with("state", stored.state.as_str()));
    }
    tracing::info!(
        event = id,
        "quarantined event put back in the queue by an operator"
    );
    Ok(Json(EventView::new(stored, false)))
}

/// `GET /v1/quarantine`: quarantined events, newest first (at most [`MAX_PAGE`]).
pub async fn list_quarantined(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if let Some(key) = params.keys().next() {
        return Err(invalid(
            key,
            "is not a parameter here (there are none)".into(),
        ));
    }
    let events = state
        .store
        .list_quarantined(MAX_PAGE)
        .await
        .map_err(|e| ApiError::unavailable("listing quarantined events failed", &e))?;
    let events: Vec<serde_json::Value> = events
        .into_iter()
        .map(|q| {
            serde_json::json!({
                "id": q.event_id,
                "failures": q.failures,
                "last_error": q.last_error,
                "quarantined_at": rfc3339(q.quarantined_at),
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "events": events })))
}

/// The filters of `GET /v1/events?…` from its decoded query parameters (public for the fuzz
/// target).
pub fn parse_query(params: &HashMap<String, String>) -> Result<EventQuery, ApiError> {
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
    crate::time::parse_instant(value).map_err(|e| invalid(name, e))
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
