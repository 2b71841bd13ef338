//! Standing queries over a bounded input — the Parquet archive, a rescored history — with
//! the stream's own operators: the same text gives the same windows as the stream emitted
//! for the same rows (`risksense rescore --query`). Rows come in event-time order on one
//! partition, and at the end every window still open is closed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{Int64Type, SchemaRef};
use datafusion::catalog::TableProvider;
use risksense_connectors::sink::{Sink, SinkBatch};
use risksense_formats::message::partition_of;
use tokio::sync::broadcast::Receiver;

use crate::error::ContinuousError;
use crate::output::Connections;
use crate::plan::Catalog;
use crate::registry::{Origin, Registry};
use crate::sink::ContinuousSink;

pub struct BoundedRun {
    registry: Arc<Registry>,
    sink: ContinuousSink,
    receivers: HashMap<String, Receiver<Arc<RecordBatch>>>,
    results: BTreeMap<String, Vec<RecordBatch>>,
    seq: u64,
}

impl BoundedRun {
    /// The queries `script` declares, over rows of `scored` (their outputs are not
    /// written: the results are returned).
    pub async fn new(
        script: &str,
        scored: SchemaRef,
        lookups: BTreeMap<String, Arc<dyn TableProvider>>,
    ) -> Result<Self, ContinuousError> {
        let registry = Registry::new(
            Catalog {
                scored,
                transactions: risksense_common::schema::transaction_schema(),
                lookups,
            },
            Connections {
                producer: None,
                store: None,
                kafka: None,
            },
            "bounded",
        );
        let names = registry.create(script, Origin::Batch).await?;
        let mut receivers = HashMap::new();
        let mut results = BTreeMap::new();
        for name in names {
            if let Some(query) = registry.get(&name) {
                receivers.insert(name.clone(), query.subscribe());
                results.insert(name, Vec::new());
            }
        }
        Ok(Self {
            sink: ContinuousSink::new(registry.clone()),
            registry,
            receivers,
            results,
            seq: 0,
        })
    }

    /// The next rows, in event-time order.
    pub async fn push(&mut self, batch: RecordBatch) -> Result<(), ContinuousError> {
        let batch = on_one_partition(batch)?;
        self.sink
            .write(&SinkBatch::new(self.seq, vec![batch], Vec::new()))
            .await?;
        self.seq += 1;
        self.drain()?;
        for query in self.registry.running() {
            if let crate::query::Status::Failed { reason } = query.status() {
                return Err(ContinuousError::Unsupported(format!(
                    "{}: {reason}",
                    query.name()
                )));
            }
        }
        Ok(())
    }

    /// Takes the results emitted so far. The channel holds 256 result batches, far more
    /// than one pushed batch yields; should a push ever yield more, that is an error, not
    /// results silently missing.
    fn drain(&mut self) -> Result<(), ContinuousError> {
        use tokio::sync::broadcast::error::TryRecvError;
        for (name, receiver) in &mut self.receivers {
            loop {
                match receiver.try_recv() {
                    Ok(batch) => {
                        if let Some(out) = self.results.get_mut(name) {
                            out.push((*batch).clone());
                        }
                    }
                    Err(TryRecvError::Lagged(n)) => {
                        return Err(ContinuousError::State(format!(
                            "{name}: {n} result batches of one input batch were not collected"
                        )));
                    }
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
        }
        Ok(())
    }

    /// Closes every open window; returns each query's results.
    pub async fn finish(mut self) -> Result<BTreeMap<String, Vec<RecordBatch>>, ContinuousError> {
        self.drain()?;
        for query in self.registry.running() {
            let closed = query.close_all().await?;
            if let Some(out) = self.results.get_mut(query.name()) {
                out.extend(closed);
            }
        }
        Ok(self.results)
    }
}

/// The rows with their `row_id`s moved to partition 0: a bounded input in event-time order
/// is one ordered partition (a rescored file's row ids are row numbers, not partitions).
fn on_one_partition(batch: RecordBatch) -> Result<RecordBatch, ContinuousError> {
    let Ok(index) = batch.schema().index_of("row_id") else {
        return Ok(batch);
    };
    let ids = batch.column(index).as_primitive::<Int64Type>();
    let moved: Int64Array = ids.unary(|id| id - i64::from(partition_of(id)));
    let mut columns = batch.columns().to_vec();
    columns[index] = Arc::new(moved);
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// Runs the queries of `script` over the rows of `frame` (scored rows, in event-time
/// order), calling `progress` with each batch's row count.
pub async fn run_over(
    script: &str,
    frame: datafusion::dataframe::DataFrame,
    mut progress: impl FnMut(usize),
) -> Result<BTreeMap<String, Vec<RecordBatch>>, ContinuousError> {
    use futures::StreamExt;

    let schema = Arc::new(frame.schema().as_arrow().clone());
    let mut run = BoundedRun::new(script, schema, BTreeMap::new()).await?;
    let mut stream = frame
        .execute_stream()
        .await
        .map_err(ContinuousError::plan("reading the history"))?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(ContinuousError::plan("reading the history"))?;
        progress(batch.num_rows());
        run.push(batch).await?;
    }
    run.finish().await
}

/// Writes each query's results to `dir/<query>.parquet`; returns (query, rows, file).
pub fn write_parquet(
    results: &BTreeMap<String, Vec<RecordBatch>>,
    dir: &std::path::Path,
) -> Result<Vec<(String, usize, std::path::PathBuf)>, ContinuousError> {
    let io = |what: &std::path::Path| {
        let what = what.display().to_string();
        move |source| ContinuousError::Io { what, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut written = Vec::new();
    for (name, batches) in results {
        let Some(first) = batches.first() else {
            written.push((name.clone(), 0, std::path::PathBuf::new()));
            continue;
        };
        let path = dir.join(format!("{name}.parquet"));
        let file = std::fs::File::create(&path).map_err(io(&path))?;
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, first.schema(), None)?;
        for batch in batches {
            writer.write(batch)?;
        }
        writer.close()?;
        written.push((
            name.clone(),
            batches.iter().map(RecordBatch::num_rows).sum(),
            path,
        ));
    }
    Ok(written)
}
