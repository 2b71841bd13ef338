//! The alert rule over a card's recent scores (sql/score.sql, the model card's
//! `card_scores`): each row's `card_score` is the mean of its card's scores over the last
//! 24 hours up to it (this row included), `alert_score` = score + weight × card_score, and
//! the row is an anomaly when that reaches the rule's threshold. The batch path and the
//! stream (micro-batches, each card's scores carried in its history) agree; a model
//! without the rule alerts on its row score as before.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
use risksense_udfs::Model;

const WEIGHT: f64 = 1.5;

fn fixture(rows: usize) -> RecordBatch {
    let path = common::repo_root().join("data/fixtures/sparkov-2019h1-head3000.csv");
    let batches = risksense_formats::source::read_all(&path).expect("fixture");
    common::concat(&batches).slice(0, rows)
}

/// The committed default's graph with `rule` as its card's `card_scores` (null: none),
/// so the test does not depend on what the committed card holds.
fn model_with(dir: &std::path::Path, rule: serde_json::Value) -> Arc<Model> {
    let default = common::repo_root().join("models/default");
    risksense_testkit::model_variant(&default, dir, "rule", |card| {
        card["card_scores"] = rule;
    });
    Arc::new(Model::load(dir, risksense_udfs::SessionOptions { threads: 1 }).expect("model"))
}

/// One scored row: card, event seconds, row id, score, card score, alert score, flag.
#[derive(Debug, Clone, Copy)]
struct Row {
    card: i64,
    secs: i64,
    row_id: i64,
    score: f64,
    card_score: f64,
    alert_score: f64,
    flag: bool,
}

fn rows_of(batches: &[RecordBatch]) -> HashMap<String, Row> {
    let mut out = HashMap::new();
    for batch in batches {
        let column = |name: &str| batch.column_by_name(name).expect(name).clone();
        let trans_num = column("trans_num");
        let trans_num = trans_num.as_string::<i32>();
        let card = column("cc_num");
        let time = column("trans_date_trans_time");
        let row_id = column("row_id");
        let [score, card_score, alert_score] = ["score", "card_score", "alert_score"].map(&column);
        let flag = column("anomaly_flag");
        for i in 0..batch.num_rows() {
            let float = |c: &Arc<dyn Array>| c.as_primitive::<Float64Type>().value(i);
            out.insert(
                trans_num.value(i).to_string(),
                Row {
                    card: card.as_primitive::<Int64Type>().value(i),
                    secs: time
                        .as_primitive::<TimestampMicrosecondType>()
                        .value(i)
                        .div_euclid(1_000_000),
                    row_id: row_id.as_primitive::<Int64Type>().value(i),
                    score: float(&score),
                    card_score: float(&card_score),
                    alert_score: float(&alert_score),
                    flag: flag.as_boolean().value(i),
                },
            );
        }
    }
    out
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_score_adds_the_cards_recent_scores_in_batch_and_stream_alike() {
    let root = risksense_testkit::Scratch::new("risksense-card-scores");
    let rows = fixture(3000);
    let threshold = 2.4;
    let model = model_with(
        &root.join("rule"),
        serde_json::json!({
            "weight": WEIGHT,
            "threshold": threshold,
            "threshold_rule": "set by the test",
            "validation": null,
        }),
    );
    let batch = rows_of(&common::batch_scored(&model, rows.clone()).await);
    assert_eq!(batch.len(), rows.num_rows());

    // The card's recent scores, computed here from the rows' own scores.
    let mut by_card: HashMap<i64, Vec<Row>> = HashMap::new();
    for row in batch.values() {
        by_card.entry(row.card).or_default().push(*row);
    }
    let (mut with_history, mut flagged_by_history) = (0, 0);
    for card_rows in by_card.values_mut() {
        card_rows.sort_by_key(|r| (r.secs, r.row_id));
        for (i, row) in card_rows.iter().enumerate() {
            let day: Vec<f64> = card_rows[..=i]
                .iter()
                .filter(|r| r.secs >= row.secs - 86_399)
                .map(|r| r.score)
                .collect();
            let mean = day.iter().sum::<f64>() / day.len() as f64;
            assert!(close(row.card_score, mean), "{row:?}: mean {mean}");
            assert!(close(row.alert_score, row.score + WEIGHT * mean), "{row:?}");
            assert_eq!(row.flag, row.alert_score >= threshold, "{row:?}");
            with_history += usize::from(day.len() > 1);
            // Flagged, where its own score alone (its card's mean being itself) was not.
            flagged_by_history += usize::from(row.flag && row.score * (1.0 + WEIGHT) < threshold);
        }
    }
    assert!(
        with_history > 1000,
        "{with_history} rows with earlier rows that day"
    );
    assert!(
        flagged_by_history > 0,
        "no row flagged on its card's scores rather than its own"
    );

    // The stream: micro-batches of 7, each card's scores carried between them.
    let streamed = common::stream_scored(&model, &rows, 7).await;
    let streamed = rows_of(&streamed);
    assert_eq!(streamed.len(), batch.len());
    for (trans_num, s) in &streamed {
        let b = &batch[trans_num];
        assert!(
            close(s.card_score, b.card_score) && close(s.alert_score, b.alert_score),
            "{trans_num}: stream {s:?} vs batch {b:?}"
        );
        assert_eq!(s.flag, b.flag, "{trans_num}");
    }

    // Without the rule: the alert score is the row's score and its threshold applies.
    let plain = model_with(&root.join("plain"), serde_json::Value::Null);
    for row in rows_of(&common::batch_scored(&plain, rows).await).values() {
        assert_eq!(row.alert_score, row.score);
        assert_eq!(row.flag, row.score >= plain.card.threshold, "{row:?}");
    }
}
