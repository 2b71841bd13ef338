//! Per-card state: the recent transactions of every card a partition has seen.
//!
//! The features' history windows look back only (sql/features.sql): the previous row, the
//! 30 rows before, and the rows of the last 24 hours. Keeping, for each card, its last 30
//! rows and every row of the 24 hours before its latest one is therefore enough for the
//! stream to run the very same SQL over `state ∪ micro-batch` and get, for the batch's
//! rows, exactly what a batch job over the whole history gets, as long as a card's
//! transactions arrive in event-time order (one card is one Kafka key, so one partition).
//!
//! Of earlier rows the windows read only `row_id`, the event time, the card and the amount
//! (features.sql computes every other feature after its windows, so only for the rows a
//! query keeps): state keeps just those four columns, and fills the others with
//! placeholders when it hands rows to the SQL. Rows live in append-only Arrow chunks (one
//! per micro-batch) and each card holds references into them; chunks are compacted once
//! most of their rows have expired. The parity tests (engine/tests/stream.rs) fail if the
//! SQL starts reading another column of earlier rows.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, AsArray, Date32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::buffer::{Buffer, OffsetBuffer};
use arrow::compute::interleave_record_batch;
use arrow::datatypes::{DataType, Int64Type, SchemaRef, TimeUnit, TimestampMicrosecondType};

use crate::error::EngineError;
use crate::schema::{idx, transaction_schema};
use udfs_window::{HISTORY_ROWS, WINDOW_SECS};

/// The history the features need, mirrored from the SQL (kept together so that a change
/// of the windows is one edit).
mod udfs_window {
    /// `mean_of_previous(amt, 30)` in features.sql.
    pub const HISTORY_ROWS: usize = 30;
    /// `rolling_sum_24h`'s window.
    pub const WINDOW_SECS: i64 = risksense_udfs::windows::WINDOW_SECS;
}

/// Added to a history row's `row_id` (a Kafka offset, below 2^62) in a micro-batch's
/// context: the stream's query scores only rows with `row_id >= 0`.
pub const CONTEXT_ROW_ID_SHIFT: i64 = i64::MIN / 2;

/// The columns of earlier rows the windows read, in the order state keeps them.
const HISTORY_COLUMNS: [usize; 4] = [
    idx::ROW_ID,
    idx::TRANS_DATE_TRANS_TIME,
    idx::CC_NUM,
    idx::AMT,
];
/// Their positions in a kept chunk.
mod kept {
    pub const ROW_ID: usize = 0;
    pub const TIME: usize = 1;
    pub const CC_NUM: usize = 2;
}

static KEPT_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(
        transaction_schema()
            .project(&HISTORY_COLUMNS)
            .expect("history columns are in the schema"),
    )
});

/// A column of `rows` zeros / empty strings: stands in for a column the SQL does not read
/// of history rows (the schema's columns are non-nullable, so not nulls).
fn placeholder(data_type: &DataType, rows: usize) -> Result<ArrayRef, EngineError> {
    Ok(match data_type {
        DataType::Utf8 => Arc::new(StringArray::new(
            OffsetBuffer::new_zeroed(rows),
            Buffer::from_vec(Vec::<u8>::new()),
            None,
        )),
        DataType::Int64 => Arc::new(Int64Array::from_value(0, rows)),
        DataType::Int32 => Arc::new(Int32Array::from_value(0, rows)),
        DataType::Float64 => Arc::new(Float64Array::from_value(0.0, rows)),
        DataType::Date32 => Arc::new(Date32Array::from_value(0, rows)),
        DataType::Timestamp(TimeUnit::Microsecond, None) => {
            Arc::new(TimestampMicrosecondArray::from_value(0, rows))
        }
        other => {
            return Err(EngineError::State(format!(
                "no placeholder for a {other} column"
            )));
        }
    })
}

/// Kept rows back in the transaction schema (placeholders for the columns not kept).
fn widen(kept_rows: &RecordBatch) -> Result<RecordBatch, EngineError> {
    let schema = transaction_schema();
    let rows = kept_rows.num_rows();
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (i, field) in schema.fields().iter().enumerate() {
        match HISTORY_COLUMNS.iter().position(|c| *c == i) {
            Some(k) => columns.push(kept_rows.column(k).clone()),
            None => columns.push(placeholder(field.data_type(), rows)?),
        }
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Where a kept row is: (chunk, row in chunk).
type RowRef = (u32, u32);

/// One partition's per-card state.
#[derive(Default)]
pub struct PartitionState {
    chunks: Vec<RecordBatch>,
    /// Each card's kept rows, in (event time, trans_num) order.
    cards: HashMap<i64, VecDeque<RowRef>>,
    live_rows: usize,
    chunk_rows: usize,
    /// Latest event time seen in the partition (seconds), the clock idle cards age by.
    latest_secs: i64,
}

impl PartitionState {
    pub fn cards(&self) -> usize {
        self.cards.len()
    }

    pub fn rows(&self) -> usize {
        self.live_rows
    }

    /// The kept rows of `cards` as context for a micro-batch, with `row_id` (the Kafka
    /// offset) shifted by [`CONTEXT_ROW_ID_SHIFT`]: negative, which marks them as history
    /// not to be scored again, and still in arrival order, which orders same-second rows.
    pub fn context(&self, cards: &HashSet<i64>) -> Result<Option<RecordBatch>, EngineError> {
        let refs: Vec<(usize, usize)> = cards
            .iter()
            .filter_map(|card| self.cards.get(card))
            .flat_map(|rows| rows.iter().map(|&(c, r)| (c as usize, r as usize)))
            .collect();
        if refs.is_empty() {
            return Ok(None);
        }
        let chunks: Vec<&RecordBatch> = self.chunks.iter().collect();
        let rows = widen(&interleave_record_batch(&chunks, &refs)?)?;
        let mut columns = rows.columns().to_vec();
        let shifted: Int64Array = rows
            .column(idx::ROW_ID)
            .as_primitive::<Int64Type>()
            .unary(|id| id.wrapping_add(CONTEXT_ROW_ID_SHIFT));
        columns[idx::ROW_ID] = Arc::new(shifted) as ArrayRef;
        Ok(Some(RecordBatch::try_new(transaction_schema(), columns)?))
    }

    /// Adds scored rows (all of this partition, in the transaction schema) and lets go of
    /// what no future row needs.
    pub fn absorb(&mut self, rows: RecordBatch) -> Result<(), EngineError> {
        self.absorb_kept(rows.project(&HISTORY_COLUMNS)?)
    }

    fn absorb_kept(&mut self, rows: RecordBatch) -> Result<(), EngineError> {
        if rows.num_rows() == 0 {
            return Ok(());
        }
        let chunk = u32::try_from(self.chunks.len())
            .map_err(|_| EngineError::State("too many state chunks".to_string()))?;
        let cards = rows
            .column(kept::CC_NUM)
            .as_primitive::<Int64Type>()
            .clone();
        self.chunk_rows += rows.num_rows();
        self.chunks.push(rows);
        let times = self.chunks[chunk as usize]
            .column(kept::TIME)
            .as_primitive::<TimestampMicrosecondType>()
            .clone();
        if let Some(latest) = times.values().iter().max() {
            self.latest_secs = self.latest_secs.max(latest.div_euclid(1_000_000));
        }
        let mut touched = HashSet::new();
        for (row, card) in cards.values().iter().enumerate() {
            self.cards
                .entry(*card)
                .or_default()
                .push_back((chunk, row as u32));
            self.live_rows += 1;
            touched.insert(*card);
        }
        for card in touched {
            self.order_and_trim(card);
        }
        // Expired rows stay in their chunks until this much garbage has piled up (bounds
        // memory at about twice the live rows plus one micro-batch per partition).
        if self.chunk_rows > 2 * self.live_rows + 8_192 {
            self.compact()?;
        }
        Ok(())
    }

    fn secs(&self, (chunk, row): RowRef) -> i64 {
        let time = self.chunks[chunk as usize]
            .column(kept::TIME)
            .as_primitive::<TimestampMicrosecondType>();
        time.value(row as usize).div_euclid(1_000_000)
    }

    fn row_id(&self, (chunk, row): RowRef) -> i64 {
        self.chunks[chunk as usize]
            .column(kept::ROW_ID)
            .as_primitive::<Int64Type>()
            .value(row as usize)
    }

    fn order_and_trim(&mut self, card: i64) {
        let Some(mut rows) = self.cards.remove(&card) else {
            return;
        };
        // The SQL's order: (event time, row_id). New rows normally come after the kept
        // ones; sort only when they do not.
        let key = |r: RowRef| (self.secs(r), self.row_id(r));
        let sorted = rows
            .iter()
            .zip(rows.iter().skip(1))
            .all(|(a, b)| key(*a) <= key(*b));
        if !sorted {
            let mut all: Vec<RowRef> = rows.into_iter().collect();
            all.sort_by_key(|r| key(*r));
            rows = all.into();
        }
        let latest = rows.back().map_or(i64::MIN, |r| self.secs(*r));
        // Keep the last HISTORY_ROWS rows and every row a future row's 24 h may reach.
        while rows.len() > HISTORY_ROWS {
            let Some(&oldest) = rows.front() else { break };
            if self.secs(oldest) >= latest - WINDOW_SECS {
                break;
            }
            rows.pop_front();
            self.live_rows -= 1;
        }
        self.cards.insert(card, rows);
    }

    /// Drops cards with no transaction in the last `horizon_secs` of the partition's event
    /// time, so that state follows the active cards instead of every card ever seen.
    ///
    /// A card seen again after that is scored as new (no previous-row, 30-row or 24 h
    /// history): the stream then differs from a batch job over the whole history for that
    /// card's first row back. The default horizon (30 days) is where `log_secs_since_prev`
    /// already saturates.
    pub fn evict_idle(&mut self, horizon_secs: i64) {
        let cutoff = self.latest_secs.saturating_sub(horizon_secs);
        let idle: Vec<i64> = self
            .cards
            .iter()
            .filter(|(_, rows)| rows.back().is_none_or(|r| self.secs(*r) < cutoff))
            .map(|(card, _)| *card)
            .collect();
        for card in idle {
            if let Some(rows) = self.cards.remove(&card) {
                self.live_rows -= rows.len();
            }
        }
    }

    /// Rewrites the kept rows into one chunk.
    fn compact(&mut self) -> Result<(), EngineError> {
        let mut refs = Vec::with_capacity(self.live_rows);
        let mut lengths = Vec::with_capacity(self.cards.len());
        let mut order = Vec::with_capacity(self.cards.len());
        for (card, rows) in &self.cards {
            order.push(*card);
            lengths.push(rows.len());
            refs.extend(rows.iter().map(|&(c, r)| (c as usize, r as usize)));
        }
        let chunks: Vec<&RecordBatch> = self.chunks.iter().collect();
        let compacted = if refs.is_empty() {
            RecordBatch::new_empty(KEPT_SCHEMA.clone())
        } else {
            interleave_record_batch(&chunks, &refs)?
        };
        let mut next = 0u32;
        for (card, length) in order.iter().zip(lengths) {
            let rows: VecDeque<RowRef> = (next..next + length as u32).map(|r| (0, r)).collect();
            next += length as u32;
            self.cards.insert(*card, rows);
        }
        self.chunk_rows = compacted.num_rows();
        self.chunks = vec![compacted];
        Ok(())
    }

    /// The kept rows as Arrow IPC (a checkpoint's state).
    pub fn to_ipc(&self) -> Result<Vec<u8>, EngineError> {
        let refs: Vec<(usize, usize)> = self
            .cards
            .values()
            .flat_map(|rows| rows.iter().map(|&(c, r)| (c as usize, r as usize)))
            .collect();
        let schema = KEPT_SCHEMA.clone();
        let mut out = Vec::new();
        let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema)?;
        if !refs.is_empty() {
            let chunks: Vec<&RecordBatch> = self.chunks.iter().collect();
            writer.write(&interleave_record_batch(&chunks, &refs)?)?;
        }
        writer.finish()?;
        drop(writer);
        Ok(out)
    }

    /// State from [`Self::to_ipc`] bytes.
    pub fn from_ipc(bytes: &[u8]) -> Result<Self, EngineError> {
        let mut state = Self::default();
        if bytes.is_empty() {
            return Ok(state);
        }
        let reader = arrow::ipc::reader::StreamReader::try_new(bytes, None)?;
        if reader.schema() != *KEPT_SCHEMA {
            return Err(EngineError::State(
                "checkpointed state has another schema than this engine keeps".to_string(),
            ));
        }
        for batch in reader {
            state.absorb_kept(batch?)?;
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{Generator, SynthConfig};

    fn generated(rows: usize) -> RecordBatch {
        let config = SynthConfig::new(20, "2019-01-01", "2019-12-31", 7).expect("config");
        let mut batches = Vec::new();
        let mut total = 0;
        for batch in Generator::new(config) {
            let batch = batch.expect("batch");
            total += batch.num_rows();
            batches.push(batch);
            if total >= rows {
                break;
            }
        }
        let all = arrow::compute::concat_batches(&transaction_schema(), &batches).expect("concat");
        all.slice(0, rows.min(all.num_rows()))
    }

    #[test]
    fn keeps_the_last_30_rows_and_the_last_24_hours_per_card() {
        let rows = generated(5000);
        let mut state = PartitionState::default();
        for start in (0..rows.num_rows()).step_by(700) {
            let length = 700.min(rows.num_rows() - start);
            state.absorb(rows.slice(start, length)).expect("absorb");
        }
        // Brute force over all rows of each card.
        let cards = rows.column(idx::CC_NUM).as_primitive::<Int64Type>();
        let time = rows
            .column(idx::TRANS_DATE_TRANS_TIME)
            .as_primitive::<TimestampMicrosecondType>();
        let mut by_card: HashMap<i64, Vec<i64>> = HashMap::new();
        for i in 0..rows.num_rows() {
            by_card
                .entry(cards.value(i))
                .or_default()
                .push(time.value(i) / 1_000_000);
        }
        let mut expected_rows = 0;
        for (card, mut secs) in by_card {
            secs.sort();
            let latest = *secs.last().expect("row");
            let keep = secs
                .iter()
                .enumerate()
                .filter(|(i, s)| secs.len() - i <= HISTORY_ROWS || **s >= latest - WINDOW_SECS)
                .count();
            expected_rows += keep;
            assert_eq!(state.cards[&card].len(), keep, "card {card}");
        }
        assert_eq!(state.rows(), expected_rows);
        // Round trip through a checkpoint: the same rows of each card, in the same order.
        let restored = PartitionState::from_ipc(&state.to_ipc().expect("ipc")).expect("restore");
        assert_eq!(restored.rows(), state.rows());
        assert_eq!(restored.cards(), state.cards());
        for (card, rows) in &state.cards {
            let before: Vec<(i64, i64)> = rows
                .iter()
                .map(|r| (state.secs(*r), state.row_id(*r)))
                .collect();
            let after: Vec<(i64, i64)> = restored.cards[card]
                .iter()
                .map(|r| (restored.secs(*r), restored.row_id(*r)))
                .collect();
            assert_eq!(before, after, "card {card}");
        }
        let all: HashSet<i64> = state.cards.keys().copied().collect();
        let context = restored.context(&all).expect("context").expect("rows");
        assert_eq!(context.num_rows(), state.rows());
        let ids = context.column(idx::ROW_ID).as_primitive::<Int64Type>();
        assert!(ids.values().iter().all(|&id| id < 0));

        // Idle cards go; a horizon of a day keeps only cards seen in the last day.
        let mut evicted = restored;
        let latest = evicted.latest_secs;
        evicted.evict_idle(86_400);
        assert!(evicted.cards() < state.cards());
        for rows in evicted.cards.values() {
            let last = *rows.back().expect("row");
            assert!(evicted.secs(last) >= latest - 86_400);
        }
    }
}
