//! What can go wrong talking to Kafka, the result store or the archive's files.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Some records were not acknowledged. Retryable only when every failure was (a
    /// broker away or slow, a dead letter cut to the topic's size limit for its resend).
    #[error("kafka delivery failed for {failed} of {attempted} messages (first error: {source})")]
    Delivery {
        failed: u64,
        attempted: u64,
        retryable: bool,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Records neither acknowledged nor failed within the flush timeout.
    #[error("kafka acknowledged {} of {attempted} messages in time", attempted - missing)]
    Unacknowledged { missing: u64, attempted: u64 },
    /// A blocking task (sealing an archive file) panicked or was cancelled.
    #[error("{what} failed: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("result store: {0}")]
    Store(#[from] risksense_store::StoreError),
    #[error(transparent)]
    Format(#[from] risksense_formats::FormatError),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("encoding a record: {0}")]
    Encode(#[from] serde_json::Error),
    /// A sink defined outside this crate (the continuous queries) failed.
    #[error("{what}: {source}")]
    Sink {
        what: String,
        retryable: bool,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ConnectorError {
    /// True when the same step may succeed if tried again: a service away, busy or still
    /// loading (Redis unreachable, LOADING, TRYAGAIN; a broker's transport or timeout; a
    /// disk hiccup). False when it never will: Redis refusing the command (WRONGTYPE, OOM,
    /// NOAUTH), Kafka refusing the client or the record (authorization, size), bad data.
    pub fn is_retryable(&self) -> bool {
        match self {
            ConnectorError::Store(error) => error.is_unavailable(),
            ConnectorError::Kafka(error) => kafka_retryable(error),
            ConnectorError::Delivery { retryable, .. } => *retryable,
            ConnectorError::Unacknowledged { .. } => true,
            ConnectorError::Sink { retryable, .. } => *retryable,
            // A read or write cut short may go through next time; a file that cannot be
            // opened (missing folder, permissions) will not.
            ConnectorError::Io(_) => true,
            _ => false,
        }
    }
}

/// Kafka errors no retry can fix: the client is refused, or the record itself is.
pub fn kafka_retryable(error: &rdkafka::error::KafkaError) -> bool {
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
