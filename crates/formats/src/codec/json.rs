//! Transactions as JSON messages: one object per transaction with the Kaggle column names
//! (what `risksense produce` writes to Kafka); [`TransactionMessage`], the strict parser
//! the stream and `POST /v1/score` read them with; and an arrow-json decoder that turns a
//! run of trusted messages straight into a batch (reading back what a replay wrote).

use std::borrow::Cow;

use arrow::array::{Array, AsArray};
use arrow::json::reader::{Decoder, ReaderBuilder};
use arrow::record_batch::RecordBatch;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::builder::{STRING_COLUMNS, TransactionRow};
use super::csv::TypedColumns;
use crate::error::FormatError;
use risksense_common::schema::{COLUMN_COUNT, column_names, idx, transaction_schema};
use risksense_common::time::{parse_date, parse_timestamp_micros};

/// One JSON message parsed strictly into a transaction's typed values (the text borrowed
/// from the message where it holds no escapes).
///
/// Strict, unlike arrow-json's coercing decoder: numbers must be JSON numbers (`"4.97"` is
/// refused, not read as 4.97), the integer columns (`cc_num`, `zip`, `city_pop`,
/// `unix_time`, `is_fraud`) JSON integers in range (`1.5` is refused, not truncated onto
/// another card), text columns JSON strings, times `YYYY-MM-DD HH:MM:SS` (or with `T`, and
/// a fraction) and dates `YYYY-MM-DD`; no column missing, null or given twice; exactly one
/// JSON object per message. Unknown keys, and `row_id` (the stream numbers rows itself),
/// are ignored. Ranges are [`crate::validate::check_row`]'s business.
#[derive(Debug, Default)]
pub struct TransactionMessage<'a> {
    pub(super) event_time: i64,
    pub(super) cc_num: i64,
    pub(super) amt: f64,
    pub(super) zip: i32,
    pub(super) lat: f64,
    pub(super) long: f64,
    pub(super) city_pop: i64,
    pub(super) dob: i32,
    pub(super) unix_time: i64,
    pub(super) merch_lat: f64,
    pub(super) merch_long: f64,
    pub(super) is_fraud: i32,
    /// In the order of [`STRING_COLUMNS`].
    pub(super) strings: [Cow<'a, str>; 10],
}

impl<'a> TransactionMessage<'a> {
    /// Parses one message; the error says which column is wrong and why.
    pub fn parse(payload: &'a [u8]) -> Result<Self, String> {
        if let Some(message) = super::json_scan::parse(payload) {
            return Ok(message);
        }
        serde_json::from_slice(payload).map_err(|error| {
            let text = error.to_string();
            if text.starts_with("trailing characters") {
                format!("the message holds more than one JSON value ({text})")
            } else {
                text
            }
        })
    }

    /// The typed row, numbered `row_id`.
    pub fn row(&self, row_id: i64) -> TransactionRow<'_> {
        let mut strings = [""; 10];
        for (slot, text) in strings.iter_mut().zip(&self.strings) {
            *slot = text.as_ref();
        }
        TransactionRow {
            row_id,
            event_time: self.event_time,
            cc_num: self.cc_num,
            amt: self.amt,
            zip: self.zip,
            lat: self.lat,
            long: self.long,
            city_pop: self.city_pop,
            dob: self.dob,
            unix_time: self.unix_time,
            merch_lat: self.merch_lat,
            merch_long: self.merch_long,
            is_fraud: self.is_fraud,
            strings,
        }
    }
}

/// A key of a message: the column it names (None: ignored).
struct Key(Option<usize>);

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a column name")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Key, E> {
                Ok(Key(column_of(name)))
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// The column a message's key names (None: ignored).
pub(super) fn column_of(name: &str) -> Option<usize> {
    match name {
        "trans_date_trans_time" => Some(idx::TRANS_DATE_TRANS_TIME),
        "cc_num" => Some(idx::CC_NUM),
        "merchant" => Some(idx::MERCHANT),
        "category" => Some(idx::CATEGORY),
        "amt" => Some(idx::AMT),
        "first" => Some(idx::FIRST),
        "last" => Some(idx::LAST),
        "gender" => Some(idx::GENDER),
        "street" => Some(idx::STREET),
        "city" => Some(idx::CITY),
        "state" => Some(idx::STATE),
        "zip" => Some(idx::ZIP),
        "lat" => Some(idx::LAT),
        "long" => Some(idx::LONG),
        "city_pop" => Some(idx::CITY_POP),
        "job" => Some(idx::JOB),
        "dob" => Some(idx::DOB),
        "trans_num" => Some(idx::TRANS_NUM),
        "unix_time" => Some(idx::UNIX_TIME),
        "merch_lat" => Some(idx::MERCH_LAT),
        "merch_long" => Some(idx::MERCH_LONG),
        "is_fraud" => Some(idx::IS_FRAUD),
        _ => None,
    }
}

/// The place of a text column in [`TransactionMessage::strings`].
pub(super) fn string_slot(column: usize) -> Option<usize> {
    STRING_COLUMNS.iter().position(|&c| c == column)
}

/// A JSON string, borrowed from the message unless it holds escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(text.to_string())))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// The next value of the map as a `T`, its error naming the column.
fn value<'de, T: de::Deserialize<'de>, A: MapAccess<'de>>(
    map: &mut A,
    column: usize,
) -> Result<T, A::Error> {
    map.next_value().map_err(|error| {
        let text = error.to_string();
        // serde_json adds the position again to the error made here.
        let text = text.rfind(" at line ").map_or(&text[..], |at| &text[..at]);
        de::Error::custom(format_args!("column `{}`: {text}", column_names()[column]))
    })
}

impl<'de> de::Deserialize<'de> for TransactionMessage<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MessageVisitor;
        impl<'de> Visitor<'de> for MessageVisitor {
            type Value = TransactionMessage<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object of a transaction")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut message = TransactionMessage::default();
                let mut seen = [false; COLUMN_COUNT];
                // row_id needs no value: the stream numbers rows by their offsets.
                seen[idx::ROW_ID] = true;
                while let Some(Key(column)) = map.next_key()? {
                    let Some(column) = column else {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    };
                    if std::mem::replace(&mut seen[column], true) {
                        return Err(de::Error::custom(format_args!(
                            "column `{}` is given twice",
                            column_names()[column]
                        )));
                    }
                    let m = &mut message;
                    match column {
                        idx::TRANS_DATE_TRANS_TIME => {
                            let text: Text = value(&mut map, column)?;
                            m.event_time = parse_timestamp_micros(&text.0).ok_or_else(|| {
                                <A::Error as de::Error>::custom(format_args!(
                                    "column `trans_date_trans_time`: `{}` is not a time like 2019-01-01 00:05:02",
                                    text.0
                                ))
                            })?;
                        }
                        idx::DOB => {
                            let text: Text = value(&mut map, column)?;
                            m.dob = parse_date(&text.0).ok_or_else(|| {
                                <A::Error as de::Error>::custom(format_args!(
                                    "column `dob`: `{}` is not a date like 1977-11-23",
                                    text.0
                                ))
                            })?;
                        }
                        idx::CC_NUM => m.cc_num = value(&mut map, column)?,
                        idx::AMT => m.amt = value(&mut map, column)?,
                        idx::ZIP => m.zip = value(&mut map, column)?,
                        idx::LAT => m.lat = value(&mut map, column)?,
                        idx::LONG => m.long = value(&mut map, column)?,
                        idx::CITY_POP => m.city_pop = value(&mut map, column)?,
                        idx::UNIX_TIME => m.unix_time = value(&mut map, column)?,
                        idx::MERCH_LAT => m.merch_lat = value(&mut map, column)?,
                        idx::MERCH_LONG => m.merch_long = value(&mut map, column)?,
                        idx::IS_FRAUD => m.is_fraud = value(&mut map, column)?,
                        _ => {
                            let slot = string_slot(column).ok_or_else(|| {
                                <A::Error as de::Error>::custom("unexpected column")
                            })?;
                            let text: Text = value(&mut map, column)?;
                            m.strings[slot] = text.0;
                        }
                    }
                }
                if let Some(missing) = seen.iter().position(|s| !s) {
                    return Err(de::Error::custom(format_args!(
                        "missing field `{}`",
                        column_names()[missing]
                    )));
                }
                Ok(message)
            }
        }
        deserializer.deserialize_map(MessageVisitor)
    }
}

/// Encodes rows of a transaction batch as JSON objects, reusing one output buffer.
///
/// Times are written as `"2019-01-01 00:05:02"` and dates as `"1956-12-03"`, exactly as in
/// the Kaggle CSV; numbers as JSON numbers (`cc_num` fits in an i64 and is written exactly).
pub struct JsonRowEncoder<'a> {
    columns: TypedColumns<'a>,
    keys: Vec<Vec<u8>>,
}

impl<'a> JsonRowEncoder<'a> {
    pub fn new(batch: &'a RecordBatch) -> Result<Self, FormatError> {
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
    pub fn new(batch_size: usize) -> Result<Self, FormatError> {
        Self::with_schema(transaction_schema(), batch_size)
    }

    /// A decoder for messages of another shape of the transaction schema (the stream's,
    /// where `row_id` may be absent).
    pub fn with_schema(
        schema: arrow::datatypes::SchemaRef,
        batch_size: usize,
    ) -> Result<Self, FormatError> {
        let decoder = ReaderBuilder::new(schema)
            .with_batch_size(batch_size.max(1))
            .with_strict_mode(false)
            .build_decoder()?;
        Ok(Self { decoder })
    }

    /// Feeds one complete JSON message.
    pub fn push(&mut self, message: &[u8]) -> Result<(), FormatError> {
        let mut rest = message;
        while !rest.is_empty() {
            let consumed = self.decoder.decode(rest)?;
            if consumed == 0 {
                return Err(FormatError::Decode(
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
    pub fn flush(&mut self) -> Result<Option<RecordBatch>, FormatError> {
        Ok(self.decoder.flush()?)
    }

    /// Decodes a single message on its own, to tell a bad message from its neighbours.
    pub fn decode_one(message: &[u8]) -> Result<RecordBatch, FormatError> {
        Self::decode_one_with(transaction_schema(), message)
    }

    /// [`Self::decode_one`] for another shape of the schema; fails unless the message is
    /// exactly one JSON object.
    pub fn decode_one_with(
        schema: arrow::datatypes::SchemaRef,
        message: &[u8],
    ) -> Result<RecordBatch, FormatError> {
        let mut decoder = Self::with_schema(schema, 2)?;
        decoder.push(message)?;
        let batch = decoder
            .flush()?
            .ok_or_else(|| FormatError::Decode("the message holds no JSON object".to_string()))?;
        if batch.num_rows() != 1 {
            return Err(FormatError::Decode(format!(
                "the message holds {} JSON objects, not one",
                batch.num_rows()
            )));
        }
        Ok(batch)
    }
}
