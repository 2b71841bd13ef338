//! Column builders for the transaction schema, filled from text fields one row at a time.
//!
//! A row is validated completely before any builder is touched, so a bad row can be
//! rejected (with the column and the reason) without leaving a half-written row behind.

use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, Date32Builder, Float64Builder, Int32Builder, Int64Builder,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::record_batch::RecordBatch;

use crate::error::FormatError;
use risksense_common::schema::{COLUMN_COUNT, col, column_names, idx, transaction_schema};
use risksense_common::time::{parse_date, parse_timestamp_micros};

/// Why one field of a row could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub column: &'static str,
    pub reason: String,
}

impl std::error::Error for FieldError {}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "column `{}`: {}", self.column, self.reason)
    }
}

/// One transaction's values, typed; the text columns are borrowed.
#[derive(Debug, Clone, Copy)]
pub struct TransactionRow<'a> {
    pub row_id: i64,
    /// Event time, microseconds since the epoch.
    pub event_time: i64,
    pub cc_num: i64,
    pub amt: f64,
    pub zip: i32,
    pub lat: f64,
    pub long: f64,
    pub city_pop: i64,
    /// Days since the epoch.
    pub dob: i32,
    pub unix_time: i64,
    pub merch_lat: f64,
    pub merch_long: f64,
    pub is_fraud: i32,
    /// The text columns, in the order of [`STRING_COLUMNS`].
    pub strings: [&'a str; 10],
}

/// Schema positions of [`TransactionRow::strings`]: merchant, category, first, last,
/// gender, street, city, state, job, trans_num.
pub const STRING_COLUMNS: [usize; 10] = [
    idx::MERCHANT,
    idx::CATEGORY,
    idx::FIRST,
    idx::LAST,
    idx::GENDER,
    idx::STREET,
    idx::CITY,
    idx::STATE,
    idx::JOB,
    idx::TRANS_NUM,
];

fn number<T: std::str::FromStr>(
    fields: &[&str; COLUMN_COUNT],
    index: usize,
    what: &str,
) -> Result<T, FieldError> {
    let column = column_names()[index];
    let text = fields[index].trim();
    text.parse::<T>().map_err(|_| FieldError {
        column,
        reason: if text.is_empty() {
            "missing value".to_string()
        } else {
            format!("`{text}` is not {what}")
        },
    })
}

fn parse_row<'a>(fields: &[&'a str; COLUMN_COUNT]) -> Result<TransactionRow<'a>, FieldError> {
    let event_time =
        parse_timestamp_micros(fields[idx::TRANS_DATE_TRANS_TIME]).ok_or_else(|| FieldError {
            column: col::TRANS_DATE_TRANS_TIME,
            reason: format!(
                "`{}` is not a time like 2019-01-01 00:05:02",
                fields[idx::TRANS_DATE_TRANS_TIME]
            ),
        })?;
    let dob = parse_date(fields[idx::DOB]).ok_or_else(|| FieldError {
        column: col::DOB,
        reason: format!("`{}` is not a date like 1977-11-23", fields[idx::DOB]),
    })?;
    let mut strings = [""; 10];
    for (slot, &index) in strings.iter_mut().zip(STRING_COLUMNS.iter()) {
        *slot = fields[index];
    }
    let row = TransactionRow {
        row_id: number(fields, idx::ROW_ID, "an integer")?,
        event_time,
        cc_num: number(fields, idx::CC_NUM, "a card number (integer)")?,
        amt: number(fields, idx::AMT, "a number")?,
        zip: number(fields, idx::ZIP, "an integer zip code")?,
        lat: number(fields, idx::LAT, "a number")?,
        long: number(fields, idx::LONG, "a number")?,
        city_pop: number(fields, idx::CITY_POP, "an integer")?,
        dob,
        unix_time: number(fields, idx::UNIX_TIME, "an integer")?,
        merch_lat: number(fields, idx::MERCH_LAT, "a number")?,
        merch_long: number(fields, idx::MERCH_LONG, "a number")?,
        is_fraud: number(fields, idx::IS_FRAUD, "0 or 1")?,
        strings,
    };
    // The ranges every input path shares.
    crate::validate::check_row(&row)?;
    Ok(row)
}

/// Accumulates rows into a [`RecordBatch`] of the transaction schema.
pub struct TransactionBuilder {
    row_id: Int64Builder,
    event_time: TimestampMicrosecondBuilder,
    cc_num: Int64Builder,
    amt: Float64Builder,
    zip: Int32Builder,
    lat: Float64Builder,
    long: Float64Builder,
    city_pop: Int64Builder,
    dob: Date32Builder,
    unix_time: Int64Builder,
    merch_lat: Float64Builder,
    merch_long: Float64Builder,
    is_fraud: Int32Builder,
    strings: Vec<StringBuilder>,
    capacity: usize,
}

impl TransactionBuilder {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            row_id: Int64Builder::with_capacity(capacity),
            event_time: TimestampMicrosecondBuilder::with_capacity(capacity),
            cc_num: Int64Builder::with_capacity(capacity),
            amt: Float64Builder::with_capacity(capacity),
            zip: Int32Builder::with_capacity(capacity),
            lat: Float64Builder::with_capacity(capacity),
            long: Float64Builder::with_capacity(capacity),
            city_pop: Int64Builder::with_capacity(capacity),
            dob: Date32Builder::with_capacity(capacity),
            unix_time: Int64Builder::with_capacity(capacity),
            merch_lat: Float64Builder::with_capacity(capacity),
            merch_long: Float64Builder::with_capacity(capacity),
            is_fraud: Int32Builder::with_capacity(capacity),
            strings: (0..STRING_COLUMNS.len())
                .map(|_| StringBuilder::with_capacity(capacity, capacity * 16))
                .collect(),
            capacity,
        }
    }

    /// Rows appended since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.row_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Validates and appends one row given as its 23 text fields in schema order.
    /// On error nothing is appended.
    pub fn append_text_row(&mut self, fields: &[&str; COLUMN_COUNT]) -> Result<(), FieldError> {
        let row = parse_row(fields)?;
        self.append_row(&row);
        Ok(())
    }

    /// Appends one typed row.
    pub fn append_row(&mut self, row: &TransactionRow<'_>) {
        self.row_id.append_value(row.row_id);
        self.event_time.append_value(row.event_time);
        self.cc_num.append_value(row.cc_num);
        self.amt.append_value(row.amt);
        self.zip.append_value(row.zip);
        self.lat.append_value(row.lat);
        self.long.append_value(row.long);
        self.city_pop.append_value(row.city_pop);
        self.dob.append_value(row.dob);
        self.unix_time.append_value(row.unix_time);
        self.merch_lat.append_value(row.merch_lat);
        self.merch_long.append_value(row.merch_long);
        self.is_fraud.append_value(row.is_fraud);
        for (builder, value) in self.strings.iter_mut().zip(row.strings) {
            builder.append_value(value);
        }
    }

    /// The rows appended, as a batch, without reserving for another one.
    pub fn into_batch(mut self) -> Result<RecordBatch, FormatError> {
        self.capacity = 0;
        self.finish()
    }

    /// Takes the rows appended so far as a batch and starts a new one.
    pub fn finish(&mut self) -> Result<RecordBatch, FormatError> {
        let mut columns: Vec<Option<ArrayRef>> = vec![None; COLUMN_COUNT];
        columns[idx::ROW_ID] = Some(Arc::new(self.row_id.finish()));
        columns[idx::TRANS_DATE_TRANS_TIME] = Some(Arc::new(self.event_time.finish()));
        columns[idx::CC_NUM] = Some(Arc::new(self.cc_num.finish()));
        columns[idx::AMT] = Some(Arc::new(self.amt.finish()));
        columns[idx::ZIP] = Some(Arc::new(self.zip.finish()));
        columns[idx::LAT] = Some(Arc::new(self.lat.finish()));
        columns[idx::LONG] = Some(Arc::new(self.long.finish()));
        columns[idx::CITY_POP] = Some(Arc::new(self.city_pop.finish()));
        columns[idx::DOB] = Some(Arc::new(self.dob.finish()));
        columns[idx::UNIX_TIME] = Some(Arc::new(self.unix_time.finish()));
        columns[idx::MERCH_LAT] = Some(Arc::new(self.merch_lat.finish()));
        columns[idx::MERCH_LONG] = Some(Arc::new(self.merch_long.finish()));
        columns[idx::IS_FRAUD] = Some(Arc::new(self.is_fraud.finish()));
        for (builder, &index) in self.strings.iter_mut().zip(STRING_COLUMNS.iter()) {
            columns[index] = Some(Arc::new(builder.finish()));
        }
        let columns: Vec<ArrayRef> = columns.into_iter().flatten().collect();
        // Reserve again so the next batch does not grow its buffers row by row.
        *self = Self::with_capacity(self.capacity);
        Ok(RecordBatch::try_new(transaction_schema(), columns)?)
    }
}
