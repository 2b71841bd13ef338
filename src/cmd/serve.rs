//! `risksense serve`: the HTTP API alone, over Redis and the Parquet archive (no stream in
//! this process). Also the API half of `run --http` and `demo`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use risksense_api::{ApiConfig, ApiState};
use risksense_continuous::Registry;
use risksense_engine::stream::{LiveWindow, StreamMetrics};
use risksense_store::{Retention, Store};

use super::model::ModelArgs;

/// HTTP settings shared by `serve`, `run` and `demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct HttpArgs {
    /// Bearer token required by /v1/score, /v1/sql, /v1/queries and /v1/subscribe (none:
    /// open).
    #[arg(long, env = "RISKSENSE_API_TOKEN")]
    pub token: Option<String>,
    /// Wall-clock limit of a /v1/sql query, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub sql_timeout: f64,
    /// Rows a /v1/sql query may return.
    #[arg(long, default_value_t = 10_000)]
    pub sql_max_rows: usize,
    /// Memory a /v1/sql query may hold, MiB.
    #[arg(long, default_value_t = 256)]
    pub sql_memory_mib: usize,
    /// Bytes of result a /v1/sql query may return, MiB (the result is cut there).
    #[arg(long, default_value_t = 32)]
    pub sql_max_result_mib: usize,
    /// /v1/sql queries running at once; more are answered 429 with Retry-After.
    #[arg(long, default_value_t = 4)]
    pub sql_max_concurrent: usize,
}

impl HttpArgs {
    pub fn config(&self, archive: Option<PathBuf>) -> ApiConfig {
        ApiConfig {
            token: self.token.clone().filter(|t| !t.is_empty()),
            sql_timeout: Duration::from_secs_f64(self.sql_timeout.max(0.1)),
            sql_max_rows: self.sql_max_rows.max(1),
            sql_memory_bytes: self.sql_memory_mib.max(16) * 1024 * 1024,
            sql_max_bytes: self.sql_max_result_mib.max(1) * 1024 * 1024,
            pool: risksense_api::pool::PoolConfig {
                max_concurrent: self.sql_max_concurrent.max(1),
                ..Default::default()
            },
            archive,
            ..ApiConfig::default()
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: String,
    /// Redis with the stream's results.
    #[arg(
        long,
        env = "RISKSENSE_REDIS",
        default_value = "redis://127.0.0.1:6379/"
    )]
    pub redis: String,
    /// Redis key prefix the stream wrote with.
    #[arg(long, default_value = "rs")]
    pub prefix: String,
    /// The stream's Parquet archive (queried as `history`).
    #[arg(long)]
    pub archive: Option<PathBuf>,
    #[command(flatten)]
    pub api: HttpArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// What the API serves.
pub struct ApiInputs {
    pub config: ApiConfig,
    pub store: Store,
    pub models: Arc<risksense_udfs::ModelControl>,
    /// The live window of a stream in this process.
    pub live: Option<Arc<LiveWindow>>,
    /// The metrics of a stream in this process.
    pub stream: Option<Arc<StreamMetrics>>,
    /// The standing queries of a stream in this process (`/v1/queries`, `/v1/subscribe`).
    pub queries: Option<Arc<Registry>>,
}

/// Starts the API on the runtime; it stops when `stop` is set. Returns its address.
pub fn spawn_api(
    runtime: &tokio::runtime::Runtime,
    address: &str,
    inputs: ApiInputs,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let (listener, local) = runtime
        .block_on(risksense_api::bind(address))
        .with_context(|| format!("listening on {address}"))?;
    let ApiInputs {
        config,
        store,
        models,
        live,
        stream,
        queries,
    } = inputs;
    let state = runtime
        .block_on(ApiState::new(config, store, models, live, stream, queries))
        .context("starting the API")?;
    let handle = runtime.spawn(async move {
        let shutdown = async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        if let Err(error) = risksense_api::serve(listener, state, shutdown).await {
            tracing::error!(%error, "the HTTP API stopped");
        }
    });
    Ok((local, handle))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = super::runtime()?;
    let models = args.model.control(
        args.model.load()?,
        args.model.load_challenger()?,
        args.model.load_supervised()?,
    )?;
    super::model::reload_on_hangup(&runtime, models.clone());
    let retention = Retention {
        prefix: args.prefix.clone(),
        ..Retention::default()
    };
    let store = runtime
        .block_on(Store::redis(&args.redis, retention))
        .with_context(|| format!("connecting to Redis at {}", args.redis))?;
    super::model::follow_group(&runtime, models.clone(), store.clone());
    let stop = Arc::new(AtomicBool::new(false));
    super::run::stop_on_signal(&runtime, stop.clone());
    let inputs = ApiInputs {
        config: args.api.config(args.archive.clone()),
        store,
        models,
        live: None,
        stream: None,
        // No stream here: /v1/queries answers 503.
        queries: None,
    };
    let (address, handle) = spawn_api(&runtime, &args.http, inputs, stop)?;
    println!("RiskSense API on http://{address}/ (dashboard at /, OpenAPI at /openapi.json)");
    runtime.block_on(handle)?;
    Ok(())
}
