//! `risksense run`: the streaming engine as a consumer-group member.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use risksense_continuous::Registry;
use risksense_engine::EngineError;
use risksense_engine::labels::{LabelSummary, run_labels};
use risksense_engine::stream::{RunOptions, StreamConfig, StreamMetrics, run_stream};
use risksense_store::Store;

use super::model::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// TOML config file (see `risksense.example.toml`); flags and RISKSENSE_* variables
    /// override it.
    #[arg(long, short, env = "RISKSENSE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers.
    #[arg(long, alias = "brokers", env = "RISKSENSE_KAFKA_BROKERS")]
    pub kafka: Option<String>,
    /// Redis URL (e.g. redis://127.0.0.1:6379/); without it, results stay in process.
    #[arg(long, env = "RISKSENSE_REDIS")]
    pub redis: Option<String>,
    /// Transactions topic.
    #[arg(long, env = "RISKSENSE_TOPIC")]
    pub topic: Option<String>,
    /// Consumer group (instances in one group share the partitions).
    #[arg(long, env = "RISKSENSE_GROUP")]
    pub group: Option<String>,
    /// Alerts topic ("" for none).
    #[arg(long)]
    pub alerts_topic: Option<String>,
    /// Dead-letter topic.
    #[arg(long)]
    pub dead_letter_topic: Option<String>,
    /// Labels topic ("" for none): `{"trans_num", "is_fraud"}` learnt later, joined with
    /// the scores for live precision and recall per model.
    #[arg(long)]
    pub labels_topic: Option<String>,
    /// Parquet archive folder ("" for none).
    #[arg(long, env = "RISKSENSE_ARCHIVE")]
    pub archive: Option<PathBuf>,
    /// Micro-batch size bound, in rows.
    #[arg(long)]
    pub batch_rows: Option<usize>,
    /// Micro-batch time bound after its first message, in ms.
    #[arg(long)]
    pub batch_wait_ms: Option<u64>,
    /// Checkpoint interval (state, archive, offsets), in ms.
    #[arg(long)]
    pub checkpoint_ms: Option<u64>,
    /// Messages larger than this many bytes go to the dead-letter topic unparsed.
    #[arg(long, env = "RISKSENSE_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Where a new group starts: earliest or latest.
    #[arg(long)]
    pub start_from: Option<String>,
    /// Instance name (archive file names, client id).
    #[arg(long, env = "RISKSENSE_INSTANCE")]
    pub instance: Option<String>,
    /// Extra librdkafka property for every client (repeatable).
    #[arg(short = 'X', value_parser = super::parse_key_value)]
    pub kafka_property: Vec<(String, String)>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Serve the HTTP API and dashboard on this address (e.g. 127.0.0.1:8080).
    #[arg(long, env = "RISKSENSE_HTTP")]
    pub http: Option<String>,
    #[command(flatten)]
    pub api: super::serve::HttpArgs,
    /// Folder of `*.sql` files declaring standing queries (see sql/queries/).
    #[arg(long, env = "RISKSENSE_QUERIES")]
    pub queries: Option<PathBuf>,
    /// Stop after this many seconds without a message (benchmarks, catch-up runs).
    #[arg(long)]
    pub stop_when_idle: Option<f64>,
    /// Print the run summary as JSON on stdout when stopping.
    #[arg(long)]
    pub summary_json: bool,
}

impl Args {
    /// The config file (or defaults) with flags and variables applied on top.
    pub fn config(&self) -> anyhow::Result<StreamConfig> {
        let mut config = match &self.config {
            Some(path) => StreamConfig::from_file(path)?,
            None => StreamConfig::default(),
        };
        let set = |field: &mut String, value: &Option<String>| {
            if let Some(value) = value {
                field.clone_from(value);
            }
        };
        set(&mut config.brokers, &self.kafka);
        set(&mut config.redis, &self.redis);
        set(&mut config.topic, &self.topic);
        set(&mut config.group, &self.group);
        set(&mut config.alerts_topic, &self.alerts_topic);
        set(&mut config.dead_letter_topic, &self.dead_letter_topic);
        set(&mut config.labels_topic, &self.labels_topic);
        set(&mut config.start_from, &self.start_from);
        set(&mut config.instance, &self.instance);
        set(&mut config.http, &self.http);
        if let Some(archive) = &self.archive {
            config.archive.clone_from(archive);
        }
        if let Some(queries) = &self.queries {
            config.queries.clone_from(queries);
        }
        if let Some(rows) = self.batch_rows {
            config.batch_rows = rows;
        }
        if let Some(ms) = self.batch_wait_ms {
            config.batch_wait_ms = ms;
        }
        if let Some(ms) = self.checkpoint_ms {
            config.checkpoint_interval_ms = ms;
        }
        if let Some(bytes) = self.max_message_bytes {
            config.max_message_bytes = bytes;
        }
        // A config file that does not name a model gets the same default as the flags
        // (./models/default, else the source tree's), not a path relative to wherever the
        // process was started.
        if self.model.model.is_some() || config.model == StreamConfig::default().model {
            config.model = self.model.dir();
        }
        config.model_threads = self.model.model_threads;
        config
            .kafka_properties
            .extend(self.kafka_property.iter().cloned());
        config.validate()?;
        Ok(config)
    }
}

/// The standing queries of a stream in this process, shared by the engine (which attaches
/// its tables and loads `config.queries` when it starts) and the API; with the lookup
/// tables of the config read into memory.
pub fn standing_queries(
    runtime: &tokio::runtime::Runtime,
    config: &StreamConfig,
    store: &Store,
) -> anyhow::Result<Arc<Registry>> {
    let mut lookups = std::collections::BTreeMap::new();
    for lookup in &config.lookups {
        let table = runtime
            .block_on(Registry::load_lookup(&lookup.path))
            .with_context(|| format!("lookup table {}", lookup.name))?;
        lookups.insert(lookup.name.clone(), table);
    }
    Ok(Registry::pending(
        lookups,
        Some(store.clone()),
        &config.retention.prefix,
    ))
}

/// Starts the label consumer (see `risksense_engine::labels`) in its own thread, unless
/// the config has no labels topic.
pub fn spawn_labels(
    runtime: &tokio::runtime::Runtime,
    config: &StreamConfig,
    store: &Store,
    metrics: &Arc<StreamMetrics>,
    shutdown: &Arc<AtomicBool>,
) -> anyhow::Result<Option<std::thread::JoinHandle<Result<LabelSummary, EngineError>>>> {
    if config.labels_topic.is_empty() {
        return Ok(None);
    }
    let (config, store, metrics, shutdown) = (
        config.clone(),
        store.clone(),
        metrics.clone(),
        shutdown.clone(),
    );
    let handle = runtime.handle().clone();
    Ok(Some(
        std::thread::Builder::new()
            .name("labels".to_string())
            .spawn(move || {
                let result = run_labels(&config, store, &handle, metrics, shutdown, None);
                if let Err(error) = &result {
                    // Said now, not when the stream stops: scoring goes on without labels.
                    tracing::error!(%error, "the labels consumer stopped");
                }
                result
            })?,
    ))
}

/// Sets `flag` on SIGTERM or Ctrl-C: the engine finishes its micro-batch and checkpoints.
pub fn stop_on_signal(runtime: &tokio::runtime::Runtime, flag: Arc<AtomicBool>) {
    runtime.spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate => {}
        }
        tracing::info!("stop requested: finishing the micro-batch in flight");
        flag.store(true, Ordering::Relaxed);
    });
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = args.config()?;
    if config.brokers.is_empty() {
        anyhow::bail!(
            "no Kafka brokers: give --kafka host:port (or `brokers` in the config file); \
             `risksense demo` runs the whole pipeline in process with no Kafka"
        );
    }
    let runtime = super::runtime()?;
    let model_args = ModelArgs {
        model: Some(config.model.clone()),
        ..args.model.clone()
    };
    let model = model_args.load()?;
    let challenger = model_args.load_challenger()?;
    let supervised = model_args.load_supervised()?;
    let store = runtime.block_on(async {
        if config.redis.is_empty() {
            Ok(Store::memory(config.retention.clone()))
        } else {
            Store::redis(&config.redis, config.retention.clone())
                .await
                .with_context(|| format!("connecting to Redis at {}", config.redis))
        }
    })?;
    if config.redis.is_empty() {
        tracing::warn!("no --redis: results go to {}", store.describe());
    }
    tracing::info!(
        kafka = %config.brokers,
        results = %store.describe(),
        archive = %config.archive.display(),
        "starting the stream"
    );
    let shutdown = Arc::new(AtomicBool::new(false));
    stop_on_signal(&runtime, shutdown.clone());
    let metrics = Arc::new(StreamMetrics::default());
    let live = Arc::new(risksense_query::LiveWindow::new(
        Duration::from_secs(600),
        2_000_000,
    ));
    let queries = standing_queries(&runtime, &config, &store)?;
    // The API scores with sessions of its own: an ad-hoc query calling the model on the
    // low-priority query pool must never hold a session the stream waits for. Without an
    // API the control only takes changes (SIGHUP), and shares the stream's models.
    let models = if config.http.is_empty() {
        model_args.control(model.clone(), challenger.clone(), supervised.clone())?
    } else {
        model_args.control(
            model_args.load()?,
            model_args.load_challenger()?,
            model_args.load_supervised()?,
        )?
    };
    // Changes wait for the stream from now on, also while it starts (see ModelControl).
    models.attach_stream();
    super::model::reload_on_hangup(&runtime, models.clone());
    super::model::follow_group(&runtime, models.clone(), store.clone());
    let api = if config.http.is_empty() {
        None
    } else {
        let archive = (!config.archive.as_os_str().is_empty()).then(|| config.archive.clone());
        let inputs = super::serve::ApiInputs {
            config: args.api.config(archive),
            store: store.clone(),
            models: models.clone(),
            live: Some(live.clone()),
            stream: Some(metrics.clone()),
            queries: Some(queries.clone()),
        };
        let (address, handle) =
            super::serve::spawn_api(&runtime, &config.http, inputs, shutdown.clone())?;
        tracing::info!("API and dashboard on http://{address}/");
        Some(handle)
    };
    let labels = spawn_labels(&runtime, &config, &store, &metrics, &shutdown)?;
    let options = RunOptions {
        create_topics: true,
        stop_when_idle: args.stop_when_idle.map(Duration::from_secs_f64),
        live: api.is_some().then_some(live),
        queries: Some(queries),
        models: Some(models),
        challenger,
        supervised,
    };
    let summary = run_stream(
        config,
        model,
        store,
        runtime.handle(),
        shutdown.clone(),
        metrics,
        options,
    )
    .context("running the stream")?;
    shutdown.store(true, Ordering::Relaxed);
    if let Some(labels) = labels {
        let summary = labels
            .join()
            .map_err(|_| anyhow::anyhow!("the labels thread panicked"))?
            .context("reading labels")?;
        tracing::info!(?summary, "labels stopped");
    }
    if let Some(api) = api {
        shutdown.store(true, Ordering::Relaxed);
        runtime.block_on(api)?;
    }
    if args.summary_json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "scored {} of {} messages in {:.1} s ({:.0} msg/s): {} anomalies, {} dead letters, {} archive files; \
             produce->visible p50 {} ms, p99 {} ms; peak RSS {:.0} MiB",
            super::thousands(summary.rows_scored),
            super::thousands(summary.messages),
            summary.elapsed_secs,
            summary.messages_per_sec,
            super::thousands(summary.anomalies),
            super::thousands(summary.dead_letters),
            summary.archive_files,
            summary.visible_p50_ms,
            summary.visible_p99_ms,
            summary.peak_rss_mib
        );
    }
    Ok(())
}
