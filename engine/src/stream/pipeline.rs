//! One micro-batch from messages to sinks, and the checkpoint that makes progress durable.
//!
//! Order of work for a micro-batch: decode and validate (bad messages → dead letters) →
//! set aside repeated transactions (→ dead letters; see
//! [`risksense_formats::message::drop_repeats`]: the first copy wins) → the scoring plan
//! (its card windows read the cards' history and stage the batch's) → the inline sinks
//! (archive, live window) → the background sinks (result store, Kafka) in a task that
//! overlaps the next micro-batch, retried until they hold the data → the staged history
//! commits.
//!
//! The pipeline knows sinks only through [`Sink`] (see `risksense_connectors::sink` for
//! the protocol). A partition's checkpoint (its turn comes from the
//! [`CheckpointCoordinator`]) snapshots its offset and history on the poll loop and cuts
//! each sink's output ([`Sink::begin_commit`]); then, in a background task, it waits for
//! the sink tasks of the rows before it, prepares the sinks' commits (the archive seals its
//! file), saves the state with the offset (naming what was prepared) and commits the sinks
//! (the archive publishes). When that task is done, its offset may be committed to Kafka.
//! (Run on the loop, the seal's fsync and the save stalled every row behind them:
//! BENCHMARKS.md, streaming latency.) Results are visible in the store as soon as a
//! batch's task finishes; offsets are committed only at checkpoints, after everything
//! before them is durable.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::oneshot;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use risksense_common::metrics::{StreamMetrics, ms_between, now_ms};
use risksense_common::schema::idx;
use risksense_connectors::sink::{
    DeadLetter, PendingCommit, Placement, Sink, SinkBatch, SinkReport,
};
use risksense_formats::message::{Incoming, decode_with_limit, drop_repeats, partition_of};
use risksense_query::scorer::StreamScorer;
use risksense_store::{Checkpoint, DeltaSaved, Store};
use risksense_udfs::windows::{CardHistory, HistorySnapshot, Seen, trans_num_hash};

use super::checkpoint::{CheckpointCoordinator, PartitionOffset};
use super::config::StreamConfig;
use crate::error::EngineError;

pub use risksense_connectors::sink::{ERROR_HEADER, SOURCE_HEADER};

pub struct Pipeline {
    config: StreamConfig,
    scorer: StreamScorer,
    /// Where checkpoints are saved (the result store).
    store: Store,
    sinks: Vec<Arc<dyn Sink>>,
    /// The per-card history of the scoring plan's window functions (the scorer's).
    history: Arc<CardHistory>,
    coordinator: CheckpointCoordinator,
    /// Set after an error: nothing may be checkpointed any more (the process must stop and
    /// resume from the last good checkpoint).
    poisoned: bool,
    metrics: Arc<StreamMetrics>,
    shutdown: Arc<AtomicBool>,
    /// The background sinks' writes of the last micro-batches, oldest first, still
    /// running while the next one is scored (at most [`MAX_SINK_TASKS`]).
    in_flight: VecDeque<SinkTask>,
    /// Per ordered sink (by index in `sinks`): signalled when the newest task's write to it
    /// has finished; the next task's write waits for it.
    turns: HashMap<usize, oneshot::Receiver<()>>,
    /// A partition checkpoint running in the background (at most one at a time).
    pending: Option<PendingCheckpoint>,
    /// Per partition, the checkpoint the next one can be a delta on.
    chains: HashMap<i32, Chain>,
    /// The next micro-batch's place in the stream.
    seq: u64,
}

/// The last checkpoint taken of a partition: the parent of the next, if that is a delta.
#[derive(Debug, Clone, Copy)]
struct Chain {
    offset: i64,
    /// Deltas on the last whole checkpoint, up to `offset`.
    deltas: usize,
}

/// A micro-batch's background writes, running as a task. The poll loop and a checkpoint
/// may both wait for it (its outcome is shared); aborting it stops the writes.
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
                Err(source) => Err(Arc::new(EngineError::Task {
                    what: "a micro-batch's sink writes",
                    source,
                })),
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

/// Micro-batches whose background writes may run at once. One at a time left Redis idle
/// between a batch's reply and the next batch's commands (while the poll loop was still
/// scoring), and one slow write held up every batch behind it. Unordered sinks' writes
/// commute (Redis: hashes and sorted sets by key, the alert marker is atomic); ordered
/// ones (Kafka) still go out in batch order (see `turns`).
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
    /// Saved, and the sinks' output committed.
    Saved,
    /// Another instance saved a newer checkpoint: this one was refused (the sinks' output
    /// since the last checkpoint is discarded).
    Refused,
}

/// The durable part of one partition's checkpoint, from a snapshot taken on the poll loop:
/// wait for the sink tasks of the rows before `offset`, prepare the sinks' commits, save
/// the state with the offset (and the prepared commit's token), commit the sinks.
struct CheckpointJob {
    partition: i32,
    offset: i64,
    /// The partition's history and sinks' states at the cut, encoded by the job: a big
    /// history (many cards) takes long to encode, and the stream does not wait for it.
    history: Arc<HistorySnapshot>,
    /// Saved as a delta on the checkpoint at this offset (only the cards changed since
    /// it), or whole (None, or if that checkpoint is not the one stored).
    parent: Option<i64>,
    sink_states: Vec<(&'static str, Vec<u8>)>,
    in_flight: Vec<SinkTask>,
    commits: Vec<Box<dyn PendingCommit>>,
    store: Store,
    group: String,
    topic: String,
    metrics: Arc<StreamMetrics>,
    shutdown: Arc<AtomicBool>,
}

impl CheckpointJob {
    async fn run(mut self) -> Result<CheckpointOutcome, EngineError> {
        for task in std::mem::take(&mut self.in_flight) {
            task.join().await?;
        }
        // The checkpoint record has one slot for a prepared commit's token (the archive's
        // sealed file): a second two-phase sink would need a record with one per sink.
        let mut token = None;
        for commit in &mut self.commits {
            if let Some(prepared) = commit.prepare().await? {
                if token.is_some() {
                    return Err(EngineError::State(
                        "two sinks prepared commits; a checkpoint records one".to_string(),
                    ));
                }
                token = Some(prepared);
            }
        }
        let history = self.history.clone();
        let encode = |delta: bool| {
            let (history, sink_states) = (history.clone(), self.sink_states.clone());
            async move {
                tokio::task::spawn_blocking(move || {
                    let bytes = if delta {
                        history.to_delta_ipc()
                    } else {
                        history.to_ipc()
                    };
                    bytes.map(|bytes| risksense_connectors::sink::pack_state(bytes, sink_states))
                })
                .await
                .map_err(|e| EngineError::State(format!("encoding a checkpoint: {e}")))?
                .map_err(EngineError::from)
            }
        };
        // A delta first if there is a parent; at most once more, whole, if the stored
        // checkpoint is not that parent (a save this one follows was lost, or another
        // instance's came between).
        let mut parent = self.parent;
        loop {
            let checkpoint = Checkpoint {
                offset: self.offset,
                state: encode(parent.is_some()).await?,
                archive_file: token.clone(),
                deltas: Vec::new(),
            };
            let saved = retry(
                &self.metrics,
                &self.shutdown,
                "saving a checkpoint",
                || async {
                    let (group, topic, partition) = (&self.group, &self.topic, self.partition);
                    Ok(match parent {
                        Some(parent) => {
                            self.store
                                .save_checkpoint_delta(group, topic, partition, parent, &checkpoint)
                                .await?
                        }
                        None if self
                            .store
                            .save_checkpoint(group, topic, partition, &checkpoint)
                            .await? =>
                        {
                            DeltaSaved::Saved
                        }
                        None => DeltaSaved::Behind,
                    })
                },
            )
            .await?;
            match saved {
                DeltaSaved::Saved => return self.publish(true),
                DeltaSaved::Behind => return self.publish(false),
                DeltaSaved::NotParent => parent = None,
            }
        }
    }

    /// After the save: commits the sinks' output if it was saved.
    fn publish(self, saved: bool) -> Result<CheckpointOutcome, EngineError> {
        if !saved {
            // Another instance owns this partition now and is further along: its rows are
            // its own; ours past its checkpoint stay hidden (the commits are dropped).
            tracing::warn!(
                partition = self.partition,
                offset = self.offset,
                "a newer checkpoint exists; not publishing"
            );
            return Ok(CheckpointOutcome::Refused);
        }
        for commit in self.commits {
            commit.commit()?;
        }
        Ok(CheckpointOutcome::Saved)
    }
}

/// Why a retried step gave up.
fn interrupted(what: &str) -> EngineError {
    EngineError::State(format!("stopped while {what} was being retried"))
}

impl Pipeline {
    /// The handle the scoring plan's model functions read: changed between micro-batches
    /// only (see `risksense_udfs::control`).
    pub fn models(&self) -> &Arc<risksense_udfs::ModelHandle> {
        self.scorer.model()
    }

    /// A pipeline scoring with `scorer` (which must keep a history: the stream's) into
    /// `sinks`, saving checkpoints in `store`.
    pub fn new(
        config: StreamConfig,
        scorer: StreamScorer,
        store: Store,
        sinks: Vec<Arc<dyn Sink>>,
        metrics: Arc<StreamMetrics>,
        shutdown: Arc<AtomicBool>,
    ) -> Result<Self, EngineError> {
        let history = scorer.history().cloned().ok_or_else(|| {
            EngineError::State("the stream's scorer keeps no history".to_string())
        })?;
        let coordinator = CheckpointCoordinator::new(config.checkpoint_interval());
        Ok(Self {
            config,
            scorer,
            store,
            sinks,
            history,
            coordinator,
            poisoned: false,
            metrics,
            shutdown,
            in_flight: VecDeque::new(),
            turns: HashMap::new(),
            pending: None,
            chains: HashMap::new(),
            seq: 0,
        })
    }

    /// True when a partition's checkpoint is due (see [`CheckpointCoordinator::due`]), or
    /// a background checkpoint has finished and its offset can be committed.
    pub fn checkpoint_due(&self) -> bool {
        if let Some(pending) = &self.pending {
            return pending.task.is_finished();
        }
        self.coordinator.due()
    }

    /// Finishes the background checkpoint if it is done, then starts one for the dirty
    /// partition checkpointed longest ago when it is time. Returns the offsets that may
    /// now be committed to Kafka (a finished checkpoint's).
    pub async fn checkpoint_next(&mut self) -> Result<Vec<PartitionOffset>, EngineError> {
        let mut commit = Vec::new();
        if let Some(pending) = &self.pending {
            if !pending.task.is_finished() {
                return Ok(commit);
            }
            commit.extend(self.finish_pending().await?);
        }
        if !self.coordinator.due() || self.poisoned {
            return Ok(commit);
        }
        let Some(partition) = self.coordinator.next_partition() else {
            return Ok(commit);
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
        StreamMetrics::add(
            &self.metrics.checkpoint_ns,
            started.elapsed().as_nanos() as u64,
        );
        Ok(commit)
    }

    /// Snapshots `partition` for its checkpoint: its next offset and history, and each
    /// sink's output cut (the partition's next rows go to what comes next).
    fn checkpoint_job(
        &mut self,
        partition: i32,
        in_flight: Vec<SinkTask>,
    ) -> Result<CheckpointJob, EngineError> {
        let offset = self.coordinator.begin(partition)?;
        self.history
            .evict_idle(partition, self.config.state_idle_secs);
        let history = Arc::new(self.history.snapshot(partition));
        // A delta while the chain is short (a restore reads it all) and the delta would be
        // small beside the whole.
        let previous = self.chains.get(&partition).copied();
        let parent = previous
            .filter(|chain| {
                chain.deltas < self.config.checkpoint_full_every
                    && history.changed_cards() as f64
                        <= self.config.checkpoint_delta_share * history.cards() as f64
            })
            .map(|chain| chain.offset);
        self.chains.insert(
            partition,
            Chain {
                offset,
                deltas: match (parent, previous) {
                    (Some(_), Some(chain)) => chain.deltas + 1,
                    _ => 0,
                },
            },
        );
        let mut sink_states = Vec::new();
        for sink in &self.sinks {
            if let Some(state) = sink.snapshot(partition)? {
                sink_states.push((sink.name(), state));
            }
        }
        let commits = self
            .sinks
            .iter()
            .filter_map(|sink| sink.begin_commit(partition))
            .collect();
        Ok(CheckpointJob {
            partition,
            offset,
            history,
            parent,
            sink_states,
            in_flight,
            commits,
            store: self.store.clone(),
            group: self.config.group.clone(),
            topic: self.config.topic.clone(),
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
        })
    }

    /// Waits for the background checkpoint, if any, and returns its offset to commit. A
    /// failed checkpoint poisons the pipeline.
    async fn finish_pending(&mut self) -> Result<Option<PartitionOffset>, EngineError> {
        let Some(pending) = self.pending.take() else {
            return Ok(None);
        };
        let outcome = match pending.task.await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(error)) => {
                self.abandon();
                return Err(error);
            }
            Err(source) => {
                self.abandon();
                return Err(EngineError::Task {
                    what: "a checkpoint",
                    source,
                });
            }
        };
        Ok(self.record_outcome(pending.partition, pending.offset, outcome))
    }

    /// Books a partition checkpoint's outcome: the offset to commit when it was saved and
    /// the partition is still ours. A refused one is tried again at the partition's turn.
    fn record_outcome(
        &mut self,
        partition: i32,
        offset: i64,
        outcome: CheckpointOutcome,
    ) -> Option<PartitionOffset> {
        StreamMetrics::add(&self.metrics.checkpoints, 1);
        match outcome {
            CheckpointOutcome::Refused => {
                self.coordinator.refused(partition);
                None
            }
            CheckpointOutcome::Saved => self.coordinator.saved(partition, offset),
        }
    }

    pub fn partitions(&self) -> Vec<i32> {
        self.coordinator.partitions()
    }

    async fn retry<T, F, Fut>(&self, what: &str, step: F) -> Result<T, EngineError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, EngineError>>,
    {
        retry(&self.metrics, &self.shutdown, what, step).await
    }

    /// Waits for the previous micro-batches' background writes.
    async fn wait_in_flight(&mut self) -> Result<(), EngineError> {
        while let Some(task) = self.in_flight.pop_front() {
            task.join().await?;
        }
        Ok(())
    }

    /// Scores one micro-batch and writes it to every sink.
    pub async fn process(&mut self, mut messages: Vec<Incoming>) -> Result<(), EngineError> {
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

        // Decoded: a rejected message's bytes are copied into its dead letter (out of the
        // shared buffer, which taking them over could keep whole).
        let dead_letters: Vec<DeadLetter> = decoded
            .rejected
            .into_iter()
            .map(|(m, reason)| {
                let message = &mut messages[m];
                DeadLetter {
                    key: message.key.as_deref().map(<[u8]>::to_vec),
                    payload: message.payload.to_vec(),
                    reason,
                    source: format!(
                        "{}/{}/{}",
                        self.config.topic, message.partition, message.offset
                    ),
                }
            })
            .collect();
        let dead = dead_letters.len() as u64;
        let produced_ms: Vec<i64> = messages.iter().filter_map(|m| m.timestamp_ms).collect();
        let started = Instant::now();
        let was_scored = !scored.is_empty();
        let per_model = count_per_model(&scored);
        let batch = SinkBatch::new(self.seq, scored, dead_letters).with_input(
            decoded.batch.iter().cloned().collect(),
            produced_ms.iter().min().copied(),
        );
        self.seq += 1;
        self.write_sinks(batch, produced_ms, closed_at).await?;
        StreamMetrics::add(&self.metrics.sink_ns, started.elapsed().as_nanos() as u64);
        for ((slot, model), (rows, flagged)) in per_model {
            self.metrics.models.add(slot, &model, rows, flagged);
        }

        // The batch is scored and in the sinks (the background ones finish before the next
        // checkpoint): what its card windows staged becomes history, its offsets progress.
        if was_scored && let Some(batch) = &decoded.batch {
            let started = Instant::now();
            self.commit_history(batch)?;
            StreamMetrics::add(&self.metrics.state_ns, started.elapsed().as_nanos() as u64);
        }
        self.coordinator
            .processed_all(messages.iter().map(|m| (m.partition, m.offset)));
        StreamMetrics::add(&self.metrics.batches, 1);
        StreamMetrics::add(&self.metrics.dead_letters, dead);
        Ok(())
    }

    async fn score(&self, batch: &RecordBatch) -> Result<Vec<RecordBatch>, EngineError> {
        // Whatever a failed attempt staged is not history.
        self.history.discard_staged();
        Ok(self.scorer.score(vec![batch.clone()]).await?)
    }

    /// Commits the history the batch's scoring staged, each card under the partition its
    /// rows came from (in their row_id, see `risksense_formats::message::row_id`), and
    /// remembers the rows' trans_nums for the duplicate check.
    fn commit_history(&self, batch: &RecordBatch) -> Result<(), EngineError> {
        let cards = batch.column(idx::CC_NUM).as_primitive::<Int64Type>();
        let ids = batch.column(idx::ROW_ID).as_primitive::<Int64Type>();
        let partition_of_card: foldhash::HashMap<i64, i32> = cards
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

    /// Inline sinks now; the background ones in a task that runs while the next
    /// micro-batch is scored, once fewer than [`MAX_SINK_TASKS`] tasks (and
    /// [`MAX_SINK_ROWS`] rows) are in flight.
    async fn write_sinks(
        &mut self,
        batch: SinkBatch,
        produced_ms: Vec<i64>,
        closed_at: Instant,
    ) -> Result<(), EngineError> {
        for sink in &self.sinks {
            if sink.placement() == Placement::Inline {
                sink.write(&batch).await?;
            }
        }
        let rows = batch.num_rows();
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
        let mut writes = Vec::new();
        for (index, sink) in self.sinks.iter().enumerate() {
            let Placement::Background { ordered } = sink.placement() else {
                continue;
            };
            let turn = ordered.then(|| {
                let (done, next) = oneshot::channel();
                Turn {
                    after: self.turns.insert(index, next),
                    done,
                }
            });
            writes.push(BackgroundWrite {
                sink: sink.clone(),
                turn,
            });
        }
        let release_columns = !writes.iter().any(|write| write.sink.reads_columns());
        let task = background_writes(
            batch,
            release_columns,
            writes,
            self.metrics.clone(),
            self.shutdown.clone(),
            produced_ms,
            closed_at,
        );
        self.in_flight.push_back(SinkTask::spawn(task, rows));
        Ok(())
    }

    /// Makes everything processed so far durable (on a revoke and at shutdown): finishes
    /// the background checkpoint, then checkpoints every partition with new rows here and
    /// now. Returns every owned partition's offset, to commit to Kafka synchronously (the
    /// next owner of a partition resumes exactly there).
    pub async fn checkpoint_all(&mut self) -> Result<Vec<PartitionOffset>, EngineError> {
        self.finish_pending().await?;
        if self.poisoned {
            tracing::warn!(
                "not checkpointing after an error: the next run resumes from the last good checkpoint"
            );
            return Ok(Vec::new());
        }
        let started = Instant::now();
        // Everything before the offsets below must be in the sinks first.
        if let Err(error) = self.wait_in_flight().await {
            self.abandon();
            return Err(error);
        }
        for partition in self.coordinator.dirty() {
            if let Err(error) = self.checkpoint_now(partition).await {
                // The partition was marked clean when its snapshot was taken: give up
                // everything, so that no later checkpoint or commit goes past it.
                self.abandon();
                return Err(error);
            }
        }
        self.coordinator.all_done();
        StreamMetrics::add(
            &self.metrics.checkpoint_ns,
            started.elapsed().as_nanos() as u64,
        );
        Ok(self.coordinator.offsets())
    }

    /// Checkpoints `partition` here and now, after every sink task it waits for is done.
    async fn checkpoint_now(&mut self, partition: i32) -> Result<(), EngineError> {
        let job = self.checkpoint_job(partition, Vec::new())?;
        let offset = job.offset;
        let outcome = job.run().await?;
        self.record_outcome(partition, offset, outcome);
        Ok(())
    }

    /// Hands `partitions` over to another instance: checkpoints everything first (so the
    /// next owner resumes exactly where this one stopped), then lets them go. Returns the
    /// offsets to commit. On a failed checkpoint everything since the last one is given
    /// up (the next owner resumes from the previous checkpoint) and the error returned.
    pub async fn revoke(
        &mut self,
        partitions: &[i32],
    ) -> Result<Vec<PartitionOffset>, EngineError> {
        // A failed checkpoint_all has already given everything up.
        let checkpointed = self.checkpoint_all().await;
        self.forget(partitions);
        checkpointed
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
                if let Some(token) = &checkpoint.archive_file {
                    for sink in &self.sinks {
                        sink.recover(partition, token)?;
                    }
                }
                let (history, mut sink_states) =
                    risksense_connectors::sink::unpack_state(&checkpoint.state)?;
                let mut deltas = Vec::with_capacity(checkpoint.deltas.len());
                for delta in &checkpoint.deltas {
                    // Each delta carries the sinks' whole states: the last one's count.
                    let (history, sinks) = risksense_connectors::sink::unpack_state(delta)?;
                    deltas.push(history);
                    sink_states = sinks;
                }
                for sink in &self.sinks {
                    sink.restore_state(partition, sink_states.get(sink.name()).map(Vec::as_slice))?;
                }
                let restored = self.history.restore(partition, &history).and_then(|()| {
                    deltas
                        .iter()
                        .try_for_each(|delta| self.history.apply_delta(partition, delta))
                });
                if let Err(error) = restored {
                    // Resume at the offset anyway: refusing would stop the stream for good.
                    // Features lack history until the cards are seen again.
                    tracing::error!(partition, %error, "checkpointed state unreadable; resuming with empty state");
                    self.history.restore(partition, &[])?;
                }
                self.chains.insert(
                    partition,
                    Chain {
                        offset: checkpoint.offset,
                        deltas: checkpoint.deltas.len(),
                    },
                );
                let (cards, kept) = self.history.size(partition);
                tracing::info!(
                    partition,
                    offset = checkpoint.offset,
                    cards,
                    kept,
                    "resuming partition from its checkpoint"
                );
                self.coordinator.assign(partition, Some(checkpoint.offset));
                Ok(Some(checkpoint.offset))
            }
            None => {
                tracing::info!(partition, "no checkpoint for partition: starting fresh");
                self.chains.remove(&partition);
                for sink in &self.sinks {
                    sink.restore_state(partition, None)?;
                }
                self.history.restore(partition, &[])?;
                self.coordinator.assign(partition, None);
                Ok(None)
            }
        }
    }

    /// Lets go of partitions another instance now owns. Rows since their last checkpoint
    /// (none after a successful revoke checkpoint) are dropped: the next owner reads them.
    pub fn forget(&mut self, partitions: &[i32]) {
        // A checkpoint running for one of them: its rows are the next owner's to
        // checkpoint. Aborting stops the job unless its save is already on its way to
        // the store; a save that lands after the next owner restored would make that
        // owner's saves be refused until it passes this offset. This happens only when
        // partitions are lost without a revoke (a revoke checkpoints and finishes this
        // job first).
        if let Some(pending) = self
            .pending
            .take_if(|pending| partitions.contains(&pending.partition))
        {
            pending.task.abort();
        }
        for partition in partitions {
            self.chains.remove(partition);
            self.history.forget(*partition);
            self.coordinator.forget(*partition);
            for sink in &self.sinks {
                sink.abort(Some(*partition));
            }
        }
    }

    /// Gives up everything since the last checkpoint (after an error): the sinks drop
    /// what they hold uncommitted and nothing more is checkpointed, so a restart reads
    /// those rows again from the last good checkpoint.
    pub fn abandon(&mut self) {
        self.poisoned = true;
        for task in self.in_flight.drain(..) {
            task.abort.abort();
        }
        self.turns.clear();
        if let Some(pending) = self.pending.take() {
            pending.task.abort();
        }
        for sink in &self.sinks {
            sink.abort(None);
        }
        self.history.clear();
        self.coordinator.clear();
    }
}

/// Retries `step` with backoff (100 ms doubling to 5 s) until it succeeds or the engine is
/// asked to stop: an outage pauses the stream, it never drops data. An error no retry can
/// fix ([`EngineError::is_retryable`]: WRONGTYPE, OOM, NOAUTH, a refused record) is
/// returned at once: the stream stops with it rather than retry forever.
pub(crate) async fn retry<T, F, Fut>(
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

/// An ordered sink's place in the order of writes: it writes after `after` fires and fires
/// `done` when it has written (or given up: the next batch's write may go on).
struct Turn {
    after: Option<oneshot::Receiver<()>>,
    done: oneshot::Sender<()>,
}

/// One background sink's write of a micro-batch.
struct BackgroundWrite {
    sink: Arc<dyn Sink>,
    turn: Option<Turn>,
}

/// A micro-batch's background writes, all sinks at once, each retried until it holds the
/// data; then the batch's latencies and the store's counts go to the metrics.
async fn background_writes(
    mut batch: SinkBatch,
    release_columns: bool,
    writes: Vec<BackgroundWrite>,
    metrics: Arc<StreamMetrics>,
    shutdown: Arc<AtomicBool>,
    produced_ms: Vec<i64>,
    closed_at: Instant,
) -> Result<(), EngineError> {
    let started = Instant::now();
    if release_columns {
        // Off the poll loop, as the writes: the records are all they need.
        batch.release_columns()?;
    }
    let batch = Arc::new(batch);
    let waited_ms = started.duration_since(closed_at).as_millis() as u64;
    let results = futures::future::join_all(writes.into_iter().map(|write| {
        let batch = batch.clone();
        let (metrics, shutdown) = (&metrics, &shutdown);
        async move {
            let BackgroundWrite { sink, turn } = write;
            let (after, done) = match turn {
                Some(Turn { after, done }) => (after, Some(done)),
                None => (None, None),
            };
            // The previous batch's write first (its task may have been dropped: go on).
            if let Some(after) = after {
                let _ = after.await;
            }
            let what = format!("writing a micro-batch to the {} sink", sink.name());
            let written = retry(metrics, shutdown, &what, || async {
                Ok(sink.write(&batch).await?)
            })
            .await;
            if let Some(done) = done {
                let _ = done.send(());
            }
            (sink.name(), written, started.elapsed().as_millis() as u64)
        }
    }))
    .await;
    // Per-batch timings at debug level (`-v`): which sink a slow batch waited for.
    tracing::debug!(
        rows = batch.num_rows(),
        waited_ms,
        sinks_ms = ?results.iter().map(|(name, _, ms)| (*name, *ms)).collect::<Vec<_>>(),
        close_to_sinks_ms = closed_at.elapsed().as_millis() as u64,
        "micro-batch in the background sinks"
    );
    let mut reports: Vec<SinkReport> = Vec::with_capacity(results.len());
    for (_, written, _) in results {
        reports.push(written?);
    }
    let visible_ms = now_ms();
    for produced in produced_ms {
        metrics
            .visible_latency
            .record(ms_between(produced, visible_ms), 1);
    }
    metrics
        .batch_latency
        .record(closed_at.elapsed().as_millis() as u64, 1);
    for stored in reports.iter().filter_map(|r| r.stored) {
        StreamMetrics::add(&metrics.rows_scored, stored.rows);
        StreamMetrics::add(&metrics.anomalies, stored.anomalies);
        StreamMetrics::add(&metrics.new_alerts, stored.new_alerts);
    }
    StreamMetrics::add(&metrics.remote_sink_ns, started.elapsed().as_nanos() as u64);
    Ok(())
}

/// Rows and flags per (slot, model id) in scored batches: the champion's `model_id` and
/// `is_anomaly` (the alerts: with a supervised model, either's flag, as the labels count
/// them from the Redis record), the challenger's `challenger_id` and `challenger_flag`,
/// the supervised model's `supervised_id` and `fraud_flag`.
fn count_per_model(
    scored: &[RecordBatch],
) -> std::collections::BTreeMap<(&'static str, String), (u64, u64)> {
    let mut counts = std::collections::BTreeMap::new();
    for batch in scored {
        for (slot, id, flag) in [
            ("champion", "model_id", "is_anomaly"),
            ("challenger", "challenger_id", "challenger_flag"),
            ("supervised", "supervised_id", "fraud_flag"),
        ] {
            let (Some(ids), Some(flags)) = (
                batch
                    .column_by_name(id)
                    .and_then(|c| c.as_string_opt::<i32>()),
                batch.column_by_name(flag).and_then(|c| c.as_boolean_opt()),
            ) else {
                continue;
            };
            // No model in the slot (the usual challenger and supervised slots): no row to
            // visit.
            if arrow::array::Array::null_count(ids) == arrow::array::Array::len(ids) {
                continue;
            }
            // Keyed by the ids as the column holds them: a string is made per model, not
            // per row (a micro-batch has one model per slot).
            let mut by_id: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
            for row in 0..batch.num_rows() {
                if arrow::array::Array::is_null(ids, row) {
                    continue;
                }
                let entry = by_id.entry(ids.value(row)).or_default();
                entry.0 += 1;
                entry.1 += u64::from(arrow::array::Array::is_valid(flags, row) && flags.value(row));
            }
            for (id, (rows, flagged)) in by_id {
                let entry: &mut (u64, u64) = counts.entry((slot, id.to_string())).or_default();
                entry.0 += rows;
                entry.1 += flagged;
            }
        }
    }
    counts
}
