//! The streaming engine (`risksense run`): Kafka micro-batches → Arrow → the scoring SQL
//! with the model → Redis, the alerts topic and the Parquet archive, with offsets committed
//! only once all of them hold the data.
//!
//! - [`config`]: settings (TOML, flags, environment).
//! - [`pipeline`]: one micro-batch through every sink; checkpoints.
//! - [`checkpoint`]: the coordinator: owned partitions, offsets, whose turn it is.
//! - [`sinks`]: the sinks a run writes to, and the live window's.
//! - [`runner`]: the consumer-group loop, rebalances and shutdown.

pub mod checkpoint;
pub mod config;
pub mod pipeline;
pub mod runner;
pub mod sinks;

pub use config::StreamConfig;
pub use runner::{RunOptions, RunSummary, run_stream};
// Part of `run_stream`'s signature: the caller creates them and shares them with the API.
pub use risksense_common::metrics::StreamMetrics;
pub use risksense_query::LiveWindow;
