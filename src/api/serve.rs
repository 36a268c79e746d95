//! Serving the router on a TCP listener, with the limits that keep slow or greedy clients from
//! holding the service: at most `max_connections` connections at once (further ones wait in the
//! listen backlog until one closes), a deadline for each request head (hyper closes a connection
//! that has not sent a complete head in time, idle keep-alive connections included), a deadline
//! for each request body, and one for the whole request; and a graceful shutdown that stops
//! accepting and lets open connections finish.

use super::ApiError;
use crate::metrics::Metrics;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tracing::Instrument;

/// Limits on HTTP clients (`[http]` in the configuration file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// How long a client has to send a complete request head (request line and headers) once it
    /// starts one, or once its connection is idle; then the connection is closed (no answer is
    /// possible before a head is read).
    pub header_read_timeout: Duration,
    /// How long a client has to send a whole request body, however it trickles in; then it gets
    /// 408 and the connection is closed.
    pub body_read_timeout: Duration,
    /// How long a request may take from its head to its answer; then the client gets 503
    /// `timeout` with `Retry-After` (the work already started is not cut short). Longer than
    /// `body_read_timeout`.
    pub request_timeout: Duration,
    /// Most connections open at once; further ones wait in the listen backlog until one closes.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting and waits for
/// open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &HttpLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut listener = listener;
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        // A connection is accepted only with a permit: beyond the limit, clients wait in the
        // kernel's backlog (and past it, their connection attempts are dropped and retried).
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            // axum's accept logs and backs off on errors such as too many open files.
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            _ = &mut shutdown => break,
        };
        let service = router
            .clone()
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watcher().watch(connection);
        let metrics = metrics.clone();
        metrics.http.connections.inc();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                if error.is_timeout() {
                    metrics.http.timeout("headers");
                    tracing::debug!(%peer, "closed a connection that sent no complete request head in time");
                } else {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
            }
            metrics.http.connections.dec();
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// What [`read_body`] needs.
#[derive(Clone)]
pub(super) struct BodyLimits {
    pub timeout: Duration,
    pub max_bytes: usize,
    pub metrics: Arc<Metrics>,
    /// Count refusals as rejected notifications (the intake route).
    pub intake: bool,
}

/// Reads the whole request body within the body deadline and size limit before the handler
/// runs: 408 `body_timeout` when it is not all there in time (however it trickles in), 413
/// `body_too_large` past the limit.
pub(super) async fn read_body(
    State(limits): State<BodyLimits>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let read =
        tokio::time::timeout(limits.timeout, axum::body::to_bytes(body, limits.max_bytes)).await;
    let refused = match read {
        Ok(Ok(bytes)) => {
            return next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
        }
        Ok(Err(error)) if is_length_limit(&error) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("body exceeds the limit of {} bytes", limits.max_bytes),
        ),
        Ok(Err(error)) => ApiError::bad_request(
            "unreadable_body",
            format!("the request body could not be read: {error}"),
        ),
        Err(_) => {
            limits.metrics.http.timeout("body");
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {}",
                    humantime::format_duration(limits.timeout)
                ),
            )
        }
    };
    tracing::warn!(reason = refused.code, "request refused");
    if limits.intake {
        limits.metrics.notification("rejected", refused.code);
    }
    let mut response = refused.into_response();
    if response.status() != StatusCode::BAD_REQUEST {
        // The rest of the body is not read: the connection cannot carry another request.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = source {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// The whole-request deadline: the handler runs as a task of its own, and when it has not
/// answered in time the client gets 503 `timeout` with `Retry-After`. The task is not cut short
/// (a store write half done is finished or rolled back by the store, never abandoned), so a push
/// may still be stored and its retry is then answered as a duplicate.
pub(super) async fn request_deadline(
    State((timeout, metrics)): State<(Duration, Arc<Metrics>)>,
    request: Request,
    next: Next,
) -> Response {
    let work = tokio::spawn(next.run(request).instrument(tracing::Span::current()));
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            tracing::error!(%error, "the request handler failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the request failed inside the service (logged); retry later",
            )
            .into_response()
        }
        Err(_) => {
            metrics.http.timeout("request");
            tracing::warn!(
                timeout = %humantime::format_duration(timeout),
                "request timed out; its work goes on in the background"
            );
            // A 503: `ApiError` adds `Retry-After`.
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!(
                    "no answer within {}; what the request started may still complete, retry later",
                    humantime::format_duration(timeout)
                ),
            )
            .into_response()
        }
    }
}
