//! The sinks `risksense run` writes to, and the one that lives in the engine: the live
//! window the API's SQL reads.

use std::sync::Arc;

use async_trait::async_trait;
use rdkafka::producer::FutureProducer;
use risksense_connectors::ConnectorError;
use risksense_connectors::archive::ParquetArchive;
use risksense_connectors::sink::{
    ArchiveSink, KafkaSink, Placement, Sink, SinkBatch, SinkReport, StoreSink,
};
use risksense_query::LiveWindow;
use risksense_store::Store;

use super::config::StreamConfig;
use crate::error::EngineError;

/// The last minutes of scored rows in memory (for `/v1/sql`'s `scored`). Not durable: a
/// restart starts it empty.
pub struct LiveSink {
    live: Arc<LiveWindow>,
}

impl LiveSink {
    pub fn new(live: Arc<LiveWindow>) -> Self {
        Self { live }
    }
}

#[async_trait]
impl Sink for LiveSink {
    fn name(&self) -> &'static str {
        "live"
    }

    fn placement(&self) -> Placement {
        Placement::Inline
    }

    async fn write(&self, batch: &SinkBatch) -> Result<SinkReport, ConnectorError> {
        for scored in &batch.scored {
            self.live.push(scored.clone());
        }
        Ok(SinkReport::default())
    }
}

/// The sinks of a run, and the archive among them (its published files are counted).
pub struct StreamSinks {
    pub sinks: Vec<Arc<dyn Sink>>,
    pub archive: Option<Arc<ArchiveSink>>,
}

/// The stream's sinks as configured: the archive (when `archive` is set), the live
/// window and the standing queries (when given) inline; the result store and Kafka (alerts, dead letters) in the
/// background. Also returns the archive, whose published files the run summary counts.
pub fn stream_sinks(
    config: &StreamConfig,
    store: Store,
    producer: FutureProducer,
    live: Option<Arc<LiveWindow>>,
    queries: Option<Arc<risksense_continuous::Registry>>,
) -> Result<StreamSinks, EngineError> {
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    let archive = if config.archive.as_os_str().is_empty() {
        None
    } else {
        let archive = Arc::new(ArchiveSink::new(ParquetArchive::new(
            &config.archive,
            &config.instance,
        )?));
        sinks.push(archive.clone());
        Some(archive)
    };
    if let Some(live) = live {
        sinks.push(Arc::new(LiveSink::new(live)));
    }
    if let Some(queries) = queries {
        sinks.push(Arc::new(risksense_continuous::ContinuousSink::new(queries)));
    }
    sinks.push(Arc::new(StoreSink::new(store)));
    sinks.push(Arc::new(KafkaSink::new(
        producer,
        &config.alerts_topic,
        &config.dead_letter_topic,
    )));
    Ok(StreamSinks { sinks, archive })
}
