//! Kafka messages → one Arrow batch per micro-batch, with the messages that cannot be
//! scored set aside with their reason.
//!
//! The fast path feeds every payload to one arrow-json decoder (no per-row structs). Only
//! when that fails does it decode message by message, to tell the bad ones from the good.

use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{Field, Float64Type, Schema, SchemaRef};

use crate::codec::json::JsonTransactionDecoder;
use crate::error::EngineError;
use crate::schema::{idx, transaction_schema};

/// A message as read from the transactions topic.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// The message's Kafka timestamp (produce time), in ms since the epoch.
    pub timestamp_ms: Option<i64>,
}

/// Partitions a stream may have: a row's `row_id` in the stream is
/// `offset * PARTITION_SLOTS + partition`, its position in the topic, which orders a
/// card's same-second rows by arrival and tells which partition a scored row came from.
pub const PARTITION_SLOTS: i64 = 4096;

/// The stream's `row_id` of a message.
pub fn row_id(partition: i32, offset: i64) -> i64 {
    offset * PARTITION_SLOTS + i64::from(partition)
}

/// The partition of a stream `row_id` (see [`row_id`]).
pub fn partition_of(row_id: i64) -> i32 {
    row_id.rem_euclid(PARTITION_SLOTS) as i32
}

/// A micro-batch's messages decoded.
#[derive(Debug, Default)]
pub struct Decoded {
    /// The good rows, in the transaction schema, `row_id` set from the message's
    /// partition and offset ([`row_id`]).
    pub batch: Option<RecordBatch>,
    /// For each row of `batch`: the index of its message.
    pub message_of_row: Vec<usize>,
    /// Messages that cannot be scored: (message index, reason).
    pub rejected: Vec<(usize, String)>,
}

/// The schema messages are decoded with: the transaction schema, but `row_id` may be
/// absent (the stream sets it from the Kafka offset).
static MESSAGE_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let base = transaction_schema();
    let fields: Vec<Field> = base
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let field = f.as_ref().clone();
            if i == idx::ROW_ID {
                field.with_nullable(true)
            } else {
                field
            }
        })
        .collect();
    Arc::new(Schema::new(fields))
});

/// Decodes `messages` into one batch; bad messages are listed, never fatal.
pub fn decode(messages: &[Incoming]) -> Result<Decoded, EngineError> {
    if messages.is_empty() {
        return Ok(Decoded::default());
    }
    let (batch, message_of_row, mut rejected) = match decode_all(messages) {
        Some(batch) => (batch, (0..messages.len()).collect::<Vec<_>>(), Vec::new()),
        None => decode_one_by_one(messages)?,
    };
    let Some(batch) = batch else {
        return Ok(Decoded {
            batch: None,
            message_of_row,
            rejected,
        });
    };
    // Values that parse but cannot be scored.
    let problems = invalid_rows(&batch);
    let (batch, message_of_row) = if problems.is_empty() {
        (batch, message_of_row)
    } else {
        let mut keep = vec![true; batch.num_rows()];
        for (row, reason) in problems {
            keep[row] = false;
            rejected.push((message_of_row[row], reason));
        }
        let mask = arrow::array::BooleanArray::from(keep.clone());
        let filtered = arrow::compute::filter_record_batch(&batch, &mask)?;
        let kept: Vec<usize> = message_of_row
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(m, _)| *m)
            .collect();
        (filtered, kept)
    };
    rejected.sort_by_key(|(m, _)| *m);
    let batch = with_offsets(&batch, &message_of_row, messages)?;
    Ok(Decoded {
        batch: (batch.num_rows() > 0).then_some(batch),
        message_of_row,
        rejected,
    })
}

/// All messages through one decoder; None when any of them is bad.
fn decode_all(messages: &[Incoming]) -> Option<Option<RecordBatch>> {
    let mut decoder =
        JsonTransactionDecoder::with_schema(MESSAGE_SCHEMA.clone(), messages.len() + 1).ok()?;
    for (i, message) in messages.iter().enumerate() {
        if message.payload.is_empty() {
            return None;
        }
        decoder.push(&message.payload).ok()?;
        // Exactly one complete object per message, or the rows would shift against the
        // messages (an empty-looking message next to one holding two objects).
        if decoder.buffered_rows() != i + 1 {
            return None;
        }
    }
    let batch = decoder.flush().ok()?;
    // One object per message, or something is off (two objects in one message).
    match &batch {
        Some(b) if b.num_rows() == messages.len() => Some(batch),
        _ => None,
    }
}

type OneByOne = (Option<RecordBatch>, Vec<usize>, Vec<(usize, String)>);

fn decode_one_by_one(messages: &[Incoming]) -> Result<OneByOne, EngineError> {
    let mut good = Vec::new();
    let mut message_of_row = Vec::new();
    let mut rejected = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        if message.payload.is_empty() {
            rejected.push((i, "empty message".to_string()));
            continue;
        }
        match JsonTransactionDecoder::decode_one_with(MESSAGE_SCHEMA.clone(), &message.payload) {
            Ok(batch) => {
                good.push(batch);
                message_of_row.push(i);
            }
            Err(error) => rejected.push((i, error.to_string())),
        }
    }
    let batch = if good.is_empty() {
        None
    } else {
        Some(arrow::compute::concat_batches(&MESSAGE_SCHEMA, &good)?)
    };
    Ok((batch, message_of_row, rejected))
}

/// Rows whose values parse but make no sense to score.
fn invalid_rows(batch: &RecordBatch) -> Vec<(usize, String)> {
    let mut problems = Vec::new();
    let amounts = batch.column(idx::AMT).as_primitive::<Float64Type>();
    let trans_nums = batch.column(idx::TRANS_NUM).as_string::<i32>();
    for row in 0..batch.num_rows() {
        let amt = amounts.value(row);
        if !amt.is_finite() || amt < 0.0 {
            problems.push((row, format!("amt is {amt}: must be a finite amount >= 0")));
        } else if trans_nums.value(row).trim().is_empty() {
            problems.push((row, "trans_num is empty".to_string()));
        }
    }
    problems
}

/// The batch in the transaction schema with `row_id` = the message's position.
fn with_offsets(
    batch: &RecordBatch,
    message_of_row: &[usize],
    messages: &[Incoming],
) -> Result<RecordBatch, EngineError> {
    let offsets: ArrayRef = Arc::new(Int64Array::from_iter_values(
        message_of_row
            .iter()
            .map(|&m| row_id(messages[m].partition, messages[m].offset)),
    ));
    let mut columns = batch.columns().to_vec();
    columns[idx::ROW_ID] = offsets;
    debug_assert_eq!(columns[idx::ROW_ID].null_count(), 0);
    Ok(RecordBatch::try_new(transaction_schema(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"trans_date_trans_time":"2019-01-01 00:00:18","cc_num":2703186189652095,"merchant":"fraud_Rippin, Kub and Mann","category":"misc_net","amt":4.97,"first":"Jennifer","last":"Banks","gender":"F","street":"561 Perry Cove","city":"Moravian Falls","state":"NC","zip":28654,"lat":36.0788,"long":-81.1781,"city_pop":3495,"job":"Psychologist, counselling","dob":"1988-03-09","trans_num":"0b242abb623afc578575680df30655b9","unix_time":1325376018,"merch_lat":36.011293,"merch_long":-82.048315,"is_fraud":0}"#;

    fn message(offset: i64, payload: &str) -> Incoming {
        Incoming {
            partition: 0,
            offset,
            key: None,
            payload: payload.as_bytes().to_vec(),
            timestamp_ms: None,
        }
    }

    #[test]
    fn good_messages_decode_in_one_pass_with_positions_as_row_ids() {
        let decoded = decode(&[message(7, GOOD), message(8, GOOD)]).expect("decode");
        let batch = decoded.batch.expect("rows");
        assert_eq!(batch.num_rows(), 2);
        assert!(decoded.rejected.is_empty());
        let ids = batch
            .column(idx::ROW_ID)
            .as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(ids.values().to_vec(), vec![row_id(0, 7), row_id(0, 8)]);
        assert_eq!(partition_of(row_id(3, 12345)), 3);
        assert_eq!(batch.schema(), transaction_schema());
    }

    #[test]
    fn bad_messages_are_set_aside_with_a_reason_and_the_rest_kept() {
        let missing = GOOD.replace(r#""amt":4.97,"#, "");
        let wrong_type = GOOD.replace(r#""amt":4.97"#, r#""amt":"a lot""#);
        let negative = GOOD.replace(r#""amt":4.97"#, r#""amt":-3.0"#);
        let two = format!("{GOOD}{GOOD}");
        let blank = "   ";
        let messages = [
            message(0, GOOD),
            message(1, "not json at all"),
            message(2, &missing),
            message(3, GOOD),
            message(4, &wrong_type),
            message(5, ""),
            message(6, &negative),
            message(7, &two),
            message(8, blank),
        ];
        let decoded = decode(&messages).expect("decode");
        assert_eq!(decoded.batch.expect("rows").num_rows(), 2);
        assert_eq!(decoded.message_of_row, vec![0, 3]);
        let rejected: Vec<usize> = decoded.rejected.iter().map(|(m, _)| *m).collect();
        assert_eq!(rejected, vec![1, 2, 4, 5, 6, 7, 8]);
        let reason = |m: usize| &decoded.rejected.iter().find(|(i, _)| *i == m).expect("m").1;
        assert!(reason(2).contains("amt"), "{}", reason(2));
        assert!(reason(6).contains("amt is -3"), "{}", reason(6));
        assert!(reason(7).contains("2 JSON objects"), "{}", reason(7));
    }
}
