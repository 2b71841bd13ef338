//! Kafka clients: shared configuration, topic creation, and the replay producer that turns
//! transaction batches into JSON messages keyed by card number.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message};

use crate::error::{ConnectorError, kafka_retryable};
use risksense_formats::codec::json::JsonRowEncoder;

/// Where the brokers are and any extra librdkafka properties (`key=value`).
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub properties: Vec<(String, String)>,
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            properties: Vec::new(),
        }
    }

    /// A client configuration with the brokers and the extra properties applied last, so
    /// the user can override any default we set.
    pub fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

/// Creates `topic` with `partitions` partitions unless it exists already.
pub async fn ensure_topic(
    settings: &KafkaSettings,
    topic: &str,
    partitions: i32,
) -> Result<(), ConnectorError> {
    let admin: AdminClient<DefaultClientContext> = settings.client_config(&[]).create()?;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics([&new_topic], &options).await?;
    for result in results {
        match result {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(ConnectorError::Kafka(KafkaError::AdminOp(code))).inspect_err(|_| {
                    tracing::error!(topic = %name, ?code, "could not create topic");
                });
            }
        }
    }
    Ok(())
}

/// Deletes `topics` (missing ones are not an error): benchmarks fill topics of a million
/// messages each, and a broker keeps them for its retention period otherwise.
pub async fn delete_topics(
    settings: &KafkaSettings,
    topics: &[&str],
) -> Result<(), ConnectorError> {
    let admin: AdminClient<DefaultClientContext> = settings.client_config(&[]).create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.delete_topics(topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((name, code)) => {
                tracing::warn!(topic = %name, ?code, "could not delete topic");
            }
        }
    }
    Ok(())
}

/// Counts delivery reports on librdkafka's background thread.
#[derive(Default)]
pub struct DeliveryCounter {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<KafkaError>>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, message)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, partition = message.partition(), "replay delivery failed");
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert_with(|| error.clone());
                }
            }
        }
    }
}

/// How fast to replay.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// As fast as the broker takes it.
    Unlimited,
    /// About this many messages per second, evenly spread.
    PerSecond(u64),
}

/// What a replay did.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayStats {
    pub messages: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl ReplayStats {
    pub fn messages_per_second(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Producer settings for bulk replay: large lz4-compressed batches, idempotent so that a
/// retry never reorders or duplicates a card's transactions.
const REPLAY_DEFAULTS: &[(&str, &str)] = &[
    ("acks", "all"),
    ("enable.idempotence", "true"),
    ("compression.type", "lz4"),
    ("linger.ms", "10"),
    ("batch.num.messages", "20000"),
    ("batch.size", "4194304"),
    ("queue.buffering.max.messages", "1000000"),
    ("queue.buffering.max.kbytes", "1048576"),
    ("message.timeout.ms", "120000"),
];

/// Replays transaction batches into a topic as JSON, keyed by `cc_num`.
pub struct ReplayProducer {
    producer: ThreadedProducer<DeliveryCounter>,
    topic: String,
    pace: Pace,
    started: Option<Instant>,
    stats: ReplayStats,
    payload: Vec<u8>,
    key: Vec<u8>,
}

impl ReplayProducer {
    pub fn new(settings: &KafkaSettings, topic: &str, pace: Pace) -> Result<Self, ConnectorError> {
        let producer: ThreadedProducer<DeliveryCounter> =
            settings
                .client_config(REPLAY_DEFAULTS)
                .create_with_context(DeliveryCounter::default())?;
        // Connect and learn the topic's leaders before the first row is timestamped: a
        // paced replay measures the stream, not this producer's start-up (and an
        // unreachable broker fails here, with the reason, not after a full queue).
        producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(30))?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
            pace,
            started: None,
            stats: ReplayStats::default(),
            payload: Vec::with_capacity(1024),
            key: Vec::with_capacity(24),
        })
    }

    /// Queues every row of `batch`. Blocks while librdkafka's queue is full, and to keep
    /// the pace.
    pub fn send_batch(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        let encoder = JsonRowEncoder::new(batch)?;
        if self.started.is_none()
            && matches!(self.pace, Pace::PerSecond(_))
            && encoder.num_rows() > 0
        {
            // A paced replay stands for a producer that is already running: its first row
            // goes out alone and is acknowledged (connection, producer id and leaders all
            // in place) before the clock starts, so that start-up does not count as the
            // stream's latency.
            encoder.encode_row(0, &mut self.payload);
            encoder.card_key(0, &mut self.key);
            self.send()?;
            self.producer.flush(Duration::from_secs(30))?;
        }
        let first = usize::from(self.started.is_none() && self.stats.messages > 0);
        let started = *self.started.get_or_insert_with(Instant::now);
        for row in first..encoder.num_rows() {
            if let Pace::PerSecond(rate) = self.pace
                && self.stats.messages.is_multiple_of(64)
            {
                let due = Duration::from_secs_f64(self.stats.messages as f64 / rate.max(1) as f64);
                let elapsed = started.elapsed();
                if due > elapsed {
                    std::thread::sleep(due - elapsed);
                }
            }
            encoder.encode_row(row, &mut self.payload);
            encoder.card_key(row, &mut self.key);
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> Result<(), ConnectorError> {
        loop {
            let record = BaseRecord::to(&self.topic)
                .key(&self.key[..])
                .payload(&self.payload[..]);
            match self.producer.send(record) {
                Ok(()) => {
                    self.stats.messages += 1;
                    self.stats.bytes += self.payload.len() as u64;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // The local queue is full: let librdkafka send, then try again.
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((error, _)) => return Err(error.into()),
            }
        }
    }

    /// Messages queued so far.
    pub fn messages_sent(&self) -> u64 {
        self.stats.messages
    }

    /// Waits until every queued message is acknowledged by the broker. Fails when any was
    /// not, with how many and the first reason.
    pub fn finish(self, timeout: Duration) -> Result<ReplayStats, ConnectorError> {
        self.producer.flush(timeout)?;
        let context = self.producer.context();
        let failed = context.failed.load(Ordering::Relaxed);
        let delivered = context.delivered.load(Ordering::Relaxed);
        let mut stats = self.stats;
        stats.elapsed = self.started.map_or(Duration::ZERO, |s| s.elapsed());
        if failed > 0 || delivered != stats.messages {
            let first = context.first_error.lock().ok().and_then(|e| e.clone());
            let missing = stats.messages - delivered;
            return Err(match first {
                Some(source) => ConnectorError::Delivery {
                    failed: missing,
                    attempted: stats.messages,
                    retryable: kafka_retryable(&source),
                    source,
                },
                None => ConnectorError::Unacknowledged {
                    missing,
                    attempted: stats.messages,
                },
            });
        }
        Ok(stats)
    }
}

/// Replays the `is_fraud` column of transaction batches as label messages on a labels
/// topic, each `delay` after its transaction was sent: the chargebacks of a demo or a
/// test, arriving after the scores they judge. A message is
/// `{"trans_num", "is_fraud" (0/1), "labelled_at_ms"}`, keyed by `trans_num`.
pub struct LabelReplayer {
    producer: ThreadedProducer<DeliveryCounter>,
    topic: String,
    delay: Duration,
    due: std::collections::VecDeque<(Instant, String, bool)>,
    sent: u64,
}

impl LabelReplayer {
    pub fn new(
        settings: &KafkaSettings,
        topic: &str,
        delay: Duration,
    ) -> Result<Self, ConnectorError> {
        let producer: ThreadedProducer<DeliveryCounter> =
            settings
                .client_config(REPLAY_DEFAULTS)
                .create_with_context(DeliveryCounter::default())?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
            delay,
            due: std::collections::VecDeque::new(),
            sent: 0,
        })
    }

    /// Schedules the labels of a batch of transactions (rows without `is_fraud` have none),
    /// then sends those whose time has come.
    pub fn schedule(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        use arrow::array::{Array, AsArray};
        use risksense_common::schema::idx;
        let at = Instant::now() + self.delay;
        let trans_nums = batch.column(idx::TRANS_NUM).as_string::<i32>();
        let labels = batch
            .column(idx::IS_FRAUD)
            .as_primitive::<arrow::datatypes::Int32Type>();
        for row in 0..batch.num_rows() {
            if labels.is_valid(row) && trans_nums.is_valid(row) {
                self.due.push_back((
                    at,
                    trans_nums.value(row).to_string(),
                    labels.value(row) != 0,
                ));
            }
        }
        self.send_due()
    }

    /// Sends the labels whose time has come.
    pub fn send_due(&mut self) -> Result<(), ConnectorError> {
        let now = Instant::now();
        while self.due.front().is_some_and(|(at, _, _)| *at <= now) {
            let Some((_, trans_num, is_fraud)) = self.due.pop_front() else {
                break;
            };
            let payload = format!(
                r#"{{"trans_num":{},"is_fraud":{},"labelled_at_ms":{}}}"#,
                serde_json::Value::String(trans_num.clone()),
                u8::from(is_fraud),
                risksense_common::metrics::now_ms()
            );
            loop {
                let record = BaseRecord::to(&self.topic)
                    .key(trans_num.as_bytes())
                    .payload(payload.as_bytes());
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err((error, _)) => return Err(error.into()),
                }
            }
            self.sent += 1;
        }
        Ok(())
    }

    /// Labels scheduled and not sent yet.
    pub fn waiting(&self) -> usize {
        self.due.len()
    }

    /// Sends the rest as their time comes (or at once when `now` is set), waits for every
    /// acknowledgement and returns how many labels were sent.
    pub fn finish(mut self, now: bool, timeout: Duration) -> Result<u64, ConnectorError> {
        if now {
            for entry in &mut self.due {
                entry.0 = Instant::now();
            }
        }
        while !self.due.is_empty() {
            self.send_due()?;
            if let Some((at, _, _)) = self.due.front() {
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
            }
        }
        self.producer.flush(timeout)?;
        let context = self.producer.context();
        let delivered = context.delivered.load(Ordering::Relaxed);
        if delivered != self.sent {
            return Err(ConnectorError::Unacknowledged {
                missing: self.sent - delivered,
                attempted: self.sent,
            });
        }
        Ok(self.sent)
    }
}

/// What [`read_topic`] found.
#[derive(Debug, Default)]
pub struct TopicContents {
    pub batches: Vec<RecordBatch>,
    pub messages: u64,
    /// Messages whose key was not their `cc_num`.
    pub key_mismatches: u64,
}

/// Reads a whole topic from the beginning (every partition, no consumer group) until
/// `expected` messages arrived or `timeout` passed, decoding the JSON into transaction
/// batches. Used by the demo and the tests to check what a replay wrote.
pub fn read_topic(
    settings: &KafkaSettings,
    topic: &str,
    expected: u64,
    timeout: Duration,
) -> Result<TopicContents, ConnectorError> {
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};

    let consumer: BaseConsumer = settings
        .client_config(&[
            ("group.id", "risksense-read-topic"),
            ("enable.auto.commit", "false"),
            ("fetch.wait.max.ms", "50"),
        ])
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;

    let mut contents = TopicContents::default();
    let mut decoder = risksense_formats::codec::json::JsonTransactionDecoder::new(8192)?;
    let mut keys: Vec<i64> = Vec::with_capacity(8192);
    let deadline = Instant::now() + timeout;
    let flush = |decoder: &mut risksense_formats::codec::json::JsonTransactionDecoder,
                 keys: &mut Vec<i64>,
                 contents: &mut TopicContents|
     -> Result<(), ConnectorError> {
        if let Some(batch) = decoder.flush()? {
            let cards = batch
                .column(risksense_common::schema::idx::CC_NUM)
                .as_primitive::<Int64Type>();
            contents.key_mismatches += cards
                .values()
                .iter()
                .zip(keys.iter())
                .filter(|(card, key)| card != key)
                .count() as u64;
            contents.batches.push(batch);
        }
        keys.clear();
        Ok(())
    };
    while contents.messages < expected && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        let key = message
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| k.parse::<i64>().ok())
            .unwrap_or(i64::MIN);
        decoder.push(message.payload().unwrap_or_default())?;
        keys.push(key);
        contents.messages += 1;
        if keys.len() == 8192 {
            flush(&mut decoder, &mut keys, &mut contents)?;
        }
    }
    flush(&mut decoder, &mut keys, &mut contents)?;
    Ok(contents)
}

/// librdkafka's in-process mock cluster: a Kafka-protocol broker inside this process, for
/// the demo on a machine with no Kafka. It keeps only a few MiB per partition, so it suits a
/// demo whose consumer keeps up, never the test suite (which runs against real Kafka).
pub struct EmbeddedBroker {
    cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
}

impl EmbeddedBroker {
    /// Starts one in-process broker with these topics (name, partitions).
    pub fn start(topics: &[(&str, i32)]) -> Result<Self, ConnectorError> {
        let cluster = rdkafka::mocking::MockCluster::new(1)?;
        for (topic, partitions) in topics {
            cluster.create_topic(topic, *partitions, 1)?;
        }
        Ok(Self { cluster })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }
}
