//! A stream's per-card history for the card window functions.
//!
//! Each call of a card window in the plan (a *site*: `rolling_sum_24h(cc_num@2,
//! event_secs@16, amt@6)`) keeps, per card, the `(event_secs, value)` pairs that later
//! rows of the card can still need (see `retain`). Scoring a micro-batch reads them and
//! *stages* each site's new pairs; the engine commits what is staged once the batch is
//! scored (naming the partition each card is on) or discards it when scoring failed, so
//! a batch scored twice counts once.
//!
//! History is kept per Kafka partition (a card is one key, so one partition): a partition
//! is checkpointed with its offset, handed over on a rebalance and forgotten when revoked.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use arrow::error::ArrowError;
use datafusion::physical_expr::PhysicalExpr;
use parking_lot::{Mutex, RwLock};

use super::Entry;

/// A call of a card window in a plan.
pub type SiteId = u32;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history checkpoint: {0}")]
    Arrow(#[from] ArrowError),
    #[error("history checkpoint has another schema than this engine keeps")]
    Schema,
    #[error("a scored card {0} has no partition")]
    NoPartition(i64),
}

/// Checkpoint rows: one per kept pair.
static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("site", DataType::Utf8, false),
        Field::new("card", DataType::Int64, false),
        Field::new("event_secs", DataType::Int64, false),
        Field::new("value", DataType::Float64, true),
    ]))
});

#[derive(Debug, Default)]
struct Sites {
    names: Vec<String>,
    by_name: HashMap<String, SiteId>,
    /// Hash of (function, argument expressions) → site: the evaluator of every card asks,
    /// and hashing is cheaper than formatting the name.
    by_hash: HashMap<u64, SiteId>,
}

impl Sites {
    fn id(&mut self, name: &str) -> SiteId {
        if let Some(id) = self.by_name.get(name) {
            return *id;
        }
        let id = self.names.len() as SiteId;
        self.names.push(name.to_string());
        self.by_name.insert(name.to_string(), id);
        id
    }
}

#[derive(Debug, Default)]
struct CardRows {
    /// By site id (missing or empty: nothing kept).
    sites: Vec<Vec<Entry>>,
    latest_secs: i64,
}

#[derive(Debug, Default)]
struct PartitionHistory {
    cards: HashMap<i64, CardRows>,
    /// Latest event time seen in the partition: the clock idle cards age by.
    latest_secs: i64,
}

/// Per-card history of every card window site, for the partitions this engine owns.
#[derive(Debug, Default)]
pub struct CardHistory {
    sites: RwLock<Sites>,
    partitions: RwLock<HashMap<i32, PartitionHistory>>,
    staged: Mutex<Vec<(i64, SiteId, Vec<Entry>)>>,
}

impl CardHistory {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The site of `function` called with `args` (named by the function and its argument
    /// expressions, which is how a checkpoint refers to it; a changed window starts empty).
    pub fn site(&self, function: &str, args: &[Arc<dyn PhysicalExpr>]) -> SiteId {
        let mut hasher = DefaultHasher::new();
        function.hash(&mut hasher);
        for arg in args {
            arg.hash(&mut hasher);
        }
        let hash = hasher.finish();
        if let Some(id) = self.sites.read().by_hash.get(&hash) {
            return *id;
        }
        let name = format!(
            "{function}({})",
            args.iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut sites = self.sites.write();
        let id = sites.id(&name);
        sites.by_hash.insert(hash, id);
        id
    }

    /// The card's kept pairs for `site`, in window order.
    pub(super) fn entries(&self, card: i64, site: SiteId) -> Vec<Entry> {
        let partitions = self.partitions.read();
        partitions
            .values()
            .find_map(|p| p.cards.get(&card))
            .and_then(|rows| rows.sites.get(site as usize))
            .cloned()
            .unwrap_or_default()
    }

    pub(super) fn stage(&self, card: i64, site: SiteId, entries: Vec<Entry>) {
        self.staged.lock().push((card, site, entries));
    }

    /// Forgets what scoring staged (the batch was not scored).
    pub fn discard_staged(&self) {
        self.staged.lock().clear();
    }

    /// Makes what scoring staged the cards' history; `partition_of` names each card's
    /// partition.
    pub fn commit_staged(
        &self,
        partition_of: impl Fn(i64) -> Option<i32>,
    ) -> Result<(), HistoryError> {
        let staged = std::mem::take(&mut *self.staged.lock());
        let mut partitions = self.partitions.write();
        for (card, site, entries) in staged {
            let partition = partition_of(card).ok_or(HistoryError::NoPartition(card))?;
            let history = partitions.entry(partition).or_default();
            let rows = history.cards.entry(card).or_default();
            if let Some(last) = entries.last() {
                rows.latest_secs = rows.latest_secs.max(last.secs);
                history.latest_secs = history.latest_secs.max(last.secs);
            }
            let site = site as usize;
            if rows.sites.len() <= site {
                rows.sites.resize_with(site + 1, Vec::new);
            }
            rows.sites[site] = entries;
        }
        Ok(())
    }

    /// Cards and kept pairs of `partition`.
    pub fn size(&self, partition: i32) -> (usize, usize) {
        let partitions = self.partitions.read();
        partitions.get(&partition).map_or((0, 0), |p| {
            let pairs = p
                .cards
                .values()
                .flat_map(|rows| rows.sites.iter().map(Vec::len))
                .sum();
            (p.cards.len(), pairs)
        })
    }

    /// Drops the cards of `partition` with no row in the last `horizon_secs` of its event
    /// time, so that history follows the active cards instead of every card ever seen.
    ///
    /// A card seen again after that is scored as new (no previous row, 30-row or 24 h
    /// history): the stream then differs from a batch job over the whole history for that
    /// card's first row back. The default horizon (30 days) is where `log_secs_since_prev`
    /// already saturates.
    pub fn evict_idle(&self, partition: i32, horizon_secs: i64) {
        if let Some(history) = self.partitions.write().get_mut(&partition) {
            let cutoff = history.latest_secs.saturating_sub(horizon_secs);
            history.cards.retain(|_, rows| rows.latest_secs >= cutoff);
        }
    }

    /// Lets go of `partition` (revoked).
    pub fn forget(&self, partition: i32) {
        self.partitions.write().remove(&partition);
    }

    /// Lets go of every partition.
    pub fn clear(&self) {
        self.partitions.write().clear();
        self.discard_staged();
    }

    /// `partition`'s history as Arrow IPC (a checkpoint's state).
    pub fn to_ipc(&self, partition: i32) -> Result<Vec<u8>, HistoryError> {
        let batch = {
            let sites = self.sites.read();
            let partitions = self.partitions.read();
            let (mut site_names, mut cards, mut secs, mut values) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            if let Some(history) = partitions.get(&partition) {
                for (card, rows) in &history.cards {
                    for (site, entries) in rows.sites.iter().enumerate() {
                        for entry in entries {
                            site_names.push(sites.names[site].as_str());
                            cards.push(*card);
                            secs.push(entry.secs);
                            values.push(entry.value);
                        }
                    }
                }
            }
            let columns: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from(site_names)),
                Arc::new(Int64Array::from(cards)),
                Arc::new(Int64Array::from(secs)),
                Arc::new(Float64Array::from(values)),
            ];
            RecordBatch::try_new(SCHEMA.clone(), columns)?
        };
        let mut out = Vec::new();
        let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut out, &SCHEMA)?;
        writer.write(&batch)?;
        writer.finish()?;
        drop(writer);
        Ok(out)
    }

    /// Takes over `partition` with the history of [`Self::to_ipc`] bytes (empty bytes:
    /// none). Replaces whatever was kept for it.
    pub fn restore(&self, partition: i32, bytes: &[u8]) -> Result<(), HistoryError> {
        let mut history = PartitionHistory::default();
        if !bytes.is_empty() {
            let reader = arrow::ipc::reader::StreamReader::try_new(bytes, None)?;
            if reader.schema() != *SCHEMA {
                return Err(HistoryError::Schema);
            }
            let mut sites = self.sites.write();
            for batch in reader {
                let batch = batch?;
                let names = batch.column(0).as_string::<i32>();
                let cards = batch.column(1).as_primitive::<Int64Type>();
                let secs = batch.column(2).as_primitive::<Int64Type>();
                let values = batch.column(3).as_primitive::<Float64Type>();
                for i in 0..batch.num_rows() {
                    let site = sites.id(names.value(i)) as usize;
                    let card = cards.value(i);
                    let entry = Entry {
                        secs: secs.value(i),
                        value: values.is_valid(i).then(|| values.value(i)),
                    };
                    let rows = history.cards.entry(card).or_default();
                    if rows.sites.len() <= site {
                        rows.sites.resize_with(site + 1, Vec::new);
                    }
                    rows.sites[site].push(entry);
                    rows.latest_secs = rows.latest_secs.max(entry.secs);
                    history.latest_secs = history.latest_secs.max(entry.secs);
                }
            }
        }
        self.partitions.write().insert(partition, history);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::physical_expr::expressions::Column;

    fn site(history: &CardHistory, column: &str) -> SiteId {
        let arg: Arc<dyn PhysicalExpr> = Arc::new(Column::new(column, 3));
        history.site("rolling_sum_24h", &[arg])
    }

    fn entry(secs: i64, value: Option<f64>) -> Entry {
        Entry { secs, value }
    }

    #[test]
    fn staged_history_counts_once_committed_and_survives_a_checkpoint() {
        let history = CardHistory::new();
        let amt = site(&history, "amt");
        let night = site(&history, "is_night");
        assert_ne!(amt, night);
        assert_eq!(site(&history, "amt"), amt);

        // Staged and discarded: nothing kept.
        history.stage(7, amt, vec![entry(1, Some(1.0))]);
        history.discard_staged();
        history.commit_staged(|_| Some(0)).expect("commit");
        assert!(history.entries(7, amt).is_empty());

        history.stage(7, amt, vec![entry(1, Some(1.0)), entry(5, None)]);
        history.stage(7, night, vec![entry(5, Some(0.0))]);
        history.stage(8, amt, vec![entry(100_000_000, Some(2.5))]);
        history
            .commit_staged(|card| Some(if card == 7 { 0 } else { 1 }))
            .expect("commit");
        assert_eq!(
            history.entries(7, amt),
            vec![entry(1, Some(1.0)), entry(5, None)]
        );
        assert_eq!(history.size(0), (1, 3));
        assert_eq!(history.size(1), (1, 1));

        // A card without a partition is an error, not a silent drop.
        history.stage(9, amt, vec![entry(1, Some(1.0))]);
        assert!(history.commit_staged(|_| None).is_err());

        // Checkpoint partition 0, forget it, restore it into a fresh history whose sites
        // were registered in another order.
        let bytes = history.to_ipc(0).expect("ipc");
        history.forget(0);
        assert!(history.entries(7, amt).is_empty());
        let fresh = CardHistory::new();
        let night_again = site(&fresh, "is_night");
        fresh.restore(0, &bytes).expect("restore");
        let amt_again = site(&fresh, "amt");
        assert_eq!(
            fresh.entries(7, amt_again),
            vec![entry(1, Some(1.0)), entry(5, None)]
        );
        assert_eq!(fresh.entries(7, night_again), vec![entry(5, Some(0.0))]);
        assert_eq!(fresh.size(0), (1, 3));
        assert!(fresh.restore(1, b"not arrow").is_err());

        // Idle cards go: card 7 (latest second 5) is idle next to card 8 on one partition.
        fresh.stage(8, amt_again, vec![entry(100_000_000, Some(2.5))]);
        fresh.commit_staged(|_| Some(0)).expect("commit");
        fresh.evict_idle(0, 86_400);
        assert!(fresh.entries(7, amt_again).is_empty());
        assert_eq!(fresh.size(0), (1, 1));
    }
}
