//! `POST /v1/notifications`: authenticate, parse, decode, commit durably, then acknowledge.

use super::{ApiError, AppState, auth};
use crate::committer::CommitError;
use crate::event::{self, BodyError, Warning};
use crate::store::NewEvent;
use crate::time::now_millis;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use std::net::SocketAddr;

/// The acknowledgement: the event's id, and whether it had been received before.
#[derive(Debug, Serialize)]
pub struct Ack {
    pub id: i64,
    pub duplicate: bool,
    /// What could not be decoded (the push is stored regardless).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
}

pub async fn post_notification(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let metrics = state.metrics.clone();
    let answer = accept(state, peer, uri, headers, body).await;
    match &answer {
        Ok((ack, _)) if ack.duplicate => metrics.notification("duplicate", ""),
        Ok((ack, _)) => {
            metrics.notification("accepted", "");
            metrics.decode_warnings.inc_by(ack.warnings.len() as u64);
        }
        Err(error) => metrics.notification("rejected", error.code),
    }
    answer.map(|(ack, status)| (status, Json(ack)).into_response())
}

async fn accept(
    state: AppState,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Ack, StatusCode), ApiError> {
    let presented = auth::bearer_token(&headers)
        .map(str::to_owned)
        .or_else(|| auth::query_token(&uri));
    if !state.ingest_tokens.accepts(presented.as_deref()) {
        tracing::warn!(
            token_given = presented.is_some(),
            "notification refused: missing or invalid ingest token"
        );
        return Err(ApiError::unauthorized(
            "missing or invalid ingest token (send `Authorization: Bearer <token>` or `?token=<token>`)",
        ));
    }
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "body_too_large",
                format!("body exceeds the limit of {} bytes", state.max_body_bytes),
            )
        } else {
            ApiError::new(status, "unreadable_body", rejection.body_text())
        }
    });
    let body = body.inspect_err(|e| tracing::warn!(reason = e.code, "notification refused"))?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let parsed = event::parse_body(&body, content_type.as_deref()).map_err(|e| {
        tracing::warn!(reason = %e, "notification refused");
        body_error(e)
    })?;
    let decoded = event::decode(&parsed);
    let new = NewEvent {
        dedupe_key: event::dedupe_key(&parsed.fields),
        received_at: now_millis(),
        source_addr: peer.map(|Extension(ConnectInfo(addr))| addr.to_string()),
        content_type,
        raw_body: body.to_vec(),
        event: decoded.event,
        warnings: decoded.warnings,
    };
    let warnings = new.warnings.clone();
    let inserted = state.committer.commit(new).await.map_err(|e| match e {
        CommitError::Closed => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the service is shutting down; nothing was stored, retry later",
        ),
        CommitError::Store(error) => {
            ApiError::not_stored("storing the notification failed", &*error)
        }
    })?;
    let status = if inserted.duplicate {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let ack = Ack {
        id: inserted.id,
        duplicate: inserted.duplicate,
        warnings,
    };
    Ok((ack, status))
}

fn body_error(error: BodyError) -> ApiError {
    let message = error.to_string();
    match error {
        BodyError::Empty => ApiError::bad_request("empty_body", message),
        BodyError::NotUtf8 { offset } => {
            ApiError::bad_request("invalid_utf8", message).with("offset", offset)
        }
        BodyError::Syntax { line, column, .. } => ApiError::bad_request("invalid_json", message)
            .with("line", line)
            .with("column", column),
        BodyError::NotAnObject { .. } => ApiError::bad_request("not_an_object", message),
        BodyError::Form { .. } => ApiError::bad_request("invalid_form", message),
        BodyError::TooDeep { limit, offset } => ApiError::bad_request("too_deep", message)
            .with("limit", limit)
            .with("offset", offset),
        BodyError::NulCharacter { field } => {
            ApiError::bad_request("invalid_text", message).with("field", field)
        }
    }
}
