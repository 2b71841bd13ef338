//! The in-process store for the embedded default: Redis's layout in a mutex-guarded map,
//! bounded by count instead of TTL, except the score cache, whose entries expire as in Redis.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::{
    Alert, Checkpoint, ResultStore, Retention, ScoredTransaction, StoreError, WriteOutcome,
};

/// Transactions kept before the oldest are dropped (the in-process store has no TTL).
const MAX_TRANSACTIONS: usize = 2_000_000;

#[derive(Default)]
struct Inner {
    transactions: HashMap<String, ScoredTransaction>,
    arrival: VecDeque<String>,
    cards: HashMap<i64, BTreeSet<(i64, String)>>,
    anomalies: BTreeSet<(i64, String)>,
    alerted: HashSet<String>,
    alerts: VecDeque<Alert>,
    checkpoints: HashMap<(String, String, i32), Checkpoint>,
    /// Cached scores with the instant they expire (the TTL Redis would give them).
    cache: HashMap<String, (String, std::time::Instant)>,
    cache_order: VecDeque<String>,
}

/// Cached scores kept by the in-process store before the oldest are dropped.
const MAX_CACHED: usize = 100_000;

/// The in-process [`ResultStore`]. Its writes never fail.
pub struct MemoryStore {
    retention: Retention,
    inner: Mutex<Inner>,
}

impl MemoryStore {
    pub fn new(retention: Retention) -> Self {
        Self {
            retention,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl ResultStore for MemoryStore {
    fn describe(&self) -> String {
        "the in-process store (nothing is kept after exit)".to_string()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn write(&self, rows: &[ScoredTransaction]) -> Result<WriteOutcome, StoreError> {
        let r = &self.retention;
        let mut inner = self.lock();
        let mut outcome = WriteOutcome {
            rows: rows.len() as u64,
            ..WriteOutcome::default()
        };
        for row in rows {
            if inner
                .transactions
                .insert(row.trans_num.clone(), row.clone())
                .is_none()
            {
                inner.arrival.push_back(row.trans_num.clone());
            }
            let card = inner.cards.entry(row.cc_num).or_default();
            card.insert((row.event_secs, row.trans_num.clone()));
            while card.len() > r.card_history.max(1) {
                card.pop_first();
            }
            if row.is_anomaly {
                outcome.anomalies += 1;
                inner
                    .anomalies
                    .insert((row.event_secs, row.trans_num.clone()));
                while inner.anomalies.len() > r.anomalies_kept.max(1) {
                    inner.anomalies.pop_first();
                }
                if inner.alerted.insert(row.trans_num.clone()) {
                    outcome.new_alerts += 1;
                    inner.alerts.push_back(Alert::from(row));
                    while inner.alerts.len() > r.alerts_kept.max(1) {
                        inner.alerts.pop_front();
                    }
                }
            }
        }
        while inner.arrival.len() > MAX_TRANSACTIONS {
            if let Some(oldest) = inner.arrival.pop_front() {
                inner.transactions.remove(&oldest);
                inner.alerted.remove(&oldest);
            }
        }
        Ok(outcome)
    }

    async fn transaction(&self, trans_num: &str) -> Result<Option<ScoredTransaction>, StoreError> {
        Ok(self.lock().transactions.get(trans_num).cloned())
    }

    async fn card_transactions(
        &self,
        cc_num: i64,
        limit: usize,
    ) -> Result<Vec<ScoredTransaction>, StoreError> {
        let inner = self.lock();
        let Some(card) = inner.cards.get(&cc_num) else {
            return Ok(Vec::new());
        };
        Ok(card
            .iter()
            .rev()
            .filter_map(|(_, t)| inner.transactions.get(t).cloned())
            .take(limit)
            .collect())
    }

    async fn anomalies(
        &self,
        since_secs: Option<i64>,
        limit: usize,
        min_score: Option<f64>,
    ) -> Result<Vec<ScoredTransaction>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .anomalies
            .iter()
            .rev()
            .take_while(|(secs, _)| since_secs.is_none_or(|s| *secs >= s))
            .filter_map(|(_, t)| inner.transactions.get(t))
            .filter(|row| min_score.is_none_or(|m| row.score >= m))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn alerts(&self, limit: usize) -> Result<Vec<Alert>, StoreError> {
        Ok(self
            .lock()
            .alerts
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect())
    }

    async fn save_checkpoint(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        checkpoint: &Checkpoint,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let key = (group.to_string(), topic.to_string(), partition);
        if inner
            .checkpoints
            .get(&key)
            .is_some_and(|c| c.offset > checkpoint.offset)
        {
            return Ok(false);
        }
        // As Redis keeps it: an empty archive file name is no archive file.
        let checkpoint = Checkpoint {
            archive_file: checkpoint.archive_file.clone().filter(|f| !f.is_empty()),
            ..checkpoint.clone()
        };
        inner.checkpoints.insert(key, checkpoint);
        Ok(true)
    }

    async fn load_checkpoint(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<Checkpoint>, StoreError> {
        Ok(self
            .lock()
            .checkpoints
            .get(&(group.to_string(), topic.to_string(), partition))
            .cloned())
    }

    /// Cached answers, None for a hash never cached or past its TTL (as Redis).
    async fn cache_get(&self, hashes: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        let inner = self.lock();
        let now = std::time::Instant::now();
        Ok(hashes
            .iter()
            .map(|h| {
                inner
                    .cache
                    .get(h)
                    .filter(|(_, expires)| *expires > now)
                    .map(|(value, _)| value.clone())
            })
            .collect())
    }

    /// Caches answers for `ttl_secs`, like Redis's `SET … EX`.
    async fn cache_put(
        &self,
        entries: &[(String, String)],
        ttl_secs: u64,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let expires = std::time::Instant::now() + std::time::Duration::from_secs(ttl_secs.max(1));
        for (hash, value) in entries {
            if inner
                .cache
                .insert(hash.clone(), (value.clone(), expires))
                .is_none()
            {
                inner.cache_order.push_back(hash.clone());
            }
        }
        while inner.cache_order.len() > MAX_CACHED {
            if let Some(oldest) = inner.cache_order.pop_front() {
                inner.cache.remove(&oldest);
            }
        }
        Ok(())
    }
}
