//! The RiskSense engine.
//!
//! - [`schema`]: the Kaggle / Sparkov transaction schema as Arrow types.
//! - [`codec`]: CSV, JSON and Parquet to and from transaction batches.
//! - [`source`]: opening transaction files by name.
//! - [`synth`]: a seeded generator of Sparkov-like transactions with fraud episodes.
//! - [`kafka`]: client configuration and the replay producer.
//! - [`scoring`]: DataFusion sessions running sql/features.sql and sql/score.sql.
//! - [`stream`]: the streaming engine behind `risksense run`.
//! - [`validate`]: the bounds every input path checks before a row is scored.

pub mod codec;
pub mod error;
pub mod kafka;
pub mod schema;
pub mod scoring;
pub mod source;
pub mod stream;
pub mod synth;
pub mod validate;
pub mod validate_sql;

pub use error::EngineError;
