//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::record_batch::RecordBatch;

/// Sends the engine's log (warnings and up, or `RUST_LOG`) to the test's captured output:
/// a failing test shows what the stream was doing (a sink retrying, a rebalance).
pub fn capture_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,risksense_engine=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A two-worker runtime, as the engine's tests drive the stream with.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A topic with `partitions` partitions (created if missing) holding `rows` as JSON, keyed
/// by card, every message acknowledged.
pub fn produce(
    runtime: &tokio::runtime::Runtime,
    topic: &str,
    partitions: i32,
    rows: &RecordBatch,
) {
    use risksense_connectors::kafka::{KafkaSettings, Pace, ReplayProducer, ensure_topic};
    let settings = KafkaSettings::new(kafka_brokers());
    runtime
        .block_on(ensure_topic(&settings, topic, partitions))
        .expect("topic");
    let mut producer = ReplayProducer::new(&settings, topic, Pace::Unlimited).expect("producer");
    producer.send_batch(rows).expect("send");
    producer.finish(Duration::from_secs(60)).expect("delivered");
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether something accepts TCP connections at `address` (host:port) within 3 s.
fn reachable(address: &str) -> bool {
    address
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok())
}

/// Kafka bootstrap servers for the tests. Fails the test loudly, with the command that
/// starts the broker, when nothing answers: these tests never skip.
pub fn kafka_brokers() -> String {
    let brokers =
        std::env::var("RISKSENSE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_string());
    let first = brokers.split(',').next().unwrap_or_default().to_string();
    assert!(
        reachable(&first),
        "Kafka is not reachable at {first}: these tests need a real broker. \
         Start one with `scripts/services.sh up` (or run `scripts/test.sh`), \
         or point RISKSENSE_KAFKA_BROKERS at yours."
    );
    brokers
}

/// A topic name no other test run uses.
pub fn unique_topic(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// All rows of `batches` as one batch.
pub fn concat(batches: &[RecordBatch]) -> RecordBatch {
    arrow::compute::concat_batches(&risksense_common::schema::transaction_schema(), batches)
        .expect("batches share the transaction schema")
}

/// Rows sorted by `row_id`, so two sets of the same rows compare equal whatever their order.
pub fn sorted_by_row_id(batch: &RecordBatch) -> RecordBatch {
    let indices = arrow::compute::sort_to_indices(
        batch.column(risksense_common::schema::idx::ROW_ID),
        None,
        None,
    )
    .expect("sortable");
    arrow::compute::take_record_batch(batch, &indices).expect("take")
}

/// Redis URL for the tests. Fails loudly, with the command that starts Redis, when nothing
/// answers: these tests never skip.
pub fn redis_url() -> String {
    risksense_testkit::redis_url()
}

/// A raw message read back from a topic.
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl RawMessage {
    /// The value of header `name`, if the message has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads every message of `topic` from the beginning until `expected` arrived and then
/// `settle` passed without more (to catch extra ones), or `timeout` passed.
pub fn read_raw(
    brokers: &str,
    topic: &str,
    expected: usize,
    settle: Duration,
    timeout: Duration,
) -> Vec<RawMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "risksense-tests-read-raw")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&assignment).expect("assign");
    let started = std::time::Instant::now();
    let mut last = std::time::Instant::now();
    let mut out = Vec::new();
    while started.elapsed() < timeout && !(out.len() >= expected && last.elapsed() >= settle) {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.expect("message");
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(RawMessage {
            partition: message.partition(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers,
        });
        last = std::time::Instant::now();
    }
    out
}

/// `rows` scored by the batch path: the SQL of `rescore` over them, as one table.
pub async fn batch_scored(
    model: &std::sync::Arc<risksense_udfs::Model>,
    rows: RecordBatch,
) -> Vec<RecordBatch> {
    use risksense_query::scoring;
    let ctx = scoring::new_session(Some(model.clone()), scoring::SessionOptions::default())
        .expect("session");
    scoring::register_batches(
        &ctx,
        scoring::TRANSACTIONS,
        risksense_common::schema::transaction_schema(),
        vec![rows],
    )
    .expect("table");
    scoring::install_views(&ctx, Some(model))
        .await
        .expect("views");
    ctx.sql("SELECT * FROM scored")
        .await
        .expect("sql")
        .collect()
        .await
        .expect("scored rows")
}

/// `rows` scored by the stream's scorer in micro-batches of `size`, each card's history
/// committed after each.
pub async fn stream_scored(
    model: &std::sync::Arc<risksense_udfs::Model>,
    rows: &RecordBatch,
    size: usize,
) -> Vec<RecordBatch> {
    use risksense_query::scorer::StreamScorer;
    use risksense_query::scoring::SessionOptions;
    let scorer = StreamScorer::new(model.clone(), SessionOptions::default())
        .await
        .expect("scorer");
    let history = scorer.history().expect("history").clone();
    let mut streamed = Vec::new();
    for start in (0..rows.num_rows()).step_by(size) {
        let piece = rows.slice(start, size.min(rows.num_rows() - start));
        streamed.extend(scorer.score(vec![piece]).await.expect("scored"));
        history.commit_staged(|_| Some(0)).expect("commit");
    }
    streamed
}

/// The finished (published) Parquet files in `dir`, sorted.
pub fn parquet_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Every row of `files`.
pub fn read_parquet(files: &[PathBuf]) -> Vec<RecordBatch> {
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let mut batches = Vec::new();
    for file in files {
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).expect("open"))
                .expect("parquet")
                .build()
                .expect("reader");
        batches.extend(reader.map(|b| b.expect("batch")));
    }
    batches
}
