//! `ApiError`: the one error type of the HTTP edge. Clients get a JSON body that says what they
//! did wrong; internal errors are logged in full and answered with a generic message.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

/// The `Retry-After` of every 503 answer, in seconds.
pub const RETRY_AFTER_SECS: &str = "5";

/// An error answer: status, a stable machine-readable `error` code and a human `message`, plus
/// optional extra fields (e.g. `line` and `column` for JSON syntax errors).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub extra: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: Map::new(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A failure of ours (store down, bug): logged with its cause, answered with 503 so that the
    /// caller may retry.
    pub fn unavailable(context: &str, error: &dyn std::error::Error) -> Self {
        tracing::error!(error = %error, "{context}");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{context}; retry later"),
        )
    }

    /// A push that could not be stored: like [`Self::unavailable`], and it says so, so that the
    /// sender knows it must send again.
    pub fn not_stored(context: &str, error: &dyn std::error::Error) -> Self {
        tracing::error!(error = %error, "{context}");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{context}; nothing was stored, retry later"),
        )
    }

    /// Adds a field to the JSON body.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }
}

/// The JSON error body, fields in a fixed order: `error`, `message`, then any extra.
#[derive(serde::Serialize)]
struct ErrorBody {
    error: &'static str,
    message: String,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code,
            message: self.message,
            extra: self.extra,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        // A 503 is a failure of ours that a retry may get past (a full disk freed, a database
        // back after a restart): say when to try again.
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}

/// A JSON request body whose rejection is an [`ApiError`]: 400 `invalid_body` with serde's
/// message naming the field, and its `line` and `column` (not axum's plain-text answer).
pub struct JsonBody<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let body = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                ApiError::new(rejection.status(), "unreadable_body", rejection.body_text())
            })?;
        parse_json(&body).map(JsonBody)
    }
}

/// Parses a JSON request body, or says where it is wrong (and which text is too long: no string
/// in an admin body may exceed [`super::extract::MAX_TEXT`] bytes).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let invalid = |e: serde_json::Error| {
        ApiError::bad_request("invalid_body", format!("the JSON body is not valid: {e}"))
            .with("line", e.line())
            .with("column", e.column())
    };
    let parsed = serde_json::from_slice(body).map_err(invalid)?;
    super::extract::check_texts(&serde_json::from_slice(body).map_err(invalid)?)?;
    Ok(parsed)
}

/// An optional JSON request body: empty (or only whitespace) means every default.
pub fn parse_json_or_default<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_json(body)
}
