//! `risksense bench stream`: the streaming engine as deployed, a `risksense run` process
//! against the real broker and Redis on this machine.
//!
//! 1. Throughput: the topic is filled first, then a fresh consumer group drains it; the
//!    engine's own clock runs from its first message to its last batch in every sink.
//! 2. Latency: the engine runs first, then the producer replays at a steady rate; each
//!    row's latency is from its Kafka timestamp (set when produced) to its Redis write.
//! 3. The same rows rescored as a batch job in this process, for the stream/batch ratio.
//!
//! Peak RSS is the engine process's VmHWM. The summary's stage times say where the time
//! goes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow::record_batch::RecordBatch;
use risksense_connectors::kafka::{
    KafkaSettings, Pace, ReplayProducer, delete_topics, ensure_topic,
};
use risksense_formats::source::TransactionFileWriter;
use risksense_query::scoring::{self, SessionOptions};

use crate::redis_servers::RedisServers;
use crate::{ModelChoice, Synth, machine, runtime};

#[derive(Debug, Clone)]
pub struct StreamOptions {
    pub synth: Synth,
    /// The model the rescoring comparison uses (the engine child uses its default).
    pub model: ModelChoice,
    /// The `risksense` executable run as the engine (None: this one). Another build of it
    /// makes a side-by-side comparison with the same harness.
    pub engine: Option<PathBuf>,
    /// Kafka bootstrap servers (a real broker).
    pub brokers: String,
    /// Redis (a real one).
    pub redis: String,
    /// Partitions of the benchmark topics.
    pub partitions: i32,
    /// Steady producer rate for the latency run, messages/s.
    pub rate: u64,
    /// Rows replayed in the latency run (at --rate).
    pub latency_rows: usize,
    /// Micro-batch row bound of the engine.
    pub batch_rows: usize,
    /// Micro-batch wait bound of the engine, ms.
    pub batch_wait_ms: u64,
    /// Checkpoint interval of the engine, ms.
    pub checkpoint_ms: u64,
    /// Scratch folder (archives, configs).
    pub scratch: PathBuf,
}

pub(crate) struct EngineRun {
    pub(crate) summary: serde_json::Value,
}

impl EngineRun {
    pub(crate) fn f(&self, key: &str) -> f64 {
        self.summary[key].as_f64().unwrap_or(f64::NAN)
    }
}

/// What differs between the benchmarks' engine runs.
#[derive(Debug, Default)]
pub(crate) struct EngineOptions {
    /// Consumer group (default: `<topic>-bench`).
    pub group: Option<String>,
    /// Address of the engine's API (default: none).
    pub http: Option<String>,
    /// Redis key prefix (default: the topic).
    pub prefix: Option<String>,
    /// Instance name, unique within the group (default: the engine's).
    pub instance: Option<String>,
    /// More `risksense run` flags.
    pub extra_args: Vec<String>,
}

/// Starts `risksense run` on `topic` with a config of its own; returns the child once its
/// partitions are assigned.
pub(crate) fn start_engine(
    args: &StreamOptions,
    topic: &str,
    dir: &Path,
    options: &EngineOptions,
) -> anyhow::Result<std::process::Child> {
    std::fs::create_dir_all(dir)?;
    let config = dir.join("run.toml");
    let group = options
        .group
        .clone()
        .unwrap_or_else(|| format!("{topic}-bench"));
    let http = options.http.clone().unwrap_or_default();
    let prefix = options.prefix.as_deref().unwrap_or(topic);
    let instance = options
        .instance
        .as_ref()
        .map_or(String::new(), |name| format!("instance = \"{name}\"\n"));
    std::fs::write(
        &config,
        format!(
            "brokers = \"{}\"\nredis = \"{}\"\ntopic = \"{topic}\"\ngroup = \"{group}\"\nhttp = \"{http}\"\n\
             alerts_topic = \"{topic}.alerts\"\ndead_letter_topic = \"{topic}.dlq\"\n\
             archive = \"{}\"\nbatch_rows = {}\nbatch_wait_ms = {}\ncheckpoint_interval_ms = {}\n\
             {instance}[retention]\nprefix = \"{prefix}\"\nttl_secs = 3600\n",
            args.brokers,
            args.redis,
            dir.join("archive").display(),
            args.batch_rows,
            args.batch_wait_ms,
            args.checkpoint_ms
        ),
    )?;
    let engine = match &args.engine {
        Some(path) => path.clone(),
        None => std::env::current_exe()?,
    };
    let mut child = Command::new(engine)
        .args(["run", "--config"])
        .arg(&config)
        .args(["--stop-when-idle", "3", "--summary-json"])
        .args(&options.extra_args)
        .env("RUST_LOG", "info,rdkafka=warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting `risksense run`")?;
    // Wait for "partitions assigned" on its log, then pass the log through.
    let stderr = child.stderr.take().context("engine stderr")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut ready = Some(ready_tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("partitions assigned")
                && let Some(tx) = ready.take()
            {
                let _ = tx.send(());
            }
            if line.contains("ERROR") || line.contains("WARN") {
                eprintln!("  engine: {line}");
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(60))
        .context("the engine did not get its partitions within 60 s")?;
    Ok(child)
}

pub(crate) fn finish_engine(child: std::process::Child) -> anyhow::Result<EngineRun> {
    let output = child.wait_with_output()?;
    anyhow::ensure!(output.status.success(), "`risksense run` failed");
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().last().context("no summary from the engine")?;
    Ok(EngineRun {
        summary: serde_json::from_str(line).context("engine summary")?,
    })
}

/// CPU seconds the Kafka broker on this machine has used (user + system), from /proc: the
/// JVM whose command line runs `kafka.Kafka`. NaN when none runs here (a remote broker).
pub(crate) fn broker_cpu_secs() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return f64::NAN;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let is_broker = cmdline
            .split(|b| *b == 0)
            .any(|argument| argument == b"kafka.Kafka");
        if !is_broker {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // After the command name (in parentheses, which may hold spaces): field 3 onwards;
        // utime and stime are fields 14 and 15, in clock ticks.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<f64>().ok());
        if let (Some(user), Some(system)) = (ticks(14), ticks(15)) {
            // SAFETY: sysconf only reads a configuration value.
            let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
            return (user + system) / per_sec.max(1.0);
        }
    }
    f64::NAN
}

/// Deletes the benchmark's topics `bases` and what an engine created beside each: its
/// alerts and dead-letter topics, and `more` suffixes (standing queries' outputs). A
/// benchmark's topics hold a million messages each and are not needed again.
pub(crate) fn delete_engine_topics(
    runtime: &tokio::runtime::Runtime,
    settings: &KafkaSettings,
    bases: &[&str],
    more: &[&str],
) -> anyhow::Result<()> {
    let mut topics = Vec::new();
    for base in bases {
        for suffix in ["", ".alerts", ".dlq"].iter().chain(more) {
            topics.push(format!("{base}{suffix}"));
        }
    }
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    runtime.block_on(delete_topics(settings, &topics))?;
    Ok(())
}

pub(crate) fn unique(name: &str) -> String {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("bench-{name}-{stamp}")
}

pub(crate) fn produce(
    settings: &KafkaSettings,
    topic: &str,
    batches: &[RecordBatch],
    pace: Pace,
    limit: usize,
) -> anyhow::Result<f64> {
    let mut producer = ReplayProducer::new(settings, topic, pace)?;
    let mut sent = 0;
    for batch in batches {
        if sent >= limit {
            break;
        }
        let take = batch.num_rows().min(limit - sent);
        producer.send_batch(&batch.slice(0, take))?;
        sent += take;
    }
    let stats = producer.finish(Duration::from_secs(300))?;
    Ok(stats.messages_per_second())
}

pub fn stream(args: StreamOptions) -> anyhow::Result<()> {
    let runtime = runtime()?;
    let settings = KafkaSettings::new(&args.brokers);
    std::fs::create_dir_all(&args.scratch)?;
    let (generator, _) = args.synth.generator()?;
    let batches: Vec<RecordBatch> = generator.collect::<Result<_, _>>()?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    eprintln!(
        "bench stream: {rows} generated rows, {} customers",
        args.synth.customers
    );

    // 1. Throughput: fill, then drain.
    let topic = unique("throughput");
    let throughput_topic = topic.clone();
    runtime.block_on(ensure_topic(&settings, &topic, args.partitions))?;
    let produce_rate = produce(&settings, &topic, &batches, Pace::Unlimited, usize::MAX)?;
    eprintln!("  filled {topic} at {produce_rate:.0} msg/s; draining with risksense run");
    let mut redis = RedisServers::connect(&args.redis)?;
    let rewrites_before = redis.prepare_measurement()?;
    let (redis_cpu, broker_cpu) = (redis.cpu_secs()?, broker_cpu_secs());
    let engine = start_engine(
        &args,
        &topic,
        &args.scratch.join(&topic),
        &EngineOptions::default(),
    )?;
    let drained = finish_engine(engine)?;
    // Per transaction: what carries to other machines (totals on these cores do not).
    let per_tx = |cpu_secs: f64| cpu_secs * 1e6 / drained.f("messages").max(1.0);
    // The engine from its first message (start-up, which does not grow with the messages,
    // left out), and its whole process beside it.
    let engine_us = per_tx(drained.f("drain_cpu_secs"));
    let engine_process_us = per_tx(drained.f("cpu_secs"));
    let engine_system_us = per_tx(drained.f("drain_system_cpu_secs"));
    let redis_us = per_tx(redis.cpu_secs()? - redis_cpu);
    let broker_us = per_tx(broker_cpu_secs() - broker_cpu);
    let drain_rewrites = redis.rewrites()? - rewrites_before;

    // 2. Latency at a steady rate.
    let topic = unique("latency");
    runtime.block_on(ensure_topic(&settings, &topic, args.partitions))?;
    let rewrites_before = redis.prepare_measurement()?;
    let engine = start_engine(
        &args,
        &topic,
        &args.scratch.join(&topic),
        &EngineOptions::default(),
    )?;
    let started = Instant::now();
    let sent_rate = produce(
        &settings,
        &topic,
        &batches,
        Pace::PerSecond(args.rate),
        args.latency_rows,
    )?;
    eprintln!(
        "  replayed {} rows at {sent_rate:.0} msg/s in {:.1} s",
        args.latency_rows.min(rows),
        started.elapsed().as_secs_f64()
    );
    let steady = finish_engine(engine)?;
    let steady_rewrites = redis.rewrites()? - rewrites_before;
    // The benchmark's topics (a million messages each, plus alerts) are not needed again.
    delete_engine_topics(&runtime, &settings, &[&throughput_topic, &topic], &[])?;

    // 3. The same rows as a batch job (rescore from Parquet, in this process).
    let parquet = args.scratch.join("bench-stream-history.parquet");
    let mut writer = TransactionFileWriter::create(&parquet)?;
    for batch in &batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    let out = args.scratch.join(unique("rescored"));
    let model = args.model.load()?;
    let batch_secs = runtime.block_on(async {
        let ctx = scoring::new_session(Some(model.clone()), SessionOptions::rescoring())?;
        scoring::register_files(&ctx, scoring::TRANSACTIONS, std::slice::from_ref(&parquet))
            .await?;
        scoring::install_views(&ctx, Some(&model)).await?;
        let started = Instant::now();
        scoring::write_scored(&ctx, &out).await?;
        Ok::<f64, anyhow::Error>(started.elapsed().as_secs_f64())
    })?;
    let batch_rate = rows as f64 / batch_secs;

    let busy = drained.f("decode_secs")
        + drained.f("score_secs")
        + drained.f("sink_secs")
        + drained.f("checkpoint_secs");
    let share = |key: &str| 100.0 * drained.f(key) / busy.max(1e-9);
    println!("Machine: {}", machine());
    println!(
        "Data: {rows} generated rows ({} customers, {} .. {}), topics of {} partitions; engine batches of {} rows / {} ms; broker, Redis and engine on this machine.\n",
        args.synth.customers,
        args.synth.start,
        args.synth.end,
        args.partitions,
        args.batch_rows,
        args.batch_wait_ms
    );
    println!("| measurement | value | target |");
    println!("|---|---:|---:|");
    println!(
        "| sustained throughput, Kafka -> Redis + alerts + archive ({} msgs drained) | {:.0} tx/s | >= 300,000 |",
        drained.f("messages"),
        drained.f("messages_per_sec")
    );
    println!(
        "| same rows rescored as a batch job (Parquet -> Parquet) | {batch_rate:.0} rows/s | |"
    );
    println!(
        "| stream / batch ratio | {:.2} | |",
        drained.f("messages_per_sec") / batch_rate
    );
    println!(
        "| produce -> visible in Redis at {} msg/s: p50 / p99 | {} / {} ms | p99 <= 100 ms |",
        args.rate,
        drained_or(&steady, "visible_p50_ms"),
        drained_or(&steady, "visible_p99_ms")
    );
    println!(
        "| of which produce -> polled by the engine (producer, broker, fetch, queue): p50 / p99 | {} / {} ms | |",
        drained_or(&steady, "arrival_p50_ms"),
        drained_or(&steady, "arrival_p99_ms")
    );
    println!(
        "| micro-batch close -> all sinks at {} msg/s: p99 | {} ms | |",
        args.rate,
        drained_or(&steady, "batch_p99_ms")
    );
    println!(
        "| Redis AOF rewrites during the drain / the steady run (each forks Redis; the child takes a core for about a second) | {drain_rewrites} / {steady_rewrites} | |"
    );
    println!(
        "| CPU per transaction in the drain: engine from its first message (of which system; whole process) / Redis / broker | {engine_us:.1} ({engine_system_us:.1}; {engine_process_us:.1}) / {redis_us:.1} / {broker_us:.1} µs | |"
    );
    println!(
        "| engine peak RSS (drain / steady) | {:.0} / {:.0} MiB | <= 300 MiB |",
        drained.f("peak_rss_mib"),
        steady.f("peak_rss_mib")
    );
    println!(
        "\nWhere the drain's time went: decode {:.0} %, state + SQL + model {:.0} %, sinks {:.0} %, checkpoints {:.0} % ({:.1} s busy in {:.1} s).",
        share("decode_secs"),
        share("score_secs"),
        share("sink_secs"),
        share("checkpoint_secs"),
        busy,
        drained.f("elapsed_secs")
    );
    Ok(())
}

fn drained_or(run: &EngineRun, key: &str) -> String {
    run.summary[key]
        .as_u64()
        .map_or_else(|| "?".to_string(), |v| v.to_string())
}
