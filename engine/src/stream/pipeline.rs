//! One micro-batch from messages to sinks, and the checkpoint that makes progress durable.
//!
//! Order of work for a micro-batch: decode and validate (bad messages → dead-letter
//! topic) → set aside repeated transactions (→ dead-letter topic; see
//! [`risksense_formats::message::drop_repeats`]: the first copy wins) → the scoring plan (its card windows read the cards' history and stage the batch's) → the
//! archive and live window → Redis and Kafka (alerts, dead letters) in a task that overlaps
//! the next micro-batch, retried until they hold the data → the staged history commits.
//! A partition's checkpoint snapshots its offset and history on the poll loop, then, in a
//! background task, waits for the sink task of the rows before it, seals the partition's
//! archive file, saves the state with the offset it belongs to (naming the sealed file) and
//! publishes the file; when that task is done the loop commits the offset to Kafka. (Run
//! on the loop, the seal's fsync and the save stalled every row behind them: BENCHMARKS.md,
//! streaming latency.) Results are visible in Redis as soon as a batch's task finishes;
//! offsets are committed only at checkpoints, after everything before them is durable.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::oneshot;

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use risksense_store::{Alert, Checkpoint, ResultStore};
use risksense_udfs::windows::{CardHistory, Seen, trans_num_hash};

use super::config::StreamConfig;
use crate::error::EngineError;
use risksense_common::metrics::{StreamMetrics, ms_between, now_ms};
use risksense_common::schema::idx;
use risksense_connectors::archive::{ParquetArchive, UnsealedFile, complete_publish};
use risksense_formats::message::{Incoming, decode_with_limit, drop_repeats, partition_of};
use risksense_query::scorer::StreamScorer;

/// Header of a dead letter that says why it could not be scored.
pub const ERROR_HEADER: &str = "risksense-error";
/// Header of a dead letter that says where it came from: `topic/partition/offset`.
pub const SOURCE_HEADER: &str = "risksense-source";

pub struct Pipeline {
    config: StreamConfig,
    scorer: StreamScorer,
    store: ResultStore,
    producer: FutureProducer,
    archive: Option<ParquetArchive>,
    /// The per-card history of the scoring plan's window functions (the scorer's).
    history: Arc<CardHistory>,
    /// The partitions this instance owns.
    owned: HashSet<i32>,
    /// Per partition: the next offset to read (everything before it is in the sinks).
    next_offsets: HashMap<i32, i64>,
    /// Partitions with rows since their last checkpoint.
    dirty: HashSet<i32>,
    /// Set after an error: nothing may be checkpointed any more (the process must stop and
    /// resume from the last good checkpoint).
    poisoned: bool,
    metrics: Arc<StreamMetrics>,
    shutdown: Arc<AtomicBool>,
    /// The last checkpoint of any partition (staggered checkpoints: see `checkpoint_due`).
    last_checkpoint: Instant,
    /// When each partition was last checkpointed (one not checkpointed yet goes first).
    checkpointed_at: HashMap<i32, Instant>,
    live: Option<Arc<risksense_query::live::LiveWindow>>,
    /// The Redis and Kafka writes of the last micro-batches, oldest first, still running
    /// while the next one is scored (at most [`MAX_SINK_TASKS`]).
    in_flight: VecDeque<SinkTask>,
    /// Signalled when the newest sink task has sent its Kafka records: the next task's
    /// records wait for it, so alerts reach Kafka in batch order.
    kafka_turn: Option<oneshot::Receiver<()>>,
    /// A partition checkpoint running in the background (at most one at a time).
    pending: Option<PendingCheckpoint>,
}

/// A micro-batch's Redis and Kafka writes, running as a task. The poll loop and a
/// checkpoint may both wait for it (its outcome is shared); aborting it stops the writes.
#[derive(Clone)]
struct SinkTask {
    done: Shared<BoxFuture<'static, Result<(), Arc<EngineError>>>>,
    abort: tokio::task::AbortHandle,
    rows: usize,
}

impl SinkTask {
    fn spawn(
        writes: impl Future<Output = Result<(), EngineError>> + Send + 'static,
        rows: usize,
    ) -> Self {
        let handle = tokio::spawn(writes);
        let abort = handle.abort_handle();
        let done = async move {
            match handle.await {
                Ok(outcome) => outcome.map_err(Arc::new),
                Err(error) => Err(Arc::new(EngineError::State(format!(
                    "sink task failed: {error}"
                )))),
            }
        }
        .boxed()
        .shared();
        Self { done, abort, rows }
    }

    async fn join(self) -> Result<(), EngineError> {
        self.done.await.map_err(EngineError::Sink)
    }
}

/// Micro-batches whose Redis and Kafka writes may run at once. One at a time left Redis
/// idle between a batch's reply and the next batch's commands (while the poll loop was
/// still scoring), and one slow write held up every batch behind it. The writes are
/// idempotent and commute (hashes and sorted sets by key, the alert marker is atomic), and
/// Kafka records still go out in batch order (see `kafka_turn`).
const MAX_SINK_TASKS: usize = 3;
/// Rows those writes may hold at once (three default-size micro-batches of a drain): the
/// bound on their memory whatever `batch_rows` is.
const MAX_SINK_ROWS: usize = 12_288;

/// A partition checkpoint finishing in the background: see [`CheckpointJob`].
struct PendingCheckpoint {
    partition: i32,
    offset: i64,
    task: tokio::task::JoinHandle<Result<CheckpointOutcome, EngineError>>,
}

/// What a partition checkpoint did.
enum CheckpointOutcome {
    /// Saved, and its archive file (if any) published.
    Saved { published: bool },
    /// Another instance saved a newer checkpoint: this one was refused.
    Refused,
}

/// The durable part of one partition's checkpoint, from a snapshot taken on the poll loop:
/// wait for the sink task of the rows before `offset`, seal the archive file holding them,
/// save the state with the offset (naming the file), publish the file.
struct CheckpointJob {
    partition: i32,
    offset: i64,
    state: Vec<u8>,
    in_flight: Vec<SinkTask>,
    file: Option<UnsealedFile>,
    store: ResultStore,
    group: String,
    topic: String,
    metrics: Arc<StreamMetrics>,
    shutdown: Arc<AtomicBool>,
}

impl CheckpointJob {
    async fn run(self) -> Result<CheckpointOutcome, EngineError> {
        // Until the checkpoint is saved, its archive file holds rows no checkpoint names:
        // dropped (the job failed, was refused or aborted), the file goes too.
        let mut unsaved = self.file.as_ref().map(UnsealedFile::discard_on_drop);
        for task in self.in_flight {
            task.join().await?;
        }
        let sealed = match self.file {
            Some(file) => Some(
                tokio::task::spawn_blocking(move || file.seal())
                    .await
                    .map_err(|e| {
                        EngineError::State(format!("sealing an archive file failed: {e}"))
                    })??,
            ),
            None => None,
        };
        let checkpoint = Checkpoint {
            offset: self.offset,
            state: self.state,
            archive_file: sealed.as_ref().map(|f| f.name.clone()),
        };
        let saved = retry(
            &self.metrics,
            &self.shutdown,
            "saving a checkpoint",
            || async {
                Ok(self
                    .store
                    .save_checkpoint(&self.group, &self.topic, self.partition, &checkpoint)
                    .await?)
            },
        )
        .await?;
        if !saved {
            // Another instance owns this partition now and is further along: its rows are
            // its own; ours past its checkpoint stay hidden.
            tracing::warn!(
                partition = self.partition,
                offset = self.offset,
                "a newer checkpoint exists; not publishing"
            );
            return Ok(CheckpointOutcome::Refused);
        }
        if let Some(unsaved) = unsaved.as_mut() {
            unsaved.keep();
        }
        if let Some(sealed) = &sealed {
            sealed.publish()?;
        }
        Ok(CheckpointOutcome::Saved {
            published: sealed.is_some(),
        })
    }
}

/// Why a retried step gave up.
fn interrupted(what: &str) -> EngineError {
    EngineError::State(format!("stopped while {what} was being retried"))
}

impl Pipeline {
    pub fn new(
        config: StreamConfig,
        scorer: StreamScorer,
        store: ResultStore,
        producer: FutureProducer,
        metrics: Arc<StreamMetrics>,
        shutdown: Arc<AtomicBool>,
        live: Option<Arc<risksense_query::live::LiveWindow>>,
    ) -> Result<Self, EngineError> {
        let archive = if config.archive.as_os_str().is_empty() {
            None
        } else {
            Some(ParquetArchive::new(&config.archive, &config.instance)?)
        };
        let history = scorer.history().cloned().ok_or_else(|| {
            EngineError::State("the stream's scorer keeps no history".to_string())
        })?;
        Ok(Self {
            config,
            scorer,
            store,
            producer,
            archive,
            history,
            owned: HashSet::new(),
            next_offsets: HashMap::new(),
            dirty: HashSet::new(),
            poisoned: false,
            metrics,
            shutdown,
            last_checkpoint: Instant::now(),
            checkpointed_at: HashMap::new(),
            live,
            in_flight: VecDeque::new(),
            kafka_turn: None,
            pending: None,
        })
    }

    /// Checkpoints are staggered: one partition at a time, every interval / partitions, so
    /// each partition is still checkpointed about once per interval and the work of one
    /// (sealing its archive file, saving its state) runs in the background while the
    /// stream goes on. Also true when a background checkpoint has finished and its offset
    /// can be committed.
    pub fn checkpoint_due(&self) -> bool {
        if let Some(pending) = &self.pending {
            return pending.task.is_finished();
        }
        let owned = self.owned.len().max(1) as u32;
        !self.dirty.is_empty()
            && self.last_checkpoint.elapsed() >= self.config.checkpoint_interval() / owned
    }

    /// Finishes the background checkpoint if it is done, then starts one for the dirty
    /// partition checkpointed longest ago when it is time (see `checkpoint_due`).
    pub async fn checkpoint_next<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), EngineError> {
        if let Some(pending) = &self.pending {
            if !pending.task.is_finished() {
                return Ok(());
            }
            self.finish_pending(consumer).await?;
        }
        if !self.checkpoint_due() || self.poisoned {
            return Ok(());
        }
        let oldest = self
            .dirty
            .iter()
            .copied()
            .min_by_key(|p| (self.checkpointed_at.get(p).copied(), *p));
        let Some(partition) = oldest else {
            return Ok(());
        };
        let started = Instant::now();
        // The rows before the offset are either written (earlier sink tasks were waited
        // for) or in the tasks in flight, which the checkpoint waits for too.
        let in_flight = self.in_flight.iter().cloned().collect();
        let job = self.checkpoint_job(partition, in_flight)?;
        let offset = job.offset;
        self.pending = Some(PendingCheckpoint {
            partition,
            offset,
            task: tokio::spawn(job.run()),
        });
        self.last_checkpoint = Instant::now();
        StreamMetrics::add(
            &self.metrics.checkpoint_ns,
            started.elapsed().as_nanos() as u64,
        );
        Ok(())
    }

    /// Snapshots `partition` for its checkpoint: its next offset and history, and its
    /// archive file (the partition's next rows start a new one). The partition is clean
    /// until new rows arrive.
    fn checkpoint_job(
        &mut self,
        partition: i32,
        in_flight: Vec<SinkTask>,
    ) -> Result<CheckpointJob, EngineError> {
        let offset = self.next_offsets.get(&partition).copied().ok_or_else(|| {
            EngineError::State(format!("partition {partition} has rows but no offset"))
        })?;
        // (Also when the save is refused, so that the others get their turn.)
        self.checkpointed_at.insert(partition, Instant::now());
        self.dirty.remove(&partition);
        self.history
            .evict_idle(partition, self.config.state_idle_secs);
        let state = self.history.to_ipc(partition)?;
        Ok(CheckpointJob {
            partition,
            offset,
            state,
            in_flight,
            file: self.archive.as_mut().and_then(|a| a.take(partition)),
            store: self.store.clone(),
            group: self.config.group.clone(),
            topic: self.config.topic.clone(),
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
        })
    }

    /// Waits for the background checkpoint, if any, and commits its offset to Kafka
    /// (asynchronously: the store's checkpoint is what a restart resumes from; the commit
    /// only shows progress). A failed checkpoint poisons the pipeline.
    async fn finish_pending<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), EngineError> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let outcome = match pending.task.await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(error)) => {
                self.abandon();
                return Err(error);
            }
            Err(error) => {
                self.abandon();
                return Err(EngineError::State(format!(
                    "checkpoint task failed: {error}"
                )));
            }
        };
        if self.record_outcome(pending.partition, outcome)
            && self.owned.contains(&pending.partition)
        {
            let mut offsets = TopicPartitionList::new();
            offsets.add_partition_offset(
                &self.config.topic,
                pending.partition,
                Offset::Offset(pending.offset),
            )?;
            if let Err(error) = consumer.commit(&offsets, CommitMode::Async) {
                tracing::warn!(%error, "committing offsets to Kafka failed (the checkpoint holds them)");
            }
        }
        Ok(())
    }

    /// Books a partition checkpoint's outcome; true when it was saved. A refused one is
    /// tried again at the partition's next turn.
    fn record_outcome(&mut self, partition: i32, outcome: CheckpointOutcome) -> bool {
        StreamMetrics::add(&self.metrics.checkpoints, 1);
        match outcome {
            CheckpointOutcome::Refused => {
                self.dirty.insert(partition);
                false
            }
            CheckpointOutcome::Saved { published } => {
                if published && let Some(archive) = self.archive.as_mut() {
                    archive.count_published();
                }
                true
            }
        }
    }

    pub fn partitions(&self) -> Vec<i32> {
        let mut partitions: Vec<i32> = self.owned.iter().copied().collect();
        partitions.sort();
        partitions
    }

    async fn retry<T, F, Fut>(&self, what: &str, step: F) -> Result<T, EngineError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, EngineError>>,
    {
        retry(&self.metrics, &self.shutdown, what, step).await
    }

    /// Waits for the previous micro-batch's Redis and Kafka writes.
    async fn wait_in_flight(&mut self) -> Result<(), EngineError> {
        while let Some(task) = self.in_flight.pop_front() {
            task.join().await?;
        }
        Ok(())
    }

    /// Scores one micro-batch and writes it to every sink.
    pub async fn process(&mut self, messages: Vec<Incoming>) -> Result<(), EngineError> {
        if messages.is_empty() {
            return Ok(());
        }
        if self.poisoned {
            // Nothing processed now could ever be checkpointed: stop, and let a restart
            // resume from the last good checkpoint.
            return Err(EngineError::State(
                "the stream gave up after an earlier error; restart to resume from the last checkpoint"
                    .to_string(),
            ));
        }
        let closed_at = Instant::now();
        let started = Instant::now();
        let decoded = decode_with_limit(&messages, self.config.max_message_bytes)?;
        // A card's rows are remembered once its batch is in the sinks (commit_history), so
        // a batch read again after a restart is not a repeat of itself.
        let decoded = drop_repeats(decoded, |keys| self.history.first_seen(keys))?;
        StreamMetrics::add(&self.metrics.decode_ns, started.elapsed().as_nanos() as u64);
        StreamMetrics::add(&self.metrics.messages, messages.len() as u64);

        let dead: Vec<(usize, String)> = decoded.rejected;
        let mut scored: Vec<RecordBatch> = Vec::new();
        if let Some(batch) = &decoded.batch {
            let started = Instant::now();
            let mut attempt = self.score(batch).await;
            if let Err(error) = &attempt {
                tracing::warn!(%error, "scoring failed; trying once more");
                attempt = self.score(batch).await;
            }
            match attempt {
                Ok(batches) => scored = batches,
                Err(error) => {
                    // The rows passed validation, so this is no bad input to dead-letter
                    // (that advanced the offsets past rows never scored): a fault of the
                    // engine or the model. Stop, committing nothing past what the sinks
                    // hold; a restart resumes from the last checkpoint.
                    self.history.discard_staged();
                    self.poisoned = true;
                    return Err(EngineError::ScoringFault {
                        rows: batch.num_rows(),
                        source: Box::new(error),
                    });
                }
            }
            StreamMetrics::add(&self.metrics.score_ns, started.elapsed().as_nanos() as u64);
        }

        let started = Instant::now();
        self.write_sinks(&messages, &dead, &scored, closed_at)
            .await?;
        StreamMetrics::add(&self.metrics.sink_ns, started.elapsed().as_nanos() as u64);

        // The batch is scored and in the sinks (Redis and Kafka finish before the next
        // checkpoint): what its card windows staged becomes history, its offsets progress.
        if !scored.is_empty()
            && let Some(batch) = &decoded.batch
        {
            let started = Instant::now();
            self.commit_history(batch)?;
            StreamMetrics::add(&self.metrics.state_ns, started.elapsed().as_nanos() as u64);
        }
        for message in &messages {
            let next = self.next_offsets.entry(message.partition).or_insert(0);
            *next = (*next).max(message.offset + 1);
            self.owned.insert(message.partition);
            self.dirty.insert(message.partition);
        }
        StreamMetrics::add(&self.metrics.batches, 1);
        StreamMetrics::add(&self.metrics.dead_letters, dead.len() as u64);
        Ok(())
    }

    async fn score(&self, batch: &RecordBatch) -> Result<Vec<RecordBatch>, EngineError> {
        // Whatever a failed attempt staged is not history.
        self.history.discard_staged();
        Ok(self.scorer.score(vec![batch.clone()]).await?)
    }

    /// Commits the history the batch's scoring staged, each card under the partition its
    /// rows came from (in their row_id, see decode::row_id), and remembers the rows'
    /// trans_nums for the duplicate check.
    fn commit_history(&self, batch: &RecordBatch) -> Result<(), EngineError> {
        let cards = batch.column(idx::CC_NUM).as_primitive::<Int64Type>();
        let ids = batch.column(idx::ROW_ID).as_primitive::<Int64Type>();
        let partition_of_card: HashMap<i64, i32> = cards
            .values()
            .iter()
            .zip(ids.values())
            .map(|(card, id)| (*card, partition_of(*id)))
            .collect();
        self.history
            .commit_staged(|card| partition_of_card.get(&card).copied())?;
        let trans_nums = batch.column(idx::TRANS_NUM).as_string::<i32>();
        let times = batch
            .column(idx::TRANS_DATE_TRANS_TIME)
            .as_primitive::<TimestampMicrosecondType>();
        self.history.remember((0..batch.num_rows()).map(|row| {
            let id = ids.value(row);
            (
                partition_of(id),
                cards.value(row),
                Seen {
                    hash: trans_num_hash(trans_nums.value(row)),
                    row_id: id,
                    secs: times
                        .value(row)
                        .div_euclid(risksense_common::time::MICROS_PER_SECOND),
                },
            )
        }));
        Ok(())
    }

    /// Local sinks (archive, live window) now; Redis and Kafka in a task that runs while
    /// the next micro-batch is scored, after the previous batch's task has finished.
    async fn write_sinks(
        &mut self,
        messages: &[Incoming],
        dead: &[(usize, String)],
        scored: &[RecordBatch],
        closed_at: Instant,
    ) -> Result<(), EngineError> {
        if let Some(archive) = self.archive.as_mut() {
            for batch in scored {
                for (partition, rows) in split_by_partition(batch)? {
                    archive.append(partition, &rows)?;
                }
            }
        }
        if let Some(live) = &self.live {
            for batch in scored {
                live.push(batch.clone());
            }
        }
        let dead_letters: Vec<KafkaRecord> = dead
            .iter()
            .map(|(m, reason)| {
                let message = &messages[*m];
                KafkaRecord {
                    topic: self.config.dead_letter_topic.clone(),
                    key: message.key.clone(),
                    payload: message.payload.clone(),
                    headers: vec![
                        (ERROR_HEADER, reason.clone()),
                        (
                            SOURCE_HEADER,
                            format!(
                                "{}/{}/{}",
                                self.config.topic, message.partition, message.offset
                            ),
                        ),
                    ],
                }
            })
            .collect();
        let produced_ms: Vec<i64> = messages.iter().filter_map(|m| m.timestamp_ms).collect();
        let rows: usize = scored.iter().map(RecordBatch::num_rows).sum();
        let over_budget = |in_flight: &VecDeque<SinkTask>| {
            let held: usize = in_flight.iter().map(|task| task.rows).sum();
            in_flight.len() >= MAX_SINK_TASKS
                || (!in_flight.is_empty() && held + rows > MAX_SINK_ROWS)
        };
        while over_budget(&self.in_flight) {
            if let Some(oldest) = self.in_flight.pop_front() {
                oldest.join().await?;
            }
        }
        let (kafka_done, next_turn) = oneshot::channel();
        let kafka_turn = self.kafka_turn.replace(next_turn);
        let task = RemoteSinks {
            store: self.store.clone(),
            producer: self.producer.clone(),
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
            alerts_topic: self.config.alerts_topic.clone(),
        };
        let scored = scored.to_vec();
        let writes = task.write(
            scored,
            dead_letters,
            KafkaTurn {
                after: kafka_turn,
                done: kafka_done,
            },
            produced_ms,
            closed_at,
        );
        self.in_flight.push_back(SinkTask::spawn(writes, rows));
        Ok(())
    }

    /// Makes everything processed so far durable (on a revoke and at shutdown): finishes
    /// the background checkpoint, then checkpoints every partition with new rows here and
    /// now, and commits all the offsets to Kafka synchronously (the next owner of a
    /// partition resumes exactly there).
    pub async fn checkpoint<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), EngineError> {
        self.finish_pending(consumer).await?;
        if self.poisoned {
            tracing::warn!(
                "not checkpointing after an error: the next run resumes from the last good checkpoint"
            );
            return Ok(());
        }
        let started = Instant::now();
        // Everything before the offsets below must be in Redis and Kafka first.
        if let Err(error) = self.wait_in_flight().await {
            self.abandon();
            return Err(error);
        }
        let mut partitions: Vec<(i32, i64)> =
            self.next_offsets.iter().map(|(p, o)| (*p, *o)).collect();
        partitions.sort();
        let mut offsets = TopicPartitionList::new();
        for (partition, offset) in &partitions {
            offsets.add_partition_offset(
                &self.config.topic,
                *partition,
                Offset::Offset(*offset),
            )?;
            if !self.dirty.contains(partition) {
                continue;
            }
            let outcome = self.checkpoint_job(*partition, Vec::new())?.run().await?;
            self.record_outcome(*partition, outcome);
        }
        if offsets.count() > 0
            && let Err(error) = consumer.commit(&offsets, CommitMode::Sync)
        {
            // The checkpoint in the store is what a restart resumes from; the Kafka commit
            // only shows progress (lag) to the group, so a failed commit loses nothing.
            tracing::warn!(%error, "committing offsets to Kafka failed (the checkpoint holds them)");
        }
        self.last_checkpoint = Instant::now();
        StreamMetrics::add(
            &self.metrics.checkpoint_ns,
            started.elapsed().as_nanos() as u64,
        );
        Ok(())
    }

    /// Takes over `partition`: its state and offset from the last checkpoint. Returns the
    /// offset to start reading at, or None to start at the group's committed offset.
    pub async fn restore(&mut self, partition: i32) -> Result<Option<i64>, EngineError> {
        let loaded = self
            .retry("loading a checkpoint", || async {
                Ok(self
                    .store
                    .load_checkpoint(&self.config.group, &self.config.topic, partition)
                    .await?)
            })
            .await?;
        match loaded {
            Some(checkpoint) => {
                if let (Some(archive), Some(file)) = (&self.archive, &checkpoint.archive_file) {
                    // The previous owner may have stopped between saving and publishing.
                    complete_publish(archive.dir(), file)?;
                }
                if let Err(error) = self.history.restore(partition, &checkpoint.state) {
                    // Resume at the offset anyway: refusing would stop the stream for good.
                    // Features lack history until the cards are seen again.
                    tracing::error!(partition, %error, "checkpointed state unreadable; resuming with empty state");
                    self.history.restore(partition, &[])?;
                }
                let (cards, kept) = self.history.size(partition);
                tracing::info!(
                    partition,
                    offset = checkpoint.offset,
                    cards,
                    kept,
                    "resuming partition from its checkpoint"
                );
                self.owned.insert(partition);
                self.next_offsets.insert(partition, checkpoint.offset);
                Ok(Some(checkpoint.offset))
            }
            None => {
                tracing::info!(partition, "no checkpoint for partition: starting fresh");
                self.history.restore(partition, &[])?;
                self.owned.insert(partition);
                self.next_offsets.remove(&partition);
                Ok(None)
            }
        }
    }

    /// Lets go of partitions another instance now owns. Rows since their last checkpoint
    /// (none after a successful revoke checkpoint) are dropped: the next owner reads them.
    pub fn forget(&mut self, partitions: &[i32]) {
        // A checkpoint running for one of them: its rows are the next owner's to
        // checkpoint. Aborting stops the job unless its save is already on its way to
        // Redis; a save that lands after the next owner restored would make that owner's
        // saves be refused until it passes this offset. This happens only when partitions
        // are lost without a revoke (a revoke checkpoints and finishes this job first).
        if let Some(pending) = self
            .pending
            .take_if(|pending| partitions.contains(&pending.partition))
        {
            pending.task.abort();
        }
        for partition in partitions {
            self.history.forget(*partition);
            self.owned.remove(partition);
            self.next_offsets.remove(partition);
            self.checkpointed_at.remove(partition);
            self.dirty.remove(partition);
            if let Some(archive) = self.archive.as_mut() {
                archive.abandon(*partition);
            }
        }
    }

    /// Gives up everything since the last checkpoint (after an error): unfinished archive
    /// files are dropped and nothing more is checkpointed, so a restart reads those rows
    /// again from the last good checkpoint.
    pub fn abandon(&mut self) {
        self.poisoned = true;
        for task in self.in_flight.drain(..) {
            task.abort.abort();
        }
        self.kafka_turn = None;
        if let Some(pending) = self.pending.take() {
            pending.task.abort();
        }
        if let Some(archive) = self.archive.as_mut() {
            archive.abandon_all();
        }
        self.history.clear();
        self.owned.clear();
        self.next_offsets.clear();
        self.dirty.clear();
    }

    pub fn archive_files(&self) -> u64 {
        self.archive.as_ref().map_or(0, |a| a.files_written())
    }
}

/// Retries `step` with backoff (100 ms doubling to 5 s) until it succeeds or the engine is
/// asked to stop: an outage pauses the stream, it never drops data. An error no retry can
/// fix ([`EngineError::is_retryable`]: WRONGTYPE, OOM, NOAUTH, a refused record) is
/// returned at once: the stream stops with it rather than retry forever.
async fn retry<T, F, Fut>(
    metrics: &StreamMetrics,
    shutdown: &AtomicBool,
    what: &str,
    mut step: F,
) -> Result<T, EngineError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, EngineError>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match step().await {
            Ok(value) => return Ok(value),
            Err(error) if !error.is_retryable() => {
                tracing::error!(%error, "{what} failed, and no retry can fix it: stopping");
                return Err(error);
            }
            Err(error) => {
                StreamMetrics::add(&metrics.sink_retries, 1);
                tracing::warn!(%error, retry_in = ?delay, "{what} failed; retrying");
                if shutdown.load(Ordering::Relaxed) {
                    return Err(interrupted(what));
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The Redis and Kafka half of a micro-batch's sinks, run as a task.
struct RemoteSinks {
    store: ResultStore,
    producer: FutureProducer,
    metrics: Arc<StreamMetrics>,
    shutdown: Arc<AtomicBool>,
    alerts_topic: String,
}

impl RemoteSinks {
    async fn write(
        self,
        scored: Vec<RecordBatch>,
        dead_letters: Vec<KafkaRecord>,
        turn: KafkaTurn,
        produced_ms: Vec<i64>,
        closed_at: Instant,
    ) -> Result<(), EngineError> {
        let started = Instant::now();
        let mut rows = Vec::new();
        for batch in &scored {
            rows.extend(risksense_store::from_batch(batch)?);
        }
        // The rows are all the writes need: free the (wide) batches while they run.
        drop(scored);
        let mut pending = dead_letters;
        if !self.alerts_topic.is_empty() {
            for row in rows.iter().filter(|r| r.is_anomaly) {
                let payload = serde_json::to_vec(&Alert::from(row))
                    .map_err(risksense_connectors::ConnectorError::from)?;
                pending.push(KafkaRecord {
                    topic: self.alerts_topic.clone(),
                    key: Some(row.cc_num.to_string().into_bytes()),
                    payload,
                    headers: Vec::new(),
                });
            }
        }
        // Kafka (dead letters and alerts) and Redis at the same time. Alerts go out at
        // least once: a batch replayed after a crash sends its alerts again (readers dedupe
        // by trans_num; the Redis alerts stream never repeats).
        // Each retry sends only the records that failed the time before.
        let pending = parking_lot::Mutex::new(pending);
        let kafka = async {
            // The previous batch's records first (its task may have been dropped: go on).
            if let Some(after) = turn.after {
                let _ = after.await;
            }
            let sent = retry(
                &self.metrics,
                &self.shutdown,
                "sending alerts and dead letters to Kafka",
                || async {
                    let records = std::mem::take(&mut *pending.lock());
                    let attempted = records.len() as u64;
                    let (failed, first) = send_all(&self.producer, records).await;
                    if failed.is_empty() {
                        return Ok(());
                    }
                    let error = risksense_connectors::ConnectorError::Delivery {
                        failed: failed.len() as u64,
                        attempted,
                        first,
                    };
                    *pending.lock() = failed;
                    Err(error.into())
                },
            )
            .await;
            let _ = turn.done.send(());
            sent
        };
        let redis = retry(
            &self.metrics,
            &self.shutdown,
            "writing results to the store",
            || async { Ok(self.store.write(&rows).await?) },
        );
        // Per-batch timings at debug level (`-v`): which sink a slow batch waited for.
        let waited_ms = started.duration_since(closed_at).as_millis() as u64;
        let sinks_started = Instant::now();
        let since_start_ms = || sinks_started.elapsed().as_millis() as u64;
        let redis = async { (redis.await, since_start_ms()) };
        let kafka = async { (kafka.await, since_start_ms()) };
        let ((kafka, kafka_ms), (outcome, redis_ms)) = tokio::join!(kafka, redis);
        tracing::debug!(
            rows = rows.len(),
            waited_ms,
            redis_ms,
            kafka_ms,
            close_to_sinks_ms = closed_at.elapsed().as_millis() as u64,
            "micro-batch in the remote sinks"
        );
        kafka?;
        let outcome = outcome?;
        let visible_ms = now_ms();
        for produced in produced_ms {
            self.metrics
                .visible_latency
                .record(ms_between(produced, visible_ms), 1);
        }
        self.metrics
            .batch_latency
            .record(closed_at.elapsed().as_millis() as u64, 1);
        StreamMetrics::add(&self.metrics.rows_scored, outcome.rows);
        StreamMetrics::add(&self.metrics.anomalies, outcome.anomalies);
        StreamMetrics::add(&self.metrics.new_alerts, outcome.new_alerts);
        StreamMetrics::add(
            &self.metrics.remote_sink_ns,
            started.elapsed().as_nanos() as u64,
        );
        Ok(())
    }
}

/// A sink task's place in the order of Kafka sends: it sends after `after` fires and fires
/// `done` when it has sent.
struct KafkaTurn {
    after: Option<oneshot::Receiver<()>>,
    done: oneshot::Sender<()>,
}

struct KafkaRecord {
    topic: String,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

/// Dead letters the broker refuses as too large (over the dead-letter topic's
/// `max.message.bytes`, 1 MiB by default) are cut to this; a header says how long the
/// original was. Up to the broker's limit the original bytes go out intact.
const MAX_DEAD_LETTER_BYTES: usize = 900 * 1024;

/// Sends every record, waits for every acknowledgement, and returns the ones that failed
/// with the first failure's reason.
async fn send_all(
    producer: &FutureProducer,
    records: Vec<KafkaRecord>,
) -> (Vec<KafkaRecord>, String) {
    let mut deliveries = Vec::with_capacity(records.len());
    for record in &records {
        let mut headers = OwnedHeaders::new();
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut future_record = FutureRecord::to(&record.topic)
            .payload(&record.payload)
            .headers(headers);
        if let Some(key) = &record.key {
            future_record = future_record.key(key);
        }
        deliveries.push(producer.send(future_record, Duration::from_secs(30)));
    }
    let results = futures::future::join_all(deliveries).await;
    let mut failed = Vec::new();
    let mut first = String::new();
    for (mut record, result) in records.into_iter().zip(results) {
        if let Err((error, _)) = result {
            tracing::warn!(%error, topic = %record.topic, "send failed");
            if first.is_empty() {
                first = error.to_string();
            }
            if matches!(
                error,
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge
                )
            ) && record.payload.len() > MAX_DEAD_LETTER_BYTES
            {
                record
                    .headers
                    .push(("risksense-truncated-from", record.payload.len().to_string()));
                record.payload.truncate(MAX_DEAD_LETTER_BYTES);
            }
            failed.push(record);
        }
    }
    (failed, first)
}

/// The rows of a stream batch (decoded or scored) grouped by the partition they came from
/// (see [`risksense_formats::message::row_id`]).
fn split_by_partition(batch: &RecordBatch) -> Result<Vec<(i32, RecordBatch)>, EngineError> {
    let ids = batch
        .column_by_name("row_id")
        .ok_or_else(|| EngineError::State("scored rows lack row_id".to_string()))?
        .as_primitive::<Int64Type>();
    let partitions: Vec<i32> = ids.values().iter().map(|id| partition_of(*id)).collect();
    let Some(first) = partitions.first() else {
        return Ok(Vec::new());
    };
    if partitions.iter().all(|p| p == first) {
        return Ok(vec![(*first, batch.clone())]);
    }
    let distinct: HashSet<i32> = partitions.iter().copied().collect();
    let mut out = Vec::with_capacity(distinct.len());
    for partition in distinct {
        let mask: BooleanArray = partitions.iter().map(|p| Some(*p == partition)).collect();
        out.push((
            partition,
            arrow::compute::filter_record_batch(batch, &mask)?,
        ));
    }
    Ok(out)
}
