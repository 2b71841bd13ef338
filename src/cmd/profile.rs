use std::path::PathBuf;

use anyhow::Context;
use risksense_formats::source::{TransactionFile, expand_inputs};
use risksense_synth::profile::{DataProfile, ProfileBuilder};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Transaction files to summarise (.csv, .csv.gz, .parquet, or a saved profile .json).
    #[arg(required = true)]
    pub input: Vec<PathBuf>,
    /// Reference to compare with: transaction files or a saved profile .json.
    #[arg(long, num_args = 1..)]
    pub against: Vec<PathBuf>,
    /// Save the profile of the inputs as JSON.
    #[arg(long)]
    pub save: Option<PathBuf>,
}

pub fn load(paths: &[PathBuf]) -> anyhow::Result<DataProfile> {
    if let [single] = paths
        && single.extension().is_some_and(|e| e == "json")
    {
        let text = std::fs::read_to_string(single)
            .with_context(|| format!("reading {}", single.display()))?;
        return serde_json::from_str(&text)
            .with_context(|| format!("{} is not a saved profile", single.display()));
    }
    let mut builder = ProfileBuilder::default();
    for path in expand_inputs(paths)? {
        for batch in TransactionFile::open(&path, 8192, false)? {
            builder.add(&batch.with_context(|| format!("reading {}", path.display()))?);
        }
    }
    Ok(builder.finish())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let profile = load(&args.input)?;
    println!(
        "rows {}  cards {}  fraud {} ({:.3} %)",
        super::thousands(profile.rows),
        profile.cards,
        super::thousands(profile.frauds),
        profile.fraud_rate * 100.0
    );
    if let Some(path) = &args.save {
        std::fs::write(path, serde_json::to_string_pretty(&profile)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.against.is_empty() {
        return Ok(());
    }
    let reference = load(&args.against)?;
    println!(
        "\n{:<16} {:>32}   {:>32}",
        "legit amount", "p10 p25 p50 p75 p90 (input)", "(reference)"
    );
    for (category, q) in &profile.legit_amount_quantiles {
        let r = reference.legit_amount_quantiles.get(category);
        println!("{category:<16} {:>32}   {:>32}", fmt_q(Some(q)), fmt_q(r));
    }
    println!(
        "\n{:<16} {:>32}   {:>32}",
        "fraud amount", "p10 p25 p50 p75 p90 (input)", "(reference)"
    );
    for (category, q) in &profile.fraud_amount_quantiles {
        let r = reference.fraud_amount_quantiles.get(category);
        println!("{category:<16} {:>32}   {:>32}", fmt_q(Some(q)), fmt_q(r));
    }
    println!("\nhour  legit% (in / ref)   fraud% (in / ref)");
    for hour in 0..24 {
        println!(
            "{hour:>4}  {:>6.2} / {:>6.2}      {:>6.2} / {:>6.2}",
            profile.legit_hours[hour] * 100.0,
            reference.legit_hours[hour] * 100.0,
            profile.fraud_hours[hour] * 100.0,
            reference.fraud_hours[hour] * 100.0
        );
    }
    let d = profile.distance(&reference);
    println!(
        "\nfraud rate {:.3} % vs {:.3} %; fraud at night (22-04h) {:.1} % vs {:.1} %",
        d.fraud_rate_pct.0,
        d.fraud_rate_pct.1,
        d.fraud_night_share.0 * 100.0,
        d.fraud_night_share.1 * 100.0
    );
    println!(
        "median |ln ratio| of amount quantiles: legit {:.3}, fraud {:.3}",
        d.legit_amount_log_error, d.fraud_amount_log_error
    );
    println!(
        "total variation: legit hours {:.3}, fraud hours {:.3}, legit category mix {:.3}",
        d.legit_hour_tv, d.fraud_hour_tv, d.legit_category_tv
    );
    Ok(())
}

fn fmt_q(q: Option<&Vec<f64>>) -> String {
    q.map_or_else(
        || "-".to_string(),
        |q| {
            q.iter()
                .map(|v| format!("{v:.1}"))
                .collect::<Vec<_>>()
                .join(" ")
        },
    )
}
