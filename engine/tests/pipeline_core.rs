//! The stream core without Kafka or Redis: the pipeline driven directly, with in-memory
//! sinks and the in-process store for checkpoints. What must hold whatever the sinks are:
//! a batch whose sink fails is retried and nothing is committed before it holds the data;
//! a fatal error stops without committing; a revoke checkpoints first; a two-phase sink's
//! commit comes after the checkpoint that names it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use parking_lot::Mutex;
use risksense_connectors::ConnectorError;
use risksense_connectors::sink::{PendingCommit, Placement, Sink, SinkBatch, SinkReport};
use risksense_engine::EngineError;
use risksense_engine::stream::pipeline::Pipeline;
use risksense_engine::stream::{StreamConfig, StreamMetrics};
use risksense_formats::codec::json::JsonRowEncoder;
use risksense_formats::message::Incoming;
use risksense_query::scorer::StreamScorer;
use risksense_store::{Retention, Store};
use risksense_udfs::Model;

const GROUP: &str = "core-group";
const TOPIC: &str = "core-topic";

fn model() -> Arc<Model> {
    let dir = common::repo_root().join("models/default");
    Arc::new(Model::load(&dir, risksense_udfs::SessionOptions { threads: 1 }).expect("model"))
}

/// The first `rows` transactions of the committed fixture.
fn fixture(rows: usize) -> RecordBatch {
    let path = common::repo_root().join("data/fixtures/sparkov-2019h1-head3000.csv");
    let batches = risksense_formats::source::read_all(&path).expect("fixture");
    common::concat(&batches).slice(0, rows)
}

/// `rows` as messages, alternately on `partitions` partitions, offsets from 0 per partition.
fn messages(rows: &RecordBatch, partitions: i32) -> Vec<Incoming> {
    let encoder = JsonRowEncoder::new(rows).expect("encoder");
    let mut next = vec![0i64; partitions as usize];
    (0..rows.num_rows())
        .map(|row| {
            let partition = row as i32 % partitions;
            let offset = next[partition as usize];
            next[partition as usize] += 1;
            let mut payload = Vec::new();
            encoder.encode_row(row, &mut payload);
            Incoming {
                partition,
                offset,
                key: None,
                payload: payload.into(),
                timestamp_ms: None,
            }
        })
        .collect()
}

/// How a [`TestSink`] answers a write.
#[derive(Clone, Copy)]
enum Failing {
    /// Fails this many times with a retryable error, then succeeds.
    Retryable(usize),
    /// Always fails with an error no retry can fix.
    Fatal,
}

/// A background sink that keeps what it was written, fails as told, and checks that no
/// checkpoint exists yet in the store whenever it is still failing.
struct TestSink {
    failing: Failing,
    attempts: AtomicUsize,
    rows: Mutex<usize>,
    store: Store,
    /// Set when a write failed while a checkpoint was already saved: a bug.
    committed_before_held: AtomicBool,
}

impl TestSink {
    fn new(failing: Failing, store: &Store) -> Arc<Self> {
        Arc::new(Self {
            failing,
            attempts: AtomicUsize::new(0),
            rows: Mutex::new(0),
            store: store.clone(),
            committed_before_held: AtomicBool::new(false),
        })
    }
}

#[async_trait]
impl Sink for TestSink {
    fn name(&self) -> &'static str {
        "test"
    }

    fn placement(&self) -> Placement {
        Placement::Background { ordered: false }
    }

    async fn write(&self, batch: &SinkBatch) -> Result<SinkReport, ConnectorError> {
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst);
        let fail = match self.failing {
            Failing::Retryable(times) => attempt < times,
            Failing::Fatal => true,
        };
        if fail {
            for partition in 0..2 {
                if let Ok(Some(_)) = self.store.load_checkpoint(GROUP, TOPIC, partition).await {
                    self.committed_before_held.store(true, Ordering::SeqCst);
                }
            }
            return Err(match self.failing {
                Failing::Retryable(_) => ConnectorError::Io(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "the test sink is away",
                )),
                Failing::Fatal => ConnectorError::Format(risksense_formats::FormatError::Schema(
                    "the test sink refuses this for good".to_string(),
                )),
            });
        }
        *self.rows.lock() += batch.num_rows();
        Ok(SinkReport::default())
    }
}

/// An inline two-phase sink: records the order of its phases and whether the checkpoint
/// naming its token was saved when it was committed.
struct TwoPhaseSink {
    store: Store,
    events: Arc<Mutex<Vec<String>>>,
}

struct TwoPhaseCommit {
    partition: i32,
    store: Store,
    events: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Sink for TwoPhaseSink {
    fn name(&self) -> &'static str {
        "two-phase"
    }

    fn placement(&self) -> Placement {
        Placement::Inline
    }

    async fn write(&self, batch: &SinkBatch) -> Result<SinkReport, ConnectorError> {
        self.events
            .lock()
            .push(format!("write {}", batch.num_rows()));
        Ok(SinkReport::default())
    }

    fn begin_commit(&self, partition: i32) -> Option<Box<dyn PendingCommit>> {
        self.events.lock().push(format!("begin {partition}"));
        Some(Box::new(TwoPhaseCommit {
            partition,
            store: self.store.clone(),
            events: self.events.clone(),
        }))
    }
}

#[async_trait]
impl PendingCommit for TwoPhaseCommit {
    async fn prepare(&mut self) -> Result<Option<String>, ConnectorError> {
        let saved = self
            .store
            .load_checkpoint(GROUP, TOPIC, self.partition)
            .await?;
        self.events.lock().push(format!(
            "prepare {} (checkpoint saved: {})",
            self.partition,
            saved.is_some()
        ));
        Ok(Some(format!("token-{}", self.partition)))
    }

    fn commit(self: Box<Self>) -> Result<(), ConnectorError> {
        // The in-process store answers at once (no I/O), so it can be asked from here.
        let saved =
            futures::executor::block_on(self.store.load_checkpoint(GROUP, TOPIC, self.partition))?;
        self.events.lock().push(format!(
            "commit {} (checkpoint saved: {})",
            self.partition,
            saved.is_some()
        ));
        Ok(())
    }
}

fn config() -> StreamConfig {
    StreamConfig {
        group: GROUP.to_string(),
        topic: TOPIC.to_string(),
        archive: Default::default(),
        ..StreamConfig::default()
    }
}

async fn pipeline(store: &Store, sinks: Vec<Arc<dyn Sink>>) -> (Pipeline, Arc<StreamMetrics>) {
    pipeline_with(config(), store, sinks).await
}

async fn pipeline_with(
    config: StreamConfig,
    store: &Store,
    sinks: Vec<Arc<dyn Sink>>,
) -> (Pipeline, Arc<StreamMetrics>) {
    let scorer = StreamScorer::new(model(), config.session_options())
        .await
        .expect("scorer");
    let metrics = Arc::new(StreamMetrics::default());
    let pipeline = Pipeline::new(
        config,
        scorer,
        store.clone(),
        sinks,
        metrics.clone(),
        Arc::new(AtomicBool::new(false)),
    )
    .expect("pipeline");
    (pipeline, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_sink_fails_is_retried_and_not_committed_before_the_sink_holds_it() {
    let store = Store::memory(Retention::default());
    let sink = TestSink::new(Failing::Retryable(3), &store);
    let (mut pipeline, metrics) = pipeline(&store, vec![sink.clone()]).await;
    let rows = fixture(200);
    for partition in [0, 1] {
        assert_eq!(pipeline.restore(partition).await.expect("restore"), None);
    }
    pipeline
        .process(messages(&rows, 2))
        .await
        .expect("processed (the sink's writes run in the background)");
    let offsets = pipeline.checkpoint_all().await.expect("checkpoint");

    assert_eq!(
        sink.attempts.load(Ordering::SeqCst),
        4,
        "three failures, then the write"
    );
    assert_eq!(*sink.rows.lock(), 200, "the sink holds every row, once");
    assert_eq!(StreamMetrics::get(&metrics.sink_retries), 3);
    assert!(
        !sink.committed_before_held.load(Ordering::SeqCst),
        "a checkpoint was saved while the sink did not hold the batch"
    );
    assert_eq!(offsets, vec![(0, 100), (1, 100)]);
    for partition in [0, 1] {
        let checkpoint = store
            .load_checkpoint(GROUP, TOPIC, partition)
            .await
            .expect("load")
            .expect("saved after the sink held the data");
        assert_eq!(checkpoint.offset, 100);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_sink_error_stops_the_stream_without_committing() {
    let store = Store::memory(Retention::default());
    let sink = TestSink::new(Failing::Fatal, &store);
    let (mut pipeline, metrics) = pipeline(&store, vec![sink.clone()]).await;
    let rows = fixture(100);
    pipeline.restore(0).await.expect("restore");
    pipeline
        .process(messages(&rows, 1))
        .await
        .expect("processed");
    let error = pipeline
        .checkpoint_all()
        .await
        .expect_err("the checkpoint must fail: the sink never held the batch");
    assert!(!error.is_retryable(), "{error}");
    assert!(
        error.to_string().contains("refuses this for good"),
        "the sink's reason reaches the operator: {error}"
    );
    assert_eq!(
        sink.attempts.load(Ordering::SeqCst),
        1,
        "no retry of a fatal error"
    );
    assert_eq!(StreamMetrics::get(&metrics.sink_retries), 0);
    assert!(
        store
            .load_checkpoint(GROUP, TOPIC, 0)
            .await
            .expect("load")
            .is_none(),
        "nothing committed past what the sinks hold"
    );
    // The pipeline gave up: more input is refused rather than processed uncommittable.
    let more = pipeline
        .process(messages(&fixture(101).slice(100, 1), 1))
        .await;
    assert!(matches!(more, Err(EngineError::State(_))), "{more:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_checkpoints_first_and_the_next_owner_resumes_there_with_the_history() {
    let store = Store::memory(Retention::default());
    let sink = TestSink::new(Failing::Retryable(0), &store);
    let (mut first, _) = pipeline(&store, vec![sink.clone()]).await;
    let rows = fixture(300);
    for partition in [0, 1] {
        first.restore(partition).await.expect("restore");
    }
    first.process(messages(&rows, 2)).await.expect("processed");
    let offsets = first.revoke(&[0]).await.expect("revoke");
    assert_eq!(
        offsets,
        vec![(0, 150), (1, 150)],
        "every owned partition, checkpointed"
    );
    assert_eq!(
        first.partitions(),
        vec![1],
        "partition 0 let go after its checkpoint"
    );
    assert_eq!(
        *sink.rows.lock(),
        300,
        "the sinks held the rows before the checkpoint"
    );

    // The next owner resumes partition 0 at the checkpoint, with the cards' history.
    let (mut next, _) = pipeline(&store, vec![sink.clone()]).await;
    assert_eq!(next.restore(0).await.expect("restore"), Some(150));
    let checkpoint = store
        .load_checkpoint(GROUP, TOPIC, 0)
        .await
        .expect("load")
        .expect("saved");
    assert!(
        checkpoint.state.len() > 1000,
        "the checkpoint carries the cards' history ({} bytes)",
        checkpoint.state.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_phase_sink_is_prepared_before_and_committed_after_the_checkpoint_is_saved() {
    let store = Store::memory(Retention::default());
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::new(TwoPhaseSink {
        store: store.clone(),
        events: events.clone(),
    });
    let (mut pipeline, _) = pipeline(&store, vec![sink]).await;
    pipeline.restore(0).await.expect("restore");
    pipeline
        .process(messages(&fixture(50), 1))
        .await
        .expect("processed");
    pipeline.checkpoint_all().await.expect("checkpoint");
    assert_eq!(
        *events.lock(),
        vec![
            "write 50".to_string(),
            "begin 0".to_string(),
            "prepare 0 (checkpoint saved: false)".to_string(),
            "commit 0 (checkpoint saved: true)".to_string(),
        ]
    );
    let checkpoint = store
        .load_checkpoint(GROUP, TOPIC, 0)
        .await
        .expect("load")
        .expect("saved");
    assert_eq!(
        checkpoint.archive_file.as_deref(),
        Some("token-0"),
        "the prepared commit's token is saved with the checkpoint, for a restart to finish"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_checkpoints_take_turns_and_return_their_offsets_once_saved() {
    let store = Store::memory(Retention::default());
    let sink = TestSink::new(Failing::Retryable(2), &store);
    let config = StreamConfig {
        checkpoint_interval_ms: 0,
        ..config()
    };
    let (mut pipeline, metrics) = pipeline_with(config, &store, vec![sink.clone()]).await;
    for partition in [0, 1] {
        pipeline.restore(partition).await.expect("restore");
    }
    pipeline
        .process(messages(&fixture(120), 2))
        .await
        .expect("processed");
    // The poll loop's calls: each starts one partition's checkpoint in the background or
    // collects a finished one's offset.
    let mut committed = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while committed.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "checkpoints never finished"
        );
        if pipeline.checkpoint_due() {
            committed.extend(pipeline.checkpoint_next().await.expect("checkpoint"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    committed.sort();
    assert_eq!(committed, vec![(0, 60), (1, 60)]);
    assert!(
        !sink.committed_before_held.load(Ordering::SeqCst),
        "a background checkpoint was saved before the sink held its rows"
    );
    assert_eq!(*sink.rows.lock(), 120);
    assert_eq!(StreamMetrics::get(&metrics.checkpoints), 2);
    for partition in [0, 1] {
        let saved = store
            .load_checkpoint(GROUP, TOPIC, partition)
            .await
            .expect("load")
            .expect("saved");
        assert_eq!(saved.offset, 60);
    }
}
