//! Operations: Prometheus metrics, health and readiness, the dashboard's time series, and
//! the OpenAPI document.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Float64Type;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use risksense_common::metrics::{StreamMetrics, encode_counter, encode_gauge};
use risksense_query::LiveWindow;
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
    /// The champion's alert threshold (its alert score's; a model without the card's
    /// recent scores in its rule: its score's).
    pub threshold: f64,
    pub model: String,
    pub series: Vec<Point>,
    /// The autoencoder's alert-score histogram of the live window: bucket lower edges and
    /// counts, from 0 to twice `threshold`; the buckets from `threshold` up hold exactly the
    /// rows it flags (a supervised model's own alerts, and rows a previous champion scored,
    /// fall where their alert score puts them). Empty for a threshold that is not positive.
    pub histogram_edges: Vec<f64>,
    pub histogram_counts: Vec<u64>,
    pub live_rows: usize,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Per model and slot: rows scored and flagged, and against the labels received so far
    /// (label feedback), its precision and recall.
    pub models: Vec<ModelQuality>,
    /// Labels received, and those still waiting for their transaction's score.
    pub labels_received: u64,
    pub labels_pending: u64,
}

/// One model's live figures.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelQuality {
    /// `champion`, `challenger` or `supervised`.
    pub slot: String,
    pub model: String,
    pub rows: u64,
    pub flagged: u64,
    /// Rows of it with a label, and its flags' precision and recall on them (null until
    /// a flagged row, or a fraud, is labelled).
    pub labelled: u64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
}

/// The stream's per-model counts joined with the label figures, by (slot, model).
fn model_quality(metrics: &StreamMetrics) -> Vec<ModelQuality> {
    let mut quality: std::collections::BTreeMap<(String, String), ModelQuality> =
        std::collections::BTreeMap::new();
    fn entry<'a>(
        quality: &'a mut std::collections::BTreeMap<(String, String), ModelQuality>,
        slot: &str,
        model: &str,
    ) -> &'a mut ModelQuality {
        quality
            .entry((slot.to_string(), model.to_string()))
            .or_insert_with(|| ModelQuality {
                slot: slot.to_string(),
                model: model.to_string(),
                rows: 0,
                flagged: 0,
                labelled: 0,
                precision: None,
                recall: None,
            })
    }
    for (slot, model, rows, flagged) in metrics.models.snapshot() {
        let e = entry(&mut quality, &slot, &model);
        (e.rows, e.flagged) = (rows, flagged);
    }
    for (slot, model, confusion) in metrics.labels.snapshot() {
        let e = entry(&mut quality, &slot, &model);
        e.labelled = confusion.labelled();
        e.precision = confusion.precision();
        e.recall = confusion.recall();
    }
    quality.into_values().collect()
}

/// Buckets of the histogram: half below the alert threshold, half from it to twice it (the
/// last also holds everything above).
const HISTOGRAM_BUCKETS: usize = 30;

/// The live window's alert scores in [`HISTOGRAM_BUCKETS`] buckets from 0 to twice
/// `threshold`: (lower edges, counts, rows). The threshold is an edge, and a score is in a
/// bucket at or above it exactly when the autoencoder flags it (compared as score.sql
/// compares, IEEE total order, not divided, so rounding cannot move a row across it).
/// Rows without a score are counted in `rows` only. Batches without an `alert_score` (a
/// window written before the card's recent scores joined the rule) count by their
/// `score`. A threshold that is not a positive number gives no buckets.
fn alert_score_histogram(live: Option<&LiveWindow>, threshold: f64) -> (Vec<f64>, Vec<u64>, usize) {
    let batches = live.map(LiveWindow::snapshot).unwrap_or_default();
    let rows = batches.iter().map(|b| b.num_rows()).sum();
    if !(threshold.is_finite() && threshold > 0.0) {
        return (Vec::new(), Vec::new(), rows);
    }
    let half = HISTOGRAM_BUCKETS / 2;
    let width = threshold / half as f64;
    let edges: Vec<f64> = (0..HISTOGRAM_BUCKETS)
        .map(|i| threshold * (i as f64 / half as f64))
        .collect();
    let mut counts = vec![0u64; HISTOGRAM_BUCKETS];
    for batch in &batches {
        let Some(scores) = ["alert_score", "score"].iter().find_map(|name| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_primitive_opt::<Float64Type>())
        }) else {
            continue;
        };
        for score in scores.iter().flatten() {
            let bucket = if score.total_cmp(&threshold).is_ge() {
                // A NaN (above every number in that order) counts in the threshold's bucket,
                // +inf in the last.
                ((score / width) as usize).clamp(half, HISTOGRAM_BUCKETS - 1)
            } else {
                ((score / width).max(0.0) as usize).min(half - 1)
            };
            counts[bucket] += 1;
        }
    }
    (edges, counts, rows)
}

/// Counters, the last five minutes of throughput, and the live window's alert-score
/// histogram.
#[utoipa::path(get, path = "/v1/stats", responses((status = 200, body = Stats)))]
pub async fn stats(State(state): State<Arc<ApiState>>) -> Json<Stats> {
    let get = |c: Option<&AtomicU64>| c.map_or(0, |c| c.load(Relaxed));
    let stream = state.stream.as_deref();
    let model = state.models.api().load();
    // What alerts: the alert score (the row's score plus its card's recent scores, as
    // score.sql computes it) against the rule's threshold; for a model without the rule
    // these are the score and its threshold.
    let threshold = model.card.alert_threshold();
    let (edges, counts, live_rows) = alert_score_histogram(state.live.as_deref(), threshold);
    Json(Stats {
        streaming: stream.is_some(),
        messages: get(stream.map(|s| &s.messages)),
        rows_scored: get(stream.map(|s| &s.rows_scored)),
        anomalies: get(stream.map(|s| &s.anomalies)),
        dead_letters: get(stream.map(|s| &s.dead_letters)),
        consumer_lag: get(stream.map(|s| &s.lag)),
        threshold,
        model: model.id.clone(),
        series: state.series.snapshot(),
        histogram_edges: edges,
        histogram_counts: counts,
        live_rows,
        cache_hits: state.counters.cache_hits.load(Relaxed),
        cache_misses: state.counters.cache_misses.load(Relaxed),
        models: stream.map(model_quality).unwrap_or_default(),
        labels_received: get(stream.map(|s| &s.labels.received)),
        labels_pending: get(stream.map(|s| &s.labels.pending)),
    })
}

/// Prometheus exposition, written by `prometheus-client` from one registry: the API's own
/// counters and query-pool figures ([`ApiCollector`]) and, when a stream runs in this
/// process, every [`StreamMetrics`] field ([`StreamMetrics::register`]).
///
/// OpenMetrics text when the scraper asks for it (Prometheus does, first), else the
/// Prometheus text format 0.0.4, as before. The metric names are the same in both.
pub async fn metrics(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    let registry = registry(&state);
    let openmetrics = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/openmetrics-text"));
    let mut out = String::new();
    let (written, content_type) = if openmetrics {
        (
            prometheus_client::encoding::text::encode(&mut out, &registry),
            OPENMETRICS_CONTENT_TYPE,
        )
    } else {
        (
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry),
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )
    };
    match written {
        Ok(()) => ([(CONTENT_TYPE, content_type)], out).into_response(),
        Err(_) => ApiError::internal("encoding the metrics failed").into_response(),
    }
}

const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry behind `/metrics`. Built per scrape (a few boxed collectors): the values
/// live in the atomics the API and the stream already count into, read at encoding time.
pub fn registry(state: &Arc<ApiState>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ApiCollector(state.clone())));
    if let Some(stream) = &state.stream {
        StreamMetrics::register(stream.clone(), &mut registry);
    }
    if let Some(standing) = &state.standing {
        registry.register_collector(Box::new(risksense_continuous::metrics::QueriesCollector(
            standing.clone(),
        )));
    }
    registry
}

/// The API's own metrics: [`crate::ApiCounters`] and the query pool, read on each scrape.
struct ApiCollector(Arc<ApiState>);

impl std::fmt::Debug for ApiCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiCollector")
    }
}

impl Collector for ApiCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = &*self.0;
        let c = &state.counters;
        // Names before the `_total` the encoder adds to counters.
        for (name, help, value) in [
            (
                "risksense_http_requests",
                "HTTP requests served.",
                &c.requests,
            ),
            (
                "risksense_http_client_errors",
                "HTTP 4xx answers.",
                &c.client_errors,
            ),
            (
                "risksense_http_server_errors",
                "HTTP 5xx answers.",
                &c.server_errors,
            ),
            (
                "risksense_score_cache_hits",
                "Ad-hoc scores answered from the cache.",
                &c.cache_hits,
            ),
            (
                "risksense_score_cache_misses",
                "Ad-hoc scores computed by the model.",
                &c.cache_misses,
            ),
            (
                "risksense_score_rows",
                "Transactions scored by /v1/score (cached or not).",
                &c.scored_rows,
            ),
            (
                "risksense_sql_queries",
                "Queries run by /v1/sql.",
                &c.sql_queries,
            ),
            (
                "risksense_sql_cancelled",
                "Queries cancelled at their deadline or because their client left.",
                &state.queries.cancelled,
            ),
            (
                "risksense_sql_refused",
                "Queries refused with 429 because the query pool was full.",
                &state.queries.refused,
            ),
            (
                "risksense_store_timeouts",
                "API calls to the result store that did not answer within the store timeout.",
                &c.store_timeouts,
            ),
        ] {
            encode_counter(&mut encoder, name, help, value.load(Relaxed))?;
        }
        encode_gauge(
            &mut encoder,
            "risksense_sql_running",
            "Queries running on the query pool.",
            state.queries.running() as u64,
        )?;
        encode_counter(
            &mut encoder,
            "risksense_sql_throttled_seconds",
            "Time queries paused because the stream was behind.",
            state.queries.throttled().as_secs_f64(),
        )
    }
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
    info(title = "RiskSense API", description = "Scored transactions, anomalies, ad-hoc scoring, live SQL, and standing queries over the stream with push subscriptions (Server-Sent Events)"),
    paths(
        crate::lookup::transaction,
        crate::lookup::card_transactions,
        crate::lookup::anomalies,
        crate::lookup::alerts,
        crate::score::score,
        crate::sql::query,
        crate::queries::create,
        crate::queries::list,
        crate::queries::detail,
        crate::queries::delete,
        crate::queries::stream,
        crate::queries::subscribe,
        crate::models::list,
        crate::models::set_champion,
        crate::models::set_challenger,
        crate::models::remove_challenger,
        crate::models::set_supervised,
        crate::models::remove_supervised,
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
