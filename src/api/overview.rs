//! The console's at-a-glance endpoints: `GET /v1/overview` (counts for a recent window) and
//! `GET /v1/instances` (every running instance and its rule set version, and whether they agree).

use super::Query;
use super::{ApiError, AppState};
use crate::store::InstanceInfo;
use crate::time::now_millis;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};

/// An instance counts as running when it was seen within this long (it reports every 5 s).
pub const INSTANCE_STALE_MS: i64 = 30_000;

/// `GET /v1/overview?minutes=60`
pub async fn overview(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let mut minutes = 60;
    for (key, value) in &params {
        match key.as_str() {
            "minutes" => {
                minutes = value
                    .parse::<i64>()
                    .ok()
                    .filter(|m| (1..=7 * 24 * 60).contains(m))
                    .ok_or_else(|| {
                        super::events::invalid(
                            "minutes",
                            format!("must be an integer from 1 to 10080, got `{value}`"),
                        )
                    })?
            }
            other => {
                return Err(super::events::invalid(
                    other,
                    "is not a parameter here (known: minutes)".into(),
                ));
            }
        }
    }
    let now = now_millis();
    let since = (now - minutes * 60_000).div_euclid(60_000) * 60_000;
    let counts = state
        .store
        .overview(since, now)
        .await
        .map_err(|e| ApiError::unavailable("reading the overview failed", &e))?;
    let mut jobs: BTreeMap<String, i64> = crate::store::JobStatus::ALL
        .into_iter()
        .map(|s| (s.to_string(), 0))
        .collect();
    jobs.extend(counts.jobs.clone());
    let statuses = state.rules.statuses();
    let instances = live_instances(&state, now).await?;
    Ok(Json(json!({
        "now": now,
        "since": since,
        "minutes": minutes,
        "events_per_minute": counts
            .events_per_minute
            .iter()
            .map(|(minute, events)| json!({"minute": minute, "events": events}))
            .collect::<Vec<_>>(),
        "events": counts.events,
        "matched_events": counts.matched_events,
        "rule_errors": counts.rule_errors,
        "jobs": jobs,
        "dead_jobs_total": counts.dead_jobs_total,
        "due_jobs": counts.due_jobs,
        "oldest_due_age_ms": counts.oldest_due_at.map(|at| (now - at).max(0)),
        "open_callback_tasks": counts.open_callback_tasks,
        "quarantined_events": counts.quarantined_events,
        "rules": {
            "version": state.rules.current().version,
            "count": statuses.len(),
            "broken": statuses.iter().filter(|s| s.error.is_some()).count(),
        },
        "instance": state.instance_id,
        "instances_agree": agree(&instances),
    })))
}

/// `GET /v1/instances`
pub async fn instances(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let now = now_millis();
    let instances = live_instances(&state, now).await?;
    let mut versions: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for instance in &instances {
        versions
            .entry(&instance.ruleset_version)
            .or_default()
            .push(&instance.id);
    }
    Ok(Json(json!({
        "this_instance": state.instance_id,
        "agree": agree(&instances),
        "ruleset_versions": versions,
        "instances": instances,
    })))
}

async fn live_instances(state: &AppState, now: i64) -> Result<Vec<InstanceInfo>, ApiError> {
    state
        .store
        .list_instances(now - INSTANCE_STALE_MS)
        .await
        .map_err(|e| ApiError::unavailable("listing instances failed", &e))
}

/// Whether every running instance evaluates with the same rule set.
fn agree(instances: &[InstanceInfo]) -> bool {
    instances
        .windows(2)
        .all(|w| w[0].ruleset_version == w[1].ruleset_version)
}

/// `GET /metrics`: Prometheus text. The gauges that describe the store (queue depth, dead jobs,
/// open tasks) and the rules are read now.
pub async fn metrics(State(state): State<AppState>) -> Result<axum::response::Response, ApiError> {
    use crate::metrics::{Metrics, RulesetLabels};
    use axum::response::IntoResponse;
    use std::sync::atomic::Ordering;
    let now = now_millis();
    let counts = state
        .store
        .overview(now, now)
        .await
        .map_err(|e| ApiError::unavailable("reading the queue for metrics failed", &e))?;
    let m = &state.metrics;
    m.jobs_due.set(counts.due_jobs);
    m.oldest_due_job_age_seconds.set(
        counts
            .oldest_due_at
            .map_or(0.0, |at| (now - at).max(0) as f64 / 1000.0),
    );
    m.dead_jobs.set(counts.dead_jobs_total);
    m.open_callback_tasks.set(counts.open_callback_tasks);
    m.quarantined_events.set(counts.quarantined_events);
    let rules = &state.rules;
    Metrics::catch_up(&m.rule_reloads, rules.reloads.load(Ordering::Relaxed));
    Metrics::catch_up(
        &m.rule_reload_errors,
        rules.reload_errors.load(Ordering::Relaxed),
    );
    let statuses = rules.statuses();
    m.rules_broken
        .set(statuses.iter().filter(|s| s.error.is_some()).count() as i64);
    m.ruleset.clear();
    m.ruleset
        .get_or_create(&RulesetLabels {
            version: rules.current().version.clone(),
            instance: state.instance_id.clone(),
        })
        .set(1);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
        .into_response())
}
