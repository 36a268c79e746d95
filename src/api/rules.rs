//! Admin endpoints for rules: `GET /v1/rules` (status of every rule file) and
//! `POST /v1/rules/try` (a dry run of a payload: no side effects).

use super::{ApiError, AppState};
use crate::evaluation::{DryRunCounters, on_evaluation_thread};
use crate::rules::{RuleStatus, tools};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde::Serialize;
use std::sync::Arc;

/// The rules as they run now.
#[derive(Debug, Serialize)]
pub struct RulesView {
    /// The rule-set version events are evaluated against.
    pub version: String,
    pub dir: String,
    pub reloads: u64,
    pub reload_errors: u64,
    pub rules: Vec<RuleStatus>,
}

pub async fn list_rules(State(state): State<AppState>) -> Json<RulesView> {
    let rules = &state.rules;
    Json(RulesView {
        version: rules.current().version.clone(),
        dir: rules.dir().display().to_string(),
        reloads: rules.reloads.load(std::sync::atomic::Ordering::Relaxed),
        reload_errors: rules
            .reload_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        rules: rules.statuses(),
    })
}

/// Evaluates the posted payload against the current rules, as the processor would: windowed
/// counters are read from the store, and nothing is stored.
pub async fn try_rules(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<crate::rules::Evaluation>, ApiError> {
    let rules = state.rules.clone();
    let counters = Arc::new(DryRunCounters {
        store: state.store.clone(),
        runtime: tokio::runtime::Handle::current(),
    });
    let evaluation = on_evaluation_thread(move || tools::try_payload_with(&rules, &body, counters))
        .await
        .map_err(|e| ApiError::unavailable("the dry run failed", &e))?
        .map_err(|e| ApiError::bad_request("invalid_payload", e.to_string()))?;
    Ok(Json(evaluation))
}
