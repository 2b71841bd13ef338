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
    /// Run the standing queries of this SQL file over the history instead (the same text
    /// as `run --queries`: windows close as the stream closes them, and those still open at
    /// the end of the history close then). The input may be the stream's Parquet archive
    /// (already scored) or transactions (scored first). Each query's results go to
    /// OUT/<query>.parquet.
    #[arg(long, value_name = "FILE")]
    pub query: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(query) = &args.query {
        return run_queries(&args, query);
    }
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let model = args.model.load()?;
        let mut options = SessionOptions::rescoring();
        if let Some(p) = args.partitions {
            options.target_partitions = p;
        }
        // A challenger (`--challenger`) scores beside the model: `risksense evaluate`
        // compares them over the output.
        let handle = std::sync::Arc::new(risksense_udfs::ModelHandle::new(model.clone()));
        // (A supervised model, `--supervised`, joins the alert rule of sql/score.sql.)
        args.model.load_beside(&handle)?;
        let ctx = scoring::new_session_with_handle(Some(handle), options)?;
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

/// `rescore --query`: the standing queries of a file over the history, in event-time order.
fn run_queries(args: &Args, query: &std::path::Path) -> anyhow::Result<()> {
    let script =
        std::fs::read_to_string(query).with_context(|| format!("reading {}", query.display()))?;
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let mut options = SessionOptions::rescoring();
        if let Some(p) = args.partitions {
            options.target_partitions = p;
        }
        // The archive is scored already; transactions are scored here first.
        let probe = scoring::new_session(None, options)?;
        scoring::register_files(&probe, "input", &args.input)
            .await
            .context("registering the input")?;
        let scored_input = probe
            .table("input")
            .await?
            .schema()
            .field_with_unqualified_name("score")
            .is_ok();
        let ctx = if scored_input {
            probe
                .sql("CREATE VIEW scored AS SELECT * FROM input")
                .await?;
            probe
        } else {
            let model = args.model.load()?;
            let ctx = scoring::new_session(Some(model.clone()), options)?;
            scoring::register_files(&ctx, scoring::TRANSACTIONS, &args.input)
                .await
                .context("registering the input")?;
            scoring::install_views(&ctx, Some(&model)).await?;
            ctx
        };
        let frame = ctx
            .sql("SELECT * FROM scored ORDER BY trans_date_trans_time, row_id")
            .await?;
        let started = Instant::now();
        let bar = super::progress(None, "rows");
        bar.set_message(format!("running {}", query.display()));
        let mut rows = 0u64;
        let results = risksense_continuous::bounded::run_over(&script, frame, |n| {
            rows += n as u64;
            bar.inc(n as u64);
        })
        .await?;
        bar.finish_and_clear();
        for (name, count, path) in
            risksense_continuous::bounded::write_parquet(&results, &args.out)?
        {
            println!(
                "{name}: {} rows -> {}",
                super::thousands(count as u64),
                path.display()
            );
        }
        println!(
            "ran {} standing queries over {} rows in {:.2} s",
            results.len(),
            super::thousands(rows),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    })
}
