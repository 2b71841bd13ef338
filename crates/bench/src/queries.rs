//! `risksense bench queries`: what heavy ad-hoc SQL costs the stream and the API.
//!
//! One topic is filled once; `risksense run --http` drains it again and again, each time
//! with a consumer group of its own, alternating: with no queries, then while four clients
//! keep heavy queries running on `/v1/sql` (each resubmitted as soon as its deadline
//! cancels it). Before each drain Redis's AOF is compacted and the disk synced, as in
//! `bench stream`. In every drain a prober times `GET /healthz` every 10 ms. The table puts
//! the two kinds side by side: the median throughput of their drains, and the health-check
//! latency over all their probes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow::record_batch::RecordBatch;
use risksense_connectors::kafka::{KafkaSettings, Pace, ensure_topic};

use crate::stream::{EngineOptions, StreamOptions, finish_engine, produce, start_engine, unique};

#[derive(Debug, Clone)]
pub struct QueriesOptions {
    pub stream: StreamOptions,
    /// Heavy queries kept running at once in the second drain.
    pub heavy: usize,
    /// Port of the engine's API.
    pub port: u16,
    /// Deadline of each heavy query, seconds (the engine's --sql-timeout).
    pub sql_timeout: f64,
    /// Drains of each kind (alternated: quiet, heavy, quiet, heavy, ...).
    pub rounds: usize,
}

/// Heavy on purpose: cross joins the optimizer cannot fold, and an unbounded recursion.
const HEAVY: [&str; 4] = [
    "SELECT sum(a.value * b.value) AS s FROM generate_series(1, 1000000) a CROSS JOIN generate_series(1, 100000000) b",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
    "SELECT count(*) FROM scored a, scored b WHERE a.amt * b.amt > -1",
    "SELECT max(a.value + b.value) FROM generate_series(1, 1000000) a, generate_series(1, 100000000) b WHERE a.value <> b.value",
];

struct Probe {
    latencies_us: Vec<u64>,
    failures: u64,
    /// Refused connections: the engine closed its listener when the drain ended (it then
    /// lets running queries finish); not failures of a serving API.
    refused: u64,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Times `GET /healthz` every 10 ms until `stop`.
fn probe_health(base: String, stop: Arc<AtomicBool>) -> Probe {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut probe = Probe {
        latencies_us: Vec::new(),
        failures: 0,
        refused: 0,
    };
    while !stop.load(Relaxed) {
        let sent = Instant::now();
        match agent.get(&format!("{base}/healthz")).call() {
            Ok(_) => probe.latencies_us.push(sent.elapsed().as_micros() as u64),
            Err(ureq::Error::ConnectionFailed) => probe.refused += 1,
            Err(ureq::Error::Io(error))
                if error.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                probe.refused += 1
            }
            Err(_) => probe.failures += 1,
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    probe.latencies_us.sort_unstable();
    probe
}

/// Keeps `sql` running on `/v1/sql` until `stop`; counts the answers by status.
fn keep_querying(
    base: String,
    sql: &'static str,
    stop: Arc<AtomicBool>,
    cancelled: Arc<AtomicU64>,
) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let body = serde_json::json!({ "sql": sql }).to_string();
    while !stop.load(Relaxed) {
        match agent
            .post(&format!("{base}/v1/sql"))
            .header("content-type", "application/json")
            .send(body.as_str())
        {
            Ok(response) if response.status().as_u16() == 504 => {
                cancelled.fetch_add(1, Relaxed);
            }
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

struct Drain {
    tx_per_sec: f64,
    engine_cpu_us_per_tx: f64,
    probe: Probe,
    cancelled: u64,
}

impl Drain {
    /// Median throughput and CPU of several drains; their probes pooled.
    fn combine(mut runs: Vec<Drain>) -> Drain {
        let median = |values: &mut Vec<f64>| {
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let mut rates: Vec<f64> = runs.iter().map(|r| r.tx_per_sec).collect();
        let mut cpus: Vec<f64> = runs.iter().map(|r| r.engine_cpu_us_per_tx).collect();
        let mut probe = Probe {
            latencies_us: Vec::new(),
            failures: 0,
            refused: 0,
        };
        let mut cancelled = 0;
        for run in runs.drain(..) {
            probe.latencies_us.extend(run.probe.latencies_us);
            probe.failures += run.probe.failures;
            probe.refused += run.probe.refused;
            cancelled += run.cancelled;
        }
        probe.latencies_us.sort_unstable();
        Drain {
            tx_per_sec: median(&mut rates),
            engine_cpu_us_per_tx: median(&mut cpus),
            probe,
            cancelled,
        }
    }
}

fn drain(args: &QueriesOptions, topic: &str, group: &str, heavy: usize) -> anyhow::Result<Drain> {
    let http = format!("127.0.0.1:{}", args.port);
    let base = format!("http://{http}");
    let options = EngineOptions {
        group: Some(group.to_string()),
        http: Some(http),
        extra_args: vec!["--sql-timeout".to_string(), args.sql_timeout.to_string()],
        ..EngineOptions::default()
    };
    let engine = start_engine(
        &args.stream,
        topic,
        &args.stream.scratch.join(group),
        &options,
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let cancelled = Arc::new(AtomicU64::new(0));
    let prober = {
        let (base, stop) = (base.clone(), stop.clone());
        std::thread::spawn(move || probe_health(base, stop))
    };
    let clients: Vec<_> = (0..heavy)
        .map(|i| {
            let (base, stop, cancelled) = (base.clone(), stop.clone(), cancelled.clone());
            std::thread::spawn(move || keep_querying(base, HEAVY[i % HEAVY.len()], stop, cancelled))
        })
        .collect();
    let run = finish_engine(engine);
    stop.store(true, Relaxed);
    let probe = prober
        .join()
        .map_err(|_| anyhow::anyhow!("the health prober panicked"))?;
    for client in clients {
        let _ = client.join();
    }
    let run = run?;
    let messages = run.f("messages").max(1.0);
    Ok(Drain {
        tx_per_sec: run.f("messages_per_sec"),
        engine_cpu_us_per_tx: run.f("drain_cpu_secs") * 1e6 / messages,
        probe,
        cancelled: cancelled.load(Relaxed),
    })
}

pub fn queries(args: QueriesOptions) -> anyhow::Result<()> {
    let runtime = crate::runtime()?;
    let settings = KafkaSettings::new(&args.stream.brokers);
    std::fs::create_dir_all(&args.stream.scratch)?;
    let (generator, _) = args.stream.synth.generator()?;
    let batches: Vec<RecordBatch> = generator.collect::<Result<_, _>>()?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let topic = unique("queries");
    runtime.block_on(ensure_topic(&settings, &topic, args.stream.partitions))?;
    let rate = produce(&settings, &topic, &batches, Pace::Unlimited, usize::MAX)?;
    eprintln!("bench queries: filled {topic} with {rows} rows at {rate:.0} msg/s");

    let mut redis = crate::redis_servers::RedisServers::connect(&args.stream.redis)?;
    let mut quiet = Vec::new();
    let mut busy = Vec::new();
    for round in 0..args.rounds.max(1) {
        for (heavy, runs) in [(0, &mut quiet), (args.heavy, &mut busy)] {
            redis.prepare_measurement()?;
            let group = format!("{topic}-{round}-{heavy}");
            let run =
                drain(&args, &topic, &group, heavy).with_context(|| format!("drain {group}"))?;
            eprintln!(
                "  round {round}, {heavy} heavy queries: {:.0} tx/s",
                run.tx_per_sec
            );
            runs.push(run);
        }
    }
    crate::stream::delete_engine_topics(&runtime, &settings, &[&topic], &[])?;
    let quiet = Drain::combine(quiet);
    let busy = Drain::combine(busy);

    println!("Machine: {}", crate::machine());
    println!(
        "Data: {rows} generated rows ({} customers), one topic of {} partitions drained {} times of each kind, alternating, by `risksense run --http` (a consumer group each; throughput: the median drain); broker, Redis and engine on this machine; heavy queries cancelled at {} s and resubmitted.\n",
        args.stream.synth.customers,
        args.stream.partitions,
        args.rounds.max(1),
        args.sql_timeout
    );
    println!(
        "| drain | no queries | {} heavy queries | ratio |",
        args.heavy
    );
    println!("|---|---:|---:|---:|");
    println!(
        "| stream throughput, tx/s | {:.0} | {:.0} | {:.2} |",
        quiet.tx_per_sec,
        busy.tx_per_sec,
        busy.tx_per_sec / quiet.tx_per_sec
    );
    println!(
        "| engine CPU per transaction (whole process, queries included), µs | {:.1} | {:.1} | |",
        quiet.engine_cpu_us_per_tx, busy.engine_cpu_us_per_tx
    );
    for (name, p) in [("p50", 0.50), ("p99", 0.99), ("max", 1.0)] {
        let a = percentile(&quiet.probe.latencies_us, p);
        let b = percentile(&busy.probe.latencies_us, p);
        println!("| `/healthz` {name}, ms | {a:.2} | {b:.2} | |");
    }
    println!(
        "| health checks answered (failed) | {} ({}) | {} ({}) | |",
        quiet.probe.latencies_us.len(),
        quiet.probe.failures,
        busy.probe.latencies_us.len(),
        busy.probe.failures
    );
    println!(
        "| health checks refused after the drain (listener closed at shutdown) | {} | {} | |",
        quiet.probe.refused, busy.probe.refused
    );
    println!(
        "| heavy queries cancelled at their deadline | {} | {} | |",
        quiet.cancelled, busy.cancelled
    );
    Ok(())
}
