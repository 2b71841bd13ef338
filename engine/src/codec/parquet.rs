//! Parquet files of transactions: read (casting whatever physical types the writer chose to
//! the transaction schema) and write.

use std::fs::File;
use std::path::Path;

use arrow::array::ArrayRef;
use arrow::compute::cast;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::error::EngineError;
use crate::schema::transaction_schema;

/// Reads a Parquet file as transaction batches.
pub struct ParquetTransactionReader {
    reader: ParquetRecordBatchReader,
    /// For each schema column, its index in the file's batches.
    positions: Vec<usize>,
}

impl ParquetTransactionReader {
    pub fn open(path: &Path, batch_size: usize) -> Result<Self, EngineError> {
        let file = File::open(path).map_err(|e| EngineError::Open {
            path: path.to_path_buf(),
            source: e,
        })?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)?.with_batch_size(batch_size);
        let file_schema = builder.schema().clone();
        let mut positions = Vec::new();
        for field in transaction_schema().fields() {
            let position = file_schema.index_of(field.name()).map_err(|_| {
                EngineError::Schema(format!(
                    "{} has no `{}` column",
                    path.display(),
                    field.name()
                ))
            })?;
            positions.push(position);
        }
        Ok(Self {
            reader: builder.build()?,
            positions,
        })
    }

    fn conform(&self, batch: RecordBatch) -> Result<RecordBatch, EngineError> {
        let schema = transaction_schema();
        let columns = schema
            .fields()
            .iter()
            .zip(&self.positions)
            .map(|(field, &position)| {
                let column = batch.column(position);
                if column.data_type() == field.data_type() {
                    Ok(column.clone())
                } else {
                    cast(column, field.data_type()).map_err(EngineError::from)
                }
            })
            .collect::<Result<Vec<ArrayRef>, EngineError>>()?;
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

impl Iterator for ParquetTransactionReader {
    type Item = Result<RecordBatch, EngineError>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = self.reader.next()?;
        Some(
            batch
                .map_err(EngineError::from)
                .and_then(|b| self.conform(b)),
        )
    }
}

/// Writer properties for our files: Snappy (cheap to decode for rescoring) and row groups
/// of about a million rows.
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(1 << 20))
        .build()
}

/// Creates a Parquet writer for batches of `schema` at `path`.
pub fn create_writer(
    path: &Path,
    schema: arrow::datatypes::SchemaRef,
) -> Result<ArrowWriter<File>, EngineError> {
    let file = File::create(path).map_err(|e| EngineError::Open {
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(ArrowWriter::try_new(
        file,
        schema,
        Some(writer_properties()),
    )?)
}
