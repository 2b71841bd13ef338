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
//!
//! Each card also remembers the `trans_num`s of its recent rows (see [`Seen`]), so the
//! stream can recognise a repeated transaction before it counts twice. The horizon is the
//! one the windows keep: the card's rows of the last 24 hours of its event time, and at
//! least its last [`SEEN_KEEP_ROWS`] rows; a card that received no row while its
//! partition's event time advanced the stream's `state_idle_secs` is forgotten with the
//! rest of its history. A repeat older than that is not recognised.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, LazyLock};

// Per-row lookups by card and by trans_num hash: SipHash was a tenth of the engine's CPU at
// the drain; foldhash is seeded per process, so crafted keys still cannot aim collisions.
use foldhash::{HashMap as FastMap, HashSet as FastSet};

use arrow::array::{
    Array, ArrayRef, AsArray, DictionaryArray, Float64Array, Int64Array, RecordBatch, StringArray,
    UInt64Array,
};
use arrow::datatypes::{
    DataType, Field, Float64Type, Int32Type, Int64Type, Schema, SchemaRef, UInt64Type,
};
use arrow::error::ArrowError;
use arrow::ipc::CompressionType;
use arrow::ipc::writer::IpcWriteOptions;
use datafusion::physical_expr::PhysicalExpr;
use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use super::{Entry, WINDOW_SECS};

/// Rows of a card whose `trans_num` is remembered whatever their age (besides every row of
/// its last 24 hours): as many as `mean_of_previous` looks back in sql/features.sql.
pub const SEEN_KEEP_ROWS: usize = 30;

/// A row of a card as the duplicate check remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// [`trans_num_hash`] of its `trans_num`.
    pub hash: u64,
    /// Where it was read: the stream's `row_id` (partition and offset).
    pub row_id: i64,
    pub secs: i64,
}

pub use risksense_common::schema::trans_num_hash;

/// A site's name without the column positions DataFusion prints (`amt@6` → `amt`).
///
/// A site is named by its function and argument expressions. The positions follow the
/// columns before them in features.sql, so adding a column there renamed every site, and a
/// restored checkpoint no longer matched any: every card's history was silently dropped.
/// Names by column name survive such a change.
pub fn stable_site_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '@' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The site name under which a checkpoint stores [`Seen`] rows (no window's name starts
/// with `#`).
const SEEN_SITE: &str = "#seen";
/// The site name of a delta's row for a card let go since the state it follows.
const GONE_SITE: &str = "#gone";

/// A call of a card window in a plan.
pub type SiteId = u32;

/// What a checkpoint row holds, by its site.
#[derive(Debug, Clone, Copy)]
enum RowKind {
    Site(usize),
    Seen,
    Gone,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history checkpoint: {0}")]
    Arrow(#[from] ArrowError),
    #[error("history checkpoint has another schema than this engine keeps")]
    Schema,
    #[error("a scored card {0} has no partition")]
    NoPartition(i64),
}

/// Checkpoint rows: one per kept pair, and one per [`Seen`] row (site [`SEEN_SITE`], with
/// `trans_hash` and `row_id`).
///
/// The site is dictionary-encoded and the buffers LZ4-compressed: a site's name as a
/// string on every row was most of a checkpoint's bytes (77 MB for one partition of
/// 100,000 cards), and Redis writing such values (and its AOF rewriting them) stalled
/// the stream's writes behind them.
static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = V2_SCHEMA.fields().to_vec();
    fields[0] = Arc::new(Field::new(
        "site",
        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        false,
    ));
    Arc::new(Schema::new(fields))
});

/// Checkpoints written before sites were dictionary-encoded: restored as they are.
static V2_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = V1_SCHEMA.fields().to_vec();
    fields.push(Arc::new(Field::new("trans_hash", DataType::UInt64, true)));
    fields.push(Arc::new(Field::new("row_id", DataType::Int64, true)));
    Arc::new(Schema::new(fields))
});

/// Checkpoints written before rows were remembered: restored with none remembered.
static V1_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
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

#[derive(Debug, Default, Clone)]
struct CardRows {
    /// By site id (missing or empty: nothing kept).
    sites: Vec<Vec<Entry>>,
    /// Recent rows, in arrival order (see [`Seen`]).
    seen: Vec<Seen>,
    /// `seen` by hash: the first row id with it. A lookup per incoming row must not scan
    /// the card's day of rows (a producer flooding one card would make it quadratic).
    seen_index: FastMap<u64, i64>,
    latest_secs: i64,
    /// The partition's event time (its clock, see [`PartitionHistory::latest_secs`]) when
    /// the card last received a row: idleness is measured from it, not from the card's
    /// own event time, so a card whose rows arrive late (a backfill behind the rest of the
    /// partition) is not forgotten while they keep arriving. Not in checkpoints: a restore
    /// counts every card as active at the partition's clock.
    active_secs: i64,
}

impl CardRows {
    fn push_seen(&mut self, seen: Seen) {
        self.seen_index.entry(seen.hash).or_insert(seen.row_id);
        self.seen.push(seen);
    }

    /// Forgets the rows before position `keep_from` older than `cutoff`, and the oldest
    /// past [`SEEN_MAX_ROWS`]; the index follows.
    ///
    /// Rows arrive roughly in event time, so what goes is nearly always a run at the front:
    /// that run is drained without visiting the rows kept (a card's whole list was walked
    /// per micro-batch before, 2 % of the engine at the drain).
    fn forget(&mut self, keep_from: usize, cutoff: i64) {
        let over = self.seen.len().saturating_sub(SEEN_MAX_ROWS);
        let goes = |position: usize, s: &Seen| {
            position < over || (position < keep_from && s.secs < cutoff)
        };
        let candidates = keep_from.max(over);
        let run = self.seen[..candidates]
            .iter()
            .enumerate()
            .take_while(|(position, s)| goes(*position, s))
            .count();
        let scattered = self.seen[run..candidates]
            .iter()
            .enumerate()
            .any(|(i, s)| goes(run + i, s));
        if scattered {
            self.retain_seen(|position, s| !goes(position, s));
            return;
        }
        for s in self.seen.drain(..run) {
            if self.seen_index.get(&s.hash) == Some(&s.row_id) {
                self.seen_index.remove(&s.hash);
            }
        }
    }

    /// Keeps the rows `keep` accepts and at most [`SEEN_MAX_ROWS`] (the newest); the index
    /// follows.
    fn retain_seen(&mut self, mut keep: impl FnMut(usize, &Seen) -> bool) {
        let over = self.seen.len().saturating_sub(SEEN_MAX_ROWS);
        let mut i = 0;
        let index = &mut self.seen_index;
        self.seen.retain(|s| {
            let position = i;
            i += 1;
            let kept = position >= over && keep(position, s);
            if !kept && index.get(&s.hash) == Some(&s.row_id) {
                index.remove(&s.hash);
            }
            kept
        });
    }
}

/// The most rows a card remembers for recognising repeats, whatever its last day holds: a
/// card with more in 24 h is a flood, and its oldest rows are forgotten first.
const SEEN_MAX_ROWS: usize = 10_000;

#[derive(Debug, Default)]
struct PartitionHistory {
    /// Shared with checkpoint snapshots still being written: a card changed meanwhile is
    /// copied first (`Arc::make_mut`), so taking a snapshot costs a pointer per card on
    /// the stream's thread, not a copy of every card's history.
    cards: FastMap<i64, Arc<CardRows>>,
    /// Latest event time seen in the partition: the clock idle cards age by.
    latest_secs: i64,
    /// Cards changed, and cards let go, since the last snapshot: what a delta holds.
    changed: FastSet<i64>,
    removed: FastSet<i64>,
}

/// Per-card history of every card window site, for the partitions this engine owns.
#[derive(Debug, Default)]
pub struct CardHistory {
    sites: RwLock<Sites>,
    partitions: RwLock<FastMap<i32, PartitionHistory>>,
    staged: Mutex<Vec<StagedCall>>,
}

/// What one window call staged: the pairs each of its cards keeps, one after another in
/// one buffer (a vector per card and site was a large part of the engine's allocations
/// with many cards), and whose they are.
#[derive(Debug, Default)]
pub(super) struct StagedCall {
    pub(super) entries: Vec<Entry>,
    /// `(card, site, start, end)`: the card's pairs are `entries[start..end]`. Cards
    /// ascend (a window call sees them in order).
    pub(super) cards: Vec<(i64, SiteId, usize, usize)>,
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
        let name = stable_site_name(&format!(
            "{function}({})",
            args.iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let mut sites = self.sites.write();
        let id = sites.id(&name);
        sites.by_hash.insert(hash, id);
        id
    }

    /// The card's kept pairs for `site`, in window order.
    #[cfg(test)]
    pub(super) fn entries(&self, card: i64, site: SiteId) -> Vec<Entry> {
        self.reader().entries(card, site).to_vec()
    }

    /// Reads the kept pairs of many cards under one lock: a window call reads a card per
    /// row of a micro-batch, and with many cards a clone and a lock per card and site was
    /// much of the engine's cost (BENCHMARKS.md, #14 third session). Holding it keeps
    /// [`Self::commit_staged`] and checkpoints waiting: drop it when the call is done.
    pub(super) fn reader(&self) -> HistoryReader<'_> {
        HistoryReader {
            partitions: self.partitions.read(),
        }
    }

    #[cfg(test)]
    pub(super) fn stage(&self, card: i64, site: SiteId, entries: Vec<Entry>) {
        let end = entries.len();
        self.staged.lock().push(StagedCall {
            entries,
            cards: vec![(card, site, 0, end)],
        });
    }

    /// Stages a window call's new pairs at once.
    pub(super) fn stage_all(&self, call: StagedCall) {
        self.staged.lock().push(call);
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
        let calls = std::mem::take(&mut *self.staged.lock());
        // Each call staged its cards in ascending order: a stable sort merges those runs,
        // so a card's sites are committed together and the card is looked up (and copied
        // off a snapshot) once per micro-batch, not once per site.
        let mut order: Vec<(i64, usize, usize)> = calls
            .iter()
            .enumerate()
            .flat_map(|(c, call)| {
                call.cards
                    .iter()
                    .enumerate()
                    .map(move |(i, (card, ..))| (*card, c, i))
            })
            .collect();
        order.sort_by_key(|(card, _, _)| *card);
        let mut partitions = self.partitions.write();
        for group in order.chunk_by(|a, b| a.0 == b.0) {
            let card = group[0].0;
            let partition = partition_of(card).ok_or(HistoryError::NoPartition(card))?;
            let history = partitions.entry(partition).or_default();
            history.changed.insert(card);
            let rows = Arc::make_mut(history.cards.entry(card).or_default());
            for &(_, c, i) in group {
                let (_, site, start, end) = calls[c].cards[i];
                let entries = &calls[c].entries[start..end];
                if let Some(last) = entries.last() {
                    rows.latest_secs = rows.latest_secs.max(last.secs);
                    history.latest_secs = history.latest_secs.max(last.secs);
                }
                let site = site as usize;
                if rows.sites.len() <= site {
                    rows.sites.resize_with(site + 1, Vec::new);
                }
                let kept = &mut rows.sites[site];
                if kept.capacity() > 4 * entries.len().max(16) {
                    // Shrunk after a burst, not held at its largest.
                    *kept = entries.to_vec();
                } else {
                    // In the card's own buffer: no allocation per card and site.
                    kept.clear();
                    kept.extend_from_slice(entries);
                }
            }
            rows.active_secs = history.latest_secs;
        }
        Ok(())
    }

    /// For each `(card, trans_num_hash)`: the `row_id` the card's remembered rows hold
    /// for it, if any.
    pub fn first_seen(&self, keys: &[(i64, u64)]) -> Vec<Option<i64>> {
        let partitions = self.partitions.read();
        keys.iter()
            .map(|&(card, hash)| {
                partitions
                    .values()
                    .find_map(|p| p.cards.get(&card))
                    .and_then(|rows| rows.seen_index.get(&hash).copied())
            })
            .collect()
    }

    /// Remembers scored rows, `(partition, card, row)`, each card's in arrival order, and
    /// forgets what falls out of the horizon (see the module's doc).
    pub fn remember(&self, rows: impl IntoIterator<Item = (i32, i64, Seen)>) {
        let mut rows: Vec<(i32, i64, Seen)> = rows.into_iter().collect();
        // A card's rows together, in arrival order (the sort is stable): the card is looked
        // up, and copied off a snapshot, once per micro-batch instead of once per row.
        rows.sort_by_key(|(partition, card, _)| (*partition, *card));
        let mut partitions = self.partitions.write();
        for in_partition in rows.chunk_by(|a, b| a.0 == b.0) {
            let history = partitions.entry(in_partition[0].0).or_default();
            // The partition's clock after these rows: every card here was active then.
            history.latest_secs = in_partition
                .iter()
                .map(|(_, _, seen)| seen.secs)
                .fold(history.latest_secs, i64::max);
            for group in in_partition.chunk_by(|a, b| a.1 == b.1) {
                let card = group[0].1;
                history.changed.insert(card);
                let card_rows = Arc::make_mut(history.cards.entry(card).or_default());
                for &(_, _, seen) in group {
                    card_rows.latest_secs = card_rows.latest_secs.max(seen.secs);
                    card_rows.push_seen(seen);
                }
                card_rows.active_secs = history.latest_secs;
                let cutoff = card_rows.latest_secs - WINDOW_SECS;
                let keep_from = card_rows.seen.len().saturating_sub(SEEN_KEEP_ROWS);
                card_rows.forget(keep_from, cutoff);
            }
        }
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

    /// Drops the cards of `partition` that received no row while its event time advanced
    /// `horizon_secs`, so that history follows the active cards instead of every card ever
    /// seen. (Measured on the partition's clock from the card's last row's arrival: a card
    /// receiving rows is active however old their event times are.)
    ///
    /// A card seen again after that is scored as new (no previous row, 30-row or 24 h
    /// history): the stream then differs from a batch job over the whole history for that
    /// card's first row back. The default horizon (30 days) is where `log_secs_since_prev`
    /// already saturates.
    pub fn evict_idle(&self, partition: i32, horizon_secs: i64) {
        if let Some(history) = self.partitions.write().get_mut(&partition) {
            let cutoff = history.latest_secs.saturating_sub(horizon_secs);
            let PartitionHistory {
                cards,
                changed,
                removed,
                ..
            } = history;
            cards.retain(|card, rows| {
                let kept = rows.latest_secs.max(rows.active_secs) >= cutoff;
                if !kept {
                    changed.remove(card);
                    removed.insert(*card);
                }
                kept
            });
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

    /// `partition`'s history as Arrow IPC (a checkpoint's state). Leaves what the next
    /// [`Self::snapshot`]'s delta holds as it is.
    pub fn to_ipc(&self, partition: i32) -> Result<Vec<u8>, HistoryError> {
        self.capture(partition, false).to_ipc()
    }

    /// `partition`'s history as it is now, to encode later (off the stream's thread):
    /// cheap to take, and unchanged by what the stream does after.
    ///
    /// It also holds what changed since the previous snapshot (the cards changed and let
    /// go), for [`HistorySnapshot::to_delta_ipc`]; taking it starts the next delta.
    pub fn snapshot(&self, partition: i32) -> HistorySnapshot {
        self.capture(partition, true)
    }

    /// The partition's cards by reference, and what changed since the last snapshot
    /// (taken from the partition when `take_changes`, so that the next delta starts).
    fn capture(&self, partition: i32, take_changes: bool) -> HistorySnapshot {
        let site_names = self.sites.read().names.clone();
        let mut partitions = self.partitions.write();
        let mut snapshot = HistorySnapshot {
            site_names,
            cards: Vec::new(),
            changed: FastSet::default(),
            removed: Vec::new(),
        };
        if let Some(history) = partitions.get_mut(&partition) {
            snapshot.cards = history
                .cards
                .iter()
                .map(|(card, rows)| (*card, Arc::clone(rows)))
                .collect();
            if take_changes {
                snapshot.changed = std::mem::take(&mut history.changed);
                snapshot.removed = std::mem::take(&mut history.removed).into_iter().collect();
            }
        }
        snapshot
    }

    /// Takes over `partition` with the history of [`Self::to_ipc`] bytes (empty bytes:
    /// none). Replaces whatever was kept for it. A checkpoint of the earlier four-column
    /// schema restores with no rows remembered for the duplicate check.
    pub fn restore(&self, partition: i32, bytes: &[u8]) -> Result<(), HistoryError> {
        let (mut history, _) = self.parse(bytes)?;
        // When each card last received a row is not in a checkpoint: count every card
        // restored as active now, so a backfilled card is not forgotten at the first
        // checkpoint after a restart (an idle one then goes one horizon later).
        let now = history.latest_secs;
        for rows in history.cards.values_mut() {
            Arc::make_mut(rows).active_secs = now;
        }
        self.partitions.write().insert(partition, history);
        Ok(())
    }

    /// Applies a delta ([`HistorySnapshot::to_delta_ipc`] bytes) to `partition`: the
    /// cards it lets go are dropped, and the cards it holds replace what was kept for them.
    pub fn apply_delta(&self, partition: i32, bytes: &[u8]) -> Result<(), HistoryError> {
        let (delta, gone) = self.parse(bytes)?;
        let mut partitions = self.partitions.write();
        let history = partitions.entry(partition).or_default();
        for card in gone {
            history.cards.remove(&card);
        }
        history.latest_secs = history.latest_secs.max(delta.latest_secs);
        // The cards of a delta changed in its interval: active as of the partition's clock.
        let now = history.latest_secs;
        history
            .cards
            .extend(delta.cards.into_iter().map(|(card, mut rows)| {
                Arc::make_mut(&mut rows).active_secs = now;
                (card, rows)
            }));
        Ok(())
    }

    /// The cards in `bytes`, and the cards it says were let go.
    fn parse(&self, bytes: &[u8]) -> Result<(PartitionHistory, Vec<i64>), HistoryError> {
        let mut history = PartitionHistory::default();
        let mut gone = Vec::new();
        if !bytes.is_empty() {
            let reader = arrow::ipc::reader::StreamReader::try_new(bytes, None)?;
            let schema = reader.schema();
            if schema != *SCHEMA && schema != *V2_SCHEMA && schema != *V1_SCHEMA {
                return Err(HistoryError::Schema);
            }
            let mut sites = self.sites.write();
            for batch in reader {
                let batch = batch?;
                // What each row's site is, resolved once per distinct name.
                let mut resolve = |name: &str| match name {
                    GONE_SITE => RowKind::Gone,
                    SEEN_SITE => RowKind::Seen,
                    // Checkpoints written before site names were stable carry column
                    // positions: the same normalisation maps them onto today's sites.
                    name => RowKind::Site(sites.id(&stable_site_name(name)) as usize),
                };
                // Earlier checkpoints' plain names are made a dictionary the same way.
                let site_column =
                    arrow::compute::cast(batch.column(0), SCHEMA.field(0).data_type())?;
                let names: &DictionaryArray<Int32Type> = site_column.as_dictionary();
                let resolved: Vec<RowKind> = names
                    .values()
                    .as_string::<i32>()
                    .iter()
                    .map(|name| resolve(name.unwrap_or("")))
                    .collect();
                let kinds: Vec<RowKind> = names
                    .keys()
                    .iter()
                    .map(|key| {
                        key.and_then(|key| resolved.get(key as usize).copied())
                            .ok_or(HistoryError::Schema)
                    })
                    .collect::<Result<_, _>>()?;
                let cards = batch.column(1).as_primitive::<Int64Type>();
                let secs = batch.column(2).as_primitive::<Int64Type>();
                let values = batch.column(3).as_primitive::<Float64Type>();
                let seen_columns = (batch.num_columns() == SCHEMA.fields().len()).then(|| {
                    (
                        batch.column(4).as_primitive::<UInt64Type>(),
                        batch.column(5).as_primitive::<Int64Type>(),
                    )
                });
                for (i, kind) in kinds.into_iter().enumerate() {
                    let card = cards.value(i);
                    let site = match kind {
                        RowKind::Gone => {
                            gone.push(card);
                            continue;
                        }
                        RowKind::Seen => {
                            let Some((hashes, row_ids)) = seen_columns else {
                                continue;
                            };
                            if hashes.is_null(i) || row_ids.is_null(i) {
                                return Err(HistoryError::Schema);
                            }
                            let rows = Arc::make_mut(history.cards.entry(card).or_default());
                            rows.push_seen(Seen {
                                hash: hashes.value(i),
                                row_id: row_ids.value(i),
                                secs: secs.value(i),
                            });
                            rows.latest_secs = rows.latest_secs.max(secs.value(i));
                            history.latest_secs = history.latest_secs.max(secs.value(i));
                            continue;
                        }
                        RowKind::Site(site) => site,
                    };
                    let entry = Entry {
                        secs: secs.value(i),
                        value: values.is_valid(i).then(|| values.value(i)),
                    };
                    let rows = Arc::make_mut(history.cards.entry(card).or_default());
                    if rows.sites.len() <= site {
                        rows.sites.resize_with(site + 1, Vec::new);
                    }
                    rows.sites[site].push(entry);
                    rows.latest_secs = rows.latest_secs.max(entry.secs);
                    history.latest_secs = history.latest_secs.max(entry.secs);
                }
            }
        }
        Ok((history, gone))
    }
}

/// The history as one window call reads it ([`CardHistory::reader`]).
pub(super) struct HistoryReader<'a> {
    partitions: RwLockReadGuard<'a, FastMap<i32, PartitionHistory>>,
}

impl HistoryReader<'_> {
    /// The card's kept pairs for `site`, in window order.
    pub(super) fn entries(&self, card: i64, site: SiteId) -> &[Entry] {
        self.partitions
            .values()
            .find_map(|p| p.cards.get(&card))
            .and_then(|rows| rows.sites.get(site as usize))
            .map_or(&[], Vec::as_slice)
    }
}

/// One partition's history at a checkpoint's cut ([`CardHistory::snapshot`]).
pub struct HistorySnapshot {
    site_names: Vec<String>,
    cards: Vec<(i64, Arc<CardRows>)>,
    changed: FastSet<i64>,
    removed: Vec<i64>,
}

impl HistorySnapshot {
    /// The history as Arrow IPC (a checkpoint's state).
    pub fn to_ipc(&self) -> Result<Vec<u8>, HistoryError> {
        self.encode(|_| true, &[])
    }

    /// What changed since the previous snapshot, as Arrow IPC: the changed cards whole,
    /// and a row per card let go. Applied after the state it follows
    /// ([`CardHistory::apply_delta`]), it gives this snapshot's [`Self::to_ipc`].
    pub fn to_delta_ipc(&self) -> Result<Vec<u8>, HistoryError> {
        self.encode(|card| self.changed.contains(&card), &self.removed)
    }

    /// Cards changed since the previous snapshot.
    pub fn changed_cards(&self) -> usize {
        self.changed.len()
    }

    /// Cards held.
    pub fn cards(&self) -> usize {
        self.cards.len()
    }

    fn encode(&self, include: impl Fn(i64) -> bool, gone: &[i64]) -> Result<Vec<u8>, HistoryError> {
        let batch = {
            // Dictionary keys: the sites in order, then the two markers.
            let gone_key = self.site_names.len() as i32;
            let seen_key = gone_key + 1;
            let (mut site_keys, mut cards, mut secs, mut values) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let (mut hashes, mut row_ids) = (Vec::new(), Vec::new());
            for card in gone {
                site_keys.push(gone_key);
                cards.push(*card);
                secs.push(0);
                values.push(None);
                hashes.push(None);
                row_ids.push(None);
            }
            {
                for (card, rows) in self.cards.iter().filter(|(card, _)| include(*card)) {
                    for (site, entries) in rows.sites.iter().enumerate() {
                        for entry in entries {
                            site_keys.push(site as i32);
                            cards.push(*card);
                            secs.push(entry.secs);
                            values.push(entry.value);
                            hashes.push(None);
                            row_ids.push(None);
                        }
                    }
                    for seen in &rows.seen {
                        site_keys.push(seen_key);
                        cards.push(*card);
                        secs.push(seen.secs);
                        values.push(None);
                        hashes.push(Some(seen.hash));
                        row_ids.push(Some(seen.row_id));
                    }
                }
            }
            let dictionary = StringArray::from_iter_values(
                self.site_names
                    .iter()
                    .map(String::as_str)
                    .chain([GONE_SITE, SEEN_SITE]),
            );
            let site_column =
                DictionaryArray::<Int32Type>::try_new(site_keys.into(), Arc::new(dictionary))?;
            let columns: Vec<ArrayRef> = vec![
                Arc::new(site_column),
                Arc::new(Int64Array::from(cards)),
                Arc::new(Int64Array::from(secs)),
                Arc::new(Float64Array::from(values)),
                Arc::new(UInt64Array::from(hashes)),
                Arc::new(Int64Array::from(row_ids)),
            ];
            RecordBatch::try_new(SCHEMA.clone(), columns)?
        };
        let mut out = Vec::new();
        let options =
            IpcWriteOptions::default().try_with_compression(Some(CompressionType::LZ4_FRAME))?;
        let mut writer =
            arrow::ipc::writer::StreamWriter::try_new_with_options(&mut out, &SCHEMA, options)?;
        writer.write(&batch)?;
        writer.finish()?;
        drop(writer);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use datafusion::physical_expr::expressions::Column;

    fn site(history: &CardHistory, column: &str) -> SiteId {
        let arg: Arc<dyn PhysicalExpr> = Arc::new(Column::new(column, 3));
        history.site("rolling_sum_24h", &[arg])
    }

    fn entry(secs: i64, value: Option<f64>) -> Entry {
        Entry { secs, value }
    }

    /// A partition's history as a set of rows, whatever the order of its encoding.
    fn rows_of(history: &CardHistory, partition: i32) -> BTreeSet<String> {
        let bytes = history.to_ipc(partition).expect("ipc");
        let reader =
            arrow::ipc::reader::StreamReader::try_new(bytes.as_slice(), None).expect("reader");
        let mut rows = BTreeSet::new();
        for batch in reader {
            let batch = batch.expect("batch");
            for i in 0..batch.num_rows() {
                let row: Vec<String> = batch
                    .columns()
                    .iter()
                    .map(|c| arrow::util::display::array_value_to_string(c, i).expect("value"))
                    .collect();
                rows.insert(row.join("|"));
            }
        }
        rows
    }

    #[test]
    fn a_delta_applied_to_the_state_before_it_gives_the_state_after_it() {
        let history = CardHistory::new();
        let amt = site(&history, "amt");
        let on = |card: i64, secs: i64| {
            history.stage(card, amt, vec![entry(secs, Some(card as f64))]);
            history.commit_staged(|_| Some(0)).expect("commit");
            history.remember([(
                0,
                card,
                Seen {
                    hash: card as u64 * 31 + secs as u64,
                    row_id: secs,
                    secs,
                },
            )]);
        };
        for card in 1..=5 {
            on(card, 10);
        }
        let base = history.snapshot(0);
        assert_eq!(base.cards(), 5);
        let base_bytes = base.to_ipc().expect("ipc");

        // Changes after the cut: card 2 again, card 6 new, then cards idle past the
        // horizon let go (1, 3, 4, 5 at second 10 while the partition is at 200,000).
        on(2, 150_000);
        on(6, 200_000);
        history.evict_idle(0, 100_000);
        // Encoding the whole history in between leaves the next delta as it is.
        history.to_ipc(0).expect("ipc");
        let next = history.snapshot(0);
        assert_eq!(next.changed_cards(), 2);
        let delta = next.to_delta_ipc().expect("delta");

        let restored = CardHistory::new();
        site(&restored, "amt");
        restored.restore(0, &base_bytes).expect("restore");
        assert_eq!(restored.size(0).0, 5);
        restored.apply_delta(0, &delta).expect("apply");
        assert_eq!(rows_of(&restored, 0), rows_of(&history, 0));
        assert_eq!(restored.size(0), history.size(0));
        assert_eq!(restored.size(0).0, 2);

        // Nothing changed since: an empty delta changes nothing.
        let empty = history.snapshot(0);
        assert_eq!(empty.changed_cards(), 0);
        restored
            .apply_delta(0, &empty.to_delta_ipc().expect("delta"))
            .expect("apply");
        assert_eq!(rows_of(&restored, 0), rows_of(&history, 0));
    }

    /// Calls staging different cards, each in one buffer, commit each card's pairs under its
    /// site; a snapshot taken before keeps what it saw.
    #[test]
    fn calls_of_many_cards_commit_each_card_s_sites() {
        let history = CardHistory::new();
        let amt = site(&history, "amt");
        let night = site(&history, "is_night");
        history.stage(1, amt, vec![entry(1, Some(1.0))]);
        history.commit_staged(|_| Some(0)).expect("commit");
        let before = history.snapshot(0);

        let call = |site, cards: &[(i64, &[i64])]| {
            let mut staged = StagedCall::default();
            // A card's part starts after a pair the window dropped (as `retain_from` does).
            for (card, secs) in cards {
                staged.entries.push(entry(-1, None));
                let start = staged.entries.len();
                staged
                    .entries
                    .extend(secs.iter().map(|&s| entry(s, Some(s as f64))));
                staged
                    .cards
                    .push((*card, site, start, staged.entries.len()));
            }
            staged
        };
        history.stage_all(call(amt, &[(1, &[2, 3]), (3, &[7]), (5, &[])]));
        history.stage_all(call(night, &[(2, &[4]), (3, &[8, 9])]));
        history
            .commit_staged(|card| Some(if card == 2 { 1 } else { 0 }))
            .expect("commit");
        let pairs = |secs: &[i64]| -> Vec<Entry> {
            secs.iter().map(|&s| entry(s, Some(s as f64))).collect()
        };
        assert_eq!(history.entries(1, amt), pairs(&[2, 3]));
        assert!(history.entries(1, night).is_empty());
        assert_eq!(history.entries(3, amt), pairs(&[7]));
        assert_eq!(history.entries(3, night), pairs(&[8, 9]));
        assert_eq!(history.entries(2, night), pairs(&[4]));
        assert!(history.entries(5, amt).is_empty());
        assert_eq!(history.size(0), (3, 5));
        assert_eq!(history.size(1), (1, 1));
        // The snapshot before the commit still holds card 1's first pair only.
        let restored = CardHistory::new();
        site(&restored, "amt");
        restored
            .restore(0, &before.to_ipc().expect("ipc"))
            .expect("restore");
        assert_eq!(restored.entries(1, amt), vec![entry(1, Some(1.0))]);
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

    /// A card whose rows arrive after the partition's clock moved far past them (a
    /// backfill of one card behind the others) is active while they arrive; it goes once
    /// the partition's clock has moved the horizon past its last arrival.
    #[test]
    fn a_card_whose_old_rows_are_still_arriving_is_not_idle() {
        let day = 86_400;
        let history = CardHistory::new();
        let amt = site(&history, "amt");
        // Card 8 has brought partition 0 to day 60; card 7's rows of day 1 arrive now.
        history.stage(8, amt, vec![entry(60 * day, Some(1.0))]);
        history.commit_staged(|_| Some(0)).expect("commit");
        history.stage(7, amt, vec![entry(day, Some(2.0))]);
        history.commit_staged(|_| Some(0)).expect("commit");
        history.remember([(0, 7, seen("t1", 1, day))]);
        history.evict_idle(0, 30 * day);
        assert_eq!(history.entries(7, amt), vec![entry(day, Some(2.0))]);
        assert_eq!(
            history.first_seen(&[(7, trans_num_hash("t1"))]),
            vec![Some(1)]
        );
        // A restart in between: the restored card is active as of the checkpoint.
        let bytes = history.to_ipc(0).expect("ipc");
        let history = CardHistory::new();
        let amt = site(&history, "amt");
        history.restore(0, &bytes).expect("restore");
        history.evict_idle(0, 30 * day);
        assert_eq!(history.entries(7, amt), vec![entry(day, Some(2.0))]);
        // 31 days of the partition's time later, with nothing for card 7: it goes.
        history.stage(8, amt, vec![entry(91 * day, Some(1.0))]);
        history.commit_staged(|_| Some(0)).expect("commit");
        history.evict_idle(0, 30 * day);
        assert!(history.entries(7, amt).is_empty());
        assert_eq!(history.size(0), (1, 1));
    }

    fn seen(name: &str, row_id: i64, secs: i64) -> Seen {
        Seen {
            hash: trans_num_hash(name),
            row_id,
            secs,
        }
    }

    #[test]
    fn site_names_leave_column_positions_out() {
        assert_eq!(
            stable_site_name("rolling_sum_24h(cc_num@2, event_secs@13, is_night@14 * amt@6)"),
            "rolling_sum_24h(cc_num, event_secs, is_night * amt)"
        );
        assert_eq!(stable_site_name("f(a@b, x@)"), "f(a@b, x@)");
    }

    /// Scores one batch of `table` through `rolling_sum_24h` with `history`; the sums.
    async fn sums(history: &Arc<CardHistory>, table: RecordBatch) -> Vec<f64> {
        use datafusion::datasource::MemTable;
        use datafusion::logical_expr::WindowUDF;
        use datafusion::prelude::SessionContext;
        let ctx = SessionContext::new();
        for window in crate::windows::CardWindow::all_with_history(history) {
            ctx.register_udwf(WindowUDF::new_from_impl(window));
        }
        // Every column is selected, so the extra one keeps its place in the plan.
        let columns: Vec<String> = table
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let provider = MemTable::try_new(table.schema(), vec![vec![table]]).expect("table");
        ctx.register_table("tx", Arc::new(provider))
            .expect("register");
        let batches = ctx
            .sql(&format!(
                "SELECT {}, rolling_sum_24h(cc_num, t, amt) OVER (PARTITION BY cc_num ORDER BY t) AS s FROM tx ORDER BY t",
                columns.join(", ")
            ))
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run");
        history.commit_staged(|_| Some(0)).expect("commit");
        batches
            .iter()
            .flat_map(|b| {
                let sums = b.column(b.num_columns() - 1);
                sums.as_primitive::<Float64Type>().values().to_vec()
            })
            .collect()
    }

    fn table(extra_first: bool, t: &[i64], amt: &[f64]) -> RecordBatch {
        let mut fields = vec![
            Field::new("cc_num", DataType::Int64, false),
            Field::new("t", DataType::Int64, false),
            Field::new("amt", DataType::Float64, false),
        ];
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![7; t.len()])),
            Arc::new(Int64Array::from(t.to_vec())),
            Arc::new(Float64Array::from(amt.to_vec())),
        ];
        if extra_first {
            fields.insert(0, Field::new("merchant_risk", DataType::Float64, false));
            columns.insert(0, Arc::new(Float64Array::from(vec![0.5; t.len()])));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("batch")
    }

    #[tokio::test]
    async fn a_checkpoint_keeps_every_card_after_a_column_is_added_before_the_windows() {
        let history = CardHistory::new();
        assert_eq!(
            sums(&history, table(false, &[0, 100], &[10.0, 20.0])).await,
            vec![10.0, 30.0]
        );
        let checkpoint = history.to_ipc(0).expect("checkpoint");
        // A new release: a column added first, every column position shifted by one.
        let restored = CardHistory::new();
        restored.restore(0, &checkpoint).expect("restore");
        assert_eq!(
            sums(&restored, table(true, &[200], &[5.0])).await,
            vec![35.0],
            "the card's history was lost"
        );
    }

    #[test]
    fn a_flooded_card_remembers_its_newest_rows_only() {
        let history = CardHistory::new();
        // One event second, so the 24 h horizon keeps them all: the cap decides.
        let flood = SEEN_MAX_ROWS as i64 + 500;
        history.remember((0..flood).map(|i| (0, 7, seen(&format!("f{i}"), i, 1_000))));
        let found = history.first_seen(&[
            (7, trans_num_hash("f0")),
            (7, trans_num_hash("f499")),
            (7, trans_num_hash("f500")),
            (7, trans_num_hash(&format!("f{}", flood - 1))),
        ]);
        assert_eq!(found, vec![None, None, Some(500), Some(flood - 1)]);
    }

    #[test]
    fn remembered_rows_are_found_kept_for_the_horizon_and_checkpointed() {
        let history = CardHistory::new();
        let day = WINDOW_SECS + 1;
        // Card 7: 40 rows a minute apart, then one a day later.
        let rows: Vec<(i32, i64, Seen)> = (0..40)
            .map(|i| (0, 7, seen(&format!("t{i}"), i, 1_000 + i * 60)))
            .chain([(0, 7, seen("late", 40, 1_000 + 39 * 60 + day))])
            .chain([(0, 8, seen("t0", 99, 5))])
            .collect();
        history.remember(rows);
        let keys = |names: &[&str], card: i64| -> Vec<(i64, u64)> {
            names.iter().map(|n| (card, trans_num_hash(n))).collect()
        };
        // The last 30 rows (t11..t39, late) and the rows of the last day (late only):
        // t0..t10 are out of the horizon.
        assert_eq!(
            history.first_seen(&keys(&["t10", "t11", "t39", "late", "nope"], 7)),
            vec![None, Some(11), Some(39), Some(40), None]
        );
        // Per card: card 8's t0 is its own.
        assert_eq!(history.first_seen(&keys(&["t0"], 8)), vec![Some(99)]);

        // A checkpoint keeps them; one of the earlier schema restores with none.
        let bytes = history.to_ipc(0).expect("ipc");
        let fresh = CardHistory::new();
        fresh.restore(0, &bytes).expect("restore");
        assert_eq!(
            fresh.first_seen(&keys(&["t11", "late"], 7)),
            vec![Some(11), Some(40)]
        );
        let old = {
            let batch = RecordBatch::try_new(
                V1_SCHEMA.clone(),
                vec![
                    Arc::new(StringArray::from(vec!["rolling_sum_24h(amt)"])),
                    Arc::new(Int64Array::from(vec![7])),
                    Arc::new(Int64Array::from(vec![1_000])),
                    Arc::new(Float64Array::from(vec![Some(2.0)])),
                ],
            )
            .expect("batch");
            uncompressed_ipc(&batch)
        };
        fresh
            .restore(0, &old)
            .expect("an earlier checkpoint restores");
        assert_eq!(fresh.size(0), (1, 1));
        assert_eq!(fresh.first_seen(&keys(&["t11"], 7)), vec![None]);
    }

    #[test]
    fn a_row_out_of_event_time_order_is_kept_while_older_ones_around_it_go() {
        let history = CardHistory::new();
        let day = WINDOW_SECS + 1;
        // 40 rows a minute apart, but row 5 arrived late with a time a day later; then one
        // more row a day later, so that rows 0..=10 fall out except row 5 (in the last day).
        let rows: Vec<(i32, i64, Seen)> = (0..40)
            .map(|i| {
                let secs = if i == 5 { 1_000 + day } else { 1_000 + i * 60 };
                (0, 7, seen(&format!("t{i}"), i, secs))
            })
            .chain([(0, 7, seen("late", 40, 1_000 + 39 * 60 + day))])
            .collect();
        history.remember(rows);
        let keys: Vec<(i64, u64)> = ["t4", "t5", "t6", "t10", "t11", "late"]
            .iter()
            .map(|n| (7, trans_num_hash(n)))
            .collect();
        assert_eq!(
            history.first_seen(&keys),
            vec![None, Some(5), None, None, Some(11), Some(40)]
        );
        // A front run goes without disturbing the rest: more rows a day later still.
        let more: Vec<(i32, i64, Seen)> = (41..45)
            .map(|i| (0, 7, seen(&format!("t{i}"), i, 1_000 + 39 * 60 + 2 * day)))
            .collect();
        history.remember(more);
        assert_eq!(
            history.first_seen(&keys),
            vec![None, None, None, None, None, Some(40)]
        );
        assert_eq!(
            history.first_seen(&[(7, trans_num_hash("t15"))]),
            vec![Some(15)]
        );
    }

    /// `batch` as an earlier engine wrote checkpoints: plain Arrow IPC.
    fn uncompressed_ipc(batch: &RecordBatch) -> Vec<u8> {
        let mut out = Vec::new();
        let mut writer =
            arrow::ipc::writer::StreamWriter::try_new(&mut out, &batch.schema()).expect("writer");
        writer.write(batch).expect("write");
        writer.finish().expect("finish");
        drop(writer);
        out
    }

    #[test]
    fn a_checkpoint_in_the_earlier_plain_encoding_restores_the_same_history() {
        let history = CardHistory::new();
        let (amt, count) = (site(&history, "amt"), site(&history, "count"));
        for card in 0..200_i64 {
            for i in 0..20 {
                let secs = 1_000 + i * 60;
                history.stage(card, amt, vec![entry(secs, Some((card * i) as f64))]);
                history.stage(card, count, vec![entry(secs, None)]);
                history.commit_staged(|_| Some(0)).expect("commit");
                history.remember([(0, card, seen(&format!("c{card}t{i}"), i, secs))]);
            }
        }
        let bytes = history.to_ipc(0).expect("ipc");

        // The same rows as the engine wrote them before: site names as plain strings,
        // uncompressed.
        let plain = {
            let mut batches = arrow::ipc::reader::StreamReader::try_new(&bytes[..], None)
                .expect("reader")
                .collect::<Result<Vec<_>, _>>()
                .expect("batches");
            assert_eq!(batches.len(), 1);
            let batch = batches.remove(0);
            let mut columns = batch.columns().to_vec();
            columns[0] = arrow::compute::cast(&columns[0], &DataType::Utf8).expect("cast");
            let batch = RecordBatch::try_new(V2_SCHEMA.clone(), columns).expect("batch");
            uncompressed_ipc(&batch)
        };
        assert!(
            bytes.len() * 3 < plain.len(),
            "the encoding is at least 3 times smaller: {} against {} bytes",
            bytes.len(),
            plain.len()
        );

        let (from_new, from_plain) = (CardHistory::new(), CardHistory::new());
        from_new.restore(0, &bytes).expect("restore");
        from_plain
            .restore(0, &plain)
            .expect("an earlier checkpoint restores");
        assert_eq!(rows_of(&from_new, 0), rows_of(&history, 0));
        assert_eq!(rows_of(&from_plain, 0), rows_of(&history, 0));
        assert_eq!(from_plain.size(0), history.size(0));
        let key = [(7, trans_num_hash("c7t19"))];
        assert_eq!(from_plain.first_seen(&key), vec![Some(19)]);
        assert_eq!(from_new.first_seen(&key), vec![Some(19)]);
    }

    #[test]
    fn the_trans_num_hash_is_stable() {
        // FNV-1a test vectors: checkpoints depend on these values never changing.
        assert_eq!(trans_num_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(trans_num_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
