use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use risksense_formats::source::TransactionFileWriter;
use risksense_synth::{Generator, SynthConfig};

/// Synthetic data options, shared by `generate`, `produce --synthetic` and `demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct SynthArgs {
    /// Number of customers (cards).
    #[arg(long, default_value_t = 1000)]
    pub customers: u32,
    /// First day (YYYY-MM-DD).
    #[arg(long, default_value = "2019-01-01")]
    pub start: String,
    /// Last day, inclusive (YYYY-MM-DD).
    #[arg(long, default_value = "2019-12-31")]
    pub end: String,
    /// Random seed: the same seed gives the same rows.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl SynthArgs {
    pub fn generator(&self) -> anyhow::Result<(Generator, u64)> {
        let config = SynthConfig::new(self.customers, &self.start, &self.end, self.seed)
            .context("invalid generator options")?;
        let days = config.days() as u64;
        Ok((Generator::new(config), days))
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub synth: SynthArgs,
    /// Output file: .csv, .csv.gz or .parquet; `-` writes CSV to stdout.
    #[arg(long, short)]
    pub out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (generator, _) = args.synth.generator()?;
    let mut writer = TransactionFileWriter::create(&args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let to_stdout = args.out.as_os_str() == "-";
    let bar = super::progress(None, "rows");
    let started = Instant::now();
    let (mut rows, mut frauds) = (0u64, 0u64);
    for batch in generator {
        let batch = batch.context("generating transactions")?;
        rows += batch.num_rows() as u64;
        frauds += fraud_count(&batch);
        writer
            .write(&batch)
            .with_context(|| format!("writing {}", args.out.display()))?;
        bar.inc(batch.num_rows() as u64);
    }
    writer
        .finish()
        .with_context(|| format!("closing {}", args.out.display()))?;
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let summary = format!(
        "generated {} rows ({} fraud, {:.2} %) for {} customers in {:.2} s ({:.0} rows/s){}",
        super::thousands(rows),
        super::thousands(frauds),
        100.0 * frauds as f64 / rows.max(1) as f64,
        args.synth.customers,
        elapsed,
        rows as f64 / elapsed.max(1e-9),
        if to_stdout {
            String::new()
        } else {
            format!(" -> {}", args.out.display())
        }
    );
    // Keep stdout clean when it carries the data.
    eprintln!("{summary}");
    Ok(())
}

pub fn fraud_count(batch: &arrow::record_batch::RecordBatch) -> u64 {
    use arrow::array::AsArray;
    use arrow::datatypes::Int32Type;
    use risksense_common::schema::idx;
    batch
        .column(idx::IS_FRAUD)
        .as_primitive::<Int32Type>()
        .values()
        .iter()
        .map(|&v| v as u64)
        .sum()
}
