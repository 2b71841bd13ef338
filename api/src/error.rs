//! API errors as JSON bodies with a status and a stable code.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
#[error("{status}: {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds after which a retry may succeed (`Retry-After`), for 429 and 503.
    pub retry_after: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: bad_request, unauthorized, not_found,
    /// method_not_allowed, conflict (a name that exists already), timeout (the request did
    /// not arrive in time), too_large, uri_too_long, too_many_requests, unavailable,
    /// deadline_exceeded (a query ran past its deadline), internal.
    pub code: String,
    /// What was wrong, for a person.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The code for a status that no handler chose (a rejection, a fallback, hyper).
    pub fn code_for(status: StatusCode) -> &'static str {
        match status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::CONFLICT => "conflict",
            StatusCode::REQUEST_TIMEOUT => "timeout",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::URI_TOO_LONG => "uri_too_long",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            StatusCode::GATEWAY_TIMEOUT => "deadline_exceeded",
            s if s.is_server_error() => "internal",
            _ => "bad_request",
        }
    }

    /// The JSON error for a bare status (a rejection, a fallback).
    pub fn from_status(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, Self::code_for(status), message)
    }

    pub fn too_many_requests(message: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut error = Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message);
        error.retry_after = Some(retry_after_secs);
        error
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            message,
        )
    }

    pub fn uri_too_long(message: impl Into<String>) -> Self {
        Self::new(StatusCode::URI_TOO_LONG, "uri_too_long", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// What the request would create exists already.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// Well-formed, but not something the service can do (a model that does not fit).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this endpoint needs `Authorization: Bearer <token>`",
        )
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// The client was too slow (its body did not arrive in time).
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "timeout", message)
    }

    /// Our own work ran past its deadline (a query). Not 408, which says the client was
    /// slow and which browsers retry on their own, running the heavy query again.
    pub fn deadline(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl From<risksense_store::StoreError> for ApiError {
    fn from(error: risksense_store::StoreError) -> Self {
        if error.is_unavailable() {
            let mut error = Self::unavailable(format!("the result store is unavailable: {error}"));
            error.retry_after = Some(1);
            error
        } else {
            Self::internal(error.to_string())
        }
    }
}

impl From<risksense_query::QueryError> for ApiError {
    fn from(error: risksense_query::QueryError) -> Self {
        Self::internal(error.to_string())
    }
}

impl From<risksense_formats::FormatError> for ApiError {
    fn from(error: risksense_formats::FormatError) -> Self {
        Self::internal(error.to_string())
    }
}

/// A standing query refused or failed: the user's SQL is a 400 (with what is supported),
/// a name in use a 409, an unknown one a 404, a stream still starting or a store that does
/// not answer a 503 (with Retry-After).
impl From<risksense_continuous::ContinuousError> for ApiError {
    fn from(error: risksense_continuous::ContinuousError) -> Self {
        use risksense_continuous::ContinuousError;
        match error {
            ContinuousError::Exists(_) => Self::conflict(error.to_string()),
            ContinuousError::NotFound(_) => Self::not_found(error.to_string()),
            ContinuousError::Store(store) => store.into(),
            ContinuousError::Unavailable(_) => {
                let mut error = Self::unavailable(error.to_string());
                error.retry_after = Some(1);
                error
            }
            error if error.is_user_error() => Self::bad_request(error.to_string()),
            error => Self::internal(error.to_string()),
        }
    }
}

/// Encoding or casting Arrow data we produced ourselves: a server fault, never bad input.
impl From<arrow::error::ArrowError> for ApiError {
    fn from(error: arrow::error::ArrowError) -> Self {
        Self::internal(error.to_string())
    }
}

/// A body the extractor refused (too large, unreadable) as a JSON error.
impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::too_large(format!("request body too large: {}", rejection.body_text()))
        } else {
            Self::new(rejection.status(), "bad_request", rejection.body_text())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, message = %self.message, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}
