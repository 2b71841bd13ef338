//! CSV, JSON and Parquet codecs on real-shaped data (a slice of the Sparkov reference file
//! committed under data/fixtures).

mod common;

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};
use risksense_common::schema::{COLUMN_COUNT, col, idx, transaction_schema};
use risksense_formats::codec::csv::{CsvTransactionReader, CsvTransactionWriter};
use risksense_formats::codec::json::{JsonRowEncoder, JsonTransactionDecoder};
use risksense_formats::source::{TransactionFileWriter, read_all};

fn fixture() -> std::path::PathBuf {
    common::repo_root().join("data/fixtures/sparkov-2019h1-head3000.csv")
}

#[test]
fn reference_csv_parses_and_writes_back_byte_for_byte() {
    let original = std::fs::read(fixture()).expect("fixture present");
    let reader = CsvTransactionReader::new(&original[..], 1000, false).expect("header");
    let batches: Vec<_> = reader.collect::<Result<_, _>>().expect("every row parses");
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3000);
    let mut writer = CsvTransactionWriter::new(Vec::new());
    for batch in &batches {
        writer.write(batch).expect("write");
    }
    let written = writer.finish().expect("finish");
    let (a, b) = (
        String::from_utf8_lossy(&original),
        String::from_utf8_lossy(&written),
    );
    for (line, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        assert_eq!(x, y, "line {} differs", line + 1);
    }
    assert_eq!(original, written);
}

#[test]
fn csv_to_json_to_arrow_keeps_all_23_columns_with_their_types() {
    let from_csv = common::concat(&read_all(&fixture()).expect("fixture parses"));
    let schema = from_csv.schema();
    assert_eq!(schema.fields().len(), COLUMN_COUNT);
    assert_eq!(schema.field(idx::CC_NUM).data_type(), &DataType::Int64);
    assert_eq!(schema.field(idx::AMT).data_type(), &DataType::Float64);
    assert_eq!(
        schema.field(idx::TRANS_DATE_TRANS_TIME).data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, None)
    );
    assert_eq!(schema.field(idx::DOB).data_type(), &DataType::Date32);

    let encoder = JsonRowEncoder::new(&from_csv).expect("encoder");
    let mut decoder = JsonTransactionDecoder::new(from_csv.num_rows()).expect("decoder");
    let mut message = Vec::new();
    for row in 0..encoder.num_rows() {
        encoder.encode_row(row, &mut message);
        decoder.push(&message).expect("valid JSON");
    }
    let from_json = decoder.flush().expect("decodes").expect("rows");
    assert_eq!(from_json.schema(), transaction_schema());
    assert_eq!(from_json, from_csv);

    // Spot-check the first reference row's values end to end.
    assert_eq!(
        from_json
            .column(idx::CC_NUM)
            .as_primitive::<Int64Type>()
            .value(0),
        3592534803332986
    );
    assert_eq!(
        from_json
            .column(idx::AMT)
            .as_primitive::<Float64Type>()
            .value(0),
        8.8
    );
    assert_eq!(
        from_json.column(idx::MERCHANT).as_string::<i32>().value(0),
        "fraud_Labadie, Treutel and Bode"
    );
}

#[test]
fn json_message_uses_kaggle_names_and_text_formats() {
    let batch = common::concat(&read_all(&fixture()).expect("fixture parses"));
    let encoder = JsonRowEncoder::new(&batch).expect("encoder");
    let mut message = Vec::new();
    encoder.encode_row(0, &mut message);
    let value: serde_json::Value = serde_json::from_slice(&message).expect("valid JSON");
    assert_eq!(value[col::TRANS_DATE_TRANS_TIME], "2019-01-01 00:05:02");
    assert_eq!(value[col::DOB], "1956-12-03");
    assert_eq!(value[col::CC_NUM].as_i64(), Some(3592534803332986));
    assert_eq!(value[col::UNIX_TIME].as_i64(), Some(1546301102));
    assert_eq!(value[col::IS_FRAUD].as_i64(), Some(0));
    let mut key = Vec::new();
    encoder.card_key(0, &mut key);
    assert_eq!(key, b"3592534803332986");
}

#[test]
fn parquet_round_trip_is_lossless() {
    let batches = read_all(&fixture()).expect("fixture parses");
    let dir = std::env::temp_dir().join(common::unique_topic("risksense-parquet"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("sample.parquet");
    let mut writer = TransactionFileWriter::create(&path).expect("create");
    for batch in &batches {
        writer.write(batch).expect("write");
    }
    writer.finish().expect("close");
    let back = read_all(&path).expect("read back");
    assert_eq!(common::concat(&back), common::concat(&batches));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_bad_row_is_reported_with_its_line_and_column_or_skipped_and_counted() {
    let original = std::fs::read_to_string(fixture()).expect("fixture present");
    let mut lines: Vec<String> = original.lines().take(6).map(str::to_string).collect();
    // Line 4 of the file (the third data row): the amount is not a number.
    lines[3] = lines[3].replacen(",grocery_pos,232.07,", ",grocery_pos,12x,", 1);
    assert!(lines[3].contains("12x"), "fixture changed: {}", lines[3]);
    let text = lines.join("\n") + "\n";

    let error = CsvTransactionReader::new(text.as_bytes(), 100, false)
        .expect("header")
        .collect::<Result<Vec<_>, _>>()
        .expect_err("a bad row stops the read");
    let message = error.to_string();
    assert!(message.contains("line 4"), "{message}");
    assert!(message.contains("`amt`"), "{message}");
    assert!(message.contains("12x"), "{message}");

    let mut reader = CsvTransactionReader::new(text.as_bytes(), 100, true).expect("header");
    let rows: usize = reader.by_ref().map(|b| b.expect("skips").num_rows()).sum();
    assert_eq!(rows, 4);
    assert_eq!(reader.rows_skipped(), 1);
    assert!(
        reader
            .first_skipped()
            .is_some_and(|s| s.starts_with("line 4"))
    );
}

#[test]
fn a_header_without_a_required_column_is_refused() {
    let text = "trans_date_trans_time,cc_num\n2019-01-01 00:00:00,1\n";
    let error = CsvTransactionReader::new(text.as_bytes(), 10, false)
        .err()
        .expect("refused");
    assert!(error.to_string().contains("`merchant`"), "{error}");
}
