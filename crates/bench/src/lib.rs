//! The benchmarks behind `risksense bench`: each suite runs its measurements side by side
//! in one process, several times, and prints the figures as a Markdown table ready for
//! BENCHMARKS.md, with the machine it ran on. Costs are reported per transaction where
//! they carry to other machines (CPU µs of the engine, Redis and the broker).
//!
//! - [`batch`]: in this process — the generator and replay producer (`ingest`), the model
//!   as a SQL function and Parquet rescoring (`scoring`), the stream's scoring plan alone
//!   (`micro_batch`).
//! - [`stream`]: the streaming engine as deployed: a `risksense run` child process (this
//!   executable, so the suites must be called from the `risksense` binary) against the
//!   real broker and Redis.
//! - [`queries`]: heavy ad-hoc SQL against a running engine.
//!
//! Micro-benchmarks of single functions are criterion benches in `benches/`.

pub mod batch;
pub mod continuous;
pub mod queries;
mod redis_servers;
pub mod scale_out;
pub mod stream;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use risksense_synth::{Generator, SynthConfig};
use risksense_udfs::{Model, SessionOptions};

/// The generated data a suite runs on.
#[derive(Debug, Clone)]
pub struct Synth {
    pub customers: u32,
    /// First and last day (YYYY-MM-DD).
    pub start: String,
    pub end: String,
    pub seed: u64,
}

impl Synth {
    pub fn generator(&self) -> anyhow::Result<(Generator, u64)> {
        let config = SynthConfig::new(self.customers, &self.start, &self.end, self.seed)
            .context("invalid generator options")?;
        let days = config.days() as u64;
        Ok((Generator::new(config), days))
    }
}

/// The model a suite scores with.
#[derive(Debug, Clone)]
pub struct ModelChoice {
    /// The model folder (model.onnx + model.json).
    pub dir: PathBuf,
    /// ONNX Runtime intra-op threads.
    pub threads: usize,
}

impl ModelChoice {
    pub fn load(&self) -> anyhow::Result<Arc<Model>> {
        let model = Model::load(
            &self.dir,
            SessionOptions {
                threads: self.threads,
            },
        )
        .with_context(|| format!("loading the model in {}", self.dir.display()))?;
        Ok(Arc::new(model))
    }
}

/// The machine a table was measured on: cores and CPU model.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

/// Measurements done so far, on stderr (hidden when stderr is not a terminal).
fn progress(measurements: u64) -> ProgressBar {
    let bar = ProgressBar::new(measurements);
    if let Ok(style) =
        ProgressStyle::with_template("[{elapsed_precise}] {bar:40} {pos}/{len} measurements {msg}")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A multi-threaded runtime for the async parts (DataFusion, Kafka admin).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
