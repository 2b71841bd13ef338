//! `risksense bench scale-out`: one Redis against a Redis Cluster, one `risksense run`
//! against several in one consumer group, side by side in one run.
//!
//! One topic is filled once; each drain reads all of it with a consumer group and a Redis
//! prefix of its own, so every configuration sees the same messages. Drains alternate
//! (configurations in turn, `--rounds` times). Each reports throughput and what every part
//! spent per transaction — engine (all instances), Redis (all servers), broker — which is
//! what carries to a bigger machine; and where Redis's time went, by command.

use std::collections::BTreeMap;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use risksense_connectors::kafka::{KafkaSettings, Pace, ensure_topic};

use crate::machine;
use crate::redis_servers::{CommandStat, RedisServers};
use crate::runtime;
use crate::stream::{
    EngineOptions, StreamOptions, broker_cpu_secs, finish_engine, produce, start_engine, unique,
};

#[derive(Debug, Clone)]
pub struct ScaleOutOptions {
    /// Data, broker, the single Redis (`stream.redis`), engine settings.
    pub stream: StreamOptions,
    /// The Redis Cluster (`redis+cluster://…`); None measures the single Redis only.
    pub cluster: Option<String>,
    /// Engine instance counts to measure (each in one consumer group).
    pub instances: Vec<usize>,
    /// Drains of each configuration.
    pub rounds: usize,
}

/// One drain's figures.
struct Drain {
    messages: f64,
    tx_per_sec: f64,
    engine_us: f64,
    redis_us: f64,
    broker_us: f64,
    rewrites: u64,
    /// Per command: Redis µs per transaction.
    commands: BTreeMap<String, CommandStat>,
}

pub fn scale_out(args: ScaleOutOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.instances.is_empty() && args.rounds > 0,
        "nothing to measure"
    );
    let runtime = runtime()?;
    let stream = &args.stream;
    let settings = KafkaSettings::new(&stream.brokers);
    std::fs::create_dir_all(&stream.scratch)?;
    let (generator, _) = stream.synth.generator()?;
    let batches: Vec<RecordBatch> = generator.collect::<Result<_, _>>()?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let topic = unique("scale-out");
    runtime.block_on(ensure_topic(&settings, &topic, stream.partitions))?;
    let rate = produce(&settings, &topic, &batches, Pace::Unlimited, usize::MAX)?;
    eprintln!(
        "bench scale-out: {rows} rows ({} customers) in {topic} ({} partitions) at {rate:.0} msg/s",
        stream.synth.customers, stream.partitions
    );

    let mut stores = vec![("one Redis", stream.redis.clone())];
    if let Some(cluster) = &args.cluster {
        stores.push(("Redis Cluster", cluster.clone()));
    }
    let mut configurations = Vec::new();
    for (name, url) in &stores {
        let servers = RedisServers::connect(url)?.len();
        for &instances in &args.instances {
            configurations.push((*name, url.clone(), servers, instances));
        }
    }
    let mut drains: Vec<Vec<Drain>> = configurations.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        for (i, (name, url, _, instances)) in configurations.iter().enumerate() {
            eprintln!("  round {}: {name}, {instances} instance(s)", round + 1);
            let drain = drain(stream, &topic, rows as f64, url, *instances)?;
            eprintln!(
                "    {:.0} tx/s; engine {:.1} / Redis {:.1} / broker {:.1} µs per tx",
                drain.tx_per_sec, drain.engine_us, drain.redis_us, drain.broker_us
            );
            drains[i].push(drain);
        }
    }
    crate::stream::delete_engine_topics(&runtime, &settings, &[&topic], &[])?;

    println!("Machine: {}", machine());
    println!(
        "Data: {rows} generated rows ({} customers, {} .. {}), one topic of {} partitions drained by each configuration in turn ({} round(s)); engine batches of {} rows / {} ms; broker, Redis and engines on this machine. Medians over the rounds.\n",
        stream.synth.customers,
        stream.synth.start,
        stream.synth.end,
        stream.partitions,
        args.rounds,
        stream.batch_rows,
        stream.batch_wait_ms
    );
    println!(
        "| result store | Redis servers | engine instances | drain throughput | engine µs/tx | Redis µs/tx | broker µs/tx | AOF rewrites |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for ((name, _, servers, instances), runs) in configurations.iter().zip(&drains) {
        let median = |f: fn(&Drain) -> f64| median(runs.iter().map(f).collect());
        println!(
            "| {name} | {servers} | {instances} | {:.0} tx/s | {:.1} | {:.1} | {:.1} | {} |",
            median(|d| d.tx_per_sec),
            median(|d| d.engine_us),
            median(|d| d.redis_us),
            median(|d| d.broker_us),
            runs.iter().map(|d| d.rewrites).sum::<u64>()
        );
    }

    // Where Redis's time went (the last round's one-instance drains): per command, and the
    // rest (reading and parsing requests, writing replies and the AOF, the event loop).
    for ((name, _, _, instances), runs) in configurations.iter().zip(&drains) {
        let Some(last) = runs.last() else { continue };
        if *instances != args.instances[0] {
            continue;
        }
        println!(
            "\nRedis time per transaction by command, {name} ({instances} instance(s), last round):\n"
        );
        println!("| command | calls per 1,000 tx | µs per call | µs per tx |");
        println!("|---|---:|---:|---:|");
        let mut commands: Vec<(&String, &CommandStat)> = last.commands.iter().collect();
        commands.sort_by_key(|(_, stat)| std::cmp::Reverse(stat.usec));
        let mut in_commands = 0.0;
        for (command, stat) in commands {
            let per_tx = stat.usec as f64 / last.messages;
            in_commands += per_tx;
            if per_tx < 0.005 {
                continue;
            }
            println!(
                "| {command} | {:.1} | {:.2} | {per_tx:.2} |",
                stat.calls as f64 * 1000.0 / last.messages,
                stat.usec as f64 / stat.calls.max(1) as f64
            );
        }
        println!(
            "| outside commands (I/O, AOF, event loop) | | | {:.2} |",
            last.redis_us - in_commands
        );
        println!("| all | | | {:.2} |", last.redis_us);
    }
    Ok(())
}

/// Drains `topic` with `instances` engines in one new group, writing to `url` under a new
/// prefix, which is dropped afterwards.
fn drain(
    stream: &StreamOptions,
    topic: &str,
    rows: f64,
    url: &str,
    instances: usize,
) -> anyhow::Result<Drain> {
    let args = StreamOptions {
        redis: url.to_string(),
        ..stream.clone()
    };
    let mut servers = RedisServers::connect(url)?;
    let run = unique("drain");
    let prefix = format!("{run}-{}", std::process::id());
    servers.prepare_measurement()?;
    // CONFIG RESETSTAT zeroes the rewrite count too: read it after.
    servers.reset_stats()?;
    let rewrites = servers.rewrites()?;
    let (redis_before, broker_before) = (servers.cpu_secs()?, broker_cpu_secs());
    let started = Instant::now();
    let mut children = Vec::new();
    for instance in 0..instances {
        let options = EngineOptions {
            group: Some(format!("{prefix}-group")),
            prefix: Some(prefix.clone()),
            instance: Some(format!("{run}-{instance}")),
            ..EngineOptions::default()
        };
        let dir = stream.scratch.join(format!("{prefix}-{instance}"));
        children.push(start_engine(&args, topic, &dir, &options)?);
    }
    let mut runs = Vec::new();
    for child in children {
        runs.push(finish_engine(child)?);
    }
    let wall = started.elapsed().as_secs_f64();
    let redis_cpu = servers.cpu_secs()? - redis_before;
    let broker_cpu = broker_cpu_secs() - broker_before;
    let commands = servers.command_stats()?;
    let rewrites = servers.rewrites()? - rewrites;
    for instance in 0..instances {
        let _ = std::fs::remove_dir_all(stream.scratch.join(format!("{prefix}-{instance}")));
    }
    servers.drop_prefix(&prefix)?;

    // A rebalance may hand a partition over mid-batch, and its new owner reads again from
    // the last checkpoint: those repeats are part of the cost, charged to the topic's rows.
    let messages: f64 = runs.iter().map(|r| r.f("messages")).sum();
    anyhow::ensure!(
        messages >= rows,
        "the drain read {messages} messages of {rows}"
    );
    if messages > rows {
        eprintln!(
            "    ({} messages read again after a rebalance)",
            messages - rows
        );
    }
    // Each engine's clock runs from its first message to its last batch in every sink; the
    // instances ran side by side, so the longest is the drain's.
    let elapsed = runs
        .iter()
        .map(|r| r.f("elapsed_secs"))
        .fold(0.0f64, f64::max)
        .min(wall);
    let per_tx = |cpu_secs: f64| cpu_secs * 1e6 / rows;
    Ok(Drain {
        messages: rows,
        tx_per_sec: rows / elapsed.max(1e-9),
        engine_us: per_tx(runs.iter().map(|r| r.f("drain_cpu_secs")).sum()),
        redis_us: per_tx(redis_cpu),
        broker_us: per_tx(broker_cpu),
        rewrites,
        commands,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
