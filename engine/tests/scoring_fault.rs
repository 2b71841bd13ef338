//! A fault in scoring validated rows (here: features.sql failing at run time for one
//! merchant, as a broken model session would for every row) stops the stream: nothing is
//! dead-lettered as if it were bad input, and no offset moves past rows never scored.
//! Its own test binary: it points `RISKSENSE_SQL_DIR` at a broken features.sql, which
//! must not reach the other tests' processes.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch, StringArray};
use risksense_common::schema::idx;
use risksense_connectors::kafka::{KafkaSettings, Pace, ReplayProducer, ensure_topic};
use risksense_engine::stream::{RunOptions, StreamConfig, StreamMetrics, run_stream};
use risksense_query::scoring::SQL_DIR_ENV;
use risksense_store::{Retention, Store};
use risksense_synth::{Generator, SynthConfig};
use risksense_udfs::Model;

#[test]
fn a_scoring_fault_stops_the_stream_and_commits_nothing_past_it() {
    let url = common::redis_url();
    // features.sql whose log amount fails to compute for one merchant.
    let sql_dir = risksense_testkit::Scratch::new("broken-sql");
    let features = std::fs::read_to_string(common::repo_root().join("sql/features.sql"))
        .expect("features.sql");
    let broken = features.replace(
        "ln(1.0 + amt) AS log_amt",
        "ln(1.0 + amt) * CAST(CASE WHEN merchant = 'fault' THEN 'x' ELSE '1' END AS DOUBLE) AS log_amt",
    );
    assert_ne!(broken, features, "features.sql changed: update this test");
    std::fs::write(sql_dir.join("features.sql"), broken).expect("write");
    std::fs::copy(
        common::repo_root().join("sql/score.sql"),
        sql_dir.join("score.sql"),
    )
    .expect("score.sql");
    // SAFETY: set before any thread of this test binary reads the environment; the only
    // test here.
    unsafe { std::env::set_var(SQL_DIR_ENV, &*sql_dir) };

    // Valid rows, one of them at the merchant the SQL fails on.
    let config = SynthConfig::new(5, "2019-01-01", "2019-01-10", 21).expect("config");
    let rows: Vec<RecordBatch> = Generator::new(config)
        .collect::<Result<_, _>>()
        .expect("rows");
    let rows = common::concat(&rows);
    let mut merchants: Vec<String> = rows
        .column(idx::MERCHANT)
        .as_string::<i32>()
        .iter()
        .map(|m| m.unwrap_or_default().to_string())
        .collect();
    merchants[rows.num_rows() / 2] = "fault".to_string();
    let mut columns = rows.columns().to_vec();
    columns[idx::MERCHANT] = Arc::new(StringArray::from(merchants));
    let rows = RecordBatch::try_new(rows.schema(), columns).expect("rows");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let topic = common::unique_topic("scoring-fault");
    let settings = KafkaSettings::new(common::kafka_brokers());
    runtime
        .block_on(ensure_topic(&settings, &topic, 1))
        .expect("topic");
    let mut producer = ReplayProducer::new(&settings, &topic, Pace::Unlimited).expect("producer");
    producer.send_batch(&rows).expect("send");
    producer.finish(Duration::from_secs(60)).expect("delivered");

    let config = StreamConfig {
        brokers: common::kafka_brokers(),
        topic: topic.clone(),
        group: format!("{topic}-group"),
        alerts_topic: format!("{topic}.alerts"),
        dead_letter_topic: format!("{topic}.dlq"),
        archive: std::env::temp_dir().join(&topic),
        checkpoint_interval_ms: 500,
        retention: Retention {
            prefix: topic.clone(),
            ..Retention::default()
        },
        ..StreamConfig::default()
    };
    let store = runtime
        .block_on(Store::redis(&url, config.retention.clone()))
        .expect("redis");
    let model = Arc::new(
        Model::load(
            &common::repo_root().join("models/default"),
            risksense_udfs::SessionOptions { threads: 1 },
        )
        .expect("model"),
    );
    let metrics = Arc::new(StreamMetrics::default());
    let result = run_stream(
        config.clone(),
        model,
        store,
        runtime.handle(),
        Arc::new(AtomicBool::new(false)),
        metrics.clone(),
        RunOptions {
            create_topics: true,
            stop_when_idle: Some(Duration::from_secs(3)),
            live: None,
            queries: None,
            ..RunOptions::default()
        },
    );
    let error = result
        .expect_err("a scoring fault stops the stream")
        .to_string();
    assert!(error.contains("failed twice"), "{error}");
    assert!(error.contains("Cannot cast"), "{error}");
    // Nothing went to the dead-letter topic as if the rows were bad input.
    assert_eq!(StreamMetrics::get(&metrics.dead_letters), 0);
    let letters = common::read_raw(
        &config.brokers,
        &config.dead_letter_topic,
        1,
        Duration::from_secs(1),
        Duration::from_secs(5),
    );
    assert!(letters.is_empty(), "{} dead letters", letters.len());
    // No checkpoint moved past the failed rows: a restart reads them again.
    let checkpoint = risksense_store::layout::checkpoint(&topic, &config.group, &topic, 0);
    let offset: Option<i64> = risksense_testkit::Probe::open(&url)
        .query(redis::cmd("HGET").arg(&checkpoint).arg("offset"))
        .expect("hget");
    assert!(
        offset.is_none_or(|o| o <= (rows.num_rows() / 2) as i64),
        "checkpointed at {offset:?}, past the failed row {}",
        rows.num_rows() / 2
    );
}
