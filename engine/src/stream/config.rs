//! `risksense run` settings: a TOML file, then flags and `RISKSENSE_*` variables on top
//! (the binary applies those; this is the shape they fill).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::EngineError;

/// Everything the streaming engine needs to know. Every field has a default, so an empty
/// file (or none) is a valid config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// Kafka bootstrap servers; empty means the in-process broker (demo only).
    pub brokers: String,
    /// Topic of transactions (JSON, Kaggle column names, keyed by card).
    pub topic: String,
    /// Consumer group: instances in one group split the topic's partitions.
    pub group: String,
    /// Topic for anomalies as JSON (empty: none).
    pub alerts_topic: String,
    /// Topic for messages that could not be scored, with the reason in a header.
    pub dead_letter_topic: String,
    /// Topic of labels learnt later (`{"trans_num", "is_fraud"}` JSON; empty: none): joined
    /// with the scored records for live precision and recall per model (see `labels`).
    pub labels_topic: String,
    /// How long a label waits for its transaction to be scored before it counts as
    /// unmatched, in seconds.
    pub label_wait_secs: u64,
    /// Redis URL; empty means the in-process store.
    pub redis: String,
    /// Folder for the Parquet archive of every scored row (empty: no archive).
    pub archive: PathBuf,
    /// Model folder (model.onnx + model.json).
    pub model: PathBuf,
    /// A micro-batch closes at this many rows...
    pub batch_rows: usize,
    /// ...or once its first message is this old (by its Kafka timestamp, and at most this
    /// long after the engine polled it), whichever comes first.
    pub batch_wait_ms: u64,
    /// How often each partition's state, archive and offset are made durable together
    /// (one partition at a time, spread over the interval).
    pub checkpoint_interval_ms: u64,
    /// A checkpoint is a delta (only the cards changed since the previous one) when at
    /// most this share of the partition's cards changed, and fewer than
    /// `checkpoint_full_every` deltas follow the last whole one; otherwise it is whole.
    /// 0: always whole.
    pub checkpoint_delta_share: f64,
    pub checkpoint_full_every: usize,
    /// Where a new group starts reading: `earliest` or `latest`.
    pub start_from: String,
    /// Threads for the model (ONNX Runtime intra-op).
    pub model_threads: usize,
    /// Parallel partitions in the scoring plan.
    pub sql_partitions: usize,
    /// Extra librdkafka properties for every client (`key = value`).
    pub kafka_properties: Vec<(String, String)>,
    /// What Redis keeps, and for how long.
    pub retention: risksense_store::Retention,
    /// Name of this instance (archive file names, logs).
    pub instance: String,
    /// Cards with no transaction for this long (event time) leave the per-card state.
    pub state_idle_secs: i64,
    /// HTTP API address (empty: no API).
    pub http: String,
    /// Messages larger than this (bytes) go to the dead-letter topic unparsed.
    pub max_message_bytes: usize,
    /// Folder of `*.sql` files declaring standing queries (empty: none but the API's).
    pub queries: PathBuf,
    /// Static tables standing queries may join with (CSV or Parquet, read at start).
    pub lookups: Vec<LookupTable>,
}

/// A static table for standing queries: `[[lookups]] name = "watchlist"`,
/// `path = "data/watchlist.csv"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LookupTable {
    pub name: String,
    pub path: PathBuf,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            topic: "transactions".to_string(),
            group: "risksense".to_string(),
            alerts_topic: "alerts".to_string(),
            dead_letter_topic: "transactions.dlq".to_string(),
            // Opt in: a labels consumer (and topic) only where labels are sent.
            labels_topic: String::new(),
            label_wait_secs: 600,
            redis: String::new(),
            archive: PathBuf::from("archive"),
            model: PathBuf::from("models/default"),
            // 4,096 rather than 8,192: a drain overlaps the Redis writes of up to three
            // micro-batches (pipeline::MAX_SINK_TASKS), and half-size batches keep that
            // within the memory budget at the same throughput (BENCHMARKS.md).
            batch_rows: 4096,
            batch_wait_ms: 20,
            checkpoint_interval_ms: 5000,
            checkpoint_delta_share: 0.5,
            checkpoint_full_every: 30,
            start_from: "earliest".to_string(),
            model_threads: 1,
            sql_partitions: 1,
            kafka_properties: Vec::new(),
            retention: risksense_store::Retention::default(),
            instance: default_instance(),
            state_idle_secs: 30 * 86_400,
            http: String::new(),
            max_message_bytes: risksense_formats::validate::DEFAULT_MAX_MESSAGE_BYTES,
            queries: PathBuf::new(),
            lookups: Vec::new(),
        }
    }
}

fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".to_string());
    format!("{host}-{}", std::process::id())
}

impl StreamConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, EngineError> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::ConfigFile {
            path: path.to_path_buf(),
            source: e,
        })?;
        toml::from_str(&text).map_err(|e| EngineError::Config(format!("{}: {e}", path.display())))
    }

    /// Rejects settings that cannot work, with what to change.
    pub fn validate(&self) -> Result<(), EngineError> {
        let fail = |m: String| Err(EngineError::Config(m));
        if self.topic.is_empty() {
            return fail("topic must not be empty".to_string());
        }
        if self.group.is_empty() {
            return fail("group must not be empty".to_string());
        }
        if self.dead_letter_topic.is_empty() || self.dead_letter_topic == self.topic {
            return fail("dead_letter_topic must be set and differ from topic".to_string());
        }
        if self.alerts_topic == self.topic {
            return fail("alerts_topic must differ from topic".to_string());
        }
        if !self.labels_topic.is_empty()
            && [&self.topic, &self.alerts_topic, &self.dead_letter_topic]
                .contains(&&self.labels_topic)
        {
            return fail("labels_topic must differ from the other topics".to_string());
        }
        if self.batch_rows == 0 || self.batch_wait_ms == 0 {
            return fail("batch_rows and batch_wait_ms must be positive".to_string());
        }
        if self.max_message_bytes == 0 {
            return fail("max_message_bytes must be positive".to_string());
        }
        if self
            .kafka_properties
            .iter()
            .any(|(k, v)| k == "partition.assignment.strategy" && v.contains("cooperative"))
        {
            return fail(
                "cooperative rebalancing is not supported: the engine checkpoints on eager revokes"
                    .to_string(),
            );
        }
        if !matches!(self.start_from.as_str(), "earliest" | "latest") {
            return fail(format!(
                "start_from is `{}`: use earliest or latest",
                self.start_from
            ));
        }
        Ok(())
    }

    /// The DataFusion session the stream's scoring plan runs in.
    pub fn session_options(&self) -> risksense_query::scoring::SessionOptions {
        risksense_query::scoring::SessionOptions {
            target_partitions: self.sql_partitions.max(1),
            batch_size: self.batch_rows.max(1024),
            memory_limit: None,
        }
    }

    pub fn batch_wait(&self) -> Duration {
        Duration::from_millis(self.batch_wait_ms)
    }

    pub fn checkpoint_interval(&self) -> Duration {
        Duration::from_millis(self.checkpoint_interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let config: StreamConfig =
            toml::from_str("topic = \"tx\"\nbatch_rows = 1000\n[retention]\nttl_secs = 60\n")
                .expect("parse");
        assert_eq!(config.topic, "tx");
        assert_eq!(config.batch_rows, 1000);
        assert_eq!(config.max_message_bytes, 65_536);
        assert_eq!(config.retention.ttl_secs, 60);
        assert_eq!(config.group, "risksense");
        assert!(toml::from_str::<StreamConfig>("topik = \"x\"").is_err());
        let bad = StreamConfig {
            start_from: "middle".to_string(),
            ..StreamConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn the_example_config_parses_and_is_valid() {
        let text = include_str!("../../../risksense.example.toml");
        let config: StreamConfig = toml::from_str(text).expect("risksense.example.toml parses");
        config.validate().expect("and is valid");
        assert_eq!(config.http, "127.0.0.1:8080");
    }
}
