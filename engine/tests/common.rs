//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::record_batch::RecordBatch;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Kafka bootstrap servers for the tests. Fails the test loudly, with the command that
/// starts the broker, when nothing answers: these tests never skip.
pub fn kafka_brokers() -> String {
    let brokers =
        std::env::var("RISKSENSE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_string());
    let first = brokers.split(',').next().unwrap_or_default().to_string();
    let reachable = first
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok());
    assert!(
        reachable,
        "Kafka is not reachable at {first}: these tests need a real broker. \
         Start one with `scripts/services.sh up` (or run `scripts/test.sh`), \
         or point RISKSENSE_KAFKA_BROKERS at yours."
    );
    brokers
}

/// A topic name no other test run uses.
pub fn unique_topic(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// All rows of `batches` as one batch.
pub fn concat(batches: &[RecordBatch]) -> RecordBatch {
    arrow::compute::concat_batches(&risksense_engine::schema::transaction_schema(), batches)
        .expect("batches share the transaction schema")
}

/// Rows sorted by `row_id`, so two sets of the same rows compare equal whatever their order.
pub fn sorted_by_row_id(batch: &RecordBatch) -> RecordBatch {
    let indices = arrow::compute::sort_to_indices(
        batch.column(risksense_engine::schema::idx::ROW_ID),
        None,
        None,
    )
    .expect("sortable");
    arrow::compute::take_record_batch(batch, &indices).expect("take")
}
