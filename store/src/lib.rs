//! The result store: where scored transactions, alerts and stream checkpoints live, and
//! what continuous queries write (their outputs, under keys the user chooses, and their
//! definitions).
//!
//! [`ResultStore`] is the seam: the operations the engine (writes, checkpoints) and the API
//! (reads, the score cache, health) need, each with the contract every implementation
//! meets. [`RedisStore`] is the production store; its key layout (see [`layout`]) is what
//! an operator sees in Redis. [`MemoryStore`] keeps the same shape in process, for the
//! embedded default (`risksense demo` on a machine with no Redis). `store/tests/
//! conformance.rs` runs one suite against both; a new implementation joins that suite.
//!
//! Callers hold a [`Store`]: a cheap, cloneable handle to any implementation.

pub mod layout;
mod memory;
mod output;
pub mod record;
mod redis_connection;
mod redis_store;

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use async_trait::async_trait;

pub use memory::MemoryStore;
pub use output::OutputRecord;
pub use record::{ScoredRow, ScoredRows, ScoredTransaction, from_batch};
pub use redis_connection::{Connection as RedisConnection, cluster_nodes};
pub use redis_store::RedisStore;

/// What can go wrong talking to the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis at {url}: {source}")]
    Redis {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("scored rows: {0}")]
    Schema(String),
    #[error("stored value under `{key}` is malformed: {reason}")]
    Malformed { key: String, reason: String },
    /// The store refused the call as asked (a malformed stream entry id, an output key that
    /// holds the other kind of output): the same call fails again.
    #[error("`{key}`: {reason}")]
    Rejected { key: String, reason: String },
}

impl StoreError {
    /// True when the store could not be reached (worth retrying), not when it refused.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Redis { source, .. } => {
                source.is_io_error()
                    || source.is_connection_dropped()
                    || source.is_connection_refusal()
                    || source.is_timeout()
                    || matches!(
                        source.kind(),
                        redis::ErrorKind::Server(
                            redis::ServerErrorKind::BusyLoading
                                | redis::ServerErrorKind::TryAgain
                                | redis::ServerErrorKind::NoScript
                                // A cluster whose shard is restarting or failing over
                                // answers these until its nodes agree again.
                                | redis::ServerErrorKind::ClusterDown
                                | redis::ServerErrorKind::MasterDown
                        )
                    )
            }
            _ => false,
        }
    }
}

/// How long and how much the store keeps.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Key prefix (several deployments can share one Redis).
    pub prefix: String,
    /// Lifetime of a transaction's hash and of a card's list, in seconds.
    pub ttl_secs: u64,
    /// Recent transactions kept per card.
    pub card_history: usize,
    /// Anomalies kept in the by-time index.
    pub anomalies_kept: usize,
    /// Approximate length of the alerts stream.
    pub alerts_kept: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            prefix: "rs".to_string(),
            ttl_secs: 7 * 24 * 3600,
            card_history: 50,
            anomalies_kept: 100_000,
            alerts_kept: 100_000,
        }
    }
}

/// What one write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    pub rows: u64,
    pub anomalies: u64,
    /// Anomalies that were not alerted before (a replay alerts nothing twice).
    pub new_alerts: u64,
}

/// A stream partition's progress and per-card state, saved together so that they always
/// belong to each other: `offset` is the next message to read, and `state` holds what
/// the engine derived from every message before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub offset: i64,
    pub state: Vec<u8>,
    /// The archive file holding the partition's rows since the previous checkpoint, sealed
    /// but maybe not yet published (whoever restores the partition publishes it).
    pub archive_file: Option<String>,
    /// Saved after `state` by [`ResultStore::save_checkpoint_delta`], oldest first: what
    /// changed since the one before. Empty when saving a whole checkpoint.
    pub deltas: Vec<Vec<u8>>,
}

/// What [`ResultStore::save_checkpoint_delta`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaSaved {
    Saved,
    /// A checkpoint further on is there (another owner's): nothing saved.
    Behind,
    /// The stored checkpoint is not the one the delta follows: nothing saved; save the
    /// whole state instead.
    NotParent,
}

/// What a fraud team learns about a transaction later (a chargeback, a confirmation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    pub trans_num: String,
    pub is_fraud: bool,
    /// When it was learnt, in ms since the epoch.
    pub labelled_ms: i64,
}

/// An alert as the alerts stream holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub trans_num: String,
    pub cc_num: i64,
    pub event_time: String,
    pub amt: f64,
    pub category: String,
    pub score: f64,
    pub explanation: Option<String>,
    /// The model that raised it.
    #[serde(default)]
    pub model_id: Option<String>,
}

use serde::{Deserialize, Serialize};

impl From<&ScoredRow<'_>> for Alert {
    fn from(row: &ScoredRow<'_>) -> Self {
        Self {
            trans_num: row.trans_num.to_string(),
            cc_num: row.cc_num,
            event_time: row.event_time().as_str().to_string(),
            amt: row.amt,
            category: row.category.to_string(),
            score: row.score,
            explanation: row.explanation.map(str::to_string),
            model_id: row.model_id.map(str::to_string),
        }
    }
}

impl From<&ScoredTransaction> for Alert {
    fn from(row: &ScoredTransaction) -> Self {
        Self::from(&row.as_row())
    }
}

/// What the engine and the API need from a result store. Every implementation meets the
/// contract in these doc comments, and `store/tests/conformance.rs` checks it against each.
///
/// All methods may be called concurrently from many tasks (the stream writes partitions in
/// parallel while the API reads). An `Err` means the call may or may not have taken effect
/// (partly, for [`write`](Self::write)); callers retry, which the idempotence below makes
/// safe. [`StoreError::is_unavailable`] tells "could not reach the store" (worth retrying)
/// from a refusal.
#[async_trait]
pub trait ResultStore: Send + Sync + 'static {
    /// Where the results go, for logs and `/ready`: one line, e.g. `Redis at redis://…`.
    fn describe(&self) -> String;

    /// Ok when the store answers right now (readiness). Changes nothing.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Writes scored rows: a record per transaction (read back by
    /// [`transaction`](Self::transaction)), the card's recent list
    /// ([`card_transactions`](Self::card_transactions)), the anomaly index
    /// ([`anomalies`](Self::anomalies)) and one alert per anomaly never alerted before
    /// ([`alerts`](Self::alerts)).
    ///
    /// Idempotent: `trans_num` identifies a transaction, and writing the same rows again
    /// (a replayed micro-batch) changes nothing a reader can see — no second alert, no
    /// duplicate in what a card's list or the anomaly index answers (Redis drops a
    /// replay's repeats in a card's list when reading it). The rows' `event_time` and
    /// `event_secs` must agree (a store may keep either one and derive the other). A
    /// different row under a `trans_num` already written is outside this contract (both
    /// stores keep the last one written).
    ///
    /// Retention ([`Retention`]): a card keeps its `card_history` newest transactions by
    /// event time, the anomaly index its `anomalies_kept` newest, the alerts about the
    /// latest `alerts_kept`. In a store that expires by time (Redis), records stay
    /// readable at least `ttl_secs` after their write and at most a period more (9/8 of
    /// it; see `layout`), card lists `ttl_secs` after their last renewal; a store may
    /// bound them by count instead (the in-process store keeps the latest 2,000,000).
    /// A card's list in Redis holds its latest arrivals: one arriving far behind the
    /// others of its card in event time may be left out (see `layout`).
    ///
    /// Returns the rows given, the anomalies among them, and the alerts this call emitted
    /// (0 for a replay).
    async fn write(&self, rows: &ScoredRows) -> Result<WriteOutcome, StoreError>;

    /// The transaction written under `trans_num`, exactly as written (an empty
    /// `explanation` may load as None); None if it never was or no longer is kept.
    async fn transaction(&self, trans_num: &str) -> Result<Option<ScoredTransaction>, StoreError>;

    /// The transactions written under `trans_nums` that are still kept (as
    /// [`transaction`](Self::transaction) reads each), in the order asked, skipping those
    /// not found; one round trip per bucket, not per transaction.
    async fn transactions(
        &self,
        trans_nums: &[String],
    ) -> Result<Vec<ScoredTransaction>, StoreError>;

    /// Records labels. Returns, per label, whether it was new: a `trans_num` keeps its
    /// first label (a repeat — a replayed message, a second report — is not written again
    /// and returns false), kept as long as records are.
    async fn write_labels(&self, labels: &[Label]) -> Result<Vec<bool>, StoreError>;

    /// The label of each of `trans_nums`, in the same order, None where there is none.
    async fn labels(&self, trans_nums: &[String]) -> Result<Vec<Option<Label>>, StoreError>;

    /// The card's most recent scored transactions, newest event time first (ties: greater
    /// `trans_num` first), at most `limit` (none for 0 or an unknown card). Only rows still
    /// readable by [`transaction`](Self::transaction) are returned.
    async fn card_transactions(
        &self,
        cc_num: i64,
        limit: usize,
    ) -> Result<Vec<ScoredTransaction>, StoreError>;

    /// Anomalies with event time at or after `since_secs` and score at least `min_score`
    /// (each when given), newest event time first, at most `limit`: the first `limit` that
    /// pass both filters, however many fail the score filter before them.
    async fn anomalies(
        &self,
        since_secs: Option<i64>,
        limit: usize,
        min_score: Option<f64>,
    ) -> Result<Vec<ScoredTransaction>, StoreError>;

    /// The latest alerts, most recently emitted first, at most `limit`; each is
    /// `Alert::from` the row that raised it. Alerts emitted by one
    /// [`write`](Self::write) may come in any order among themselves.
    async fn alerts(&self, limit: usize) -> Result<Vec<Alert>, StoreError>;

    /// Saves a partition's checkpoint unless one with a higher offset is there already —
    /// compare and set in one atomic step, so the stored offset for `(group, topic,
    /// partition)` never goes backwards, even with several savers racing: a consumer that
    /// lost its partitions can never roll back its successor's progress.
    ///
    /// A save at the stored offset replaces it (a retried save succeeds). `offset`,
    /// `state` and `archive_file` are saved together, and replace every delta saved
    /// before (`checkpoint.deltas` is ignored): a load never mixes two saves.
    /// Checkpoints do not expire. Returns whether it was saved.
    async fn save_checkpoint(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        checkpoint: &Checkpoint,
    ) -> Result<bool, StoreError>;

    /// Saves what changed since the checkpoint at offset `parent` as the checkpoint at
    /// `checkpoint.offset` (its `state` is the delta; `deltas` is ignored): appended after
    /// the stored state and deltas, in one atomic step, only if the stored checkpoint is at
    /// `parent`. A checkpoint further on than `checkpoint.offset` makes it
    /// [`DeltaSaved::Behind`]; any other offset [`DeltaSaved::NotParent`].
    ///
    /// A delta is never lost from its chain: a load returns the state and every delta
    /// saved after it, until a [`save_checkpoint`](Self::save_checkpoint) replaces them all.
    async fn save_checkpoint_delta(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        parent: i64,
        checkpoint: &Checkpoint,
    ) -> Result<DeltaSaved, StoreError>;

    /// The checkpoint last saved for `(group, topic, partition)`, byte for byte (an empty
    /// `archive_file` name loads as None), with the deltas saved after its state; None if
    /// there never was one.
    async fn load_checkpoint(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<Checkpoint>, StoreError>;

    /// Cached values under `hashes`, in the same order, None where absent or past its TTL,
    /// in one round trip.
    async fn cache_get(&self, hashes: &[String]) -> Result<Vec<Option<String>>, StoreError>;

    /// Caches `(hash, value)` pairs for `ttl_secs` (at least 1 s), replacing what was
    /// under those hashes. A cached value is never returned after its TTL; it may be
    /// dropped before (a store may bound the cache by count).
    async fn cache_put(
        &self,
        entries: &[(String, String)],
        ttl_secs: u64,
    ) -> Result<(), StoreError>;

    /// Writes continuous queries' output rows, in order, each as its [`OutputRecord`] says,
    /// in one round trip and as one transaction: a reader sees all of them or none (never
    /// half a window, never a half-replaced hash). Keys are used verbatim (no prefix: the
    /// user chooses them).
    ///
    /// Safe to retry: hashes are replaced and stream entries with an id are appended once;
    /// only entries without one may repeat. Every record is checked first, and a malformed
    /// one (a stream entry without fields or with an id not `<ms>-<seq>`) fails the call
    /// with [`StoreError::Rejected`] before anything is written. A record meeting a key
    /// that holds the other kind of output (a stream entry for a hash) fails the call, but
    /// the others are written, as in a Redis transaction.
    async fn write_outputs(&self, records: &[OutputRecord]) -> Result<(), StoreError>;

    /// The output hash under `key`, fields sorted by name; None if there is none (or it
    /// expired). An error if `key` holds a stream.
    async fn read_output_hash(
        &self,
        key: &str,
    ) -> Result<Option<Vec<(String, String)>>, StoreError>;

    /// The output stream under `key` as `(entry id, fields in written order)`, oldest first,
    /// at most `count`; none if there is no stream. An error if `key` holds a hash.
    async fn read_output_stream(
        &self,
        key: &str,
        count: usize,
    ) -> Result<Vec<(String, Vec<(String, String)>)>, StoreError>;

    /// Keys matching the Redis glob `pattern` (`*`, `?`, `[abc]`, `[^a-z]`, `\` escapes),
    /// sorted, at most `limit` (the first ones in that order). Expired hashes are not
    /// listed. In Redis every key of the database is a candidate, the store's own and other
    /// deployments' included, and listing costs a pass over the whole keyspace (`SCAN`):
    /// give outputs a prefix of their own and match under it.
    async fn output_keys(&self, pattern: &str, limit: usize) -> Result<Vec<String>, StoreError>;

    /// Saves the definition of the standing query `name` (replacing one of that name), so
    /// that it runs again after a restart. Definitions do not expire.
    async fn save_query(&self, name: &str, sql: &str) -> Result<(), StoreError>;

    /// Forgets the standing query `name`; whether there was one.
    async fn delete_query(&self, name: &str) -> Result<bool, StoreError>;

    /// Every saved standing query as `(name, sql)`, sorted by name.
    async fn load_queries(&self) -> Result<Vec<(String, String)>, StoreError>;

    /// Records the model a consumer group serves in `slot` (an id; `None`: the slot was
    /// emptied), so that every process sharing the store, and one started later, follows
    /// a change made through any of them. Records do not expire.
    async fn save_served_model(&self, slot: &str, id: Option<&str>) -> Result<(), StoreError>;

    /// The recorded models as `(slot, id)`, sorted by slot; an emptied slot has the id "".
    /// A slot never changed through the API has no record (its process's flags hold).
    async fn served_models(&self) -> Result<Vec<(String, String)>, StoreError>;
}

/// The store the engine writes and the API reads: a cheap, cloneable handle to any
/// [`ResultStore`] (calls go through it by `Deref`).
#[derive(Clone)]
pub struct Store(Arc<dyn ResultStore>);

impl Store {
    /// Connects to Redis at `url`: one Redis (`redis://127.0.0.1:6379/`) or a Redis
    /// Cluster by some of its nodes (`redis+cluster://127.0.0.1:7001,127.0.0.1:7002/`).
    pub async fn redis(url: &str, retention: Retention) -> Result<Self, StoreError> {
        Ok(Self::new(RedisStore::connect(url, retention).await?))
    }

    /// An in-process store (nothing survives the process).
    pub fn memory(retention: Retention) -> Self {
        Self::new(MemoryStore::new(retention))
    }

    /// A handle to any implementation (a test double, a future store).
    pub fn new(store: impl ResultStore) -> Self {
        Self(Arc::new(store))
    }
}

impl Deref for Store {
    type Target = dyn ResultStore;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Store").field(&self.0.describe()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis_error(kind: redis::ServerErrorKind) -> StoreError {
        StoreError::Redis {
            url: "redis://test/".to_string(),
            source: (redis::ErrorKind::Server(kind), "test").into(),
        }
    }

    #[test]
    fn a_cluster_settling_is_retried_and_a_refusal_is_not() {
        use redis::ServerErrorKind as Kind;
        for kind in [
            Kind::ClusterDown,
            Kind::MasterDown,
            Kind::TryAgain,
            Kind::BusyLoading,
        ] {
            assert!(redis_error(kind).is_unavailable(), "{kind:?}");
        }
        // A single Redis answering MOVED or READONLY is a cluster node or a replica named
        // by mistake: no retry fixes that (a cluster connection follows MOVED itself).
        for kind in [
            Kind::CrossSlot,
            Kind::NoPerm,
            Kind::ResponseError,
            Kind::Moved,
            Kind::ReadOnly,
        ] {
            assert!(!redis_error(kind).is_unavailable(), "{kind:?}");
        }
    }
}
