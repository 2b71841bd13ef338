//! Encoders and decoders between transaction batches and the formats they travel in.

pub mod builder;
pub mod csv;
pub mod json;
mod json_scan;
pub mod parquet;

use arrow::record_batch::RecordBatch;

use crate::error::FormatError;
use risksense_common::schema::transaction_schema;

/// Checks that a batch has exactly the transaction schema (names and types).
pub fn check_schema(batch: &RecordBatch) -> Result<(), FormatError> {
    let expected = transaction_schema();
    let actual = batch.schema();
    if actual.fields().len() != expected.fields().len() {
        return Err(FormatError::Schema(format!(
            "expected {} columns, got {}",
            expected.fields().len(),
            actual.fields().len()
        )));
    }
    for (want, have) in expected.fields().iter().zip(actual.fields()) {
        if want.name() != have.name() || want.data_type() != have.data_type() {
            return Err(FormatError::Schema(format!(
                "expected column `{}` of type {}, got `{}` of type {}",
                want.name(),
                want.data_type(),
                have.name(),
                have.data_type()
            )));
        }
    }
    Ok(())
}
