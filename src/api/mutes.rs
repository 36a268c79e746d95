//! Mutes: `GET /v1/mutes` (in force, or `?all=true`), `POST /v1/mutes` (silence a rule or a
//! phone until a time, with a reason) and `POST /v1/mutes/{id}/lift`. Muted actions are recorded
//! as jobs with status `muted` and the mute as their note, never run.

use super::{ApiError, AppState, JsonBody};
use super::{Path, Query};
use crate::store::Mute;
use crate::time::now_millis;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;

/// `POST /v1/mutes`: `scope` (`rule` or `phone`), `value` (the rule's name or the phone), the
/// end as `until` (a time) or `for` (a duration such as `2h`), and a `reason`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMute {
    scope: String,
    value: String,
    until: Option<String>,
    #[serde(rename = "for")]
    duration: Option<String>,
    reason: String,
}

pub async fn list_mutes(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let mut all = false;
    for (key, value) in &params {
        match (key.as_str(), value.as_str()) {
            ("all", "true") => all = true,
            ("all", "false") => all = false,
            ("all", other) => {
                return Err(super::events::invalid(
                    "all",
                    format!("must be true or false, got `{other}`"),
                ));
            }
            (other, _) => {
                return Err(super::events::invalid(
                    other,
                    "is not a parameter here (known: all)".into(),
                ));
            }
        }
    }
    let mutes = state
        .store
        .list_mutes(!all, now_millis())
        .await
        .map_err(|e| ApiError::unavailable("listing mutes failed", &e))?;
    Ok(Json(json!({ "mutes": mutes })))
}

pub async fn add_mute(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewMute>,
) -> Result<(StatusCode, Json<Mute>), ApiError> {
    let bad = |field: &str, message: String| super::events::invalid(field, message);
    if !matches!(body.scope.as_str(), "rule" | "phone") {
        return Err(bad(
            "scope",
            format!("must be `rule` or `phone`, got `{}`", body.scope),
        ));
    }
    let value = body.value.trim();
    if value.is_empty() {
        return Err(bad("value", "must name the rule or the phone".into()));
    }
    if body.reason.trim().is_empty() {
        return Err(bad(
            "reason",
            "must say why (it is recorded on every muted action)".into(),
        ));
    }
    let now = now_millis();
    let until = match (&body.until, &body.duration) {
        (Some(until), None) => {
            let until = super::events::parse_instant("until", until)?;
            super::extract::check_time("until", until)?;
            until
        }
        (None, Some(duration)) => {
            let d = super::extract::bounded_duration("for", duration)?;
            now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        }
        _ => {
            return Err(bad(
                "until",
                "give exactly one of `until` (a time) or `for` (a duration like \"2h\")".into(),
            ));
        }
    };
    if until <= now {
        return Err(bad("until", "must be in the future".into()));
    }
    let mute = state
        .store
        .add_mute(&body.scope, value, until, body.reason.trim(), now)
        .await
        .map_err(|e| ApiError::unavailable("storing the mute failed", &e))?;
    tracing::info!(scope = %mute.scope, value = %mute.value, until = mute.until, reason = %mute.reason, "muted");
    Ok((StatusCode::CREATED, Json(mute)))
}

pub async fn lift_mute(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| super::events::invalid("id", format!("must be an integer, got `{id}`")))?;
    let lifted = state
        .store
        .lift_mute(id, now_millis())
        .await
        .map_err(|e| ApiError::unavailable("lifting the mute failed", &e))?;
    if !lifted {
        return Err(ApiError::not_found(format!(
            "no mute in force with id {id}"
        )));
    }
    tracing::info!(id, "mute lifted");
    Ok(Json(json!({ "id": id, "lifted": true })))
}
