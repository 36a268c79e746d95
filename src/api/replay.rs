//! Replay and what-if: `POST /v1/events/{id}/replay` and `POST /v1/replay` (re-run stored events
//! against the running rules, as a dry run or for real) and `POST /v1/what-if` (what a candidate
//! rules directory would change on the stored events of a time range).

use super::Path;
use super::{ApiError, AppState, JsonBody};
use crate::replay::{self, ReplayError, WhatIf};
use crate::time::{Millis, now_millis};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Most events one replay or what-if request covers.
pub const MAX_EVENTS: u32 = 100_000;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReplayOne {
    /// Default true: report only.
    dry_run: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRange {
    since: String,
    until: Option<String>,
    dry_run: Option<bool>,
    limit: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhatIfBody {
    rules_dir: String,
    since: String,
    until: Option<String>,
    limit: Option<u32>,
    examples: Option<usize>,
}

/// An optional JSON body: empty means every default.
fn body_or_default<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    super::error::parse_json(body)
}

/// A time, or a duration back from now (`7d`, `90m`) of at most [`super::MAX_DURATION`].
fn parse_since(name: &str, value: &str, now: Millis) -> Result<Millis, ApiError> {
    if let Ok(ago) = crate::time::parse_duration(value) {
        super::extract::check_duration(name, ago)?;
    }
    crate::time::parse_since(value, now).map_err(|e| super::events::invalid(name, e))
}

fn limit(limit: Option<u32>, default: u32) -> Result<u32, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=MAX_EVENTS).contains(&n) => Ok(n),
        Some(n) => Err(super::events::invalid(
            "limit",
            format!("must be from 1 to {MAX_EVENTS}, got {n}"),
        )),
    }
}

fn replay_error(error: ReplayError) -> ApiError {
    match error {
        ReplayError::NoSuchEvent(id) => ApiError::not_found(format!("no event with id {id}")),
        ReplayError::NoRulesDir(_) => ApiError::bad_request("invalid_parameter", error.to_string())
            .with("parameter", "rules_dir"),
        ReplayError::Unreadable(ref skipped) => {
            let id = skipped.id;
            ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "unreadable_event",
                error.to_string(),
            )
            .with("id", id)
        }
        other => ApiError::unavailable("the replay failed", &other),
    }
}

pub async fn replay_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| super::events::invalid("id", format!("must be an integer, got `{id}`")))?;
    let request: ReplayOne = body_or_default(&body)?;
    let dry_run = request.dry_run.unwrap_or(true);
    let replayed = replay::replay_event(state.store.clone(), &state.rules, id, dry_run)
        .await
        .map_err(replay_error)?;
    if !dry_run {
        state.wake_job_workers();
        tracing::info!(
            event = id,
            queued = replayed.queued,
            "event replayed for real"
        );
    }
    Ok(Json(serde_json::to_value(replayed).unwrap_or_default()))
}

pub async fn replay_range(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<ReplayRange>,
) -> Result<Json<Value>, ApiError> {
    let now = now_millis();
    let since = parse_since("since", &request.since, now)?;
    let until = match &request.until {
        Some(until) => super::events::parse_instant("until", until)?,
        None => now,
    };
    let dry_run = request.dry_run.unwrap_or(true);
    let limit = limit(request.limit, 1_000)?;
    let replay::RangeReplay {
        replayed,
        truncated,
        unreadable,
    } = replay::replay_range(
        state.store.clone(),
        &state.rules,
        since,
        until,
        limit,
        dry_run,
    )
    .await
    .map_err(replay_error)?;
    let queued: u64 = replayed.iter().map(|r| r.queued).sum();
    if !dry_run {
        state.wake_job_workers();
        tracing::info!(
            events = replayed.len(),
            queued,
            "time range replayed for real"
        );
    }
    let events: Vec<Value> = replayed
        .iter()
        .map(|r| {
            json!({
                "event_id": r.event_id,
                "matched": r.evaluation.matched().map(|v| v.rule.clone()).collect::<Vec<_>>(),
                "errors": r.evaluation.verdicts.iter().filter(|v| v.error.is_some())
                    .map(|v| json!({"rule": v.rule, "error": v.error})).collect::<Vec<_>>(),
                "actions": r.actions.len(),
                "queued": r.queued,
            })
        })
        .collect();
    Ok(Json(json!({
        "dry_run": dry_run,
        "run": replayed.first().and_then(|r| r.run.clone()),
        "since": since,
        "until": until,
        "truncated": truncated,
        "queued": queued,
        "events": events,
        "unreadable": unreadable,
    })))
}

/// The candidate rules directory of a what-if request, if it is one of the configured
/// `what_if_roots` or inside one (both resolved, so `..` and symlinks cannot step out).
fn candidate_dir(
    requested: &str,
    roots: &[std::path::PathBuf],
) -> Result<std::path::PathBuf, ApiError> {
    let refuse = |message: String| {
        ApiError::bad_request("invalid_parameter", message).with("parameter", "rules_dir")
    };
    if roots.is_empty() {
        return Err(refuse(
            "what-if reads candidate rules only from the directories listed in the \
             configuration's what_if_roots, and none are configured"
                .into(),
        ));
    }
    let resolved = std::path::Path::new(requested)
        .canonicalize()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => refuse(format!("`{requested}` does not exist")),
            _ => refuse(format!("`{requested}` cannot be opened: {e}")),
        })?;
    if !resolved.is_dir() {
        return Err(refuse(format!("`{requested}` is not a directory")));
    }
    let allowed = roots
        .iter()
        .filter_map(|root| root.canonicalize().ok())
        .any(|root| resolved.starts_with(root));
    if allowed {
        Ok(resolved)
    } else {
        Err(refuse(format!(
            "`{requested}` is outside the directories what-if may read (what_if_roots)"
        )))
    }
}

pub async fn what_if(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<WhatIfBody>,
) -> Result<Json<replay::WhatIfReport>, ApiError> {
    let now = now_millis();
    let what_if = WhatIf {
        rules_dir: candidate_dir(&request.rules_dir, &state.what_if_roots)?,
        settings: state.rule_settings.clone(),
        limits: state.rules.current().limits(),
        since: parse_since("since", &request.since, now)?,
        until: match &request.until {
            Some(until) => super::events::parse_instant("until", until)?,
            None => now,
        },
        limit: limit(request.limit, 10_000)?,
        examples: request.examples.unwrap_or(3).min(20),
    };
    let report = replay::what_if(state.store.clone(), &what_if)
        .await
        .map_err(replay_error)?;
    Ok(Json(report))
}
