//! Kaggle-format CSV: read into transaction batches, and write them back byte-compatible
//! with the files pandas writes (`8.80` as `8.8`, fields quoted only where needed).

use std::io::{Read, Write};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Date32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
use arrow::record_batch::RecordBatch;

use super::builder::TransactionBuilder;
use crate::error::FormatError;
use risksense_common::schema::{COLUMN_COUNT, col, column_names, idx};
use risksense_common::time::{write_date, write_timestamp_micros};

/// Header names that mean the unnamed pandas index column.
const ROW_ID_ALIASES: [&str; 3] = ["", "Unnamed: 0", col::ROW_ID];

/// Reads Kaggle-schema CSV into batches of the transaction schema.
///
/// Columns are found by header name, so their order does not matter; the unnamed index
/// column is optional (rows are then numbered from 0). A malformed row stops the read with
/// its line number, or is skipped and counted when `skip_bad` is set.
pub struct CsvTransactionReader<R: Read> {
    reader: csv::Reader<R>,
    /// For each schema column, its position in the file (None: the optional row id).
    positions: [Option<usize>; COLUMN_COUNT],
    builder: TransactionBuilder,
    batch_size: usize,
    skip_bad: bool,
    record: csv::StringRecord,
    rows_read: u64,
    rows_skipped: u64,
    first_skipped: Option<String>,
    done: bool,
}

impl<R: Read> CsvTransactionReader<R> {
    pub fn new(input: R, batch_size: usize, skip_bad: bool) -> Result<Self, FormatError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .from_reader(input);
        let headers = reader.headers().map_err(|e| FormatError::Csv {
            line: 1,
            reason: e.to_string(),
        })?;
        let mut positions = [None; COLUMN_COUNT];
        for (schema_index, name) in column_names().into_iter().enumerate() {
            positions[schema_index] = if schema_index == idx::ROW_ID {
                headers
                    .iter()
                    .position(|h| ROW_ID_ALIASES.contains(&h.trim()))
            } else {
                let found = headers.iter().position(|h| h.trim() == name);
                if found.is_none() {
                    return Err(FormatError::Csv {
                        line: 1,
                        reason: format!("the header has no `{name}` column"),
                    });
                }
                found
            };
        }
        Ok(Self {
            reader,
            positions,
            builder: TransactionBuilder::with_capacity(batch_size),
            batch_size: batch_size.max(1),
            skip_bad,
            record: csv::StringRecord::new(),
            rows_read: 0,
            rows_skipped: 0,
            first_skipped: None,
            done: false,
        })
    }

    /// Data rows read so far, good and bad.
    pub fn rows_read(&self) -> u64 {
        self.rows_read
    }

    /// Bad rows skipped so far (only with `skip_bad`).
    pub fn rows_skipped(&self) -> u64 {
        self.rows_skipped
    }

    /// The first skipped row's error, to show the user what kind of badness was skipped.
    pub fn first_skipped(&self) -> Option<&str> {
        self.first_skipped.as_deref()
    }

    fn read_row(&mut self) -> Result<bool, FormatError> {
        let more = self.reader.read_record(&mut self.record).map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            FormatError::Csv {
                line,
                reason: e.to_string(),
            }
        })?;
        if !more {
            return Ok(false);
        }
        let line = self.record.position().map_or(0, |p| p.line());
        let row_number = self.rows_read.to_string();
        self.rows_read += 1;
        let mut fields = [""; COLUMN_COUNT];
        let mut missing = None;
        for (slot, position) in fields.iter_mut().zip(self.positions.iter()) {
            match position {
                Some(p) => match self.record.get(*p) {
                    Some(value) => *slot = value,
                    None => missing = Some(*p),
                },
                None => *slot = &row_number,
            }
        }
        let outcome = match missing {
            Some(p) => Err(format!(
                "has {} fields, expected at least {}",
                self.record.len(),
                p + 1
            )),
            None => self
                .builder
                .append_text_row(&fields)
                .map_err(|e| e.to_string()),
        };
        if let Err(reason) = outcome {
            if !self.skip_bad {
                return Err(FormatError::Csv { line, reason });
            }
            self.rows_skipped += 1;
            if self.first_skipped.is_none() {
                self.first_skipped = Some(format!("line {line}: {reason}"));
            }
        }
        Ok(true)
    }
}

impl<R: Read> Iterator for CsvTransactionReader<R> {
    type Item = Result<RecordBatch, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        while self.builder.len() < self.batch_size {
            match self.read_row() {
                Ok(true) => {}
                Ok(false) => {
                    self.done = true;
                    break;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        if self.builder.is_empty() {
            return None;
        }
        Some(self.builder.finish())
    }
}

/// Writes transaction batches as Kaggle-format CSV, header first.
pub struct CsvTransactionWriter<W: Write> {
    writer: csv::Writer<W>,
    header_written: bool,
}

impl<W: Write> CsvTransactionWriter<W> {
    pub fn new(output: W) -> Self {
        Self {
            writer: csv::WriterBuilder::new()
                .quote_style(csv::QuoteStyle::Necessary)
                .from_writer(output),
            header_written: false,
        }
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), FormatError> {
        if !self.header_written {
            let mut header = column_names();
            header[idx::ROW_ID] = ""; // pandas leaves its index column unnamed
            self.writer.write_record(header)?;
            self.header_written = true;
        }
        let columns = TypedColumns::new(batch)?;
        let mut fields: Vec<Vec<u8>> = (0..COLUMN_COUNT).map(|_| Vec::with_capacity(32)).collect();
        for row in 0..batch.num_rows() {
            for (i, field) in fields.iter_mut().enumerate() {
                field.clear();
                columns.write_field(row, i, field);
            }
            self.writer.write_record(&fields)?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<W, FormatError> {
        self.writer.flush()?;
        self.writer
            .into_inner()
            .map_err(|e| FormatError::Io(e.into_error()))
    }
}

/// Typed views of a transaction batch's columns, shared by the CSV and JSON encoders.
pub(crate) struct TypedColumns<'a> {
    pub batch: &'a RecordBatch,
}

impl<'a> TypedColumns<'a> {
    pub fn new(batch: &'a RecordBatch) -> Result<Self, FormatError> {
        crate::codec::check_schema(batch)?;
        Ok(Self { batch })
    }

    /// Appends column `column` of row `row` as text, the way pandas writes it.
    pub fn write_field(&self, row: usize, column: usize, out: &mut Vec<u8>) {
        let array = self.batch.column(column);
        if array.is_null(row) {
            return;
        }
        match column {
            idx::TRANS_DATE_TRANS_TIME => write_timestamp_micros(
                out,
                array.as_primitive::<TimestampMicrosecondType>().value(row),
            ),
            idx::DOB => write_date(out, array.as_primitive::<Date32Type>().value(row)),
            idx::ROW_ID | idx::CC_NUM | idx::CITY_POP | idx::UNIX_TIME => {
                let mut buffer = itoa::Buffer::new();
                out.extend_from_slice(
                    buffer
                        .format(array.as_primitive::<Int64Type>().value(row))
                        .as_bytes(),
                );
            }
            idx::ZIP | idx::IS_FRAUD => {
                let mut buffer = itoa::Buffer::new();
                out.extend_from_slice(
                    buffer
                        .format(array.as_primitive::<Int32Type>().value(row))
                        .as_bytes(),
                );
            }
            idx::AMT | idx::LAT | idx::LONG | idx::MERCH_LAT | idx::MERCH_LONG => {
                write_float(out, array.as_primitive::<Float64Type>().value(row));
            }
            _ => out.extend_from_slice(array.as_string::<i32>().value(row).as_bytes()),
        }
    }
}

/// Shortest text that reads back as the same f64, with a `.0` on whole numbers (pandas' and
/// Python's `repr`).
pub(crate) fn write_float(out: &mut Vec<u8>, value: f64) {
    let mut buffer = ryu::Buffer::new();
    out.extend_from_slice(buffer.format(value).as_bytes());
}
