//! A scored transaction as the store keeps it and the API returns it.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type, TimeUnit};
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

/// Reads the rows of a batch of the `scored` view (found by column name, so extra columns
/// such as `row_id` are ignored).
pub fn from_batch(batch: &RecordBatch) -> Result<Vec<ScoredTransaction>, StoreError> {
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
    let trans_num = column("trans_num")?.as_string_opt::<i32>();
    let category = column("category")?.as_string_opt::<i32>();
    let merchant = column("merchant")?.as_string_opt::<i32>();
    let explanation = column("explanation")?.as_string_opt::<i32>();
    let (Some(trans_num), Some(category), Some(merchant), Some(explanation)) =
        (trans_num, category, merchant, explanation)
    else {
        return Err(StoreError::Schema(
            "trans_num, category, merchant and explanation must be Utf8".to_string(),
        ));
    };
    let cc_num = column("cc_num")?.as_primitive::<Int64Type>();
    let time = column("trans_date_trans_time")?
        .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
    let amt = column("amt")?.as_primitive::<Float64Type>();
    let score = column("score")?.as_primitive::<Float64Type>();
    let is_anomaly = column("is_anomaly")?.as_boolean();
    let is_fraud = batch
        .column_by_name("is_fraud")
        .and_then(|c| c.as_primitive_opt::<Int32Type>());
    let model_id = batch
        .column_by_name("model_id")
        .and_then(|c| c.as_string_opt::<i32>());
    let challenger_id = batch
        .column_by_name("challenger_id")
        .and_then(|c| c.as_string_opt::<i32>());
    let challenger_flag = batch
        .column_by_name("challenger_flag")
        .and_then(|c| c.as_boolean_opt());

    let mut rows = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let micros = time.value(i);
        rows.push(ScoredTransaction {
            trans_num: trans_num.value(i).to_string(),
            cc_num: cc_num.value(i),
            event_time: risksense_common::time::event_time_text(micros),
            event_secs: micros.div_euclid(1_000_000),
            category: category.value(i).to_string(),
            merchant: merchant.value(i).to_string(),
            amt: amt.value(i),
            score: score.value(i),
            is_anomaly: !is_anomaly.is_null(i) && is_anomaly.value(i),
            explanation: (!explanation.is_null(i)).then(|| explanation.value(i).to_string()),
            is_fraud: is_fraud.and_then(|c| (!c.is_null(i)).then(|| c.value(i))),
            model_id: model_id.and_then(|c| (!c.is_null(i)).then(|| c.value(i).to_string())),
            challenger_id: challenger_id
                .and_then(|c| (!c.is_null(i)).then(|| c.value(i).to_string())),
            challenger_flag: challenger_flag.and_then(|c| (!c.is_null(i)).then(|| c.value(i))),
        });
    }
    Ok(rows)
}
