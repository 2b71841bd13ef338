//! `risksense run` killed with SIGKILL mid-stream, then started again: nothing is lost and
//! nothing shows twice (Redis, the alerts stream, the archive). Needs Kafka and Redis
//! (`scripts/services.sh up`); fails loudly without them. `RISKSENSE_REDIS_URL` picks one
//! Redis or a cluster: `scripts/test.sh` runs it against both.

#[path = "../engine/tests/common.rs"]
mod common;
mod support;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};

/// Runs `risksense`, which must succeed; returns its stdout.
fn risksense(args: &[&str]) -> String {
    let output = support::risksense_ok(support::repo(), args);
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// `column` as plain Utf8 (DataFusion may write strings as Utf8View).
fn utf8(batch: &RecordBatch, column: &str) -> arrow::array::ArrayRef {
    let array = batch
        .column_by_name(column)
        .unwrap_or_else(|| panic!("no column {column}"));
    arrow::compute::cast(array, &arrow::datatypes::DataType::Utf8).expect("castable to Utf8")
}

fn scores(batches: &[RecordBatch]) -> std::collections::HashMap<String, f64> {
    let mut out = std::collections::HashMap::new();
    for batch in batches {
        let ids = utf8(batch, "trans_num");
        let ids = ids.as_string::<i32>();
        let scores = batch
            .column_by_name("score")
            .expect("score")
            .as_primitive::<arrow::datatypes::Float64Type>();
        for i in 0..batch.num_rows() {
            out.insert(ids.value(i).to_string(), scores.value(i));
        }
    }
    out
}

fn strings(batches: &[RecordBatch], column: &str) -> Vec<String> {
    let mut out = Vec::new();
    for batch in batches {
        let values = utf8(batch, column);
        let values = values.as_string::<i32>();
        out.extend((0..batch.num_rows()).map(|i| values.value(i).to_string()));
    }
    out
}

#[test]
fn kill_9_mid_stream_then_restart_loses_nothing_and_shows_nothing_twice() {
    let brokers = common::kafka_brokers();
    let url = common::redis_url();
    let topic = common::unique_topic("kill9");
    let dir = std::env::temp_dir().join(&topic);
    std::fs::create_dir_all(&dir).expect("scratch");
    let input = dir.join("input.parquet");
    let archive = dir.join("archive");

    risksense(&[
        "generate",
        "--customers",
        "300",
        "--start",
        "2019-01-01",
        "--end",
        "2019-07-31",
        "--seed",
        "17",
        "--out",
        input.to_str().expect("path"),
    ]);
    risksense(&[
        "produce",
        "--input",
        input.to_str().expect("path"),
        "--topic",
        &topic,
        "--kafka",
        &brokers,
    ]);
    let sent = strings(
        &common::read_parquet(std::slice::from_ref(&input)),
        "trans_num",
    );
    assert!(sent.len() > 50_000, "{} rows", sent.len());

    let config = dir.join("risksense.toml");
    std::fs::write(
        &config,
        format!(
            "brokers = \"{brokers}\"\nredis = \"{url}\"\ntopic = \"{topic}\"\ngroup = \"{topic}-group\"\n\
             alerts_topic = \"{topic}.alerts\"\ndead_letter_topic = \"{topic}.dlq\"\n\
             archive = \"{}\"\nbatch_rows = 1000\ncheckpoint_interval_ms = 500\n\
             checkpoint_delta_share = 1.0\n\
             [retention]\nprefix = \"{topic}\"\n",
            archive.display()
        ),
    )
    .expect("config");
    let config = config.to_str().expect("path").to_string();

    // First run: killed with SIGKILL once some checkpoints have happened, one of them a
    // delta (only the cards changed since the one before), so the restart restores a
    // whole checkpoint and the deltas after it.
    let mut first = Command::new(env!("CARGO_BIN_EXE_risksense"))
        .args(["run", "--config", &config])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("risksense run starts");
    let started = Instant::now();
    let mut probe = risksense_testkit::Probe::open(&url);
    let checkpoints: Vec<String> = (0..16)
        .map(|partition| {
            risksense_store::layout::checkpoint(
                &topic,
                &format!("{topic}-group"),
                &topic,
                partition,
            )
        })
        .collect();
    let mut deltas = || probe.checkpoint_deltas(&checkpoints);
    while (common::parquet_files(&archive).len() < 2 || deltas() == 0)
        && started.elapsed() < Duration::from_secs(120)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    assert!(
        deltas() > 0,
        "no delta checkpoint was saved before the kill"
    );
    let archived_before = common::read_parquet(&common::parquet_files(&archive))
        .iter()
        .map(|b| b.num_rows())
        .sum::<usize>();
    assert!(
        archived_before > 0 && archived_before < sent.len(),
        "the kill did not land mid-stream ({archived_before} of {} archived)",
        sent.len()
    );

    // Second run: resumes from the checkpoint and stops once idle.
    let summary = risksense(&[
        "run",
        "--config",
        &config,
        "--stop-when-idle",
        "4",
        "--summary-json",
    ]);
    let summary: serde_json::Value = serde_json::from_str(summary.trim()).expect("summary JSON");
    let resumed = summary["messages"].as_u64().expect("messages");
    assert!(
        resumed > 0 && resumed < sent.len() as u64,
        "the restart read {resumed} messages: it should resume, not start over"
    );

    // Archive: every row exactly once.
    let archived = common::read_parquet(&common::parquet_files(&archive));
    let archived_ids = strings(&archived, "trans_num");
    assert_eq!(archived_ids.len(), sent.len(), "archive rows");
    assert_eq!(
        archived_ids.iter().collect::<HashSet<_>>(),
        sent.iter().collect::<HashSet<_>>()
    );
    let anomalies: HashSet<String> = {
        let mut set = HashSet::new();
        for batch in &archived {
            let ids = batch
                .column_by_name("trans_num")
                .expect("trans_num")
                .as_string::<i32>();
            let flags = batch
                .column_by_name("is_anomaly")
                .expect("flag")
                .as_boolean();
            for i in 0..batch.num_rows() {
                if flags.value(i) {
                    set.insert(ids.value(i).to_string());
                }
            }
        }
        set
    };
    assert!(!anomalies.is_empty());

    // The restart resumed with the per-card state of its checkpoint: the scores equal the
    // batch job's over the same rows (an empty state would change the history features).
    let rescored_dir = dir.join("rescored");
    risksense(&[
        "rescore",
        "--input",
        input.to_str().expect("path"),
        "--out",
        rescored_dir.to_str().expect("path"),
    ]);
    let batch = scores(&common::read_parquet(&common::parquet_files(&rescored_dir)));
    let streamed = scores(&archived);
    assert_eq!(batch.len(), streamed.len());
    for (trans_num, score) in &batch {
        let difference = (streamed[trans_num] - score).abs();
        assert!(
            difference <= 1e-6,
            "{trans_num}: stream {} vs batch {score}",
            streamed[trans_num]
        );
    }

    // Redis: every transaction; each anomaly alerted exactly once.
    let mut probe = risksense_testkit::Probe::open(&url);
    let ttl = risksense_store::Retention::default().ttl_secs;
    let stored = probe.transactions_stored(&topic, ttl, &sent);
    assert!(
        stored.iter().all(|f| *f),
        "{} transactions missing from Redis",
        stored.iter().filter(|f| !**f).count()
    );
    let alerted = probe.alerts(&topic);
    assert_eq!(alerted.len(), anomalies.len(), "alerts stream length");
    assert_eq!(alerted.into_iter().collect::<HashSet<_>>(), anomalies);
    let _ = std::fs::remove_dir_all(&dir);
}
