//! Where a query's rows go: a Kafka topic (JSON records, keyed), Redis (a hash per row
//! under a key template, or stream entries) or Parquet files.
//!
//! Delivery: a windowed query emits each window once — its records are keyed by query,
//! window and group (Kafka key, Redis key or stream entry id), and the end of the last
//! window whose output was acknowledged is saved, so a restart does not emit it again
//! (see ARCHITECTURE.md, "Continuous queries"). A stateless query's rows are delivered at
//! least once (a restart replays the micro-batches since the last checkpoint).

use std::path::PathBuf;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use rdkafka::producer::{FutureProducer, FutureRecord};
use risksense_store::{OutputRecord, Store};

use crate::ddl::{OutputSpec, RedisFormat};
use crate::error::ContinuousError;

/// A destination of a query's rows. `write` may be called again with the same rows after
/// a retryable error.
#[async_trait]
pub trait Output: Send + Sync {
    async fn write(&self, rows: &[RecordBatch]) -> Result<(), ContinuousError>;
}

/// What outputs can be built from: the connections a run has.
#[derive(Clone)]
pub struct Connections {
    pub producer: Option<FutureProducer>,
    pub store: Option<Store>,
    /// To create output topics that do not exist yet.
    pub kafka: Option<risksense_connectors::kafka::KafkaSettings>,
}

/// Builds the output a definition names (None for a view).
pub fn build(
    name: &str,
    spec: &OutputSpec,
    key_columns: &[String],
    connections: &Connections,
) -> Result<Option<Box<dyn Output>>, ContinuousError> {
    let missing = |what: &str| {
        ContinuousError::Unsupported(format!(
            "query {name} writes to {what}, which this run does not have"
        ))
    };
    Ok(match spec {
        OutputSpec::View => None,
        OutputSpec::Kafka { topic, key } => Some(Box::new(KafkaOutput {
            producer: connections
                .producer
                .clone()
                .ok_or_else(|| missing("Kafka"))?,
            topic: topic.clone(),
            key: if key.is_empty() {
                key_columns.to_vec()
            } else {
                key.clone()
            },
            prefix: name.to_string(),
        })),
        OutputSpec::Redis {
            format,
            key,
            ttl_secs,
            max_len,
        } => Some(Box::new(RedisOutput {
            store: connections
                .store
                .clone()
                .ok_or_else(|| missing("the result store"))?,
            format: *format,
            key: key.clone(),
            ttl_secs: *ttl_secs,
            max_len: *max_len,
        })),
        OutputSpec::Parquet { path } => {
            std::fs::create_dir_all(path).map_err(|source| ContinuousError::Io {
                what: format!("creating {path}"),
                source,
            })?;
            Some(Box::new(ParquetOutput {
                dir: PathBuf::from(path),
                name: name.to_string(),
            }))
        }
    })
}

/// The value of `column` at `row` as text (timestamps as `2019-01-01 00:05:00`, no `T`).
pub struct RowText<'a> {
    formatters: Vec<(String, ArrayFormatter<'a>, bool)>,
}

impl<'a> RowText<'a> {
    pub fn new(
        batch: &'a RecordBatch,
        options: &'a FormatOptions<'a>,
    ) -> Result<Self, ContinuousError> {
        let mut formatters = Vec::new();
        for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
            formatters.push((
                field.name().clone(),
                ArrayFormatter::try_new(column.as_ref(), options)?,
                matches!(
                    field.data_type(),
                    DataType::Timestamp(TimeUnit::Microsecond, _)
                ),
            ));
        }
        Ok(Self { formatters })
    }

    pub fn value(&self, column: usize, row: usize) -> String {
        let (_, formatter, timestamp) = &self.formatters[column];
        let text = formatter.value(row).to_string();
        if *timestamp {
            text.replacen('T', " ", 1)
        } else {
            text
        }
    }

    pub fn by_name(&self, name: &str, row: usize) -> Option<String> {
        let column = self.formatters.iter().position(|(n, _, _)| n == name)?;
        Some(self.value(column, row))
    }

    pub fn fields(&self, batch: &RecordBatch, row: usize) -> Vec<(String, String)> {
        self.formatters
            .iter()
            .enumerate()
            .filter(|(column, _)| !batch.column(*column).is_null(row))
            .map(|(column, (name, _, _))| (name.clone(), self.value(column, row)))
            .collect()
    }
}

pub fn format_options() -> FormatOptions<'static> {
    FormatOptions::default().with_null("")
}

/// `{column}` placeholders replaced by the row's values.
fn fill_template(template: &str, text: &RowText<'_>, row: usize) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                let name = &after[..close];
                match text.by_name(name, row) {
                    Some(value) => out.push_str(&value),
                    None => {
                        out.push('{');
                        out.push_str(name);
                        out.push('}');
                    }
                }
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Checks a key template names only columns the query produces.
pub fn check_template(template: &str, columns: &[String]) -> Result<(), ContinuousError> {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        let name = &after[..close];
        if !columns.iter().any(|c| c == name) {
            return Err(ContinuousError::Unsupported(format!(
                "key template {template:?} names {{{name}}}, which the query does not produce (it produces {})",
                columns.join(", ")
            )));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

struct KafkaOutput {
    producer: FutureProducer,
    topic: String,
    /// Key columns, joined by `/` after the query's name.
    key: Vec<String>,
    prefix: String,
}

#[async_trait]
impl Output for KafkaOutput {
    async fn write(&self, rows: &[RecordBatch]) -> Result<(), ContinuousError> {
        let options = format_options();
        let mut records: Vec<(Option<String>, Vec<u8>)> = Vec::new();
        for batch in rows {
            let mut lines = Vec::new();
            {
                let mut writer = arrow::json::LineDelimitedWriter::new(&mut lines);
                writer.write(batch)?;
                writer.finish()?;
            }
            let text = RowText::new(batch, &options)?;
            let key_columns: Vec<usize> = self
                .key
                .iter()
                .filter_map(|c| batch.schema().index_of(c).ok())
                .collect();
            for (row, line) in lines
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .enumerate()
            {
                let key = (!self.key.is_empty()).then(|| {
                    let mut key = self.prefix.clone();
                    for column in &key_columns {
                        key.push('/');
                        key.push_str(&text.value(*column, row));
                    }
                    key
                });
                records.push((key, line.to_vec()));
            }
        }
        let failed = |source| ContinuousError::Kafka {
            topic: self.topic.clone(),
            source,
        };
        // Every record handed to librdkafka first, then the acknowledgements awaited in
        // order: one future per record joined with join_all cost more than the encoding
        // when a catch-up emits thousands of windows (perf, BENCHMARKS.md).
        let mut deliveries = Vec::with_capacity(records.len());
        for (key, payload) in &records {
            let mut record = FutureRecord::to(&self.topic).payload(payload);
            if let Some(key) = key {
                record = record.key(key);
            }
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull,
                        ),
                        back,
                    )) => {
                        // librdkafka's queue is full: let deliveries drain it.
                        record = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((source, _)) => return Err(failed(source)),
                }
            }
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((source, _))) => return Err(failed(source)),
                Err(_) => return Err(failed(rdkafka::error::KafkaError::Canceled)),
            }
        }
        Ok(())
    }
}

struct RedisOutput {
    store: Store,
    format: RedisFormat,
    key: String,
    ttl_secs: Option<u64>,
    max_len: Option<u64>,
}

#[async_trait]
impl Output for RedisOutput {
    async fn write(&self, rows: &[RecordBatch]) -> Result<(), ContinuousError> {
        let options = format_options();
        let mut records = Vec::new();
        // Stream entry ids of windowed rows: the window's end in ms, then the row's place
        // among that window's rows (a window is emitted whole, in one call).
        let mut per_window: std::collections::HashMap<i64, u64> = std::collections::HashMap::new();
        for batch in rows {
            let text = RowText::new(batch, &options)?;
            let ends = batch
                .column_by_name("window_end")
                .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>());
            for row in 0..batch.num_rows() {
                let fields = text.fields(batch, row);
                records.push(match self.format {
                    RedisFormat::Hash => OutputRecord::Hash {
                        key: fill_template(&self.key, &text, row),
                        fields,
                        ttl_secs: self.ttl_secs,
                    },
                    RedisFormat::Stream => {
                        let id = ends.filter(|e| !e.is_null(row)).map(|ends| {
                            let ms = ends.value(row).div_euclid(1000);
                            let seq = per_window.entry(ms).or_default();
                            *seq += 1;
                            format!("{ms}-{}", *seq - 1)
                        });
                        OutputRecord::StreamEntry {
                            key: fill_template(&self.key, &text, row),
                            id,
                            fields,
                            max_len: self.max_len,
                        }
                    }
                });
            }
        }
        self.store.write_outputs(&records).await?;
        Ok(())
    }
}

struct ParquetOutput {
    dir: PathBuf,
    name: String,
}

#[async_trait]
impl Output for ParquetOutput {
    async fn write(&self, rows: &[RecordBatch]) -> Result<(), ContinuousError> {
        let Some(first) = rows.first() else {
            return Ok(());
        };
        let schema = first.schema();
        let rows = rows.to_vec();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let name = format!("{}-{stamp}.parquet", self.name);
        let (tmp, path) = (self.dir.join(format!(".{name}.tmp")), self.dir.join(&name));
        tokio::task::spawn_blocking(move || -> Result<(), ContinuousError> {
            let io = |source| ContinuousError::Io {
                what: tmp.display().to_string(),
                source,
            };
            let file = std::fs::File::create(&tmp).map_err(io)?;
            let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, None)?;
            for batch in &rows {
                writer.write(batch)?;
            }
            writer.close()?;
            std::fs::rename(&tmp, &path).map_err(io)
        })
        .await
        .map_err(|e| ContinuousError::State(format!("writing a Parquet file: {e}")))?
    }
}
