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

    /// For each of `keys`: whether it exists (pipelined; across slots on a cluster).
    pub fn exists(&mut self, keys: &[String]) -> Vec<bool> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(5000) {
            let exists: Vec<bool> = match self {
                Self::Single(c) => {
                    let mut pipe = redis::pipe();
                    chunk.iter().for_each(|k| {
                        pipe.exists(k);
                    });
                    pipe.query(c)
                }
                Self::Cluster(c) => {
                    let mut pipe = redis::cluster::cluster_pipe();
                    chunk.iter().for_each(|k| {
                        pipe.exists(k);
                    });
                    pipe.query(c.as_mut())
                }
            }
            .expect("EXISTS");
            found.extend(exists);
        }
        found
    }

    /// For each trans_num: whether its scored record is stored under `prefix`.
    pub fn transactions_stored(&mut self, prefix: &str, trans_nums: &[String]) -> Vec<bool> {
        let keys: Vec<String> = trans_nums
            .iter()
            .map(|t| layout::transaction(prefix, t))
            .collect();
        self.exists(&keys)
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
