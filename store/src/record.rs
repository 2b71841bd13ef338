//! A scored transaction as the store keeps it and the API returns it.

use arrow::array::{
    Array, AsArray, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{
    DataType, Float64Type, Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType,
};
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// One row of the `scored` view (sql/score.sql), without the model inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredTransaction {
    pub trans_num: String,
    pub cc_num: i64,
    /// Event time as in the source: `2019-01-01 00:05:02`.
    pub event_time: String,
    /// Event time in seconds since the epoch (orders a card's list and the anomalies).
    pub event_secs: i64,
    pub category: String,
    pub merchant: String,
    pub amt: f64,
    /// Reconstruction error of the autoencoder.
    pub score: f64,
    pub is_anomaly: bool,
    /// The three worst-reconstructed features, for anomalies only.
    pub explanation: Option<String>,
    /// The label, when the source has one.
    pub is_fraud: Option<i32>,
    /// The model that scored it (`name@hash`; absent in records written before ids).
    #[serde(default)]
    pub model_id: Option<String>,
    /// The challenger that shadowed the champion on it, and whether it flagged the row
    /// (for comparing the two once labels arrive; never an alert).
    #[serde(default)]
    pub challenger_id: Option<String>,
    #[serde(default)]
    pub challenger_flag: Option<bool>,
}

impl ScoredTransaction {
    /// The record as a borrowed row (its event time from `event_secs`, which agrees with
    /// `event_time`).
    pub fn as_row(&self) -> ScoredRow<'_> {
        ScoredRow {
            trans_num: &self.trans_num,
            cc_num: self.cc_num,
            event_micros: self.event_secs.saturating_mul(1_000_000),
            category: &self.category,
            merchant: &self.merchant,
            amt: self.amt,
            score: self.score,
            is_anomaly: self.is_anomaly,
            explanation: self.explanation.as_deref(),
            is_fraud: self.is_fraud,
            model_id: self.model_id.as_deref(),
            challenger_id: self.challenger_id.as_deref(),
            challenger_flag: self.challenger_flag,
        }
    }
}

/// Reads the rows of a batch of the `scored` view (found by column name, so extra columns
/// such as `row_id` are ignored).
pub fn from_batch(batch: &RecordBatch) -> Result<Vec<ScoredTransaction>, StoreError> {
    Ok(ScoredRows::from_batch(batch)?.to_records())
}

/// Scored rows as the store writes them: the columns of the `scored` view a record holds,
/// read in place. The stream's sinks hold these, not a [`ScoredTransaction`] per row: its
/// owned strings (five to seven a row), made and freed for every scored transaction, were
/// a large part of the engine's allocations at the drain.
#[derive(Debug, Clone, Default)]
pub struct ScoredRows {
    parts: Vec<ScoredColumns>,
}

/// One batch's columns, typed once.
#[derive(Debug, Clone)]
struct ScoredColumns {
    trans_num: StringArray,
    cc_num: Int64Array,
    time: TimestampMicrosecondArray,
    category: StringArray,
    merchant: StringArray,
    amt: Float64Array,
    score: Float64Array,
    is_anomaly: BooleanArray,
    explanation: StringArray,
    is_fraud: Option<Int32Array>,
    model_id: Option<StringArray>,
    challenger_id: Option<StringArray>,
    challenger_flag: Option<BooleanArray>,
}

/// One of [`ScoredRows`], borrowed: a [`ScoredTransaction`]'s fields without copies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoredRow<'a> {
    pub trans_num: &'a str,
    pub cc_num: i64,
    /// Event time in microseconds since the epoch (the record keeps the whole second).
    pub event_micros: i64,
    pub category: &'a str,
    pub merchant: &'a str,
    pub amt: f64,
    pub score: f64,
    pub is_anomaly: bool,
    pub explanation: Option<&'a str>,
    pub is_fraud: Option<i32>,
    pub model_id: Option<&'a str>,
    pub challenger_id: Option<&'a str>,
    pub challenger_flag: Option<bool>,
}

impl ScoredRow<'_> {
    /// Event time in seconds since the epoch.
    pub fn event_secs(&self) -> i64 {
        self.event_micros.div_euclid(1_000_000)
    }

    /// `2019-01-01 00:05:02`, without an allocation.
    pub fn event_time(&self) -> risksense_common::time::EventTimeText {
        risksense_common::time::EventTimeText::new(self.event_micros)
    }

    pub fn to_record(&self) -> ScoredTransaction {
        ScoredTransaction {
            trans_num: self.trans_num.to_string(),
            cc_num: self.cc_num,
            event_time: self.event_time().as_str().to_string(),
            event_secs: self.event_secs(),
            category: self.category.to_string(),
            merchant: self.merchant.to_string(),
            amt: self.amt,
            score: self.score,
            is_anomaly: self.is_anomaly,
            explanation: self.explanation.map(str::to_string),
            is_fraud: self.is_fraud,
            model_id: self.model_id.map(str::to_string),
            challenger_id: self.challenger_id.map(str::to_string),
            challenger_flag: self.challenger_flag,
        }
    }
}

impl ScoredRows {
    /// The rows of a batch of the `scored` view (columns found by name, so extra ones
    /// such as `row_id` are ignored; the arrays are shared, not copied).
    pub fn from_batch(batch: &RecordBatch) -> Result<Self, StoreError> {
        let mut rows = Self::default();
        rows.push_batch(batch)?;
        Ok(rows)
    }

    /// Adds a batch's rows after those already held.
    pub fn push_batch(&mut self, batch: &RecordBatch) -> Result<(), StoreError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.parts.push(ScoredColumns::new(batch)?);
        Ok(())
    }

    /// Records given one by one (tests, and callers that build rows themselves). Each
    /// row's `event_secs` is its event time (the store keeps whole seconds).
    pub fn from_records(records: &[ScoredTransaction]) -> Self {
        if records.is_empty() {
            return Self::default();
        }
        let strings = |f: &dyn Fn(&ScoredTransaction) -> Option<&str>| {
            StringArray::from_iter(records.iter().map(f))
        };
        let columns = ScoredColumns {
            trans_num: strings(&|r| Some(r.trans_num.as_str())),
            cc_num: records.iter().map(|r| r.cc_num).collect(),
            time: TimestampMicrosecondArray::from_iter_values(
                records
                    .iter()
                    .map(|r| r.event_secs.saturating_mul(1_000_000)),
            ),
            category: strings(&|r| Some(r.category.as_str())),
            merchant: strings(&|r| Some(r.merchant.as_str())),
            amt: records.iter().map(|r| r.amt).collect(),
            score: records.iter().map(|r| r.score).collect(),
            is_anomaly: records.iter().map(|r| Some(r.is_anomaly)).collect(),
            explanation: strings(&|r| r.explanation.as_deref()),
            is_fraud: Some(records.iter().map(|r| r.is_fraud).collect()),
            model_id: Some(strings(&|r| r.model_id.as_deref())),
            challenger_id: Some(strings(&|r| r.challenger_id.as_deref())),
            challenger_flag: Some(records.iter().map(|r| r.challenger_flag).collect()),
        };
        Self {
            parts: vec![columns],
        }
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(|part| part.trans_num.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = ScoredRow<'_>> + '_ {
        self.parts
            .iter()
            .flat_map(|part| (0..part.trans_num.len()).map(move |i| part.row(i)))
    }

    pub fn to_records(&self) -> Vec<ScoredTransaction> {
        self.iter().map(|row| row.to_record()).collect()
    }
}

impl ScoredColumns {
    fn new(batch: &RecordBatch) -> Result<Self, StoreError> {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| StoreError::Schema(format!("scored rows lack column `{name}`")))
        };
        let expect = |name: &str, want: &DataType| -> Result<(), StoreError> {
            let got = column(name)?.data_type();
            if got == want {
                Ok(())
            } else {
                Err(StoreError::Schema(format!(
                    "column `{name}` is {got}, expected {want}"
                )))
            }
        };
        expect("cc_num", &DataType::Int64)?;
        expect(
            "trans_date_trans_time",
            &DataType::Timestamp(TimeUnit::Microsecond, None),
        )?;
        expect("amt", &DataType::Float64)?;
        expect("score", &DataType::Float64)?;
        expect("is_anomaly", &DataType::Boolean)?;
        let text = |name: &str| -> Result<StringArray, StoreError> {
            column(name)?
                .as_string_opt::<i32>()
                .cloned()
                .ok_or_else(|| StoreError::Schema(format!("column `{name}` must be Utf8")))
        };
        let optional_text = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_string_opt::<i32>())
                .cloned()
        };
        Ok(Self {
            trans_num: text("trans_num")?,
            cc_num: column("cc_num")?.as_primitive::<Int64Type>().clone(),
            time: column("trans_date_trans_time")?
                .as_primitive::<TimestampMicrosecondType>()
                .clone(),
            category: text("category")?,
            merchant: text("merchant")?,
            amt: column("amt")?.as_primitive::<Float64Type>().clone(),
            score: column("score")?.as_primitive::<Float64Type>().clone(),
            is_anomaly: column("is_anomaly")?.as_boolean().clone(),
            explanation: text("explanation")?,
            is_fraud: batch
                .column_by_name("is_fraud")
                .and_then(|c| c.as_primitive_opt::<Int32Type>())
                .cloned(),
            model_id: optional_text("model_id"),
            challenger_id: optional_text("challenger_id"),
            challenger_flag: batch
                .column_by_name("challenger_flag")
                .and_then(|c| c.as_boolean_opt())
                .cloned(),
        })
    }

    fn row(&self, i: usize) -> ScoredRow<'_> {
        fn text(column: &StringArray, i: usize) -> Option<&str> {
            (!column.is_null(i)).then(|| column.value(i))
        }
        ScoredRow {
            trans_num: self.trans_num.value(i),
            cc_num: self.cc_num.value(i),
            event_micros: self.time.value(i),
            category: self.category.value(i),
            merchant: self.merchant.value(i),
            amt: self.amt.value(i),
            score: self.score.value(i),
            is_anomaly: !self.is_anomaly.is_null(i) && self.is_anomaly.value(i),
            explanation: text(&self.explanation, i),
            is_fraud: self
                .is_fraud
                .as_ref()
                .and_then(|c| (!c.is_null(i)).then(|| c.value(i))),
            model_id: self.model_id.as_ref().and_then(|c| text(c, i)),
            challenger_id: self.challenger_id.as_ref().and_then(|c| text(c, i)),
            challenger_flag: self
                .challenger_flag
                .as_ref()
                .and_then(|c| (!c.is_null(i)).then(|| c.value(i))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(trans_num: &str, anomaly: bool) -> ScoredTransaction {
        ScoredTransaction {
            trans_num: trans_num.to_string(),
            cc_num: 42,
            event_time: "2019-01-01 00:00:18".to_string(),
            event_secs: 1_546_300_818,
            category: "misc_net".to_string(),
            merchant: "fraud_Rippin, Kub and \"Mann\"".to_string(),
            amt: 4.97,
            score: if anomaly { 3.5 } else { 0.25 },
            is_anomaly: anomaly,
            explanation: anomaly.then(|| "log_amt".to_string()),
            is_fraud: anomaly.then_some(1),
            model_id: Some("default@0123456789ab".to_string()),
            challenger_id: anomaly.then(|| "trees@ba9876543210".to_string()),
            challenger_flag: anomaly.then_some(false),
        }
    }

    #[test]
    fn records_read_back_as_given_through_the_columns() {
        let records = vec![record("a", false), record("b", true), record("c", false)];
        let rows = ScoredRows::from_records(&records);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows.to_records(), records);
        let mut twice = rows.clone();
        twice.parts.extend(rows.parts.clone());
        assert_eq!(twice.len(), 6);
        let names: Vec<&str> = twice.iter().map(|r| r.trans_num).collect();
        assert_eq!(names, ["a", "b", "c", "a", "b", "c"]);
    }
}
