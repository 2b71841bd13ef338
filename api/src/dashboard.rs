//! The dashboard: one HTML page and Chart.js (MIT, v4.6.1), both compiled into the binary so
//! that nothing is fetched from outside the machine.

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{Html, IntoResponse, Response};

use crate::ApiError;

const INDEX: &str = include_str!("../assets/index.html");
const CHART_JS: &str = include_str!("../assets/chart.umd.min.js");

pub async fn index() -> Html<&'static str> {
    Html(INDEX)
}

pub async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    match file.as_str() {
        "chart.umd.min.js" => Ok((
            [
                (CONTENT_TYPE, "text/javascript; charset=utf-8"),
                (CACHE_CONTROL, "public, max-age=86400"),
            ],
            CHART_JS,
        )
            .into_response()),
        _ => Err(ApiError::not_found(format!("no asset {file}"))),
    }
}
