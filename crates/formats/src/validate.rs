//! The one validation every input path applies (CSV, Parquet, JSON messages from Kafka,
//! `POST /v1/score`): a row is scored only if every value is in a range where the features
//! of sql/features.sql, and so the model's score, are finite.
//!
//! Why it matters: the card windows carry a card's rows forward (rolling 24 h sums, the
//! mean of the previous 30 amounts). One amount of 1e308 entered those sums and, when it
//! left the window, `sum - 1e308` wiped out every smaller amount added meanwhile: the
//! card's next rows got negative sums, `ln` of them NaN, and NaN scores are never
//! anomalous. One bad row blinded the card. The bounds below keep every feature finite
//! (engine/tests/validation.rs asserts it for rows at the bounds).
//!
//! The bounds:
//! - `amt`: finite, in `[0, MAX_AMOUNT]` (see [`MAX_AMOUNT`]).
//! - `trans_date_trans_time` in `[EVENT_TIME_MIN, EVENT_TIME_END)` = [2000-01-01,
//!   2100-01-01): wide enough for replays of the 2019-2020 reference data and any live
//!   traffic, narrow enough that a year 9999 (or 1970 from a zero) is refused.
//! - `unix_time` (seconds) in the same window. (Sparkov's `unix_time` is not the event
//!   time: it runs seven years behind, 2012-2013 for 2019-2020 rows, still inside.)
//! - `dob` from 1900-01-01 up to the event's date (nobody pays before being born; a date
//!   of birth in the future would make `age_years` negative).
//! - `lat`, `merch_lat` in [-90, 90]; `long`, `merch_long` in [-180, 180].
//! - `cc_num` > 0; `zip` in [0, 99999] (US five-digit codes, leading zeros dropped as in
//!   the Kaggle file); `city_pop` in [0, [`MAX_CITY_POP`]]; `is_fraud` 0 or 1.
//! - `trans_num` not blank and at most [`MAX_TRANS_NUM_BYTES`] bytes (Kaggle's are 32 hex
//!   digits; it is a Redis key and the dedup key); `category` not empty.
//!
//! Types are the decoders' business: JSON numbers must be JSON numbers and integer columns
//! JSON integers (codec::json), CSV fields must parse as their type, Parquet columns must
//! be numeric for numeric columns (codec::parquet). A message larger than the stream's
//! `max_message_bytes` (default [`DEFAULT_MAX_MESSAGE_BYTES`]) is refused before parsing.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Date32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};

use crate::codec::builder::{FieldError, STRING_COLUMNS, TransactionRow};
use crate::error::FormatError;
use risksense_common::schema::{col, idx};
use risksense_common::time::MICROS_PER_SECOND;

/// The largest amount accepted, in dollars: 1,000,000.00. The reference data's largest
/// amount is under 30,000; a card payment of a million is not one this model can judge.
/// The ceiling also bounds the card windows' sums: a day of ceiling amounts stays far
/// from overflow, and at 1e6 an f64 still resolves a tenth of a micro-cent, so adding and
/// later subtracting a ceiling amount in the rolling sums leaves the other amounts intact
/// (the error is below 1e-9, where 1e308 left nothing).
pub const MAX_AMOUNT: f64 = 1_000_000.0;

/// Start of the event-time window (included): 2000-01-01 00:00:00 UTC, in seconds.
pub const EVENT_TIME_MIN_SECS: i64 = 946_684_800;
/// End of the event-time window (excluded): 2100-01-01 00:00:00 UTC, in seconds.
pub const EVENT_TIME_END_SECS: i64 = 4_102_444_800;

/// The earliest date of birth accepted: 1900-01-01, in days since the epoch.
pub const DOB_MIN_DAYS: i32 = -25_567;

/// The largest `city_pop` accepted: above any city on Earth.
pub const MAX_CITY_POP: i64 = 100_000_000;

/// The largest `zip` accepted (five digits).
pub const MAX_ZIP: i32 = 99_999;

/// The longest `trans_num` accepted, in bytes.
pub const MAX_TRANS_NUM_BYTES: usize = 64;

/// The stream's default bound on one message's size: 64 KiB. A transaction is about 450
/// bytes of JSON; anything near this is not one, and parsing megabytes per message would
/// let one producer stall the stream.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// A number as a reason shows it: 1e308, not its 309 digits.
fn show(value: f64) -> String {
    if value.is_finite() && value.abs() >= 1e15 {
        format!("{value:e}")
    } else {
        format!("{value}")
    }
}

fn fail(column: &'static str, reason: String) -> Result<(), FieldError> {
    Err(FieldError { column, reason })
}

fn in_range(
    column: &'static str,
    value: f64,
    range: std::ops::RangeInclusive<f64>,
) -> Result<(), FieldError> {
    if value.is_finite() && range.contains(&value) {
        Ok(())
    } else {
        fail(
            column,
            format!(
                "{} is outside {}..={}",
                show(value),
                range.start(),
                range.end()
            ),
        )
    }
}

/// Checks one typed row against the bounds of this module; the first violation is the
/// error (`row_id` is not checked: the sources number rows themselves).
pub fn check_row(row: &TransactionRow<'_>) -> Result<(), FieldError> {
    if !(row.amt.is_finite() && (0.0..=MAX_AMOUNT).contains(&row.amt)) {
        return fail(
            col::AMT,
            format!(
                "{} is not an amount: it must be finite and within 0..={MAX_AMOUNT}",
                show(row.amt)
            ),
        );
    }
    let event_secs = row.event_time.div_euclid(MICROS_PER_SECOND);
    if !(EVENT_TIME_MIN_SECS..EVENT_TIME_END_SECS).contains(&event_secs) {
        return fail(
            col::TRANS_DATE_TRANS_TIME,
            "is outside the accepted window [2000-01-01, 2100-01-01)".to_string(),
        );
    }
    if !(EVENT_TIME_MIN_SECS..EVENT_TIME_END_SECS).contains(&row.unix_time) {
        return fail(
            col::UNIX_TIME,
            format!(
                "{} is outside the accepted window [{EVENT_TIME_MIN_SECS}, {EVENT_TIME_END_SECS}) (2000-01-01 to 2100-01-01)",
                row.unix_time
            ),
        );
    }
    let event_day = event_secs.div_euclid(86_400);
    if row.dob < DOB_MIN_DAYS || i64::from(row.dob) > event_day {
        return fail(
            col::DOB,
            "must be from 1900-01-01 up to the transaction's date".to_string(),
        );
    }
    in_range(col::LAT, row.lat, -90.0..=90.0)?;
    in_range(col::LONG, row.long, -180.0..=180.0)?;
    in_range(col::MERCH_LAT, row.merch_lat, -90.0..=90.0)?;
    in_range(col::MERCH_LONG, row.merch_long, -180.0..=180.0)?;
    if row.cc_num <= 0 {
        return fail(col::CC_NUM, format!("{} is not a card number", row.cc_num));
    }
    if !(0..=MAX_ZIP).contains(&row.zip) {
        return fail(col::ZIP, format!("{} is outside 0..={MAX_ZIP}", row.zip));
    }
    if !(0..=MAX_CITY_POP).contains(&row.city_pop) {
        return fail(
            col::CITY_POP,
            format!("{} is outside 0..={MAX_CITY_POP}", row.city_pop),
        );
    }
    if row.is_fraud != 0 && row.is_fraud != 1 {
        return fail(col::IS_FRAUD, format!("{} is not 0 or 1", row.is_fraud));
    }
    let trans_num = row.strings[TRANS_NUM_SLOT];
    if trans_num.trim().is_empty() {
        return fail(col::TRANS_NUM, "is empty".to_string());
    }
    if trans_num.len() > MAX_TRANS_NUM_BYTES {
        return fail(
            col::TRANS_NUM,
            format!(
                "is {} bytes long: at most {MAX_TRANS_NUM_BYTES}",
                trans_num.len()
            ),
        );
    }
    if row.strings[CATEGORY_SLOT].is_empty() {
        return fail(col::CATEGORY, "is empty".to_string());
    }
    Ok(())
}

const TRANS_NUM_SLOT: usize = slot_of(idx::TRANS_NUM);
const CATEGORY_SLOT: usize = slot_of(idx::CATEGORY);

const fn slot_of(column: usize) -> usize {
    let mut i = 0;
    while i < STRING_COLUMNS.len() {
        if STRING_COLUMNS[i] == column {
            return i;
        }
        i += 1;
    }
    panic!("not a string column")
}

/// Every row of `batch` (in the transaction schema) that [`check_row`] refuses, with the
/// reason; a null in any column is a violation too.
pub fn invalid_rows(batch: &RecordBatch) -> Result<Vec<(usize, FieldError)>, FormatError> {
    crate::codec::check_schema(batch)?;
    let int64 = |i: usize| batch.column(i).as_primitive::<Int64Type>();
    let int32 = |i: usize| batch.column(i).as_primitive::<Int32Type>();
    let float = |i: usize| batch.column(i).as_primitive::<Float64Type>();
    let (row_ids, cards, pops, unix) = (
        int64(idx::ROW_ID),
        int64(idx::CC_NUM),
        int64(idx::CITY_POP),
        int64(idx::UNIX_TIME),
    );
    let (zips, frauds) = (int32(idx::ZIP), int32(idx::IS_FRAUD));
    let (amts, lats, longs, mlats, mlongs) = (
        float(idx::AMT),
        float(idx::LAT),
        float(idx::LONG),
        float(idx::MERCH_LAT),
        float(idx::MERCH_LONG),
    );
    let times = batch
        .column(idx::TRANS_DATE_TRANS_TIME)
        .as_primitive::<TimestampMicrosecondType>();
    let dobs = batch.column(idx::DOB).as_primitive::<Date32Type>();
    let strings: Vec<_> = STRING_COLUMNS
        .iter()
        .map(|&i| batch.column(i).as_string::<i32>())
        .collect();
    let names = risksense_common::schema::column_names();
    let mut problems = Vec::new();
    for row in 0..batch.num_rows() {
        if let Some(column) = (0..batch.num_columns()).find(|&c| batch.column(c).is_null(row)) {
            problems.push((
                row,
                FieldError {
                    column: names[column],
                    reason: "missing value".to_string(),
                },
            ));
            continue;
        }
        let mut texts = [""; 10];
        for (slot, array) in texts.iter_mut().zip(&strings) {
            *slot = array.value(row);
        }
        let typed = TransactionRow {
            row_id: row_ids.value(row),
            event_time: times.value(row),
            cc_num: cards.value(row),
            amt: amts.value(row),
            zip: zips.value(row),
            lat: lats.value(row),
            long: longs.value(row),
            city_pop: pops.value(row),
            dob: dobs.value(row),
            unix_time: unix.value(row),
            merch_lat: mlats.value(row),
            merch_long: mlongs.value(row),
            is_fraud: frauds.value(row),
            strings: texts,
        };
        if let Err(error) = check_row(&typed) {
            problems.push((row, error));
        }
    }
    Ok(problems)
}

/// `batch` without the rows `problems` names (rows listed once each, in order).
pub fn without_rows(
    batch: &RecordBatch,
    problems: &[(usize, FieldError)],
) -> Result<RecordBatch, FormatError> {
    if problems.is_empty() {
        return Ok(batch.clone());
    }
    let mut keep = vec![true; batch.num_rows()];
    for (row, _) in problems {
        keep[*row] = false;
    }
    let mask = arrow::array::BooleanArray::from(keep);
    Ok(arrow::compute::filter_record_batch(batch, &mask)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use risksense_common::time::days_from_civil;

    #[test]
    fn the_constants_are_the_dates_they_name() {
        assert_eq!(days_from_civil(2000, 1, 1) * 86_400, EVENT_TIME_MIN_SECS);
        assert_eq!(days_from_civil(2100, 1, 1) * 86_400, EVENT_TIME_END_SECS);
        assert_eq!(days_from_civil(1900, 1, 1), i64::from(DOB_MIN_DAYS));
    }

    fn good() -> TransactionRow<'static> {
        TransactionRow {
            row_id: 0,
            event_time: 1_546_301_102 * MICROS_PER_SECOND,
            cc_num: 2_703_186_189_652_095,
            amt: 4.97,
            zip: 28654,
            lat: 36.0788,
            long: -81.1781,
            city_pop: 3495,
            dob: 6_642,
            unix_time: 1_325_376_018,
            merch_lat: 36.011293,
            merch_long: -82.048315,
            is_fraud: 0,
            strings: [
                "fraud_Rippin, Kub and Mann",
                "misc_net",
                "Jennifer",
                "Banks",
                "F",
                "561 Perry Cove",
                "Moravian Falls",
                "NC",
                "Psychologist, counselling",
                "0b242abb623afc578575680df30655b9",
            ],
        }
    }

    fn refused(change: impl FnOnce(&mut TransactionRow<'static>)) -> FieldError {
        let mut row = good();
        change(&mut row);
        check_row(&row).expect_err("refused")
    }

    #[test]
    fn each_bound_refuses_with_its_column_and_the_edges_pass() {
        check_row(&good()).expect("a reference row passes");
        let year = |y: i64| days_from_civil(y, 1, 1) * 86_400 * MICROS_PER_SECOND;
        for (error, column) in [
            (refused(|r| r.amt = 1e308), col::AMT),
            (refused(|r| r.amt = f64::NAN), col::AMT),
            (refused(|r| r.amt = -0.01), col::AMT),
            (refused(|r| r.amt = MAX_AMOUNT + 0.01), col::AMT),
            (refused(|r| r.lat = 999.0), col::LAT),
            (refused(|r| r.long = -180.5), col::LONG),
            (refused(|r| r.merch_lat = f64::INFINITY), col::MERCH_LAT),
            (refused(|r| r.merch_long = 181.0), col::MERCH_LONG),
            (
                refused(|r| r.event_time = year(9999)),
                col::TRANS_DATE_TRANS_TIME,
            ),
            (
                refused(|r| r.event_time = year(2100)),
                col::TRANS_DATE_TRANS_TIME,
            ),
            (refused(|r| r.event_time = 0), col::TRANS_DATE_TRANS_TIME),
            (refused(|r| r.unix_time = 253_402_300_799), col::UNIX_TIME),
            (refused(|r| r.dob = DOB_MIN_DAYS - 1), col::DOB),
            (refused(|r| r.dob = 17_898), col::DOB), // the day after the event
            (refused(|r| r.cc_num = 0), col::CC_NUM),
            (refused(|r| r.zip = 100_000), col::ZIP),
            (refused(|r| r.city_pop = -1), col::CITY_POP),
            (refused(|r| r.is_fraud = 2), col::IS_FRAUD),
            (
                refused(|r| r.strings[TRANS_NUM_SLOT] = "  "),
                col::TRANS_NUM,
            ),
            (refused(|r| r.strings[CATEGORY_SLOT] = ""), col::CATEGORY),
        ] {
            assert_eq!(error.column, column, "{error}");
        }
        let long = "x".repeat(MAX_TRANS_NUM_BYTES + 1);
        let mut row: TransactionRow<'_> = good();
        row.strings[TRANS_NUM_SLOT] = &long;
        assert_eq!(check_row(&row).expect_err("long").column, col::TRANS_NUM);
        // The edges themselves are accepted.
        let edges: [fn(&mut TransactionRow<'static>); 7] = [
            |r| r.amt = MAX_AMOUNT,
            |r| r.amt = 0.0,
            |r| {
                r.lat = -90.0;
                r.long = 180.0;
                r.merch_lat = 90.0;
                r.merch_long = -180.0;
            },
            |r| r.event_time = EVENT_TIME_MIN_SECS * MICROS_PER_SECOND,
            |r| r.event_time = EVENT_TIME_END_SECS * MICROS_PER_SECOND - 1,
            |r| r.dob = DOB_MIN_DAYS,
            |r| r.dob = 17_897, // born on the day of the transaction
        ];
        for edge in edges {
            let mut row = good();
            edge(&mut row);
            check_row(&row).expect("an edge is accepted");
        }
    }
}
