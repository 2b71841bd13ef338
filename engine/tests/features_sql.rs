//! sql/features.sql against a plain-Rust computation of the same features, on the cards of
//! the reference fixture with the longest histories.

mod common;

use std::collections::HashMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Date32Type, Float64Type, Int64Type, TimestampMicrosecondType};
use risksense_common::schema::idx;
use risksense_query::scoring::{self, ID_COLUMNS, SessionOptions};
use risksense_udfs::functions::haversine_km;

#[derive(Clone)]
struct Row {
    row_id: i64,
    trans_num: String,
    secs: i64,
    category: String,
    amt: f64,
    lat: f64,
    long: f64,
    merch_lat: f64,
    merch_long: f64,
    city_pop: i64,
    female: bool,
    dob_days: i64,
}

fn is_night(secs: i64) -> bool {
    let hour = secs.rem_euclid(86_400) / 3600;
    !(4..22).contains(&hour)
}

/// The features of `rows[i]` given all rows of its card, sorted by (time, row_id).
fn reference(rows: &[Row], i: usize) -> HashMap<&'static str, f64> {
    use std::f64::consts::PI;
    let r = &rows[i];
    let mut f = HashMap::new();
    f.insert("log_amt", (1.0 + r.amt).ln());
    for c in risksense_common::schema::CATEGORIES {
        let name: &'static str = Box::leak(format!("cat_{c}").into_boxed_str());
        f.insert(name, if r.category == c { 1.0 } else { 0.0 });
    }
    let of_day = r.secs.rem_euclid(86_400);
    let hour = (of_day / 3600) as f64 + ((of_day / 60) % 60) as f64 / 60.0;
    f.insert("hour_sin", (2.0 * PI * hour / 24.0).sin());
    f.insert("hour_cos", (2.0 * PI * hour / 24.0).cos());
    let dow = ((r.secs.div_euclid(86_400) + 4).rem_euclid(7)) as f64; // 0 = Sunday
    f.insert("dow_sin", (2.0 * PI * dow / 7.0).sin());
    f.insert("dow_cos", (2.0 * PI * dow / 7.0).cos());
    f.insert(
        "age_years",
        (r.secs - r.dob_days * 86_400) as f64 / 31_557_600.0,
    );
    f.insert(
        "log_distance_km",
        (1.0 + haversine_km(r.lat, r.long, r.merch_lat, r.merch_long)).ln(),
    );
    f.insert("log_city_pop", (1.0 + r.city_pop as f64).ln());
    f.insert("is_female", if r.female { 1.0 } else { 0.0 });
    let gap = if i == 0 {
        2_592_000
    } else {
        (r.secs - rows[i - 1].secs).min(2_592_000)
    };
    f.insert("log_secs_since_prev", (1.0 + gap as f64).ln());
    // The card's rows up to this one (in (time, row_id) order) within the last 24 h.
    let window: Vec<&Row> = rows[..=i]
        .iter()
        .filter(|o| o.secs <= r.secs && o.secs >= r.secs - 86_399)
        .collect();
    let count = window.len() as f64;
    let spend: f64 = window.iter().map(|o| o.amt).sum();
    let night: Vec<&&Row> = window.iter().filter(|o| is_night(o.secs)).collect();
    let night_spend: f64 = night.iter().map(|o| o.amt).sum();
    let before = &rows[i.saturating_sub(30)..i];
    let mean = if before.is_empty() {
        r.amt
    } else {
        before.iter().map(|o| o.amt).sum::<f64>() / before.len() as f64
    };
    f.insert("log_count_24h", count.ln());
    f.insert("log_amt_over_mean", ((1.0 + r.amt) / (1.0 + mean)).ln());
    f.insert(
        "log_spend_24h_over_mean",
        ((1.0 + spend) / (1.0 + mean)).ln(),
    );
    f.insert("night_share_24h", night.len() as f64 / count);
    f.insert(
        "log_night_spend_24h_over_mean",
        ((1.0 + night_spend) / (1.0 + mean)).ln(),
    );
    f.insert("log_night_count_24h", (1.0 + night.len() as f64).ln());
    f
}

fn rows_by_card(batch: &RecordBatch) -> HashMap<i64, Vec<Row>> {
    let mut cards: HashMap<i64, Vec<Row>> = HashMap::new();
    let time = batch
        .column(idx::TRANS_DATE_TRANS_TIME)
        .as_primitive::<TimestampMicrosecondType>();
    let f64_col = |i: usize| batch.column(i).as_primitive::<Float64Type>();
    for row in 0..batch.num_rows() {
        cards
            .entry(
                batch
                    .column(idx::CC_NUM)
                    .as_primitive::<Int64Type>()
                    .value(row),
            )
            .or_default()
            .push(Row {
                row_id: batch
                    .column(idx::ROW_ID)
                    .as_primitive::<Int64Type>()
                    .value(row),
                trans_num: batch
                    .column(idx::TRANS_NUM)
                    .as_string::<i32>()
                    .value(row)
                    .to_string(),
                secs: time.value(row) / 1_000_000,
                category: batch
                    .column(idx::CATEGORY)
                    .as_string::<i32>()
                    .value(row)
                    .to_string(),
                amt: f64_col(idx::AMT).value(row),
                lat: f64_col(idx::LAT).value(row),
                long: f64_col(idx::LONG).value(row),
                merch_lat: f64_col(idx::MERCH_LAT).value(row),
                merch_long: f64_col(idx::MERCH_LONG).value(row),
                city_pop: batch
                    .column(idx::CITY_POP)
                    .as_primitive::<Int64Type>()
                    .value(row),
                female: batch.column(idx::GENDER).as_string::<i32>().value(row) == "F",
                dob_days: i64::from(
                    batch
                        .column(idx::DOB)
                        .as_primitive::<Date32Type>()
                        .value(row),
                ),
            });
    }
    for rows in cards.values_mut() {
        rows.sort_by_key(|r| (r.secs, r.row_id));
    }
    cards
}

#[tokio::test]
async fn sql_features_equal_a_plain_rust_reference() {
    let path = common::repo_root().join("data/fixtures/sparkov-2019h1-head3000.csv");
    let input = common::concat(&risksense_formats::source::read_all(&path).expect("fixture"));
    let cards = rows_by_card(&input);
    let mut busiest: Vec<(&i64, &Vec<Row>)> = cards.iter().collect();
    busiest.sort_by_key(|(card, rows)| (std::cmp::Reverse(rows.len()), **card));
    let chosen: Vec<i64> = busiest.iter().take(3).map(|(c, _)| **c).collect();
    assert!(
        busiest[0].1.len() >= 10,
        "the fixture has a card with history"
    );

    let ctx = scoring::new_session(None, SessionOptions::default()).expect("session");
    scoring::register_files(&ctx, scoring::TRANSACTIONS, &[path])
        .await
        .expect("table");
    scoring::install_views(&ctx, None).await.expect("views");
    let list = chosen
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let batches = ctx
        .sql(&format!("SELECT * FROM features WHERE cc_num IN ({list})"))
        .await
        .expect("plans")
        .collect()
        .await
        .expect("runs");
    let schema = batches[0].schema();
    let features = arrow::compute::concat_batches(&schema, &batches).expect("concat");
    assert_eq!(features.num_columns() - ID_COLUMNS, 30);
    let mut checked = 0;
    for row in 0..features.num_rows() {
        let card = features
            .column_by_name("cc_num")
            .expect("cc_num")
            .as_primitive::<Int64Type>()
            .value(row);
        let trans_num = features
            .column_by_name("trans_num")
            .expect("trans_num")
            .as_string::<i32>()
            .value(row);
        let rows = &cards[&card];
        let i = rows
            .iter()
            .position(|r| r.trans_num == trans_num)
            .expect("row of the card");
        let expected = reference(rows, i);
        for c in ID_COLUMNS..features.num_columns() {
            let name = schema.field(c).name().as_str();
            let column = features.column(c);
            assert!(!column.is_null(row), "{name} is null for {trans_num}");
            let got = column.as_primitive::<Float64Type>().value(row);
            let want = expected[name];
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{name} of {trans_num}: SQL {got}, Rust {want}"
            );
        }
        checked += 1;
    }
    assert_eq!(
        checked,
        chosen.iter().map(|c| cards[c].len()).sum::<usize>()
    );
}
