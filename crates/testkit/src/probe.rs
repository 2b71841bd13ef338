//! Reads back what the engine wrote, from one Redis or a cluster alike.

use redis::{Cmd, ConnectionLike, FromRedisValue, RedisResult};
use risksense_store::layout;

/// A blocking connection to the test Redis: one server, or every node of a cluster (each
/// command routed by its key's slot).
pub enum Probe {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Probe {
    /// Connects to `url` (`redis://…` or `redis+cluster://…`), panicking with the reason.
    pub fn open(url: &str) -> Self {
        match risksense_store::cluster_nodes(url) {
            None => Self::Single(
                redis::Client::open(url)
                    .and_then(|c| c.get_connection())
                    .unwrap_or_else(|e| panic!("connecting to Redis at {url}: {e}")),
            ),
            Some(nodes) => Self::Cluster(Box::new(
                redis::cluster::ClusterClient::builder(nodes)
                    .retries(8)
                    .build()
                    .and_then(|c| c.get_connection())
                    .unwrap_or_else(|e| panic!("connecting to the Redis Cluster at {url}: {e}")),
            )),
        }
    }

    fn connection(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Self::Single(c) => c,
            Self::Cluster(c) => c.as_mut(),
        }
    }

    /// Runs a command on one key (a cluster routes it to the key's node).
    pub fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        cmd.query(self.connection())
    }

    /// Runs `commands` (any keys; a cluster routes each to its node) in one pipeline.
    fn pipeline<T: FromRedisValue>(&mut self, commands: &[Cmd]) -> RedisResult<Vec<T>> {
        match self {
            Self::Single(c) => {
                let mut pipe = redis::pipe();
                commands.iter().for_each(|cmd| {
                    pipe.add_command(cmd.clone());
                });
                pipe.query(c)
            }
            Self::Cluster(c) => {
                let mut pipe = redis::cluster::cluster_pipe();
                commands.iter().for_each(|cmd| {
                    pipe.add_command(cmd.clone());
                });
                pipe.query(c.as_mut())
            }
        }
    }

    /// For each trans_num: whether its scored record is stored under `prefix` (in any of
    /// the period hashes alive now for a TTL of `ttl_secs`; see `risksense_store::layout`).
    pub fn transactions_stored(
        &mut self,
        prefix: &str,
        ttl_secs: u64,
        trans_nums: &[String],
    ) -> Vec<bool> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let periods: Vec<u64> = layout::live_periods(now, ttl_secs).collect();
        let mut by_bucket: Vec<Vec<usize>> = vec![Vec::new(); layout::BUCKETS];
        for (i, trans_num) in trans_nums.iter().enumerate() {
            by_bucket[layout::bucket_of(trans_num)].push(i);
        }
        let mut stored = vec![false; trans_nums.len()];
        for (bucket, indices) in by_bucket.iter().enumerate() {
            for chunk in indices.chunks(5000) {
                let commands: Vec<Cmd> = periods
                    .iter()
                    .map(|&period| {
                        let mut cmd = redis::cmd("HMGET");
                        cmd.arg(layout::transactions(prefix, bucket, ttl_secs, period));
                        chunk.iter().for_each(|&i| {
                            cmd.arg(&trans_nums[i]);
                        });
                        cmd
                    })
                    .collect();
                let replies: Vec<Vec<Option<Vec<u8>>>> = self.pipeline(&commands).expect("HMGET");
                for values in replies {
                    for (&i, value) in chunk.iter().zip(values) {
                        stored[i] |= value.is_some();
                    }
                }
            }
        }
        stored
    }

    /// The trans_nums of every alert under `prefix` (all shards' streams), in the order
    /// they were emitted (their `us` field).
    pub fn alerts(&mut self, prefix: &str) -> Vec<String> {
        let mut alerts: Vec<(u64, String)> = Vec::new();
        for shard in 0..layout::SHARDS {
            let reply: redis::streams::StreamRangeReply = self
                .query(
                    redis::cmd("XRANGE")
                        .arg(layout::alerts(prefix, shard))
                        .arg("-")
                        .arg("+"),
                )
                .expect("XRANGE");
            for entry in &reply.ids {
                let field = |name: &str| -> String {
                    entry
                        .map
                        .get(name)
                        .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
                        .unwrap_or_else(|| panic!("alert {} has no {name} field", entry.id))
                };
                let us = field("us")
                    .parse()
                    .unwrap_or_else(|e| panic!("alert {}: us: {e}", entry.id));
                alerts.push((us, field("trans_num")));
            }
        }
        alerts.sort();
        alerts.into_iter().map(|(_, trans_num)| trans_num).collect()
    }

    /// The number of anomalies in the index under `prefix`, over every shard.
    pub fn anomalies(&mut self, prefix: &str) -> usize {
        (0..layout::SHARDS)
            .map(|shard| -> usize {
                self.query(redis::cmd("ZCARD").arg(layout::anomalies(prefix, shard)))
                    .expect("ZCARD")
            })
            .sum()
    }

    /// The `deltas` count of each checkpoint named (0 where there is none yet).
    pub fn checkpoint_deltas(&mut self, keys: &[String]) -> i64 {
        keys.iter()
            .map(|key| {
                self.query::<Option<i64>>(redis::cmd("HGET").arg(key).arg("deltas"))
                    .expect("HGET")
                    .unwrap_or(0)
            })
            .sum()
    }
}
