//! The engine's error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("line {line}: {reason}")]
    Csv { line: u64, reason: String },
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unsupported input {path}: {reason}")]
    UnsupportedInput { path: PathBuf, reason: String },
    #[error("schema mismatch: {0}")]
    Schema(String),
    #[error("JSON decode: {0}")]
    Decode(String),
    #[error("SQL: {0}")]
    Sql(String),
    #[error("{0}")]
    ModelMismatch(String),
    #[error(transparent)]
    Model(#[from] risksense_udfs::model::ModelError),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("kafka delivery failed for {failed} of {attempted} messages (first error: {first})")]
    Delivery {
        failed: u64,
        attempted: u64,
        first: String,
    },
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error(transparent)]
    CsvWrite(#[from] csv::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("result store: {0}")]
    Store(#[from] risksense_store::StoreError),
    #[error("stream state: {0}")]
    State(String),
    /// A micro-batch's Redis or Kafka writes failed for good (shared by everyone who
    /// waited for them).
    #[error("writing to the sinks: {0}")]
    Sink(std::sync::Arc<EngineError>),
    #[error(transparent)]
    History(#[from] risksense_udfs::windows::HistoryError),
    #[error("config: {0}")]
    Config(String),
    /// A row of a file that every input path would refuse (row counted from 0).
    #[error("{path}: row {row}: {source}")]
    InvalidRow {
        path: PathBuf,
        row: u64,
        source: crate::codec::builder::FieldError,
    },
}
