//! The input bounds of risksense_formats::validate on each input path (CSV, Parquet; JSON
//! messages are in stream/decode.rs and engine/tests/stream.rs), and what they buy: no
//! feature and no score of an accepted row is NaN or infinite, in the batch path and in
//! the stream's micro-batches with per-card history.

mod common;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use risksense_common::schema::{col, idx, transaction_schema};
use risksense_formats::codec::csv::CsvTransactionReader;
use risksense_formats::codec::json::JsonRowEncoder;
use risksense_formats::message::{Incoming, decode};
use risksense_formats::source::TransactionFile;
use risksense_formats::validate::{
    EVENT_TIME_END_SECS, EVENT_TIME_MIN_SECS, MAX_AMOUNT, MAX_CITY_POP,
};
use risksense_query::scoring::{self, ID_COLUMNS, SessionOptions};
use risksense_synth::{Generator, SynthConfig};
use risksense_udfs::Model;
use serde_json::{Value, json};

fn fixture() -> std::path::PathBuf {
    common::repo_root().join("data/fixtures/sparkov-2019h1-head3000.csv")
}

fn model() -> Arc<Model> {
    let dir = common::repo_root().join("models/default");
    Arc::new(Model::load(&dir, risksense_udfs::SessionOptions { threads: 1 }).expect("model"))
}

/// The first `rows` rows of the fixture as CSV records, with the header.
fn fixture_records(rows: usize) -> (csv::StringRecord, Vec<csv::StringRecord>) {
    let mut reader = csv::Reader::from_path(fixture()).expect("fixture");
    let header = reader.headers().expect("header").clone();
    let records = reader
        .records()
        .take(rows)
        .map(|r| r.expect("record"))
        .collect();
    (header, records)
}

fn set(header: &csv::StringRecord, record: &mut csv::StringRecord, name: &str, value: &str) {
    let position = header.iter().position(|h| h == name).expect("column");
    let mut fields: Vec<String> = record.iter().map(str::to_string).collect();
    fields[position] = value.to_string();
    *record = csv::StringRecord::from(fields);
}

fn csv_text(header: &csv::StringRecord, records: &[csv::StringRecord]) -> Vec<u8> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(header).expect("header");
    for record in records {
        writer.write_record(record).expect("record");
    }
    writer.into_inner().expect("csv")
}

#[test]
fn csv_rows_out_of_bounds_stop_the_read_with_their_line_or_are_skipped_and_counted() {
    let cases: [(&str, &str, &str); 6] = [
        (col::LAT, "999", "column `lat`: 999 is outside -90..=90"),
        (
            col::TRANS_DATE_TRANS_TIME,
            "9999-01-01 00:00:00",
            "`trans_date_trans_time`: is outside",
        ),
        (
            col::CC_NUM,
            "2703186189652095.5",
            "`cc_num`: `2703186189652095.5` is not a card number",
        ),
        (col::AMT, "1e308", "column `amt`: 1e308 is not an amount"),
        (col::MERCH_LONG, "-181", "column `merch_long`"),
        (col::DOB, "2020-01-01", "column `dob`"),
    ];
    for (column, value, needle) in cases {
        let (header, mut records) = fixture_records(5);
        set(&header, &mut records[2], column, value);
        let text = csv_text(&header, &records);
        let error = CsvTransactionReader::new(&text[..], 100, false)
            .expect("header")
            .collect::<Result<Vec<_>, _>>()
            .expect_err("a bad row stops the read");
        let message = error.to_string();
        // Header on line 1: the third record is line 4.
        assert!(message.starts_with("line 4: "), "{message}");
        assert!(message.contains(needle), "{message} lacks {needle}");

        let mut reader = CsvTransactionReader::new(&text[..], 100, true).expect("header");
        let rows: usize = reader.by_ref().map(|b| b.expect("skips").num_rows()).sum();
        assert_eq!((rows, reader.rows_skipped()), (4, 1), "{column}");
    }
}

/// The fixture's first rows as a batch, with `change` applied to its columns, written to
/// a Parquet file of the resulting schema.
fn parquet_with(
    name: &str,
    change: impl FnOnce(&mut Vec<Field>, &mut Vec<ArrayRef>),
) -> std::path::PathBuf {
    let batch = common::concat(&risksense_formats::source::read_all(&fixture()).expect("fixture"))
        .slice(0, 20);
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut columns = batch.columns().to_vec();
    change(&mut fields, &mut columns);
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns).expect("batch");
    let dir = std::env::temp_dir().join(common::unique_topic("validation-parquet"));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join(format!("{name}.parquet"));
    let mut writer =
        risksense_formats::codec::parquet::create_writer(&path, schema).expect("writer");
    writer.write(&batch).expect("write");
    writer.close().expect("close");
    path
}

/// Sets row `row` of the Float64 column `column` to `value`.
fn set_float(columns: &mut [ArrayRef], column: usize, row: usize, value: f64) {
    let mut values: Vec<f64> = columns[column]
        .as_primitive::<Float64Type>()
        .values()
        .to_vec();
    values[row] = value;
    columns[column] = Arc::new(Float64Array::from(values));
}

/// Stores `cc_num` as Float64 (as some writers do), with row `row` set to `value` if given.
fn cards_as_floats(fields: &mut [Field], columns: &mut [ArrayRef], change: Option<(usize, f64)>) {
    let mut cards: Vec<f64> = columns[idx::CC_NUM]
        .as_primitive::<Int64Type>()
        .values()
        .iter()
        .map(|c| *c as f64)
        .collect();
    if let Some((row, value)) = change {
        cards[row] = value;
    }
    columns[idx::CC_NUM] = Arc::new(Float64Array::from(cards));
    fields[idx::CC_NUM] = Field::new(col::CC_NUM, DataType::Float64, false);
}

fn read(path: &std::path::Path, skip_bad: bool) -> (Result<usize, String>, u64) {
    let mut file = TransactionFile::open(path, 8192, skip_bad).expect("open");
    let mut rows = 0;
    for batch in file.by_ref() {
        match batch {
            Ok(batch) => rows += batch.num_rows(),
            Err(error) => return (Err(error.to_string()), file.rows_skipped()),
        }
    }
    (Ok(rows), file.rows_skipped())
}

#[test]
fn parquet_rows_are_checked_and_integers_stored_as_floats_must_be_whole() {
    // lat 999 in row 3; cc_num stored as float64, fractional in row 5; amt 1e308 in row 7.
    let path = parquet_with("bad-rows", |fields, columns| {
        set_float(columns, idx::LAT, 3, 999.0);
        cards_as_floats(fields, columns, Some((5, 3_592_534_803.5)));
        set_float(columns, idx::AMT, 7, 1e308);
    });
    let (outcome, _) = read(&path, false);
    let error = outcome.expect_err("a bad row stops the read");
    assert!(
        error.contains("row 3: column `lat`: 999 is outside"),
        "{error}"
    );
    let (outcome, skipped) = read(&path, true);
    assert_eq!(outcome, Ok(17));
    assert_eq!(skipped, 3);

    // Whole floats are fine as integers.
    let path = parquet_with("float-cards", |fields, columns| {
        cards_as_floats(fields, columns, None)
    });
    assert_eq!(read(&path, false).0, Ok(20));

    // Amounts stored as text: the file is refused, not parsed.
    let path = parquet_with("text-amounts", |fields, columns| {
        let amt: Vec<String> = columns[idx::AMT]
            .as_primitive::<Float64Type>()
            .values()
            .iter()
            .map(|a| a.to_string())
            .collect();
        columns[idx::AMT] = Arc::new(StringArray::from(amt));
        fields[idx::AMT] = Field::new(col::AMT, DataType::Utf8, false);
    });
    let error = TransactionFile::open(&path, 8192, true)
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("column `amt` is stored as Utf8"), "{error}");
}

fn generated() -> RecordBatch {
    let config = SynthConfig::new(12, "2019-01-01", "2019-02-28", 17).expect("config");
    let batches: Vec<RecordBatch> = Generator::new(config)
        .collect::<Result<_, _>>()
        .expect("generated");
    common::concat(&batches)
}

fn to_json(batch: &RecordBatch) -> Vec<Value> {
    let encoder = JsonRowEncoder::new(batch).expect("encoder");
    let mut out = Vec::new();
    (0..batch.num_rows())
        .map(|row| {
            encoder.encode_row(row, &mut out);
            serde_json::from_slice(&out).expect("json")
        })
        .collect()
}

fn time_text(secs: i64) -> String {
    let mut out = Vec::new();
    risksense_common::time::write_timestamp_micros(&mut out, secs * 1_000_000);
    String::from_utf8(out).expect("ascii")
}

fn date_text(secs: i64) -> String {
    time_text(secs)[..10].to_string()
}

/// Generated transactions plus rows at every bound, all accepted by the JSON path, in
/// event-time order with `row_id` = position.
fn extreme_rows() -> RecordBatch {
    let base = generated();
    let mut values = to_json(&base);
    let template = values[0].clone();
    let with = |changes: Value, trans_num: &str| {
        let mut row = template.clone();
        for (key, value) in changes.as_object().expect("object") {
            row[key] = value.clone();
        }
        row["trans_num"] = json!(trans_num);
        row
    };
    let t = |text: &str| {
        risksense_common::time::parse_timestamp_micros(text).expect("time") / 1_000_000
    };
    // Card A: a ceiling amount and a zero amount among its normal rows (the scenario of
    // 1e308: its next rows' 24 h sums and 30-row means must stay finite).
    values.push(with(json!({"amt": MAX_AMOUNT, "trans_date_trans_time": "2019-01-10 12:00:00", "unix_time": t("2019-01-10 12:00:00")}), "ceiling-a"));
    values.push(with(json!({"amt": 0.0, "trans_date_trans_time": "2019-01-10 12:00:01", "unix_time": t("2019-01-10 12:00:01")}), "zero-a"));
    // Card B: the edges of the time window, of the map, of dates of birth and of cities.
    let card_b = 4_000_000_000_000_001i64;
    let last = EVENT_TIME_END_SECS - 1;
    values.push(with(json!({
        "cc_num": card_b, "amt": 0.0,
        "trans_date_trans_time": time_text(EVENT_TIME_MIN_SECS), "unix_time": EVENT_TIME_MIN_SECS,
        "dob": "1900-01-01", "lat": 90.0, "long": 180.0, "merch_lat": -90.0, "merch_long": -180.0,
        "city_pop": 0, "zip": 0,
    }), "edge-b-1"));
    values.push(with(json!({
        "cc_num": card_b, "amt": MAX_AMOUNT,
        "trans_date_trans_time": time_text(last), "unix_time": last,
        "dob": date_text(last), "lat": -90.0, "long": -180.0, "merch_lat": 90.0, "merch_long": 180.0,
        "city_pop": MAX_CITY_POP, "zip": 99_999,
    }), "edge-b-2"));
    // Card C: fifty ceiling amounts in one day, then normal ones.
    let card_c = 4_000_000_000_000_002i64;
    for i in 0..60 {
        let secs = t("2019-01-05 00:00:00") + i * 1_000;
        let amt = if i < 50 { MAX_AMOUNT } else { 12.5 };
        values.push(with(
            json!({"cc_num": card_c, "amt": amt, "trans_date_trans_time": time_text(secs), "unix_time": secs}),
            &format!("burst-c-{i}"),
        ));
    }
    values.sort_by_key(|v| t(v["trans_date_trans_time"].as_str().expect("time")));
    let messages: Vec<Incoming> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Incoming {
            partition: 0,
            offset: i as i64,
            key: None,
            payload: serde_json::to_vec(v).expect("json").into(),
            timestamp_ms: None,
        })
        .collect();
    let decoded = decode(&messages).expect("decode");
    assert!(
        decoded.rejected.is_empty(),
        "refused: {:?}",
        decoded.rejected
    );
    decoded.batch.expect("rows")
}

/// Asserts that every Float64 column of `batches` from `first_column` on is non-null and
/// finite; returns how many values were checked.
fn assert_finite(batches: &[RecordBatch], first_column: usize, what: &str) -> usize {
    let mut checked = 0;
    for batch in batches {
        let schema = batch.schema();
        for c in first_column..batch.num_columns() {
            let name = schema.field(c).name();
            // The shadow and supervised models' scores are null without them (none here).
            if [
                "challenger_score",
                "challenger_alert_score",
                "fraud_probability",
            ]
            .contains(&name.as_str())
            {
                continue;
            }
            let Some(values) = batch.column(c).as_primitive_opt::<Float64Type>() else {
                continue;
            };
            let trans_nums = batch
                .column_by_name("trans_num")
                .expect("trans_num")
                .as_string::<i32>();
            for row in 0..batch.num_rows() {
                assert!(
                    values.is_valid(row) && values.value(row).is_finite(),
                    "{what}: `{name}` of {} is {:?}",
                    trans_nums.value(row),
                    values.is_valid(row).then(|| values.value(row))
                );
                checked += 1;
            }
        }
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_feature_or_score_of_an_accepted_row_is_nan_or_infinite() {
    let rows = extreme_rows();
    let model = model();

    // The batch path: every feature and every score.
    let ctx =
        scoring::new_session(Some(model.clone()), SessionOptions::default()).expect("session");
    scoring::register_batches(
        &ctx,
        scoring::TRANSACTIONS,
        transaction_schema(),
        vec![rows.clone()],
    )
    .expect("table");
    scoring::install_views(&ctx, Some(&model))
        .await
        .expect("views");
    let features = ctx
        .sql("SELECT * FROM features")
        .await
        .expect("sql")
        .collect()
        .await
        .expect("features");
    let feature_count = features[0].num_columns() - ID_COLUMNS;
    assert_eq!(feature_count, model.feature_count());
    let checked = assert_finite(&features, ID_COLUMNS, "batch features");
    assert_eq!(checked, rows.num_rows() * feature_count);
    let scored = common::batch_scored(&model, rows.clone()).await;
    let score_column = scored[0].schema().index_of("score").expect("score");
    // Four numbers per row from `score` on: the score, its risk, the card's recent score
    // and the alert score.
    assert_eq!(
        assert_finite(&scored, score_column, "batch scores"),
        4 * rows.num_rows()
    );

    // The stream: the same rows in micro-batches of 7, each card's history carried
    // between them.
    let streamed = common::stream_scored(&model, &rows, 7).await;
    assert_eq!(
        assert_finite(&streamed, score_column, "stream scores"),
        4 * rows.num_rows()
    );
}

/// `rescore` and `train` scan Parquet with DataFusion: the same bounds apply there, as a
/// SQL function over the scan that fails the query at the first bad row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescoring_parquet_applies_the_same_validation() {
    async fn rescore(path: &std::path::Path) -> Result<i64, String> {
        let model = model();
        let ctx = scoring::new_session(Some(model.clone()), SessionOptions::default())
            .map_err(|e| e.to_string())?;
        scoring::register_files(&ctx, scoring::TRANSACTIONS, &[path.to_path_buf()])
            .await
            .map_err(|e| e.to_string())?;
        scoring::install_views(&ctx, Some(&model))
            .await
            .map_err(|e| e.to_string())?;
        let batches = ctx
            .sql("SELECT count(*) AS n FROM scored")
            .await
            .map_err(|e| e.to_string())?
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(batches[0].column(0).as_primitive::<Int64Type>().value(0))
    }
    let good = parquet_with("rescore-good", |_, _| {});
    assert_eq!(rescore(&good).await, Ok(20));
    let bad = parquet_with("rescore-bad-amount", |_, columns| {
        set_float(columns, idx::AMT, 7, 1e308)
    });
    let error = rescore(&bad).await.expect_err("refused");
    assert!(
        error.contains("column `amt`: 1e308 is not an amount"),
        "{error}"
    );
    let fractional = parquet_with("rescore-fractional-card", |fields, columns| {
        cards_as_floats(fields, columns, Some((2, 12.5)))
    });
    let error = rescore(&fractional).await.expect_err("refused");
    assert!(error.contains("12.5 is not an integer"), "{error}");
}
