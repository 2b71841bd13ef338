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
    /// Scoring a micro-batch of validated rows failed twice: a fault of the engine, its SQL
    /// or the model, never bad input (which validation sets aside first).
    #[error(
        "scoring a micro-batch of {rows} validated rows failed twice (an engine or model fault, not bad input): {source}"
    )]
    ScoringFault {
        rows: usize,
        #[source]
        source: Box<EngineError>,
    },
    /// A row of a file that every input path would refuse (row counted from 0).
    #[error("{path}: row {row}: {source}")]
    InvalidRow {
        path: PathBuf,
        row: u64,
        source: crate::codec::builder::FieldError,
    },
}

impl EngineError {
    /// True when the same step may succeed if tried again: a service away, busy or still
    /// loading (Redis unreachable, LOADING, TRYAGAIN; a broker's transport or timeout).
    /// False when it never will: Redis refusing the command (WRONGTYPE, OOM, NOAUTH),
    /// Kafka refusing the client or the record (authorization, size), bad data, a broken
    /// model. The stream retries the first kind with backoff and stops on the second,
    /// committing nothing past what the sinks hold.
    pub fn is_retryable(&self) -> bool {
        match self {
            EngineError::Store(error) => error.is_unavailable(),
            EngineError::Kafka(error) => kafka_retryable(error),
            // Delivery reports count messages the broker did not acknowledge in time.
            EngineError::Delivery { .. } => true,
            EngineError::Io(_) => true,
            EngineError::Sink(inner) => inner.is_retryable(),
            _ => false,
        }
    }
}

/// Kafka errors no retry can fix: the client is refused, or the record itself is.
fn kafka_retryable(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    !matches!(
        error.rdkafka_error_code(),
        Some(
            Code::TopicAuthorizationFailed
                | Code::GroupAuthorizationFailed
                | Code::ClusterAuthorizationFailed
                | Code::SaslAuthenticationFailed
                | Code::Authentication
                | Code::MessageSizeTooLarge
                | Code::InvalidMessageSize
                | Code::InvalidRecord
                | Code::UnknownTopic
                | Code::InvalidConfig
                | Code::Fatal
        )
    )
}
