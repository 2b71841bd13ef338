//! Standing queries over real scored rows: windowed results equal a batch computation
//! over the same rows, whether the stream comes in small or large micro-batches, and a
//! checkpoint + restore in the middle of open windows emits every window exactly once.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::SessionContext;
use risksense_common::schema::transaction_schema;
use risksense_connectors::sink::{Sink, SinkBatch};
use risksense_continuous::output::Connections;
use risksense_continuous::plan::Catalog;
use risksense_continuous::{ContinuousSink, Origin, Registry};
use risksense_query::scorer::StreamScorer;
use risksense_query::scoring::SessionOptions;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The fixture's 3,000 rows scored, in event-time order, each row's `row_id` placing it on
/// one of three partitions by card (as a keyed topic does).
async fn scored_rows() -> (RecordBatch, Catalog) {
    let path = root().join("data/fixtures/sparkov-2019h1-head3000.csv");
    let batches: Vec<RecordBatch> =
        risksense_formats::source::TransactionFile::open(&path, 8192, false)
            .expect("fixture")
            .collect::<Result<_, _>>()
            .expect("rows");
    let all = arrow::compute::concat_batches(&transaction_schema(), &batches).expect("concat");
    let model = Arc::new(
        risksense_udfs::Model::load(
            &root().join("models/default"),
            risksense_udfs::SessionOptions::default(),
        )
        .expect("model"),
    );
    let options = SessionOptions {
        target_partitions: 1,
        batch_size: 8192,
        memory_limit: None,
    };
    let scorer = StreamScorer::with_query(model, options, "SELECT * FROM scored ORDER BY row_id")
        .await
        .expect("plan");
    let scored = scorer.score(vec![all]).await.expect("scores");
    let scored = arrow::compute::concat_batches(&scorer.output_schema(), &scored).expect("concat");
    let cards = scored
        .column_by_name("cc_num")
        .expect("cc_num")
        .as_primitive::<Int64Type>();
    let ids: Int64Array = (0..scored.num_rows())
        .map(|i| Some(i as i64 * 4096 + cards.value(i).rem_euclid(3)))
        .collect();
    let index = scored.schema().index_of("row_id").expect("row_id");
    let mut columns = scored.columns().to_vec();
    columns[index] = Arc::new(ids);
    let scored = RecordBatch::try_new(scored.schema(), columns).expect("batch");
    let catalog = Catalog {
        scored: scored.schema(),
        transactions: transaction_schema(),
        lookups: BTreeMap::new(),
    };
    (scored, catalog)
}

fn registry(catalog: &Catalog) -> Arc<Registry> {
    Registry::new(
        catalog.clone(),
        Connections {
            producer: None,
            store: None,
            kafka: None,
        },
        "test",
    )
}

/// Rows as sorted text lines (`col=value|…`), the columns given.
fn lines(batches: &[RecordBatch], columns: &[&str]) -> Vec<String> {
    let options = FormatOptions::default().with_null("null");
    let mut out = Vec::new();
    for batch in batches {
        let formatters: Vec<ArrayFormatter> = columns
            .iter()
            .map(|c| {
                let column = batch
                    .column_by_name(c)
                    .unwrap_or_else(|| panic!("no column {c}"));
                ArrayFormatter::try_new(column.as_ref(), &options).expect("formatter")
            })
            .collect();
        for row in 0..batch.num_rows() {
            let fields: Vec<String> = columns
                .iter()
                .zip(&formatters)
                .map(|(c, f)| format!("{c}={}", f.value(row)))
                .collect();
            out.push(fields.join("|"));
        }
    }
    out.sort();
    out
}

/// Feeds `rows` in slices of `step` rows through the queries; returns each query's
/// emitted rows.
async fn run(
    sink: &ContinuousSink,
    registry: &Registry,
    rows: &RecordBatch,
    range: std::ops::Range<usize>,
    step: usize,
    receivers: &mut HashMap<String, tokio::sync::broadcast::Receiver<Arc<RecordBatch>>>,
    out: &mut HashMap<String, Vec<RecordBatch>>,
) {
    let mut start = range.start;
    let mut seq = 0;
    while start < range.end {
        let n = step.min(range.end - start);
        let batch = SinkBatch::new(seq, vec![rows.slice(start, n)], Vec::new());
        sink.write(&batch).await.expect("write");
        seq += 1;
        start += n;
        for (name, receiver) in receivers.iter_mut() {
            while let Ok(batch) = receiver.try_recv() {
                out.entry(name.clone()).or_default().push((*batch).clone());
            }
        }
    }
    for query in registry.running() {
        assert_eq!(
            query.status(),
            risksense_continuous::query::Status::Running,
            "{}",
            query.name()
        );
    }
}

const QUERIES: &str = "
CREATE VIEW per_category WITH (allowed_lateness = '0') AS
SELECT tumble(trans_date_trans_time, INTERVAL '1' HOUR) AS window_start, category,
       count(*) AS n, sum(amt) AS spend, max(score) AS top_score, count(DISTINCT cc_num) AS cards
FROM scored GROUP BY 1, 2;

CREATE VIEW busy_cards WITH (allowed_lateness = '0') AS
SELECT hop(trans_date_trans_time, INTERVAL '10' MINUTE, INTERVAL '1' HOUR) AS window_start,
       cc_num, count(*) AS n, avg(amt) AS mean_amt
FROM scored WHERE amt > 5 GROUP BY 1, 2 HAVING count(*) >= 2;

CREATE VIEW big AS SELECT trans_num, cc_num, amt FROM scored WHERE amt > 500;
";

/// What a batch job computes over all rows: hourly windows ending by `hour_through`,
/// ten-minute-hop windows ending by `hop_through` (µs), every big row.
async fn expected(
    rows: &RecordBatch,
    hour_through: i64,
    hop_through: i64,
) -> HashMap<&'static str, Vec<String>> {
    let ctx = SessionContext::new();
    ctx.register_batch("scored", rows.clone())
        .expect("register");
    let collect = |sql: String| {
        let ctx = ctx.clone();
        async move {
            ctx.sql(&sql)
                .await
                .expect("sql")
                .collect()
                .await
                .expect("rows")
        }
    };
    let per_category = collect(format!(
        "SELECT date_bin(INTERVAL '1' HOUR, trans_date_trans_time) AS window_start, category,
                count(*) AS n, sum(amt) AS spend, max(score) AS top_score, count(DISTINCT cc_num) AS cards
         FROM scored
         WHERE date_bin(INTERVAL '1' HOUR, trans_date_trans_time) + INTERVAL '1' HOUR <= to_timestamp_micros({hour_through})
         GROUP BY 1, 2"
    ))
    .await;
    // Each hop window written out: a row is in the six windows starting 0–50 minutes
    // before its ten-minute bin.
    let busy = collect(format!(
        "WITH starts AS (
           SELECT date_bin(INTERVAL '10' MINUTE, trans_date_trans_time) - back AS window_start,
                  cc_num, amt
           FROM scored CROSS JOIN (VALUES (INTERVAL '0' MINUTE), (INTERVAL '10' MINUTE),
               (INTERVAL '20' MINUTE), (INTERVAL '30' MINUTE), (INTERVAL '40' MINUTE),
               (INTERVAL '50' MINUTE)) AS ks(back)
           WHERE amt > 5)
         SELECT window_start, cc_num, count(*) AS n, avg(amt) AS mean_amt FROM starts
         WHERE window_start + INTERVAL '1' HOUR <= to_timestamp_micros({hop_through})
         GROUP BY 1, 2 HAVING count(*) >= 2"
    ))
    .await;
    let big =
        collect("SELECT trans_num, cc_num, amt FROM scored WHERE amt > 500".to_string()).await;
    HashMap::from([
        (
            "per_category",
            lines(&per_category, columns("per_category")),
        ),
        ("busy_cards", lines(&busy, columns("busy_cards"))),
        ("big", lines(&big, columns("big"))),
    ])
}

fn columns(name: &str) -> &'static [&'static str] {
    match name {
        "per_category" => &[
            "window_start",
            "category",
            "n",
            "spend",
            "top_score",
            "cards",
        ],
        "busy_cards" => &["window_start", "cc_num", "n", "mean_amt"],
        _ => &["trans_num", "cc_num", "amt"],
    }
}

fn max_time(rows: &RecordBatch) -> i64 {
    let times = rows
        .column_by_name("trans_date_trans_time")
        .expect("time")
        .as_primitive::<TimestampMicrosecondType>();
    arrow::compute::max(times).expect("rows")
}

/// Rounds the floating-point fields of result lines (sums in another order differ in the
/// last bits).
fn rounded(lines: &[String]) -> Vec<String> {
    let mut out: Vec<String> = lines
        .iter()
        .map(|line| {
            line.split('|')
                .map(|field| match field.split_once('=') {
                    Some((k, v)) if v.contains('.') && v.parse::<f64>().is_ok() => {
                        format!("{k}={:.6}", v.parse::<f64>().unwrap_or_default())
                    }
                    _ => field.to_string(),
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    out.sort();
    out
}

const HOUR: i64 = 3_600_000_000;
const TEN_MINUTES: i64 = 600_000_000;

fn subscribe_all(
    registry: &Registry,
) -> HashMap<String, tokio::sync::broadcast::Receiver<Arc<RecordBatch>>> {
    ["per_category", "busy_cards", "big"]
        .iter()
        .map(|n| (n.to_string(), registry.get(n).expect("query").subscribe()))
        .collect()
}

fn check(out: &HashMap<String, Vec<RecordBatch>>, want: &HashMap<&str, Vec<String>>, what: &str) {
    for name in ["per_category", "busy_cards", "big"] {
        let got = lines(
            out.get(name).map(Vec::as_slice).unwrap_or(&[]),
            columns(name),
        );
        assert_eq!(rounded(&got), rounded(&want[name]), "{name}, {what}");
    }
}

#[tokio::test]
async fn windowed_results_equal_a_batch_computation_in_any_batch_size() {
    let (rows, catalog) = scored_rows().await;
    let last = max_time(&rows);
    let want = expected(
        &rows,
        last.div_euclid(HOUR) * HOUR,
        last.div_euclid(TEN_MINUTES) * TEN_MINUTES,
    )
    .await;
    assert!(
        want["busy_cards"].len() > 10,
        "{}",
        want["busy_cards"].len()
    );
    assert!(want["per_category"].len() > 10);
    assert!(!want["big"].is_empty());
    for step in [1, 97, 3000] {
        let registry = registry(&catalog);
        registry
            .create(QUERIES, Origin::File)
            .await
            .expect("queries");
        let sink = ContinuousSink::new(registry.clone());
        let mut receivers = subscribe_all(&registry);
        let mut out = HashMap::new();
        run(
            &sink,
            &registry,
            &rows,
            0..rows.num_rows(),
            step,
            &mut receivers,
            &mut out,
        )
        .await;
        check(&out, &want, &format!("micro-batches of {step}"));
        let late: u64 = registry.list(false).iter().map(|q| q.late_rows).sum();
        assert_eq!(late, 0, "rows in event-time order are never late");
    }
}

#[tokio::test]
async fn a_restore_from_a_checkpoint_in_open_windows_emits_every_window_once() {
    let (rows, catalog) = scored_rows().await;
    let last = max_time(&rows);
    let want = expected(
        &rows,
        last.div_euclid(HOUR) * HOUR,
        last.div_euclid(TEN_MINUTES) * TEN_MINUTES,
    )
    .await;
    // First run: up to the checkpoint at row 1,500, then on to row 2,200 and "crash".
    let first = registry(&catalog);
    first.create(QUERIES, Origin::File).await.expect("queries");
    let sink = ContinuousSink::new(first.clone());
    let mut receivers = subscribe_all(&first);
    let mut before = HashMap::new();
    run(
        &sink,
        &first,
        &rows,
        0..1500,
        50,
        &mut receivers,
        &mut before,
    )
    .await;
    let snapshots: Vec<(i32, Vec<u8>)> = (0..3)
        .map(|p| (p, sink.snapshot(p).expect("snapshot").expect("state")))
        .collect();
    let mut lost = HashMap::new();
    run(
        &sink,
        &first,
        &rows,
        1500..2200,
        50,
        &mut receivers,
        &mut lost,
    )
    .await;
    // The restart: state from the checkpoint, rows again from the checkpoint's offset.
    let second = registry(&catalog);
    second.create(QUERIES, Origin::File).await.expect("queries");
    let sink = ContinuousSink::new(second.clone());
    for (p, bytes) in &snapshots {
        sink.restore_state(*p, Some(bytes)).expect("restore");
    }
    assert!(
        second.get("busy_cards").expect("q").state_rows().await > 0,
        "open windows came back"
    );
    let mut receivers = subscribe_all(&second);
    let mut after = HashMap::new();
    run(
        &sink,
        &second,
        &rows,
        1500..rows.num_rows(),
        50,
        &mut receivers,
        &mut after,
    )
    .await;
    // What was emitted before the checkpoint plus everything after the restart: each
    // window once, equal to the batch job (what the crashed run emitted past the
    // checkpoint is emitted again, identically — for a reader keyed by window).
    let mut all = before.clone();
    for (name, batches) in after {
        all.entry(name).or_default().extend(batches);
    }
    check(&all, &want, "checkpoint at row 1,500, restart");
    let replayed = rounded(&lines(
        lost.get("per_category").map(Vec::as_slice).unwrap_or(&[]),
        columns("per_category"),
    ));
    let again = rounded(&lines(
        all.get("per_category").map(Vec::as_slice).unwrap_or(&[]),
        columns("per_category"),
    ));
    for line in replayed {
        assert!(
            again.contains(&line),
            "a window emitted before the crash differs after it: {line}"
        );
    }
}

#[tokio::test]
async fn the_shipped_example_queries_plan_and_refusals_say_what_is_supported() {
    let (_, catalog) = scored_rows().await;
    let dir = root().join("sql/queries");
    let mut planned = 0;
    for entry in std::fs::read_dir(&dir).expect("sql/queries") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        for definition in risksense_continuous::ddl::parse(&text).expect("parses") {
            let plan = risksense_continuous::plan::StandingPlan::new(&definition.select, &catalog)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                matches!(plan.kind, risksense_continuous::plan::PlanKind::Windowed(_)),
                "{} is windowed",
                definition.name
            );
            assert_eq!(plan.key_columns[0], "window_start");
            assert_eq!(
                plan.key_columns.len(),
                2,
                "{}: {:?}",
                definition.name,
                plan.key_columns
            );
            planned += 1;
        }
    }
    assert_eq!(planned, 3);
    let registry = registry(&catalog);
    for (sql, says) in [
        (
            "CREATE VIEW a AS SELECT cc_num, count(*) FROM scored GROUP BY cc_num",
            "tumble(",
        ),
        (
            "CREATE VIEW a AS SELECT * FROM scored ORDER BY amt",
            "ORDER BY is not supported",
        ),
        (
            "CREATE VIEW a AS SELECT * FROM scored LIMIT 5",
            "LIMIT is not supported",
        ),
        (
            "CREATE VIEW a AS SELECT s.cc_num FROM scored s JOIN transactions t ON s.trans_num = t.trans_num",
            "stream–stream join",
        ),
        (
            "CREATE VIEW a AS SELECT cc_num, sum(amt) OVER (PARTITION BY cc_num) FROM scored",
            "window function",
        ),
        (
            "CREATE VIEW a AS SELECT count(*) FROM scored GROUP BY tumble(trans_date_trans_time, INTERVAL '1' MINUTE)",
            "must select its window",
        ),
        ("CREATE VIEW a AS SELECT nope FROM scored", "nope"),
        (
            "CREATE VIEW a AS SELECT 1",
            "neither scored nor transactions",
        ),
    ] {
        let error = registry
            .create(sql, Origin::Api)
            .await
            .err()
            .unwrap_or_else(|| panic!("{sql} was accepted"));
        assert!(error.is_user_error(), "{sql}: {error:?}");
        assert!(error.to_string().contains(says), "{sql}: {error}");
    }
    assert!(
        registry.list(true).is_empty(),
        "nothing refused was started"
    );
}
