//! Transactions as JSON messages: one object per transaction with the Kaggle column names
//! (what `risksense produce` writes to Kafka), and the decoder that turns a run of such
//! messages straight into an Arrow batch (no per-row structs).

use arrow::array::{Array, AsArray};
use arrow::json::reader::{Decoder, ReaderBuilder};
use arrow::record_batch::RecordBatch;

use super::csv::TypedColumns;
use crate::error::EngineError;
use crate::schema::{COLUMN_COUNT, column_names, idx, transaction_schema};

/// Encodes rows of a transaction batch as JSON objects, reusing one output buffer.
///
/// Times are written as `"2019-01-01 00:05:02"` and dates as `"1956-12-03"`, exactly as in
/// the Kaggle CSV; numbers as JSON numbers (`cc_num` fits in an i64 and is written exactly).
pub struct JsonRowEncoder<'a> {
    columns: TypedColumns<'a>,
    keys: Vec<Vec<u8>>,
}

impl<'a> JsonRowEncoder<'a> {
    pub fn new(batch: &'a RecordBatch) -> Result<Self, EngineError> {
        let keys = column_names()
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let mut key = Vec::with_capacity(name.len() + 4);
                key.push(if i == 0 { b'{' } else { b',' });
                key.push(b'"');
                key.extend_from_slice(name.as_bytes());
                key.extend_from_slice(b"\":");
                key
            })
            .collect();
        Ok(Self {
            columns: TypedColumns::new(batch)?,
            keys,
        })
    }

    pub fn num_rows(&self) -> usize {
        self.columns.batch.num_rows()
    }

    /// Writes row `row` as one JSON object into `out` (which is cleared first).
    pub fn encode_row(&self, row: usize, out: &mut Vec<u8>) {
        out.clear();
        for column in 0..COLUMN_COUNT {
            out.extend_from_slice(&self.keys[column]);
            if self.columns.batch.column(column).is_null(row) {
                out.extend_from_slice(b"null");
                continue;
            }
            match column {
                // Printed by us from numbers: never anything to escape.
                idx::TRANS_DATE_TRANS_TIME | idx::DOB => {
                    out.push(b'"');
                    self.columns.write_field(row, column, out);
                    out.push(b'"');
                }
                _ if is_string_column(column) => {
                    let text = self
                        .columns
                        .batch
                        .column(column)
                        .as_string::<i32>()
                        .value(row);
                    // Writing into a Vec<u8> cannot fail.
                    let _ = serde_json::to_writer(&mut *out, text);
                }
                _ => self.columns.write_field(row, column, out),
            }
        }
        out.push(b'}');
    }

    /// The row's card number, the message key that keeps a card's transactions in order on
    /// one partition.
    pub fn card_key(&self, row: usize, out: &mut Vec<u8>) {
        out.clear();
        self.columns.write_field(row, idx::CC_NUM, out);
    }
}

fn is_string_column(column: usize) -> bool {
    matches!(
        column,
        idx::MERCHANT
            | idx::CATEGORY
            | idx::FIRST
            | idx::LAST
            | idx::GENDER
            | idx::STREET
            | idx::CITY
            | idx::STATE
            | idx::JOB
            | idx::TRANS_NUM
    )
}

/// Decodes JSON transaction messages into batches of the transaction schema.
///
/// Wraps arrow-json's streaming [`Decoder`]: messages are fed as they arrive and `flush`
/// yields one batch. A message with a missing field or a wrong type fails the decode; the
/// streaming engine uses [`JsonTransactionDecoder::decode_one`] to find which message.
pub struct JsonTransactionDecoder {
    decoder: Decoder,
}

impl JsonTransactionDecoder {
    pub fn new(batch_size: usize) -> Result<Self, EngineError> {
        Self::with_schema(transaction_schema(), batch_size)
    }

    /// A decoder for messages of another shape of the transaction schema (the stream's,
    /// where `row_id` may be absent).
    pub fn with_schema(
        schema: arrow::datatypes::SchemaRef,
        batch_size: usize,
    ) -> Result<Self, EngineError> {
        let decoder = ReaderBuilder::new(schema)
            .with_batch_size(batch_size.max(1))
            .with_strict_mode(false)
            .build_decoder()?;
        Ok(Self { decoder })
    }

    /// Feeds one complete JSON message.
    pub fn push(&mut self, message: &[u8]) -> Result<(), EngineError> {
        let mut rest = message;
        while !rest.is_empty() {
            let consumed = self.decoder.decode(rest)?;
            if consumed == 0 {
                return Err(EngineError::Decode(
                    "decoder buffer is full: flush before pushing more".to_string(),
                ));
            }
            rest = &rest[consumed..];
        }
        Ok(())
    }

    /// Complete rows buffered since the last flush.
    pub fn buffered_rows(&self) -> usize {
        self.decoder.len()
    }

    /// The rows pushed since the last flush, as one batch (None when there were none).
    pub fn flush(&mut self) -> Result<Option<RecordBatch>, EngineError> {
        Ok(self.decoder.flush()?)
    }

    /// Decodes a single message on its own, to tell a bad message from its neighbours.
    pub fn decode_one(message: &[u8]) -> Result<RecordBatch, EngineError> {
        Self::decode_one_with(transaction_schema(), message)
    }

    /// [`Self::decode_one`] for another shape of the schema; fails unless the message is
    /// exactly one JSON object.
    pub fn decode_one_with(
        schema: arrow::datatypes::SchemaRef,
        message: &[u8],
    ) -> Result<RecordBatch, EngineError> {
        let mut decoder = Self::with_schema(schema, 2)?;
        decoder.push(message)?;
        let batch = decoder
            .flush()?
            .ok_or_else(|| EngineError::Decode("the message holds no JSON object".to_string()))?;
        if batch.num_rows() != 1 {
            return Err(EngineError::Decode(format!(
                "the message holds {} JSON objects, not one",
                batch.num_rows()
            )));
        }
        Ok(batch)
    }
}
