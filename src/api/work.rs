//! Admin endpoints for what rules set in motion: jobs (`/v1/jobs`: list by status, one job with
//! its attempts, retry or cancel) and callback tasks (`/v1/callback-tasks`: the queue, one task,
//! claim, complete, cancel).

use super::{ApiError, AppState, JsonBody};
use super::{Path, Query};
use crate::store::{
    CallbackTask, JobStatus, StoredAttempt, StoredJob, TaskQuery, TaskStatus, TaskTransition,
};
use crate::time::now_millis;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

const MAX_PAGE: u32 = 500;

fn id_of(raw: &str, what: &str) -> Result<i64, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_parameter",
            format!("{what} id must be an integer, got `{raw}`"),
        )
    })
}

fn limit_of(params: &HashMap<String, String>) -> Result<u32, ApiError> {
    match params.get("limit") {
        None => Ok(50),
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_parameter",
                    format!("`limit` must be 1 to {MAX_PAGE}, got `{raw}`"),
                )
                .with("parameter", "limit")
            }),
    }
}

fn only(params: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    match params.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(ApiError::bad_request(
            "invalid_parameter",
            format!("unknown parameter `{key}` (known: {})", known.join(", ")),
        )
        .with("parameter", key.as_str())),
        None => Ok(()),
    }
}

/// The `status` parameter, if given: one of `names`.
fn status_of<T: std::str::FromStr>(
    params: &HashMap<String, String>,
    names: &[&str],
) -> Result<Option<T>, ApiError> {
    let Some(raw) = params.get("status") else {
        return Ok(None);
    };
    raw.parse().map(Some).map_err(|_| {
        ApiError::bad_request(
            "invalid_parameter",
            format!("`status` must be one of {}, got `{raw}`", names.join(", ")),
        )
        .with("parameter", "status")
    })
}

fn store_error(e: crate::store::StoreError) -> ApiError {
    ApiError::unavailable("the store failed", &e)
}

/// A page of jobs, newest first.
#[derive(Serialize)]
pub struct JobPage {
    pub jobs: Vec<StoredJob>,
    pub next_before: Option<i64>,
}

pub async fn list_jobs(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<JobPage>, ApiError> {
    only(&params, &["status", "before", "limit"])?;
    let status = status_of(&params, &JobStatus::ALL.map(JobStatus::as_str))?;
    let before = params
        .get("before")
        .map(|raw| id_of(raw, "`before` job"))
        .transpose()?;
    let limit = limit_of(&params)?;
    let jobs = state
        .store
        .list_jobs(status, before, limit)
        .await
        .map_err(store_error)?;
    let next_before = (jobs.len() == limit as usize)
        .then(|| jobs.last().map(|j| j.id))
        .flatten();
    Ok(Json(JobPage { jobs, next_before }))
}

/// One job and its attempts.
#[derive(Debug, Serialize)]
pub struct JobView {
    #[serde(flatten)]
    pub job: StoredJob,
    pub attempt_log: Vec<StoredAttempt>,
}

pub async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = id_of(&id, "job")?;
    let job = state
        .store
        .get_job(id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("no job with id {id}")))?;
    let attempt_log = state
        .store
        .list_job_attempts(id)
        .await
        .map_err(store_error)?;
    Ok(Json(JobView { job, attempt_log }))
}

pub async fn retry_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job_id = id_of(&id, "job")?;
    if !state
        .store
        .retry_job(job_id, now_millis())
        .await
        .map_err(store_error)?
    {
        return Err(conflict_or_missing(&state, job_id, "only a dead job can be retried").await);
    }
    get_job(State(state), Path(id)).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NoteBody {
    note: Option<String>,
}

pub async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<JobView>, ApiError> {
    let job_id = id_of(&id, "job")?;
    let note = super::error::parse_json_or_default::<NoteBody>(&body)?
        .note
        .unwrap_or_else(|| "cancelled by an operator".into());
    if !state
        .store
        .cancel_job(job_id, &note, now_millis())
        .await
        .map_err(store_error)?
    {
        return Err(conflict_or_missing(
            &state,
            job_id,
            "only a pending, retrying or dead job can be cancelled",
        )
        .await);
    }
    get_job(State(state), Path(id)).await
}

async fn conflict_or_missing(state: &AppState, id: i64, rule: &str) -> ApiError {
    match state.store.get_job(id).await {
        Ok(Some(job)) => ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("job {id} is {}: {rule}", job.status),
        ),
        Ok(None) => ApiError::not_found(format!("no job with id {id}")),
        Err(e) => store_error(e),
    }
}

pub async fn list_tasks(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Vec<CallbackTask>>, ApiError> {
    only(&params, &["status", "phone", "due_before", "limit"])?;
    let status = status_of(&params, &TaskStatus::ALL.map(TaskStatus::as_str))?;
    let due_before = params
        .get("due_before")
        .map(|raw| {
            raw.parse::<i64>()
                .ok()
                .or_else(|| crate::event::parse_time(raw).map(|t| t.timestamp_millis()))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_parameter",
                        format!("`due_before` must be a time, got `{raw}`"),
                    )
                    .with("parameter", "due_before")
                })
        })
        .transpose()?;
    let query = TaskQuery {
        status,
        phone: params.get("phone").cloned(),
        due_before,
        limit: limit_of(&params)?,
    };
    Ok(Json(
        state
            .store
            .list_callback_tasks(&query)
            .await
            .map_err(store_error)?,
    ))
}

pub async fn get_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CallbackTask>, ApiError> {
    let id = id_of(&id, "callback task")?;
    state
        .store
        .get_callback_task(id)
        .await
        .map_err(store_error)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no callback task with id {id}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    agent: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeBody {
    outcome: String,
}

pub async fn claim_task(
    state: State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ClaimBody>,
) -> Result<Json<CallbackTask>, ApiError> {
    let agent = Some(body.agent.as_str());
    move_task(state, &id, TaskTransition::Claim, agent, None).await
}

pub async fn complete_task(
    state: State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<OutcomeBody>,
) -> Result<Json<CallbackTask>, ApiError> {
    move_task(
        state,
        &id,
        TaskTransition::Complete,
        None,
        Some(&body.outcome),
    )
    .await
}

pub async fn cancel_task(
    state: State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<OutcomeBody>,
) -> Result<Json<CallbackTask>, ApiError> {
    move_task(
        state,
        &id,
        TaskTransition::Cancel,
        None,
        Some(&body.outcome),
    )
    .await
}

async fn move_task(
    State(state): State<AppState>,
    raw_id: &str,
    transition: TaskTransition,
    agent: Option<&str>,
    outcome: Option<&str>,
) -> Result<Json<CallbackTask>, ApiError> {
    let id = id_of(raw_id, "callback task")?;
    let moved = state
        .store
        .update_callback_task(id, transition, agent, outcome, now_millis())
        .await
        .map_err(store_error)?;
    let task = state
        .store
        .get_callback_task(id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("no callback task with id {id}")))?;
    if !moved {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "callback task {id} is {}; it can become {} only from {}",
                task.status,
                transition.to(),
                transition.from_names()
            ),
        ));
    }
    Ok(Json(task))
}
