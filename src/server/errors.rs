//! One JSON error envelope, `{error, error_type}`, for every failure, including the framework's own
//! rejections (unknown route, wrong method, body too large), with the status table of the README.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::api::ErrorResponse;
use crate::engine::EngineError;

/// A failed request: its status, message and kind.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
    /// Its status and `error_type` on text-embeddings-inference's routes where the general rule
    /// of [`ApiError::tei`] does not give them (no texts, too many texts, a tokenizer's failure).
    pub tei: Option<(StatusCode, &'static str)>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            retry_after: None,
            tei: None,
        }
    }

    /// This error with TEI's status and `error_type` for it.
    pub fn with_tei(self, status: StatusCode, error_type: &'static str) -> Self {
        Self {
            tei: Some((status, error_type)),
            ..self
        }
    }

    /// The error as text-embeddings-inference answers it on its routes (`/rerank`, `/info`,
    /// `/health`): its status codes and the values of its `ErrorType` as its router writes them
    /// (`Validation`, `Tokenizer`, `Backend`, `Overloaded`, `Unhealthy`, `Empty`); the message
    /// stays xbench's, and so does `Retry-After`. TEI's rule, as v1.9's router has it: no texts
    /// 400 `Empty`; a request it refuses 422 `Validation` (too many texts, an input over the
    /// limit with truncation off, wrong fields), a body over the payload limit 413; the
    /// tokenizer's failure 422 `Tokenizer`; a failed inference 424 `Backend`; overload 429
    /// `Overloaded` (and so a request past its deadline: TEI has no deadlines, a client retries
    /// either alike); not ready 503 `Unhealthy`. Statuses TEI has no case for (401, 404, 405,
    /// 415) stay, with `Validation`.
    pub fn tei(self) -> Self {
        let (status, error_type) = self.tei.unwrap_or(match self.kind {
            "overloaded" | "deadline_exceeded" => (StatusCode::TOO_MANY_REQUESTS, "Overloaded"),
            "unavailable" => (StatusCode::SERVICE_UNAVAILABLE, "Unhealthy"),
            "internal" => (StatusCode::FAILED_DEPENDENCY, "Backend"),
            _ => (self.status, "Validation"),
        });
        Self {
            status,
            kind: error_type,
            tei: None,
            ..self
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unavailable(message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }

    /// The request's deadline passed before its scores were ready.
    pub fn deadline(timeout_ms: u64, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "deadline_exceeded",
                format!(
                    "the request was not scored within its deadline of {timeout_ms} ms (timeout_ms); the server is busy: retry after {retry_after} s or allow more time"
                ),
            )
        }
    }

    /// The engine's failure as the client should see it.
    pub fn from_engine(e: EngineError, retry_after: u64) -> Self {
        match &e {
            EngineError::UnknownModel { .. } => Self::not_found(e.to_string()),
            EngineError::Overloaded { .. } => Self {
                retry_after: Some(retry_after),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", e.to_string())
            },
            EngineError::Empty => {
                Self::bad_request(e.to_string()).with_tei(StatusCode::BAD_REQUEST, "Empty")
            }
            EngineError::TooLong { .. } | EngineError::Unsupported(_) => {
                Self::validation(e.to_string())
            }
            EngineError::Tokenize(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                crate::error_chain(&e),
            )
            .with_tei(StatusCode::UNPROCESSABLE_ENTITY, "Tokenizer"),
            EngineError::Backend(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                crate::error_chain(&e),
            ),
            EngineError::Shutdown => Self::unavailable(e.to_string(), retry_after),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, error = %self.message, "request failed");
        } else {
            tracing::debug!(status = %self.status, error = %self.message, "request refused");
        }
        let mut response = (
            self.status,
            Json(ErrorResponse {
                error: self.message,
                error_type: self.kind.to_string(),
            }),
        )
            .into_response();
        if let Some(s) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

/// Reads a JSON body: a body that is not JSON is 400, JSON of the wrong shape is 422 with the
/// path of the offending field.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let at = if path == "." {
                String::new()
            } else {
                format!("at '{path}': ")
            };
            match inner.classify() {
                serde_json::error::Category::Data => {
                    Err(ApiError::validation(format!("{at}{inner}")))
                }
                _ => Err(ApiError::bad_request(format!(
                    "the body is not valid JSON: {inner}"
                ))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every xbench error kind has its TEI status and `error_type` (the README's error table).
    #[test]
    fn each_error_answers_in_teis_vocabulary_on_teis_routes() {
        let tei = |e: ApiError| {
            let e = e.tei();
            (e.status.as_u16(), e.kind)
        };
        let cases = [
            (ApiError::bad_request("not JSON"), (400, "Validation")),
            (ApiError::from_engine(EngineError::Empty, 1), (400, "Empty")),
            (ApiError::validation("a field"), (422, "Validation")),
            (ApiError::too_large("the body"), (413, "Validation")),
            (ApiError::not_found("model"), (404, "Validation")),
            (ApiError::unavailable("loading", 1), (503, "Unhealthy")),
            (ApiError::deadline(100, 1), (429, "Overloaded")),
            (
                ApiError::from_engine(
                    EngineError::Overloaded {
                        queue: "batch",
                        capacity: 1,
                    },
                    1,
                ),
                (429, "Overloaded"),
            ),
            (
                ApiError::from_engine(EngineError::Tokenize("bad".into()), 1),
                (422, "Tokenizer"),
            ),
            (
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "failed"),
                (424, "Backend"),
            ),
        ];
        for (e, want) in cases {
            let before = (e.status, e.kind, e.retry_after);
            assert_eq!(tei(e.clone()), want, "{before:?}");
            // xbench's own routes keep xbench's answer; Retry-After stays on TEI's.
            assert_eq!((e.status, e.kind), (before.0, before.1));
            assert_eq!(e.tei().retry_after, before.2);
        }
    }
}
