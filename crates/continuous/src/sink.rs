//! The standing queries as one stream sink: each micro-batch runs through every query on
//! the poll loop (their window state must be settled before a checkpoint's cut), their
//! results are delivered by each query's output task, and a checkpoint saves their window
//! state with the partition's offset after waiting for those deliveries.

use std::sync::Arc;

use async_trait::async_trait;
use risksense_connectors::ConnectorError;
use risksense_connectors::sink::{PendingCommit, Placement, Sink, SinkBatch, SinkReport};

use crate::plan::Source;
use crate::query::{Input, RunningQuery};
use crate::registry::Registry;
use crate::state;

pub struct ContinuousSink {
    registry: Arc<Registry>,
}

impl ContinuousSink {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }
}

#[async_trait]
impl Sink for ContinuousSink {
    fn name(&self) -> &'static str {
        "queries"
    }

    fn placement(&self) -> Placement {
        Placement::Inline
    }

    async fn write(&self, batch: &SinkBatch) -> Result<SinkReport, ConnectorError> {
        let (scored, transactions) = (Input::new(&batch.scored), Input::new(&batch.transactions));
        for query in self.registry.running() {
            let input = match query.plan.source {
                Source::Scored => &scored,
                Source::Transactions => &transactions,
            };
            if let Err(error) = query.process(input, batch.first_produced_ms).await {
                // One user's query failing must not stop the stream (nor the others).
                query.fail(error.to_string());
            }
        }
        Ok(SinkReport::default())
    }

    fn begin_commit(&self, _partition: i32) -> Option<Box<dyn PendingCommit>> {
        let waits: Vec<(Arc<RunningQuery>, u64)> = self
            .registry
            .running()
            .into_iter()
            .map(|q| {
                let sent = q.sent();
                (q, sent)
            })
            .collect();
        Some(Box::new(Deliveries { waits }))
    }

    fn snapshot(&self, partition: i32) -> Result<Option<Vec<u8>>, ConnectorError> {
        let mut entries = Vec::new();
        for query in self.registry.running() {
            if query.temporary {
                continue;
            }
            if let Some(snapshot) = query.snapshot(partition)? {
                entries.push((
                    query.name().to_string(),
                    query.fingerprint.clone(),
                    snapshot,
                ));
            }
        }
        if entries.is_empty() {
            return Ok(None);
        }
        Ok(Some(state::encode(entries)?))
    }

    fn restore_state(&self, partition: i32, bytes: Option<&[u8]>) -> Result<(), ConnectorError> {
        // Every query reads the partition from now on (a checkpointed state replaces this).
        for query in self.registry.running() {
            query.assign(partition)?;
        }
        let Some(bytes) = bytes else {
            return Ok(());
        };
        let entries = match state::decode(bytes) {
            Ok(entries) => entries,
            Err(error) => {
                // As for the history: resume rather than stop for good.
                tracing::error!(partition, %error, "standing queries' state unreadable; their windows restart empty");
                return Ok(());
            }
        };
        for (name, fingerprint, snapshot) in entries {
            match self.registry.get(&name) {
                Some(query) if query.fingerprint == fingerprint => {
                    query.restore(partition, &snapshot)?
                }
                Some(_) => {
                    tracing::warn!(query = %name, partition, "the query changed since its state was saved; its windows restart empty")
                }
                None => {}
            }
        }
        Ok(())
    }

    fn abort(&self, partition: Option<i32>) {
        for query in self.registry.running() {
            query.forget(partition);
        }
    }
}

/// A checkpoint's wait for the results emitted before its cut to be delivered: the
/// offsets it commits must not pass rows whose windows are not yet in their output.
struct Deliveries {
    waits: Vec<(Arc<RunningQuery>, u64)>,
}

#[async_trait]
impl PendingCommit for Deliveries {
    async fn prepare(&mut self) -> Result<Option<String>, ConnectorError> {
        for (query, sent) in &self.waits {
            query.delivered(*sent).await;
        }
        Ok(None)
    }

    fn commit(self: Box<Self>) -> Result<(), ConnectorError> {
        Ok(())
    }
}
