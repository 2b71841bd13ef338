//! Parquet files of transactions: read (casting whatever physical types the writer chose to
//! the transaction schema, then checking every row as every input path does) and write.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::AsArray;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::builder::FieldError;
use crate::error::FormatError;
use crate::validate::{invalid_rows, without_rows};
use risksense_common::schema::{column_names, transaction_schema};

/// Reads a Parquet file as transaction batches.
///
/// Numeric columns must be stored as numbers (a string `amt` is refused for the whole
/// file), and an integer column stored as floating point must hold whole numbers (a
/// `cc_num` of 1.5 is not truncated onto another card). Each row then passes
/// [`crate::validate::check_row`]: a bad row stops the read with its row number (counted
/// from 0), or is skipped and counted when `skip_bad` is set.
pub struct ParquetTransactionReader {
    reader: ParquetRecordBatchReader,
    /// For each schema column, its index in the file's batches.
    positions: Vec<usize>,
    path: PathBuf,
    skip_bad: bool,
    rows_read: u64,
    rows_skipped: u64,
    first_skipped: Option<String>,
}

impl ParquetTransactionReader {
    pub fn open(path: &Path, batch_size: usize, skip_bad: bool) -> Result<Self, FormatError> {
        let file = File::open(path).map_err(|e| FormatError::Open {
            path: path.to_path_buf(),
            source: e,
        })?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)?.with_batch_size(batch_size);
        let file_schema = builder.schema().clone();
        let mut positions = Vec::new();
        for field in transaction_schema().fields() {
            let position = file_schema.index_of(field.name()).map_err(|_| {
                FormatError::Schema(format!(
                    "{} has no `{}` column",
                    path.display(),
                    field.name()
                ))
            })?;
            let stored = file_schema.field(position).data_type();
            if field.data_type().is_numeric() && !stored.is_numeric() {
                return Err(FormatError::Schema(format!(
                    "{}: column `{}` is stored as {stored}: numbers must be stored as numbers",
                    path.display(),
                    field.name()
                )));
            }
            positions.push(position);
        }
        Ok(Self {
            reader: builder.build()?,
            positions,
            path: path.to_path_buf(),
            skip_bad,
            rows_read: 0,
            rows_skipped: 0,
            first_skipped: None,
        })
    }

    /// Bad rows skipped so far (only with `skip_bad`).
    pub fn rows_skipped(&self) -> u64 {
        self.rows_skipped
    }

    /// The first skipped row's error.
    pub fn first_skipped(&self) -> Option<&str> {
        self.first_skipped.as_deref()
    }

    /// The batch in the transaction schema, with the rows whose stored values do not fit
    /// it (fractional integers); nulls are left for the row check.
    fn conform(
        &self,
        batch: RecordBatch,
    ) -> Result<(RecordBatch, Vec<(usize, FieldError)>), FormatError> {
        let names = column_names();
        let mut problems = Vec::new();
        let mut columns = Vec::with_capacity(self.positions.len());
        for (index, (field, &position)) in transaction_schema()
            .fields()
            .iter()
            .zip(&self.positions)
            .enumerate()
        {
            let column = batch.column(position);
            if column.data_type() == field.data_type() {
                columns.push(column.clone());
                continue;
            }
            if field.data_type().is_integer() && column.data_type().is_floating() {
                let floats = cast(column, &DataType::Float64)?;
                let floats = floats.as_primitive::<Float64Type>();
                for (row, value) in floats.iter().enumerate() {
                    if let Some(value) = value
                        && (!value.is_finite() || value.fract() != 0.0)
                    {
                        problems.push((
                            row,
                            FieldError {
                                column: names[index],
                                reason: format!("{value} is not an integer"),
                            },
                        ));
                    }
                }
            }
            columns.push(cast(column, field.data_type())?);
        }
        Ok((
            RecordBatch::try_new(
                risksense_common::schema::nullable_transaction_schema(),
                columns,
            )?,
            problems,
        ))
    }

    fn check(&mut self, batch: RecordBatch) -> Result<RecordBatch, FormatError> {
        let first_row = self.rows_read;
        self.rows_read += batch.num_rows() as u64;
        let (batch, mut problems) = self.conform(batch)?;
        problems.extend(invalid_rows(&batch)?);
        // One reason per row, the first found.
        problems.sort_by_key(|(row, _)| *row);
        problems.dedup_by_key(|(row, _)| *row);
        if let Some((row, error)) = problems.first()
            && !self.skip_bad
        {
            return Err(FormatError::InvalidRow {
                path: self.path.clone(),
                row: first_row + *row as u64,
                source: error.clone(),
            });
        }
        if let Some((row, error)) = problems.first()
            && self.first_skipped.is_none()
        {
            self.first_skipped = Some(format!("row {}: {error}", first_row + *row as u64));
        }
        self.rows_skipped += problems.len() as u64;
        let kept = without_rows(&batch, &problems)?;
        // No nulls are left: the batch has the transaction schema's non-null fields.
        Ok(RecordBatch::try_new(
            transaction_schema(),
            kept.columns().to_vec(),
        )?)
    }
}

impl Iterator for ParquetTransactionReader {
    type Item = Result<RecordBatch, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let batch = match self.reader.next()? {
                Ok(batch) => batch,
                Err(error) => return Some(Err(error.into())),
            };
            match self.check(batch) {
                // A batch of bad rows only: read on.
                Ok(kept) if kept.num_rows() == 0 => continue,
                outcome => return Some(outcome),
            }
        }
    }
}

/// Columns of scored rows with few distinct values: the only ones written with a
/// dictionary in scored files (archive, rescoring). The model ids are one or two values a
/// file.
pub const SCORED_DICTIONARY_COLUMNS: [&str; 7] = [
    "cc_num",
    "category",
    "merchant",
    "is_fraud",
    "model_id",
    "challenger_id",
    "supervised_id",
];

/// Rows per row group of transaction and rescored files.
pub const FILE_ROW_GROUP_ROWS: usize = 1 << 20;

/// Which columns a writer encodes with a dictionary.
#[derive(Debug, Clone, Copy)]
pub enum Dictionaries<'a> {
    /// Every column (transaction files: names, places and jobs repeat per card).
    All,
    /// Only these: for unique columns (trans_num, row_id, the scores) the writer builds a
    /// dictionary, finds it too big and falls back, per page, which was a third of
    /// rescoring's write time.
    Only(&'a [&'a str]),
}

/// The one definition of how RiskSense writes Parquet (transaction files, the stream's
/// archive, and, converted to DataFusion's options, rescoring): Snappy, cheaper to write
/// and to rescore than zstd; `row_group_rows` per row group; dictionaries as `dictionaries`.
pub fn writer_properties(
    row_group_rows: usize,
    dictionaries: Dictionaries<'_>,
) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(row_group_rows));
    if let Dictionaries::Only(columns) = dictionaries {
        builder = builder.set_dictionary_enabled(false);
        for column in columns {
            builder = builder.set_column_dictionary_enabled((*column).into(), true);
        }
    }
    builder.build()
}

/// Creates a Parquet writer for batches of `schema` at `path`.
pub fn create_writer(
    path: &Path,
    schema: arrow::datatypes::SchemaRef,
) -> Result<ArrowWriter<File>, FormatError> {
    let file = File::create(path).map_err(|e| FormatError::Open {
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(ArrowWriter::try_new(
        file,
        schema,
        Some(writer_properties(FILE_ROW_GROUP_ROWS, Dictionaries::All)),
    )?)
}
