//! `risksense bench`: the benchmark command. Each suite runs its measurements side by side
//! in one process, several times, and prints median figures as a Markdown table ready for
//! BENCHMARKS.md, with the machine it ran on.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow::record_batch::RecordBatch;
use risksense_engine::kafka::{KafkaSettings, Pace, ReplayProducer, ensure_topic};
use risksense_engine::source::{TransactionFile, TransactionFileWriter};

use super::generate::SynthArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub suite: Suite,
}

#[derive(clap::Subcommand, Debug)]
pub enum Suite {
    /// Generator and replay producer: rows/s generated, messages/s into Kafka.
    Ingest(IngestArgs),
}

#[derive(clap::Args, Debug)]
pub struct IngestArgs {
    #[command(flatten)]
    pub synth: SynthArgs,
    /// Kafka bootstrap servers (a real broker).
    #[arg(
        long,
        env = "RISKSENSE_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// Repetitions of each measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Scratch folder for the files written.
    #[arg(long, default_value = "target/bench")]
    pub scratch: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.suite {
        Suite::Ingest(args) => ingest(args),
    }
}

/// One measured figure: name, rows per run, durations of the runs.
struct Figure {
    name: &'static str,
    rows: u64,
    runs: Vec<Duration>,
}

impl Figure {
    fn median_rate(&self) -> f64 {
        let mut runs = self.runs.clone();
        runs.sort();
        self.rows as f64 / runs[runs.len() / 2].as_secs_f64().max(1e-9)
    }
}

fn machine() -> String {
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

fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.scratch)?;
    let runs = args.runs.max(1);
    let settings = KafkaSettings::new(&args.brokers);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    // The data every replay sends: generated once, kept in memory.
    let (generator, _) = args.synth.generator()?;
    let batches: Vec<RecordBatch> = generator.collect::<Result<_, _>>()?;
    let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
    let csv_path = args.scratch.join("ingest.csv");
    let mut writer = TransactionFileWriter::create(&csv_path)?;
    for batch in &batches {
        writer.write(batch)?;
    }
    writer.finish()?;

    let mut figures = vec![
        Figure {
            name: "generate (in memory)",
            rows,
            runs: vec![],
        },
        Figure {
            name: "generate -> Parquet file",
            rows,
            runs: vec![],
        },
        Figure {
            name: "replay in-memory batches -> Kafka",
            rows,
            runs: vec![],
        },
        Figure {
            name: "replay CSV file -> Kafka",
            rows,
            runs: vec![],
        },
    ];
    let bar = super::progress(Some((runs * figures.len()) as u64), "measurements");
    for run in 0..runs {
        // Interleaved, so that drift in the machine's state touches every figure alike.
        let started = Instant::now();
        let (generator, _) = args.synth.generator()?;
        let mut count = 0;
        for batch in generator {
            count += batch?.num_rows();
        }
        anyhow::ensure!(count as u64 == rows, "generator is not deterministic");
        figures[0].runs.push(started.elapsed());
        bar.inc(1);

        let started = Instant::now();
        let (generator, _) = args.synth.generator()?;
        let mut writer = TransactionFileWriter::create(&args.scratch.join("ingest.parquet"))?;
        for batch in generator {
            writer.write(&batch?)?;
        }
        writer.finish()?;
        figures[1].runs.push(started.elapsed());
        bar.inc(1);

        let topic = format!("bench-ingest-{}-{run}", std::process::id());
        runtime.block_on(ensure_topic(&settings, &topic, 4))?;
        let mut producer = ReplayProducer::new(&settings, &topic, Pace::Unlimited)?;
        for batch in &batches {
            producer.send_batch(batch)?;
        }
        let stats = producer
            .finish(Duration::from_secs(300))
            .context("replay")?;
        figures[2].runs.push(stats.elapsed);
        bar.inc(1);

        let topic = format!("bench-ingest-csv-{}-{run}", std::process::id());
        runtime.block_on(ensure_topic(&settings, &topic, 4))?;
        let mut producer = ReplayProducer::new(&settings, &topic, Pace::Unlimited)?;
        for batch in TransactionFile::open(&csv_path, 8192, false)? {
            producer.send_batch(&batch?)?;
        }
        let stats = producer
            .finish(Duration::from_secs(300))
            .context("replay")?;
        figures[3].runs.push(stats.elapsed);
        bar.inc(1);
    }
    bar.finish_and_clear();

    println!(
        "machine: {}; {} rows ({} customers, {} .. {}), median of {runs} runs\n",
        machine(),
        rows,
        args.synth.customers,
        args.synth.start,
        args.synth.end
    );
    println!("| measurement | rows/s (median) | ratio to in-memory generate |");
    println!("|---|---:|---:|");
    let base = figures[0].median_rate();
    for figure in &figures {
        println!(
            "| {} | {:.0} | {:.2} |",
            figure.name,
            figure.median_rate(),
            figure.median_rate() / base
        );
    }
    Ok(())
}
