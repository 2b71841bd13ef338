//! The RiskSense HTTP API, served by `risksense run`, `risksense serve` and `risksense demo`.
//!
//! - [`lookup`]: transactions, cards, anomalies and alerts from the result store.
//! - [`score`]: ad-hoc scoring with the stream's SQL and model, cached in the store.
//! - [`sql`]: read-only SQL over the live window (`scored`) and the archive (`history`).
//! - [`queries`]: standing queries over the stream (created in SQL DDL) and push
//!   subscriptions to their results as Server-Sent Events.
//! - [`models`]: the model in service, as its card describes it.
//! - [`ops`]: Prometheus metrics, health, readiness, dashboard stats, OpenAPI.
//! - [`dashboard`]: the single-page dashboard and its bundled chart library.
//!
//! Every error is a JSON body `{"error": {"code", "message"}}` with a fitting status: 400
//! for bad input (with what was wrong), 401 without the token, 404 for unknown ids and
//! routes, 405 for a wrong method, 408 for a body that does not arrive or a query past its
//! deadline, 409 for a standing query's name in use, 413 for oversized bodies, 414 for long
//! URIs, 429 when the query pool is full and 503 when the store does not answer (both with
//! `Retry-After`; 503 also when no stream runs in the process for `/v1/queries`). Bad
//! input never yields a 500. Rejections by axum's own extractors are turned into the same
//! shape ([`extract`]).

pub mod dashboard;
pub mod error;
pub mod extract;
pub mod lookup;
pub mod models;
pub mod ops;
pub mod pool;
pub mod queries;
pub mod score;
pub mod server;
pub mod sql;
pub mod views;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use risksense_common::metrics::StreamMetrics;
use risksense_continuous::Registry;
use risksense_query::LiveWindow;
use risksense_store::Store;
use risksense_udfs::ModelControl;

pub use error::ApiError;

/// How the API behaves.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Bearer token required by `/v1/score`, `/v1/sql`, `/v1/queries…` and
    /// `/v1/subscribe` (None: open). The streams also take it as `?token=`.
    pub token: Option<String>,
    /// Largest request body, in bytes.
    pub body_limit: usize,
    /// Transactions per `/v1/score` request.
    pub max_score_rows: usize,
    /// Lifetime of a cached score, in seconds.
    pub cache_ttl_secs: u64,
    /// `/v1/sql` limits: wall time, rows and bytes returned, memory per query, and the
    /// text and syntax-tree limits checked before planning.
    pub sql_timeout: Duration,
    pub sql_max_rows: usize,
    pub sql_max_bytes: usize,
    pub sql_memory_bytes: usize,
    pub sql_limits: sql::guard::Limits,
    /// Where queries run (threads, queries at once).
    pub pool: pool::PoolConfig,
    /// The Parquet archive, queried as `history`.
    pub archive: Option<PathBuf>,
    /// Time a request body has to arrive whole.
    pub body_timeout: Duration,
    /// Longest URI (path and query) answered; longer ones get a 414.
    pub max_uri_bytes: usize,
    /// Time a lookup or readiness probe waits for the store before answering 503.
    pub store_timeout: Duration,
    /// Header read timeout and buffer of the connection layer.
    pub connections: server::ConnectionLimits,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            token: None,
            body_limit: 2 * 1024 * 1024,
            max_score_rows: 10_000,
            cache_ttl_secs: 3600,
            sql_timeout: Duration::from_secs(10),
            sql_max_rows: 10_000,
            sql_max_bytes: 32 * 1024 * 1024,
            sql_memory_bytes: 256 * 1024 * 1024,
            sql_limits: sql::guard::Limits::default(),
            pool: pool::PoolConfig::default(),
            archive: None,
            body_timeout: Duration::from_secs(10),
            max_uri_bytes: 8 * 1024,
            store_timeout: Duration::from_secs(1),
            connections: server::ConnectionLimits::default(),
        }
    }
}

/// The API's own counters (the stream's are in [`StreamMetrics`]).
#[derive(Default)]
pub struct ApiCounters {
    pub requests: AtomicU64,
    pub client_errors: AtomicU64,
    pub server_errors: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub scored_rows: AtomicU64,
    pub sql_queries: AtomicU64,
    pub store_timeouts: AtomicU64,
}

/// Everything the handlers share.
pub struct ApiState {
    pub config: ApiConfig,
    pub store: Store,
    /// The models in service (load `models.api()` once per request) and changes to them.
    pub models: Arc<ModelControl>,
    /// The live window of the stream in this process, if any.
    pub live: Option<Arc<LiveWindow>>,
    /// The stream's metrics, if a stream runs in this process.
    pub stream: Option<Arc<StreamMetrics>>,
    pub counters: ApiCounters,
    /// Where `/v1/sql` queries run, apart from the API's and the stream's threads.
    pub queries: pool::QueryPool,
    pub scorer: score::Scorer,
    pub series: ops::Series,
    /// Schema of `scored` rows (for an empty live window or archive).
    pub scored_schema: arrow::datatypes::SchemaRef,
    /// The standing queries of the stream in this process, if any.
    pub standing: Option<Arc<Registry>>,
}

impl ApiState {
    pub async fn new(
        config: ApiConfig,
        store: Store,
        models: Arc<ModelControl>,
        live: Option<Arc<LiveWindow>>,
        stream: Option<Arc<StreamMetrics>>,
        standing: Option<Arc<Registry>>,
    ) -> Result<Arc<Self>, ApiError> {
        let model = models.api().load();
        let scorer = score::Scorer::new(model.clone()).await?;
        let scored_schema = sql::scored_schema(model).await?;
        // Queries back off while the stream in this process is behind: a full micro-batch
        // within the last second.
        let pressure = stream
            .clone()
            .map(|metrics| Arc::new(move || metrics.behind(1_000)) as pool::Pressure);
        let queries = pool::QueryPool::new(&config.pool, pressure)
            .map_err(|e| ApiError::internal(format!("starting the query pool: {e}")))?;
        Ok(Arc::new(Self {
            config,
            store,
            models,
            live,
            stream,
            counters: ApiCounters::default(),
            queries,
            scorer,
            series: ops::Series::default(),
            scored_schema,
            standing,
        }))
    }

    /// Waits for the store at most `store_timeout`: a store that does not answer (frozen,
    /// partitioned) fails the request fast with a 503 instead of hanging it.
    pub async fn store_call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, risksense_store::StoreError>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(self.config.store_timeout, call).await {
            Ok(result) => Ok(result?),
            Err(_) => {
                self.counters
                    .store_timeouts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut error = ApiError::unavailable(format!(
                    "the result store did not answer within {} ms",
                    self.config.store_timeout.as_millis()
                ));
                error.retry_after = Some(1);
                Err(error)
            }
        }
    }
}

/// The whole API.
pub fn router(state: Arc<ApiState>) -> Router {
    let guarded = Router::new()
        .route("/v1/score", post(score::score))
        .route("/v1/sql", post(sql::query))
        .route("/v1/models/champion", post(models::set_champion))
        .route(
            "/v1/models/challenger",
            post(models::set_challenger).delete(models::remove_challenger),
        )
        .route(
            "/v1/models/supervised",
            post(models::set_supervised).delete(models::remove_supervised),
        )
        .route("/v1/queries", get(queries::list).post(queries::create))
        .route(
            "/v1/queries/{name}",
            get(queries::detail).delete(queries::delete),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    // Browsers' EventSource sends no headers: the streams take the token in the URL too.
    let streams = Router::new()
        .route("/v1/queries/{name}/stream", get(queries::stream))
        .route("/v1/subscribe", post(queries::subscribe))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_token_or_parameter,
        ));
    Router::new()
        .route("/v1/transactions/{trans_num}", get(lookup::transaction))
        .route(
            "/v1/cards/{cc_num}/transactions",
            get(lookup::card_transactions),
        )
        .route("/v1/anomalies", get(lookup::anomalies))
        .route("/v1/alerts", get(lookup::alerts))
        .route("/v1/models", get(models::list))
        .route("/v1/stats", get(ops::stats))
        .route("/metrics", get(ops::metrics))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/openapi.json", get(ops::openapi))
        .route("/", get(dashboard::index))
        .route("/assets/{file}", get(dashboard::asset))
        .merge(guarded)
        .merge(streams)
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|request: Request| async move {
            ApiError::method_not_allowed(format!(
                "{} is not allowed on {}",
                request.method(),
                request.uri().path()
            ))
        })
        .layer(middleware::from_fn(extract::json_errors))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            extract::limit_uri,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(DefaultBodyLimit::max(state.config.body_limit))
        .with_state(state)
}

async fn require_token(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check_token(&state, &request, false)?;
    Ok(next.run(request).await)
}

/// As [`require_token`], also taking the token as the `token` query parameter.
async fn require_token_or_parameter(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check_token(&state, &request, true)?;
    Ok(next.run(request).await)
}

fn check_token(state: &ApiState, request: &Request, parameter: bool) -> Result<(), ApiError> {
    let Some(token) = &state.config.token else {
        return Ok(());
    };
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if header == Some(token.as_str()) {
        return Ok(());
    }
    if parameter {
        #[derive(serde::Deserialize)]
        struct TokenParameter {
            token: Option<String>,
        }
        let given = axum::extract::Query::<TokenParameter>::try_from_uri(request.uri())
            .ok()
            .and_then(|q| q.0.token);
        if given.as_deref() == Some(token.as_str()) {
            return Ok(());
        }
    }
    Err(ApiError::unauthorized())
}

async fn count_requests(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    state.counters.requests.fetch_add(1, Relaxed);
    let response = next.run(request).await;
    if response.status().is_client_error() {
        state.counters.client_errors.fetch_add(1, Relaxed);
    } else if response.status().is_server_error() {
        state.counters.server_errors.fetch_add(1, Relaxed);
    }
    response
}

/// Serves the API on `listener` until `shutdown` resolves; samples the dashboard series
/// once a second meanwhile.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sampler = tokio::spawn(ops::sample_series(state.clone()));
    let limits = state.config.connections;
    let result = server::serve(listener, router(state), limits, shutdown).await;
    sampler.abort();
    result
}

/// Binds `address` (port 0 picks a free one) and returns the listener and its address.
pub async fn bind(address: &str) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
