//! The RiskSense streaming engine (`risksense run`): Kafka micro-batches → Arrow → the
//! scoring SQL with the model → the sinks, with offsets committed only once all of them
//! hold the data.
//!
//! - [`stream`]: config, the pipeline (one micro-batch through the sinks), the checkpoint
//!   coordinator, the consumer-group loop.
//! - [`labels`]: label feedback: the labels topic joined with the scored records (live
//!   precision and recall per model) and written beside the archive.
//!
//! What it drives lives below it: formats and validation (`risksense-formats`), the SQL
//! (`risksense-query`), the sinks and Kafka (`risksense-connectors`), the result store
//! (`risksense-store`).

pub mod error;
pub mod labels;
pub mod stream;

pub use error::EngineError;
