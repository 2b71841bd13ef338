//! Redis key layout. The engine writes these keys and the API reads them; `{p}` is the
//! configured prefix (`rs` by default).
//!
//! | key                                   | type   | holds                                             |
//! |---------------------------------------|--------|---------------------------------------------------|
//! | `{p}:tx:{B}:{trans_num}`              | string | a scored transaction, a JSON array (TTL)          |
//! | `{p}:card:{B}:{cc_num}`               | zset   | the card's recent trans_nums by event time (TTL)  |
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
//! A transaction is one `SET … EX` (measured: a 9-field `HSET` plus its `EXPIRE` cost Redis
//! about twice as much). A card's list is trimmed and its TTL renewed now and then, not at
//! every write (see `RedisStore`), and reads take at most `card_history` of it.
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

pub fn transaction(prefix: &str, trans_num: &str) -> String {
    let tag = &BUCKET_TAGS[bucket_of(trans_num)];
    format!("{prefix}:tx:{{{tag}}}:{trans_num}")
}

/// The bucket of a card's list.
pub fn card_bucket(cc_num: i64) -> usize {
    bucket_of(&cc_num.to_string())
}

pub fn card(prefix: &str, cc_num: i64) -> String {
    let tag = &BUCKET_TAGS[card_bucket(cc_num)];
    format!("{prefix}:card:{{{tag}}}:{cc_num}")
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
        let tx = transaction("rs", "abc");
        assert_eq!(
            slot(&tx),
            slot(&format!("{{{}}}", BUCKET_TAGS[bucket_of("abc")]))
        );
        assert_eq!(slot(&anomalies("rs", 3)), slot(&alerts("other", 3)));
    }
}
