//! Operations: Prometheus metrics, health and readiness, the dashboard's time series, and
//! the OpenAPI document.

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Float64Type;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use risksense_common::metrics::StreamMetrics;
use serde::Serialize;
use utoipa::OpenApi;

use crate::{ApiError, ApiState};

/// Seconds of history the dashboard's charts show.
const SERIES_POINTS: usize = 300;

/// One point of the dashboard's series: rates over the last second.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct Point {
    /// Seconds since the epoch.
    pub t: u64,
    pub messages_per_sec: f64,
    pub anomalies_per_sec: f64,
}

#[derive(Default)]
pub struct Series {
    points: Mutex<VecDeque<Point>>,
}

impl Series {
    fn push(&self, point: Point) {
        let mut points = self.points.lock().unwrap_or_else(|e| e.into_inner());
        points.push_back(point);
        while points.len() > SERIES_POINTS {
            points.pop_front();
        }
    }

    fn snapshot(&self) -> Vec<Point> {
        self.points
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }
}

/// Samples the stream's counters once a second into the series.
pub async fn sample_series(state: Arc<ApiState>) {
    let Some(stream) = state.stream.clone() else {
        return;
    };
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    let mut previous = (
        StreamMetrics::get(&stream.messages),
        StreamMetrics::get(&stream.anomalies),
    );
    loop {
        interval.tick().await;
        let now = (
            StreamMetrics::get(&stream.messages),
            StreamMetrics::get(&stream.anomalies),
        );
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        state.series.push(Point {
            t,
            messages_per_sec: now.0.saturating_sub(previous.0) as f64,
            anomalies_per_sec: now.1.saturating_sub(previous.1) as f64,
        });
        previous = now;
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Stats {
    /// Whether a stream runs in this process (else only the store is served).
    pub streaming: bool,
    pub messages: u64,
    pub rows_scored: u64,
    pub anomalies: u64,
    pub dead_letters: u64,
    pub consumer_lag: u64,
    pub threshold: f64,
    pub model: String,
    pub series: Vec<Point>,
    /// Score histogram of the live window: bucket lower edges and counts.
    pub histogram_edges: Vec<f64>,
    pub histogram_counts: Vec<u64>,
    pub live_rows: usize,
    pub cache_hits: u64,
    pub cache_misses: u64,
}

/// Counters, the last five minutes of throughput, and the live window's score histogram.
#[utoipa::path(get, path = "/v1/stats", responses((status = 200, body = Stats)))]
pub async fn stats(State(state): State<Arc<ApiState>>) -> Json<Stats> {
    let get = |c: Option<&AtomicU64>| c.map_or(0, |c| c.load(Relaxed));
    let stream = state.stream.as_deref();
    let threshold = state.model.card.threshold;
    // 30 buckets up to twice the threshold; the last holds everything above.
    let buckets = 30usize;
    let width = (2.0 * threshold / buckets as f64).max(1e-9);
    let edges: Vec<f64> = (0..buckets).map(|i| i as f64 * width).collect();
    let mut counts = vec![0u64; buckets];
    let mut live_rows = 0;
    if let Some(live) = &state.live {
        for batch in live.snapshot() {
            let Some(scores) = batch
                .column_by_name("score")
                .and_then(|c| c.as_primitive_opt::<Float64Type>())
            else {
                continue;
            };
            live_rows += batch.num_rows();
            for score in scores.values() {
                let bucket = ((score / width).max(0.0) as usize).min(buckets - 1);
                counts[bucket] += 1;
            }
        }
    }
    Json(Stats {
        streaming: stream.is_some(),
        messages: get(stream.map(|s| &s.messages)),
        rows_scored: get(stream.map(|s| &s.rows_scored)),
        anomalies: get(stream.map(|s| &s.anomalies)),
        dead_letters: get(stream.map(|s| &s.dead_letters)),
        consumer_lag: get(stream.map(|s| &s.lag)),
        threshold,
        model: state.model.card.name.clone(),
        series: state.series.snapshot(),
        histogram_edges: edges,
        histogram_counts: counts,
        live_rows,
        cache_hits: state.counters.cache_hits.load(Relaxed),
        cache_misses: state.counters.cache_misses.load(Relaxed),
    })
}

/// Prometheus text exposition.
pub async fn metrics(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    };
    let c = &state.counters;
    counter(
        "risksense_http_requests_total",
        "HTTP requests served.",
        c.requests.load(Relaxed),
    );
    counter(
        "risksense_http_client_errors_total",
        "HTTP 4xx answers.",
        c.client_errors.load(Relaxed),
    );
    counter(
        "risksense_http_server_errors_total",
        "HTTP 5xx answers.",
        c.server_errors.load(Relaxed),
    );
    counter(
        "risksense_score_cache_hits_total",
        "Ad-hoc scores answered from the cache.",
        c.cache_hits.load(Relaxed),
    );
    counter(
        "risksense_score_cache_misses_total",
        "Ad-hoc scores computed by the model.",
        c.cache_misses.load(Relaxed),
    );
    counter(
        "risksense_sql_queries_total",
        "Queries run by /v1/sql.",
        c.sql_queries.load(Relaxed),
    );
    counter(
        "risksense_sql_cancelled_total",
        "Queries cancelled at their deadline or because their client left.",
        state.queries.cancelled.load(Relaxed),
    );
    counter(
        "risksense_sql_refused_total",
        "Queries refused with 429 because the query pool was full.",
        state.queries.refused.load(Relaxed),
    );
    counter(
        "risksense_store_timeouts_total",
        "API calls to the result store that did not answer within the store timeout.",
        c.store_timeouts.load(Relaxed),
    );

    if let Some(s) = state.stream.as_deref() {
        let get = StreamMetrics::get;
        counter(
            "risksense_messages_consumed_total",
            "Messages read from the transactions topic.",
            get(&s.messages),
        );
        counter(
            "risksense_rows_scored_total",
            "Transactions scored and written to every sink.",
            get(&s.rows_scored),
        );
        counter(
            "risksense_anomalies_total",
            "Transactions scored at or above the threshold.",
            get(&s.anomalies),
        );
        counter(
            "risksense_alerts_total",
            "Alerts added to the alerts stream (replays excluded).",
            get(&s.new_alerts),
        );
        counter(
            "risksense_dead_letters_total",
            "Messages sent to the dead-letter topic.",
            get(&s.dead_letters),
        );
        counter(
            "risksense_batches_total",
            "Micro-batches processed.",
            get(&s.batches),
        );
        counter(
            "risksense_checkpoints_total",
            "Checkpoints completed.",
            get(&s.checkpoints),
        );
        counter(
            "risksense_sink_retries_total",
            "Sink writes retried after a failure.",
            get(&s.sink_retries),
        );
        let _ = writeln!(
            out,
            "# HELP risksense_consumer_lag Messages behind the end of the assigned partitions.\n# TYPE risksense_consumer_lag gauge\nrisksense_consumer_lag {}",
            get(&s.lag)
        );
        let _ = writeln!(
            out,
            "# HELP risksense_stage_seconds_total Busy time per stage.\n# TYPE risksense_stage_seconds_total counter"
        );
        for (stage, ns) in [
            ("decode", &s.decode_ns),
            ("score", &s.score_ns),
            ("sinks", &s.sink_ns),
            ("checkpoint", &s.checkpoint_ns),
        ] {
            let _ = writeln!(
                out,
                "risksense_stage_seconds_total{{stage=\"{stage}\"}} {}",
                get(ns) as f64 / 1e9
            );
        }
        for (name, help, histogram) in [
            (
                "risksense_batch_latency_seconds",
                "From a micro-batch's close to its results in every sink.",
                &s.batch_latency,
            ),
            (
                "risksense_visible_latency_seconds",
                "From a message's produce time to its result in the store.",
                &s.visible_latency,
            ),
        ] {
            let bounds = [5u64, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (bound, count) in bounds.iter().zip(histogram.cumulative(&bounds)) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{le=\"{}\"}} {count}",
                    *bound as f64 / 1000.0
                );
            }
            let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", histogram.count());
            let _ = writeln!(out, "{name}_sum {}", histogram.sum_ms() as f64 / 1000.0);
            let _ = writeln!(out, "{name}_count {}", histogram.count());
        }
    }
    let _ = writeln!(
        out,
        "# HELP risksense_sql_running Queries running on the query pool.\n# TYPE risksense_sql_running gauge\nrisksense_sql_running {}",
        state.queries.running()
    );
    let _ = writeln!(
        out,
        "# HELP risksense_sql_throttled_seconds_total Time queries paused because the stream was behind.\n# TYPE risksense_sql_throttled_seconds_total counter\nrisksense_sql_throttled_seconds_total {}",
        state.queries.throttled().as_secs_f64()
    );
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// The process is up.
pub async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

/// The process can serve: its result store answers within the store timeout (1 s by
/// default), so a frozen Redis makes the probe fail fast instead of hanging it.
pub async fn readyz(State(state): State<Arc<ApiState>>) -> Result<impl IntoResponse, ApiError> {
    state.store_call(state.store.ping()).await.map_err(|e| {
        let mut error =
            ApiError::unavailable(format!("the result store does not answer: {}", e.message));
        error.retry_after = Some(1);
        error
    })?;
    Ok((
        StatusCode::OK,
        Json(serde_json::json!({"status": "ready", "store": state.store.describe()})),
    ))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "RiskSense API", description = "Scored transactions, anomalies, ad-hoc scoring and live SQL"),
    paths(
        crate::lookup::transaction,
        crate::lookup::card_transactions,
        crate::lookup::anomalies,
        crate::lookup::alerts,
        crate::score::score,
        crate::sql::query,
        stats,
    ),
    modifiers(&BearerAuth, &CommonErrors)
)]
pub struct ApiDoc;

/// Answers every operation can give whatever its handler does: the router's 405, the URI
/// limit's 414, and a 503 when the store or the query pool cannot serve. Same body as
/// every other error.
struct CommonErrors;

impl utoipa::Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                for (status, description) in [
                    ("405", "the method is not allowed on this path"),
                    ("414", "the URI is longer than the limit (8 KiB)"),
                    ("503", "the result store does not answer (with Retry-After)"),
                ] {
                    responses
                        .entry(status.to_string())
                        .or_insert_with(|| error(description));
                }
            }
        }
    }
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document, generated from the handlers.
pub async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}
