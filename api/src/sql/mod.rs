//! `POST /v1/sql`: read-only SQL over the live window and the archive.
//!
//! Tables: `scored` (the stream's scored rows of the last minutes, in memory as Arrow) and
//! `history` (the Parquet archive). All RiskSense functions are registered. DDL, DML and
//! statements are refused at planning; each query gets a memory pool of its own, a
//! deadline, and row and byte limits on its result, and runs on the query pool
//! ([`crate::pool`]), never on the API's or the stream's threads.

pub mod bounded;
pub mod encode;
pub mod guard;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::StreamExt;
use risksense_query::scorer::StreamScorer;
use risksense_query::scoring::{SessionOptions, new_session_with_handle};
use risksense_udfs::Model;

use self::encode::{Encoder, Format};
use crate::pool::PoolError;
use crate::views::{SqlRequest, SqlResponse};
use crate::{ApiError, ApiState};

/// The schema of the stream's scored rows.
pub async fn scored_schema(model: Arc<Model>) -> Result<SchemaRef, ApiError> {
    let options = SessionOptions {
        target_partitions: 1,
        ..SessionOptions::default()
    };
    Ok(StreamScorer::new(model, options).await?.output_schema())
}

/// A session with `scored` and `history` registered and the query limits applied.
async fn session(state: &ApiState) -> Result<SessionContext, ApiError> {
    // One partition: a query's operators then run in its own task (nothing spawned per
    // partition), where the pool's deadline and CPU budget reach all of its work.
    let options = SessionOptions {
        target_partitions: 1,
        batch_size: 8192,
        memory_limit: Some(state.config.sql_memory_bytes),
    };
    // The models as they are now, for the whole query.
    let models = Arc::new(state.models.api().snapshot());
    let ctx = new_session_with_handle(Some(models), options)?;
    bounded::install(&ctx, bounded::MAX_CALL_BYTES)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let live = state
        .live
        .as_ref()
        .map(|l| l.snapshot())
        .unwrap_or_default();
    let scored = MemTable::try_new(state.scored_schema.clone(), vec![live])
        .map_err(|e| ApiError::internal(e.to_string()))?;
    ctx.register_table("scored", Arc::new(scored))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let archive_has_files = state.config.archive.as_ref().is_some_and(|dir| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "parquet"))
        })
    });
    match (&state.config.archive, archive_has_files) {
        (Some(dir), true) => {
            ctx.register_parquet(
                "history",
                &format!("{}/", dir.display()),
                ParquetReadOptions::default(),
            )
            .await
            .map_err(|e| ApiError::unavailable(format!("reading the archive: {e}")))?;
        }
        _ => {
            let empty = MemTable::try_new(state.scored_schema.clone(), vec![vec![]])
                .map_err(|e| ApiError::internal(e.to_string()))?;
            ctx.register_table("history", Arc::new(empty))
                .map_err(|e| ApiError::internal(e.to_string()))?;
        }
    }
    Ok(ctx)
}

/// What a query answers: the encoded bytes and their content type.
pub struct Answer {
    pub format: Format,
    pub bytes: Vec<u8>,
    pub truncated: bool,
}

/// Run a read-only query.
///
/// The query runs on the query pool (see [`crate::pool`]): its own threads at low
/// priority, a bounded number at once (429 with `Retry-After` past it), cancelled at the
/// deadline (504). The text is limited in length and the syntax tree in depth before
/// planning; the result in rows and in bytes.
#[utoipa::path(post, path = "/v1/sql", request_body = SqlRequest,
    responses((status = 200, body = SqlResponse), (status = 400, body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody), (status = 408, body = crate::error::ErrorBody),
              (status = 504, body = crate::error::ErrorBody),
              (status = 413, body = crate::error::ErrorBody), (status = 429, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn query(
    State(state): State<Arc<ApiState>>,
    body: crate::extract::Body,
) -> Result<Response, ApiError> {
    let request: SqlRequest = serde_json::from_slice(&body.0).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be JSON like {{\"sql\": \"SELECT …\"}}: {e}"
        ))
    })?;
    let format_name = request.format.as_deref().unwrap_or("json");
    let format = Format::parse(format_name).ok_or_else(|| {
        ApiError::bad_request(format!("format `{format_name}`: use json, csv or arrow"))
    })?;
    guard::check_text(&request.sql, &state.config.sql_limits)
        .map_err(|e| ApiError::too_large(e.to_string()))?;
    let max_rows = request
        .max_rows
        .unwrap_or(state.config.sql_max_rows)
        .min(state.config.sql_max_rows);
    state.counters.sql_queries.fetch_add(1, Relaxed);
    let deadline = state.config.sql_timeout;
    let work_state = state.clone();
    let (answer, slot) = state
        .queries
        .run(deadline, async move {
            run(&work_state, &request.sql, format, max_rows).await
        })
        .await
        .map_err(|error| pool_error(error, deadline))?;
    let answer = answer?;
    // The query keeps its slot in the pool until its answer is sent (or the connection
    // fails its write timeout): slow readers cannot pile up answers in memory.
    let body = Body::new(HeldBody {
        bytes: Bytes::from(answer.bytes),
        _slot: slot,
    });
    let mut response = ([(CONTENT_TYPE, answer.format.content_type())], body).into_response();
    if answer.truncated {
        response
            .headers_mut()
            .insert("x-risksense-truncated", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Why the query pool gave no result, as the API's error.
pub(crate) fn pool_error(error: PoolError, deadline: std::time::Duration) -> ApiError {
    match error {
        PoolError::Busy { .. } => ApiError::too_many_requests(error.to_string(), 1),
        PoolError::Deadline(_) => ApiError::deadline(format!(
            "the query ran longer than {} s and was cancelled",
            deadline.as_secs_f64()
        )),
        PoolError::Panicked(message) => ApiError::internal(message),
    }
}

/// An answer's bytes, holding the query's pool slot until the body is done. Given to
/// hyper in chunks: hyper asks for the next one only as the socket takes the previous
/// ones, so the slot is held until (nearly) all of the answer was sent.
struct HeldBody {
    bytes: Bytes,
    _slot: crate::pool::Slot,
}

/// Bytes per frame of an answer.
const FRAME_BYTES: usize = 64 * 1024;

impl http_body::Body for HeldBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.bytes.is_empty() {
            return std::task::Poll::Ready(None);
        }
        let take = self.bytes.len().min(FRAME_BYTES);
        let chunk = self.bytes.split_to(take);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.bytes.len() as u64)
    }
}

/// Parses, checks, plans and runs one query, on the query pool.
async fn run(
    state: &ApiState,
    sql: &str,
    format: Format,
    max_rows: usize,
) -> Result<Answer, ApiError> {
    let started = Instant::now();
    let ctx = session(state).await?;
    let session_state = ctx.state();
    let dialect = session_state.config().options().sql_parser.dialect;
    let statement = session_state
        .sql_to_statement(sql, &dialect)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    guard::check_statement(&statement, &state.config.sql_limits)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let plan = session_state
        .statement_to_plan(statement)
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let frame = ctx
        .execute_logical_plan(plan)
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    // One row past the limit tells a cut result from an exact one.
    let frame = frame
        .limit(0, Some(max_rows.saturating_add(1)))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let plan = frame
        .create_physical_plan()
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let plan = cooperative_everywhere(plan)?;
    let mut stream =
        datafusion::physical_plan::execute_stream(plan, ctx.task_ctx()).map_err(execution_error)?;
    let mut encoder = Encoder::new(format, &schema, max_rows, state.config.sql_max_bytes)?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(execution_error)?;
        if !encoder.push(&batch)? {
            break;
        }
    }
    // Dropping the stream cancels whatever is left of the query.
    drop(stream);
    let truncated = encoder.truncated;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let bytes = encoder.finish(&schema, true, elapsed_ms)?;
    Ok(Answer {
        format,
        bytes,
        truncated,
    })
}

/// Wraps every operator's output in DataFusion's `CooperativeExec`, so that each batch
/// between operators spends Tokio's task budget.
///
/// DataFusion only makes leaves and exchanges cooperative. An operator that makes many
/// batches from one input batch (a cross join emits a batch per left row) then keeps its
/// consumer busy in one poll for as long as the query lasts: the task never yields, and
/// aborting it at the deadline does nothing (measured: a cancelled cross join of
/// `generate_series` kept a core busy). With every operator cooperative, the task yields
/// at least every 128 batches and the abort lands within milliseconds.
fn cooperative_everywhere(
    plan: Arc<dyn ExecutionPlan>,
) -> Result<Arc<dyn ExecutionPlan>, ApiError> {
    plan.transform_up(|node| {
        if node.children().is_empty() || node.is::<CooperativeExec>() {
            Ok(Transformed::no(node))
        } else {
            Ok(Transformed::yes(
                Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>
            ))
        }
    })
    .map(|t| t.data)
    .map_err(|e| ApiError::internal(e.to_string()))
}

fn execution_error(error: DataFusionError) -> ApiError {
    match error.find_root() {
        DataFusionError::ResourcesExhausted(m) => {
            ApiError::bad_request(format!("the query needs more memory than allowed: {m}"))
        }
        other => ApiError::bad_request(other.to_string()),
    }
}
