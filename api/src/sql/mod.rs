//! `POST /v1/sql`: read-only SQL over the live window and the archive.
//!
//! Tables: `scored` (the stream's scored rows of the last minutes, in memory as Arrow) and
//! `history` (the Parquet archive). All RiskSense functions are registered. DDL, DML and
//! statements are refused at planning; each query gets a memory pool of its own, a wall
//! clock limit and a row limit.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use datafusion::datasource::MemTable;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use risksense_engine::scoring::{SessionOptions, new_session};
use risksense_engine::stream::scorer::StreamScorer;
use risksense_udfs::Model;

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
    let options = SessionOptions {
        target_partitions: 2,
        batch_size: 8192,
        memory_limit: Some(state.config.sql_memory_bytes),
    };
    let ctx = new_session(Some(state.model.clone()), options)?;
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

/// Run a read-only query.
#[utoipa::path(post, path = "/v1/sql", request_body = SqlRequest,
    responses((status = 200, body = SqlResponse), (status = 400, body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody), (status = 408, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn query(
    State(state): State<Arc<ApiState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let request: SqlRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be JSON like {{\"sql\": \"SELECT …\"}}: {e}"
        ))
    })?;
    let format = request.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "csv" | "arrow") {
        return Err(ApiError::bad_request(format!(
            "format `{format}`: use json, csv or arrow"
        )));
    }
    let max_rows = request
        .max_rows
        .unwrap_or(state.config.sql_max_rows)
        .min(state.config.sql_max_rows);
    state.counters.sql_queries.fetch_add(1, Relaxed);
    let started = Instant::now();
    let ctx = session(&state).await?;
    let read_only = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let frame = ctx
        .sql_with_options(&request.sql, read_only)
        .await
        .map_err(|e| ApiError::bad_request(format!("{e}")))?;
    let columns: Vec<String> = frame
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let frame = frame
        .limit(0, Some(max_rows + 1))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let batches = tokio::time::timeout(state.config.sql_timeout, frame.collect())
        .await
        .map_err(|_| {
            ApiError::timeout(format!(
                "the query ran longer than {} s",
                state.config.sql_timeout.as_secs_f64()
            ))
        })?
        .map_err(|e| match e.find_root() {
            datafusion::error::DataFusionError::ResourcesExhausted(m) => {
                ApiError::bad_request(format!("the query needs more memory than allowed: {m}"))
            }
            other => ApiError::bad_request(other.to_string()),
        })?;
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let truncated = total > max_rows;
    let batches = first_rows(&batches, max_rows);
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match format {
        "csv" => {
            let mut out = Vec::new();
            {
                let mut writer = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out);
                for batch in &batches {
                    writer.write(batch)?;
                }
            }
            Ok(([(CONTENT_TYPE, "text/csv")], Body::from(out)).into_response())
        }
        "arrow" => {
            let schema = batches
                .first()
                .map(|b| b.schema())
                .unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty()));
            let mut out = Vec::new();
            {
                let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema)?;
                for batch in &batches {
                    writer.write(batch)?;
                }
                writer.finish()?;
            }
            Ok((
                [(CONTENT_TYPE, "application/vnd.apache.arrow.stream")],
                Body::from(out),
            )
                .into_response())
        }
        _ => {
            let rows = json_rows(&batches)?;
            Ok(axum::Json(SqlResponse {
                columns,
                rows,
                truncated,
                elapsed_ms,
            })
            .into_response())
        }
    }
}

fn first_rows(batches: &[RecordBatch], max_rows: usize) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    let mut left = max_rows;
    for batch in batches {
        if left == 0 {
            break;
        }
        let take = batch.num_rows().min(left);
        out.push(batch.slice(0, take));
        left -= take;
    }
    out
}

fn json_rows(batches: &[RecordBatch]) -> Result<Vec<serde_json::Value>, ApiError> {
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::internal(e.to_string()))
}
