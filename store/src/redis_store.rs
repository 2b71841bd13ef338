//! The Redis store: a micro-batch's writes as pipelines sent back to back.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

// Keyed by card, per row written (see udfs/src/windows/history.rs on foldhash).
use foldhash::{HashMap as FastMap, HashSet as FastSet};

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::{AsyncCommands, Script};

use crate::layout;
use crate::output::{self, OutputRecord};
use crate::redis_connection::Connection;
use crate::{
    Alert, Checkpoint, DeltaSaved, Label, ResultStore, Retention, ScoredRow, ScoredRows,
    ScoredTransaction, StoreError, WriteOutcome,
};

/// Emits an alert once: an anomaly is alerted when it enters its shard's index (ZADD NX
/// answers 1 only then), in the same atomic step, so a replayed anomaly adds nothing and a
/// crash cannot index an anomaly without its alert. The entry carries the server's time in
/// microseconds (`us`), which orders alerts across shards.
/// KEYS[1]: the shard's anomaly index; KEYS[2]: its alerts stream; ARGV[1]: event seconds;
/// ARGV[2]: trans_num; ARGV[3]: the stream's MAXLEN ~; ARGV[4..]: the alert's fields.
const ALERT_ONCE: &str = r"
if redis.call('ZADD', KEYS[1], 'NX', ARGV[1], ARGV[2]) == 1 then
  local now = redis.call('TIME')
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'us', now[1] .. string.format('%06d', now[2]), unpack(ARGV, 4))
  return 1
end
return 0
";

/// Saves a checkpoint unless the stored one has a higher offset: whole when ARGV[1] is ''
/// (replacing the state and every delta), else as a delta (field `delta:<n>`, `deltas` =
/// n) only when the stored checkpoint is at its parent offset ARGV[1]. ARGV[2..5]:
/// offset, state, saved_at_ms, archive_file. Returns 1 saved, 0 a checkpoint further on
/// is there, 2 another parent.
const SAVE_CHECKPOINT: &str = r"
local current = redis.call('HGET', KEYS[1], 'offset')
if current and tonumber(current) > tonumber(ARGV[2]) then
  return 0
end
if ARGV[1] == '' then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'offset', ARGV[2], 'state', ARGV[3], 'saved_at_ms', ARGV[4], 'archive_file', ARGV[5])
  return 1
end
if not current or tonumber(current) ~= tonumber(ARGV[1]) then
  return 2
end
local n = redis.call('HINCRBY', KEYS[1], 'deltas', 1)
redis.call('HSET', KEYS[1], 'offset', ARGV[2], 'delta:' .. n, ARGV[3], 'saved_at_ms', ARGV[4], 'archive_file', ARGV[5])
return 1
";

/// Appends a stream entry with an explicit id unless the stream is past it: XADD refuses an
/// id at or below the stream's last one (which is exactly a replay), and that refusal
/// becomes "skipped" (0) instead of an error that would fail the whole batch.
/// KEYS[1]: the stream; ARGV[1]: the id; ARGV[2]: MAXLEN ~ ('' for none); ARGV[3..]: fields
/// and values.
const APPEND_ONCE: &str = r"
local xadd = {'XADD', KEYS[1]}
if ARGV[2] ~= '' then
  xadd[#xadd + 1] = 'MAXLEN'
  xadd[#xadd + 1] = '~'
  xadd[#xadd + 1] = ARGV[2]
end
xadd[#xadd + 1] = ARGV[1]
for i = 3, #ARGV do
  xadd[#xadd + 1] = ARGV[i]
end
local added = redis.pcall(unpack(xadd))
if type(added) == 'table' and added.err then
  if string.find(added.err, 'equal or smaller', 1, true)
      or string.find(added.err, 'greater than 0-0', 1, true) then
    return 0
  end
  return added
end
return 1
";

/// Keys asked for per `SCAN` call when listing output keys.
const SCAN_COUNT: usize = 1000;

/// A card's list is trimmed (to `CARD_LIST_SLACK` × `card_history`) and its TTL renewed at
/// its first write seen by this store, then after this many of its transactions or
/// [`CARD_RENEW_SECS`]: doing both at every write was two of the four commands a
/// transaction cost Redis. Readers take only a list's head, so a list not trimmed yet
/// reads the same.
const CARD_TRIM_EVERY: u32 = 16;
/// At most this long between renewals of a card list's TTL (and less than a sixteenth of
/// the TTL): a list lives at least its TTL less this after its last write.
const CARD_RENEW_SECS: u64 = 3600;
/// Cards whose last upkeep this store remembers; past it, it forgets them all (each is
/// then trimmed and renewed at its next write, which is always safe).
const CARD_MARKS_MAX: usize = 2_000_000;

/// When this store last trimmed and renewed a card's list.
#[derive(Clone, Copy)]
struct CardMark {
    at_secs: u64,
    adds: u32,
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `url` with the password of its user info replaced by `***`: URLs end up in logs, error
/// messages and the readiness answer.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let user = rest[..at]
        .split_once(':')
        .map_or(&rest[..at], |(user, _)| user);
    let password = if rest[..at].contains(':') || !user.is_empty() {
        ":***"
    } else {
        ""
    };
    format!("{scheme}://{user}{password}@{}", &rest[at + 1..])
}

/// The production [`ResultStore`]: one Redis or a Redis Cluster (see [`layout`]), over one
/// multiplexed connection that reconnects by itself.
#[derive(Clone)]
pub struct RedisStore {
    url: String,
    /// The URL as given (with its password), to connect again; never shown.
    target: String,
    /// Replaced when a request outlives [`REQUEST_DEADLINE`] (see [`RedisStore::bounded`]).
    connection: Arc<parking_lot::RwLock<Connection>>,
    retention: Retention,
    save_checkpoint: Script,
    alert_once: Script,
    append_once: Script,
    card_marks: Arc<Mutex<FastMap<i64, CardMark>>>,
}

/// One pipeline per hash tag (a cluster pipeline must stay in one slot).
#[derive(Default)]
struct Pipelines {
    by_tag: BTreeMap<(u8, usize), redis::Pipeline>,
}

impl Pipelines {
    fn get(&mut self, kind: u8, tag: usize) -> &mut redis::Pipeline {
        self.by_tag.entry((kind, tag)).or_insert_with(redis::pipe)
    }
}

const TRANSACTIONS: u8 = 0;
const ALERTS: u8 = 1;
const LAYOUT: u8 = 2;

/// How long one request (a micro-batch's writes, a checkpoint, the outputs, a read of
/// records; see [`RedisStore::bounded`]'s callers) may take before it
/// counts as failed and the connection is replaced: far beyond a healthy answer (a 77 MB
/// checkpoint saves in about a second), short enough that a wedged connection does not
/// stall the stream for long.
const REQUEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// How long opening a replacement connection may take.
const RECONNECT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Periods a read asks first (then the older live ones, only for what it did not find):
/// a lookup soon after the write finds it in one round trip.
const FIRST_PERIODS: usize = 2;

impl RedisStore {
    pub async fn connect(url: &str, retention: Retention) -> Result<Self, StoreError> {
        let shown = redact(url);
        if retention.prefix.contains(['{', '}']) {
            return Err(StoreError::Rejected {
                key: retention.prefix.clone(),
                reason: "a key prefix must not hold `{` or `}` (they make Redis Cluster hash tags)"
                    .to_string(),
            });
        }
        let connection = Connection::open(url)
            .await
            .map_err(|source| StoreError::Redis {
                url: shown.clone(),
                source,
            })?;
        let store = Self {
            url: shown,
            target: url.to_string(),
            connection: Arc::new(parking_lot::RwLock::new(connection)),
            retention,
            save_checkpoint: Script::new(SAVE_CHECKPOINT),
            alert_once: Script::new(ALERT_ONCE),
            append_once: Script::new(APPEND_ONCE),
            card_marks: Arc::new(Mutex::new(FastMap::default())),
        };
        store.ping().await?;
        Ok(store)
    }

    /// The current connection (a cheap handle onto a multiplexed one).
    fn conn(&self) -> Connection {
        self.connection.read().clone()
    }

    /// Runs a request against a deadline. A request that outlives it fails as a timeout
    /// (retryable), and the connection is opened anew: a cluster connection has been seen
    /// to wedge — requests that never complete — after a shard restarted under load, and
    /// waiting on it would stall the stream for good.
    async fn bounded<T>(
        &self,
        request: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(REQUEST_DEADLINE, request).await {
            // The client's own response timeout: after a cluster shard restarted, every
            // request on the old connection timed out this way for minutes (the client's
            // background repair never finished), so it counts as wedged too.
            Ok(Err(StoreError::Redis { url, source })) if source.is_timeout() => {
                self.reconnect("a Redis request timed out; connecting again")
                    .await;
                Err(StoreError::Redis { url, source })
            }
            Ok(result) => result,
            Err(_) => {
                self.reconnect("a Redis request outlived its deadline; connecting again")
                    .await;
                Err(self.error(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", REQUEST_DEADLINE.as_secs()),
                ))))
            }
        }
    }

    /// Every field of the hash `key` with its value, sorted by field.
    async fn sorted_hash(&self, key: String) -> Result<Vec<(String, String)>, StoreError> {
        let mut connection = self.conn();
        let pairs: BTreeMap<String, String> =
            connection.hgetall(key).await.map_err(|e| self.error(e))?;
        Ok(pairs.into_iter().collect())
    }

    /// Replaces the connection with a new one (if one can be opened in time).
    async fn reconnect(&self, why: &str) {
        tracing::warn!(url = %self.url, deadline_secs = REQUEST_DEADLINE.as_secs(), "{why}");
        // Bounded too: a cluster client's first connection can hang as well.
        match tokio::time::timeout(RECONNECT_DEADLINE, Connection::open(&self.target)).await {
            Ok(Ok(fresh)) => *self.connection.write() = fresh,
            Ok(Err(error)) => {
                tracing::warn!(url = %self.url, %error, "connecting to Redis again failed")
            }
            Err(_) => {
                tracing::warn!(url = %self.url, "connecting to Redis again timed out")
            }
        }
    }

    /// The URL, its password replaced by `***` (what logs, errors and `/readyz` show).
    pub fn url(&self) -> &str {
        &self.url
    }

    fn error(&self, source: redis::RedisError) -> StoreError {
        StoreError::Redis {
            url: self.url.clone(),
            source,
        }
    }

    /// The cards among `cards` whose list is due for upkeep (trim and TTL), given how many
    /// transactions each gets now; the marks change only once the write succeeded
    /// ([`Self::kept_up`]).
    fn due_cards(&self, cards: &FastMap<i64, u32>) -> FastSet<i64> {
        let now = unix_secs();
        let renew = CARD_RENEW_SECS.min(self.retention.ttl_secs / 16);
        let marks = self.card_marks.lock();
        cards
            .iter()
            .filter(|(card, adds)| {
                marks.get(card).is_none_or(|mark| {
                    mark.adds + **adds >= CARD_TRIM_EVERY || now >= mark.at_secs + renew
                })
            })
            .map(|(card, _)| *card)
            .collect()
    }

    fn kept_up(&self, cards: &FastMap<i64, u32>, due: &FastSet<i64>) {
        let now = unix_secs();
        let mut marks = self.card_marks.lock();
        if marks.len() > CARD_MARKS_MAX {
            marks.clear();
        }
        for (card, adds) in cards {
            if due.contains(card) {
                marks.insert(
                    *card,
                    CardMark {
                        at_secs: now,
                        adds: 0,
                    },
                );
            } else if let Some(mark) = marks.get_mut(card) {
                mark.adds += adds;
            }
        }
    }

    /// [`ResultStore::write`], without its deadline.
    async fn write_rows(&self, rows: &ScoredRows) -> Result<WriteOutcome, StoreError> {
        let r = &self.retention;
        let prefix = r.prefix.as_str();
        let ttl = r.ttl_secs.max(1);
        let mut pipes = Pipelines::default();
        // Every record's value in one buffer (a string per record was an allocation and a
        // free per scored row); each bucket lists its records' places in it.
        let mut values: Vec<u8> = Vec::with_capacity(rows.len() * 160);
        let mut records: BTreeMap<usize, Vec<(&str, std::ops::Range<usize>)>> = BTreeMap::new();
        let mut cards: FastMap<i64, Vec<(i64, &str)>> = FastMap::default();
        let mut anomalies = 0u64;
        for row in rows.iter() {
            let start = values.len();
            encode_transaction(&row, &mut values);
            records
                .entry(layout::bucket_of(row.trans_num))
                .or_default()
                .push((row.trans_num, start..values.len()));
            cards
                .entry(row.cc_num)
                .or_default()
                .push((row.event_secs(), row.trans_num));
            if row.is_anomaly {
                anomalies += 1;
                let shard = layout::shard_of(row.trans_num);
                let pipe = pipes.get(ALERTS, shard);
                if pipe.cmd_iter().next().is_none() {
                    // Loaded in the pipeline that uses it: a restarted node (which forgot
                    // its scripts) never fails the batch.
                    pipe.cmd("SCRIPT").arg("LOAD").arg(ALERT_ONCE).ignore();
                }
                pipe.cmd("EVALSHA")
                    .arg(self.alert_once.get_hash())
                    .arg(2)
                    .arg(layout::anomalies(prefix, shard))
                    .arg(layout::alerts(prefix, shard))
                    .arg(row.event_secs())
                    .arg(row.trans_num)
                    .arg(r.alerts_kept.max(1))
                    .arg("trans_num")
                    .arg(row.trans_num)
                    .arg("cc_num")
                    .arg(row.cc_num)
                    .arg("event_time")
                    .arg(row.event_time().as_str())
                    .arg("amt")
                    .arg(row.amt)
                    .arg("category")
                    .arg(row.category)
                    .arg("score")
                    .arg(row.score)
                    .arg("explanation")
                    .arg(row.explanation.unwrap_or(""))
                    .arg("model_id")
                    .arg(row.model_id.unwrap_or(""));
            }
        }
        // Per bucket, once per write: its records in this period's hash (HSET of a field
        // again is idempotent: a replayed batch changes nothing), which expires a TTL
        // after the period ends (see `layout`).
        let period = layout::period_of(unix_secs(), ttl);
        let expires_at = layout::period_expires_at(period, ttl);
        if !records.is_empty() {
            // Readers find the periods by the writer's TTL (one small write per batch).
            // It expires with the last records written by it.
            pipes
                .get(LAYOUT, 0)
                .set_ex(
                    layout::written_with(prefix),
                    ttl,
                    ttl + layout::period_secs(ttl),
                )
                .ignore();
        }
        for (bucket, fields) in &records {
            let key = layout::transactions(prefix, *bucket, ttl, period);
            let pipe = pipes.get(TRANSACTIONS, *bucket);
            let fields: Vec<(&str, &[u8])> = fields
                .iter()
                .map(|(trans_num, at)| (*trans_num, &values[at.clone()]))
                .collect();
            pipe.hset_multiple(&key, &fields).ignore();
            pipe.cmd("EXPIREAT").arg(&key).arg(expires_at).ignore();
        }
        // Per card, once per write: its new trans_nums pushed oldest first, so the newest is
        // at the head; trimmed and renewed when due. A replay pushes repeats, which readers
        // drop (and the slack in the trim keeps from pushing others out).
        let adds: FastMap<i64, u32> = cards
            .iter()
            .map(|(card, members)| (*card, members.len() as u32))
            .collect();
        let due = self.due_cards(&adds);
        let kept = r.card_history.max(1) * layout::CARD_LIST_SLACK;
        for (card, members) in &mut cards {
            members.sort_unstable();
            let key = layout::card(prefix, *card);
            let pipe = pipes.get(TRANSACTIONS, layout::card_bucket(*card));
            let trans_nums: Vec<&str> = members.iter().map(|(_, t)| *t).collect();
            pipe.lpush(&key, trans_nums).ignore();
            if due.contains(card) {
                pipe.ltrim(&key, 0, kept as isize - 1).ignore();
                pipe.expire(&key, ttl as i64).ignore();
            }
        }
        // Trimmed once per shard and write; the index is what marks an anomaly alerted.
        for ((kind, shard), pipe) in &mut pipes.by_tag {
            if *kind == ALERTS {
                pipe.zremrangebyrank(
                    layout::anomalies(prefix, *shard),
                    0,
                    -(r.anomalies_kept.max(1) as isize) - 1,
                )
                .ignore();
            }
        }
        // All pipelines at once on the multiplexed connection: Redis executes one while the
        // next is still being sent (a cluster's go to their nodes in parallel).
        let sends = pipes.by_tag.iter().map(|((kind, _), pipe)| {
            let mut connection = self.conn();
            async move {
                let replies: Vec<i64> = pipe.query_async(&mut connection).await?;
                Ok::<_, redis::RedisError>(if *kind == ALERTS {
                    replies.iter().filter(|&&added| added == 1).count() as u64
                } else {
                    0
                })
            }
        });
        let new_alerts: u64 = futures::future::try_join_all(sends)
            .await
            .map_err(|e| self.error(e))?
            .into_iter()
            .sum();
        self.kept_up(&adds, &due);
        Ok(WriteOutcome {
            rows: rows.len() as u64,
            anomalies,
            new_alerts,
        })
    }

    /// [`SAVE_CHECKPOINT`]: whole (no parent) or as a delta on `parent`.
    async fn run_save_checkpoint(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        parent: Option<i64>,
        checkpoint: &Checkpoint,
    ) -> Result<i64, StoreError> {
        let key = layout::checkpoint(&self.retention.prefix, group, topic, partition);
        let mut connection = self.conn();
        self.bounded(async {
            self.save_checkpoint
                .key(&key)
                .arg(parent.map_or(String::new(), |p| p.to_string()))
                .arg(checkpoint.offset)
                .arg(checkpoint.state.as_slice())
                .arg(risksense_common::metrics::now_ms())
                .arg(checkpoint.archive_file.as_deref().unwrap_or(""))
                .invoke_async(&mut connection)
                .await
                .map_err(|e| self.error(e))
        })
        .await
    }

    /// The TTL the writer under this prefix uses (`{p}:layout`; this store's own when no
    /// writer has said), which names and dates the periods' hashes.
    async fn written_ttl(&self) -> Result<u64, StoreError> {
        let mut connection = self.conn();
        let written: Option<u64> = redis::cmd("GET")
            .arg(layout::written_with(&self.retention.prefix))
            .query_async(&mut connection)
            .await
            .map_err(|e| self.error(e))?;
        Ok(written.unwrap_or(self.retention.ttl_secs).max(1))
    }

    /// Reads the transactions of `trans_nums` (in that order, skipping those not found):
    /// per bucket one pipeline over the newest [`FIRST_PERIODS`] periods' hashes, then one
    /// over the older live ones for what was not found, all buckets at once. Where a record
    /// is in two periods (a batch replayed across a period's end), the newer wins.
    async fn read_transactions(
        &self,
        trans_nums: &[String],
    ) -> Result<Vec<ScoredTransaction>, StoreError> {
        if trans_nums.is_empty() {
            return Ok(Vec::new());
        }
        let prefix = &self.retention.prefix;
        let ttl = self.written_ttl().await?;
        let found = self
            .read_fields(trans_nums, ttl, |bucket, period| {
                layout::transactions(prefix, bucket, ttl, period)
            })
            .await?;
        let mut rows = Vec::with_capacity(found.len());
        for (trans_num, value) in trans_nums.iter().zip(found) {
            if let Some((key, value)) = value {
                rows.push(decode_transaction(&key, trans_num, &value)?);
            }
        }
        Ok(rows)
    }

    /// Each of `trans_nums`' field in the period hashes `key` names (by bucket and period,
    /// of a writer whose TTL is `ttl`), with the key it was found in: per bucket one
    /// pipeline over the newest [`FIRST_PERIODS`] periods' hashes, then one over the older
    /// live ones for what was not found, all buckets at once. Where a field is in two
    /// periods, the newer wins.
    async fn read_fields(
        &self,
        trans_nums: &[String],
        ttl: u64,
        key: impl Fn(usize, u64) -> String,
    ) -> Result<Vec<Option<(String, String)>>, StoreError> {
        let periods: Vec<u64> = layout::live_periods(unix_secs(), ttl).collect();
        let (newest, older) = periods.split_at(FIRST_PERIODS.min(periods.len()));
        let mut found: Vec<Option<(String, String)>> = vec![None; trans_nums.len()];
        for periods in [newest, older] {
            let mut by_bucket: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for (i, trans_num) in trans_nums.iter().enumerate() {
                if found[i].is_none() {
                    by_bucket
                        .entry(layout::bucket_of(trans_num))
                        .or_default()
                        .push(i);
                }
            }
            if by_bucket.is_empty() || periods.is_empty() {
                break;
            }
            let reads = by_bucket.into_iter().map(|(bucket, indices)| {
                let keys: Vec<String> = periods.iter().map(|&period| key(bucket, period)).collect();
                let mut pipe = redis::pipe();
                let fields: Vec<&str> = indices.iter().map(|&i| trans_nums[i].as_str()).collect();
                for key in &keys {
                    pipe.cmd("HMGET").arg(key).arg(&fields);
                }
                let mut connection = self.conn();
                async move {
                    let replies: Vec<Vec<Option<String>>> =
                        pipe.query_async(&mut connection).await?;
                    Ok::<_, redis::RedisError>((keys, indices, replies))
                }
            });
            let replies = self
                .bounded(async {
                    futures::future::try_join_all(reads)
                        .await
                        .map_err(|e| self.error(e))
                })
                .await?;
            for (keys, indices, replies) in replies {
                // Newest period first: the first value found wins.
                for (key, values) in keys.into_iter().zip(replies) {
                    for (&i, value) in indices.iter().zip(values) {
                        if let (None, Some(value)) = (&found[i], value) {
                            found[i] = Some((key.clone(), value));
                        }
                    }
                }
            }
        }
        Ok(found)
    }

    /// The labels of `trans_nums` in the period hashes of a writer whose TTL is `ttl`.
    async fn read_labels(
        &self,
        trans_nums: &[String],
        ttl: u64,
    ) -> Result<Vec<Option<Label>>, StoreError> {
        let prefix = &self.retention.prefix;
        let found = self
            .read_fields(trans_nums, ttl, |bucket, period| {
                layout::labels(prefix, bucket, ttl, period)
            })
            .await?;
        found
            .into_iter()
            .zip(trans_nums)
            .map(|(value, trans_num)| {
                value
                    .map(|(key, value)| {
                        let (is_fraud, labelled_ms): (u8, i64) = serde_json::from_str(&value)
                            .map_err(|e| StoreError::Malformed {
                                key,
                                reason: e.to_string(),
                            })?;
                        Ok(Label {
                            trans_num: trans_num.clone(),
                            is_fraud: is_fraud == 1,
                            labelled_ms,
                        })
                    })
                    .transpose()
            })
            .collect()
    }

    /// Members of a sorted set with their scores, highest first, from `offset` on.
    async fn newest(
        &self,
        key: &str,
        min: &str,
        offset: usize,
        count: usize,
    ) -> Result<Vec<(String, f64)>, StoreError> {
        let mut connection = self.conn();
        redis::cmd("ZREVRANGEBYSCORE")
            .arg(key)
            .arg("+inf")
            .arg(min)
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(offset)
            .arg(count)
            .query_async(&mut connection)
            .await
            .map_err(|e| self.error(e))
    }
}

/// A transaction's value: `[cc_num, event_time, category, merchant, amt, score, is_anomaly
/// (0/1), explanation or null, is_fraud or null, model_id or null, challenger_id or null,
/// challenger_flag (0/1) or null]`, appended to `out`. Non-finite numbers are null. Records
/// written before model ids end at is_fraud and still read.
fn encode_transaction(row: &ScoredRow<'_>, out: &mut Vec<u8>) {
    let number = |x: f64| x.is_finite().then_some(x);
    // A tuple is written as a JSON array straight into the buffer (a `serde_json::Value`
    // tree cost an allocation per element: 6 % of the engine at the drain).
    let event_time = row.event_time();
    let value = (
        row.cc_num,
        event_time.as_str(),
        row.category,
        row.merchant,
        number(row.amt),
        number(row.score),
        u8::from(row.is_anomaly),
        row.explanation,
        row.is_fraud,
        row.model_id,
        row.challenger_id,
        row.challenger_flag.map(u8::from),
    );
    // Numbers, strings and options always serialize, and a Vec takes every write.
    let _ = serde_json::to_writer(out, &value);
}

type Encoded = (
    i64,
    String,
    String,
    String,
    Option<f64>,
    Option<f64>,
    u8,
    Option<String>,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<u8>,
);

/// A record as written before rows carried their model's id (still readable until its
/// period expires).
type EncodedBeforeIds = (
    i64,
    String,
    String,
    String,
    Option<f64>,
    Option<f64>,
    u8,
    Option<String>,
    Option<i32>,
);

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum AnyEncoded {
    Current(Encoded),
    BeforeIds(EncodedBeforeIds),
}

fn decode_transaction(
    key: &str,
    trans_num: &str,
    value: &str,
) -> Result<ScoredTransaction, StoreError> {
    let malformed = |reason: String| StoreError::Malformed {
        key: key.to_string(),
        reason,
    };
    let (
        cc_num,
        event_time,
        category,
        merchant,
        amt,
        score,
        is_anomaly,
        explanation,
        is_fraud,
        model_id,
        challenger_id,
        challenger_flag,
    ): Encoded = match serde_json::from_str(value).map_err(|e| malformed(e.to_string()))? {
        AnyEncoded::Current(encoded) => encoded,
        AnyEncoded::BeforeIds((a, b, c, d, e, f, g, h, i)) => {
            (a, b, c, d, e, f, g, h, i, None, None, None)
        }
    };
    let event_secs = risksense_common::time::parse_timestamp_micros(&event_time)
        .ok_or_else(|| {
            malformed(format!(
                "event_time `{event_time}` is not YYYY-MM-DD HH:MM:SS"
            ))
        })?
        .div_euclid(risksense_common::time::MICROS_PER_SECOND);
    Ok(ScoredTransaction {
        trans_num: trans_num.to_string(),
        cc_num,
        event_time,
        event_secs,
        category,
        merchant,
        amt: amt.unwrap_or(f64::NAN),
        score: score.unwrap_or(f64::NAN),
        is_anomaly: is_anomaly == 1,
        explanation: explanation.filter(|e| !e.is_empty()),
        is_fraud,
        model_id,
        challenger_id,
        challenger_flag: challenger_flag.map(|f| f == 1),
    })
}

/// An alert as its stream entry holds it, with the server time it was emitted at.
fn parse_alert(entry: &redis::streams::StreamId) -> (u64, Alert) {
    let text = |name: &str| -> String {
        entry
            .map
            .get(name)
            .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
            .unwrap_or_default()
    };
    let number = |name: &str| text(name).parse::<f64>().unwrap_or(f64::NAN);
    let explanation = text("explanation");
    let model_id = text("model_id");
    (
        text("us").parse().unwrap_or_default(),
        Alert {
            trans_num: text("trans_num"),
            cc_num: text("cc_num").parse().unwrap_or_default(),
            event_time: text("event_time"),
            amt: number("amt"),
            category: text("category"),
            score: number("score"),
            explanation: (!explanation.is_empty()).then_some(explanation),
            model_id: (!model_id.is_empty()).then_some(model_id),
        },
    )
}

#[async_trait]
impl ResultStore for RedisStore {
    fn describe(&self) -> String {
        if self.conn().is_cluster() {
            format!("Redis Cluster at {}", self.url)
        } else {
            format!("Redis at {}", self.url)
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.conn();
        let _: String = redis::cmd("PING")
            .query_async(&mut connection)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn write(&self, rows: &ScoredRows) -> Result<WriteOutcome, StoreError> {
        self.bounded(self.write_rows(rows)).await
    }

    async fn transaction(&self, trans_num: &str) -> Result<Option<ScoredTransaction>, StoreError> {
        Ok(self
            .read_transactions(&[trans_num.to_string()])
            .await?
            .into_iter()
            .next())
    }

    async fn transactions(
        &self,
        trans_nums: &[String],
    ) -> Result<Vec<ScoredTransaction>, StoreError> {
        self.read_transactions(trans_nums).await
    }

    async fn write_labels(&self, labels: &[Label]) -> Result<Vec<bool>, StoreError> {
        if labels.is_empty() {
            return Ok(Vec::new());
        }
        self.bounded(async {
            // Labels already kept in an earlier period are not written again; within this
            // period HSETNX keeps the first.
            let trans_nums: Vec<String> = labels.iter().map(|l| l.trans_num.clone()).collect();
            let ttl = self.written_ttl().await?;
            let known = self.read_labels(&trans_nums, ttl).await?;
            let period = layout::period_of(unix_secs(), ttl);
            let expires_at = layout::period_expires_at(period, ttl);
            let mut by_bucket: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for (i, label) in labels.iter().enumerate() {
                if known[i].is_none() {
                    by_bucket
                        .entry(layout::bucket_of(&label.trans_num))
                        .or_default()
                        .push(i);
                }
            }
            let writes = by_bucket.into_iter().map(|(bucket, indices)| {
                let key = layout::labels(&self.retention.prefix, bucket, ttl, period);
                let mut pipe = redis::pipe();
                for &i in &indices {
                    let label = &labels[i];
                    pipe.cmd("HSETNX").arg(&key).arg(&label.trans_num).arg(
                        serde_json::to_string(&(u8::from(label.is_fraud), label.labelled_ms))
                            .unwrap_or_default(),
                    );
                }
                pipe.cmd("EXPIREAT").arg(&key).arg(expires_at).ignore();
                let mut connection = self.conn();
                async move {
                    let added: Vec<u8> = pipe.query_async(&mut connection).await?;
                    Ok::<_, redis::RedisError>((indices, added))
                }
            });
            let written = futures::future::try_join_all(writes)
                .await
                .map_err(|e| self.error(e))?;
            let mut new = vec![false; labels.len()];
            for (indices, added) in written {
                for (i, added) in indices.into_iter().zip(added) {
                    new[i] = added == 1;
                }
            }
            Ok(new)
        })
        .await
    }

    async fn labels(&self, trans_nums: &[String]) -> Result<Vec<Option<Label>>, StoreError> {
        if trans_nums.is_empty() {
            return Ok(Vec::new());
        }
        let ttl = self.written_ttl().await?;
        self.read_labels(trans_nums, ttl).await
    }

    async fn card_transactions(
        &self,
        cc_num: i64,
        limit: usize,
    ) -> Result<Vec<ScoredTransaction>, StoreError> {
        let history = self.retention.card_history.max(1);
        let limit = limit.min(history);
        if limit == 0 {
            return Ok(Vec::new());
        }
        // The list's head (it may hold more until its next trim), repeats dropped, ordered
        // by event time, newest first (ties: the greater trans_num first).
        let key = layout::card(&self.retention.prefix, cc_num);
        let mut connection = self.conn();
        let members: Vec<String> = redis::cmd("LRANGE")
            .arg(&key)
            .arg(0)
            .arg(history * layout::CARD_LIST_SLACK - 1)
            .query_async(&mut connection)
            .await
            .map_err(|e| self.error(e))?;
        let mut seen = HashSet::new();
        let members: Vec<String> = members
            .into_iter()
            .filter(|member| seen.insert(member.clone()))
            .collect();
        let mut rows = self.read_transactions(&members).await?;
        rows.sort_by(|a, b| {
            b.event_secs
                .cmp(&a.event_secs)
                .then_with(|| b.trans_num.cmp(&a.trans_num))
        });
        rows.truncate(limit);
        Ok(rows)
    }

    async fn anomalies(
        &self,
        since_secs: Option<i64>,
        limit: usize,
        min_score: Option<f64>,
    ) -> Result<Vec<ScoredTransaction>, StoreError> {
        let prefix = &self.retention.prefix;
        let min = since_secs.map_or("-inf".to_string(), |s| s.to_string());
        // The shards merged newest first (ties: greater trans_num first, as one sorted set
        // orders them), a page at a time from each; at most `anomalies_kept` in all, which
        // every shard keeps of its own, so the merge sees the newest ones of the whole index.
        let page = (limit.max(1) * 2).min(5000);
        let mut heads: Vec<std::collections::VecDeque<(String, f64)>> =
            vec![Default::default(); layout::SHARDS];
        let mut offsets = [0usize; layout::SHARDS];
        let mut done = [false; layout::SHARDS];
        let mut seen = 0usize;
        let kept = self.retention.anomalies_kept.max(1);
        let mut out = Vec::new();
        while out.len() < limit && seen < kept {
            let refills = (0..layout::SHARDS)
                .filter(|&s| heads[s].is_empty() && !done[s])
                .map(|s| {
                    let key = layout::anomalies(prefix, s);
                    let (min, offset) = (&min, offsets[s]);
                    async move { (s, self.newest(&key, min, offset, page).await) }
                })
                .collect::<Vec<_>>();
            for (s, found) in futures::future::join_all(refills).await {
                let found = found?;
                done[s] = found.len() < page;
                offsets[s] += found.len();
                heads[s].extend(found);
            }
            // Take in order while every shard that may hold more has a head to compare.
            let mut batch = Vec::new();
            while batch.len() < page && seen < kept {
                if (0..layout::SHARDS).any(|s| heads[s].is_empty() && !done[s]) {
                    break;
                }
                let best = (0..layout::SHARDS)
                    .filter(|&s| !heads[s].is_empty())
                    .max_by(|&a, &b| {
                        let (ma, sa) = &heads[a][0];
                        let (mb, sb) = &heads[b][0];
                        sa.total_cmp(sb).then_with(|| ma.cmp(mb))
                    });
                let Some(best) = best else { break };
                if let Some((member, _)) = heads[best].pop_front() {
                    batch.push(member);
                    seen += 1;
                }
            }
            if batch.is_empty() {
                if (0..layout::SHARDS).all(|s| heads[s].is_empty() && done[s]) {
                    break;
                }
                continue;
            }
            for row in self.read_transactions(&batch).await? {
                if min_score.is_none_or(|m| row.score >= m) && out.len() < limit {
                    out.push(row);
                }
            }
        }
        Ok(out)
    }

    async fn alerts(&self, limit: usize) -> Result<Vec<Alert>, StoreError> {
        let limit = limit.min(self.retention.alerts_kept.max(1));
        if limit == 0 {
            return Ok(Vec::new());
        }
        let reads = (0..layout::SHARDS).map(|shard| {
            let key = layout::alerts(&self.retention.prefix, shard);
            let mut connection = self.conn();
            async move {
                redis::cmd("XREVRANGE")
                    .arg(key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(limit)
                    .query_async::<redis::streams::StreamRangeReply>(&mut connection)
                    .await
            }
        });
        let mut alerts: Vec<(u64, (u64, u64), Alert)> = Vec::new();
        for reply in futures::future::try_join_all(reads)
            .await
            .map_err(|e| self.error(e))?
        {
            for entry in &reply.ids {
                let (us, alert) = parse_alert(entry);
                let id = entry
                    .id
                    .split_once('-')
                    .and_then(|(ms, seq)| Some((ms.parse().ok()?, seq.parse().ok()?)))
                    .unwrap_or_default();
                alerts.push((us, id, alert));
            }
        }
        // Newest first by the server's time of each (ids order only within a shard).
        alerts.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
        Ok(alerts
            .into_iter()
            .take(limit)
            .map(|(_, _, alert)| alert)
            .collect())
    }

    async fn save_checkpoint(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        checkpoint: &Checkpoint,
    ) -> Result<bool, StoreError> {
        let saved = self
            .run_save_checkpoint(group, topic, partition, None, checkpoint)
            .await?;
        Ok(saved == 1)
    }

    async fn save_checkpoint_delta(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        parent: i64,
        checkpoint: &Checkpoint,
    ) -> Result<DeltaSaved, StoreError> {
        let saved = self
            .run_save_checkpoint(group, topic, partition, Some(parent), checkpoint)
            .await?;
        Ok(match saved {
            1 => DeltaSaved::Saved,
            0 => DeltaSaved::Behind,
            _ => DeltaSaved::NotParent,
        })
    }

    async fn load_checkpoint(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let key = layout::checkpoint(&self.retention.prefix, group, topic, partition);
        let mut connection = self.conn();
        // All fields at once: a save between two reads would mix two checkpoints.
        let fields: HashMap<String, Vec<u8>> = self
            .bounded(async {
                redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| self.error(e))
            })
            .await?;
        let malformed = |reason: String| StoreError::Malformed {
            key: key.clone(),
            reason,
        };
        let text = |name: &str| {
            fields
                .get(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let Some(offset) = text("offset") else {
            return Ok(None);
        };
        let offset = offset
            .parse::<i64>()
            .map_err(|e| malformed(e.to_string()))?;
        let count = text("deltas")
            .map(|n| n.parse::<usize>().map_err(|e| malformed(e.to_string())))
            .transpose()?
            .unwrap_or(0);
        let deltas = (1..=count)
            .map(|n| {
                fields
                    .get(&format!("delta:{n}"))
                    .cloned()
                    .ok_or_else(|| malformed(format!("no delta {n} of {count}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(Checkpoint {
            offset,
            state: fields.get("state").cloned().unwrap_or_default(),
            archive_file: text("archive_file").filter(|f| !f.is_empty()),
            deltas,
        }))
    }

    async fn cache_get(&self, hashes: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = hashes
            .iter()
            .map(|h| layout::score_cache(&self.retention.prefix, h))
            .collect();
        let mut connection = self.conn();
        // A cluster splits MGET by slot and puts the answers back in order.
        redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut connection)
            .await
            .map_err(|e| self.error(e))
    }

    async fn cache_put(
        &self,
        entries: &[(String, String)],
        ttl_secs: u64,
    ) -> Result<(), StoreError> {
        // One command each, all at once: the keys are in any slots.
        let puts = entries.iter().map(|(hash, value)| {
            let mut connection = self.conn();
            let key = layout::score_cache(&self.retention.prefix, hash);
            async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("EX")
                    .arg(ttl_secs.max(1))
                    .query_async::<()>(&mut connection)
                    .await
            }
        });
        futures::future::try_join_all(puts)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn write_outputs(&self, records: &[OutputRecord]) -> Result<(), StoreError> {
        let ids = output::check(records)?;
        if records.is_empty() {
            return Ok(());
        }
        // One transaction per slot (one Redis: one slot for all): readers see all of a
        // slot's records or none, and a hash is never seen between its DEL and its HSET.
        // A cluster cannot run one transaction over several slots, so there a window's
        // records are atomic per slot (a key template with a hash tag keeps them in one).
        let cluster = self.conn().is_cluster();
        let mut groups: BTreeMap<u16, Vec<(&OutputRecord, Option<output::StreamId>)>> =
            BTreeMap::new();
        for (record, id) in records.iter().zip(ids) {
            let slot = if cluster {
                layout::slot(record.key())
            } else {
                0
            };
            groups.entry(slot).or_default().push((record, id));
        }
        let sends = groups.into_values().map(|group| {
            let mut pipe = redis::pipe();
            pipe.atomic();
            if group.iter().any(|(_, id)| id.is_some()) {
                // Loaded in the same transaction as its first use, so a Redis restart
                // (which forgets scripts) can never fail the entries that need it after
                // others were applied.
                pipe.cmd("SCRIPT").arg("LOAD").arg(APPEND_ONCE).ignore();
            }
            for (record, id) in group {
                match record {
                    OutputRecord::Hash {
                        key,
                        fields,
                        ttl_secs,
                    } => {
                        pipe.del(key).ignore();
                        if fields.is_empty() {
                            continue;
                        }
                        let command = pipe.cmd("HSET").arg(key);
                        for (field, value) in fields {
                            command.arg(field).arg(value);
                        }
                        command.ignore();
                        if let Some(ttl) = ttl_secs {
                            pipe.expire(key, (*ttl).max(1) as i64).ignore();
                        }
                    }
                    OutputRecord::StreamEntry {
                        key,
                        fields,
                        max_len,
                        ..
                    } => {
                        let command = match id {
                            Some(id) => pipe
                                .cmd("EVALSHA")
                                .arg(self.append_once.get_hash())
                                .arg(1)
                                .arg(key)
                                .arg(output::format_stream_id(id))
                                .arg(max_len.map_or(String::new(), |n| n.to_string())),
                            None => {
                                let command = pipe.cmd("XADD").arg(key);
                                if let Some(n) = max_len {
                                    command.arg("MAXLEN").arg("~").arg(n);
                                }
                                command.arg("*")
                            }
                        };
                        for (field, value) in fields {
                            command.arg(field).arg(value);
                        }
                        command.ignore();
                    }
                }
            }
            let mut connection = self.conn();
            async move { pipe.query_async::<()>(&mut connection).await }
        });
        self.bounded(async {
            futures::future::try_join_all(sends)
                .await
                .map_err(|e| self.error(e))
        })
        .await?;
        Ok(())
    }

    async fn read_output_hash(
        &self,
        key: &str,
    ) -> Result<Option<Vec<(String, String)>>, StoreError> {
        let mut connection = self.conn();
        let fields: BTreeMap<String, String> =
            connection.hgetall(key).await.map_err(|e| self.error(e))?;
        Ok((!fields.is_empty()).then(|| fields.into_iter().collect()))
    }

    async fn read_output_stream(
        &self,
        key: &str,
        count: usize,
    ) -> Result<Vec<(String, Vec<(String, String)>)>, StoreError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut connection = self.conn();
        // Read as flat lists, not `StreamRangeReply`, whose map would lose the fields' order.
        let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut connection)
            .await
            .map_err(|e| self.error(e))?;
        entries
            .into_iter()
            .map(|(id, flat)| {
                if flat.len() % 2 != 0 {
                    return Err(StoreError::Malformed {
                        key: key.to_string(),
                        reason: format!("entry {id} has a field without a value"),
                    });
                }
                let mut flat = flat.into_iter();
                let mut fields = Vec::with_capacity(flat.len() / 2);
                while let (Some(field), Some(value)) = (flat.next(), flat.next()) {
                    fields.push((field, value));
                }
                Ok((id, fields))
            })
            .collect()
    }

    async fn output_keys(&self, pattern: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut connection = self.conn();
        // A cluster's keys are on its primaries, each scanned on its own; one Redis is one
        // "node" (None).
        let primaries = connection.primaries().await.map_err(|e| self.error(e))?;
        let nodes: Vec<Option<&(String, u16)>> = if primaries.is_empty() {
            vec![None]
        } else {
            primaries.iter().map(Some).collect()
        };
        // The first `limit` in order can be anywhere in the keyspace: scan all of it, keeping
        // only the `limit` smallest so far (SCAN may also return a key twice).
        let mut found = BTreeSet::new();
        for node in nodes {
            let mut cursor = 0u64;
            loop {
                let reply = connection
                    .on_node(
                        redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(SCAN_COUNT),
                        node,
                    )
                    .await
                    .map_err(|e| self.error(e))?;
                let (next, keys): (u64, Vec<Vec<u8>>) =
                    redis::from_redis_value(reply).map_err(|e| self.error(e.into()))?;
                // A key that is not UTF-8 was not written through this store: not an output.
                found.extend(keys.into_iter().filter_map(|k| String::from_utf8(k).ok()));
                while found.len() > limit {
                    found.pop_last();
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(found.into_iter().collect())
    }

    async fn save_query(&self, name: &str, sql: &str) -> Result<(), StoreError> {
        let mut connection = self.conn();
        connection
            .hset::<_, _, _, ()>(layout::queries(&self.retention.prefix), name, sql)
            .await
            .map_err(|e| self.error(e))
    }

    async fn delete_query(&self, name: &str) -> Result<bool, StoreError> {
        let mut connection = self.conn();
        let removed: i64 = connection
            .hdel(layout::queries(&self.retention.prefix), name)
            .await
            .map_err(|e| self.error(e))?;
        Ok(removed == 1)
    }

    async fn load_queries(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.sorted_hash(layout::queries(&self.retention.prefix))
            .await
    }

    async fn save_served_model(&self, slot: &str, id: Option<&str>) -> Result<(), StoreError> {
        let mut connection = self.conn();
        connection
            .hset::<_, _, _, ()>(
                layout::served_models(&self.retention.prefix),
                slot,
                id.unwrap_or_default(),
            )
            .await
            .map_err(|e| self.error(e))
    }

    async fn served_models(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.sorted_hash(layout::served_models(&self.retention.prefix))
            .await
    }
}

#[cfg(test)]
mod redact_tests {
    use super::redact;

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redact("redis://:secret@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(
            redact("rediss://user:secret@host/0"),
            "rediss://user:***@host/0"
        );
        assert_eq!(redact("redis://user@host"), "redis://user:***@host");
    }
}

#[cfg(test)]
mod record_tests {
    use super::*;

    #[test]
    fn records_written_before_model_ids_still_read() {
        let old = r#"[4000,"2019-01-01 00:05:02","misc_net","m",12.5,0.75,1,"log_amt 60%",0]"#;
        let row = decode_transaction("k", "t1", old).expect("an old record reads");
        assert_eq!(
            (row.cc_num, row.is_anomaly, row.is_fraud),
            (4000, true, Some(0))
        );
        assert_eq!(
            (row.model_id, row.challenger_id, row.challenger_flag),
            (None, None, None)
        );
        // And a current one round-trips.
        let current = ScoredTransaction {
            model_id: Some("default@0123456789ab".into()),
            challenger_id: Some("trees@ba9876543210".into()),
            challenger_flag: Some(false),
            ..row
        };
        let rows = ScoredRows::from_records(std::slice::from_ref(&current));
        let mut value = Vec::new();
        for row in rows.iter() {
            encode_transaction(&row, &mut value);
        }
        let value = String::from_utf8(value).expect("JSON is UTF-8");
        let again = decode_transaction("k", "t1", &value).expect("reads");
        assert_eq!(again, current);
        assert!(decode_transaction("k", "t1", "[1,2]").is_err());
    }
}
