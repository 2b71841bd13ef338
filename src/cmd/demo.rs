//! `risksense demo`: the whole system in one command, on an embedded default.
//!
//! Without `--kafka` it starts librdkafka's in-process mock cluster (a Kafka-protocol broker
//! inside this process); without `--redis` results go to the in-process store. Either way it
//! says so. Then it runs the real paths: a producer replays generated transactions at a
//! realistic rate, the streaming engine consumes, scores and writes them, and the API serves
//! the dashboard, lookups and SQL. Ctrl-C stops it cleanly.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use risksense_connectors::kafka::{
    EmbeddedBroker, KafkaSettings, LabelReplayer, Pace, ReplayProducer,
};
use risksense_engine::stream::{LiveWindow, RunOptions, StreamConfig, StreamMetrics, run_stream};
use risksense_store::{Retention, Store};
use risksense_synth::{Generator, SynthConfig};

use super::serve::{ApiInputs, HttpArgs, spawn_api};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Use a real Kafka at these bootstrap servers instead of the in-process broker.
    #[arg(long, alias = "brokers")]
    pub kafka: Option<String>,
    /// Use a real Redis instead of the in-process store.
    #[arg(long)]
    pub redis: Option<String>,
    /// Redis key prefix (several demos can share one Redis).
    #[arg(long, default_value = "rs")]
    pub prefix: String,
    /// Address of the dashboard and API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: String,
    /// Transactions per second to replay.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Customers (cards) in the generated traffic.
    #[arg(long, default_value_t = 500)]
    pub customers: u32,
    /// Random seed of the generated traffic.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Transactions topic.
    #[arg(long, default_value = "transactions")]
    pub topic: String,
    /// Parquet archive folder [default: a folder under the system's temp dir].
    #[arg(long)]
    pub archive: Option<PathBuf>,
    /// Folder of standing queries (`*.sql`) [default: sql/queries, the shipped examples,
    /// when it exists; "" for none].
    #[arg(long)]
    pub queries: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<f64>,
    #[command(flatten)]
    pub api: HttpArgs,
    #[command(flatten)]
    pub model: super::model::ModelArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = super::runtime()?;
    let model = args.model.load()?;
    let alerts_topic = format!("{}.alerts", args.topic);
    let dead_letter_topic = format!("{}.dlq", args.topic);
    let labels_topic = format!("{}.labels", args.topic);

    let _embedded; // keeps the in-process broker alive for the whole demo
    let brokers = match &args.kafka {
        Some(brokers) => {
            println!("Kafka: {brokers}");
            runtime
                .block_on(risksense_connectors::kafka::ensure_topic(
                    &KafkaSettings::new(brokers.clone()),
                    &args.topic,
                    4,
                ))
                .with_context(|| format!("creating topic {}", args.topic))?;
            brokers.clone()
        }
        None => {
            let broker = EmbeddedBroker::start(&[
                (args.topic.as_str(), 4),
                (alerts_topic.as_str(), 4),
                (dead_letter_topic.as_str(), 4),
                (labels_topic.as_str(), 4),
            ])
            .context("starting the in-process Kafka broker")?;
            let servers = broker.bootstrap_servers();
            println!(
                "Kafka: none given (--kafka), so an in-process Kafka-protocol broker (librdkafka's mock cluster) at {servers}"
            );
            _embedded = broker;
            servers
        }
    };
    let retention = Retention {
        prefix: args.prefix.clone(),
        ..Retention::default()
    };
    let store = match &args.redis {
        Some(url) => runtime
            .block_on(Store::redis(url, retention.clone()))
            .with_context(|| format!("connecting to Redis at {url}"))?,
        None => Store::memory(retention),
    };
    println!("Results: {}", store.describe());
    let archive = args
        .archive
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("risksense-demo-archive"));
    println!("Archive: {}", archive.display());

    let stop = Arc::new(AtomicBool::new(false));
    super::run::stop_on_signal(&runtime, stop.clone());
    let metrics = Arc::new(StreamMetrics::default());
    let live = Arc::new(LiveWindow::new(Duration::from_secs(600), 2_000_000));

    // Standing queries, shared by the engine (which loads --queries) and the API.
    let queries = risksense_continuous::Registry::pending(
        std::collections::BTreeMap::new(),
        Some(store.clone()),
        &args.prefix,
    );

    let challenger = args.model.load_challenger()?;
    let supervised = args.model.load_supervised()?;
    let models = args.model.control(
        args.model.load()?,
        args.model.load_challenger()?,
        args.model.load_supervised()?,
    )?;
    models.attach_stream();
    super::model::reload_on_hangup(&runtime, models.clone());
    super::model::follow_group(&runtime, models.clone(), store.clone());

    // The API first, so the dashboard is up before traffic starts.
    let inputs = ApiInputs {
        config: args.api.config(Some(archive.clone())),
        store: store.clone(),
        // Sessions of its own, as in `run`: a query never holds one the stream waits for.
        models: models.clone(),
        live: Some(live.clone()),
        stream: Some(metrics.clone()),
        queries: Some(queries.clone()),
    };
    let (address, api) = spawn_api(&runtime, &args.http, inputs, stop.clone())?;

    // The engine, a consumer-group member like `risksense run`.
    let config = StreamConfig {
        brokers: brokers.clone(),
        topic: args.topic.clone(),
        group: format!("risksense-demo-{}", std::process::id()),
        alerts_topic,
        dead_letter_topic,
        labels_topic: labels_topic.clone(),
        archive: archive.clone(),
        model: model.dir.clone(),
        start_from: "earliest".to_string(),
        queries: args.queries.clone().unwrap_or_else(default_queries),
        ..StreamConfig::default()
    };
    if !config.queries.as_os_str().is_empty() {
        println!("Standing queries: {}", config.queries.display());
    }

    let labels = super::run::spawn_labels(&runtime, &config, &store, &metrics, &stop)?;
    let engine = {
        let (model, store, stop, metrics, live, queries, models) = (
            model.clone(),
            store.clone(),
            stop.clone(),
            metrics.clone(),
            live.clone(),
            queries.clone(),
            models.clone(),
        );
        let handle = runtime.handle().clone();
        let create_topics = args.kafka.is_some();
        std::thread::Builder::new()
            .name("engine".to_string())
            .spawn(move || {
                run_stream(
                    config,
                    model,
                    store,
                    &handle,
                    stop,
                    metrics,
                    RunOptions {
                        create_topics,
                        stop_when_idle: None,
                        live: Some(live),
                        queries: Some(queries),
                        models: Some(models),
                        challenger,
                        supervised,
                    },
                )
            })?
    };

    // The traffic: generated transactions replayed at --rate, until stopped.
    let producer = {
        let settings = KafkaSettings::new(brokers);
        let topic = args.topic.clone();
        let stop = stop.clone();
        let (customers, seed, rate) = (args.customers, args.seed, args.rate.max(1));
        let labels_topic = labels_topic.clone();
        let label_delay = Duration::from_secs(5);
        std::thread::Builder::new()
            .name("producer".to_string())
            .spawn(move || -> anyhow::Result<u64> {
                let config = SynthConfig::new(customers, "2019-01-01", "2039-12-31", seed)?;
                let mut producer = ReplayProducer::new(&settings, &topic, Pace::PerSecond(rate))?;
                // The generated is_fraud column comes back as labels a few seconds later
                // (chargebacks): the dashboard's live precision and recall per model.
                let mut labels = LabelReplayer::new(&settings, &labels_topic, label_delay)?;
                for batch in Generator::new(config) {
                    let batch = batch?;
                    // Small slices keep the stop request responsive at any rate.
                    for start in (0..batch.num_rows()).step_by(256) {
                        if stop.load(Ordering::Relaxed) {
                            labels.finish(true, Duration::from_secs(10))?;
                            return Ok(producer.finish(Duration::from_secs(10))?.messages);
                        }
                        let length = 256.min(batch.num_rows() - start);
                        let slice = batch.slice(start, length);
                        producer.send_batch(&slice)?;
                        labels.schedule(&slice)?;
                    }
                }
                Ok(producer.finish(Duration::from_secs(10))?.messages)
            })?
    };

    println!(
        "\nDashboard: http://{address}/   (API: /v1/anomalies, /v1/sql, /metrics, /openapi.json)"
    );
    println!(
        "Replaying generated transactions at {} tx/s; Ctrl-C stops.\n",
        args.rate
    );
    let started = Instant::now();
    let mut last_report = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        if engine.is_finished() || producer.is_finished() {
            stop.store(true, Ordering::Relaxed);
            break;
        }
        if args
            .duration
            .is_some_and(|d| started.elapsed().as_secs_f64() >= d)
        {
            stop.store(true, Ordering::Relaxed);
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            println!(
                "[{:>5.0} s] consumed {}, scored {}, anomalies {}, dead letters {}",
                started.elapsed().as_secs_f64(),
                super::thousands(StreamMetrics::get(&metrics.messages)),
                super::thousands(StreamMetrics::get(&metrics.rows_scored)),
                super::thousands(StreamMetrics::get(&metrics.anomalies)),
                super::thousands(StreamMetrics::get(&metrics.dead_letters)),
            );
        }
    }
    let produced = producer
        .join()
        .map_err(|_| anyhow::anyhow!("the producer thread panicked"))?
        .context("producing")?;
    let summary = engine
        .join()
        .map_err(|_| anyhow::anyhow!("the engine thread panicked"))?
        .context("running the stream")?;
    if let Some(labels) = labels {
        labels
            .join()
            .map_err(|_| anyhow::anyhow!("the labels thread panicked"))?
            .context("reading labels")?;
    }
    runtime.block_on(api)?;
    println!(
        "stopped: produced {}, scored {}, {} anomalies, {} dead letters",
        super::thousands(produced),
        super::thousands(summary.rows_scored),
        super::thousands(summary.anomalies),
        super::thousands(summary.dead_letters)
    );
    Ok(())
}

/// The shipped example queries: ./sql/queries, else the source tree's; none if neither.
fn default_queries() -> PathBuf {
    let local = PathBuf::from("sql/queries");
    if local.is_dir() {
        return local;
    }
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sql/queries");
    if source.is_dir() {
        source
    } else {
        PathBuf::new()
    }
}
