//! Standing queries over the live stream (`risksense run`, `risksense demo`): created in
//! SQL DDL, listed with their rates, deleted, and their results pushed to clients as
//! Server-Sent Events.
//!
//! - `POST /v1/queries` creates (`CREATE VIEW …`, `CREATE TABLE … WITH (connector = …);
//!   INSERT INTO …`), `GET /v1/queries` lists, `GET` / `DELETE /v1/queries/{name}`.
//! - `GET /v1/queries/{name}/stream`: a query's result rows as they are produced.
//! - `POST /v1/subscribe`: an ad-hoc SELECT over the stream, running while its client
//!   reads (the temporary query is removed when the response is dropped).
//!
//! A stream sends one `columns` event (a JSON array of names), then one `row` event per
//! result row (a JSON object, nulls included). Results reach subscribers through the
//! query's bounded broadcast channel, so the stream never waits for a client: one that
//! falls [`risksense_continuous::query::SUBSCRIBER_BUFFER`] result batches behind gets a
//! `dropped` event and its stream ends (it may reconnect). A deleted query's streams get
//! an `end` event. A comment every 15 s keeps idle connections open through proxies.
//!
//! The SQL is parsed and its tree measured on the query pool's big stacks before the
//! continuous layer parses and plans it on the API's threads (see [`crate::sql::guard`]):
//! a deep expression is refused with a 400 instead of overflowing a stack.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use risksense_continuous::{Origin, QueryInfo, Registry, Subscription};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::extract::{Body, Path};
use crate::sql::guard::{self, Limits};
use crate::views::{QueryCreated, QueryDetail, QueryList, QueryRequest, QueryView};
use crate::{ApiError, ApiState};

/// Interval of the keep-alive comments on an idle stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Expression nesting a standing query may have: it is planned on the API's threads
/// (ordinary stacks), unlike `/v1/sql` queries, which plan on the pool's.
pub const MAX_DEPTH: usize = 128;

/// Names the registry gives subscriptions' temporary queries; not a user's to take.
const SUBSCRIPTION_PREFIX: &str = "_subscription_";

/// The registry of this process's stream, or why there is none.
fn registry(state: &ApiState) -> Result<Arc<Registry>, ApiError> {
    state.standing.clone().ok_or_else(|| {
        ApiError::unavailable(
            "standing queries need `risksense run` or `risksense demo`: no stream runs in this process",
        )
    })
}

/// The SQL of a request: the body as text, or `{"sql": "…"}` as JSON.
fn sql_of(headers: &HeaderMap, body: &[u8]) -> Result<String, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("the body is not UTF-8 text"))?;
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
        || text.trim_start().starts_with('{');
    let sql = if json {
        serde_json::from_str::<QueryRequest>(text)
            .map_err(|e| {
                ApiError::bad_request(format!("a JSON body must be {{\"sql\": \"…\"}}: {e}"))
            })?
            .sql
    } else {
        text.to_string()
    };
    if sql.trim().is_empty() {
        return Err(ApiError::bad_request(
            "no SQL: send the statements as the body (text/plain) or as {\"sql\": \"…\"}",
        ));
    }
    Ok(sql)
}

/// What a request's SQL must be.
#[derive(Clone, Copy)]
enum Expect {
    /// DDL declaring standing queries.
    Script,
    /// One SELECT.
    Select,
}

/// Parses `sql` and checks its trees on the query pool, before the continuous layer
/// parses and plans it again on this thread.
async fn check(state: &ApiState, sql: &str, expect: Expect) -> Result<(), ApiError> {
    let limits = state.config.sql_limits;
    guard::check_text(sql, &limits).map_err(|e| ApiError::too_large(e.to_string()))?;
    let limits = Limits {
        max_depth: limits.max_depth.min(MAX_DEPTH),
        ..limits
    };
    let text = sql.to_string();
    let deadline = state.config.sql_timeout;
    let (result, _slot) = state
        .queries
        .run(
            deadline,
            async move { check_parsed(&text, &limits, expect) },
        )
        .await
        .map_err(|error| crate::sql::pool_error(error, deadline))?;
    result
}

fn check_parsed(sql: &str, limits: &Limits, expect: Expect) -> Result<(), ApiError> {
    // The dialect the continuous layer parses with.
    let statements = Parser::parse_sql(&GenericDialect {}, sql)
        .map_err(|e| ApiError::bad_request(format!("cannot parse the query: {e}")))?;
    if matches!(expect, Expect::Select) && !matches!(statements.as_slice(), [Statement::Query(_)]) {
        return Err(ApiError::bad_request(
            "POST /v1/subscribe takes one SELECT over scored or transactions; declare standing queries (CREATE VIEW …) with POST /v1/queries",
        ));
    }
    for statement in &statements {
        guard::check_tree(statement, limits).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let declared = match statement {
            Statement::CreateView(view) => Some(view.name.to_string()),
            Statement::CreateTable(table) => Some(table.name.to_string()),
            _ => None,
        };
        if let Some(name) = declared
            && name.trim_matches('"').starts_with(SUBSCRIPTION_PREFIX)
        {
            return Err(ApiError::bad_request(format!(
                "query name {name}: names starting with {SUBSCRIPTION_PREFIX} are kept for subscriptions"
            )));
        }
    }
    Ok(())
}

/// A query users may see by name (not another client's subscription).
fn visible(registry: &Registry, name: &str) -> Result<QueryInfo, ApiError> {
    registry
        .info(name)
        .filter(|info| info.origin != Origin::Subscription)
        .ok_or_else(|| ApiError::not_found(format!("no standing query named {name}")))
}

/// Create standing queries.
///
/// The body is DDL, as text (`text/plain`) or as `{"sql": "…"}`: `CREATE VIEW name AS
/// SELECT …` (results go to subscribers), or `CREATE TABLE name WITH (connector =
/// 'kafka' | 'redis' | 'parquet', …); INSERT INTO name SELECT …`. A SELECT reads `scored`
/// or `transactions` and may aggregate over event-time windows (`GROUP BY
/// tumble(trans_date_trans_time, INTERVAL '1' MINUTE), …`). All of a script's queries are
/// created, or none. They are saved and come back when the stream restarts.
#[utoipa::path(post, path = "/v1/queries",
    request_body(description = "DDL declaring standing queries",
        content((String = "text/plain"), (QueryRequest = "application/json"))),
    responses((status = 201, body = QueryCreated),
              (status = 400, description = "the SQL does not parse, or is not a query a stream can run (says what is)", body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody),
              (status = 409, description = "a query of that name exists", body = crate::error::ErrorBody),
              (status = 429, description = "the query pool, which checks the SQL, is full (with Retry-After)", body = crate::error::ErrorBody),
              (status = 503, description = "no stream runs in this process (`risksense serve`), or it is still starting (with Retry-After)", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<QueryCreated>), ApiError> {
    let registry = registry(&state)?;
    let sql = sql_of(&headers, &body.0)?;
    check(&state, &sql, Expect::Script).await?;
    let created = registry.create(&sql, Origin::Api).await?;
    Ok((StatusCode::CREATED, Json(QueryCreated { created })))
}

/// List the standing queries with their status and rates.
#[utoipa::path(get, path = "/v1/queries",
    responses((status = 200, body = QueryList), (status = 401, body = crate::error::ErrorBody),
              (status = 503, description = "no stream runs in this process (`risksense serve`), or it is still starting (with Retry-After)", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(State(state): State<Arc<ApiState>>) -> Result<Json<QueryList>, ApiError> {
    let registry = registry(&state)?;
    let queries = registry
        .list(false)
        .into_iter()
        .map(QueryView::from)
        .collect();
    Ok(Json(QueryList { queries }))
}

/// One standing query and its latest result rows.
#[utoipa::path(get, path = "/v1/queries/{name}",
    params(("name" = String, Path, description = "the query's name")),
    responses((status = 200, body = QueryDetail), (status = 401, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody), (status = 503, description = "no stream runs in this process (`risksense serve`), or it is still starting (with Retry-After)", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn detail(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<Json<QueryDetail>, ApiError> {
    let registry = registry(&state)?;
    let info = visible(&registry, &name)?;
    let recent = match registry.get(&name) {
        Some(query) => rows_as_values(&query.recent())?,
        None => Vec::new(),
    };
    Ok(Json(QueryDetail {
        query: info.into(),
        recent,
    }))
}

/// Stop and forget a standing query (and its saved definition).
#[utoipa::path(delete, path = "/v1/queries/{name}",
    params(("name" = String, Path, description = "the query's name")),
    responses((status = 204, description = "deleted"), (status = 401, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody), (status = 503, description = "no stream runs in this process (`risksense serve`), or it is still starting (with Retry-After)", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let registry = registry(&state)?;
    visible(&registry, &name)?;
    registry.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A standing query's result rows as they are produced (Server-Sent Events).
///
/// Events: `columns` (a JSON array of the column names) first, then `row` (a JSON object)
/// per result row; `dropped` when the client fell too far behind (the stream ends:
/// reconnect), `end` when the query was deleted. Browsers' `EventSource` cannot send
/// headers: with a token configured, `?token=` works here too.
#[utoipa::path(get, path = "/v1/queries/{name}/stream",
    params(("name" = String, Path, description = "the query's name"),
           ("token" = Option<String>, Query, description = "the bearer token, for clients that cannot send headers")),
    responses((status = 200, description = "`columns`, then `row` events", content_type = "text/event-stream", body = String),
              (status = 401, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody),
              (status = 503, description = "no stream runs in this process (`risksense serve`), or it is still starting (with Retry-After)", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn stream(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let registry = registry(&state)?;
    visible(&registry, &name)?;
    let query = registry
        .get(&name)
        .ok_or_else(|| ApiError::not_found(format!("no standing query named {name}")))?;
    // The stream holds the receiver only: when the query is deleted its sender goes, and
    // the stream ends.
    let feed = Feed::new(
        Source::Query(query.subscribe(), Arc::downgrade(&query)),
        &query.plan.output_schema,
    );
    Ok(events(feed))
}

/// Run an ad-hoc SELECT over the stream and receive its rows as they are produced
/// (Server-Sent Events, as `/v1/queries/{name}/stream`).
///
/// The body is one SELECT over `scored` or `transactions` (text, or `{"sql": "…"}`), as
/// a standing query's: filters, projections, lookups, or an aggregate over event-time
/// windows. It runs from now on while the client reads, and is removed when it goes.
#[utoipa::path(post, path = "/v1/subscribe",
    request_body(description = "one SELECT over the stream",
        content((String = "text/plain"), (QueryRequest = "application/json"))),
    responses((status = 200, description = "`columns`, then `row` events", content_type = "text/event-stream", body = String),
              (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
(status = 429, description = "the query pool, which checks the SQL, is full (with Retry-After)", body = crate::error::ErrorBody),
              (status = 503, description = "no stream runs in this process (`risksense serve`), or it is still starting (with Retry-After)", body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn subscribe(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let registry = registry(&state)?;
    let sql = sql_of(&headers, &body.0)?;
    check(&state, &sql, Expect::Select).await?;
    let subscription = registry.subscribe(&sql).await?;
    let schema = subscription.query.plan.output_schema.clone();
    Ok(events(Feed::new(
        Source::Subscription(subscription),
        &schema,
    )))
}

/// Where a stream's batches come from. A subscription is held by its stream: dropping
/// the response (the client went away) removes its query.
enum Source {
    /// A standing query's results; the query itself is not held (deleting it ends the
    /// stream), only what counts a dropped subscriber.
    Query(
        broadcast::Receiver<Arc<RecordBatch>>,
        std::sync::Weak<risksense_continuous::query::RunningQuery>,
    ),
    Subscription(Subscription),
}

impl Source {
    fn receiver(&mut self) -> &mut broadcast::Receiver<Arc<RecordBatch>> {
        match self {
            Self::Query(receiver, _) => receiver,
            Self::Subscription(subscription) => &mut subscription.receiver,
        }
    }

    /// Counts this subscriber as dropped for being too slow.
    fn count_dropped(&self) {
        let query = match self {
            Self::Query(_, query) => query.upgrade(),
            Self::Subscription(subscription) => Some(subscription.query.clone()),
        };
        if let Some(query) = query {
            query
                .stats
                .subscribers_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A stream's events: those of the last batch received, then the next batch's.
struct Feed {
    source: Source,
    pending: VecDeque<Event>,
    done: bool,
}

impl Feed {
    fn new(source: Source, schema: &SchemaRef) -> Self {
        let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let first = Event::default()
            .event("columns")
            .data(serde_json::to_string(&columns).unwrap_or_else(|_| "[]".to_string()));
        Self {
            source,
            pending: VecDeque::from([first]),
            done: false,
        }
    }

    /// A last event, then the end of the stream.
    fn finish(&mut self, event: &str, data: serde_json::Value) {
        self.pending
            .push_back(Event::default().event(event).data(data.to_string()));
        self.done = true;
    }

    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            match self.source.receiver().recv().await {
                Ok(batch) => match rows_as_lines(std::slice::from_ref(batch.as_ref())) {
                    Ok(lines) => self.pending.extend(
                        lines
                            .split(|b| *b == b'\n')
                            .filter(|line| !line.is_empty())
                            .map(|line| {
                                Event::default()
                                    .event("row")
                                    .data(String::from_utf8_lossy(line))
                            }),
                    ),
                    Err(error) => self.finish(
                        "error",
                        serde_json::json!({"error": format!("encoding a result row: {error}")}),
                    ),
                },
                Err(RecvError::Lagged(n)) => {
                    self.source.count_dropped();
                    self.finish(
                    "dropped",
                    serde_json::json!({
                        "error": format!("client too slow: {n} result batches dropped; reconnect")
                    }),
                )
                }
                Err(RecvError::Closed) => self.finish(
                    "end",
                    serde_json::json!({"reason": "the query was deleted"}),
                ),
            }
        }
    }
}

/// The feed as an SSE response, with keep-alive comments.
fn events(feed: Feed) -> Response {
    let stream = futures::stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((Ok::<_, Infallible>(event), feed))
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    // Proxies that buffer responses (nginx) would hold the events back.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response
}

/// Rows as JSON objects, one per line, nulls included.
fn rows_as_lines(batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let mut writer = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::LineDelimited>(Vec::new());
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    Ok(writer.into_inner())
}

fn rows_as_values(batches: &[RecordBatch]) -> Result<Vec<serde_json::Value>, ApiError> {
    let lines = rows_as_lines(batches)?;
    lines
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            serde_json::from_slice(line)
                .map_err(|e| ApiError::internal(format!("encoding a result row: {e}")))
        })
        .collect()
}
