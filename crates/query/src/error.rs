//! What can go wrong planning or running the scoring SQL.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// DataFusion refused or failed a query (kept whole: its own source chain).
    #[error("SQL: {0}")]
    Sql(#[from] datafusion::error::DataFusionError),
    #[error("SQL: {0}")]
    Plan(String),
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    ModelMismatch(String),
    #[error(transparent)]
    Model(#[from] risksense_udfs::model::ModelError),
    /// A model input is null for some rows (their values put a feature out of reach).
    #[error("feature `{name}` cannot be computed for some transactions (check their values)")]
    NullFeature { name: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Format(#[from] risksense_formats::FormatError),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
