//! The HTTP surface: `router(state)` assembles intake, admin read-back and health endpoints, with
//! JSON errors for unknown paths and methods, request ids and request tracing (paths only: query
//! strings can carry tokens and are never logged).

mod auth;
mod error;
mod events;
mod intake;
mod mutes;
mod overview;
mod replay;
mod rules;
mod work;

pub use auth::TokenSet;
pub use error::{ApiError, JsonBody};
pub use events::{EventPage, EventView, parse_query as parse_event_query};
pub use intake::Ack;

use crate::committer::Committer;
use crate::rules::Rules;
use crate::store::Store;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub committer: Committer,
    pub rules: Arc<Rules>,
    pub ingest_tokens: TokenSet,
    pub admin_tokens: TokenSet,
    pub max_body_bytes: usize,
    /// This process, as it reports itself in `instances`.
    pub instance_id: String,
    /// Rule settings, for evaluating candidate rules (what-if) as the running ones are.
    pub rule_settings: crate::rules::RuleSettings,
    /// Woken when an operator queues jobs (a real replay).
    pub job_workers: Arc<crate::delivery::worker::Wakers>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl AppState {
    /// Lets every delivery worker look for due jobs now.
    pub fn wake_job_workers(&self) {
        self.job_workers.wake_all();
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    let intake = Router::new()
        .route("/v1/notifications", post(intake::post_notification))
        .layer(DefaultBodyLimit::max(state.max_body_bytes));
    let admin = Router::new()
        .route("/v1/events", get(events::list_events))
        .route("/v1/events/{id}", get(events::get_event))
        .route("/v1/events/{id}/replay", post(replay::replay_event))
        .route("/v1/events/{id}/retry", post(events::retry_event))
        .route("/v1/quarantine", get(events::list_quarantined))
        .route("/v1/replay", post(replay::replay_range))
        .route("/v1/what-if", post(replay::what_if))
        .route("/v1/overview", get(overview::overview))
        .route("/v1/instances", get(overview::instances))
        .route("/v1/mutes", get(mutes::list_mutes).post(mutes::add_mute))
        .route("/v1/mutes/{id}/lift", post(mutes::lift_mute))
        .route("/metrics", get(overview::metrics))
        .route("/v1/rules", get(rules::list_rules))
        .route("/v1/rules/try", post(rules::try_rules))
        .route("/v1/jobs", get(work::list_jobs))
        .route("/v1/jobs/{id}", get(work::get_job))
        .route("/v1/jobs/{id}/retry", post(work::retry_job))
        .route("/v1/jobs/{id}/cancel", post(work::cancel_job))
        .route("/v1/callback-tasks", get(work::list_tasks))
        .route("/v1/callback-tasks/{id}", get(work::get_task))
        .route("/v1/callback-tasks/{id}/claim", post(work::claim_task))
        .route(
            "/v1/callback-tasks/{id}/complete",
            post(work::complete_task),
        )
        .route("/v1/callback-tasks/{id}/cancel", post(work::cancel_task))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    let health = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/openapi.json", get(openapi));
    Router::new()
        .merge(intake)
        .merge(admin)
        .merge(health)
        .merge(crate::console::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(
            tower::ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, NextRequestId::default()))
                .layer(TraceLayer::new_for_http().make_span_with(request_span))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID)),
        )
}

/// The span every request's log lines carry: method, path (never the query) and request id.
fn request_span(request: &Request) -> tracing::Span {
    let id = request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or("-");
    tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
}

/// Request ids unique within this process: a per-process prefix and a counter.
#[derive(Clone, Default)]
struct NextRequestId {
    counter: Arc<AtomicU64>,
}

impl MakeRequestId for NextRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:x}-{n}", std::process::id());
        Some(RequestId::new(id.parse().ok()?))
    }
}

async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if state
        .admin_tokens
        .accepts(auth::bearer_token(request.headers()))
    {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::unauthorized(
            "missing or invalid admin token (send `Authorization: Bearer <admin token>`)",
        ))
    }
}

/// The OpenAPI document of this API (kept beside the routes it describes; a test checks that
/// every documented path and method is served).
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(error) => {
            tracing::warn!(%error, "readiness check: store unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "message": "store unreachable"})),
            )
                .into_response()
        }
    }
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {}", request.uri().path()))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}
