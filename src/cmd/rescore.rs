use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use risksense_query::scoring::{self, RescoreStats, SessionOptions};

use super::model::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Transaction history: Parquet file, folder or glob (e.g. 'history/**/*.parquet'),
    /// or transaction CSV files.
    #[arg(long, short, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Output folder (new or empty); the scored rows go to Parquet files in it, one per
    /// partition, written in parallel.
    #[arg(long, short)]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Parallel partitions (default: 8 per core; see `SessionOptions::rescoring`).
    #[arg(long)]
    pub partitions: Option<usize>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let model = args.model.load()?;
        let mut options = SessionOptions::rescoring();
        if let Some(p) = args.partitions {
            options.target_partitions = p;
        }
        let ctx = scoring::new_session(Some(model.clone()), options)?;
        scoring::register_files(&ctx, scoring::TRANSACTIONS, &args.input)
            .await
            .context("registering the input")?;
        scoring::install_views(&ctx, Some(&model)).await?;
        let started = Instant::now();
        let bar = super::progress(None, "rows");
        bar.set_message(format!("scoring into {}", args.out.display()));
        let stats = scoring::write_scored(&ctx, &args.out).await.context("rescoring")?;
        bar.finish_and_clear();
        let RescoreStats { rows, anomalies, frauds_flagged: frauds_caught } = stats;
        let path = &args.out;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "rescored {} rows in {:.2} s ({:.0} rows/s): {} anomalies ({:.2} %), {} of them labelled fraud -> {}",
            super::thousands(rows),
            secs,
            rows as f64 / secs.max(1e-9),
            super::thousands(anomalies),
            100.0 * anomalies as f64 / rows.max(1) as f64,
            super::thousands(frauds_caught),
            path.display()
        );
        Ok(())
    })
}
