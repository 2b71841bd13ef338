//! Extractors and layers that keep every answer in one shape: `{"error": {"code",
//! "message"}}`, whatever refused the request — a handler, an extractor (a bad query
//! string, a path segment that is not UTF-8), the router (404, 405) or a limit (413, 414,
//! 408 for a body that does not arrive).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use crate::{ApiError, ApiState};

/// A request body read whole, within the body limit and the body timeout: a client that
/// announces a body and never sends it is answered 408 instead of holding a task.
pub struct Body(pub Bytes);

impl FromRequest<Arc<ApiState>> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<ApiState>) -> Result<Self, ApiError> {
        let limit = state.config.body_limit;
        let announced = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > limit as u64) {
            return Err(too_large(limit));
        }
        let body = http_body_util::Limited::new(request.into_body(), limit);
        match tokio::time::timeout(state.config.body_timeout, body.collect()).await {
            Err(_) => Err(ApiError::timeout(format!(
                "the request body did not arrive within {} s",
                state.config.body_timeout.as_secs_f64()
            ))),
            Ok(Err(error)) => {
                if error
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    Err(too_large(limit))
                } else {
                    Err(ApiError::bad_request(format!(
                        "reading the request body: {error}"
                    )))
                }
            }
            Ok(Ok(collected)) => Ok(Self(collected.to_bytes())),
        }
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::too_large(format!("the request body is larger than {limit} bytes"))
}

/// `axum::extract::Query` whose rejection is the API's JSON error.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::bad_request(format!(
                "the query string is invalid: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// `axum::extract::Path` whose rejection is the API's JSON error.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::from_status(
                rejection.status(),
                format!("the path is invalid: {}", rejection.body_text()),
            )),
        }
    }
}

/// Refuses URIs longer than the limit with a JSON 414 (hyper itself answers a bare 414 only
/// past 64 KiB, far above this).
pub async fn limit_uri(
    axum::extract::State(state): axum::extract::State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    let length = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if length > state.config.max_uri_bytes {
        return ApiError::uri_too_long(format!(
            "the URI is {length} bytes; the limit is {}",
            state.config.max_uri_bytes
        ))
        .into_response();
    }
    next.run(request).await
}

/// Turns any error answer that is not already the API's JSON (a rejection of axum's own,
/// a timeout of a layer) into it, keeping its status and text.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    // Axum's own rejections are short plain text; anything longer is cut.
    let text = match axum::body::to_bytes(body, 4096).await {
        Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).into_owned(),
        _ => status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_string(),
    };
    let mut error = ApiError::from_status(status, text);
    if let Some(secs) = parts
        .headers
        .get(axum::http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        error.retry_after = Some(secs);
    }
    let mut response = error.into_response();
    // Keep headers that say how to retry or what is allowed (405's Allow).
    for name in [axum::http::header::ALLOW] {
        if let Some(value) = parts.headers.get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}
