//! The in-process store for the embedded default: Redis's layout in a mutex-guarded map,
//! bounded by count instead of TTL, except the score cache and output hashes, whose entries
//! expire as in Redis. Saved standing queries, like everything else, end with the process.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::output::{self, StreamId};
use crate::{
    Alert, Checkpoint, DeltaSaved, Label, OutputRecord, ResultStore, Retention, ScoredRows,
    ScoredTransaction, StoreError, WriteOutcome,
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
    /// Continuous queries' outputs: one key holds one kind, as in Redis (sorted, for
    /// `output_keys`).
    outputs: BTreeMap<String, Output>,
    /// Output hashes with a TTL, by the instant they expire, so that writes drop them.
    expiring: BTreeSet<(Instant, String)>,
    queries: BTreeMap<String, String>,
    /// The models served by slot (`save_served_model`).
    served_models: BTreeMap<String, String>,
    /// Labels by trans_num (bounded like the transactions: the oldest go first).
    labels: HashMap<String, Label>,
    label_order: VecDeque<String>,
}

enum Output {
    Hash {
        fields: BTreeMap<String, String>,
        expires: Option<Instant>,
    },
    Stream {
        entries: VecDeque<(StreamId, Vec<(String, String)>)>,
        /// The last id given out, which stays when trimming removes its entry: Redis's
        /// `last-generated-id`, the one a new id must exceed.
        last: StreamId,
    },
}

impl Output {
    /// An expired hash is no output (Redis would have dropped it).
    fn live(&self, now: Instant) -> bool {
        match self {
            Output::Hash { expires, .. } => expires.is_none_or(|e| e > now),
            Output::Stream { .. } => true,
        }
    }
}

fn wrong_type(key: &str, holds: &str, wanted: &str) -> StoreError {
    StoreError::Rejected {
        key: key.to_string(),
        reason: format!("holds {holds}, not {wanted}"),
    }
}

impl Inner {
    /// Drops output hashes past their TTL (reads skip them anyway; this bounds memory).
    fn drop_expired(&mut self, now: Instant) {
        while let Some((at, key)) = self.expiring.first().cloned() {
            if at > now {
                break;
            }
            self.expiring.pop_first();
            // Unless rewritten since, with another TTL or none.
            if let Some(Output::Hash { expires, .. }) = self.outputs.get(&key)
                && *expires == Some(at)
            {
                self.outputs.remove(&key);
            }
        }
    }

    fn remove_output(&mut self, key: &str) {
        if let Some(Output::Hash {
            expires: Some(at), ..
        }) = self.outputs.remove(key)
        {
            self.expiring.remove(&(at, key.to_string()));
        }
    }

    fn write_output(
        &mut self,
        record: &OutputRecord,
        id: Option<StreamId>,
        now: Instant,
    ) -> Result<(), StoreError> {
        match record {
            OutputRecord::Hash {
                key,
                fields,
                ttl_secs,
            } => {
                // As DEL, HSET, EXPIRE: whatever was there goes, and no fields is no hash.
                self.remove_output(key);
                if fields.is_empty() {
                    return Ok(());
                }
                let expires = ttl_secs.map(|t| now + Duration::from_secs(t.max(1)));
                if let Some(at) = expires {
                    self.expiring.insert((at, key.clone()));
                }
                let fields = fields.iter().cloned().collect();
                self.outputs
                    .insert(key.clone(), Output::Hash { fields, expires });
                Ok(())
            }
            OutputRecord::StreamEntry {
                key,
                fields,
                max_len,
                ..
            } => {
                if self.outputs.get(key).is_some_and(|o| !o.live(now)) {
                    self.remove_output(key);
                }
                let last = match self.outputs.get(key) {
                    Some(Output::Hash { .. }) => {
                        return Err(wrong_type(key, "a hash", "a stream"));
                    }
                    Some(Output::Stream { last, .. }) => *last,
                    None => (0, 0),
                };
                let id = match id {
                    // At or below the last id (0-0 for a new stream): a replay, skipped,
                    // and a stream is not created for it.
                    Some(id) if id <= last => return Ok(()),
                    Some(id) => id,
                    None => next_id(last).ok_or_else(|| StoreError::Rejected {
                        key: key.clone(),
                        reason: "the stream has used up its ids".to_string(),
                    })?,
                };
                let stream = self
                    .outputs
                    .entry(key.clone())
                    .or_insert_with(|| Output::Stream {
                        entries: VecDeque::new(),
                        last: (0, 0),
                    });
                if let Output::Stream { entries, last } = stream {
                    entries.push_back((id, fields.clone()));
                    *last = id;
                    if let Some(n) = max_len {
                        while entries.len() as u64 > *n {
                            entries.pop_front();
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// The id Redis's `*` gives: the clock in ms, or the last id's next when the clock is not
/// past it.
fn next_id(last: StreamId) -> Option<StreamId> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if now_ms > last.0 {
        Some((now_ms, 0))
    } else if last.1 < u64::MAX {
        Some((last.0, last.1 + 1))
    } else {
        last.0.checked_add(1).map(|ms| (ms, 0))
    }
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

    async fn write(&self, rows: &ScoredRows) -> Result<WriteOutcome, StoreError> {
        let r = &self.retention;
        let mut inner = self.lock();
        let mut outcome = WriteOutcome {
            rows: rows.len() as u64,
            ..WriteOutcome::default()
        };
        for row in rows.iter() {
            let record = row.to_record();
            if inner
                .transactions
                .insert(record.trans_num.clone(), record)
                .is_none()
            {
                inner.arrival.push_back(row.trans_num.to_string());
            }
            let card = inner.cards.entry(row.cc_num).or_default();
            card.insert((row.event_secs(), row.trans_num.to_string()));
            while card.len() > r.card_history.max(1) {
                card.pop_first();
            }
            if row.is_anomaly {
                outcome.anomalies += 1;
                inner
                    .anomalies
                    .insert((row.event_secs(), row.trans_num.to_string()));
                while inner.anomalies.len() > r.anomalies_kept.max(1) {
                    inner.anomalies.pop_first();
                }
                if inner.alerted.insert(row.trans_num.to_string()) {
                    outcome.new_alerts += 1;
                    inner.alerts.push_back(Alert::from(&row));
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

    async fn transactions(
        &self,
        trans_nums: &[String],
    ) -> Result<Vec<ScoredTransaction>, StoreError> {
        let inner = self.lock();
        Ok(trans_nums
            .iter()
            .filter_map(|t| inner.transactions.get(t).cloned())
            .collect())
    }

    async fn write_labels(&self, labels: &[Label]) -> Result<Vec<bool>, StoreError> {
        let mut inner = self.lock();
        let mut new = Vec::with_capacity(labels.len());
        for label in labels {
            if inner.labels.contains_key(&label.trans_num) {
                new.push(false);
                continue;
            }
            inner.labels.insert(label.trans_num.clone(), label.clone());
            inner.label_order.push_back(label.trans_num.clone());
            if inner.label_order.len() > MAX_TRANSACTIONS
                && let Some(oldest) = inner.label_order.pop_front()
            {
                inner.labels.remove(&oldest);
            }
            new.push(true);
        }
        Ok(new)
    }

    async fn labels(&self, trans_nums: &[String]) -> Result<Vec<Option<Label>>, StoreError> {
        let inner = self.lock();
        Ok(trans_nums
            .iter()
            .map(|t| inner.labels.get(t).cloned())
            .collect())
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
            deltas: Vec::new(),
            ..checkpoint.clone()
        };
        inner.checkpoints.insert(key, checkpoint);
        Ok(true)
    }

    async fn save_checkpoint_delta(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        parent: i64,
        checkpoint: &Checkpoint,
    ) -> Result<DeltaSaved, StoreError> {
        let mut inner = self.lock();
        let key = (group.to_string(), topic.to_string(), partition);
        let Some(stored) = inner.checkpoints.get_mut(&key) else {
            return Ok(DeltaSaved::NotParent);
        };
        if stored.offset > checkpoint.offset {
            return Ok(DeltaSaved::Behind);
        }
        if stored.offset != parent {
            return Ok(DeltaSaved::NotParent);
        }
        stored.offset = checkpoint.offset;
        stored.deltas.push(checkpoint.state.clone());
        stored.archive_file = checkpoint.archive_file.clone().filter(|f| !f.is_empty());
        Ok(DeltaSaved::Saved)
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

    async fn write_outputs(&self, records: &[OutputRecord]) -> Result<(), StoreError> {
        let ids = output::check(records)?;
        let mut inner = self.lock();
        let now = Instant::now();
        inner.drop_expired(now);
        // Like a Redis transaction: a record that fails does not stop the others.
        let mut first_error = None;
        for (record, id) in records.iter().zip(ids) {
            if let Err(error) = inner.write_output(record, id, now) {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn read_output_hash(
        &self,
        key: &str,
    ) -> Result<Option<Vec<(String, String)>>, StoreError> {
        let now = Instant::now();
        match self.lock().outputs.get(key) {
            Some(Output::Hash { fields, expires }) if expires.is_none_or(|e| e > now) => Ok(Some(
                fields.iter().map(|(f, v)| (f.clone(), v.clone())).collect(),
            )),
            Some(Output::Stream { .. }) => Err(wrong_type(key, "a stream", "a hash")),
            _ => Ok(None),
        }
    }

    async fn read_output_stream(
        &self,
        key: &str,
        count: usize,
    ) -> Result<Vec<(String, Vec<(String, String)>)>, StoreError> {
        let now = Instant::now();
        match self.lock().outputs.get(key) {
            Some(Output::Stream { entries, .. }) => Ok(entries
                .iter()
                .take(count)
                .map(|(id, fields)| (output::format_stream_id(*id), fields.clone()))
                .collect()),
            Some(hash) if hash.live(now) => Err(wrong_type(key, "a hash", "a stream")),
            _ => Ok(Vec::new()),
        }
    }

    async fn output_keys(&self, pattern: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let now = Instant::now();
        Ok(self
            .lock()
            .outputs
            .iter()
            .filter(|(key, value)| value.live(now) && output::glob_matches(pattern, key))
            .map(|(key, _)| key.clone())
            .take(limit)
            .collect())
    }

    async fn save_query(&self, name: &str, sql: &str) -> Result<(), StoreError> {
        self.lock()
            .queries
            .insert(name.to_string(), sql.to_string());
        Ok(())
    }

    async fn delete_query(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.lock().queries.remove(name).is_some())
    }

    async fn load_queries(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .lock()
            .queries
            .iter()
            .map(|(name, sql)| (name.clone(), sql.clone()))
            .collect())
    }

    async fn save_served_model(&self, slot: &str, id: Option<&str>) -> Result<(), StoreError> {
        self.lock()
            .served_models
            .insert(slot.to_string(), id.unwrap_or_default().to_string());
        Ok(())
    }

    async fn served_models(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .lock()
            .served_models
            .iter()
            .map(|(slot, id)| (slot.clone(), id.clone()))
            .collect())
    }
}
