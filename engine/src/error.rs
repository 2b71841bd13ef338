//! The stream runtime's error type: what went wrong, with the lower layer's error kept as
//! the source, and whether a retry can fix it.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Format(#[from] risksense_formats::FormatError),
    #[error(transparent)]
    Query(#[from] risksense_query::QueryError),
    #[error(transparent)]
    Connector(#[from] risksense_connectors::ConnectorError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("standing queries: {0}")]
    Queries(#[from] risksense_continuous::ContinuousError),
    #[error("result store: {0}")]
    Store(#[from] risksense_store::StoreError),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    History(#[from] risksense_udfs::windows::HistoryError),
    /// A model that does not fit the plan (at start: the challenger).
    #[error(transparent)]
    Model(#[from] risksense_udfs::SwapError),
    #[error("config: {0}")]
    Config(String),
    #[error("cannot read the config file {path}: {source}")]
    ConfigFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The pipeline's own bookkeeping refused a step (a bug, or a stop request while a
    /// step was being retried).
    #[error("stream state: {0}")]
    State(String),
    /// A background task of the pipeline (a sink's writes, a checkpoint) panicked or was
    /// cancelled.
    #[error("{what} failed: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// A micro-batch's sink writes failed for good (shared by everyone who waited for
    /// them).
    #[error("writing to the sinks: {0}")]
    Sink(#[source] std::sync::Arc<EngineError>),
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
            EngineError::Connector(error) => error.is_retryable(),
            EngineError::Kafka(error) => risksense_connectors::error::kafka_retryable(error),
            EngineError::Sink(inner) => inner.is_retryable(),
            _ => false,
        }
    }
}
