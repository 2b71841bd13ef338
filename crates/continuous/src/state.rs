//! A windowed query's state: per Kafka partition, the accumulator state of its open bins
//! and the highest event time it has seen; per query, the end of the last window emitted.
//!
//! State is kept per partition because a checkpoint saves one partition's state with that
//! partition's offset: a restart, or the partition moving to another instance, resumes
//! both together, so no window loses rows or counts one twice.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt32Array};
use arrow::datatypes::{SchemaRef, TimestampMicrosecondType};
use serde::{Deserialize, Serialize};

use crate::error::ContinuousError;
use crate::window::WindowSpec;

/// Merge a partition's state batches into one when it holds more than this: bounds the
/// state to about one row per (bin, group) at the cost of one `PartialReduce` run per
/// eight micro-batches.
pub const MERGE_AFTER_BATCHES: usize = 8;

/// A partition with no row for this long (processing time) no longer holds the watermark
/// back (Flink's idleness): a quiet partition must not stop every window from closing.
pub const IDLE_PARTITION: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Default)]
pub struct PartitionState {
    /// Highest event time seen on the partition (µs).
    pub max_event_us: Option<i64>,
    /// When the partition last had a row (or was restored).
    pub last_row_at: Option<std::time::Instant>,
    pub batches: Vec<RecordBatch>,
}

impl PartitionState {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// The state of one windowed query.
pub struct WindowState {
    pub spec: WindowSpec,
    pub lateness_us: i64,
    pub bin_column: usize,
    pub schema: SchemaRef,
    pub partitions: HashMap<i32, PartitionState>,
    /// Every window ending at or before this was emitted (µs; i64::MIN: none yet).
    pub emitted_through: i64,
}

impl WindowState {
    pub fn new(spec: WindowSpec, lateness_us: i64, bin_column: usize, schema: SchemaRef) -> Self {
        Self {
            spec,
            lateness_us,
            bin_column,
            schema,
            partitions: HashMap::new(),
            emitted_through: i64::MIN,
        }
    }

    /// The watermark: the highest event time seen, minus the allowed lateness — per
    /// partition, and the lowest of the partitions that are not idle. A partition's rows
    /// come in order, so a partition behind the others (a replay fetching one partition
    /// ahead, a slower producer) holds windows open rather than having its rows dropped
    /// as late; the result is then the same in any interleaving of the partitions.
    pub fn watermark(&self) -> Option<i64> {
        let active: Vec<&PartitionState> = self
            .partitions
            .values()
            .filter(|p| {
                p.last_row_at
                    .is_some_and(|at| at.elapsed() < IDLE_PARTITION)
            })
            .collect();
        if active.iter().any(|p| p.max_event_us.is_none()) {
            // An assigned partition has not delivered yet: its rows may be the oldest.
            return None;
        }
        active
            .iter()
            .filter_map(|p| p.max_event_us)
            .min()
            .or_else(|| {
                self.partitions
                    .values()
                    .filter_map(|p| p.max_event_us)
                    .max()
            })
            .map(|t| t.saturating_sub(self.lateness_us))
    }

    /// A partition now read here (assigned without a checkpoint): it holds the watermark
    /// back until it delivers or idles.
    pub fn assign(&mut self, partition: i32) {
        self.partitions
            .entry(partition)
            .or_insert_with(|| PartitionState {
                last_row_at: Some(std::time::Instant::now()),
                ..PartitionState::default()
            });
    }

    /// Whether a row at `ts` comes too late: every window holding it was emitted.
    pub fn is_late(&self, ts: i64) -> bool {
        self.emitted_through != i64::MIN
            && self.spec.last_end_of_bin(self.spec.bin(ts)) <= self.emitted_through
    }

    /// The state rows of the windows ending in (emitted_through, through], each copied once
    /// per such window with its bin replaced by the window's start.
    pub fn closing(&self, through: i64) -> Result<Vec<RecordBatch>, ContinuousError> {
        let mut out = Vec::new();
        for partition in self.partitions.values() {
            for batch in &partition.batches {
                let bins = batch
                    .column(self.bin_column)
                    .as_primitive::<TimestampMicrosecondType>();
                let mut take = Vec::new();
                let mut starts = Vec::new();
                for row in 0..batch.num_rows() {
                    if bins.is_null(row) {
                        continue;
                    }
                    for start in self.spec.windows_of_bin(bins.value(row)) {
                        let end = start + self.spec.width_us;
                        if end > self.emitted_through && end <= through {
                            take.push(row as u32);
                            starts.push(start);
                        }
                    }
                }
                if take.is_empty() {
                    continue;
                }
                let indices = UInt32Array::from(take);
                let mut columns: Vec<ArrayRef> = batch
                    .columns()
                    .iter()
                    .map(|c| arrow::compute::take(c, &indices, None))
                    .collect::<Result<_, _>>()?;
                let starts = arrow::array::TimestampMicrosecondArray::from(starts)
                    .with_data_type(bins.data_type().clone());
                columns[self.bin_column] = Arc::new(starts);
                out.push(RecordBatch::try_new(batch.schema(), columns)?);
            }
        }
        Ok(out)
    }

    /// Drops the state of bins no window after `through` needs.
    pub fn prune(&mut self, through: i64) -> Result<(), ContinuousError> {
        let (spec, bin_column) = (self.spec, self.bin_column);
        for partition in self.partitions.values_mut() {
            let mut kept = Vec::with_capacity(partition.batches.len());
            for batch in partition.batches.drain(..) {
                let bins = batch
                    .column(bin_column)
                    .as_primitive::<TimestampMicrosecondType>();
                let keep: BooleanArray = bins
                    .iter()
                    .map(|bin| Some(bin.is_some_and(|b| spec.last_end_of_bin(b) > through)))
                    .collect();
                if keep.true_count() == batch.num_rows() {
                    kept.push(batch);
                } else if keep.true_count() > 0 {
                    kept.push(arrow::compute::filter_record_batch(&batch, &keep)?);
                }
            }
            partition.batches = kept;
        }
        Ok(())
    }

    /// One partition's state as bytes for its checkpoint.
    pub fn snapshot(&self, partition: i32) -> Result<PartitionSnapshot, ContinuousError> {
        let state = self.partitions.get(&partition);
        let mut ipc = Vec::new();
        if let Some(state) = state
            && !state.batches.is_empty()
        {
            let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &self.schema)?;
            for batch in &state.batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
        Ok(PartitionSnapshot {
            max_event_us: state.and_then(|s| s.max_event_us),
            emitted_through: self.emitted_through,
            state: ipc,
        })
    }

    /// Takes a partition's state from its checkpoint.
    pub fn restore(
        &mut self,
        partition: i32,
        snapshot: &PartitionSnapshot,
    ) -> Result<(), ContinuousError> {
        let mut batches = Vec::new();
        if !snapshot.state.is_empty() {
            let reader = arrow::ipc::reader::StreamReader::try_new(
                std::io::Cursor::new(snapshot.state.as_slice()),
                None,
            )?;
            if reader.schema().fields() != self.schema.fields() {
                return Err(ContinuousError::State(
                    "the query's state has another layout".to_string(),
                ));
            }
            for batch in reader {
                let batch = batch?;
                // The plan's own schema (metadata included), so batches concatenate.
                batches.push(RecordBatch::try_new(
                    self.schema.clone(),
                    batch.columns().to_vec(),
                )?);
            }
        }
        self.emitted_through = self.emitted_through.max(snapshot.emitted_through);
        self.partitions.insert(
            partition,
            PartitionState {
                max_event_us: snapshot.max_event_us,
                last_row_at: Some(std::time::Instant::now()),
                batches,
            },
        );
        // Windows another partition's checkpoint says were emitted are not emitted again.
        let through = self.emitted_through;
        if through != i64::MIN {
            self.prune(through)?;
        }
        Ok(())
    }
}

/// One query's part of a partition checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    pub max_event_us: Option<i64>,
    pub emitted_through: i64,
    /// Arrow IPC stream of the state batches (empty: none).
    #[serde(skip)]
    pub state: Vec<u8>,
}

/// Every query's part of a partition checkpoint: a JSON header (query, fingerprint, sizes)
/// followed by the IPC blobs.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Envelope {
    queries: Vec<EnvelopeEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct EnvelopeEntry {
    name: String,
    fingerprint: String,
    snapshot: PartitionSnapshot,
    state_len: usize,
}

/// Encodes `(query, fingerprint, snapshot)` entries.
pub fn encode(
    entries: Vec<(String, String, PartitionSnapshot)>,
) -> Result<Vec<u8>, ContinuousError> {
    let mut blobs = Vec::new();
    let mut envelope = Envelope::default();
    for (name, fingerprint, snapshot) in entries {
        blobs.extend_from_slice(&snapshot.state);
        envelope.queries.push(EnvelopeEntry {
            name,
            fingerprint,
            state_len: snapshot.state.len(),
            snapshot,
        });
    }
    let header =
        serde_json::to_vec(&envelope).map_err(|e| ContinuousError::State(e.to_string()))?;
    let mut out = Vec::with_capacity(8 + header.len() + blobs.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&blobs);
    Ok(out)
}

/// Decodes what [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> Result<Vec<(String, String, PartitionSnapshot)>, ContinuousError> {
    let bad = |what: &str| ContinuousError::State(what.to_string());
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("truncated header"))?;
    let len = usize::try_from(u64::from_le_bytes(len_bytes)).map_err(|_| bad("header length"))?;
    let header = bytes
        .get(8..8 + len)
        .ok_or_else(|| bad("truncated header"))?;
    let envelope: Envelope = serde_json::from_slice(header).map_err(|e| bad(&e.to_string()))?;
    let mut rest = &bytes[8 + len..];
    let mut out = Vec::new();
    for entry in envelope.queries {
        if rest.len() < entry.state_len {
            return Err(bad("truncated state"));
        }
        let (state, tail) = rest.split_at(entry.state_len);
        rest = tail;
        let mut snapshot = entry.snapshot;
        snapshot.state = state.to_vec();
        out.push((entry.name, entry.fingerprint, snapshot));
    }
    Ok(out)
}
