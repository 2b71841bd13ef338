//! What every RiskSense crate agrees on, with no heavy dependency (Arrow only).
//!
//! - [`schema`]: the Kaggle / Sparkov transaction schema as Arrow types, and each
//!   column's role.
//! - [`time`]: the event-time and date text formats (`2019-01-01 00:05:02`).
//! - [`metrics`]: the stream's counters and latency histograms, shared by the engine,
//!   which records them, and the API, which exports them.

pub mod metrics;
pub mod schema;
pub mod time;
