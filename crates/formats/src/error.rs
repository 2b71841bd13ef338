//! What can go wrong reading, decoding, validating or writing transactions.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
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
    #[error("no input files in {0}")]
    NoInputs(String),
    #[error("input glob `{pattern}`: {source}")]
    Glob {
        pattern: String,
        source: globset::Error,
    },
    #[error("JSON decode: {0}")]
    Decode(String),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error(transparent)]
    CsvWrite(#[from] csv::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A row of a file that every input path would refuse (row counted from 0).
    #[error("{path}: row {row}: {source}")]
    InvalidRow {
        path: PathBuf,
        row: u64,
        source: crate::codec::builder::FieldError,
    },
}
