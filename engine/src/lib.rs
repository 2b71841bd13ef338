//! The RiskSense engine.
//!
//! - [`schema`]: the Kaggle / Sparkov transaction schema as Arrow types.
//! - [`codec`]: CSV, JSON and Parquet to and from transaction batches.
//! - [`source`]: opening transaction files by name.
//! - [`synth`]: a seeded generator of Sparkov-like transactions with fraud episodes.
//! - [`kafka`]: client configuration and the replay producer.
//! - [`scoring`]: DataFusion sessions running sql/features.sql and sql/score.sql.
//! - [`stream`]: the streaming engine behind `risksense run`.

pub mod codec;
pub mod error;
pub mod kafka;
pub mod schema;
pub mod scoring;
pub mod source;
pub mod stream;
pub mod synth;

pub use error::EngineError;
