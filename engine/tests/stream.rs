//! The streaming engine against the real broker and Redis (`scripts/services.sh up`):
//! end to end, stream/batch parity, dead letters, two instances in one group, a Redis
//! restart mid-stream and a Redis Cluster shard restart mid-stream. (kill -9 of the process
//! is in the binary's tests/stream_recovery.rs.)
//!
//! `RISKSENSE_REDIS_URL` picks the Redis the stream writes to: `scripts/test.sh` runs these
//! once against the single Redis and again against the three-shard cluster.

mod common;

use common::{produce, runtime};

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type};
use risksense_common::schema::idx;
use risksense_connectors::kafka::{KafkaSettings, Pace, ReplayProducer, ensure_topic};
use risksense_engine::stream::pipeline::{ERROR_HEADER, SOURCE_HEADER};
use risksense_engine::stream::{RunOptions, RunSummary, StreamConfig, StreamMetrics, run_stream};
use risksense_store::{Retention, Store};
use risksense_synth::{Generator, SynthConfig};
use risksense_testkit::Probe;
use risksense_udfs::Model;

fn model() -> Arc<Model> {
    let dir = common::repo_root().join("models/default");
    Arc::new(Model::load(&dir, risksense_udfs::SessionOptions { threads: 1 }).expect("model"))
}

fn generate(customers: u32, start: &str, end: &str, seed: u64) -> RecordBatch {
    let config = SynthConfig::new(customers, start, end, seed).expect("config");
    let batches: Vec<RecordBatch> = Generator::new(config)
        .collect::<Result<_, _>>()
        .expect("generated");
    common::concat(&batches)
}

fn scratch(name: &str) -> risksense_testkit::Scratch {
    risksense_testkit::Scratch::new(&format!("risksense-stream-{name}"))
}

/// A config reading `topic`, with its own group, output topics, archive and Redis prefix.
fn config(topic: &str, archive: &Path) -> StreamConfig {
    StreamConfig {
        brokers: common::kafka_brokers(),
        topic: topic.to_string(),
        group: format!("{topic}-group"),
        alerts_topic: format!("{topic}.alerts"),
        dead_letter_topic: format!("{topic}.dlq"),
        archive: archive.to_path_buf(),
        checkpoint_interval_ms: 1000,
        retention: Retention {
            prefix: topic.to_string(),
            ..Retention::default()
        },
        ..StreamConfig::default()
    }
}

fn redis_store(runtime: &tokio::runtime::Runtime, url: &str, config: &StreamConfig) -> Store {
    runtime
        .block_on(Store::redis(url, config.retention.clone()))
        .expect("redis store")
}

/// Runs the engine, which must stop with an error within 90 s (it must not retry `what`
/// forever), and returns the error's text.
fn stream_error(config: StreamConfig, store: Store, what: &str) -> String {
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = self::runtime();
        let result = run_stream(
            config,
            model(),
            store,
            runtime.handle(),
            Arc::new(AtomicBool::new(false)),
            Arc::new(StreamMetrics::default()),
            RunOptions {
                create_topics: true,
                stop_when_idle: Some(Duration::from_secs(3)),
                live: None,
                queries: None,
                ..RunOptions::default()
            },
        );
        let _ = done.send(result.map(|_| ()).map_err(|e| e.to_string()));
    });
    let result = outcome
        .recv_timeout(Duration::from_secs(90))
        .unwrap_or_else(|_| panic!("the stream kept retrying {what}"));
    result.expect_err("the stream must stop with an error")
}

/// Runs the engine until it has been idle for `idle`.
fn run_until_idle(config: StreamConfig, store: Store, idle: Duration) -> RunSummary {
    run_with_metrics(config, store, idle, Arc::new(StreamMetrics::default()))
}

fn run_with_metrics(
    config: StreamConfig,
    store: Store,
    idle: Duration,
    metrics: Arc<StreamMetrics>,
) -> RunSummary {
    let runtime = runtime();
    run_stream(
        config,
        model(),
        store,
        runtime.handle(),
        Arc::new(AtomicBool::new(false)),
        metrics,
        RunOptions {
            create_topics: true,
            stop_when_idle: Some(idle),
            live: None,
            queries: None,
            ..RunOptions::default()
        },
    )
    .expect("stream ran")
}

/// Scores of the batch path (the same SQL over all rows at once): trans_num → (score, flag).
fn batch_scores(rows: &RecordBatch) -> HashMap<String, (f64, bool)> {
    let batches = runtime().block_on(common::batch_scored(&model(), rows.clone()));
    scores_of(&batches)
}

fn scores_of(batches: &[RecordBatch]) -> HashMap<String, (f64, bool)> {
    let mut out = HashMap::new();
    for batch in batches {
        let trans_num = trans_nums_of(batch);
        let score = batch
            .column_by_name("score")
            .expect("score")
            .as_primitive::<Float64Type>();
        let flag = batch
            .column_by_name("is_anomaly")
            .expect("flag")
            .as_boolean();
        for (i, trans_num) in trans_num.into_iter().enumerate() {
            let previous = out.insert(trans_num.clone(), (score.value(i), flag.value(i)));
            assert!(previous.is_none(), "{trans_num} scored twice");
        }
    }
    out
}

/// Each archived row's `row_id` (its partition and offset) by `trans_num`.
fn row_ids_of(batches: &[RecordBatch]) -> HashMap<String, i64> {
    batches
        .iter()
        .flat_map(|batch| {
            let row_ids = batch
                .column_by_name("row_id")
                .expect("row_id")
                .as_primitive::<Int64Type>()
                .clone();
            trans_nums_of(batch)
                .into_iter()
                .enumerate()
                .map(move |(i, trans_num)| (trans_num, row_ids.value(i)))
        })
        .collect()
}

/// A scored batch's `trans_num`s.
fn trans_nums_of(batch: &RecordBatch) -> Vec<String> {
    let column = batch
        .column_by_name("trans_num")
        .expect("trans_num")
        .as_string::<i32>();
    column
        .iter()
        .map(|t| t.unwrap_or_default().to_string())
        .collect()
}

/// Every row of the finished archive files.
fn archive_rows(dir: &Path) -> Vec<RecordBatch> {
    common::read_parquet(&common::parquet_files(dir))
}

fn trans_nums(rows: &RecordBatch) -> Vec<String> {
    let column = rows.column(idx::TRANS_NUM).as_string::<i32>();
    (0..rows.num_rows())
        .map(|i| column.value(i).to_string())
        .collect()
}

/// For each trans_num: whether Redis (one server or a cluster) holds its record.
fn redis_has(url: &str, prefix: &str, trans_nums: &[String]) -> Vec<bool> {
    Probe::open(url).transactions_stored(prefix, Retention::default().ttl_secs, trans_nums)
}

/// trans_nums of the alerts streams (every shard), in the order they were emitted.
fn redis_alerts(url: &str, prefix: &str) -> Vec<String> {
    Probe::open(url).alerts(prefix)
}

/// Anomalies in the index, over every shard.
fn redis_anomalies(url: &str, prefix: &str) -> usize {
    Probe::open(url).anomalies(prefix)
}

/// Asserts that the store answers each card's newest `kept` transactions (by event time,
/// then trans_num) exactly, however the card's rows were spread over micro-batches and
/// write pipelines, and that Redis keeps its list trimmed (it is trimmed now and then, not
/// at every write: by at most the slack and a few batches' worth more).
fn assert_card_lists(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    prefix: &str,
    store: &Store,
    rows: &RecordBatch,
    kept: usize,
) {
    let cards = rows.column(idx::CC_NUM).as_primitive::<Int64Type>();
    let times = rows
        .column(idx::TRANS_DATE_TRANS_TIME)
        .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
    let trans_nums = trans_nums(rows);
    let mut by_card: HashMap<i64, Vec<(i64, String)>> = HashMap::new();
    for (i, trans_num) in trans_nums.into_iter().enumerate() {
        by_card
            .entry(cards.value(i))
            .or_default()
            .push((times.value(i).div_euclid(1_000_000), trans_num));
    }
    let mut probe = Probe::open(url);
    for (card, mut entries) in by_card {
        entries.sort();
        let expected: Vec<String> = entries
            .iter()
            .rev()
            .take(kept)
            .map(|(_, t)| t.clone())
            .collect();
        let answered: Vec<String> = runtime
            .block_on(store.card_transactions(card, kept))
            .expect("card transactions")
            .into_iter()
            .map(|row| row.trans_num)
            .collect();
        assert_eq!(answered, expected, "card {card}");
        let length: usize = probe
            .query(redis::cmd("LLEN").arg(risksense_store::layout::card(prefix, card)))
            .expect("llen");
        assert!(
            entries.len() <= kept || length <= kept * risksense_store::layout::CARD_LIST_SLACK + 64,
            "card {card}: its list holds {length} of {} transactions, never trimmed",
            entries.len()
        );
    }
}

/// Asserts that the stream's scores equal the batch path's within 1e-6, row for row.
fn assert_parity(streamed: &HashMap<String, (f64, bool)>, batch: &HashMap<String, (f64, bool)>) {
    assert_eq!(streamed.len(), batch.len(), "row counts differ");
    let mut worst = 0.0f64;
    for (trans_num, (score, flag)) in batch {
        let (stream_score, stream_flag) = streamed
            .get(trans_num)
            .unwrap_or_else(|| panic!("{trans_num} missing from the stream"));
        let difference = (stream_score - score).abs();
        worst = worst.max(difference);
        assert!(
            difference <= 1e-6,
            "{trans_num}: stream {stream_score} vs batch {score}"
        );
        assert_eq!(stream_flag, flag, "{trans_num}: anomaly flag differs");
    }
    eprintln!("parity: {} rows, largest difference {worst:e}", batch.len());
}

#[test]
fn streams_100k_rows_into_redis_the_alerts_topic_and_the_archive_once_each() {
    let url = common::redis_url();
    let runtime = runtime();
    let rows = generate(300, "2019-01-01", "2019-12-31", 5);
    assert!(rows.num_rows() >= 100_000, "{} rows", rows.num_rows());
    let rows = rows.slice(0, 100_000);
    let topic = common::unique_topic("e2e");
    produce(&runtime, &topic, 4, &rows);
    let archive = scratch("e2e");
    let config = config(&topic, &archive);
    let store = redis_store(&runtime, &url, &config);
    let summary = run_until_idle(config.clone(), store, Duration::from_secs(3));

    assert_eq!(summary.messages, 100_000);
    assert_eq!(summary.rows_scored, 100_000);
    assert_eq!(summary.dead_letters, 0);
    // CPU counted from the first message: some (100,000 rows take a good part of a
    // second), and less than the whole process's (start-up is left out).
    assert!(
        summary.drain_cpu_secs > 0.0 && summary.drain_cpu_secs < summary.cpu_secs,
        "drain {} s, whole process {} s",
        summary.drain_cpu_secs,
        summary.cpu_secs
    );
    assert!(summary.drain_system_cpu_secs <= summary.drain_cpu_secs);
    assert!(summary.anomalies > 100, "{} anomalies", summary.anomalies);

    // Redis: every transaction, each anomaly indexed and alerted once.
    let expected = trans_nums(&rows);
    let found = redis_has(&url, &topic, &expected);
    assert_eq!(found.iter().filter(|f| **f).count(), 100_000);
    assert_eq!(redis_anomalies(&url, &topic) as u64, summary.anomalies);
    let alerts = redis_alerts(&url, &topic);
    assert_eq!(alerts.len() as u64, summary.anomalies);
    assert_eq!(alerts.iter().collect::<HashSet<_>>().len(), alerts.len());
    // Each card's list: its newest transactions, trimmed to the retention.
    let store = redis_store(&runtime, &url, &config);
    assert_card_lists(
        &runtime,
        &url,
        &topic,
        &store,
        &rows,
        config.retention.card_history,
    );

    // Archive: every row exactly once, with the same scores Redis got.
    let archived = scores_of(&archive_rows(&archive));
    assert_eq!(archived.len(), 100_000);
    let flagged: HashSet<&String> = archived
        .iter()
        .filter(|(_, (_, f))| *f)
        .map(|(t, _)| t)
        .collect();
    assert_eq!(flagged.len() as u64, summary.anomalies);

    // Alerts topic: each anomaly as JSON, keyed by card.
    let messages = common::read_raw(
        &config.brokers,
        &config.alerts_topic,
        summary.anomalies as usize,
        Duration::from_secs(1),
        Duration::from_secs(30),
    );
    assert_eq!(messages.len() as u64, summary.anomalies);
    for message in &messages {
        let alert: risksense_store::Alert =
            serde_json::from_slice(&message.payload).expect("alert JSON");
        assert!(
            flagged.contains(&alert.trans_num),
            "{} alerted but not flagged",
            alert.trans_num
        );
        assert_eq!(
            message.key.as_deref(),
            Some(alert.cc_num.to_string().as_bytes())
        );
        assert!(alert.explanation.is_some());
    }
}

#[test]
fn streaming_a_file_gives_the_scores_rescoring_gives() {
    let url = common::redis_url();
    let runtime = runtime();
    // Several months so the cards' 24 h and 30-row windows cross many micro-batches.
    let rows = generate(120, "2019-01-01", "2019-06-30", 21);
    let topic = common::unique_topic("parity");
    produce(&runtime, &topic, 3, &rows);
    let archive = scratch("parity");
    let config = StreamConfig {
        // Small micro-batches: every card's history spans many of them.
        batch_rows: 500,
        ..config(&topic, &archive)
    };
    let store = redis_store(&runtime, &url, &config);
    let summary = run_until_idle(config, store, Duration::from_secs(3));
    assert!(summary.batches > 20, "{} batches", summary.batches);
    assert_parity(&scores_of(&archive_rows(&archive)), &batch_scores(&rows));
}

#[test]
fn bad_messages_go_to_the_dead_letter_topic_with_their_reason_and_bytes() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    let url = common::redis_url();
    let runtime = runtime();
    let rows = generate(20, "2019-01-01", "2019-01-31", 3);
    let topic = common::unique_topic("dlq");
    produce(&runtime, &topic, 2, &rows);
    // Then bad ones: not JSON, a missing field, a wrong type, empty.
    let good_json = {
        let encoder = risksense_formats::codec::json::JsonRowEncoder::new(&rows).expect("encoder");
        let mut out = Vec::new();
        encoder.encode_row(0, &mut out);
        String::from_utf8(out).expect("utf8")
    };
    let amount = format!(
        "\"amt\":{}",
        rows.column(idx::AMT).as_primitive::<Float64Type>().value(0)
    );
    assert!(good_json.contains(&amount), "{good_json}");
    let bad: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        good_json.replace(&format!("{amount},"), "").into_bytes(),
        good_json
            .replace(&amount, "\"amt\":\"twelve\"")
            .into_bytes(),
        Vec::new(),
        vec![0xff, 0xfe, 0x00],
    ];
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::kafka_brokers())
        .create()
        .expect("producer");
    for payload in &bad {
        producer
            .send(BaseRecord::to(&topic).key("bad").payload(payload))
            .expect("queued");
    }
    producer.flush(Duration::from_secs(10)).expect("flushed");

    let archive = scratch("dlq");
    let config = config(&topic, &archive);
    let store = redis_store(&runtime, &url, &config);
    let summary = run_until_idle(config.clone(), store, Duration::from_secs(3));
    assert_eq!(summary.messages, rows.num_rows() as u64 + bad.len() as u64);
    assert_eq!(summary.rows_scored, rows.num_rows() as u64);
    assert_eq!(summary.dead_letters, bad.len() as u64);

    let letters = common::read_raw(
        &config.brokers,
        &config.dead_letter_topic,
        bad.len(),
        Duration::from_secs(1),
        Duration::from_secs(30),
    );
    assert_eq!(letters.len(), bad.len());
    for original in &bad {
        let letter = letters
            .iter()
            .find(|l| &l.payload == original)
            .unwrap_or_else(|| {
                panic!(
                    "{:?} not dead-lettered intact",
                    String::from_utf8_lossy(original)
                )
            });
        let header = |name: &str| {
            letter
                .header(name)
                .unwrap_or_else(|| panic!("no {name} header"))
        };
        assert!(!header(ERROR_HEADER).is_empty());
        assert!(header(SOURCE_HEADER).starts_with(&format!("{topic}/")));
        assert_eq!(letter.key.as_deref(), Some(&b"bad"[..]));
    }
    let reasons: Vec<&str> = letters
        .iter()
        .map(|l| l.header(ERROR_HEADER).unwrap_or_default())
        .collect();
    assert!(reasons.iter().any(|r| r.contains("amt")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("empty")), "{reasons:?}");
    // The good rows were all scored into Redis.
    let found = redis_has(&url, &topic, &trans_nums(&rows));
    assert!(found.iter().all(|f| *f));
}

#[test]
fn two_instances_in_one_group_share_the_partitions_and_keep_parity() {
    let url = common::redis_url();
    let runtime = runtime();
    let rows = generate(200, "2019-01-01", "2019-04-30", 8);
    let topic = common::unique_topic("group");
    produce(&runtime, &topic, 4, &rows);
    let archive = scratch("group");
    let base = StreamConfig {
        // Small micro-batches keep the first instance busy long enough for the second to
        // join mid-stream: a real rebalance, with state handed over through checkpoints.
        batch_rows: 250,
        batch_wait_ms: 20,
        ..config(&topic, &archive)
    };
    let mut handles = Vec::new();
    for instance in ["a", "b"] {
        let config = StreamConfig {
            instance: instance.to_string(),
            ..base.clone()
        };
        let store = redis_store(&runtime, &url, &config);
        let metrics = Arc::new(StreamMetrics::default());
        let watched = metrics.clone();
        handles.push(std::thread::spawn(move || {
            run_with_metrics(config, store, Duration::from_secs(6), metrics)
        }));
        // The second joins once the first has scored some rows, long before it is done.
        let started = std::time::Instant::now();
        while StreamMetrics::get(&watched.rows_scored) < 2000
            && started.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let summaries: Vec<RunSummary> = handles
        .into_iter()
        .map(|h| h.join().expect("instance thread"))
        .collect();
    for summary in &summaries {
        assert!(
            summary.rows_scored > 0,
            "an instance got no work: {summaries:?}"
        );
    }
    let archived = scores_of(&archive_rows(&archive));
    assert_eq!(
        archived.len(),
        rows.num_rows(),
        "every row archived exactly once"
    );
    // State followed the partitions through the rebalance: parity still holds.
    assert_parity(&archived, &batch_scores(&rows));
    let found = redis_has(&url, &topic, &trans_nums(&rows));
    assert!(found.iter().all(|f| *f));
}

/// Runs the engine on `topic` in a thread, in micro-batches small enough that it is still
/// running when a test takes Redis away; returns its handle and its metrics.
fn start_in_small_batches(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    topic: &str,
    archive: &Path,
) -> (std::thread::JoinHandle<RunSummary>, Arc<StreamMetrics>) {
    let config = StreamConfig {
        batch_rows: 200,
        batch_wait_ms: 20,
        ..config(topic, archive)
    };
    let store = redis_store(runtime, url, &config);
    let metrics = Arc::new(StreamMetrics::default());
    let watched = metrics.clone();
    let engine = std::thread::spawn(move || {
        run_with_metrics(config, store, Duration::from_secs(8), metrics)
    });
    (engine, watched)
}

/// The engine's summary once its thread ends, failing the test (instead of hanging the
/// suite) when it has not ended within `limit`.
fn join_within(
    engine: std::thread::JoinHandle<RunSummary>,
    limit: Duration,
    when: &str,
) -> RunSummary {
    let started = std::time::Instant::now();
    while !engine.is_finished() {
        assert!(
            started.elapsed() < limit,
            "the stream did not finish within {limit:?} {when}: it is stuck"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    engine.join().expect("engine thread")
}

/// Waits (at most 60 s) until the engine has scored `rows`; returns how many it has.
fn wait_until_scored(metrics: &StreamMetrics, rows: u64) -> u64 {
    let started = std::time::Instant::now();
    while StreamMetrics::get(&metrics.rows_scored) < rows
        && started.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let scored = StreamMetrics::get(&metrics.rows_scored);
    assert!(
        scored >= rows,
        "the stream never got going ({scored} rows scored)"
    );
    scored
}

/// A Redis server of this test's own, so it can be killed and restarted.
struct PrivateRedis {
    port: u16,
    child: std::process::Child,
}

impl PrivateRedis {
    fn start(port: u16, dir: &Path) -> Self {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--dir",
                &dir.display().to_string(),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect(
                "redis-server runs (Debian's redis-server package; scripts/services.sh install)",
            );
        let redis = Self { port, child };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("private redis-server did not start on port {port}");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn redis_restarting_mid_stream_pauses_the_stream_and_loses_nothing() {
    common::capture_logs();
    let _ = common::redis_url(); // Redis must be installed and running for this suite.
    let runtime = runtime();
    let rows = generate(100, "2019-01-01", "2019-03-31", 13);
    let topic = common::unique_topic("redis-restart");
    produce(&runtime, &topic, 2, &rows);
    let archive = scratch("redis-restart");
    let data = scratch("redis-restart-data");
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    let mut redis = PrivateRedis::start(port, &data);
    let url = redis.url();
    let (engine, watched) = start_in_small_batches(&runtime, &url, &topic, &archive);

    // Wait until results are arriving, then take Redis away for two seconds.
    let scored = wait_until_scored(&watched, 2000);
    assert!(
        scored >= 2000 && scored < rows.num_rows() as u64,
        "not mid-stream: {scored} of {} rows scored",
        rows.num_rows()
    );
    redis.kill();
    std::thread::sleep(Duration::from_secs(2));
    let redis = PrivateRedis::start(port, &data);

    let summary = engine.join().expect("engine thread");
    assert_eq!(summary.messages, rows.num_rows() as u64);
    assert!(
        summary.sink_retries > 0,
        "the outage never reached the sinks"
    );
    let found = redis_has(&redis.url(), &topic, &trans_nums(&rows));
    let missing = found.iter().filter(|f| !**f).count();
    assert_eq!(
        missing, 0,
        "{missing} transactions missing after the restart"
    );
    let alerts = redis_alerts(&redis.url(), &topic);
    assert_eq!(
        alerts.iter().collect::<HashSet<_>>().len(),
        alerts.len(),
        "an alert twice"
    );
    let archived = scores_of(&archive_rows(&archive));
    assert_eq!(archived.len(), rows.num_rows());
}

/// One shard of the three-shard test cluster (`scripts/services.sh up`) is stopped and
/// started again while transactions are still arriving: the cluster client follows it
/// back, and nothing is lost or alerted twice (every write is idempotent, so the retries
/// of a batch the shard half took change nothing).
#[test]
fn a_cluster_shard_restarting_mid_stream_loses_nothing_and_alerts_once() {
    common::capture_logs();
    let url = risksense_testkit::redis_cluster_url();
    let runtime = runtime();
    let rows = generate(100, "2019-01-01", "2019-03-31", 14);
    let topic = common::unique_topic("cluster-restart");
    let settings = KafkaSettings::new(common::kafka_brokers());
    runtime
        .block_on(ensure_topic(&settings, &topic, 2))
        .expect("topic");
    // Paced, so that transactions are still arriving while the shard is away.
    let rate = (rows.num_rows() as u64 / 6).max(1000);
    let producer = {
        let (topic, rows) = (topic.clone(), rows.clone());
        std::thread::spawn(move || {
            let mut producer =
                ReplayProducer::new(&settings, &topic, Pace::PerSecond(rate)).expect("producer");
            producer.send_batch(&rows).expect("send");
            producer.finish(Duration::from_secs(60)).expect("delivered");
        })
    };
    let archive = scratch("cluster-restart");
    let (engine, watched) = start_in_small_batches(&runtime, &url, &topic, &archive);
    wait_until_scored(&watched, 2000);
    let addresses = risksense_testkit::addresses(&url);
    // Any shard will do: the last node named.
    let port = addresses
        .last()
        .and_then(|address| address.rsplit(':').next())
        .expect("a node's port");
    let restart = std::process::Command::new(common::repo_root().join("scripts/services.sh"))
        .args(["redis-cluster-restart-node", port])
        .output()
        .expect("scripts/services.sh runs");
    assert!(
        restart.status.success(),
        "restarting the shard on {port}: {}",
        String::from_utf8_lossy(&restart.stderr)
    );
    let scored_at_restart = StreamMetrics::get(&watched.rows_scored);
    assert!(
        scored_at_restart < rows.num_rows() as u64,
        "the stream had finished before the shard came back: not mid-stream"
    );
    producer.join().expect("producer thread");

    // Not asserted: that a sink retried. The cluster client retries by itself (up to
    // four times within a second or so), so a short outage may never reach the sinks;
    // a longer one does (CLUSTERDOWN while the node rejoins).
    let summary = join_within(engine, Duration::from_secs(180), "after the shard restart");
    assert_eq!(summary.messages, rows.num_rows() as u64);
    assert_eq!(summary.rows_scored, rows.num_rows() as u64);
    let found = redis_has(&url, &topic, &trans_nums(&rows));
    let missing = found.iter().filter(|f| !**f).count();
    assert_eq!(
        missing, 0,
        "{missing} transactions missing after the restart"
    );
    let archived = scores_of(&archive_rows(&archive));
    assert_eq!(archived.len(), rows.num_rows());
    let flagged: HashSet<String> = archived
        .iter()
        .filter(|(_, (_, f))| *f)
        .map(|(t, _)| t.clone())
        .collect();
    let alerts = redis_alerts(&url, &topic);
    assert_eq!(
        alerts.iter().collect::<HashSet<_>>().len(),
        alerts.len(),
        "an alert twice"
    );
    assert_eq!(
        alerts.into_iter().collect::<HashSet<_>>(),
        flagged,
        "every anomaly alerted, nothing else"
    );
    assert_eq!(redis_anomalies(&url, &topic), flagged.len());
}

/// The scenario on the real broker: one card's stream holds an amount of 1e308, a
/// latitude of 999, a 100 KiB message and a repeat of an earlier transaction among its
/// valid rows. Each bad one is dead-lettered with its reason (the oversized one with its
/// bytes intact), the repeat too (the first copy wins), and the card's valid rows are
/// scored exactly as the batch path scores them without the bad ones: finite, and with
/// the repeat counted once in the card's windows and once in the archive.
#[test]
fn bad_values_and_repeats_never_reach_a_cards_state() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    let url = common::redis_url();
    let runtime = runtime();
    let rows = generate(10, "2019-01-01", "2019-02-28", 29);
    let cards = rows.column(idx::CC_NUM).as_primitive::<Int64Type>();
    let card = cards.value(0);
    let mask: arrow::array::BooleanArray = cards.iter().map(|c| Some(c != Some(card))).collect();
    let others = arrow::compute::filter_record_batch(&rows, &mask).expect("others");
    let mine_mask: arrow::array::BooleanArray =
        cards.iter().map(|c| Some(c == Some(card))).collect();
    let mine = arrow::compute::filter_record_batch(&rows, &mine_mask).expect("mine");
    assert!(
        mine.num_rows() > 60,
        "{} rows for the card",
        mine.num_rows()
    );
    let topic = common::unique_topic("validation");
    produce(&runtime, &topic, 2, &others);

    // The card's messages: its valid rows in order, with the bad ones and a repeat of its
    // row 25 (after row 40, so in a later micro-batch) in between.
    let encoder = risksense_formats::codec::json::JsonRowEncoder::new(&mine).expect("encoder");
    let json_of = |row: usize| {
        let mut out = Vec::new();
        encoder.encode_row(row, &mut out);
        String::from_utf8(out).expect("utf8")
    };
    let replace = |row: usize, from: &str, to: &str, trans_num: &str| {
        let text = json_of(row);
        let original = rows_trans_num(&mine, row);
        assert!(text.contains(from), "{from} not in {text}");
        text.replace(from, to).replace(&original, trans_num)
    };
    let amount = |row: usize| {
        format!(
            "\"amt\":{}",
            mine.column(idx::AMT)
                .as_primitive::<Float64Type>()
                .value(row)
        )
    };
    let lat = |row: usize| {
        format!(
            "\"lat\":{}",
            mine.column(idx::LAT)
                .as_primitive::<Float64Type>()
                .value(row)
        )
    };
    let huge = format!(
        "{},\"padding\":\"{}\"}}",
        json_of(30).trim_end_matches('}'),
        "x".repeat(100 * 1024)
    );
    let huge = huge.replace(&rows_trans_num(&mine, 30), "bad-huge");
    let mut messages: Vec<(String, Option<&str>)> = Vec::new();
    for row in 0..mine.num_rows() {
        match row {
            10 => messages.push((
                replace(10, &amount(10), "\"amt\":1e308", "bad-amount"),
                Some("column `amt`: 1e308 is not an amount"),
            )),
            20 => messages.push((
                replace(20, &lat(20), "\"lat\":999", "bad-lat"),
                Some("column `lat`: 999 is outside"),
            )),
            30 => messages.push((huge.clone(), Some("more than max_message_bytes (65536)"))),
            _ => {}
        }
        messages.push((json_of(row), None));
        if row == 40 {
            messages.push((json_of(25), Some("duplicate trans_num")));
        }
    }
    let key = card.to_string();
    // Idempotent, as a production producer is: without it librdkafka may reorder a
    // partition's messages when it retries a request (as on a broker just started), and
    // the stream scores a card's rows in the order the topic holds them.
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::kafka_brokers())
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for (payload, _) in &messages {
        producer
            .send(BaseRecord::to(&topic).key(&key).payload(payload))
            .expect("queued");
    }
    producer.flush(Duration::from_secs(10)).expect("flushed");

    let archive = scratch("validation");
    let config = StreamConfig {
        // Small micro-batches: the repeat arrives batches after its first copy, so it is
        // recognised from the card's remembered rows (a repeat within a batch: decode.rs).
        batch_rows: 7,
        // A checkpoint after every micro-batch: the card's rows (all of them older than
        // the partition's clock, which the other cards' rows moved to the end of February)
        // must survive each one's idle-card eviction.
        checkpoint_interval_ms: 1,
        ..config(&topic, &archive)
    };
    let store = redis_store(&runtime, &url, &config);
    let summary = run_until_idle(config.clone(), store, Duration::from_secs(3));
    let bad: Vec<(&String, &str)> = messages
        .iter()
        .filter_map(|(payload, reason)| reason.map(|r| (payload, r)))
        .collect();
    assert_eq!(summary.dead_letters, bad.len() as u64);
    assert_eq!(summary.rows_scored, rows.num_rows() as u64);

    let letters = common::read_raw(
        &config.brokers,
        &config.dead_letter_topic,
        bad.len(),
        Duration::from_secs(1),
        Duration::from_secs(30),
    );
    assert_eq!(letters.len(), bad.len());
    for (payload, reason) in &bad {
        let letter = letters
            .iter()
            .find(|l| l.payload == payload.as_bytes())
            .unwrap_or_else(|| panic!("{reason}: not dead-lettered intact"));
        let header = letter.header(ERROR_HEADER).unwrap_or_default();
        assert!(header.contains(reason), "{header} lacks {reason}");
    }
    let duplicate = letters
        .iter()
        .find_map(|l| {
            l.headers
                .iter()
                .find(|(k, v)| k == ERROR_HEADER && v.starts_with("duplicate"))
        })
        .expect("the repeat's letter");
    assert!(
        duplicate.1.contains(&format!(
            "`{}`, first seen at partition ",
            rows_trans_num(&mine, 25)
        )),
        "{}",
        duplicate.1
    );

    // Every valid row archived once (scores_of panics on a second copy), every score
    // finite, and equal to the batch path's over the valid rows alone: the card's windows
    // saw neither the bad rows nor the repeat.
    let archived_rows = archive_rows(&archive);
    let archived = scores_of(&archived_rows);
    assert!(archived.values().all(|(score, _)| score.is_finite()));
    // The topic holds the card's rows in the order they were sent (the stream's order).
    let offsets = row_ids_of(&archived_rows);
    let sent: Vec<i64> = trans_nums(&mine).iter().map(|t| offsets[t]).collect();
    assert!(
        sent.windows(2).all(|pair| pair[0] < pair[1]),
        "the topic holds the card's rows out of the order sent: {sent:?}"
    );
    assert_parity(&archived, &batch_scores(&rows));
    let found = redis_has(&url, &topic, &trans_nums(&mine));
    assert!(found.iter().all(|f| *f));
    assert_eq!(
        redis_has(
            &url,
            &topic,
            &["bad-amount".to_string(), "bad-lat".to_string()]
        ),
        vec![false, false]
    );
}

fn rows_trans_num(rows: &RecordBatch, row: usize) -> String {
    rows.column(idx::TRANS_NUM)
        .as_string::<i32>()
        .value(row)
        .to_string()
}

/// A Redis that refuses the engine's writes for good (a key of the wrong type): the stream
/// stops with the error instead of retrying forever, and checkpoints nothing past it.
#[test]
fn a_write_redis_refuses_for_good_stops_the_stream_instead_of_retrying_forever() {
    let url = common::redis_url();
    let runtime = runtime();
    let rows = generate(5, "2019-01-01", "2019-01-15", 11);
    let topic = common::unique_topic("wrongtype");
    produce(&runtime, &topic, 1, &rows);
    // Every card's list is a list; make one card's a string.
    let card = rows
        .column(idx::CC_NUM)
        .as_primitive::<Int64Type>()
        .value(0);
    let mut probe = Probe::open(&url);
    let key = risksense_store::layout::card(&topic, card);
    let _: () = probe
        .query(redis::cmd("SET").arg(&key).arg("not a list"))
        .expect("set");

    let archive = scratch("wrongtype");
    let config = config(&topic, &archive);
    let store = redis_store(&runtime, &url, &config);
    let error = stream_error(config, store, "a write Redis refuses for good");
    assert!(error.contains("WRONGTYPE"), "{error}");
    // Nothing was checkpointed past the failed batch: the partition has no checkpoint.
    let checkpoint =
        risksense_store::layout::checkpoint(&topic, &format!("{topic}-group"), &topic, 0);
    let exists: bool = probe
        .query(redis::cmd("EXISTS").arg(&checkpoint))
        .expect("exists");
    assert!(
        !exists,
        "{checkpoint} was saved past a batch the sinks do not hold"
    );
}

/// The alerts topic refuses every record as too large (its `max.message.bytes` is smaller
/// than any record): no retry can fix that, so the stream stops with the broker's reason
/// instead of retrying forever, and checkpoints nothing past the batch.
#[test]
fn kafka_refusing_alerts_for_good_stops_the_stream_instead_of_retrying_forever() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;

    let url = common::redis_url();
    let runtime = runtime();
    // Enough rows that some are anomalies (about 1 %), alerted to the refusing topic.
    let rows = generate(20, "2019-01-01", "2019-02-28", 12);
    let topic = common::unique_topic("toolarge");
    produce(&runtime, &topic, 1, &rows);
    let archive = scratch("toolarge");
    let config = config(&topic, &archive);
    let admin: AdminClient<DefaultClientContext> = KafkaSettings::new(common::kafka_brokers())
        .client_config(&[])
        .create()
        .expect("admin client");
    let alerts = NewTopic::new(&config.alerts_topic, 1, TopicReplication::Fixed(1))
        .set("max.message.bytes", "64");
    let created = runtime
        .block_on(admin.create_topics([&alerts], &AdminOptions::new()))
        .expect("create topics");
    assert!(created.iter().all(Result::is_ok), "{created:?}");

    let store = redis_store(&runtime, &url, &config);
    let group = config.group.clone();
    let error = stream_error(config, store, "records the broker refuses for good");
    assert!(error.to_lowercase().contains("too large"), "{error}");
    let checkpoint = risksense_store::layout::checkpoint(&topic, &group, &topic, 0);
    let mut probe = Probe::open(&url);
    let exists: bool = probe
        .query(redis::cmd("EXISTS").arg(&checkpoint))
        .expect("exists");
    assert!(
        !exists,
        "{checkpoint} was saved past a batch the sinks do not hold"
    );
}
