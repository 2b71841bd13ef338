//! Kafka messages → one Arrow batch per micro-batch, with the messages that cannot be
//! scored set aside with their reason.
//!
//! Each message is parsed strictly ([`TransactionMessage`]: numbers as numbers, integers
//! as integers), checked against the bounds every input path shares
//! ([`crate::validate::check_row`]) and appended straight to the batch's column builders;
//! a message over the size limit is refused before parsing. Then [`drop_repeats`] sets
//! aside transactions the stream has already scored.

use foldhash::{HashMap, HashMapExt};
use std::collections::hash_map::Entry;

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::Int64Type;

use crate::codec::builder::TransactionBuilder;
use crate::codec::json::TransactionMessage;
use crate::error::FormatError;
use crate::validate::{DEFAULT_MAX_MESSAGE_BYTES, check_row};
use risksense_common::schema::idx;

/// A message as read from the transactions topic. Its bytes are shared: the stream reads a
/// micro-batch's messages into one buffer ([`bytes::BytesMut::split`]), which spares an
/// allocation and a free per message and key.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<bytes::Bytes>,
    pub payload: bytes::Bytes,
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

/// The offset of a stream `row_id` (see [`row_id`]).
pub fn offset_of(row_id: i64) -> i64 {
    row_id.div_euclid(PARTITION_SLOTS)
}

/// A micro-batch's messages decoded.
#[derive(Debug, Default)]
pub struct Decoded {
    /// The good rows, in the transaction schema, `row_id` set from the message's
    /// partition and offset ([`row_id`]).
    pub batch: Option<RecordBatch>,
    /// For each row of `batch`: the index of its message.
    pub message_of_row: Vec<usize>,
    /// Messages that cannot be scored: (message index, reason), by message index.
    pub rejected: Vec<(usize, String)>,
}

/// Decodes `messages` into one batch; bad messages are listed, never fatal. Messages over
/// [`DEFAULT_MAX_MESSAGE_BYTES`] are refused.
pub fn decode(messages: &[Incoming]) -> Result<Decoded, FormatError> {
    decode_with_limit(messages, DEFAULT_MAX_MESSAGE_BYTES)
}

/// [`decode`] with another bound on a message's size (the stream's `max_message_bytes`).
pub fn decode_with_limit(
    messages: &[Incoming],
    max_message_bytes: usize,
) -> Result<Decoded, FormatError> {
    if messages.is_empty() {
        return Ok(Decoded::default());
    }
    let mut builder = TransactionBuilder::with_capacity(messages.len());
    let mut message_of_row = Vec::with_capacity(messages.len());
    let mut rejected = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let payload = &message.payload;
        if payload.is_empty() {
            rejected.push((i, "empty message".to_string()));
            continue;
        }
        if payload.len() > max_message_bytes {
            rejected.push((
                i,
                format!(
                    "the message is {} bytes: more than max_message_bytes ({max_message_bytes})",
                    payload.len()
                ),
            ));
            continue;
        }
        let parsed = match TransactionMessage::parse(payload) {
            Ok(parsed) => parsed,
            Err(reason) => {
                rejected.push((i, reason));
                continue;
            }
        };
        let row = parsed.row(row_id(message.partition, message.offset));
        if let Err(error) = check_row(&row) {
            rejected.push((i, error.to_string()));
            continue;
        }
        builder.append_row(&row);
        message_of_row.push(i);
    }
    let batch = if builder.is_empty() {
        None
    } else {
        Some(builder.into_batch()?)
    };
    Ok(Decoded {
        batch,
        message_of_row,
        rejected,
    })
}

/// Sets aside the rows of `decoded` that repeat a transaction already scored: the same
/// `trans_num` on the same card, earlier in this micro-batch or remembered from earlier
/// ones. `earlier` answers for the latter: for each `(cc_num, trans_num_hash)`, the
/// `row_id` the card's history remembers it at (the pipeline asks its `CardHistory`).
///
/// The first copy wins: it alone is scored, stored, archived and counted in the card's
/// windows; each later copy goes to the dead-letter topic with the reason `duplicate
/// trans_num …, first seen at partition P offset O`, whatever its other values.
pub fn drop_repeats(
    decoded: Decoded,
    earlier: impl FnOnce(&[(i64, u64)]) -> Vec<Option<i64>>,
) -> Result<Decoded, FormatError> {
    let Some(batch) = &decoded.batch else {
        return Ok(decoded);
    };
    let cards = batch.column(idx::CC_NUM).as_primitive::<Int64Type>();
    let trans_nums = batch.column(idx::TRANS_NUM).as_string::<i32>();
    let ids = batch.column(idx::ROW_ID).as_primitive::<Int64Type>();
    let keys: Vec<(i64, u64)> = (0..batch.num_rows())
        .map(|row| {
            (
                cards.value(row),
                risksense_common::schema::trans_num_hash(trans_nums.value(row)),
            )
        })
        .collect();
    let remembered = earlier(&keys);
    let mut in_batch: HashMap<(i64, u64), i64> = HashMap::with_capacity(keys.len());
    let mut repeats: Vec<(usize, i64)> = Vec::new();
    for (row, key) in keys.iter().enumerate() {
        let first = match remembered.get(row).copied().flatten() {
            // The same message read again (a replay of its offset) is not a repeat of
            // itself.
            Some(first) if first == ids.value(row) => None,
            Some(first) => Some(first),
            None => match in_batch.entry(*key) {
                Entry::Occupied(entry) => Some(*entry.get()),
                Entry::Vacant(entry) => {
                    entry.insert(ids.value(row));
                    None
                }
            },
        };
        if let Some(first) = first {
            repeats.push((row, first));
        }
    }
    if repeats.is_empty() {
        return Ok(decoded);
    }
    let mut keep = vec![true; batch.num_rows()];
    let mut rejected = decoded.rejected;
    for (row, first) in repeats {
        keep[row] = false;
        rejected.push((
            decoded.message_of_row[row],
            format!(
                "duplicate trans_num `{}`, first seen at partition {} offset {}",
                trans_nums.value(row),
                partition_of(first),
                offset_of(first)
            ),
        ));
    }
    rejected.sort_by_key(|(m, _)| *m);
    let message_of_row: Vec<usize> = decoded
        .message_of_row
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(m, _)| *m)
        .collect();
    let batch = arrow::compute::filter_record_batch(batch, &BooleanArray::from(keep))?;
    Ok(Decoded {
        batch: (batch.num_rows() > 0).then_some(batch),
        message_of_row,
        rejected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use risksense_common::schema::transaction_schema;

    const GOOD: &str = r#"{"trans_date_trans_time":"2019-01-01 00:00:18","cc_num":2703186189652095,"merchant":"fraud_Rippin, Kub and Mann","category":"misc_net","amt":4.97,"first":"Jennifer","last":"Banks","gender":"F","street":"561 Perry Cove","city":"Moravian Falls","state":"NC","zip":28654,"lat":36.0788,"long":-81.1781,"city_pop":3495,"job":"Psychologist, counselling","dob":"1988-03-09","trans_num":"0b242abb623afc578575680df30655b9","unix_time":1325376018,"merch_lat":36.011293,"merch_long":-82.048315,"is_fraud":0}"#;

    fn message(offset: i64, payload: &str) -> Incoming {
        Incoming {
            partition: 0,
            offset,
            key: None,
            payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
            timestamp_ms: None,
        }
    }

    #[test]
    fn good_messages_decode_with_positions_as_row_ids() {
        let decoded = decode(&[message(7, GOOD), message(8, GOOD)]).expect("decode");
        let batch = decoded.batch.expect("rows");
        assert_eq!(batch.num_rows(), 2);
        assert!(decoded.rejected.is_empty());
        let ids = batch.column(idx::ROW_ID).as_primitive::<Int64Type>();
        assert_eq!(ids.values().to_vec(), vec![row_id(0, 7), row_id(0, 8)]);
        assert_eq!(partition_of(row_id(3, 12345)), 3);
        assert_eq!(offset_of(row_id(3, 12345)), 12345);
        assert_eq!(batch.schema(), transaction_schema());
        let amounts = batch
            .column(idx::AMT)
            .as_primitive::<arrow::datatypes::Float64Type>();
        assert_eq!(amounts.value(0), 4.97);
        assert_eq!(
            batch
                .column(idx::CC_NUM)
                .as_primitive::<Int64Type>()
                .value(1),
            2703186189652095
        );
    }

    /// What arrow-json's coercing decoder made of the same message, value for value.
    #[test]
    fn the_strict_parser_reads_what_arrow_json_reads() {
        let ours = decode(&[message(0, GOOD)])
            .expect("decode")
            .batch
            .expect("row");
        let schema = {
            let mut fields: Vec<_> = transaction_schema().fields().iter().cloned().collect();
            fields[idx::ROW_ID] =
                std::sync::Arc::new(fields[idx::ROW_ID].as_ref().clone().with_nullable(true));
            std::sync::Arc::new(arrow::datatypes::Schema::new(fields))
        };
        let theirs =
            crate::codec::json::JsonTransactionDecoder::decode_one_with(schema, GOOD.as_bytes())
                .expect("arrow-json");
        for column in 1..risksense_common::schema::COLUMN_COUNT {
            assert_eq!(
                ours.column(column),
                theirs.column(column),
                "column {column}"
            );
        }
    }

    #[test]
    fn escaped_text_unknown_keys_and_integral_amounts_are_fine() {
        let escaped = GOOD
            .replace(r#""first":"Jennifer""#, r#""first":"Jen\"ni\u00e9""#)
            .replace(
                r#""is_fraud":0}"#,
                r#""is_fraud":0,"row_id":"ignored","extra":[1,{"a":null}]}"#,
            )
            .replace(r#""amt":4.97"#, r#""amt":5"#);
        let decoded = decode(&[message(0, &escaped)]).expect("decode");
        assert!(decoded.rejected.is_empty(), "{:?}", decoded.rejected);
        let batch = decoded.batch.expect("row");
        assert_eq!(
            batch.column(idx::FIRST).as_string::<i32>().value(0),
            "Jen\"nié"
        );
    }

    fn reasons_for(payloads: &[String], limit: usize) -> Vec<String> {
        let messages: Vec<Incoming> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| message(i as i64, p))
            .collect();
        let decoded = decode_with_limit(&messages, limit).expect("decode");
        assert!(
            decoded.batch.is_none(),
            "every message is bad: {:?}",
            decoded.message_of_row
        );
        assert_eq!(decoded.rejected.len(), payloads.len());
        decoded.rejected.into_iter().map(|(_, r)| r).collect()
    }

    #[test]
    fn each_kind_of_bad_message_is_refused_with_its_reason() {
        let with = |from: &str, to: &str| {
            assert!(GOOD.contains(from), "{from}");
            GOOD.replace(from, to)
        };
        let padded = with(
            r#""job":"Psychologist, counselling""#,
            &format!(r#""job":"{}""#, "x".repeat(2 << 20)),
        );
        let cases: Vec<(String, &str)> = vec![
            (
                with(r#""lat":36.0788"#, r#""lat":999"#),
                "column `lat`: 999 is outside -90..=90",
            ),
            (
                with(r#""merch_long":-82.048315"#, r#""merch_long":-200.5"#),
                "column `merch_long`",
            ),
            (
                with("2019-01-01 00:00:18", "9999-01-01 00:00:18"),
                "column `trans_date_trans_time`: is outside",
            ),
            (with("1988-03-09", "2019-01-02"), "column `dob`"),
            (with("1325376018", "253402300799"), "column `unix_time`"),
            (
                with("2703186189652095", "2703186189652095.5"),
                "column `cc_num`: invalid type: floating point",
            ),
            (
                with(r#""zip":28654"#, r#""zip":28654.0"#),
                "column `zip`: invalid type: floating point",
            ),
            (
                with(r#""amt":4.97"#, r#""amt":"4.97""#),
                "column `amt`: invalid type: string",
            ),
            (
                with(r#""lat":36.0788"#, r#""lat":"36.0788""#),
                "column `lat`: invalid type: string",
            ),
            (
                with(r#""amt":4.97"#, r#""amt":1e308"#),
                "column `amt`: 1e308 is not an amount",
            ),
            (
                with(r#""amt":4.97"#, r#""amt":1e309"#),
                "number out of range",
            ),
            (with(r#""amt":4.97"#, r#""amt":1000000.01"#), "column `amt`"),
            (
                with(r#""amt":4.97"#, r#""amt":-3.0"#),
                "column `amt`: -3 is not an amount",
            ),
            (
                with(r#""amt":4.97"#, r#""amt":null"#),
                "column `amt`: invalid type: null",
            ),
            (with(r#""amt":4.97,"#, ""), "missing field `amt`"),
            (
                with(r#""is_fraud":0"#, r#""is_fraud":2"#),
                "column `is_fraud`",
            ),
            (
                with(r#""is_fraud":0"#, r#""is_fraud":false"#),
                "column `is_fraud`: invalid type: boolean",
            ),
            (
                with(r#""city_pop":3495"#, r#""city_pop":-1"#),
                "column `city_pop`",
            ),
            (
                with(
                    r#""merchant":"fraud_Rippin, Kub and Mann""#,
                    r#""merchant":7"#,
                ),
                "column `merchant`: invalid type: integer",
            ),
            (
                with("0b242abb623afc578575680df30655b9", " "),
                "column `trans_num`: is empty",
            ),
            (
                with(
                    r#""cc_num":2703186189652095,"#,
                    r#""cc_num":2703186189652095,"cc_num":1,"#,
                ),
                "column `cc_num` is given twice",
            ),
            (
                with("2019-01-01 00:00:18", "2019-01-01T00:00:18+02:00"),
                "is not a time like",
            ),
            (format!("{GOOD}{GOOD}"), "more than one JSON value"),
            ("{not json".to_string(), "key must be a string"),
            ("not json".to_string(), "expected ident"),
            (
                "[1,2]".to_string(),
                "expected a JSON object of a transaction",
            ),
            ("   ".to_string(), "EOF"),
            (String::new(), "empty message"),
            (padded, "the message is 2097"),
        ];
        let payloads: Vec<String> = cases.iter().map(|(p, _)| p.clone()).collect();
        let reasons = reasons_for(&payloads, DEFAULT_MAX_MESSAGE_BYTES);
        for ((payload, needle), reason) in cases.iter().zip(&reasons) {
            assert!(
                reason.contains(needle),
                "{:.120}: `{reason}` lacks `{needle}`",
                payload
            );
        }
        // The limit is the caller's.
        let small = reasons_for(&[GOOD.to_string()], 100);
        assert!(
            small[0].contains("more than max_message_bytes (100)"),
            "{small:?}"
        );
    }

    #[test]
    fn bad_messages_are_set_aside_and_the_rest_kept_in_order() {
        let lat = GOOD.replace(r#""lat":36.0788"#, r#""lat":999"#);
        let messages = [
            message(0, GOOD),
            message(1, "not json at all"),
            message(2, GOOD),
            message(3, &lat),
            message(4, ""),
            message(5, GOOD),
        ];
        let decoded = decode(&messages).expect("decode");
        assert_eq!(decoded.batch.expect("rows").num_rows(), 3);
        assert_eq!(decoded.message_of_row, vec![0, 2, 5]);
        let rejected: Vec<usize> = decoded.rejected.iter().map(|(m, _)| *m).collect();
        assert_eq!(rejected, vec![1, 3, 4]);
    }

    fn with_trans_num(offset: i64, trans_num: &str, card: i64) -> Incoming {
        let payload = GOOD
            .replace("0b242abb623afc578575680df30655b9", trans_num)
            .replace("2703186189652095", &card.to_string());
        message(offset, &payload)
    }

    #[test]
    fn repeats_in_a_batch_and_of_earlier_batches_go_aside_and_the_first_wins() {
        let messages = [
            with_trans_num(10, "a", 1),
            with_trans_num(11, "b", 1),
            with_trans_num(12, "a", 1),   // repeats offset 10
            with_trans_num(13, "a", 2),   // another card: not a repeat
            with_trans_num(14, "old", 1), // seen in an earlier batch
            with_trans_num(15, "a", 1),   // repeats offset 10 again
        ];
        let decoded = decode(&messages).expect("decode");
        let old = risksense_common::schema::trans_num_hash("old");
        let mut asked = Vec::new();
        let kept = drop_repeats(decoded, |keys| {
            asked = keys.to_vec();
            keys.iter()
                .map(|&(card, hash)| (card == 1 && hash == old).then_some(row_id(0, 3)))
                .collect()
        })
        .expect("dedup");
        assert_eq!(asked.len(), 6);
        assert_eq!(kept.message_of_row, vec![0, 1, 3]);
        let batch = kept.batch.expect("rows");
        let ids = batch.column(idx::ROW_ID).as_primitive::<Int64Type>();
        assert_eq!(
            ids.values().to_vec(),
            vec![row_id(0, 10), row_id(0, 11), row_id(0, 13)]
        );
        let reasons: Vec<(usize, &str)> = kept
            .rejected
            .iter()
            .map(|(m, r)| (*m, r.as_str()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                (
                    2,
                    "duplicate trans_num `a`, first seen at partition 0 offset 10"
                ),
                (
                    4,
                    "duplicate trans_num `old`, first seen at partition 0 offset 3"
                ),
                (
                    5,
                    "duplicate trans_num `a`, first seen at partition 0 offset 10"
                ),
            ]
        );
        // Nothing repeated: the batch is untouched.
        let decoded = decode(&messages[..2]).expect("decode");
        let kept = drop_repeats(decoded, |keys| vec![None; keys.len()]).expect("dedup");
        assert_eq!(kept.message_of_row, vec![0, 1]);
        assert!(kept.rejected.is_empty());
        // A message read again at its own offset (a replay) is not a repeat of itself.
        let decoded = decode(&messages[..1]).expect("decode");
        let kept =
            drop_repeats(decoded, |keys| vec![Some(row_id(0, 10)); keys.len()]).expect("dedup");
        assert_eq!(kept.message_of_row, vec![0]);
        assert!(kept.rejected.is_empty());
    }
}
