//! Label feedback: the truth about transactions, learnt later (chargebacks, confirmed
//! frauds), read from a labels topic and joined with what the models said.
//!
//! A label message is JSON: `{"trans_num": "…", "is_fraud": 0 | 1 | true | false}`, with
//! an optional `"labelled_at_ms"` (else the message's Kafka timestamp). One that cannot be
//! read goes to the dead-letter topic with its reason, as a bad transaction does.
//!
//! Each label goes to three places:
//! - the result store, beside the transaction's record (`ResultStore::write_labels`): a
//!   `trans_num` keeps its first label, so a replayed message changes nothing;
//! - the live figures: a new label is joined with the transaction's scored record (which
//!   carries the champion's id and flag and the challenger's), and counted per model as a
//!   true or false positive or negative (`StreamMetrics::labels`: precision and recall per
//!   model on `/metrics` and the dashboard). A label that arrives before its transaction
//!   is scored waits for it (up to `label_wait_secs`); one whose transaction never comes is
//!   counted as unmatched;
//! - the labels table beside the archive: Parquet files of `trans_num`, `is_fraud`,
//!   `labelled_at`, one per `checkpoint_interval_ms`, published (renamed into place)
//!   before the consumer commits its offsets. A crash after a file is published and before
//!   the commit reads those labels again, so a `trans_num` may appear in two files: read
//!   the table with its first label per `trans_num` (`risksense evaluate --labels` does).
//!
//! It runs on its own consumer group (`<group>.labels`), apart from the scoring loop: labels
//! never hold up scoring, and scoring's checkpoints know nothing of them.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::FutureProducer;
use risksense_common::metrics::{StreamMetrics, now_ms};
use risksense_connectors::kafka::{KafkaSettings, ensure_topic};
use risksense_connectors::sink::{DeadLetter, KafkaSink, Sink, SinkBatch};
use risksense_store::{Label, Store};
use tokio::runtime::Handle;

use crate::error::EngineError;
use crate::stream::StreamConfig;
use crate::stream::pipeline::retry;

/// Labels read per poll at most.
const POLL_LABELS: usize = 2_000;
/// Labels waiting for their transaction, at most (the oldest are counted unmatched).
const MAX_PENDING: usize = 200_000;
/// How often labels still waiting are looked up again, and how many per store read: a
/// backlog of chargebacks for transactions past retention must not load the store the
/// stream writes to.
const RECHECK_EVERY: Duration = Duration::from_secs(2);
const LOOKUP_CHUNK: usize = 5_000;

/// The columns of the labels table.
pub fn labels_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("trans_num", DataType::Utf8, false),
        Field::new("is_fraud", DataType::Int32, false),
        Field::new(
            "labelled_at",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        ),
    ]))
}

/// Reads one label message; the reason when it cannot.
pub fn parse_label(payload: &[u8], timestamp_ms: Option<i64>) -> Result<Label, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Message {
        trans_num: String,
        is_fraud: serde_json::Value,
        labelled_at_ms: Option<i64>,
    }
    let message: Message = serde_json::from_slice(payload)
        .map_err(|e| format!("not a label (`{{\"trans_num\", \"is_fraud\"}}` JSON): {e}"))?;
    let trans_num = message.trans_num.trim();
    if trans_num.is_empty() || trans_num.len() > 128 {
        return Err("trans_num must be 1 to 128 characters".to_string());
    }
    let is_fraud = match &message.is_fraud {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) if n.as_u64() == Some(0) => false,
        serde_json::Value::Number(n) if n.as_u64() == Some(1) => true,
        other => return Err(format!("is_fraud must be 0, 1, true or false, not {other}")),
    };
    let labelled_ms = message
        .labelled_at_ms
        .or(timestamp_ms)
        .unwrap_or_else(now_ms);
    Ok(Label {
        trans_num: trans_num.to_string(),
        is_fraud,
        labelled_ms,
    })
}

/// Where the labels table of an archive goes: the folder beside it, `<archive>-labels`
/// (not inside it: the archive folder is read as one table of scored rows).
pub fn labels_dir(archive: &Path) -> PathBuf {
    let mut name = archive
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "archive".into());
    name.push("-labels");
    archive.with_file_name(name)
}

/// A new label waiting for its transaction's scored record.
struct Pending {
    label: Label,
    until: Instant,
}

/// What a label run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LabelSummary {
    pub received: u64,
    pub new: u64,
    pub rejected: u64,
    pub files: u64,
}

/// Reads the labels topic of `config` until `shutdown` (or `stop_when_idle` without a
/// message), as described in the module documentation.
pub fn run_labels(
    config: &StreamConfig,
    store: Store,
    runtime: &Handle,
    metrics: Arc<StreamMetrics>,
    shutdown: Arc<AtomicBool>,
    stop_when_idle: Option<Duration>,
) -> Result<LabelSummary, EngineError> {
    let settings = KafkaSettings {
        brokers: config.brokers.clone(),
        properties: config.kafka_properties.clone(),
    };
    runtime.block_on(ensure_topic(&settings, &config.labels_topic, 4))?;
    let mut client = settings.client_config(&[
        ("enable.auto.commit", "false"),
        ("enable.partition.eof", "false"),
        ("session.timeout.ms", "10000"),
        ("max.poll.interval.ms", "600000"),
    ]);
    client.set("group.id", format!("{}.labels", config.group));
    client.set("auto.offset.reset", &config.start_from);
    client.set("client.id", format!("risksense-labels-{}", config.instance));
    let consumer: BaseConsumer = client.create()?;
    consumer.subscribe(&[&config.labels_topic])?;
    let producer: FutureProducer = settings
        .client_config(&[("acks", "all"), ("enable.idempotence", "true")])
        .create()?;
    let dead_letters = KafkaSink::new(producer, "", &config.dead_letter_topic);
    let table = (!config.archive.as_os_str().is_empty()).then(|| labels_dir(&config.archive));
    if let Some(dir) = &table {
        std::fs::create_dir_all(dir).map_err(|e| {
            EngineError::Config(format!("creating the labels table {}: {e}", dir.display()))
        })?;
    }
    tracing::info!(topic = %config.labels_topic, table = ?table, "reading labels");

    let wait = Duration::from_secs(config.label_wait_secs);
    let mut summary = LabelSummary::default();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut unpublished: Vec<Label> = Vec::new();
    let mut last_publish = Instant::now();
    let mut last_recheck = Instant::now();
    let mut last_message = Instant::now();
    let mut seq = 0u64;
    loop {
        let stopping = shutdown.load(Ordering::Relaxed)
            || stop_when_idle
                .is_some_and(|idle| last_message.elapsed() >= idle && pending.is_empty());
        // Gather what is there (up to a poll's worth), waiting briefly for the first.
        let mut labels = Vec::new();
        let mut rejected = Vec::new();
        if !stopping {
            let mut wait_for = Duration::from_millis(100);
            while labels.len() + rejected.len() < POLL_LABELS {
                match consumer.poll(wait_for) {
                    Some(Ok(message)) => {
                        wait_for = Duration::ZERO;
                        last_message = Instant::now();
                        let payload = message.payload().unwrap_or_default();
                        match parse_label(payload, message.timestamp().to_millis()) {
                            Ok(label) => labels.push(label),
                            Err(reason) => rejected.push(DeadLetter {
                                key: message.key().map(<[u8]>::to_vec),
                                payload: payload.to_vec(),
                                reason,
                                source: format!(
                                    "{}/{}/{}",
                                    message.topic(),
                                    message.partition(),
                                    message.offset()
                                ),
                            }),
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "labels consumer error; still polling");
                        break;
                    }
                    None => break,
                }
            }
        }
        summary.received += (labels.len() + rejected.len()) as u64;
        StreamMetrics::add(
            &metrics.labels.received,
            (labels.len() + rejected.len()) as u64,
        );
        if !rejected.is_empty() {
            summary.rejected += rejected.len() as u64;
            StreamMetrics::add(&metrics.labels.rejected, rejected.len() as u64);
            let batch = SinkBatch::new(seq, Vec::new(), rejected);
            seq += 1;
            // Retried while Kafka is away; a refusal for good stops the consumer.
            runtime.block_on(retry(
                &metrics,
                &shutdown,
                "dead-lettering bad labels",
                || async { Ok(dead_letters.write(&batch).await?) },
            ))?;
        }
        let mut fresh = VecDeque::new();
        if !labels.is_empty() {
            // Retried while the store is away (a Redis restart): labels are never dropped
            // for an outage; a stop request ends the wait.
            let new = runtime.block_on(retry(&metrics, &shutdown, "writing labels", || async {
                Ok(store.write_labels(&labels).await?)
            }))?;
            let until = Instant::now() + wait;
            for (label, new) in labels.iter().zip(new) {
                if new {
                    summary.new += 1;
                    StreamMetrics::add(&metrics.labels.new, 1);
                    fresh.push_back(Pending {
                        label: label.clone(),
                        until,
                    });
                }
            }
            unpublished.extend(labels);
        }
        // Join new labels with the scored records the store holds now; those still
        // waiting are looked up again every RECHECK_EVERY.
        join_pending(&store, runtime, &metrics, &mut fresh, false);
        if last_recheck.elapsed() >= RECHECK_EVERY || stopping {
            join_pending(&store, runtime, &metrics, &mut pending, stopping);
            last_recheck = Instant::now();
        }
        pending.append(&mut fresh);
        while pending.len() > MAX_PENDING {
            pending.pop_front();
            StreamMetrics::add(&metrics.labels.unmatched, 1);
        }
        metrics
            .labels
            .pending
            .store(pending.len() as u64, Ordering::Relaxed);
        let due = last_publish.elapsed() >= config.checkpoint_interval() || stopping;
        if due {
            if let Some(dir) = &table
                && !unpublished.is_empty()
            {
                write_labels_table_file(dir, &config.instance, &unpublished)?;
                summary.files += 1;
            }
            unpublished.clear();
            if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
                // Nothing to commit yet is not a failure.
                if !matches!(
                    error,
                    rdkafka::error::KafkaError::ConsumerCommit(
                        rdkafka::types::RDKafkaErrorCode::NoOffset
                    )
                ) {
                    tracing::warn!(%error, "committing label offsets failed; they are read again");
                }
            }
            last_publish = Instant::now();
        }
        if stopping {
            return Ok(summary);
        }
    }
}

/// Counts the waiting labels whose transaction the store now holds, per model; drops those
/// past their wait as unmatched (all of them when `last`). A store that does not answer
/// leaves them waiting (logged): live figures are never worth stopping for.
fn join_pending(
    store: &Store,
    runtime: &Handle,
    metrics: &StreamMetrics,
    pending: &mut VecDeque<Pending>,
    last: bool,
) {
    if pending.is_empty() {
        return;
    }
    let mut found: std::collections::HashMap<String, risksense_store::ScoredTransaction> =
        std::collections::HashMap::new();
    let items: Vec<&Pending> = pending.iter().collect();
    for chunk in items.chunks(LOOKUP_CHUNK) {
        let trans_nums: Vec<String> = chunk.iter().map(|p| p.label.trans_num.clone()).collect();
        match runtime.block_on(store.transactions(&trans_nums)) {
            Ok(rows) => found.extend(rows.into_iter().map(|r| (r.trans_num.clone(), r))),
            Err(error) => {
                tracing::warn!(%error, "looking up labelled transactions failed; trying later");
                return;
            }
        }
    }
    let now = Instant::now();
    pending.retain(|p| {
        if let Some(row) = found.get(&p.label.trans_num) {
            let champion = row.model_id.as_deref().unwrap_or("unknown");
            metrics
                .labels
                .add("champion", champion, row.is_anomaly, p.label.is_fraud);
            if let Some(challenger) = &row.challenger_id {
                metrics.labels.add(
                    "challenger",
                    challenger,
                    row.challenger_flag.unwrap_or(false),
                    p.label.is_fraud,
                );
            }
            false
        } else if last || now >= p.until {
            StreamMetrics::add(&metrics.labels.unmatched, 1);
            false
        } else {
            true
        }
    });
}

/// Writes `labels` as one Parquet file of the labels table in `dir`: to a hidden name,
/// then renamed into place once complete (readers never see half a file).
pub fn write_labels_table_file(
    dir: &Path,
    instance: &str,
    labels: &[Label],
) -> Result<(), EngineError> {
    use datafusion::parquet::arrow::ArrowWriter;
    let batch = RecordBatch::try_new(
        labels_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                labels.iter().map(|l| l.trans_num.as_str()),
            )),
            Arc::new(Int32Array::from_iter_values(
                labels.iter().map(|l| i32::from(l.is_fraud)),
            )),
            Arc::new(TimestampMicrosecondArray::from_iter_values(
                labels.iter().map(|l| l.labelled_ms.saturating_mul(1000)),
            )),
        ],
    )?;
    let name = format!(
        "labels-{instance}-{}-{}.parquet",
        now_ms(),
        std::process::id()
    );
    let hidden = dir.join(format!(".{name}.inprogress"));
    let io = |e: std::io::Error| EngineError::Config(format!("writing the labels table: {e}"));
    let file = std::fs::File::create(&hidden).map_err(io)?;
    let mut writer = ArrowWriter::try_new(file.try_clone().map_err(io)?, batch.schema(), None)
        .map_err(|e| EngineError::Config(format!("writing the labels table: {e}")))?;
    writer
        .write(&batch)
        .and_then(|_| writer.close().map(|_| ()))
        .map_err(|e| EngineError::Config(format!("writing the labels table: {e}")))?;
    // On disk before the rename, and the rename before the offsets are committed: a
    // crash must not lose labels the store already calls known.
    file.sync_all().map_err(io)?;
    std::fs::rename(&hidden, dir.join(name)).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_messages_are_read_strictly() {
        let label = parse_label(br#"{"trans_num": "abc", "is_fraud": 1}"#, Some(5)).expect("ok");
        assert_eq!(
            (label.trans_num.as_str(), label.is_fraud, label.labelled_ms),
            ("abc", true, 5)
        );
        let label = parse_label(
            br#"{"trans_num": "abc", "is_fraud": false, "labelled_at_ms": 7}"#,
            Some(5),
        )
        .expect("ok");
        assert_eq!((label.is_fraud, label.labelled_ms), (false, 7));
        for (bad, says) in [
            (
                &br#"{"trans_num": "abc", "is_fraud": 2}"#[..],
                "is_fraud must be",
            ),
            (
                br#"{"trans_num": "abc", "is_fraud": "yes"}"#,
                "is_fraud must be",
            ),
            (br#"{"trans_num": "", "is_fraud": 1}"#, "trans_num"),
            (br#"{"is_fraud": 1}"#, "not a label"),
            (
                br#"{"trans_num": "a", "is_fraud": 1, "extra": 1}"#,
                "not a label",
            ),
            (b"\xff\xfe", "not a label"),
        ] {
            let error = parse_label(bad, None).expect_err("refused");
            assert!(error.contains(says), "{error}");
        }
    }

    #[test]
    fn the_labels_table_is_beside_the_archive_not_in_it() {
        assert_eq!(
            labels_dir(Path::new("/data/archive")),
            Path::new("/data/archive-labels")
        );
        assert_eq!(
            labels_dir(Path::new("archive/")),
            Path::new("archive-labels")
        );
    }
}
