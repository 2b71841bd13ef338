//! The SQL layer: everything that plans or runs sql/features.sql and sql/score.sql.
//!
//! - [`scoring`]: DataFusion sessions with our UDFs, the compiled-in SQL, table
//!   registration (Parquet globs, CSV, in-memory batches), the model/feature check,
//!   Parquet rescoring.
//! - [`scorer`]: the scoring plan, planned once and executed per micro-batch, with the
//!   per-card history its window functions carry between batches.
//! - [`live`]: the last minutes of scored rows in memory, for SQL over the stream.
//! - [`features`]: the model's input matrix, selected from the features view by name.
//! - [`validate_sql`]: the shared input validation as a SQL filter.
//!
//! Owns no connection to Kafka or Redis.

pub mod error;
pub mod features;
pub mod live;
pub mod scorer;
pub mod scoring;
pub mod validate_sql;

pub use error::QueryError;
pub use live::LiveWindow;
