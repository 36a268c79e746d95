//! The bounds every admin input is held to, and the query and path extractors that enforce them
//! with JSON rejections naming the parameter: each query parameter at most once, every text at
//! most [`MAX_TEXT`] bytes, every duration at most [`MAX_DURATION`].

use super::ApiError;
use axum::extract::FromRequestParts;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

/// Longest text an admin input may carry (a mute's value or reason, a note, a query value).
pub const MAX_TEXT: usize = 1024;

/// Longest duration an admin input may give (a mute's `for`, a replay's `since` back from now).
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// A 400 `invalid_parameter` naming `parameter`.
fn invalid(parameter: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_parameter", format!("`{parameter}` {message}"))
        .with("parameter", parameter)
}

/// `text` as a duration of at most [`MAX_DURATION`], or a 400 naming `parameter`.
pub fn bounded_duration(parameter: &str, text: &str) -> Result<Duration, ApiError> {
    let duration = crate::time::parse_duration(text).map_err(|e| invalid(parameter, e))?;
    check_duration(parameter, duration)?;
    Ok(duration)
}

/// A 400 naming `parameter` when `duration` is longer than [`MAX_DURATION`].
pub fn check_duration(parameter: &str, duration: Duration) -> Result<(), ApiError> {
    if duration > MAX_DURATION {
        return Err(invalid(
            parameter,
            format!(
                "spans more than {} days (the most an admin request may span)",
                MAX_DURATION.as_secs() / 86_400
            ),
        ));
    }
    Ok(())
}

/// The latest time an admin input may name: the end of year 9999 (unix milliseconds).
pub const LATEST_TIME_MS: i64 = 253_402_300_799_999;

/// A 400 naming `parameter` when `ms` is past [`LATEST_TIME_MS`] (a calendar time, not a number
/// near `i64::MAX` that later arithmetic could overflow).
pub fn check_time(parameter: &str, ms: i64) -> Result<(), ApiError> {
    if ms > LATEST_TIME_MS {
        return Err(invalid(parameter, "is after the year 9999"));
    }
    Ok(())
}

/// Checks every string in a JSON body (values and keys, at any depth) against [`MAX_TEXT`];
/// the error names the field (`note`, `a.b[2]`).
pub fn check_texts(value: &Value) -> Result<(), ApiError> {
    fn walk(value: &Value, path: &mut String) -> Result<(), ApiError> {
        match value {
            Value::String(text) if text.len() > MAX_TEXT => {
                let name = if path.is_empty() { "body" } else { path };
                Err(too_long(name, text.len()))
            }
            Value::Array(items) => {
                for (n, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{n}]"));
                    walk(item, path)?;
                    path.truncate(len);
                }
                Ok(())
            }
            Value::Object(fields) => {
                for (key, item) in fields {
                    if key.len() > MAX_TEXT {
                        return Err(too_long("body", key.len()).with("detail", "a field name"));
                    }
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                    walk(item, path)?;
                    path.truncate(len);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
    walk(value, &mut String::new())
}

fn too_long(parameter: &str, len: usize) -> ApiError {
    invalid(
        parameter,
        format!("is {len} bytes long; at most {MAX_TEXT} are accepted"),
    )
}

/// The query string, deserialized (usually into a `HashMap<String, String>`) after checking that
/// no parameter is repeated (`limit=1&limit=2` is refused rather than silently taking one) and
/// that no value is longer than [`MAX_TEXT`]. Rejections are 400 JSON naming the parameter.
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let raw = parts.uri.query().unwrap_or_default();
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw).map_err(|e| {
            ApiError::bad_request(
                "invalid_parameter",
                format!("the query string cannot be read: {e}"),
            )
        })?;
        let mut seen = HashSet::new();
        for (key, value) in &pairs {
            if key.len() > MAX_TEXT {
                return Err(too_long("query", key.len()).with("detail", "a parameter name"));
            }
            if !seen.insert(key.as_str()) {
                return Err(invalid(key, "is given more than once; give it once"));
            }
            if value.len() > MAX_TEXT {
                return Err(too_long(key, value.len()));
            }
        }
        serde_urlencoded::from_str(raw).map(Query).map_err(|e| {
            ApiError::bad_request(
                "invalid_parameter",
                format!("the query string does not fit this endpoint: {e}"),
            )
        })
    }
}

/// Path parameters, as axum's `Path`, with a 400 JSON rejection naming the parameter (e.g. an
/// id that percent-decodes to something that is not UTF-8).
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(PathRejection::FailedToDeserializePathParams(error)) => {
                let message = error.body_text();
                match error.into_kind() {
                    ErrorKind::InvalidUtf8InPathParam { key }
                    | ErrorKind::ParseErrorAtKey { key, .. }
                    | ErrorKind::DeserializeError { key, .. } => Err(invalid(&key, message)),
                    _ => Err(ApiError::bad_request("invalid_parameter", message)),
                }
            }
            Err(other) => Err(ApiError::new(
                other.status(),
                "invalid_parameter",
                other.body_text(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn long_texts_are_named_by_their_path() {
        assert!(check_texts(&json!({"note": "short", "list": ["a", 1]})).is_ok());
        let long = "x".repeat(MAX_TEXT + 1);
        let error = check_texts(&json!({"note": long})).unwrap_err();
        assert_eq!(error.extra["parameter"], "note");
        let error = check_texts(&json!({"a": {"b": ["ok", long]}})).unwrap_err();
        assert_eq!(error.extra["parameter"], "a.b[1]");
        assert!(check_texts(&json!("x".repeat(MAX_TEXT))).is_ok());
    }

    #[test]
    fn durations_are_capped_without_overflow() {
        assert_eq!(
            bounded_duration("for", "2h").unwrap(),
            Duration::from_secs(7200)
        );
        assert!(bounded_duration("for", "366d").is_ok());
        let error = bounded_duration("for", "367d").unwrap_err();
        assert_eq!(error.extra["parameter"], "for");
        let error = bounded_duration("for", "100000000000d").unwrap_err();
        assert!(
            error.message.contains("more than 366 days"),
            "{}",
            error.message
        );
        let error = bounded_duration("for", "99999999999999999999999d").unwrap_err();
        assert_eq!(error.extra["parameter"], "for");
        assert!(check_time("until", LATEST_TIME_MS).is_ok());
        assert!(check_time("until", LATEST_TIME_MS + 1).is_err());
    }
}
