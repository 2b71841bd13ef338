//! Everything a stream reads from or writes to outside the process.
//!
//! - [`kafka`]: client settings, topic creation, the replay producer, the embedded broker
//!   of the demo.
//! - [`sink`]: the [`sink::Sink`] trait the stream's pipeline drives (write, then
//!   prepare-commit and commit at checkpoints) and its implementations: the result store
//!   ([`sink::StoreSink`]), Kafka records ([`sink::KafkaSink`]: alerts and dead letters)
//!   and the Parquet archive ([`archive`]).
//!
//! Knows nothing of SQL or of how rows are scored.

pub mod archive;
pub mod error;
pub mod kafka;
pub mod sink;

pub use error::ConnectorError;
