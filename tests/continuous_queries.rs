//! The shipped standing queries (sql/queries) run by `risksense run` against the real Kafka
//! and Redis, killed with SIGKILL while windows are open, then restarted: every window is
//! emitted exactly once — in the Kafka topics (one record per key, none twice) and in
//! Redis (one hash per window and group) — and equals a batch computation over the same
//! rows (the archive). Needs Kafka and Redis (`scripts/services.sh up`); fails loudly
//! without them.

#[path = "../engine/tests/common.rs"]
mod common;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::TimestampMicrosecondType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::SessionContext;

fn risksense(args: &[&str]) -> String {
    let output = support::risksense_ok(support::repo(), args);
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// Result rows as `key → column → text`, keyed by the given columns joined with `/`.
fn keyed(batches: &[RecordBatch], key: &[&str]) -> BTreeMap<String, BTreeMap<String, String>> {
    let options = FormatOptions::default();
    let mut out = BTreeMap::new();
    for batch in batches {
        let schema = batch.schema();
        let formatters: Vec<ArrayFormatter> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("formatter"))
            .collect();
        for row in 0..batch.num_rows() {
            let fields: BTreeMap<String, String> = schema
                .fields()
                .iter()
                .zip(&formatters)
                .map(|(f, v)| (f.name().clone(), spaced(&v.value(row).to_string())))
                .collect();
            let k = key
                .iter()
                .map(|c| fields[*c].clone())
                .collect::<Vec<_>>()
                .join("/");
            out.insert(k, fields);
        }
    }
    out
}

/// `2019-01-01T00:05:00` (Arrow's JSON) as `2019-01-01 00:05:00` (the keys' form).
fn spaced(text: &str) -> String {
    let bytes = text.as_bytes();
    if bytes.len() >= 19 && bytes[10] == b'T' && bytes[..4].iter().all(u8::is_ascii_digit) {
        text.replacen('T', " ", 1)
    } else {
        text.to_string()
    }
}

fn json_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => spaced(s),
        other => other.to_string(),
    }
}

fn same_number(a: &str, b: &str) -> bool {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-6 * x.abs().max(1.0),
        _ => a == b,
    }
}

/// Checks `got` (key → fields) against `want` on `columns`.
fn assert_same(
    what: &str,
    got: &BTreeMap<String, BTreeMap<String, String>>,
    want: &BTreeMap<String, BTreeMap<String, String>>,
    columns: &[&str],
) {
    assert!(
        !want.is_empty(),
        "{what}: the batch computation found no window"
    );
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: {} windows emitted, {} expected; missing {missing:?}, extra {extra:?}",
        got.len(),
        want.len()
    );
    for (key, fields) in want {
        for column in columns {
            let (g, w) = (&got[key][*column], &fields[*column]);
            assert!(
                same_number(g, w),
                "{what} {key} {column}: stream {g}, batch {w}"
            );
        }
    }
}

#[test]
fn the_example_queries_survive_kill_9_and_emit_every_window_once() {
    let brokers = common::kafka_brokers();
    let url = common::redis_url();
    let topic = common::unique_topic("standing");
    let dir = std::env::temp_dir().join(&topic);
    let queries = dir.join("queries");
    std::fs::create_dir_all(&queries).expect("scratch");
    let input = dir.join("input.parquet");
    let archive = dir.join("archive");

    // The shipped examples, writing to this test's own topics and keys.
    let merchants_topic = format!("{topic}.merchants");
    let velocity_topic = format!("{topic}.velocity");
    let redis_prefix = format!("{topic}:fraud_rate:");
    for entry in std::fs::read_dir(support::repo().join("sql/queries")).expect("sql/queries") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path)
            .expect("read")
            .replace("'merchant-anomalies'", &format!("'{merchants_topic}'"))
            .replace("topic = 'alerts'", &format!("topic = '{velocity_topic}'"))
            .replace("risksense:fraud_rate:", &redis_prefix);
        std::fs::write(queries.join(path.file_name().expect("name")), text).expect("write");
    }

    risksense(&[
        "generate",
        "--customers",
        "300",
        "--start",
        "2019-01-01",
        "--end",
        "2019-04-30",
        "--seed",
        "23",
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

    let config = dir.join("risksense.toml");
    std::fs::write(
        &config,
        format!(
            "brokers = \"{brokers}\"\nredis = \"{url}\"\ntopic = \"{topic}\"\ngroup = \"{topic}-group\"\n\
             alerts_topic = \"{topic}.alerts\"\ndead_letter_topic = \"{topic}.dlq\"\n\
             archive = \"{}\"\nqueries = \"{}\"\nbatch_rows = 1000\ncheckpoint_interval_ms = 500\n\
             [retention]\nprefix = \"{topic}\"\n",
            archive.display(),
            queries.display()
        ),
    )
    .expect("config");
    let config = config.to_str().expect("path").to_string();

    // First run: SIGKILL once checkpoints were taken (windows emitted, others open).
    let mut first = support::KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_risksense"))
            .args(["run", "--config", &config])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("risksense run starts"),
    );
    let started = Instant::now();
    let emitted = || {
        common::read_raw(
            &brokers,
            &merchants_topic,
            1,
            Duration::ZERO,
            Duration::from_millis(500),
        )
        .len()
    };
    while (common::parquet_files(&archive).len() < 3 || emitted() == 0)
        && started.elapsed() < Duration::from_secs(120)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    first.0.kill().expect("SIGKILL");
    first.0.wait().expect("reaped");
    assert!(emitted() > 0, "windows were emitted before the kill");
    let archived_before = common::read_parquet(&common::parquet_files(&archive))
        .iter()
        .map(RecordBatch::num_rows)
        .sum::<usize>();

    // Second run: resumes from the checkpoints and stops once idle.
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
    assert!(resumed > 0, "the restart read nothing");
    let sent_rows = common::read_parquet(std::slice::from_ref(&input))
        .iter()
        .map(RecordBatch::num_rows)
        .sum::<usize>();
    assert!(
        archived_before < sent_rows,
        "the kill did not land mid-stream ({archived_before} of {sent_rows} archived)"
    );
    for query in summary["queries"].as_array().expect("queries") {
        assert!(query["failed"].is_null(), "{query}");
    }

    // The batch computation over the archive (every scored row once: see stream_recovery).
    let archived = common::read_parquet(&common::parquet_files(&archive));
    let sent = common::read_parquet(std::slice::from_ref(&input))
        .iter()
        .map(RecordBatch::num_rows)
        .sum::<usize>();
    assert_eq!(
        archived.iter().map(RecordBatch::num_rows).sum::<usize>(),
        sent
    );
    let last = archived
        .iter()
        .filter_map(|b| {
            arrow::compute::max(
                b.column_by_name("trans_date_trans_time")
                    .expect("time")
                    .as_primitive::<TimestampMicrosecondType>(),
            )
        })
        .max()
        .expect("rows");
    // Windows the stream had to emit: ends at or before the final watermark (the last event
    // time less the queries' 5 s of allowed lateness), on each query's slide.
    let watermark = last - 5_000_000;
    let through = |slide_us: i64| watermark.div_euclid(slide_us) * slide_us;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let batch = |sql: String| -> Vec<RecordBatch> {
        runtime.block_on(async {
            let ctx = SessionContext::new();
            let schema = archived[0].schema();
            let table = datafusion::datasource::MemTable::try_new(schema, vec![archived.clone()])
                .expect("table");
            ctx.register_table("scored", std::sync::Arc::new(table))
                .expect("register");
            ctx.sql(&sql)
                .await
                .expect("sql")
                .collect()
                .await
                .expect("rows")
        })
    };
    let minute = 60_000_000;
    let merchants_want = keyed(
        &batch(format!(
            "SELECT date_bin(INTERVAL '1' MINUTE, trans_date_trans_time) AS window_start, merchant,
                    count(*) AS anomalies, round(sum(amt), 2) AS amount
             FROM scored WHERE is_anomaly
               AND date_bin(INTERVAL '1' MINUTE, trans_date_trans_time) + INTERVAL '1' MINUTE <= to_timestamp_micros({})
             GROUP BY 1, 2",
            through(minute)
        )),
        &["window_start", "merchant"],
    );
    let velocity_want = keyed(
        &batch(format!(
            "WITH w AS (
               SELECT date_bin(INTERVAL '5' MINUTE, trans_date_trans_time) - back AS window_start, cc_num, amt
               FROM scored CROSS JOIN (VALUES {}) AS b(back)
               WHERE is_anomaly)
             SELECT window_start, cc_num, count(*) AS anomalies, round(sum(amt), 2) AS amount FROM w
             WHERE window_start + INTERVAL '1' HOUR <= to_timestamp_micros({})
             GROUP BY 1, 2 HAVING count(*) >= 3",
            (0..60)
                .step_by(5)
                .map(|m| format!("(INTERVAL '{m}' MINUTE)"))
                .collect::<Vec<_>>()
                .join(", "),
            through(5 * minute)
        )),
        &["window_start", "cc_num"],
    );
    let rates_want = keyed(
        &batch(format!(
            "SELECT date_bin(INTERVAL '1' HOUR, trans_date_trans_time) AS window_start, category,
                    count(*) AS transactions,
                    sum(CASE WHEN is_anomaly AND is_fraud = 1 THEN 1 ELSE 0 END) AS anomalies_confirmed
             FROM scored
             WHERE date_bin(INTERVAL '1' HOUR, trans_date_trans_time) + INTERVAL '1' HOUR <= to_timestamp_micros({})
             GROUP BY 1, 2",
            through(60 * minute)
        )),
        &["category", "window_start"],
    );

    // Kafka: one record per window and group, keyed by them.
    let read_topic =
        |name: &str, expected: usize, key_columns: &[&str], query: &str, record_key: &[&str]| {
            let raw = common::read_raw(
                &brokers,
                name,
                expected,
                Duration::from_secs(2),
                Duration::from_secs(60),
            );
            // Idempotent keys (ARCHITECTURE.md, "Continuous queries"): a window is one key; the
            // emission in flight when the process was killed may be sent again after the
            // restart, and then it must say the same thing. Windows delivered before the kill
            // are never emitted again (their end is saved once they are acknowledged).
            let mut by_key: HashMap<Vec<u8>, serde_json::Value> = HashMap::new();
            let mut repeats = 0;
            let mut got = BTreeMap::new();
            for message in &raw {
                let value: serde_json::Value =
                    serde_json::from_slice(&message.payload).expect("JSON record");
                let key = message.key.clone().expect("keyed");
                if let Some(previous) = by_key.insert(key.clone(), value.clone()) {
                    repeats += 1;
                    let object = value.as_object().expect("object");
                    for (field, v) in object {
                        assert!(
                            same_number(&json_text(v), &json_text(&previous[field])),
                            "{name} {}: emitted twice, differently ({field}: {v} then {})",
                            String::from_utf8_lossy(&key),
                            previous[field]
                        );
                    }
                }
                let fields: BTreeMap<String, String> = value
                    .as_object()
                    .expect("object")
                    .iter()
                    .map(|(k, v)| (k.clone(), json_text(v)))
                    .collect();
                let k = key_columns
                    .iter()
                    .map(|c| fields[*c].clone())
                    .collect::<Vec<_>>()
                    .join("/");
                let want_key = record_key
                    .iter()
                    .map(|c| fields[*c].clone())
                    .collect::<Vec<_>>()
                    .join("/");
                assert_eq!(
                    String::from_utf8_lossy(&key),
                    format!("{query}/{want_key}"),
                    "records are keyed by query, window and group"
                );
                got.insert(k, fields);
            }
            eprintln!(
                "{name}: {} records, {} windows, {repeats} re-sent after the kill",
                raw.len(),
                got.len()
            );
            got
        };
    let merchants_got = read_topic(
        &merchants_topic,
        merchants_want.len(),
        &["window_start", "merchant"],
        "anomalies_per_merchant",
        &["window_start", "merchant"],
    );
    assert_same(
        "anomalies_per_merchant",
        &merchants_got,
        &merchants_want,
        &["anomalies", "amount"],
    );
    let velocity_got = read_topic(
        &velocity_topic,
        velocity_want.len(),
        &["window_start", "cc_num"],
        "card_velocity",
        &["rule", "cc_num", "window_start"],
    );
    assert_same(
        "card_velocity",
        &velocity_got,
        &velocity_want,
        &["anomalies", "amount"],
    );
    for fields in velocity_got.values() {
        assert_eq!(fields["rule"], "card_velocity");
        assert!(fields["explanation"].starts_with("card had "), "{fields:?}");
    }

    // Redis: a hash per category and hour.
    let client = redis::Client::open(url.as_str()).expect("client");
    let mut connection = client.get_connection().expect("connection");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{redis_prefix}*"))
        .query(&mut connection)
        .expect("keys");
    let mut rates_got = BTreeMap::new();
    for key in keys {
        let fields: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query(&mut connection)
            .expect("hash");
        let suffix = key
            .strip_prefix(&redis_prefix)
            .expect("prefix")
            .replacen(':', "/", 1);
        assert_eq!(
            suffix,
            format!("{}/{}", fields["category"], fields["window_start"])
        );
        rates_got.insert(suffix, fields);
    }
    assert_same(
        "fraud_rate_by_category",
        &rates_got,
        &rates_want,
        &["transactions", "anomalies_confirmed"],
    );

    // Batch parity: the same query text over the archive (`rescore --query`) gives the
    // windows the stream emitted (and, past the final watermark, the ones still open).
    let mut script = String::new();
    for entry in std::fs::read_dir(&queries).expect("queries") {
        script.push_str(&std::fs::read_to_string(entry.expect("entry").path()).expect("read"));
        script.push('\n');
    }
    let script_file = dir.join("all.sql");
    std::fs::write(&script_file, script).expect("script");
    let batch_dir = dir.join("batch");
    risksense(&[
        "rescore",
        "--query",
        script_file.to_str().expect("path"),
        "--input",
        archive.to_str().expect("path"),
        "--out",
        batch_dir.to_str().expect("path"),
    ]);
    let closed = |name: &str, key: &[&str], slide_us: i64| {
        let rows = common::read_parquet(&[batch_dir.join(format!("{name}.parquet"))]);
        let cutoff = risksense_common::time::event_time_text(through(slide_us));
        keyed(&rows, key)
            .into_iter()
            .filter(|(_, fields)| fields["window_end"] <= cutoff)
            .collect::<BTreeMap<_, _>>()
    };
    assert_same(
        "anomalies_per_merchant, rescore --query",
        &merchants_got,
        &closed(
            "anomalies_per_merchant",
            &["window_start", "merchant"],
            minute,
        ),
        &["anomalies", "amount", "top_score"],
    );
    assert_same(
        "card_velocity, rescore --query",
        &velocity_got,
        &closed("card_velocity", &["window_start", "cc_num"], 5 * minute),
        &["anomalies", "amount", "explanation"],
    );
    assert_same(
        "fraud_rate_by_category, rescore --query",
        &rates_got,
        &closed(
            "fraud_rate_by_category",
            &["category", "window_start"],
            60 * minute,
        ),
        &[
            "transactions",
            "fraud_rate",
            "anomaly_rate",
            "anomalies_confirmed",
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
}
