//! One standing query while it runs: its plan, its window state, its counters, its
//! subscribers and the task that delivers its rows to its output.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::TimestampMicrosecondType;
use parking_lot::Mutex;
use risksense_common::metrics::{LatencyHistogram, ms_between, now_ms};
use risksense_connectors::sink::split_by_partition;
use risksense_store::{OutputRecord, Store};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, watch};

use crate::ddl::Definition;
use crate::error::ContinuousError;
use crate::output::Output;
use crate::plan::{PlanKind, StandingPlan};
use crate::state::{MERGE_AFTER_BATCHES, PartitionSnapshot, WindowState};

/// Result batches a subscriber may fall behind by before it is dropped: a slow client
/// never slows the stream.
pub const SUBSCRIBER_BUFFER: usize = 256;
/// Rows of a query's latest results kept for `GET /v1/queries/{name}` (`recent`).
pub const RECENT_ROWS: usize = 1000;
/// Emissions waiting for the output task before the stream waits for it.
const EMIT_QUEUE: usize = 64;

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Status {
    Running,
    /// Stopped by an error no retry can fix; the stream goes on without it.
    Failed {
        reason: String,
    },
}

/// Counters of one query.
#[derive(Default)]
pub struct QueryStats {
    pub rows_in: AtomicU64,
    pub rows_out: AtomicU64,
    /// Rows that came after every window holding them was emitted (dropped, counted).
    pub late_rows: AtomicU64,
    pub windows_emitted: AtomicU64,
    /// Subscribers disconnected for falling too far behind.
    pub subscribers_dropped: AtomicU64,
    /// From the produce time of the earliest message of the micro-batch that closed a
    /// window to its output acknowledged (ms).
    pub emit_latency: LatencyHistogram,
    /// From the watermark passing a window's end (the query taking the micro-batch that
    /// moved it) to the window's output acknowledged (ms): the query's own part of
    /// `emit_latency`, without the stream's queueing before it.
    pub close_latency: LatencyHistogram,
    rate: Mutex<RateMeter>,
}

/// Rows per second over the last seconds (updated as rows come).
struct RateMeter {
    since: Instant,
    rows_in: u64,
    rows_out: u64,
    in_per_s: f64,
    out_per_s: f64,
}

impl Default for RateMeter {
    fn default() -> Self {
        Self {
            since: Instant::now(),
            rows_in: 0,
            rows_out: 0,
            in_per_s: 0.0,
            out_per_s: 0.0,
        }
    }
}

impl QueryStats {
    fn count(&self, rows_in: u64, rows_out: u64) {
        self.rows_in.fetch_add(rows_in, Ordering::Relaxed);
        self.rows_out.fetch_add(rows_out, Ordering::Relaxed);
        let mut rate = self.rate.lock();
        rate.rows_in += rows_in;
        rate.rows_out += rows_out;
        let elapsed = rate.since.elapsed();
        if elapsed >= Duration::from_secs(2) {
            let secs = elapsed.as_secs_f64();
            *rate = RateMeter {
                in_per_s: rate.rows_in as f64 / secs,
                out_per_s: rate.rows_out as f64 / secs,
                ..RateMeter::default()
            };
        }
    }

    /// (rows in, rows out) per second; zero once nothing came for a while.
    pub fn rates(&self) -> (f64, f64) {
        let rate = self.rate.lock();
        if rate.since.elapsed() > Duration::from_secs(10) {
            return (0.0, 0.0);
        }
        (rate.in_per_s, rate.out_per_s)
    }
}

/// A batch of results on its way to the output.
struct Emission {
    seq: u64,
    rows: Vec<RecordBatch>,
    /// After it is delivered, every window ending at or before this is emitted.
    progress: Option<i64>,
    produced_ms: Option<i64>,
    /// When the query took the micro-batch that produced it.
    taken_at: Instant,
}

pub struct RunningQuery {
    pub definition: Definition,
    pub plan: StandingPlan,
    /// Identifies the query's state layout: checkpointed state of another text is ignored.
    pub fingerprint: String,
    /// Created for one subscriber, gone with it: not saved, not checkpointed.
    pub temporary: bool,
    window: Option<tokio::sync::Mutex<WindowState>>,
    pub stats: QueryStats,
    results: broadcast::Sender<Arc<RecordBatch>>,
    recent: Mutex<VecDeque<RecordBatch>>,
    status: Mutex<Status>,
    emitter: mpsc::Sender<Emission>,
    sent: AtomicU64,
    acked: watch::Receiver<u64>,
    stopped: AtomicBool,
}

/// Where a windowed query saves the end of the last window it delivered.
pub fn progress_key(prefix: &str, scope: &str, name: &str) -> String {
    format!("{prefix}:continuous:{scope}:{name}:progress")
}

/// One micro-batch of a query's source, split by Kafka partition once for every windowed
/// query that reads it (the split copies the rows).
pub struct Input<'a> {
    pub batches: &'a [RecordBatch],
    by_partition: std::sync::OnceLock<Vec<(i32, RecordBatch)>>,
}

impl<'a> Input<'a> {
    pub fn new(batches: &'a [RecordBatch]) -> Self {
        Self {
            batches,
            by_partition: std::sync::OnceLock::new(),
        }
    }

    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    fn by_partition(&self) -> Result<&[(i32, RecordBatch)], ContinuousError> {
        if let Some(split) = self.by_partition.get() {
            return Ok(split);
        }
        let mut split = Vec::new();
        for batch in self.batches {
            split.extend(split_by_partition(batch)?);
        }
        Ok(self.by_partition.get_or_init(|| split))
    }
}

impl RunningQuery {
    /// Starts a planned query: its output task runs until the query is dropped.
    pub fn start(
        definition: Definition,
        plan: StandingPlan,
        output: Option<Box<dyn Output>>,
        progress: Option<(Store, String)>,
        temporary: bool,
    ) -> Arc<Self> {
        let fingerprint = fingerprint(&definition);
        let window = match &plan.kind {
            PlanKind::Windowed(windowed) => Some(tokio::sync::Mutex::new(WindowState::new(
                windowed.spec,
                definition.lateness_us,
                windowed.bin_column,
                windowed.state_schema.clone(),
            ))),
            PlanKind::Stateless { .. } => None,
        };
        let (emitter, queue) = mpsc::channel(EMIT_QUEUE);
        let (acked_tx, acked) = watch::channel(0);
        let query = Arc::new(Self {
            definition,
            plan,
            fingerprint,
            temporary,
            window,
            stats: QueryStats::default(),
            results: broadcast::channel(SUBSCRIBER_BUFFER).0,
            recent: Mutex::new(VecDeque::new()),
            status: Mutex::new(Status::Running),
            emitter,
            sent: AtomicU64::new(0),
            acked,
            stopped: AtomicBool::new(false),
        });
        tokio::spawn(deliver(
            Arc::downgrade(&query),
            queue,
            output,
            progress,
            acked_tx,
        ));
        query
    }

    pub fn name(&self) -> &str {
        &self.definition.name
    }

    pub fn status(&self) -> Status {
        self.status.lock().clone()
    }

    pub fn is_windowed(&self) -> bool {
        self.window.is_some()
    }

    /// Stops delivering (the query was deleted).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// A receiver of the query's results from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RecordBatch>> {
        self.results.subscribe()
    }

    pub fn subscribers(&self) -> usize {
        self.results.receiver_count()
    }

    /// The latest result rows, oldest first.
    pub fn recent(&self) -> Vec<RecordBatch> {
        self.recent.lock().iter().cloned().collect()
    }

    /// Runs the query over one micro-batch of its source's rows; results go to the
    /// subscribers at once and to the output in order.
    pub async fn process(
        &self,
        input: &Input<'_>,
        produced_ms: Option<i64>,
    ) -> Result<(), ContinuousError> {
        if !matches!(self.status(), Status::Running) {
            return Ok(());
        }
        let taken_at = Instant::now();
        let rows_in = input.rows();
        let (out, progress) = match &self.plan.kind {
            PlanKind::Stateless { plan } => {
                if rows_in == 0 {
                    return Ok(());
                }
                (
                    self.plan
                        .run_stateless(plan, input.batches.to_vec())
                        .await?,
                    None,
                )
            }
            PlanKind::Windowed(_) => self.process_windowed(input).await?,
        };
        let rows_out: usize = out.iter().map(RecordBatch::num_rows).sum();
        self.stats.count(rows_in as u64, rows_out as u64);
        if rows_out == 0 && progress.is_none() {
            return Ok(());
        }
        let out: Vec<RecordBatch> = out.into_iter().filter(|b| b.num_rows() > 0).collect();
        self.publish(&out);
        let seq = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
        let emission = Emission {
            seq,
            rows: out,
            progress,
            produced_ms,
            taken_at,
        };
        if self.emitter.send(emission).await.is_err() {
            self.fail("its output task stopped".to_string());
        }
        Ok(())
    }

    async fn process_windowed(
        &self,
        input: &Input<'_>,
    ) -> Result<(Vec<RecordBatch>, Option<i64>), ContinuousError> {
        let PlanKind::Windowed(windowed) = &self.plan.kind else {
            return Ok((Vec::new(), None));
        };
        let Some(window) = &self.window else {
            return Ok((Vec::new(), None));
        };
        let mut window = window.lock().await;
        for (partition, rows) in input.by_partition()? {
            let times = rows
                .column_by_name(&windowed.time_column)
                .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
                .ok_or_else(|| {
                    ContinuousError::State(format!("no event time {}", windowed.time_column))
                })?;
            let mut late = 0u64;
            let keep: BooleanArray = (0..rows.num_rows())
                .map(|row| {
                    let on_time = times.is_valid(row) && !window.is_late(times.value(row));
                    late += u64::from(!on_time);
                    Some(on_time)
                })
                .collect();
            if late > 0 {
                tracing::debug!(
                    query = self.name(),
                    partition,
                    late,
                    first = ?arrow::compute::min(times),
                    emitted_through = window.emitted_through,
                    partitions = ?window
                        .partitions
                        .iter()
                        .map(|(p, s)| (*p, s.max_event_us, s.last_row_at.map(|t| t.elapsed().as_millis())))
                        .collect::<Vec<_>>(),
                    "late rows dropped"
                );
            }
            self.stats.late_rows.fetch_add(late, Ordering::Relaxed);
            let on_time = if late > 0 {
                arrow::compute::filter_record_batch(rows, &keep)?
            } else {
                rows.clone()
            };
            let partial = if on_time.num_rows() > 0 {
                self.plan.partial(windowed, vec![on_time]).await?
            } else {
                Vec::new()
            };
            let state = window.partitions.entry(*partition).or_default();
            state.max_event_us = state.max_event_us.max(arrow::compute::max(times));
            state.last_row_at = Some(Instant::now());
            state
                .batches
                .extend(partial.into_iter().filter(|b| b.num_rows() > 0));
            if state.batches.len() > MERGE_AFTER_BATCHES {
                let merged = self
                    .plan
                    .reduce(windowed, std::mem::take(&mut state.batches))
                    .await?;
                state.batches = merged.into_iter().filter(|b| b.num_rows() > 0).collect();
            }
        }
        let Some(watermark) = window.watermark() else {
            return Ok((Vec::new(), None));
        };
        let through = window.spec.end_at_or_before(watermark);
        if through <= window.emitted_through {
            return Ok((Vec::new(), None));
        }
        let out = self.finish_windows(windowed, &window, through).await?;
        // Windows emitted: distinct starts among the results (sorted, then counted).
        let mut starts: Vec<i64> = Vec::new();
        for batch in &out {
            starts.extend_from_slice(
                batch
                    .column(windowed.window_output)
                    .as_primitive::<TimestampMicrosecondType>()
                    .values(),
            );
        }
        starts.sort_unstable();
        starts.dedup();
        self.stats
            .windows_emitted
            .fetch_add(starts.len() as u64, Ordering::Relaxed);
        window.prune(through)?;
        window.emitted_through = through;
        Ok((out, Some(through)))
    }

    /// The results of the windows ending after what was emitted and at or before
    /// `through`, with their `window_end`.
    async fn finish_windows(
        &self,
        windowed: &crate::plan::WindowedPlan,
        window: &WindowState,
        through: i64,
    ) -> Result<Vec<RecordBatch>, ContinuousError> {
        let closing = window.closing(through)?;
        let mut out = Vec::new();
        if closing.is_empty() {
            return Ok(out);
        }
        for batch in self.plan.finish(windowed, closing).await? {
            if batch.num_rows() > 0 {
                out.push(with_window_end(
                    &batch,
                    windowed.window_output,
                    window.spec.width_us,
                    &self.plan.output_schema,
                )?);
            }
        }
        Ok(out)
    }

    /// Closes every open window now (the end of a bounded input): returns their results.
    pub async fn close_all(&self) -> Result<Vec<RecordBatch>, ContinuousError> {
        let (PlanKind::Windowed(windowed), Some(window)) = (&self.plan.kind, &self.window) else {
            return Ok(Vec::new());
        };
        let mut window = window.lock().await;
        let out = self.finish_windows(windowed, &window, i64::MAX).await?;
        window.emitted_through = i64::MAX;
        window.partitions.clear();
        self.publish(&out);
        Ok(out)
    }

    fn publish(&self, rows: &[RecordBatch]) {
        for batch in rows {
            // No receiver is fine; a lagging one is told so when it next reads.
            let _ = self.results.send(Arc::new(batch.clone()));
        }
        let mut recent = self.recent.lock();
        recent.extend(rows.iter().cloned());
        let mut held: usize = recent.iter().map(RecordBatch::num_rows).sum();
        while held > RECENT_ROWS && recent.len() > 1 {
            if let Some(old) = recent.pop_front() {
                held -= old.num_rows();
            }
        }
    }

    pub fn fail(&self, reason: String) {
        tracing::error!(query = self.name(), %reason, "standing query stopped");
        *self.status.lock() = Status::Failed { reason };
    }

    /// The number of emissions handed to the output task so far: a checkpoint waits until
    /// they are delivered ([`Self::delivered`]).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Waits until emissions up to `seq` are delivered (or the query stopped).
    pub async fn delivered(&self, seq: u64) {
        let mut acked = self.acked.clone();
        let _ = acked.wait_for(|done| *done >= seq).await;
    }

    /// The window state, from the poll loop between micro-batches (nothing else holds it
    /// then: a query's state is only touched by the loop's own calls).
    fn window_now(
        &self,
    ) -> Result<Option<tokio::sync::MutexGuard<'_, WindowState>>, ContinuousError> {
        match &self.window {
            Some(window) => window
                .try_lock()
                .map(Some)
                .map_err(|_| ContinuousError::State("window state busy".to_string())),
            None => Ok(None),
        }
    }

    /// One partition's state for its checkpoint (None for stateless queries).
    pub fn snapshot(&self, partition: i32) -> Result<Option<PartitionSnapshot>, ContinuousError> {
        match self.window_now()? {
            Some(window) => Ok(Some(window.snapshot(partition)?)),
            None => Ok(None),
        }
    }

    pub fn restore(
        &self,
        partition: i32,
        snapshot: &PartitionSnapshot,
    ) -> Result<(), ContinuousError> {
        if let Some(mut window) = self.window_now()? {
            window.restore(partition, snapshot)?;
        }
        Ok(())
    }

    /// A partition assigned without a checkpoint.
    pub fn assign(&self, partition: i32) -> Result<(), ContinuousError> {
        if let Some(mut window) = self.window_now()? {
            window.assign(partition);
        }
        Ok(())
    }

    /// No window at or before `through` is emitted again (a delivered window, as saved).
    pub async fn skip_through(&self, through: i64) -> Result<(), ContinuousError> {
        if let Some(window) = &self.window {
            let mut window = window.lock().await;
            if through > window.emitted_through {
                window.emitted_through = through;
                window.prune(through)?;
            }
        }
        Ok(())
    }

    /// Drops what the query holds for `partition` (None: all): its next owner has it.
    pub fn forget(&self, partition: Option<i32>) {
        if let Ok(Some(mut window)) = self.window_now() {
            match partition {
                Some(p) => {
                    window.partitions.remove(&p);
                }
                None => window.partitions.clear(),
            }
        }
    }

    /// Rows of state held (all partitions).
    pub async fn state_rows(&self) -> usize {
        match &self.window {
            Some(window) => window
                .lock()
                .await
                .partitions
                .values()
                .map(|p| p.rows())
                .sum(),
            None => 0,
        }
    }
}

/// The query's results with `window_end` = the window's start + its width.
fn with_window_end(
    batch: &RecordBatch,
    window_output: usize,
    width_us: i64,
    schema: &arrow::datatypes::SchemaRef,
) -> Result<RecordBatch, ContinuousError> {
    let starts = batch
        .column(window_output)
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| {
            ContinuousError::State("the window column is not a timestamp".to_string())
        })?;
    let ends = starts
        .unary::<_, TimestampMicrosecondType>(|s| s + width_us)
        .with_data_type(starts.data_type().clone());
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns.push(Arc::new(ends));
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

fn fingerprint(definition: &Definition) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    definition.select.hash(&mut hasher);
    definition.lateness_us.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// The output task: delivers emissions in order, retrying while the error is retryable,
/// then saves the query's progress and acknowledges. It holds the query weakly (the query
/// holds the queue's sender): once the query is gone, what is left is acknowledged
/// undelivered.
async fn deliver(
    query: std::sync::Weak<RunningQuery>,
    mut queue: mpsc::Receiver<Emission>,
    output: Option<Box<dyn Output>>,
    progress: Option<(Store, String)>,
    acked: watch::Sender<u64>,
) {
    while let Some(emission) = queue.recv().await {
        if let Some(query) = query.upgrade() {
            deliver_one(&query, &emission, output.as_deref(), progress.as_ref()).await;
        }
        let _ = acked.send(emission.seq);
    }
    let _ = acked.send(u64::MAX);
}

/// One emission to the output (and the progress it makes), unless the query stopped or
/// failed.
async fn deliver_one(
    query: &RunningQuery,
    emission: &Emission,
    output: Option<&dyn Output>,
    progress: Option<&(Store, String)>,
) {
    let stopped = || query.stopped.load(Ordering::Relaxed);
    if !matches!(query.status(), Status::Running) || stopped() {
        return;
    }
    let mut delay = Duration::from_millis(100);
    loop {
        let mut result = match output {
            Some(output) if !emission.rows.is_empty() => output.write(&emission.rows).await,
            _ => Ok(()),
        };
        if result.is_ok()
            && let (Some(through), Some((store, key))) = (emission.progress, progress)
        {
            result = store
                .write_outputs(&[OutputRecord::Hash {
                    key: key.clone(),
                    fields: vec![("emitted_through".to_string(), through.to_string())],
                    ttl_secs: None,
                }])
                .await
                .map_err(ContinuousError::from);
        }
        match result {
            Ok(()) => break,
            Err(error) if error.is_retryable() && !stopped() => {
                tracing::warn!(query = query.name(), %error, retry_in = ?delay, "delivering results failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                query.fail(error.to_string());
                return;
            }
        }
    }
    if emission.progress.is_some() && !emission.rows.is_empty() {
        if let Some(produced) = emission.produced_ms {
            query
                .stats
                .emit_latency
                .record(ms_between(produced, now_ms()), 1);
        }
        let taken_ms = emission.taken_at.elapsed().as_millis();
        query
            .stats
            .close_latency
            .record(u64::try_from(taken_ms).unwrap_or(u64::MAX), 1);
    }
}
