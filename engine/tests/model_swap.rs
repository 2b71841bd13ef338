//! Models changed while the stream runs, against the real broker and Redis
//! (`scripts/services.sh up`): a champion swap mid-stream scores every row exactly once
//! with exactly one model id and keeps stream/batch parity on both sides of the swap; a
//! model that does not fit is refused while the stream goes on; the challenger's shadow
//! scores land in the archive and never raise alerts.

mod common;

use common::{produce, runtime};

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Float64Type, TimestampMicrosecondType};
use risksense_common::schema::idx;
use risksense_engine::stream::{RunOptions, StreamConfig, StreamMetrics, run_stream};
use risksense_query::scoring;
use risksense_store::{Retention, Store};
use risksense_synth::{Generator, SynthConfig};
use risksense_udfs::{Model, ModelControl, ModelHandle, ModelRegistry, SessionOptions, Slot};

/// The test registry (see `risksense_testkit::test_registry`): `a`, `b` (its graph with
/// 0.6× the threshold: more anomalies, so the flags show which model scored), `renamed`
/// (does not fit) and `trees`.
fn registry(root: &Path) -> ModelRegistry {
    risksense_testkit::test_registry(&common::repo_root().join("models"), root, 0.6);
    ModelRegistry::new(root)
}

fn load(root: &Path, name: &str) -> Arc<Model> {
    Arc::new(Model::load_any(&root.join(name), SessionOptions::default()).expect("loads"))
}

/// The batch path: the same SQL over all of `rows` at once, with `champion` and `trees`
/// as challenger. trans_num → (score, flag, challenger score, challenger flag).
fn batch_scored(
    runtime: &tokio::runtime::Runtime,
    champion: Arc<Model>,
    trees: Arc<Model>,
    rows: &RecordBatch,
) -> HashMap<String, (f64, bool, f64, bool)> {
    let handle = Arc::new(ModelHandle::new(champion.clone()));
    handle.set_challenger(Some(trees)).expect("fits");
    let batches = runtime.block_on(async {
        let ctx =
            scoring::new_session_with_handle(Some(handle), Default::default()).expect("session");
        scoring::register_batches(
            &ctx,
            scoring::TRANSACTIONS,
            risksense_common::schema::transaction_schema(),
            vec![rows.clone()],
        )
        .expect("table");
        scoring::install_views(&ctx, Some(&champion))
            .await
            .expect("views");
        ctx.sql("SELECT * FROM scored")
            .await
            .expect("sql")
            .collect()
            .await
            .expect("scored")
    });
    scored_rows(&batches)
        .into_iter()
        .map(|(t, r)| (t, (r.score, r.flag, r.shadow_score, r.shadow_flag)))
        .collect()
}

struct Row {
    score: f64,
    flag: bool,
    model_id: String,
    shadow_id: String,
    shadow_score: f64,
    shadow_flag: bool,
}

fn scored_rows(batches: &[RecordBatch]) -> HashMap<String, Row> {
    let mut out = HashMap::new();
    for batch in batches {
        let column = |name: &str| batch.column_by_name(name).expect(name).clone();
        let trans_num = column("trans_num");
        let trans_num = trans_num.as_string::<i32>();
        let (score, flag) = (column("score"), column("is_anomaly"));
        let (model_id, shadow_id) = (column("model_id"), column("challenger_id"));
        let (shadow_score, shadow_flag) = (column("challenger_score"), column("challenger_flag"));
        for i in 0..batch.num_rows() {
            assert!(
                model_id.is_valid(i) && shadow_score.is_valid(i),
                "null ids or shadow scores"
            );
            let row = Row {
                score: score.as_primitive::<Float64Type>().value(i),
                flag: score.is_valid(i) && flag.as_boolean().value(i),
                model_id: model_id.as_string::<i32>().value(i).to_string(),
                shadow_id: shadow_id.as_string::<i32>().value(i).to_string(),
                shadow_score: shadow_score.as_primitive::<Float64Type>().value(i),
                shadow_flag: shadow_flag.as_boolean().value(i),
            };
            let previous = out.insert(trans_num.value(i).to_string(), row);
            assert!(previous.is_none(), "{} scored twice", trans_num.value(i));
        }
    }
    out
}

#[test]
fn a_champion_swap_mid_stream_scores_each_row_once_with_one_model_and_keeps_parity() {
    let url = common::redis_url();
    let runtime = runtime();
    let config = SynthConfig::new(120, "2019-01-01", "2019-02-28", 17).expect("config");
    let batches: Vec<RecordBatch> = Generator::new(config)
        .collect::<Result<_, _>>()
        .expect("generated");
    let rows = common::concat(&batches);
    // Before and after 1 February: a card's later rows come after the swap.
    let split = risksense_common::time::parse_timestamp_micros("2019-02-01 00:00:00").expect("t");
    let times = rows
        .column(idx::TRANS_DATE_TRANS_TIME)
        .as_primitive::<TimestampMicrosecondType>();
    let before: arrow::array::BooleanArray = times.iter().map(|t| t.map(|t| t < split)).collect();
    let after = arrow::compute::not(&before).expect("not");
    let (first, second) = (
        filter_record_batch(&rows, &before).expect("first"),
        filter_record_batch(&rows, &after).expect("second"),
    );
    assert!(
        first.num_rows() > 3000 && second.num_rows() > 3000,
        "{} / {}",
        first.num_rows(),
        second.num_rows()
    );

    let root = risksense_testkit::Scratch::new("risksense-model-swap");
    let models = root.join("models");
    let registry = registry(&models);
    let (a, trees) = (load(&models, "a"), load(&models, "trees"));
    let control = Arc::new(
        ModelControl::new(
            a.clone(),
            Some(trees.clone()),
            Some(registry),
            SessionOptions::default(),
        )
        .expect("control"),
    );
    let topic = common::unique_topic("swap");
    produce(&runtime, &topic, 4, &first);
    let archive = root.join("archive");
    let config = StreamConfig {
        brokers: common::kafka_brokers(),
        topic: topic.clone(),
        group: format!("{topic}-group"),
        alerts_topic: format!("{topic}.alerts"),
        dead_letter_topic: format!("{topic}.dlq"),
        archive: archive.clone(),
        checkpoint_interval_ms: 1000,
        batch_rows: 500,
        retention: Retention {
            prefix: topic.clone(),
            ..Retention::default()
        },
        ..StreamConfig::default()
    };
    let store = runtime
        .block_on(Store::redis(&url, config.retention.clone()))
        .expect("redis");
    let metrics = Arc::new(StreamMetrics::default());
    let engine = {
        let (config, store, metrics, control) = (
            config.clone(),
            store.clone(),
            metrics.clone(),
            control.clone(),
        );
        // The stream's own instances of the models, as `risksense run` loads them.
        let (champion, challenger) = (load(&models, "a"), load(&models, "trees"));
        std::thread::spawn(move || {
            let runtime = self::runtime();
            run_stream(
                config,
                champion,
                store,
                runtime.handle(),
                Arc::new(AtomicBool::new(false)),
                metrics,
                RunOptions {
                    create_topics: true,
                    stop_when_idle: Some(Duration::from_secs(6)),
                    models: Some(control),
                    challenger: Some(challenger),
                    ..RunOptions::default()
                },
            )
        })
    };
    let started = std::time::Instant::now();
    while StreamMetrics::get(&metrics.rows_scored) < first.num_rows() as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(90) && !engine.is_finished(),
            "the stream scored {} of {} rows",
            StreamMetrics::get(&metrics.rows_scored),
            first.num_rows()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // A model that does not fit is refused while the stream runs; then the swap to b.
    let refused = runtime
        .block_on(control.change(Slot::Champion, Some("renamed")))
        .expect_err("other features");
    assert!(refused.to_string().contains("log_amount"), "{refused}");
    let changed = runtime
        .block_on(control.change(Slot::Champion, Some("b")))
        .expect("swapped between micro-batches");
    let b_id = changed.current.clone().expect("b's id");
    assert_eq!(changed.previous.as_deref(), Some(a.id.as_str()));
    produce(&runtime, &topic, 4, &second);
    let summary = loop {
        if engine.is_finished() {
            break engine.join().expect("engine thread").expect("stream ran");
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the stream is stuck"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(summary.rows_scored, rows.num_rows() as u64);

    // The archive: every row exactly once, by a's id before the swap and b's after; the
    // trees' shadow score on every row.
    let archived = scored_rows(&common::read_parquet(&common::parquet_files(&archive)));
    assert_eq!(
        archived.len(),
        rows.num_rows(),
        "every row archived exactly once"
    );
    let first_ids: HashSet<String> = (0..first.num_rows())
        .map(|i| {
            first
                .column(idx::TRANS_NUM)
                .as_string::<i32>()
                .value(i)
                .to_string()
        })
        .collect();
    for (trans_num, row) in &archived {
        let expected = if first_ids.contains(trans_num) {
            &a.id
        } else {
            &b_id
        };
        assert_eq!(&row.model_id, expected, "{trans_num}");
        assert_eq!(row.shadow_id, trees.id, "{trans_num}");
    }

    // Parity on both sides of the swap: the batch path over all rows (each card's whole
    // history) with the model that scored the row.
    let b = load(&models, "b");
    let with_a = batch_scored(&runtime, a.clone(), trees.clone(), &rows);
    let with_b = batch_scored(&runtime, b.clone(), trees.clone(), &rows);
    let mut worst = 0.0f64;
    for (trans_num, row) in &archived {
        let batch = if first_ids.contains(trans_num) {
            &with_a
        } else {
            &with_b
        };
        let (score, flag, shadow, shadow_flag) = batch[trans_num];
        worst = worst
            .max((row.score - score).abs())
            .max((row.shadow_score - shadow).abs());
        assert!(
            (row.score - score).abs() <= 1e-6,
            "{trans_num}: {} vs {score}",
            row.score
        );
        assert!(
            (row.shadow_score - shadow).abs() <= 1e-6,
            "{trans_num}: shadow"
        );
        assert_eq!(
            (row.flag, row.shadow_flag),
            (flag, shadow_flag),
            "{trans_num}"
        );
    }
    eprintln!("parity across the swap: largest difference {worst:e}");
    // b flags more than a would have on the same rows: the flags are b's.
    let second_rows: Vec<&String> = archived
        .keys()
        .filter(|t| !first_ids.contains(*t))
        .collect();
    let flagged_by = |scores: &HashMap<String, (f64, bool, f64, bool)>| {
        second_rows.iter().filter(|t| scores[**t].1).count()
    };
    assert!(
        flagged_by(&with_b) > flagged_by(&with_a),
        "b's lower threshold flags more"
    );

    // Alerts come from the champion only: as many as its anomalies, each with its id.
    let anomalies = archived.values().filter(|r| r.flag).count();
    let shadow_only = archived
        .values()
        .filter(|r| r.shadow_flag && !r.flag)
        .count();
    assert!(
        shadow_only > 0,
        "the trees flag rows the autoencoder does not"
    );
    assert_eq!(summary.anomalies as usize, anomalies);
    let alerts = common::read_raw(
        &config.brokers,
        &config.alerts_topic,
        anomalies,
        Duration::from_secs(1),
        Duration::from_secs(30),
    );
    assert_eq!(alerts.len(), anomalies);
    for alert in &alerts {
        let alert: serde_json::Value = serde_json::from_slice(&alert.payload).expect("json");
        let trans_num = alert["trans_num"].as_str().expect("trans_num");
        assert_eq!(
            alert["model_id"].as_str(),
            Some(archived[trans_num].model_id.as_str())
        );
    }

    // Redis: each record names its model.
    for trans_num in archived.keys().step_by(97) {
        let stored = runtime
            .block_on(store.transaction(trans_num))
            .expect("lookup")
            .expect("stored");
        assert_eq!(
            stored.model_id.as_deref(),
            Some(archived[trans_num].model_id.as_str())
        );
    }

    // Metrics: rows per model and slot.
    let counts: HashMap<(String, String), (u64, u64)> = metrics
        .models
        .snapshot()
        .into_iter()
        .map(|(slot, model, rows, flagged)| ((slot, model), (rows, flagged)))
        .collect();
    let count = |slot: &str, id: &str| counts.get(&(slot.to_string(), id.to_string())).copied();
    assert_eq!(
        count("champion", &a.id).map(|c| c.0),
        Some(first.num_rows() as u64)
    );
    assert_eq!(
        count("champion", &b_id).map(|c| c.0),
        Some(second.num_rows() as u64)
    );
    assert_eq!(
        count("challenger", &trees.id),
        Some((
            rows.num_rows() as u64,
            archived.values().filter(|r| r.shadow_flag).count() as u64
        ))
    );
}
