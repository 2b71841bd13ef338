//! Transactions in the formats they travel in, and the one validation every input path
//! applies.
//!
//! - [`codec`]: CSV, JSON and Parquet to and from transaction batches (strict column
//!   builders; one Parquet writer configuration).
//! - [`validate`]: the bounds every row is checked against before it is scored.
//! - [`source`]: opening transaction files and globs by name.
//! - [`message`]: a stream's messages → one batch, bad ones set aside with their reason.
//!
//! Owns no I/O beyond files: no Kafka, no Redis, no SQL.

pub mod codec;
pub mod error;
pub mod message;
pub mod source;
pub mod validate;

pub use error::FormatError;
