//! Label feedback against the real broker and Redis (`scripts/services.sh up`): labels
//! join the scored rows and move the live precision and recall per model (champion and
//! shadow challenger) exactly as the archive's flags say they should; a label that comes
//! before its transaction waits for the score; repeats count once; bad label messages go
//! to the dead-letter topic; every label is in Redis and in the labels table.

mod common;

use common::runtime;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use risksense_common::metrics::{Confusion, StreamMetrics};
use risksense_common::schema::idx;
use risksense_connectors::kafka::{
    KafkaSettings, LabelReplayer, Pace, ReplayProducer, ensure_topic,
};
use risksense_engine::labels::{labels_dir, run_labels};
use risksense_engine::stream::{RunOptions, StreamConfig, run_stream};
use risksense_store::{Retention, Store};
use risksense_synth::{Generator, SynthConfig};
use risksense_udfs::{Model, SessionOptions};

fn model(name: &str) -> Arc<Model> {
    let dir = common::repo_root().join("models").join(name);
    Arc::new(Model::load_any(&dir, SessionOptions::default()).expect("model"))
}

fn wait_for(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn labels_join_the_scores_and_move_live_precision_and_recall_per_model() {
    let url = common::redis_url();
    let runtime = runtime();
    let config = SynthConfig::new(80, "2019-01-01", "2019-01-31", 23).expect("config");
    let batches: Vec<RecordBatch> = Generator::new(config)
        .collect::<Result<_, _>>()
        .expect("generated");
    let rows = common::concat(&batches);
    let n = rows.num_rows();
    let (early, rest) = (rows.slice(n - 100, 100), rows.slice(0, n - 100));

    let topic = common::unique_topic("labels");
    let scratch = risksense_testkit::Scratch::new("risksense-labels");
    let archive = scratch.join("archive");
    let config = StreamConfig {
        brokers: common::kafka_brokers(),
        topic: topic.clone(),
        group: format!("{topic}-group"),
        alerts_topic: format!("{topic}.alerts"),
        dead_letter_topic: format!("{topic}.dlq"),
        labels_topic: format!("{topic}.labels"),
        archive: archive.clone(),
        checkpoint_interval_ms: 500,
        retention: Retention {
            prefix: topic.clone(),
            ..Retention::default()
        },
        ..StreamConfig::default()
    };
    let settings = KafkaSettings::new(config.brokers.clone());
    for t in [
        &config.topic,
        &config.labels_topic,
        &config.dead_letter_topic,
    ] {
        runtime
            .block_on(ensure_topic(&settings, t, 4))
            .expect("topic");
    }
    let store = runtime
        .block_on(Store::redis(&url, config.retention.clone()))
        .expect("redis");
    let metrics = Arc::new(StreamMetrics::default());
    let shutdown = Arc::new(AtomicBool::new(false));
    let labels = {
        let (config, store, metrics, shutdown) = (
            config.clone(),
            store.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        std::thread::spawn(move || {
            let runtime = self::runtime();
            run_labels(&config, store, runtime.handle(), metrics, shutdown, None)
        })
    };

    // Labels of 100 transactions not produced yet: they wait for their scores.
    let mut replay = LabelReplayer::new(&settings, &config.labels_topic, Duration::ZERO)
        .expect("labels producer");
    replay.schedule(&early).expect("early labels");
    replay.finish(true, Duration::from_secs(30)).expect("sent");
    wait_for("the early labels", Duration::from_secs(60), || {
        StreamMetrics::get(&metrics.labels.new) == 100
            && StreamMetrics::get(&metrics.labels.pending) == 100
    });
    assert!(metrics.labels.snapshot().is_empty(), "nothing scored yet");

    // The transactions, scored by the champion with the trees shadowing it.
    let mut producer =
        ReplayProducer::new(&settings, &config.topic, Pace::Unlimited).expect("producer");
    producer.send_batch(&rest).expect("send");
    producer.send_batch(&early).expect("send");
    producer.finish(Duration::from_secs(60)).expect("delivered");
    let engine = {
        let (config, store, metrics, shutdown) = (
            config.clone(),
            store.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        std::thread::spawn(move || {
            let runtime = self::runtime();
            run_stream(
                config,
                model("default"),
                store,
                runtime.handle(),
                shutdown,
                metrics,
                RunOptions {
                    create_topics: true,
                    challenger: Some(model("trees")),
                    // Its flags raise alerts beside the champion's (score.sql's rule): the
                    // champion's live figures count the alerts.
                    supervised: Some(model("trees")),
                    ..RunOptions::default()
                },
            )
        })
    };
    wait_for("the stream", Duration::from_secs(120), || {
        StreamMetrics::get(&metrics.rows_scored) == n as u64
    });
    wait_for("the early labels to join", Duration::from_secs(60), || {
        StreamMetrics::get(&metrics.labels.pending) == 0
    });

    // The other labels, then all of them again (a replay), and two bad messages.
    let mut replay = LabelReplayer::new(&settings, &config.labels_topic, Duration::ZERO)
        .expect("labels producer");
    replay.schedule(&rest).expect("labels");
    replay.schedule(&rows).expect("repeats");
    replay.finish(true, Duration::from_secs(60)).expect("sent");
    {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let raw: BaseProducer = settings.client_config(&[]).create().expect("producer");
        for payload in [r#"{"trans_num": "x", "is_fraud": 7}"#, "not json"] {
            raw.send(BaseRecord::<(), str>::to(&config.labels_topic).payload(payload))
                .expect("queued");
        }
        raw.flush(Duration::from_secs(10)).expect("flushed");
    }
    wait_for("every label", Duration::from_secs(90), || {
        StreamMetrics::get(&metrics.labels.received) == (100 + (n - 100) + n + 2) as u64
            && StreamMetrics::get(&metrics.labels.pending) == 0
    });
    assert_eq!(
        StreamMetrics::get(&metrics.labels.new),
        n as u64,
        "repeats count once"
    );
    assert_eq!(StreamMetrics::get(&metrics.labels.rejected), 2);
    assert_eq!(StreamMetrics::get(&metrics.labels.unmatched), 0);
    shutdown.store(true, Ordering::Relaxed);
    engine.join().expect("engine").expect("stream ran");
    let summary = labels.join().expect("labels thread").expect("labels ran");
    assert!(summary.files >= 1, "{summary:?}");

    // The live figures are what the archive's flags and the labels say.
    let archived = common::read_parquet(&common::parquet_files(&archive));
    let mut expected: HashMap<(&str, String), Confusion> = HashMap::new();
    let mut count = |slot: &'static str, model: String, flagged: bool, fraud: bool| {
        let c = expected.entry((slot, model)).or_default();
        match (flagged, fraud) {
            (true, true) => c.true_positives += 1,
            (true, false) => c.false_positives += 1,
            (false, true) => c.false_negatives += 1,
            (false, false) => c.true_negatives += 1,
        }
    };
    let mut archived_rows = 0;
    let trees_id = model("trees").id.clone();
    for batch in &archived {
        let column = |name: &str| batch.column_by_name(name).expect(name).clone();
        let (fraud, flag, shadow_flag) = (
            column("is_fraud"),
            column("is_anomaly"),
            column("challenger_flag"),
        );
        let (model_id, shadow_id) = (column("model_id"), column("challenger_id"));
        let (anomaly_flag, fraud_flag, supervised_id) = (
            column("anomaly_flag"),
            column("fraud_flag"),
            column("supervised_id"),
        );
        for i in 0..batch.num_rows() {
            let is_fraud = fraud.as_primitive::<arrow::datatypes::Int32Type>().value(i) == 1;
            assert_eq!(
                flag.as_boolean().value(i),
                anomaly_flag.as_boolean().value(i) || fraud_flag.as_boolean().value(i),
                "an alert is either model's flag"
            );
            assert_eq!(
                supervised_id.as_string::<i32>().value(i),
                trees_id,
                "the supervised model's id on every row"
            );
            count(
                "champion",
                model_id.as_string::<i32>().value(i).to_string(),
                flag.as_boolean().value(i),
                is_fraud,
            );
            count(
                "challenger",
                shadow_id.as_string::<i32>().value(i).to_string(),
                shadow_flag.as_boolean().value(i),
                is_fraud,
            );
            archived_rows += 1;
        }
    }
    assert_eq!(archived_rows, n);
    let live: HashMap<(&str, String), Confusion> = metrics
        .labels
        .snapshot()
        .into_iter()
        .map(|(slot, model, c)| {
            (
                if slot == "champion" {
                    ("champion", model)
                } else {
                    ("challenger", model)
                },
                c,
            )
        })
        .collect();
    assert_eq!(live, expected);
    let champion = &live[&("champion", model("default").id.clone())];
    let challenger = &live[&("challenger", model("trees").id.clone())];
    assert!(
        champion.true_positives + champion.false_negatives > 0,
        "the month has frauds"
    );
    assert!(champion.recall().is_some() && challenger.precision().is_some());
    eprintln!(
        "live: champion precision {:?} recall {:?}; challenger precision {:?} recall {:?}",
        champion.precision(),
        champion.recall(),
        challenger.precision(),
        challenger.recall()
    );

    // Every label in Redis, as the transactions say.
    let trans_nums: Vec<String> = (0..n)
        .map(|i| {
            rows.column(idx::TRANS_NUM)
                .as_string::<i32>()
                .value(i)
                .to_string()
        })
        .collect();
    let frauds = rows
        .column(idx::IS_FRAUD)
        .as_primitive::<arrow::datatypes::Int32Type>();
    let stored = runtime.block_on(store.labels(&trans_nums)).expect("labels");
    for (i, label) in stored.iter().enumerate() {
        let label = label
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no label", trans_nums[i]));
        assert_eq!(label.is_fraud, frauds.value(i) == 1);
    }

    // The labels table beside the archive: every trans_num (repeats possible, not missing).
    let table = common::read_parquet(&common::parquet_files(&labels_dir(&archive)));
    let mut tabled: HashSet<String> = HashSet::new();
    for batch in &table {
        let t = batch
            .column_by_name("trans_num")
            .expect("trans_num")
            .as_string::<i32>();
        for i in 0..batch.num_rows() {
            assert!(t.is_valid(i));
            tabled.insert(t.value(i).to_string());
        }
    }
    assert_eq!(tabled, trans_nums.iter().cloned().collect::<HashSet<_>>());

    // The bad label messages are dead letters, with their reason.
    let dead = common::read_raw(
        &config.brokers,
        &config.dead_letter_topic,
        2,
        Duration::from_secs(1),
        Duration::from_secs(30),
    );
    assert_eq!(dead.len(), 2);
    let reasons: Vec<&str> = dead
        .iter()
        .filter_map(|m| m.header(risksense_connectors::sink::ERROR_HEADER))
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("is_fraud must be")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("not a label")),
        "{reasons:?}"
    );
}
