//! Continuous SQL: standing queries over the scored stream.
//!
//! - [`ddl`]: `CREATE VIEW …`, `CREATE TABLE … WITH (connector = …)` + `INSERT INTO …`.
//! - [`plan`]: what a query reads and whether it keeps state; windowed aggregates cut into
//!   partial / merge / final plans on DataFusion.
//! - [`window`]: `tumble` and `hop`, bins and windows.
//! - [`state`]: open windows' accumulator state per partition, and its checkpoint form.
//! - [`query`]: a running query: state, counters, subscribers, its output task.
//! - [`output`]: Kafka, Redis and Parquet outputs.
//! - [`registry`]: the run's queries (files, API, subscriptions).
//! - [`bounded`]: the same queries over a bounded input (history), for batch parity.
//! - [`sink`]: all of them as one stream sink (behind `risksense_connectors::sink::Sink`).
//!
//! Depends on the SQL layer and the connectors; the engine only adds the sink.

pub mod bounded;
pub mod ddl;
pub mod error;
pub mod metrics;
pub mod output;
pub mod plan;
pub mod query;
pub mod registry;
pub mod sink;
pub mod state;
pub mod window;

pub use error::ContinuousError;
pub use registry::{Origin, QueryInfo, Registry, Subscription};
pub use sink::ContinuousSink;
