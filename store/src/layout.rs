//! Redis key layout. The engine writes these keys and the API reads them; `{p}` is the
//! configured prefix (`rs` by default).
//!
//! | key                                   | type   | holds                                             |
//! |---------------------------------------|--------|---------------------------------------------------|
//! | `{p}:txs:{B}:{length}:{period}`       | hash   | the scored transactions of one bucket written in  |
//! |                                       |        | one period: trans_num → a JSON array (EXPIREAT)   |
//! | `{p}:labels:{B}:{length}:{period}`    | hash   | labels learnt in one period: trans_num → a JSON   |
//! |                                       |        | array `[is_fraud, labelled_ms]` (EXPIREAT)        |
//! | `{p}:layout`                          | string | the writer's TTL in seconds, which the periods    |
//! |                                       |        | follow (readers take it from here; TTL)           |
//! | `{p}:cardlist:{B}:{cc_num}`           | list   | the card's recent trans_nums, newest arrival      |
//! |                                       |        | first (TTL)                                       |
//! | `{p}:anomalies:{A}`                   | zset   | one shard of the anomalies by event time (capped) |
//! | `{p}:alerts:{A}`                      | stream | one shard of the alerts, an entry each (capped)   |
//! | `{p}:checkpoint:{group}:{topic}:{n}`  | hash   | a partition's next offset and per-card state, and |
//! |                                       |        | the deltas after it (`delta:1`…, `deltas` = count) |
//! | `{p}:score:{hash}`                    | string | a cached `/v1/score` answer for one input (TTL)   |
//! | `{p}:queries`                         | hash   | standing queries' definitions: name → SQL         |
//!
//! `{B}` is a Redis Cluster hash tag, one of [`BUCKETS`]: a transaction's comes from its
//! `trans_num`, a card's from its number. `{A}` is one of [`SHARDS`] tags, chosen by the
//! transaction's bucket. Every key with one tag is in one cluster slot, so a micro-batch's
//! writes go out as one pipeline per tag (a cluster pipeline must stay in one slot), and
//! no key is written by every transaction: the anomaly index and the alerts are sharded,
//! and readers merge the shards. The tags are picked so that their slots are evenly
//! spread over the 16,384: a cluster whose nodes hold equal slot ranges gets equal work.
//! One Redis uses the same layout.
//!
//! What a transaction costs Redis is what bounds the stream (BENCHMARKS.md, #15), so the
//! writes are grouped into few commands, measured on this machine with AOF on:
//! - Records: one `HSET` per bucket and micro-batch, with every record of the bucket as a
//!   field, and one `EXPIREAT` on the hash — about half the CPU of one `SET … EX` per
//!   transaction (a key of its own, with an expiry of its own, per transaction). Retention
//!   is per hash: records go to the hash of the [`period_secs`]-long period they were
//!   written in (an eighth of the TTL), which expires a TTL after the period ends, so a
//!   record lives from `ttl_secs` to 9/8 of it (from the writer's clock). A read asks the
//!   newest two periods first and the others ([`live_periods`]: ten in all, all in one
//!   slot) only for what it did not find. Readers take the TTL from `{p}:layout`, so an
//!   API configured with another retention still finds the records; after the writer's
//!   TTL changes, the records written before are no longer read (they expire as set).
//!   Each period's hash is large (its bucket's share of the period's traffic): Redis should
//!   free expired keys in the background (`lazyfree-lazy-expire yes`, which
//!   `scripts/services.sh` sets).
//! - Card lists: a `LIST` per card, pushed once per micro-batch with the card's new
//!   trans_nums (oldest first, so the newest is at the head), trimmed to
//!   [`CARD_LIST_SLACK`] × `card_history` and its TTL renewed now and then, not at every
//!   write (see `RedisStore`) — a fifth of the CPU of adding each to a sorted set by
//!   event time. A reader takes the list's head, drops repeats (a batch replayed after a
//!   crash pushes its trans_nums again; the slack keeps them from pushing out others) and
//!   orders the records by event time. A card's transactions arrive in event-time order
//!   (one card is one partition), so this is its newest `card_history`; one arriving
//!   more than the slack behind the others of its card would be left out.
//!
//! The anomaly index is also what makes alerts once-only: an anomaly is alerted when it
//! enters its shard's index, in one script.
//!
//! Continuous queries' outputs (`OutputRecord`) go under the keys their definitions name,
//! verbatim: the user chooses them, so they are not under the prefix.

use std::sync::LazyLock;

/// Hash tags of transactions and cards.
pub const BUCKETS: usize = 64;
/// Shards of the anomaly index and the alerts stream.
pub const SHARDS: usize = 8;

/// Redis Cluster's slots.
const SLOTS: usize = 16_384;

/// CRC-16/XMODEM, as Redis Cluster hashes keys to slots (the crate redis-rs routes with).
fn crc16(bytes: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(bytes)
}

/// The cluster slot of `key`: of its hash tag (the first non-empty `{…}`) when it has
/// one, as Redis computes it.
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let close = bytes[open + 1..].iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &bytes[open + 1..open + 1 + close])
    });
    crc16(tagged.unwrap_or(bytes)) % SLOTS as u16
}

/// `n` tags whose slots fall one in each of `n` equal slot ranges (the first candidate
/// `{name}{i}.{k}` that lands in range `i`).
fn spread_tags(name: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let (low, high) = (i * SLOTS / n, (i + 1) * SLOTS / n);
            (0u32..)
                .map(|k| format!("{name}{i}.{k}"))
                .find(|tag| (low..high).contains(&(crc16(tag.as_bytes()) as usize % SLOTS)))
                .unwrap_or_default()
        })
        .collect()
}

static BUCKET_TAGS: LazyLock<Vec<String>> = LazyLock::new(|| spread_tags("b", BUCKETS));
static SHARD_TAGS: LazyLock<Vec<String>> = LazyLock::new(|| spread_tags("a", SHARDS));

/// The bucket of an identifier (a `trans_num`, a card number as text).
pub fn bucket_of(id: &str) -> usize {
    crc16(id.as_bytes()) as usize * BUCKETS / 65_536
}

/// The anomaly and alert shard of a transaction.
pub fn shard_of(trans_num: &str) -> usize {
    bucket_of(trans_num) % SHARDS
}

/// The hash holding the records of `bucket` written in `period` (see [`period_of`]) by a
/// writer whose TTL is `ttl_secs` (the period's length is in the name, so writers with
/// different TTLs never share a hash).
pub fn transactions(prefix: &str, bucket: usize, ttl_secs: u64, period: u64) -> String {
    let tag = &BUCKET_TAGS[bucket % BUCKETS];
    format!("{prefix}:txs:{{{tag}}}:{}:{period}", period_secs(ttl_secs))
}

/// The hash holding the labels of `bucket`'s transactions learnt in `period`, as
/// [`transactions`] (trans_num → `[is_fraud (0/1), labelled_ms]`).
pub fn labels(prefix: &str, bucket: usize, ttl_secs: u64, period: u64) -> String {
    let tag = &BUCKET_TAGS[bucket % BUCKETS];
    format!(
        "{prefix}:labels:{{{tag}}}:{}:{period}",
        period_secs(ttl_secs)
    )
}

/// The TTL the writer under `prefix` uses (its seconds as text): readers find the periods'
/// hashes by it, whatever retention they were configured with themselves.
pub fn written_with(prefix: &str) -> String {
    format!("{prefix}:layout")
}

/// Periods per TTL: each period's hashes live for the TTL after it ends, so records live
/// up to `1 + 1/PERIODS_PER_TTL` of the TTL, and a read asks about this many hashes.
pub const PERIODS_PER_TTL: u64 = 8;

/// How long one period of records is (at least a second).
pub fn period_secs(ttl_secs: u64) -> u64 {
    (ttl_secs / PERIODS_PER_TTL).max(1)
}

/// The period a record written at `unix_secs` belongs to.
pub fn period_of(unix_secs: u64, ttl_secs: u64) -> u64 {
    unix_secs / period_secs(ttl_secs)
}

/// When the hashes of `period` expire (unix seconds): a TTL after the period ends.
pub fn period_expires_at(period: u64, ttl_secs: u64) -> u64 {
    (period + 1) * period_secs(ttl_secs) + ttl_secs
}

/// The periods whose hashes may hold a record still alive at `now_secs`, newest first
/// (one ahead of `now_secs`: another instance's clock may run a little fast).
pub fn live_periods(now_secs: u64, ttl_secs: u64) -> impl Iterator<Item = u64> {
    let oldest = period_of(
        now_secs.saturating_sub(ttl_secs + period_secs(ttl_secs)),
        ttl_secs,
    );
    (oldest..=period_of(now_secs, ttl_secs) + 1).rev()
}

/// A card list keeps this many times `card_history` trans_nums (see the module docs).
pub const CARD_LIST_SLACK: usize = 2;

/// The bucket of a card's list.
pub fn card_bucket(cc_num: i64) -> usize {
    bucket_of(&cc_num.to_string())
}

pub fn card(prefix: &str, cc_num: i64) -> String {
    let tag = &BUCKET_TAGS[card_bucket(cc_num)];
    format!("{prefix}:cardlist:{{{tag}}}:{cc_num}")
}

pub fn anomalies(prefix: &str, shard: usize) -> String {
    format!("{prefix}:anomalies:{{{}}}", SHARD_TAGS[shard % SHARDS])
}

pub fn alerts(prefix: &str, shard: usize) -> String {
    format!("{prefix}:alerts:{{{}}}", SHARD_TAGS[shard % SHARDS])
}

pub fn checkpoint(prefix: &str, group: &str, topic: &str, partition: i32) -> String {
    format!("{prefix}:checkpoint:{group}:{topic}:{partition}")
}

pub fn score_cache(prefix: &str, hash: &str) -> String {
    format!("{prefix}:score:{hash}")
}

pub fn queries(prefix: &str) -> String {
    format!("{prefix}:queries")
}

/// The models a group serves, by slot (see `ResultStore::save_served_model`).
pub fn served_models(prefix: &str) -> String {
    format!("{prefix}:models")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_cluster_slots() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        // An empty tag is no tag: the whole key is hashed.
        assert_eq!(slot("foo{}{bar}"), crc16(b"foo{}{bar}") % 16_384);
    }

    #[test]
    fn tags_spread_evenly_and_keys_of_a_tag_share_a_slot() {
        for (tags, n) in [(&*BUCKET_TAGS, BUCKETS), (&*SHARD_TAGS, SHARDS)] {
            for (i, tag) in tags.iter().enumerate() {
                let slot = slot(&format!("{{{tag}}}")) as usize;
                assert!(
                    (i * SLOTS / n..(i + 1) * SLOTS / n).contains(&slot),
                    "{tag}"
                );
            }
        }
        let bucket = bucket_of("abc");
        assert_eq!(
            slot(&transactions("rs", bucket, 3600, 7)),
            slot(&format!("{{{}}}", BUCKET_TAGS[bucket]))
        );
        assert_eq!(
            slot(&transactions("rs", bucket, 3600, 7)),
            slot(&transactions("rs", bucket, 60, 8))
        );
        assert_ne!(
            transactions("rs", bucket, 3600, 7),
            transactions("rs", bucket, 7200, 7)
        );
        assert_eq!(slot(&anomalies("rs", 3)), slot(&alerts("other", 3)));
    }

    #[test]
    fn a_record_lives_at_least_its_ttl_and_reads_find_its_period() {
        for ttl in [1, 7, 600, 3600, 7 * 24 * 3600] {
            for written in [1_700_000_000u64, 1_700_000_123, 1_700_003_599] {
                let period = period_of(written, ttl);
                let expires = period_expires_at(period, ttl);
                assert!(expires >= written + ttl, "ttl {ttl}: expires too soon");
                assert!(
                    expires <= written + ttl + period_secs(ttl),
                    "ttl {ttl}: lives too long"
                );
                // Read at any time it is alive, its period is among those asked.
                for now in [written, written + ttl / 2, expires - 1] {
                    assert!(
                        live_periods(now, ttl).any(|p| p == period),
                        "ttl {ttl}: written {written}, read {now}"
                    );
                }
            }
        }
        let periods: Vec<u64> = live_periods(1_700_000_000, 3600).collect();
        assert!(periods.windows(2).all(|w| w[0] == w[1] + 1), "newest first");
        assert!(periods.len() <= PERIODS_PER_TTL as usize + 3);
    }
}
