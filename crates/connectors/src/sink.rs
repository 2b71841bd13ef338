//! The sinks a stream writes each micro-batch to, behind one trait the pipeline drives
//! without knowing which sink it is.
//!
//! A sink's life per micro-batch and per checkpoint (two-phase commit, as Arroyo's and
//! Flink's sinks):
//! 1. [`Sink::write`] the micro-batch — inline on the poll loop, or in the background
//!    overlapping the next micro-batches ([`Placement`]); a write that fails with a
//!    retryable error is called again with the same batch, so writes must be idempotent
//!    (after a crash, every batch since the last checkpoint is written again too);
//! 2. at a partition's checkpoint, once every write of the rows before its offset has
//!    returned: [`Sink::begin_commit`] cuts the partition's output on the poll loop, and
//!    [`PendingCommit::prepare`] makes it durable but not yet visible (in the background),
//!    returning a token the checkpoint records;
//! 3. the checkpoint is saved; then [`PendingCommit::commit`] makes the output visible. A
//!    pending commit dropped without `commit` discards its output (its rows will be read
//!    again), and a restart that finds a token in the checkpoint completes the commit with
//!    [`Sink::recover`].
//!
//! Redis and Kafka hold what `write` sent as soon as it returns, so they need no commit
//! phase; the Parquet archive ([`ArchiveSink`]) does.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::Int64Type;
use async_trait::async_trait;
use parking_lot::Mutex;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use risksense_formats::message::partition_of;
use risksense_store::{Alert, ScoredRows, Store, WriteOutcome};

use crate::archive::{ParquetArchive, SealedFile, UnsealedFile, complete_publish};
use crate::error::{ConnectorError, kafka_retryable};

/// Header of a dead letter that says why it could not be scored.
pub const ERROR_HEADER: &str = "risksense-error";
/// Header of a dead letter that says where it came from: `topic/partition/offset`.
pub const SOURCE_HEADER: &str = "risksense-source";

/// A message the stream could not score, with its reason: it goes to the dead-letter
/// topic with its original bytes.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub reason: String,
    /// `topic/partition/offset`.
    pub source: String,
}

/// One micro-batch's output, as every sink sees it.
pub struct SinkBatch {
    /// The micro-batch's place in the stream (0, 1, 2, …): ordered sinks write in it.
    pub seq: u64,
    /// The scored rows (every column of the `scored` view).
    pub scored: Vec<RecordBatch>,
    pub dead_letters: Vec<DeadLetter>,
    /// The decoded transactions the scored rows came from (for sinks that read the stream
    /// before scoring: the continuous queries over `transactions`).
    pub transactions: Vec<RecordBatch>,
    /// When the micro-batch's earliest message was produced (ms since the epoch).
    pub first_produced_ms: Option<i64>,
    /// The scored rows as store records: the columns they read, typed once for every sink
    /// that needs them.
    rows: OnceLock<ScoredRows>,
}

impl SinkBatch {
    pub fn new(seq: u64, scored: Vec<RecordBatch>, dead_letters: Vec<DeadLetter>) -> Self {
        Self {
            seq,
            scored,
            dead_letters,
            transactions: Vec::new(),
            first_produced_ms: None,
            rows: OnceLock::new(),
        }
    }

    /// The batch with the transactions it scored and when its first message was produced.
    pub fn with_input(
        mut self,
        transactions: Vec<RecordBatch>,
        first_produced_ms: Option<i64>,
    ) -> Self {
        self.transactions = transactions;
        self.first_produced_ms = first_produced_ms;
        self
    }

    pub fn num_rows(&self) -> usize {
        match self.rows.get() {
            Some(rows) if self.scored.is_empty() => rows.len(),
            _ => self.scored.iter().map(RecordBatch::num_rows).sum(),
        }
    }

    /// Keeps the columns the store records read (13 Arrow arrays, shared) and frees the
    /// others and the decoded transactions: what the background sinks hold while they
    /// retry is then the records' columns alone. Called when no sink left reads the
    /// columns.
    pub fn release_columns(&mut self) -> Result<(), ConnectorError> {
        self.rows()?;
        self.scored = Vec::new();
        self.transactions = Vec::new();
        Ok(())
    }

    /// The scored rows as store records (typed on first use, off the poll loop when the
    /// first user is a background sink).
    pub fn rows(&self) -> Result<&ScoredRows, ConnectorError> {
        if let Some(rows) = self.rows.get() {
            return Ok(rows);
        }
        let mut rows = ScoredRows::default();
        for batch in &self.scored {
            rows.push_batch(batch)?;
        }
        Ok(self.rows.get_or_init(|| rows))
    }
}

/// What a sink's write did, for the stream's counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct SinkReport {
    /// The result store's account of the write (rows, anomalies, new alerts).
    pub stored: Option<WriteOutcome>,
}

/// Where the pipeline runs a sink's writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On the poll loop, before the next micro-batch is scored: local and cheap (encoding
    /// into the archive's open file, the in-memory live window). Not retried.
    Inline,
    /// In a task that overlaps the next micro-batches, retried with backoff while the
    /// error is retryable. `ordered`: successive batches' writes run one after another in
    /// batch order (Kafka records keep the stream's order); otherwise they may overlap
    /// (Redis writes commute).
    Background { ordered: bool },
}

/// A destination of scored micro-batches. See the module documentation for the protocol.
#[async_trait]
pub trait Sink: Send + Sync {
    /// For logs and errors: `store`, `kafka`, `archive`, `live`.
    fn name(&self) -> &'static str;

    fn placement(&self) -> Placement;

    /// Whether `write` reads [`SinkBatch::scored`] (the columns) rather than only
    /// [`SinkBatch::rows`] and the dead letters. When no background sink does, the
    /// columns are freed before the background writes start.
    fn reads_columns(&self) -> bool {
        true
    }

    /// Writes one micro-batch. Idempotent: the same batch may be written again (a retry,
    /// or a replay after a restart) and readers must see it once.
    async fn write(&self, batch: &SinkBatch) -> Result<SinkReport, ConnectorError>;

    /// Phase one of `partition`'s checkpoint, on the poll loop, after every write of the
    /// rows before the checkpoint's offset was started: cuts the partition's output so far
    /// (later rows go to what comes next). None when `write` alone makes output durable.
    fn begin_commit(&self, _partition: i32) -> Option<Box<dyn PendingCommit>> {
        None
    }

    /// A restored checkpoint of `partition` names `token`, prepared by the partition's
    /// previous owner, which may have stopped before committing it: complete the commit
    /// (idempotent).
    fn recover(&self, _partition: i32, _token: &str) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Drops what was written for `partition` (None: every partition) and not committed:
    /// those rows will be read again by whoever owns the partition next.
    fn abort(&self, _partition: Option<i32>) {}

    /// State the sink keeps for `partition` (a standing query's open windows) that must be
    /// saved with the partition's offset; taken on the poll loop at the checkpoint's cut.
    fn snapshot(&self, _partition: i32) -> Result<Option<Vec<u8>>, ConnectorError> {
        Ok(None)
    }

    /// Takes over `partition` with the state its checkpoint saved (None: none was).
    fn restore_state(&self, _partition: i32, _state: Option<&[u8]>) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// A checkpoint's state: the scoring plan's per-card history and each sink's state, in one
/// value (the store saves one state per partition). Marked, so a checkpoint written before
/// sinks had state (history alone) still loads.
const PACKED_STATE: &[u8; 8] = b"RSCKPT01";

/// Packs the history and the sinks' states (by sink name) into one checkpoint state.
pub fn pack_state(history: Vec<u8>, sinks: Vec<(&'static str, Vec<u8>)>) -> Vec<u8> {
    if sinks.is_empty() {
        return history;
    }
    let mut out = Vec::with_capacity(history.len() + 64);
    out.extend_from_slice(PACKED_STATE);
    let mut part = |name: &[u8], bytes: &[u8]| {
        out.extend_from_slice(&(name.len() as u64).to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
    };
    part(b"history", &history);
    for (name, bytes) in &sinks {
        part(name.as_bytes(), bytes);
    }
    out
}

/// A checkpoint state unpacked: the history, and the sinks' states by sink name.
pub type UnpackedState = (Vec<u8>, HashMap<String, Vec<u8>>);

/// What [`pack_state`] packed: the history, and the sinks' states by name.
pub fn unpack_state(state: &[u8]) -> Result<UnpackedState, ConnectorError> {
    let Some(mut rest) = state.strip_prefix(PACKED_STATE.as_slice()) else {
        return Ok((state.to_vec(), HashMap::new()));
    };
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "checkpoint state cut short",
        )
    };
    let take = |rest: &mut &[u8]| -> Result<Vec<u8>, std::io::Error> {
        let len: [u8; 8] = rest
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)?;
        let len = usize::try_from(u64::from_le_bytes(len)).map_err(|_| bad())?;
        let bytes = rest.get(8..8 + len).ok_or_else(bad)?.to_vec();
        *rest = &rest[8 + len..];
        Ok(bytes)
    };
    let mut history = Vec::new();
    let mut sinks = HashMap::new();
    while !rest.is_empty() {
        let name = String::from_utf8_lossy(&take(&mut rest)?).into_owned();
        let bytes = take(&mut rest)?;
        if name == "history" {
            history = bytes;
        } else {
            sinks.insert(name, bytes);
        }
    }
    Ok((history, sinks))
}

/// The output of one partition's checkpoint between its two phases. Dropped without
/// [`PendingCommit::commit`], the output is discarded.
#[async_trait]
pub trait PendingCommit: Send {
    /// Makes the output durable but not visible; returns the token the checkpoint records
    /// so that a restart can complete the commit ([`Sink::recover`]).
    async fn prepare(&mut self) -> Result<Option<String>, ConnectorError>;

    /// The checkpoint naming the token is saved: make the output visible.
    fn commit(self: Box<Self>) -> Result<(), ConnectorError>;
}

/// The result store (Redis, or the in-process store) as a sink: transactions, per-card and
/// anomaly indexes, the alerts stream. Its writes are idempotent and commute.
pub struct StoreSink {
    store: Store,
}

impl StoreSink {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

#[async_trait]
impl Sink for StoreSink {
    fn name(&self) -> &'static str {
        "store"
    }

    fn reads_columns(&self) -> bool {
        false
    }

    fn placement(&self) -> Placement {
        Placement::Background { ordered: false }
    }

    async fn write(&self, batch: &SinkBatch) -> Result<SinkReport, ConnectorError> {
        let rows = batch.rows()?;
        let stored = self.store.write(rows).await?;
        Ok(SinkReport {
            stored: Some(stored),
        })
    }
}

/// A Kafka record still to be sent.
struct KafkaRecord {
    topic: String,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

/// Kafka as a sink: an alert per anomaly (JSON, keyed by card) to the alerts topic, and
/// the dead letters (original bytes, reason and source in headers) to the dead-letter
/// topic. At least once: a replayed batch sends its alerts again (readers dedupe by
/// `trans_num`; the store's alerts stream never repeats).
pub struct KafkaSink {
    producer: FutureProducer,
    /// Empty: no alerts topic.
    alerts_topic: String,
    dead_letter_topic: String,
    /// Per micro-batch: the records a failed write did not get acknowledged, which its
    /// retry sends (and only those).
    unsent: Mutex<HashMap<u64, Vec<KafkaRecord>>>,
}

/// Dead letters the broker refuses as too large (over the dead-letter topic's
/// `max.message.bytes`, 1 MiB by default) are cut to this; a header says how long the
/// original was. Up to the broker's limit the original bytes go out intact.
const MAX_DEAD_LETTER_BYTES: usize = 900 * 1024;

impl KafkaSink {
    pub fn new(producer: FutureProducer, alerts_topic: &str, dead_letter_topic: &str) -> Self {
        Self {
            producer,
            alerts_topic: alerts_topic.to_string(),
            dead_letter_topic: dead_letter_topic.to_string(),
            unsent: Mutex::new(HashMap::new()),
        }
    }

    fn records(&self, batch: &SinkBatch) -> Result<Vec<KafkaRecord>, ConnectorError> {
        let mut records: Vec<KafkaRecord> = batch
            .dead_letters
            .iter()
            .map(|dead| KafkaRecord {
                topic: self.dead_letter_topic.clone(),
                key: dead.key.clone(),
                payload: dead.payload.clone(),
                headers: vec![
                    (ERROR_HEADER, dead.reason.clone()),
                    (SOURCE_HEADER, dead.source.clone()),
                ],
            })
            .collect();
        if !self.alerts_topic.is_empty() {
            for row in batch.rows()?.iter().filter(|r| r.is_anomaly) {
                records.push(KafkaRecord {
                    topic: self.alerts_topic.clone(),
                    key: Some(row.cc_num.to_string().into_bytes()),
                    payload: serde_json::to_vec(&Alert::from(&row))?,
                    headers: Vec::new(),
                });
            }
        }
        Ok(records)
    }

    /// Sends every record, waits for every acknowledgement, and returns the ones that
    /// failed: None when all were acknowledged.
    async fn send_all(&self, records: Vec<KafkaRecord>) -> Option<Unsent> {
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
            deliveries.push(self.producer.send(future_record, Duration::from_secs(30)));
        }
        let attempted = records.len() as u64;
        let results = futures::future::join_all(deliveries).await;
        let mut unsent: Option<Unsent> = None;
        for (mut record, result) in records.into_iter().zip(results) {
            let Err((error, _)) = result else {
                continue;
            };
            tracing::warn!(%error, topic = %record.topic, "send failed");
            let mut retryable = kafka_retryable(&error);
            if matches!(
                error,
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge
                )
            ) && record.topic == self.dead_letter_topic
                && record.payload.len() > MAX_DEAD_LETTER_BYTES
            {
                // A dead letter larger than the topic takes: resent cut, saying so.
                record
                    .headers
                    .push(("risksense-truncated-from", record.payload.len().to_string()));
                record.payload.truncate(MAX_DEAD_LETTER_BYTES);
                retryable = true;
            }
            let unsent = unsent.get_or_insert_with(|| Unsent {
                records: Vec::new(),
                attempted,
                retryable: true,
                first: error,
            });
            unsent.retryable &= retryable;
            unsent.records.push(record);
        }
        unsent
    }
}

/// The records of a send that were not acknowledged, and why.
struct Unsent {
    records: Vec<KafkaRecord>,
    attempted: u64,
    /// Whether every failure may succeed when tried again.
    retryable: bool,
    first: rdkafka::error::KafkaError,
}

#[async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn reads_columns(&self) -> bool {
        false
    }

    fn placement(&self) -> Placement {
        Placement::Background { ordered: true }
    }

    async fn write(&self, batch: &SinkBatch) -> Result<SinkReport, ConnectorError> {
        let retry = self.unsent.lock().remove(&batch.seq);
        let records = match retry {
            Some(records) => records,
            None => self.records(batch)?,
        };
        let Some(unsent) = self.send_all(records).await else {
            return Ok(SinkReport::default());
        };
        let error = ConnectorError::Delivery {
            failed: unsent.records.len() as u64,
            attempted: unsent.attempted,
            retryable: unsent.retryable,
            source: unsent.first,
        };
        self.unsent.lock().insert(batch.seq, unsent.records);
        Err(error)
    }

    fn abort(&self, partition: Option<i32>) {
        // After an error every batch since the last checkpoint is read (and sent) again.
        // A single partition let go leaves the batches in flight alone: they hold other
        // partitions' records too, which must not be sent twice.
        if partition.is_none() {
            self.unsent.lock().clear();
        }
    }
}

/// The rows of a stream batch grouped by the partition they came from (see
/// [`risksense_formats::message::row_id`]).
pub fn split_by_partition(batch: &RecordBatch) -> Result<Vec<(i32, RecordBatch)>, ConnectorError> {
    let ids = batch
        .column_by_name("row_id")
        .ok_or_else(|| {
            risksense_formats::FormatError::Schema("scored rows lack row_id".to_string())
        })?
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

/// The Parquet archive as a sink: rows are encoded into a hidden file per partition as
/// they come (inline: it is the cheapest sink and keeps no task busy); a checkpoint seals
/// the partition's file (footer, fsync) in the background, the checkpoint names it, and
/// only then is it published under its visible name — so a reader of the folder sees each
/// row once, whatever crashed when.
pub struct ArchiveSink {
    archive: Arc<Mutex<ParquetArchive>>,
}

impl ArchiveSink {
    pub fn new(archive: ParquetArchive) -> Self {
        Self {
            archive: Arc::new(Mutex::new(archive)),
        }
    }

    /// Files published so far.
    pub fn files_written(&self) -> u64 {
        self.archive.lock().files_written()
    }
}

#[async_trait]
impl Sink for ArchiveSink {
    fn name(&self) -> &'static str {
        "archive"
    }

    fn placement(&self) -> Placement {
        Placement::Inline
    }

    async fn write(&self, batch: &SinkBatch) -> Result<SinkReport, ConnectorError> {
        let mut archive = self.archive.lock();
        for scored in &batch.scored {
            for (partition, rows) in split_by_partition(scored)? {
                archive.append(partition, &rows)?;
            }
        }
        Ok(SinkReport::default())
    }

    fn begin_commit(&self, partition: i32) -> Option<Box<dyn PendingCommit>> {
        let file = self.archive.lock().take(partition)?;
        Some(Box::new(ArchiveCommit {
            // Until the checkpoint is saved, the file holds rows no checkpoint names:
            // dropped (the checkpoint failed, was refused or aborted), the file goes too.
            discard: file.discard_on_drop(),
            file: Some(file),
            sealed: None,
            archive: self.archive.clone(),
        }))
    }

    fn recover(&self, _partition: i32, token: &str) -> Result<(), ConnectorError> {
        // The previous owner may have stopped between saving and publishing.
        let dir = self.archive.lock().dir().to_path_buf();
        complete_publish(&dir, token)
    }

    fn abort(&self, partition: Option<i32>) {
        let mut archive = self.archive.lock();
        match partition {
            Some(partition) => archive.abandon(partition),
            None => archive.abandon_all(),
        }
    }
}

struct ArchiveCommit {
    discard: crate::archive::DiscardOnDrop,
    file: Option<UnsealedFile>,
    sealed: Option<SealedFile>,
    archive: Arc<Mutex<ParquetArchive>>,
}

#[async_trait]
impl PendingCommit for ArchiveCommit {
    async fn prepare(&mut self) -> Result<Option<String>, ConnectorError> {
        if let Some(file) = self.file.take() {
            let sealed = tokio::task::spawn_blocking(move || file.seal())
                .await
                .map_err(|source| ConnectorError::Task {
                    what: "sealing an archive file",
                    source,
                })??;
            self.sealed = Some(sealed);
        }
        Ok(self.sealed.as_ref().map(|f| f.name.clone()))
    }

    fn commit(mut self: Box<Self>) -> Result<(), ConnectorError> {
        self.discard.keep();
        if let Some(sealed) = &self.sealed {
            sealed.publish()?;
            self.archive.lock().count_published();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_checkpoint_state_unpacks_and_a_bare_history_still_loads() {
        let packed = pack_state(b"history".to_vec(), vec![("queries", b"windows".to_vec())]);
        let (history, sinks) = unpack_state(&packed).expect("unpacks");
        assert_eq!(history, b"history");
        assert_eq!(
            sinks.get("queries").map(Vec::as_slice),
            Some(&b"windows"[..])
        );
        // Written before sinks had state: the whole value is the history.
        let (history, sinks) = unpack_state(b"ARROW1...").expect("bare");
        assert_eq!(history, b"ARROW1...");
        assert!(sinks.is_empty());
        // No sink state: nothing is added around the history.
        assert_eq!(pack_state(b"h".to_vec(), Vec::new()), b"h");
        // Cut short: an error, not a panic.
        assert!(unpack_state(&packed[..packed.len() - 3]).is_err());
    }
}
