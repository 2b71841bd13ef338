//! Subcommands. Each module turns parsed arguments into library calls, progress bars and
//! a printed summary.

mod bench;

mod demo;
mod doctor;
mod evaluate;
mod generate;
mod healthcheck;
mod import;
mod model;
mod produce;
mod profile;
mod rescore;
pub mod run;
mod serve;
mod sql;
mod train;

use std::time::Duration;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

const EXAMPLES: &str = "\
Examples:
  risksense demo                                   # everything in-process: dashboard on http://127.0.0.1:8080/
  risksense generate --customers 1000 --start 2019-01-01 --end 2019-12-31 --out year.parquet
  risksense generate --customers 100 --out - | risksense produce --input - --topic transactions
  risksense produce --input ../shared/data/sparkov-2019h1.csv.gz --rate 5000
  risksense profile year.parquet --against ../shared/data/sparkov-2019h1.csv.gz
  risksense train --input ../shared/data/sparkov-2019h1.csv.gz --validation ../shared/data/sparkov-2019q3.csv.gz --out models/default --candidate-seeds 42,7,100,1000,2024
  risksense train --model trees --input ../shared/data/sparkov-2019h1.csv.gz --validation ../shared/data/sparkov-2019q3.csv.gz --out models/trees
  risksense import --input ../shared/data/ --out history/
  risksense run --kafka 127.0.0.1:9092 --redis redis://127.0.0.1:6379/ --archive archive/ --http 127.0.0.1:8080
  risksense run --kafka 127.0.0.1:9092 --archive archive/ --http 127.0.0.1:8080 --challenger models/trees
  curl -X POST 127.0.0.1:8080/v1/models/champion -d '{\"model\": \"default\"}'   # swap models, no restart
  risksense evaluate --archive archive/           # champion vs challenger on the labelled rows
  risksense serve --redis redis://127.0.0.1:6379/ --archive archive/
  risksense sql --url http://127.0.0.1:8080 \"SELECT count(*) FROM scored WHERE is_anomaly\"
  risksense rescore --input 'history/**/*.parquet' --out scored/
  risksense sql \"SELECT category, count(*) FROM scored WHERE is_anomaly GROUP BY 1\" --table scored=scored/
  risksense doctor                                 # is Kafka / Redis / ONNX Runtime reachable?
  risksense healthcheck --http 127.0.0.1:8080      # does the service answer /healthz? (exit code)";

/// Real-time fraud and anomaly detection for transaction streams.
#[derive(Parser)]
#[command(name = "risksense", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Generate synthetic transactions in the Kaggle fraudTrain.csv schema.
    Generate(generate::Args),
    /// Replay transactions (CSV, Parquet or generated) into a Kafka topic as JSON.
    Produce(produce::Args),
    /// Summarise transaction files (fraud rate, amounts, hours) and compare them.
    Profile(profile::Args),
    /// Train the autoencoder on transaction files and export it to ONNX.
    Train(train::Args),
    /// Run the streaming engine: Kafka -> features + model SQL -> Redis, alerts, archive.
    Run(Box<run::Args>),
    /// Score Parquet history with the same SQL and model as the stream.
    Rescore(rescore::Args),
    /// Compare the champion with the challenger it shadowed, over labelled scored rows.
    Evaluate(evaluate::Args),
    /// Convert transaction CSV into Parquet.
    Import(import::Args),
    /// Run SQL over Parquet / CSV tables with the RiskSense functions registered.
    Sql(sql::Args),
    /// Serve the HTTP API and dashboard over Redis and the archive (no stream).
    Serve(serve::Args),
    /// Run the demo: an in-process broker, generated traffic, the engine path.
    Demo(demo::Args),
    /// Check that Kafka, Redis and ONNX Runtime are reachable.
    Doctor(doctor::Args),
    /// Ask a running service's /healthz; exit non-zero unless it answers (container probes).
    Healthcheck(healthcheck::Args),
    /// Benchmarks (release build, real services): prints a Markdown table.
    Bench(bench::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Produce(args) => produce::run(args),
        Command::Profile(args) => profile::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Sql(args) => sql::run(args),
        Command::Run(args) => run::run(*args),
        Command::Rescore(args) => rescore::run(args),
        Command::Evaluate(args) => evaluate::run(args),
        Command::Import(args) => import::run(args),
        Command::Train(args) => train::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Healthcheck(args) => healthcheck::run(args),
        Command::Bench(args) => bench::run(args),
    }
}

pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info,rdkafka=warn",
        1 => "debug,rdkafka=info",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// A progress bar on stderr; hidden when stderr is not a terminal.
pub fn progress(length: Option<u64>, unit: &str) -> ProgressBar {
    let bar = match length {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let template = match length {
        Some(_) => format!(
            "{{spinner}} [{{elapsed_precise}}] {{bar:40}} {{human_pos}}/{{human_len}} {unit} ({{per_sec}}, eta {{eta}}) {{msg}}"
        ),
        None => {
            format!("{{spinner}} [{{elapsed_precise}}] {{human_pos}} {unit} ({{per_sec}}) {{msg}}")
        }
    };
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Parses `key=value` pairs for librdkafka properties.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| format!("`{text}` is not key=value"))
}

/// Formats a count with thousands separators.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A multi-threaded runtime for the async parts (DataFusion, Kafka admin).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Prints query results as a table (like a SQL shell), CSV or JSON lines.
pub fn print_batches(
    batches: &[arrow::record_batch::RecordBatch],
    format: sql::Format,
    max_rows: usize,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut shown = Vec::new();
    let mut remaining = max_rows;
    for batch in batches {
        if remaining == 0 {
            break;
        }
        let take = batch.num_rows().min(remaining);
        shown.push(batch.slice(0, take));
        remaining -= take;
    }
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut out = std::io::stdout().lock();
    match format {
        sql::Format::Table => {
            writeln!(
                out,
                "{}",
                arrow::util::pretty::pretty_format_batches(&shown)?
            )?;
            if total > max_rows {
                writeln!(
                    out,
                    "({total} rows, first {max_rows} shown; --max-rows to see more)"
                )?;
            }
        }
        sql::Format::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            for batch in &shown {
                writer.write(batch)?;
            }
        }
        sql::Format::Json => {
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut out);
            for batch in &shown {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
    }
    Ok(())
}
