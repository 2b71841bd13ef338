use std::path::PathBuf;

use anyhow::Context;
use risksense_engine::scoring::{self, SessionOptions, TRANSACTIONS};

use super::model::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The query. Tables come from --table; with a `transactions` table the `features`
    /// view (and `scored`, given a model) is there too.
    pub query: String,
    /// A table: name=path (Parquet file, folder or glob; or transaction CSV). Repeatable.
    #[arg(long = "table", short = 't', value_parser = super::parse_key_value)]
    pub tables: Vec<(String, String)>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Show at most this many rows (the query itself is not limited).
    #[arg(long, default_value_t = 200)]
    pub max_rows: usize,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Format {
    Table,
    Csv,
    Json,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let model = args.model.load_optional()?;
        let ctx = scoring::new_session(model.clone(), SessionOptions::default())?;
        for (name, path) in &args.tables {
            scoring::register_files(&ctx, name, &[PathBuf::from(path)])
                .await
                .with_context(|| format!("registering table `{name}` from {path}"))?;
        }
        if args.tables.iter().any(|(name, _)| name == TRANSACTIONS) {
            scoring::install_views(&ctx, model.as_deref()).await?;
        }
        let started = std::time::Instant::now();
        let frame = ctx.sql(&args.query).await.context("planning the query")?;
        let batches = frame.collect().await.context("running the query")?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        super::print_batches(&batches, args.format, args.max_rows)?;
        eprintln!("{rows} rows in {:.3} s", started.elapsed().as_secs_f64());
        Ok(())
    })
}
