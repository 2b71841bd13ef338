//! The result store: where scored transactions, alerts and stream checkpoints live.
//!
//! [`ResultStore::Redis`] is the production store; its key layout (see [`layout`]) is the
//! contract between the engine, which writes, and the API, which reads. Every write is
//! idempotent: replaying a micro-batch after a crash changes nothing a reader can see.
//! [`ResultStore::Memory`] keeps the same shape in process, for the embedded default
//! (`risksense demo` on a machine with no Redis).

pub mod layout;
mod memory;
pub mod record;
mod redis_store;

use std::sync::Arc;

pub use memory::MemoryStore;
pub use record::{ScoredTransaction, from_batch};
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
                        redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
                            | redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain)
                            | redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
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
}

use serde::{Deserialize, Serialize};

impl From<&ScoredTransaction> for Alert {
    fn from(row: &ScoredTransaction) -> Self {
        Self {
            trans_num: row.trans_num.clone(),
            cc_num: row.cc_num,
            event_time: row.event_time.clone(),
            amt: row.amt,
            category: row.category.clone(),
            score: row.score,
            explanation: row.explanation.clone(),
        }
    }
}

/// The store the engine writes and the API reads.
#[derive(Clone)]
pub enum ResultStore {
    Redis(Arc<RedisStore>),
    Memory(Arc<MemoryStore>),
}

impl ResultStore {
    /// Connects to Redis at `url` (`redis://127.0.0.1:6379/`).
    pub async fn redis(url: &str, retention: Retention) -> Result<Self, StoreError> {
        Ok(Self::Redis(Arc::new(
            RedisStore::connect(url, retention).await?,
        )))
    }

    /// An in-process store (nothing survives the process).
    pub fn memory(retention: Retention) -> Self {
        Self::Memory(Arc::new(MemoryStore::new(retention)))
    }

    /// Where the results go, for logs.
    pub fn describe(&self) -> String {
        match self {
            Self::Redis(store) => format!("Redis at {}", store.url()),
            Self::Memory(_) => "the in-process store (nothing is kept after exit)".to_string(),
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Self::Redis(store) => store.ping().await,
            Self::Memory(_) => Ok(()),
        }
    }

    /// Writes scored rows: a record per transaction, the card's recent list, the anomaly
    /// index and one alert per anomaly never alerted before. Idempotent.
    pub async fn write(&self, rows: &[ScoredTransaction]) -> Result<WriteOutcome, StoreError> {
        match self {
            Self::Redis(store) => store.write(rows).await,
            Self::Memory(store) => Ok(store.write(rows)),
        }
    }

    pub async fn transaction(
        &self,
        trans_num: &str,
    ) -> Result<Option<ScoredTransaction>, StoreError> {
        match self {
            Self::Redis(store) => store.transaction(trans_num).await,
            Self::Memory(store) => Ok(store.transaction(trans_num)),
        }
    }

    /// The card's most recent scored transactions, newest first.
    pub async fn card_transactions(
        &self,
        cc_num: i64,
        limit: usize,
    ) -> Result<Vec<ScoredTransaction>, StoreError> {
        match self {
            Self::Redis(store) => store.card_transactions(cc_num, limit).await,
            Self::Memory(store) => Ok(store.card_transactions(cc_num, limit)),
        }
    }

    /// Anomalies with event time at or after `since_secs`, newest first.
    pub async fn anomalies(
        &self,
        since_secs: Option<i64>,
        limit: usize,
        min_score: Option<f64>,
    ) -> Result<Vec<ScoredTransaction>, StoreError> {
        match self {
            Self::Redis(store) => store.anomalies(since_secs, limit, min_score).await,
            Self::Memory(store) => Ok(store.anomalies(since_secs, limit, min_score)),
        }
    }

    /// The latest alerts, newest first.
    pub async fn alerts(&self, limit: usize) -> Result<Vec<Alert>, StoreError> {
        match self {
            Self::Redis(store) => store.alerts(limit).await,
            Self::Memory(store) => Ok(store.alerts(limit)),
        }
    }

    /// Saves a partition's checkpoint unless a newer one (a higher offset) is there already:
    /// a consumer that lost its partitions can never roll back its successor's progress.
    /// Returns whether it was saved.
    pub async fn save_checkpoint(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        checkpoint: &Checkpoint,
    ) -> Result<bool, StoreError> {
        match self {
            Self::Redis(store) => {
                store
                    .save_checkpoint(group, topic, partition, checkpoint)
                    .await
            }
            Self::Memory(store) => Ok(store.save_checkpoint(group, topic, partition, checkpoint)),
        }
    }

    pub async fn load_checkpoint(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<Checkpoint>, StoreError> {
        match self {
            Self::Redis(store) => store.load_checkpoint(group, topic, partition).await,
            Self::Memory(store) => Ok(store.load_checkpoint(group, topic, partition)),
        }
    }

    /// Cached values under `hashes` (None where absent), in one round trip.
    pub async fn cache_get(&self, hashes: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        match self {
            Self::Redis(store) => store.cache_get(hashes).await,
            Self::Memory(store) => Ok(store.cache_get(hashes)),
        }
    }

    /// Caches `(hash, value)` pairs for `ttl_secs`.
    pub async fn cache_put(
        &self,
        entries: &[(String, String)],
        ttl_secs: u64,
    ) -> Result<(), StoreError> {
        match self {
            Self::Redis(store) => store.cache_put(entries, ttl_secs).await,
            Self::Memory(store) => {
                store.cache_put(entries, ttl_secs);
                Ok(())
            }
        }
    }
}
