//! `risksense bench continuous`: what standing queries cost the stream, and how soon a
//! window's result is out once the watermark passes its end.
//!
//! One topic is filled once; `risksense run` drains it again and again, each time with a
//! consumer group of its own, alternating: with no standing query, then with ten (filters
//! and windowed aggregates mixed, writing to Kafka, Redis or only to subscribers). Each
//! drain reports the engine's CPU per transaction (the whole process, so the queries'
//! output tasks count too); the table puts the medians side by side. Then the engine runs
//! with the ten queries while the producer replays at a steady rate, and the run summary
//! gives each windowed query's emit latency: from the produce time of the earliest message
//! of the micro-batch that moved the watermark past a window's end to that window's result
//! acknowledged by its output.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use arrow::record_batch::RecordBatch;
use risksense_connectors::kafka::{KafkaSettings, Pace, ensure_topic};

use crate::machine;
use crate::stream::{EngineOptions, StreamOptions, finish_engine, produce, start_engine, unique};

#[derive(Debug, Clone)]
pub struct ContinuousOptions {
    pub stream: StreamOptions,
    /// Drains of each kind (alternated: none, ten, none, ten, ...); 0: only the steady run.
    pub rounds: usize,
    /// Space event times as a live stream at `--rate` produces them (an event-time second
    /// per wall-clock second at the steady rate) instead of keeping the generated days.
    /// With few customers each card then makes hundreds of transactions a minute, which
    /// the stream's own per-card history pays for: use many customers with it.
    pub live_event_time: bool,
}

/// The rows with event times spaced as a live stream at `per_sec` transactions per second
/// produces them, from the first row's time on, in the rows' order.
fn live_event_times(batches: &[RecordBatch], per_sec: u64) -> anyhow::Result<Vec<RecordBatch>> {
    use arrow::array::{Int64Array, TimestampMicrosecondArray};
    use risksense_common::schema::idx;
    let Some(first) = batches.first() else {
        return Ok(Vec::new());
    };
    let start = first
        .column(idx::TRANS_DATE_TRANS_TIME)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .context("event time column")?
        .value(0);
    let mut out = Vec::with_capacity(batches.len());
    let mut n: i64 = 0;
    for batch in batches {
        let times: Vec<i64> = (0..batch.num_rows() as i64)
            .map(|i| start + (n + i) * 1_000_000 / per_sec.max(1) as i64)
            .collect();
        n += batch.num_rows() as i64;
        let mut columns = batch.columns().to_vec();
        columns[idx::UNIX_TIME] = std::sync::Arc::new(
            times
                .iter()
                .map(|t| t.div_euclid(1_000_000))
                .collect::<Int64Array>(),
        );
        columns[idx::TRANS_DATE_TRANS_TIME] = std::sync::Arc::new(
            TimestampMicrosecondArray::from(times)
                .with_data_type(batch.column(idx::TRANS_DATE_TRANS_TIME).data_type().clone()),
        );
        out.push(RecordBatch::try_new(batch.schema(), columns)?);
    }
    Ok(out)
}

/// The ten standing queries: three filters and seven windowed aggregates, with Kafka,
/// Redis and subscriber-only outputs; `{t}` is the benchmark topic (outputs of their own).
const QUERIES: &str = "
CREATE VIEW big_amounts AS
SELECT trans_num, cc_num, amt, score FROM scored WHERE amt > 1000;

CREATE VIEW anomalies_explained AS
SELECT trans_num, cc_num, merchant, score, explanation FROM scored WHERE is_anomaly;

CREATE VIEW online_shopping_spikes AS
SELECT cc_num, merchant, amt FROM transactions WHERE category = 'shopping_net' AND amt > 500;

CREATE TABLE anomalies_per_merchant WITH (connector = 'kafka', topic = '{t}.merchants');
INSERT INTO anomalies_per_merchant
SELECT tumble(trans_date_trans_time, INTERVAL '1' MINUTE) AS window_start, merchant,
       count(*) AS anomalies, round(sum(amt), 2) AS amount, round(max(score), 4) AS top_score
FROM scored WHERE is_anomaly GROUP BY 1, 2;

CREATE TABLE card_velocity WITH (connector = 'kafka', topic = '{t}.velocity');
INSERT INTO card_velocity
SELECT hop(trans_date_trans_time, INTERVAL '5' MINUTE, INTERVAL '1' HOUR) AS window_start,
       cc_num, count(*) AS anomalies
FROM scored WHERE is_anomaly GROUP BY 1, 2 HAVING count(*) >= 3;

CREATE TABLE fraud_rate_by_category WITH (connector = 'redis',
  key = '{t}:fraud_rate:{category}:{window_start}', ttl = '3600');
INSERT INTO fraud_rate_by_category
SELECT tumble(trans_date_trans_time, INTERVAL '1' HOUR) AS window_start, category,
       count(*) AS transactions, avg(CAST(is_fraud AS DOUBLE)) AS fraud_rate,
       avg(CASE WHEN is_anomaly THEN 1.0 ELSE 0.0 END) AS anomaly_rate
FROM scored GROUP BY 1, 2;

CREATE TABLE volume_per_second WITH (connector = 'kafka', topic = '{t}.volume');
INSERT INTO volume_per_second
SELECT tumble(trans_date_trans_time, INTERVAL '1' SECOND) AS window_start,
       count(*) AS transactions, sum(amt) AS amount, avg(score) AS mean_score
FROM scored GROUP BY 1;

CREATE VIEW amounts_by_category AS
SELECT tumble(trans_date_trans_time, INTERVAL '10' SECOND) AS window_start, category,
       avg(amt) AS mean_amount, max(amt) AS max_amount, min(amt) AS min_amount
FROM scored GROUP BY 1, 2;

CREATE TABLE card_spend_bursts WITH (connector = 'redis', format = 'stream',
  key = '{t}:card_spend_bursts', max_len = '10000');
INSERT INTO card_spend_bursts
SELECT hop(trans_date_trans_time, INTERVAL '1' HOUR, INTERVAL '1' DAY) AS window_start,
       cc_num, sum(amt) AS spend, count(*) AS transactions
FROM scored GROUP BY 1, 2 HAVING sum(amt) > 2000;

CREATE VIEW merchant_volume AS
SELECT tumble(trans_date_trans_time, INTERVAL '1' HOUR) AS window_start, merchant,
       count(*) AS transactions, sum(amt) AS amount
FROM scored GROUP BY 1, 2;
";

/// Writes the ten queries for `topic` into `dir`.
fn write_queries(dir: &Path, topic: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    // `{t}` only: the Redis key templates keep their `{category}` and `{window_start}`.
    std::fs::write(dir.join("ten.sql"), QUERIES.replace("{t}", topic))?;
    Ok(())
}

struct Drain {
    tx_per_sec: f64,
    engine_us: f64,
    redis_us: f64,
    late_rows: u64,
    windows: u64,
}

fn drain(
    args: &ContinuousOptions,
    topic: &str,
    group: &str,
    queries: Option<&Path>,
    redis: &mut crate::redis_servers::RedisServers,
) -> anyhow::Result<Drain> {
    let mut extra_args = Vec::new();
    if let Some(dir) = queries {
        extra_args.extend(["--queries".to_string(), dir.display().to_string()]);
    }
    let options = EngineOptions {
        group: Some(group.to_string()),
        extra_args,
        ..EngineOptions::default()
    };
    redis.prepare_measurement()?;
    let redis_before = redis.cpu_secs()?;
    let engine = start_engine(
        &args.stream,
        topic,
        &args.stream.scratch.join(group),
        &options,
    )?;
    let run = finish_engine(engine)?;
    let messages = run.f("messages").max(1.0);
    let queries = run.summary["queries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for query in &queries {
        anyhow::ensure!(
            query["failed"].is_null(),
            "a standing query failed: {query}"
        );
    }
    Ok(Drain {
        tx_per_sec: run.f("messages_per_sec"),
        engine_us: run.f("drain_cpu_secs") * 1e6 / messages,
        redis_us: (redis.cpu_secs()? - redis_before) * 1e6 / messages,
        late_rows: queries.iter().filter_map(|q| q["late_rows"].as_u64()).sum(),
        windows: queries
            .iter()
            .filter_map(|q| q["windows_emitted"].as_u64())
            .sum(),
    })
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

pub fn continuous(args: ContinuousOptions) -> anyhow::Result<()> {
    let runtime = crate::runtime()?;
    let settings = KafkaSettings::new(&args.stream.brokers);
    std::fs::create_dir_all(&args.stream.scratch)?;
    let (generator, _) = args.stream.synth.generator()?;
    let batches: Vec<RecordBatch> = generator.collect::<Result<_, _>>()?;
    let batches = if args.live_event_time {
        live_event_times(&batches, args.stream.rate)?
    } else {
        batches
    };
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let topic = unique("continuous");
    runtime.block_on(ensure_topic(&settings, &topic, args.stream.partitions))?;
    let rate = produce(&settings, &topic, &batches, Pace::Unlimited, usize::MAX)?;
    eprintln!("bench continuous: filled {topic} with {rows} rows at {rate:.0} msg/s");
    let queries = args.stream.scratch.join(format!("{topic}-queries"));
    write_queries(&queries, &topic)?;

    // 1. CPU per transaction at the drain, without and with the ten queries.
    let mut redis = crate::redis_servers::RedisServers::connect(&args.stream.redis)?;
    let (mut none, mut ten) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        for (with, runs) in [(false, &mut none), (true, &mut ten)] {
            let group = format!("{topic}-{round}-{}", if with { "ten" } else { "none" });
            let run = drain(
                &args,
                &topic,
                &group,
                with.then_some(queries.as_path()),
                &mut redis,
            )
            .with_context(|| format!("drain {group}"))?;
            eprintln!(
                "  round {round}, {} queries: {:.0} tx/s, engine {:.2} µs/tx",
                if with { 10 } else { 0 },
                run.tx_per_sec,
                run.engine_us
            );
            runs.push(run);
        }
    }

    // 2. Emit latency at a steady rate, with the ten queries.
    let steady_topic = unique("continuous-steady");
    runtime.block_on(ensure_topic(
        &settings,
        &steady_topic,
        args.stream.partitions,
    ))?;
    let steady_queries = args.stream.scratch.join(format!("{steady_topic}-queries"));
    write_queries(&steady_queries, &steady_topic)?;
    redis.prepare_measurement()?;
    let options = EngineOptions {
        extra_args: vec![
            "--queries".to_string(),
            steady_queries.display().to_string(),
        ],
        ..EngineOptions::default()
    };
    let engine = start_engine(
        &args.stream,
        &steady_topic,
        &args.stream.scratch.join(&steady_topic),
        &options,
    )?;
    let started = Instant::now();
    let sent_rate = produce(
        &settings,
        &steady_topic,
        &batches,
        Pace::PerSecond(args.stream.rate),
        args.stream.latency_rows,
    )?;
    eprintln!(
        "  replayed {} rows at {sent_rate:.0} msg/s in {:.1} s",
        args.stream.latency_rows.min(rows),
        started.elapsed().as_secs_f64()
    );
    let steady = finish_engine(engine)?;
    let steady_queries_summary = steady.summary["queries"]
        .as_array()
        .cloned()
        .unwrap_or_default();

    crate::stream::delete_engine_topics(
        &runtime,
        &settings,
        &[&topic, &steady_topic],
        &[".merchants", ".velocity", ".volume"],
    )?;

    println!("Machine: {}", machine());
    println!(
        "Data: {rows} generated rows ({} customers, {} .. {}{}), topics of {} partitions; engine batches of {} rows / {} ms; {} drains of each kind, alternated; broker, Redis and engine on this machine.\n",
        args.stream.synth.customers,
        args.stream.synth.start,
        args.stream.synth.end,
        if args.live_event_time {
            format!(
                ", event times re-spaced as a live stream at {} tx/s produces them",
                args.stream.rate
            )
        } else {
            ", the generated event times: a year in the replay, ~2,900 transactions per day of event time".to_string()
        },
        args.stream.partitions,
        args.stream.batch_rows,
        args.stream.batch_wait_ms,
        args.rounds,
    );
    if args.rounds > 0 {
        print_drains(&none, &ten);
    }
    print_steady(&args, rows, &steady_queries_summary, &steady.summary);
    Ok(())
}

fn print_drains(none: &[Drain], ten: &[Drain]) {
    let cpu_none = median(none.iter().map(|r| r.engine_us));
    let cpu_ten = median(ten.iter().map(|r| r.engine_us));
    println!("| measurement | no standing query | ten standing queries | target |");
    println!("|---|---:|---:|---:|");
    println!(
        "| drain throughput (median) | {:.0} tx/s | {:.0} tx/s | |",
        median(none.iter().map(|r| r.tx_per_sec)),
        median(ten.iter().map(|r| r.tx_per_sec))
    );
    println!(
        "| engine CPU per transaction at the drain (median) | {cpu_none:.2} µs | {cpu_ten:.2} µs ({:+.1} %) | <= +20 % |",
        100.0 * (cpu_ten / cpu_none - 1.0)
    );
    println!(
        "| Redis CPU per transaction at the drain (median) | {:.2} µs | {:.2} µs | |",
        median(none.iter().map(|r| r.redis_us)),
        median(ten.iter().map(|r| r.redis_us))
    );
    println!(
        "| windows emitted / late rows per drain | | {} / {} | |",
        ten.first().map_or(0, |r| r.windows),
        ten.iter().map(|r| r.late_rows).max().unwrap_or(0)
    );
}

fn print_steady(
    args: &ContinuousOptions,
    rows: usize,
    queries: &[serde_json::Value],
    stream: &serde_json::Value,
) {
    println!(
        "\nAt {} msg/s ({} rows replayed), each window's result acknowledged by its output, timed from the produce time of the earliest message of the micro-batch that moved the watermark past the window's end (produce → out), and from the query taking that micro-batch (watermark → out):\n",
        args.stream.rate,
        args.stream.latency_rows.min(rows)
    );
    println!(
        "| query | windows emitted | emits | produce → out p50 / p99 | watermark → out p50 / p99 | target (watermark → out p99) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for query in queries
        .iter()
        .filter(|q| q["emits"].as_u64().unwrap_or(0) > 0)
    {
        println!(
            "| {} | {} | {} | {} / {} ms | {} / {} ms | <= 100 ms |",
            query["name"].as_str().unwrap_or("?"),
            query["windows_emitted"],
            query["emits"],
            query["emit_p50_ms"],
            query["emit_p99_ms"],
            query["close_p50_ms"],
            query["close_p99_ms"]
        );
    }
    println!(
        "\nThe stream itself in that run: produce -> visible in Redis p50 / p99 {} / {} ms.",
        stream["visible_p50_ms"], stream["visible_p99_ms"]
    );
}
