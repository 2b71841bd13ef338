//! DataFusion sessions that compute features and scores with the project's SQL.
//!
//! `sql/features.sql` and `sql/score.sql` are compiled into the binary, so the features a
//! model was trained on and the ones it is served are the same text. A session gets our
//! UDFs, a `transactions` table (Parquet files, in-memory batches, or — in the stream — the
//! current micro-batch plus per-card state), and the `features` and `scored` views.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use risksense_formats::codec::parquet::{
    Dictionaries, FILE_ROW_GROUP_ROWS, SCORED_DICTIONARY_COLUMNS, writer_properties,
};
use risksense_udfs::{Model, ModelHandle};

use crate::error::QueryError;
use risksense_formats::source::{TransactionFile, expand_files};

/// The feature SQL (see the file for what it computes).
pub const FEATURES_SQL: &str = include_str!("../../../sql/features.sql");
/// The scoring SQL.
pub const SCORE_SQL: &str = include_str!("../../../sql/score.sql");
/// Columns of the `features` view before the model inputs: what [`feature_names`] skips.
/// Consumers take the model inputs by name ([`crate::features::feature_matrix`]).
pub const ID_COLUMNS: usize = 9;
/// Name of the table the SQL reads.
pub const TRANSACTIONS: &str = "transactions";

/// How a session uses the machine.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    /// Parallel partitions per query (the cores DataFusion may use).
    pub target_partitions: usize,
    /// Rows per batch inside plans (one ONNX Runtime run per batch).
    pub batch_size: usize,
    /// Memory a query may hold, in bytes (None: no limit). Queries past it fail cleanly.
    pub memory_limit: Option<usize>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            target_partitions: std::thread::available_parallelism().map_or(2, |n| n.get()),
            batch_size: 8192,
            memory_limit: None,
        }
    }
}

impl SessionOptions {
    /// For scoring whole files (`rescore`, the benchmarks' batch jobs): 8 partitions per
    /// core. The card windows materialise each partition whole (DataFusion's
    /// `WindowAggExec`), so with one partition per core each holds half the input at
    /// once, and its sort, windows and scoring run one after the other. Smaller partitions
    /// keep that in cache and let one partition sort while another scores. Measured on 2
    /// cores, 5.2M rows: 2 partitions 730k rows/s and 4.9 GB peak RSS, 8 partitions 1.0M
    /// and 2.9 GB, 16 partitions 1.06M and 2.7–3.0 GB (BENCHMARKS.md).
    pub fn rescoring() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            target_partitions: 8 * cores,
            ..Self::default()
        }
    }
}

/// A session with the UDFs registered (the model ones only when a model is given, with a
/// handle of their own: see [`new_session_with_handle`] for a model that may change).
pub fn new_session(
    model: Option<Arc<Model>>,
    options: SessionOptions,
) -> Result<SessionContext, QueryError> {
    new_session_with_handle(model.map(|m| Arc::new(ModelHandle::new(m))), options)
}

/// A session whose model functions score with the current model of `model`: swapping it
/// changes what plans of this session score with, without planning them again.
pub fn new_session_with_handle(
    model: Option<Arc<ModelHandle>>,
    options: SessionOptions,
) -> Result<SessionContext, QueryError> {
    let config = SessionConfig::new()
        .with_target_partitions(options.target_partitions.max(1))
        .with_batch_size(options.batch_size.max(1))
        .with_information_schema(true);
    let mut builder = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features();
    if let Some(limit) = options.memory_limit {
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_memory_limit(limit, 1.0)
            .build_arc()?;
        builder = builder.with_runtime_env(runtime);
    }
    let mut state = builder.build();
    risksense_udfs::register(&mut state, model)?;
    Ok(SessionContext::new_with_state(state))
}

/// Where to read the SQL from instead of the compiled-in text (to try a feature change
/// without rebuilding): a folder with features.sql and score.sql.
pub const SQL_DIR_ENV: &str = "RISKSENSE_SQL_DIR";

/// The SQL text of `file` (features.sql or score.sql): from `RISKSENSE_SQL_DIR` when set,
/// else the text compiled into the binary.
pub fn sql_text(file: &str) -> Result<String, QueryError> {
    if let Some(dir) = std::env::var_os(SQL_DIR_ENV) {
        let path = PathBuf::from(dir).join(file);
        return std::fs::read_to_string(&path).map_err(|e| QueryError::Open { path, source: e });
    }
    Ok(match file {
        "features.sql" => FEATURES_SQL,
        "score.sql" => SCORE_SQL,
        other => return Err(QueryError::InvalidArgument(format!("no SQL file {other}"))),
    }
    .to_string())
}

/// Creates the `features` view and, given the session's model, the `scored` view, after
/// checking that the model was trained on exactly the features the view computes. The
/// `transactions` table must be registered first.
pub async fn install_views(ctx: &SessionContext, model: Option<&Model>) -> Result<(), QueryError> {
    ctx.sql(&sql_text("features.sql")?).await?.collect().await?;
    if let Some(model) = model {
        check_model_fits(ctx, model).await?;
        ctx.sql(&sql_text("score.sql")?).await?.collect().await?;
    }
    Ok(())
}

/// The model inputs the `features` view produces, in order.
pub async fn feature_names(ctx: &SessionContext) -> Result<Vec<String>, QueryError> {
    let schema = ctx.table("features").await?.schema().as_arrow().clone();
    Ok(schema
        .fields()
        .iter()
        .skip(ID_COLUMNS)
        .map(|f| f.name().clone())
        .collect())
}

/// Fails with a clear message unless the model was trained on exactly these features.
pub async fn check_model_fits(ctx: &SessionContext, model: &Model) -> Result<(), QueryError> {
    let names = feature_names(ctx).await?;
    if names != model.card.features {
        return Err(QueryError::ModelMismatch(format!(
            "model `{}` ({}) was trained on {} features [{}], but sql/features.sql computes {} [{}]",
            model.card.name,
            model.dir.display(),
            model.card.features.len(),
            model.card.features.join(", "),
            names.len(),
            names.join(", ")
        )));
    }
    Ok(())
}

/// Registers `batches` as table `name`.
pub fn register_batches(
    ctx: &SessionContext,
    name: &str,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<(), QueryError> {
    let table = MemTable::try_new(schema, vec![batches])?;
    ctx.deregister_table(name)?;
    ctx.register_table(name, Arc::new(table))?;
    Ok(())
}

/// Registers files as table `name`. Parquet (a file, a folder, or a glob such as
/// `history/**/*.parquet`) is scanned by DataFusion in parallel, whatever its columns;
/// CSV must be transaction CSV and is read into memory with our reader.
pub async fn register_files(
    ctx: &SessionContext,
    name: &str,
    inputs: &[PathBuf],
) -> Result<(), QueryError> {
    let all_parquet = inputs.iter().all(|p| {
        let text = p.to_string_lossy();
        text.ends_with(".parquet") || (p.is_dir() && !text.ends_with(".csv"))
    });
    if all_parquet && inputs.len() == 1 {
        let path = &inputs[0];
        let location = if path.is_dir() {
            format!("{}/", path.display())
        } else {
            path.display().to_string()
        };
        ctx.deregister_table(name)?;
        if name != TRANSACTIONS {
            ctx.register_parquet(name, &location, ParquetReadOptions::default())
                .await?;
            return Ok(());
        }
        // Transactions get the validation every input path applies; DataFusion scans
        // these files itself, so it runs as a SQL function over the scan.
        let unchecked = format!("{name}_unchecked");
        ctx.deregister_table(&unchecked)?;
        ctx.register_parquet(&unchecked, &location, ParquetReadOptions::default())
            .await?;
        ctx.register_udf(crate::validate_sql::udf());
        ctx.sql(&format!(
            "CREATE OR REPLACE VIEW {name} AS SELECT * FROM {unchecked} WHERE {}",
            crate::validate_sql::call()
        ))
        .await?;
        return Ok(());
    }
    let mut batches = Vec::new();
    for path in expand_files(inputs)? {
        for batch in TransactionFile::open(&path, 8192, false)? {
            batches.push(batch?);
        }
    }
    register_batches(
        ctx,
        name,
        risksense_common::schema::transaction_schema(),
        batches,
    )
}

/// What a rescoring run wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct RescoreStats {
    pub rows: u64,
    pub anomalies: u64,
    /// Anomalies whose row is labelled fraud.
    pub frauds_flagged: u64,
}

/// DataFusion's writer options saying what `properties` says (DataFusion's Parquet sink
/// takes its own options, not the parquet crate's): compression, row group size, and the
/// dictionary setting of every column in `columns` that differs from the default.
fn table_parquet_options(
    properties: &WriterProperties,
    columns: &[&str],
) -> datafusion::config::TableParquetOptions {
    let any = ColumnPath::from("");
    let mut options = datafusion::config::TableParquetOptions::default();
    options.global.compression = Some(properties.compression(&any).to_string().to_lowercase());
    options.global.max_row_group_size = properties
        .max_row_group_row_count()
        .unwrap_or(FILE_ROW_GROUP_ROWS);
    let dictionary_by_default = properties.dictionary_enabled(&any);
    options.global.dictionary_enabled = Some(dictionary_by_default);
    for column in columns {
        let dictionary = properties.dictionary_enabled(&ColumnPath::from(*column));
        if dictionary != dictionary_by_default {
            options.column_specific_options.insert(
                (*column).to_string(),
                datafusion::config::ParquetColumnOptions {
                    dictionary_enabled: Some(dictionary),
                    ..Default::default()
                },
            );
        }
    }
    options
}

/// Runs the `scored` view and writes every row as Parquet into the folder `out_dir`, one
/// file per partition written in parallel, then counts what was written. The folder must
/// not hold Parquet files already: the counts (and readers of the folder) would mix runs.
pub async fn write_scored(
    ctx: &SessionContext,
    out_dir: &Path,
) -> Result<RescoreStats, QueryError> {
    use arrow::array::AsArray;
    use datafusion::dataframe::DataFrameWriteOptions;

    std::fs::create_dir_all(out_dir).map_err(|e| QueryError::Open {
        path: out_dir.to_path_buf(),
        source: e,
    })?;
    let occupied = std::fs::read_dir(out_dir)
        .map_err(|e| QueryError::Open {
            path: out_dir.to_path_buf(),
            source: e,
        })?
        .flatten()
        .any(|entry| entry.path().extension().is_some_and(|e| e == "parquet"));
    if occupied {
        return Err(QueryError::InvalidArgument(format!(
            "{} already holds Parquet files: give an empty or new folder",
            out_dir.display()
        )));
    }
    let location = format!("{}/", out_dir.display());
    let properties = writer_properties(
        FILE_ROW_GROUP_ROWS,
        Dictionaries::Only(&SCORED_DICTIONARY_COLUMNS),
    );
    let parquet_options = table_parquet_options(&properties, &SCORED_DICTIONARY_COLUMNS);
    ctx.table("scored")
        .await?
        .write_parquet(
            &location,
            DataFrameWriteOptions::new(),
            Some(parquet_options),
        )
        .await?;

    // Count from the files themselves: cheap (three columns) and exactly what was written.
    let counter = SessionContext::new();
    counter
        .register_parquet("written", &location, ParquetReadOptions::default())
        .await?;
    let batches = counter
        .sql(
            "SELECT count(*), \
             CAST(coalesce(sum(CASE WHEN is_anomaly THEN 1 ELSE 0 END), 0) AS BIGINT), \
             CAST(coalesce(sum(CASE WHEN is_anomaly AND is_fraud = 1 THEN 1 ELSE 0 END), 0) AS BIGINT) \
             FROM written",
        )
        .await?
        .collect()
        .await?;
    let value = |column: usize| -> Result<u64, QueryError> {
        let batch = batches
            .first()
            .ok_or_else(|| QueryError::Plan("no count returned".to_string()))?;
        let array = arrow::compute::cast(batch.column(column), &arrow::datatypes::DataType::Int64)?;
        Ok(array.as_primitive::<arrow::datatypes::Int64Type>().value(0) as u64)
    };
    Ok(RescoreStats {
        rows: value(0)?,
        anomalies: value(1)?,
        frauds_flagged: value(2)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn score_sql_passes_the_features_in_view_order() {
        // The arguments of the model calls in score.sql, as written.
        let arguments_of = |call: &str| -> Vec<String> {
            let start = SCORE_SQL.find(call).expect("call") + call.len();
            let end = start + SCORE_SQL[start..].find(')').expect("close");
            SCORE_SQL[start..end]
                .split(',')
                .map(|a| a.trim().to_string())
                .collect()
        };
        let arguments = arguments_of("anomaly_score(");
        assert_eq!(arguments_of("anomaly_explain("), arguments);
        assert_eq!(arguments_of("challenger_score("), arguments);
        // The feature columns the features view produces, from DataFusion's own plan.
        let ctx = new_session(None, SessionOptions::default()).expect("session");
        register_batches(
            &ctx,
            TRANSACTIONS,
            risksense_common::schema::transaction_schema(),
            vec![],
        )
        .expect("table");
        install_views(&ctx, None).await.expect("views");
        let names = feature_names(&ctx).await.expect("names");
        assert_eq!(arguments, names);
        assert_eq!(names.len(), 30);
    }
}
