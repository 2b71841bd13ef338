//! What the API tests share: the default model, and an API over a Redis prefix of its own
//! holding the fixture's scored rows.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use risksense_api::{ApiConfig, ApiState};
use risksense_common::metrics::StreamMetrics;
use risksense_formats::source::TransactionFile;
use risksense_query::LiveWindow;
use risksense_store::{Retention, ScoredRows, ScoredTransaction, Store};
use risksense_udfs::{Model, ModelControl};

use crate::common;

pub fn model() -> Arc<Model> {
    let dir = common::repo_root().join("models/default");
    Arc::new(Model::load(&dir, risksense_udfs::SessionOptions { threads: 1 }).expect("model"))
}

pub fn fixture() -> RecordBatch {
    let path = common::repo_root().join("data/fixtures/sparkov-2019h1-head3000.csv");
    let batches: Vec<RecordBatch> = TransactionFile::open(&path, 8192, false)
        .expect("fixture")
        .collect::<Result<_, _>>()
        .expect("rows");
    common::concat(&batches)
}

/// The fixture scored by the batch path: (scored batches, rows as the store keeps them).
pub async fn scored_fixture(model: &Arc<Model>) -> (Vec<RecordBatch>, Vec<ScoredTransaction>) {
    let batches = common::batch_scored(model, fixture()).await;
    let mut rows = Vec::new();
    for batch in &batches {
        rows.extend(risksense_store::from_batch(batch).expect("rows"));
    }
    (batches, rows)
}

pub struct Api {
    pub state: Arc<ApiState>,
    pub rows: Vec<ScoredTransaction>,
}

pub async fn api(config: ApiConfig) -> Api {
    let url = common::redis_url();
    let model = model();
    let prefix = common::unique_topic("api");
    let store = Store::redis(
        &url,
        Retention {
            prefix,
            ..Retention::default()
        },
    )
    .await
    .expect("redis");
    let (batches, rows) = scored_fixture(&model).await;
    store
        .write(&ScoredRows::from_records(&rows))
        .await
        .expect("written");
    let live = Arc::new(LiveWindow::new(Duration::from_secs(600), 1_000_000));
    for batch in batches {
        live.push(batch);
    }
    let state = ApiState::new(
        config,
        store,
        ModelControl::fixed(model),
        Some(live),
        Some(Arc::new(StreamMetrics::default())),
        None,
    )
    .await
    .expect("state");
    Api { state, rows }
}

/// A `redis-server` of the test's own (so it can be killed or frozen) on a free port, and
/// an API over it with no stream.
pub async fn private_redis_api() -> (std::process::Child, Arc<ApiState>) {
    let _ = common::redis_url();
    // A port the kernel just handed out and took back: a fixed range could meet a port
    // in use by one of the suite's many client connections (the ephemeral range), and
    // the server would not start. Another attempt if it lost the port anyway.
    let mut started = None;
    for _ in 0..5 {
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut redis = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs");
        let mut answers = false;
        for _ in 0..100 {
            answers = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            if answers || matches!(redis.try_wait(), Ok(Some(_))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if answers {
            started = Some((redis, port));
            break;
        }
        let _ = redis.kill();
        let _ = redis.wait();
    }
    let (redis, port) = started.expect("a private redis-server started on a free port");
    let store = Store::redis(&format!("redis://127.0.0.1:{port}/"), Retention::default())
        .await
        .expect("redis");
    let state = ApiState::new(
        ApiConfig::default(),
        store,
        ModelControl::fixed(model()),
        None,
        None,
        None,
    )
    .await
    .expect("state");
    (redis, state)
}
