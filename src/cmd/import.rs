use std::path::PathBuf;

use anyhow::Context;
use risksense_formats::source::{TransactionFile, TransactionFileWriter, expand_inputs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Transaction CSV / CSV.gz files or folders.
    #[arg(long, short, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Output folder: one Parquet file per input file.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Skip malformed rows (counted) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let bar = super::progress(None, "rows");
    let mut total = 0u64;
    for path in expand_inputs(&args.input)? {
        let stem = path
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_end_matches(".gz")
                    .trim_end_matches(".csv")
                    .to_string()
            })
            .unwrap_or_else(|| "part".to_string());
        let target = args.out.join(format!("{stem}.parquet"));
        let mut reader = TransactionFile::open(&path, 65_536, args.skip_bad)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut writer = TransactionFileWriter::create(&target)?;
        for batch in reader.by_ref() {
            let batch = batch.with_context(|| format!("reading {}", path.display()))?;
            total += batch.num_rows() as u64;
            writer.write(&batch)?;
            bar.set_position(total);
        }
        writer.finish()?;
        if reader.rows_skipped() > 0 {
            eprintln!(
                "{}: skipped {} malformed rows (first: {})",
                path.display(),
                reader.rows_skipped(),
                reader.first_skipped().unwrap_or_default()
            );
        }
        bar.println(format!("{} -> {}", path.display(), target.display()));
    }
    bar.finish_and_clear();
    eprintln!(
        "imported {} rows into {}",
        super::thousands(total),
        args.out.display()
    );
    Ok(())
}
