//! What can go wrong with a standing query: refused at creation (the user's SQL), or
//! failing while it runs.

use datafusion::error::DataFusionError;

#[derive(Debug, thiserror::Error)]
pub enum ContinuousError {
    /// The text is not SQL we can parse.
    #[error("cannot parse the query: {0}")]
    Parse(String),
    /// Valid SQL that a standing query cannot run; says what is supported.
    #[error("{0}")]
    Unsupported(String),
    /// A query or sink of that name exists already.
    #[error("{0} exists already")]
    Exists(String),
    #[error("no standing query named {0}")]
    NotFound(String),
    /// Not now: the stream is starting (an HTTP 503).
    #[error("{0}")]
    Unavailable(String),
    /// Planning or running the query in DataFusion (an unknown column, a type error…).
    #[error("{context}: {source}")]
    DataFusion {
        context: String,
        #[source]
        source: DataFusionError,
    },
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Query(#[from] risksense_query::QueryError),
    #[error(transparent)]
    Store(#[from] risksense_store::StoreError),
    #[error(transparent)]
    Connector(#[from] risksense_connectors::ConnectorError),
    #[error("writing {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("sending to Kafka topic {topic}: {source}")]
    Kafka {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("checkpointed query state unreadable: {0}")]
    State(String),
}

impl ContinuousError {
    pub fn plan(context: impl Into<String>) -> impl FnOnce(DataFusionError) -> Self {
        let context = context.into();
        move |source| Self::DataFusion { context, source }
    }

    /// Whether the user's text is at fault (an HTTP 400), not the system.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Self::Parse(_) | Self::Unsupported(_) | Self::Exists(_) | Self::DataFusion { .. }
        )
    }

    /// Whether trying the same write again may succeed (an output's outage).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(error) => error.is_unavailable(),
            Self::Kafka { source, .. } => risksense_connectors::error::kafka_retryable(source),
            Self::Io { .. } => true,
            Self::Connector(error) => error.is_retryable(),
            _ => false,
        }
    }
}

impl From<ContinuousError> for risksense_connectors::ConnectorError {
    fn from(error: ContinuousError) -> Self {
        Self::Sink {
            what: "a standing query".to_string(),
            retryable: error.is_retryable(),
            source: Box::new(error),
        }
    }
}
