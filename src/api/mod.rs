//! The HTTP surface: `router(state)` assembles intake, admin read-back and health endpoints, with
//! JSON errors for unknown paths and methods, request ids and request tracing (paths only: query
//! strings can carry tokens and are never logged).

mod auth;
mod error;
mod events;
mod extract;
mod intake;
mod mutes;
mod overview;
mod replay;
mod rules;
pub mod serve;
mod work;

pub use auth::TokenSet;
pub use error::{ApiError, JsonBody};
pub use events::{EventPage, EventView, parse_query as parse_event_query};
pub use extract::{MAX_DURATION, MAX_TEXT, Path, Query};
pub use intake::Ack;
pub use serve::HttpLimits;

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
    /// Directories what-if may read candidate rules from.
    pub what_if_roots: Vec<std::path::PathBuf>,
    /// Woken when an operator queues jobs (a real replay).
    pub job_workers: Arc<crate::wakeup::Wakers>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Whether the store takes this instance's writes (`/readyz`).
    pub health: Arc<crate::health::WriteHealth>,
    /// Deadlines for request bodies and whole requests.
    pub http: HttpLimits,
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
    let body_limits = |intake| serve::BodyLimits {
        timeout: state.http.body_read_timeout,
        max_bytes: state.max_body_bytes,
        metrics: state.metrics.clone(),
        intake,
    };
    let intake = Router::new()
        .route("/v1/notifications", post(intake::post_notification))
        .route_layer(middleware::from_fn_with_state(
            body_limits(true),
            serve::read_body,
        ))
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
        .route_layer(middleware::from_fn_with_state(
            body_limits(false),
            serve::read_body,
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    let health = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/openapi.json", get(openapi));
    let deadline = (state.http.request_timeout, state.metrics.clone());
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
                .map_request(drop_unplain_request_id)
                .layer(SetRequestIdLayer::new(REQUEST_ID, NextRequestId::default()))
                .layer(TraceLayer::new_for_http().make_span_with(request_span))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(middleware::from_fn_with_state(
                    deadline,
                    serve::request_deadline,
                )),
        )
}

/// Longest `x-request-id` a client may choose.
const MAX_REQUEST_ID: usize = 64;

/// A client's `x-request-id` is kept only when short and plain (`[A-Za-z0-9._-]`, at most 64
/// bytes, given once), so that it cannot forge log fields (`abc status=200 user=admin`) or bloat
/// every log line; otherwise it is dropped and the request gets a fresh id.
fn drop_unplain_request_id(mut request: Request) -> Request {
    let values = request.headers().get_all(&REQUEST_ID);
    let mut count = 0;
    let plain = values.iter().all(|value| {
        count += 1;
        let id = value.as_bytes();
        (1..=MAX_REQUEST_ID).contains(&id.len())
            && id
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    });
    if count > 0 && !(plain && count == 1) {
        request.headers_mut().remove(&REQUEST_ID);
    }
    request
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

async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    // Not ready while the intake's commits fail (a full disk, a lost database connection): a
    // push would get 503. Ready again after a commit, or an idle spell's probe write, succeeds.
    if let Some(failure) = state.health.intake_failure() {
        return Err(not_ready(
            "store_writes_failing",
            format!(
                "writing to the store fails ({}: {}); ready again once a write succeeds",
                failure.op, failure.error
            ),
        )
        .with("since", failure.since)
        .with("failures", failure.failures));
    }
    match state.store.ping().await {
        Ok(()) => Ok(Json(json!({"status": "ready"}))),
        Err(error) => {
            tracing::warn!(%error, "readiness check: store unreachable");
            Err(not_ready("store_unreachable", "store unreachable"))
        }
    }
}

/// A 503 from `/readyz`, in the error shape, with `status` and the `reason` as a code.
fn not_ready(reason: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message)
        .with("status", "unavailable")
        .with("reason", reason)
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
