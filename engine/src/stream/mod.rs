//! The streaming engine (`risksense run`): Kafka micro-batches → Arrow → the scoring SQL
//! with the model → Redis, the alerts topic and the Parquet archive, with offsets committed
//! only once all of them hold the data.
//!
//! - [`config`]: settings (TOML, flags, environment).
//! - [`decode`]: messages → one Arrow batch; bad messages set aside with a reason.
//! - [`scorer`]: the scoring plan, planned once and executed per micro-batch, with the
//!   per-card history its window functions carry between batches.
//! - [`archive`]: rolling Parquet files finished at checkpoints.
//! - [`live`]: the last minutes of scored rows in memory, for SQL over the stream.
//! - [`pipeline`]: one micro-batch through every sink; checkpoints.
//! - [`runner`]: the consumer-group loop, rebalances and shutdown.
//! - [`metrics`]: counters and latency histograms.

pub mod archive;
pub mod config;
pub mod decode;
pub mod live;
pub mod metrics;
pub mod pipeline;
pub mod runner;
pub mod scorer;

pub use config::StreamConfig;
pub use live::LiveWindow;
pub use metrics::StreamMetrics;
pub use runner::{RunOptions, RunSummary, run_stream};
