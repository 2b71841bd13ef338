//! The consumer loop: a Kafka consumer group member that gathers micro-batches, hands them
//! to the [`Pipeline`], checkpoints on a timer, and follows partitions across rebalances.
//!
//! It runs on the calling thread and drives async work through a tokio runtime handle.
//! Rebalance callbacks run inside `poll` on this same thread (between micro-batches, and
//! when the consumer closes): a revoke checkpoints everything first (so the next owner
//! resumes exactly there), an assign loads each partition's checkpoint and starts reading
//! at its offset.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use risksense_store::Store;
use risksense_udfs::Model;
use tokio::runtime::Handle;

use super::checkpoint::PartitionOffset;
use super::config::StreamConfig;
use super::pipeline::Pipeline;
use super::sinks::{StreamSinks, stream_sinks};
use crate::error::EngineError;
use bytes::{Bytes, BytesMut};
use risksense_common::metrics::{StreamMetrics, ms_between, now_ms};
use risksense_connectors::kafka::{KafkaSettings, ensure_topic};
use risksense_formats::message::Incoming;
use risksense_query::scorer::StreamScorer;

/// How a run ends, besides a stop request.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Create the topics the engine writes (not for the in-process broker, which makes them).
    pub create_topics: bool,
    /// Stop once no message arrived for this long (benchmarks, tests, batch-like runs).
    pub stop_when_idle: Option<Duration>,
    /// Where scored micro-batches are also published for live SQL (the API's `scored`).
    pub live: Option<Arc<risksense_query::live::LiveWindow>>,
    /// The standing queries (shared with the API): the stream attaches its tables, loads
    /// `config.queries` and the saved ones, and runs each micro-batch through them.
    pub queries: Option<Arc<risksense_continuous::Registry>>,
    /// Changes to the models in service (API, SIGHUP), applied between micro-batches.
    /// Give the stream its own instances of the control's models (`challenger`,
    /// `supervised` below): it starts with those.
    pub models: Option<Arc<risksense_udfs::ModelControl>>,
    /// The shadow model the stream starts with (its own instance of the control's).
    pub challenger: Option<Arc<Model>>,
    /// The supervised model the stream starts with (its own instance of the control's).
    pub supervised: Option<Arc<Model>>,
}

/// Gives the standing queries the stream's tables and producer, then starts the queries of
/// `config.queries` and those created through the API before.
async fn start_queries(
    queries: &risksense_continuous::Registry,
    config: &StreamConfig,
    scored: arrow::datatypes::SchemaRef,
    producer: FutureProducer,
    settings: Option<KafkaSettings>,
) -> Result<(), EngineError> {
    queries.attach(
        scored,
        risksense_common::schema::transaction_schema(),
        Some(producer),
        settings,
        &format!("{}:{}", config.group, config.topic),
    );
    let mut names = Vec::new();
    if !config.queries.as_os_str().is_empty() {
        names.extend(queries.load_dir(&config.queries).await?);
    }
    names.extend(queries.load_saved().await?);
    if !names.is_empty() {
        tracing::info!(queries = ?names, "standing queries running");
    }
    Ok(())
}

/// Messages already fetched are polled in about a microsecond each or less: a clock read per
/// 64 of them (and at each micro-batch's start) keeps the arrival histogram, in ms, off by
/// well under a millisecond, where a read per message was 1 % of the engine at the drain.
const CLOCK_READ_EVERY: u32 = 64;

/// Message bytes, copied out of librdkafka's into shared buffers of about a micro-batch
/// each: a message's are a split of one (no allocation per message); a buffer is freed
/// when the last message in it is.
struct MessageBytes {
    buffer: BytesMut,
    /// A new buffer's size: a micro-batch of typical messages (~400 bytes).
    buffer_bytes: usize,
    max_message_bytes: usize,
}

impl MessageBytes {
    fn new(batch_rows: usize, max_message_bytes: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            buffer_bytes: 512 * batch_rows.clamp(1, 8192),
            max_message_bytes,
        }
    }

    /// The message's key and payload, as shared bytes.
    fn copy(&mut self, key: Option<&[u8]>, payload: &[u8]) -> (Option<Bytes>, Bytes) {
        let size = payload.len() + key.map_or(0, <[u8]>::len);
        if size > self.max_message_bytes {
            // Refused by the decoder: copied on its own, so that no shared buffer grows to
            // its size.
            return (
                key.map(Bytes::copy_from_slice),
                Bytes::copy_from_slice(payload),
            );
        }
        if self.buffer.capacity() < size {
            // A new buffer (never the old one grown: its messages still hold it).
            self.buffer = BytesMut::with_capacity(size.max(self.buffer_bytes));
        }
        let key = key.map(|key| {
            self.buffer.extend_from_slice(key);
            self.buffer.split().freeze()
        });
        self.buffer.extend_from_slice(payload);
        (key, self.buffer.split().freeze())
    }
}

/// When a micro-batch whose first message was polled at `polled` closes: `wait` after that
/// message was produced (its Kafka timestamp), but never later than `wait` after it was
/// polled, so a producer clock running behind cannot hold a batch open, and one running
/// ahead only makes the engine wait as it would without timestamps.
fn batch_deadline(polled: Instant, wait: Duration, produced_ms: Option<i64>) -> Instant {
    let waited = produced_ms.map_or(Duration::ZERO, |produced| {
        Duration::from_millis(ms_between(produced, now_ms()))
    });
    polled + wait.saturating_sub(waited)
}

/// What a run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunSummary {
    pub messages: u64,
    pub rows_scored: u64,
    pub anomalies: u64,
    pub new_alerts: u64,
    pub dead_letters: u64,
    pub batches: u64,
    pub checkpoints: u64,
    /// Sink writes retried after a failure (an outage the stream waited out).
    pub sink_retries: u64,
    pub archive_files: u64,
    pub elapsed_secs: f64,
    /// Messages per second from the first message to the last batch's sinks.
    pub messages_per_sec: f64,
    pub visible_p50_ms: u64,
    pub visible_p99_ms: u64,
    pub batch_p99_ms: u64,
    /// Produce time → polled by the engine.
    pub arrival_p50_ms: u64,
    pub arrival_p99_ms: u64,
    /// Share of busy time per stage.
    pub decode_secs: f64,
    pub score_secs: f64,
    pub sink_secs: f64,
    pub checkpoint_secs: f64,
    pub state_secs: f64,
    pub poll_secs: f64,
    /// Redis + Kafka writes, overlapping the next micro-batch's work.
    pub remote_sink_secs: f64,
    /// Peak resident memory of this process (VmHWM), in MiB.
    pub peak_rss_mib: f64,
    /// CPU time of this whole process (user + system) since it started, in seconds.
    pub cpu_secs: f64,
    /// CPU time of this process from its first message to the end of the stream (the
    /// final checkpoint and the idle wait before it included), in seconds: what the
    /// messages cost, without start-up (loading and planning the models, joining the
    /// group), which does not grow with them.
    pub drain_cpu_secs: f64,
    /// Of `drain_cpu_secs`, the kernel's (system) time: writes to files and sockets, page
    /// faults.
    pub drain_system_cpu_secs: f64,
    /// The standing queries' totals.
    pub queries: Vec<risksense_continuous::metrics::QuerySummary>,
}

/// Consumer settings: manual commits only (after checkpoints), bounded prefetch so that
/// memory stays small, eager rebalancing so that a revoke sees the whole assignment.
const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("enable.partition.eof", "false"),
    ("partition.assignment.strategy", "range,roundrobin"),
    ("session.timeout.ms", "10000"),
    ("heartbeat.interval.ms", "1000"),
    // An outage pauses the loop while sinks are retried; stay in the group meanwhile.
    ("max.poll.interval.ms", "600000"),
    ("fetch.wait.max.ms", "10"),
    ("fetch.max.bytes", "16777216"),
    ("max.partition.fetch.bytes", "4194304"),
    ("queued.max.messages.kbytes", "4096"),
    // When the prefetch queue is full librdkafka waits this long before fetching again
    // (1 s by default): the engine drains 16 MiB far sooner, and would sit idle.
    ("fetch.queue.backoff.ms", "5"),
];

/// Producer settings for alerts and dead letters: idempotent, acknowledged by all replicas,
/// sent quickly (these are on the latency path).
const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("acks", "all"),
    ("enable.idempotence", "true"),
    ("linger.ms", "2"),
    ("compression.type", "lz4"),
    ("message.timeout.ms", "30000"),
    // A dead letter is the original message, which may be as large as the transactions
    // topic allowed (an oversized one is dead-lettered for its size): librdkafka's own
    // 1 MB cap must not cut it; the broker's cap for the dead-letter topic still applies
    // (pipeline::send_all truncates what it refuses, saying so in a header).
    ("message.max.bytes", "16777216"),
];

struct GroupContext {
    pipeline: Arc<Mutex<Pipeline>>,
    runtime: Handle,
    topic: String,
    /// Partitions revoked since the loop last looked (their buffered messages are dropped).
    revoked: Mutex<Vec<i32>>,
    /// An error inside a callback, for the loop to report.
    failure: Mutex<Option<EngineError>>,
    /// When partitions were last assigned (the idle stop counts from there: a restarted
    /// member may wait a session timeout before the group gives it any).
    assigned_at: Mutex<Option<Instant>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut pipeline = lock(&self.pipeline);
                for partition in &partitions {
                    if i64::from(*partition) >= risksense_formats::message::PARTITION_SLOTS {
                        lock(&self.failure).get_or_insert(EngineError::Config(format!(
                            "partition {partition}: topics of more than {} partitions are not supported",
                            risksense_formats::message::PARTITION_SLOTS
                        )));
                        continue;
                    }
                    match self.runtime.block_on(pipeline.restore(*partition)) {
                        Ok(Some(offset)) => {
                            if let Err(error) = tpl.set_partition_offset(
                                &self.topic,
                                *partition,
                                Offset::Offset(offset),
                            ) {
                                lock(&self.failure).get_or_insert(error.into());
                            }
                        }
                        Ok(None) => {}
                        Err(error) => {
                            lock(&self.failure).get_or_insert(error);
                        }
                    }
                }
                tracing::info!(?partitions, "partitions assigned");
                *lock(&self.assigned_at) = Some(Instant::now());
                if let Err(error) = consumer.assign(tpl) {
                    lock(&self.failure).get_or_insert(error.into());
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let mut pipeline = lock(&self.pipeline);
                // Everything processed so far becomes durable before another member can
                // take these partitions over.
                match self.runtime.block_on(pipeline.revoke(&partitions)) {
                    Ok(offsets) => {
                        commit_offsets(consumer, &self.topic, &offsets, CommitMode::Sync)
                    }
                    Err(error) => {
                        tracing::error!(%error, "checkpoint on revoke failed; the next owner resumes from the previous one");
                        // The loop stops with this error, not a later generic one.
                        lock(&self.failure).get_or_insert(error);
                    }
                }
                lock(&self.revoked).extend(partitions.iter().copied());
                tracing::info!(?partitions, "partitions revoked");
                if let Err(error) = consumer.unassign() {
                    tracing::warn!(%error, "unassign failed");
                }
            }
            other => {
                // No checkpoint is possible (the group may already have moved on): drop
                // everything since the last one; the next owner reads it again.
                tracing::error!(?other, "rebalance error; dropping the assignment");
                let mut pipeline = lock(&self.pipeline);
                let owned = pipeline.partitions();
                pipeline.forget(&owned);
                lock(&self.revoked).extend(owned);
                let _ = consumer.unassign();
            }
        }
    }
}

/// Runs the streaming engine until `shutdown` is set (or the idle stop of `options`),
/// finishing the micro-batch in flight and checkpointing before it returns.
pub fn run_stream(
    config: StreamConfig,
    model: Arc<Model>,
    store: Store,
    runtime: &Handle,
    shutdown: Arc<AtomicBool>,
    metrics: Arc<StreamMetrics>,
    options: RunOptions,
) -> Result<RunSummary, EngineError> {
    config.validate()?;
    let settings = KafkaSettings {
        brokers: config.brokers.clone(),
        properties: config.kafka_properties.clone(),
    };
    if options.create_topics {
        runtime.block_on(async {
            for topic in [&config.dead_letter_topic, &config.alerts_topic] {
                if !topic.is_empty() {
                    ensure_topic(&settings, topic, 4).await?;
                }
            }
            Ok::<(), EngineError>(())
        })?;
    }
    let scorer = runtime.block_on(StreamScorer::new(model, config.session_options()))?;
    for (slot, model) in [
        (risksense_udfs::Slot::Challenger, &options.challenger),
        (risksense_udfs::Slot::Supervised, &options.supervised),
    ] {
        scorer.model().put(slot, model.clone())?;
    }
    tracing::debug!(plan = %scorer.display_plan(), "stream plan");
    let producer: FutureProducer = settings.client_config(PRODUCER_DEFAULTS).create()?;
    if let Some(queries) = &options.queries {
        runtime.block_on(start_queries(
            queries,
            &config,
            scorer.output_schema(),
            producer.clone(),
            options.create_topics.then(|| settings.clone()),
        ))?;
    }
    let StreamSinks { sinks, archive } = stream_sinks(
        &config,
        store.clone(),
        producer,
        options.live.clone(),
        options.queries.clone(),
    )?;
    let pipeline = Arc::new(Mutex::new(Pipeline::new(
        config.clone(),
        scorer,
        store,
        sinks,
        metrics.clone(),
        shutdown.clone(),
    )?));
    let context = GroupContext {
        pipeline: pipeline.clone(),
        runtime: runtime.clone(),
        topic: config.topic.clone(),
        revoked: Mutex::new(Vec::new()),
        failure: Mutex::new(None),
        assigned_at: Mutex::new(None),
    };
    let mut client = settings.client_config(CONSUMER_DEFAULTS);
    client.set("group.id", &config.group);
    client.set("auto.offset.reset", &config.start_from);
    client.set("client.id", format!("risksense-{}", config.instance));
    for (key, value) in &config.kafka_properties {
        client.set(key, value);
    }
    let consumer: BaseConsumer<GroupContext> = client.create_with_context(context)?;
    consumer.subscribe(&[&config.topic])?;
    tracing::info!(
        topic = %config.topic,
        group = %config.group,
        batch_rows = config.batch_rows,
        batch_wait_ms = config.batch_wait_ms,
        "stream started"
    );

    // Detached again however the loop ends: a change waiting then fails instead of hanging.
    struct Attached(Option<Arc<risksense_udfs::ModelControl>>);
    impl Drop for Attached {
        fn drop(&mut self) {
            if let Some(models) = &self.0 {
                models.detach_stream();
            }
        }
    }
    let attached = Attached(options.models.clone());
    if let Some(models) = &attached.0 {
        models.attach_stream();
    }
    let started = Instant::now();
    let mut first_message: Option<Instant> = None;
    // The process's CPU time when the first message came (see RunSummary::drain_cpu_secs).
    let mut cpu_at_first_message: Option<CpuTimes> = None;
    let mut last_message = Instant::now();
    // When the loop last finished a micro-batch: time blocked in a sink (retrying through
    // an outage) is not idle time, or the idle stop would end a stream with a backlog.
    let mut last_busy = Instant::now();
    let mut last_lag_update = Instant::now();
    let mut buffer: Vec<Incoming> = Vec::with_capacity(config.batch_rows);
    let mut bytes = MessageBytes::new(config.batch_rows, config.max_message_bytes);
    // The clock for the arrival histogram: read again at each micro-batch's start, after
    // every poll that found nothing or failed, and every CLOCK_READ_EVERY messages.
    let mut clock_ms = now_ms();
    let mut clock_uses = 0u32;
    let result = (|| -> Result<(), EngineError> {
        loop {
            if let Some(error) = lock(&consumer.context().failure).take() {
                return Err(error);
            }
            let stopping = shutdown.load(Ordering::Relaxed);
            let assigned_at = *lock(&consumer.context().assigned_at);
            let idle_since = assigned_at
                .map_or(last_message, |a| a.max(last_message))
                .max(last_busy);
            // (Never assigned anything for a minute past the limit: nothing will come.)
            let idle = options.stop_when_idle.is_some_and(|limit| {
                idle_since.elapsed() >= limit
                    && (assigned_at.is_some()
                        || idle_since.elapsed() >= limit + Duration::from_secs(60))
            });
            if (stopping || idle) && buffer.is_empty() {
                return Ok(());
            }
            // Gather a micro-batch: up to batch_rows, or until its first message has waited
            // batch_wait since it was produced. A message that queued in the consumer while
            // the previous batch was scored has already waited: it does not wait a full
            // batch_wait again (see `batch_deadline`). Past the deadline, what is already
            // fetched still joins the batch; only waiting for more stops.
            let gathering = Instant::now();
            // Scoring the last micro-batch took time: the cached clock is stale.
            clock_uses = 0;
            let mut batch_deadline: Option<Instant> = None;
            while buffer.len() < config.batch_rows {
                // What is already fetched is taken without reading the clock; only an
                // empty queue waits, until the deadline.
                let mut polled = consumer.poll(Duration::ZERO);
                if polled.is_none() {
                    clock_uses = 0;
                    let wait = match batch_deadline {
                        Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                        None => Duration::from_millis(100),
                    };
                    polled = consumer.poll(wait);
                }
                // Rebalance callbacks ran inside that poll, before the message it returns:
                // drop what was buffered from revoked partitions (their next owner reads
                // it again from the checkpoint) before taking the new message in.
                let revoked: Vec<i32> = std::mem::take(&mut *lock(&consumer.context().revoked));
                if !revoked.is_empty() {
                    buffer.retain(|m| !revoked.contains(&m.partition));
                    if buffer.is_empty() {
                        batch_deadline = None;
                    }
                }
                match polled {
                    Some(Ok(message)) => {
                        let timestamp_ms = message.timestamp().to_millis();
                        if let Some(produced) = timestamp_ms {
                            if clock_uses == 0 {
                                clock_ms = now_ms();
                            }
                            clock_uses = (clock_uses + 1) % CLOCK_READ_EVERY;
                            metrics
                                .arrival_latency
                                .record(ms_between(produced, clock_ms), 1);
                        }
                        let (key, payload) =
                            bytes.copy(message.key(), message.payload().unwrap_or_default());
                        buffer.push(Incoming {
                            partition: message.partition(),
                            offset: message.offset(),
                            key,
                            payload,
                            timestamp_ms,
                        });
                        // The clock is read for a batch's first message only (three reads
                        // per message were 2 % of the engine at the drain); `last_message`
                        // is set when the gathering ends.
                        if batch_deadline.is_none() {
                            let now = Instant::now();
                            if first_message.is_none() {
                                first_message = Some(now);
                                cpu_at_first_message = Some(process_cpu_times());
                            }
                            batch_deadline =
                                Some(self::batch_deadline(now, config.batch_wait(), timestamp_ms));
                        }
                    }
                    Some(Err(error)) => {
                        clock_uses = 0;
                        tracing::warn!(%error, "consumer error (the broker may be away); still polling");
                        match batch_deadline {
                            None => {
                                std::thread::sleep(Duration::from_millis(100));
                                break;
                            }
                            // Score what was gathered rather than poll errors past the deadline.
                            Some(deadline) if Instant::now() >= deadline => break,
                            Some(_) => {}
                        }
                    }
                    None => match batch_deadline {
                        // Nothing more fetched and the deadline passed (or never set).
                        None => break,
                        Some(deadline) if Instant::now() >= deadline => break,
                        Some(_) => {}
                    },
                }
                if stopping {
                    break;
                }
            }
            if batch_deadline.is_some() {
                last_message = Instant::now();
            }
            StreamMetrics::add(&metrics.poll_ns, gathering.elapsed().as_nanos() as u64);
            if buffer.len() >= config.batch_rows {
                // A full micro-batch: more is waiting. Lower-priority work in this process
                // (ad-hoc SQL) backs off while this is recent.
                metrics
                    .backlog_at_ms
                    .store(now_ms().max(0) as u64, Ordering::Relaxed);
            }
            let mut guard = lock(&pipeline);
            // Between micro-batches: the only place the plan's models change.
            if let Some(models) = &attached.0 {
                models.apply_pending(guard.models());
            }
            if !buffer.is_empty() {
                let batch = std::mem::take(&mut buffer);
                runtime.block_on(guard.process(batch))?;
                last_busy = Instant::now();
            }
            if guard.checkpoint_due() {
                let offsets = runtime.block_on(guard.checkpoint_next())?;
                // Asynchronously: the store's checkpoint is what a restart resumes from.
                commit_offsets(&consumer, &config.topic, &offsets, CommitMode::Async);
            }
            drop(guard);
            // Lag takes a broker round trip per partition: once per checkpoint interval.
            if last_lag_update.elapsed() >= config.checkpoint_interval() {
                update_lag(&consumer, &config.topic, &pipeline, &metrics);
                last_lag_update = Instant::now();
            }
        }
    })();

    let mut guard = lock(&pipeline);
    match &result {
        Ok(()) => {
            let offsets = runtime.block_on(guard.checkpoint_all())?;
            commit_offsets(&consumer, &config.topic, &offsets, CommitMode::Sync);
            tracing::info!("stream stopped after a final checkpoint");
        }
        Err(error) => {
            tracing::error!(%error, "stream stopped without a checkpoint; uncommitted messages will be read again");
            guard.abandon();
        }
    }
    let archive_files = archive.as_ref().map_or(0, |a| a.files_written());
    drop(guard);
    consumer.unsubscribe();
    result?;
    let mut summary = summarize(
        &metrics,
        first_message.map_or(started.elapsed(), |f| last_message.max(f) - f),
        archive_files,
        cpu_at_first_message,
    );
    if let Some(queries) = &options.queries {
        summary.queries = queries.summary();
    }
    Ok(summary)
}

/// Commits checkpointed offsets to the group. The checkpoint in the store is what a restart
/// resumes from; the Kafka commit only shows progress (lag) to the group, so a failed
/// commit loses nothing.
fn commit_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    offsets: &[PartitionOffset],
    mode: CommitMode,
) {
    if offsets.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for (partition, offset) in offsets {
        if let Err(error) = list.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
            tracing::warn!(%error, partition, "cannot commit this offset");
        }
    }
    if let Err(error) = consumer.commit(&list, mode) {
        tracing::warn!(%error, "committing offsets to Kafka failed (the checkpoint holds them)");
    }
}

fn update_lag(
    consumer: &BaseConsumer<GroupContext>,
    topic: &str,
    pipeline: &Arc<Mutex<Pipeline>>,
    metrics: &StreamMetrics,
) {
    let Ok(positions) = consumer.position() else {
        return;
    };
    let mut lag = 0u64;
    for partition in lock(pipeline).partitions() {
        // Before the first fetch the position is not an offset yet.
        let Some(position) = positions
            .find_partition(topic, partition)
            .and_then(|e| e.offset().to_raw())
            .filter(|p| *p >= 0)
        else {
            continue;
        };
        if let Ok((_, high)) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(1)) {
            lag += (high - position).max(0) as u64;
        }
    }
    metrics.set_lag(lag);
}

fn summarize(
    metrics: &StreamMetrics,
    busy: Duration,
    archive_files: u64,
    cpu_at_first_message: Option<CpuTimes>,
) -> RunSummary {
    let get = StreamMetrics::get;
    let cpu = process_cpu_times();
    let first = cpu_at_first_message.unwrap_or(cpu);
    let drain = CpuTimes {
        user: cpu.user - first.user,
        system: cpu.system - first.system,
    };
    let secs = |ns: &std::sync::atomic::AtomicU64| get(ns) as f64 / 1e9;
    let elapsed = busy.as_secs_f64().max(1e-9);
    RunSummary {
        messages: get(&metrics.messages),
        rows_scored: get(&metrics.rows_scored),
        anomalies: get(&metrics.anomalies),
        new_alerts: get(&metrics.new_alerts),
        dead_letters: get(&metrics.dead_letters),
        batches: get(&metrics.batches),
        checkpoints: get(&metrics.checkpoints),
        sink_retries: get(&metrics.sink_retries),
        archive_files,
        elapsed_secs: elapsed,
        messages_per_sec: get(&metrics.messages) as f64 / elapsed,
        visible_p50_ms: metrics.visible_latency.quantile_ms(0.5),
        visible_p99_ms: metrics.visible_latency.quantile_ms(0.99),
        batch_p99_ms: metrics.batch_latency.quantile_ms(0.99),
        arrival_p50_ms: metrics.arrival_latency.quantile_ms(0.5),
        arrival_p99_ms: metrics.arrival_latency.quantile_ms(0.99),
        decode_secs: secs(&metrics.decode_ns),
        score_secs: secs(&metrics.score_ns),
        sink_secs: secs(&metrics.sink_ns),
        checkpoint_secs: secs(&metrics.checkpoint_ns),
        state_secs: secs(&metrics.state_ns),
        poll_secs: secs(&metrics.poll_ns),
        remote_sink_secs: secs(&metrics.remote_sink_ns),
        peak_rss_mib: peak_rss_mib(),
        cpu_secs: cpu.user + cpu.system,
        drain_cpu_secs: drain.user + drain.system,
        drain_system_cpu_secs: drain.system,
        queries: Vec::new(),
    }
}

/// CPU time of this process so far, in seconds: (user, system); zero where /proc is not
/// there.
pub fn process_cpu_times() -> CpuTimes {
    // USER_HZ, the unit of /proc's times, is 100 on Linux.
    const TICKS_PER_SEC: f64 = 100.0;
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the command's closing parenthesis; utime and stime are the
            // 12th and 13th of them.
            let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some(CpuTimes {
                user: user / TICKS_PER_SEC,
                system: system / TICKS_PER_SEC,
            })
        })
        .unwrap_or_default()
}

/// A process's CPU time, in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    pub user: f64,
    pub system: f64,
}

/// VmHWM of this process, in MiB (0 where /proc is not there).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_bytes_share_a_buffer_and_large_ones_are_copied_alone() {
        let mut bytes = MessageBytes::new(4, 100);
        let (key, first) = bytes.copy(Some(b"card-1"), b"{\"amt\":1}");
        let (none, second) = bytes.copy(None, b"{\"amt\":2}");
        assert_eq!(key.as_deref(), Some(&b"card-1"[..]));
        assert_eq!(
            (&first[..], none, &second[..]),
            (&b"{\"amt\":1}"[..], None, &b"{\"amt\":2}"[..])
        );
        // One buffer (2 KiB for 4 rows): the second message follows the first in it.
        assert_eq!(first.as_ptr().wrapping_add(first.len()), second.as_ptr());
        // Over max_message_bytes: its own allocation, the shared buffer not grown.
        let large = vec![b'x'; 101];
        let (_, copied) = bytes.copy(None, &large);
        assert_eq!(&copied[..], &large[..]);
        let (_, after) = bytes.copy(None, b"{}");
        assert_eq!(second.as_ptr().wrapping_add(second.len()), after.as_ptr());
        // Full: a new buffer; what was handed out is unchanged.
        for _ in 0..30 {
            bytes.copy(None, &[b'y'; 90]);
        }
        assert_eq!(&first[..], b"{\"amt\":1}");
    }

    #[test]
    fn batch_deadline_counts_from_produce_time_within_bounds() {
        let polled = Instant::now();
        let wait = Duration::from_millis(50);
        // No timestamp: a full wait from polling.
        assert_eq!(batch_deadline(polled, wait, None), polled + wait);
        // Produced 30 ms ago: 20 ms left (allow the clock to move a few ms meanwhile).
        let left = batch_deadline(polled, wait, Some(now_ms() - 30)) - polled;
        assert!(
            left <= Duration::from_millis(20) && left >= Duration::from_millis(10),
            "{left:?}"
        );
        // Produced long ago (or a producer clock behind): close at once.
        assert_eq!(
            batch_deadline(polled, wait, Some(now_ms() - 60_000)),
            polled
        );
        // A producer clock ahead: never longer than a full wait.
        assert_eq!(
            batch_deadline(polled, wait, Some(now_ms() + 60_000)),
            polled + wait
        );
    }
}
