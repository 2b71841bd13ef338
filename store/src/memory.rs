//! The in-process store for the embedded default: Redis's layout in a mutex-guarded map,
//! bounded by count instead of TTL, except the score cache, whose entries expire as in Redis.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use crate::{Alert, Checkpoint, Retention, ScoredTransaction, WriteOutcome};

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

    pub fn write(&self, rows: &[ScoredTransaction]) -> WriteOutcome {
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
        outcome
    }

    pub fn transaction(&self, trans_num: &str) -> Option<ScoredTransaction> {
        self.lock().transactions.get(trans_num).cloned()
    }

    pub fn card_transactions(&self, cc_num: i64, limit: usize) -> Vec<ScoredTransaction> {
        let inner = self.lock();
        let Some(card) = inner.cards.get(&cc_num) else {
            return Vec::new();
        };
        card.iter()
            .rev()
            .filter_map(|(_, t)| inner.transactions.get(t).cloned())
            .take(limit)
            .collect()
    }

    pub fn anomalies(
        &self,
        since_secs: Option<i64>,
        limit: usize,
        min_score: Option<f64>,
    ) -> Vec<ScoredTransaction> {
        let inner = self.lock();
        inner
            .anomalies
            .iter()
            .rev()
            .take_while(|(secs, _)| since_secs.is_none_or(|s| *secs >= s))
            .filter_map(|(_, t)| inner.transactions.get(t))
            .filter(|row| min_score.is_none_or(|m| row.score >= m))
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn alerts(&self, limit: usize) -> Vec<Alert> {
        self.lock()
            .alerts
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn save_checkpoint(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        checkpoint: &Checkpoint,
    ) -> bool {
        let mut inner = self.lock();
        let key = (group.to_string(), topic.to_string(), partition);
        if inner
            .checkpoints
            .get(&key)
            .is_some_and(|c| c.offset > checkpoint.offset)
        {
            return false;
        }
        inner.checkpoints.insert(key, checkpoint.clone());
        true
    }

    /// Cached answers, None for a hash never cached or past its TTL (as Redis).
    pub fn cache_get(&self, hashes: &[String]) -> Vec<Option<String>> {
        let inner = self.lock();
        let now = std::time::Instant::now();
        hashes
            .iter()
            .map(|h| {
                inner
                    .cache
                    .get(h)
                    .filter(|(_, expires)| *expires > now)
                    .map(|(value, _)| value.clone())
            })
            .collect()
    }

    /// Caches answers for `ttl_secs`, like Redis's `SET … EX`.
    pub fn cache_put(&self, entries: &[(String, String)], ttl_secs: u64) {
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
    }

    pub fn load_checkpoint(&self, group: &str, topic: &str, partition: i32) -> Option<Checkpoint> {
        self.lock()
            .checkpoints
            .get(&(group.to_string(), topic.to_string(), partition))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(trans_num: &str, card: i64, secs: i64, score: f64, anomaly: bool) -> ScoredTransaction {
        ScoredTransaction {
            trans_num: trans_num.to_string(),
            cc_num: card,
            event_time: String::new(),
            event_secs: secs,
            category: "misc_net".to_string(),
            merchant: "m".to_string(),
            amt: 1.0,
            score,
            is_anomaly: anomaly,
            explanation: anomaly.then(|| "log_amt".to_string()),
            is_fraud: None,
        }
    }

    #[test]
    fn replaying_a_write_changes_nothing() {
        let store = MemoryStore::new(Retention::default());
        let rows = vec![row("a", 1, 10, 0.1, false), row("b", 1, 20, 5.0, true)];
        let first = store.write(&rows);
        let second = store.write(&rows);
        assert_eq!(first.new_alerts, 1);
        assert_eq!(second.new_alerts, 0);
        assert_eq!(store.alerts(10).len(), 1);
        assert_eq!(store.card_transactions(1, 10).len(), 2);
        assert_eq!(store.card_transactions(1, 10)[0].trans_num, "b");
        assert_eq!(store.anomalies(None, 10, None).len(), 1);
        assert!(store.anomalies(Some(21), 10, None).is_empty());
        assert!(store.anomalies(None, 10, Some(6.0)).is_empty());
    }

    #[test]
    fn checkpoints_never_go_back() {
        let store = MemoryStore::new(Retention::default());
        let at = |offset| Checkpoint {
            offset,
            state: vec![offset as u8],
            archive_file: None,
        };
        assert!(store.save_checkpoint("g", "t", 0, &at(10)));
        assert!(!store.save_checkpoint("g", "t", 0, &at(5)));
        assert!(store.save_checkpoint("g", "t", 0, &at(12)));
        assert_eq!(store.load_checkpoint("g", "t", 0), Some(at(12)));
        assert_eq!(store.load_checkpoint("g", "t", 1), None);
    }
}
