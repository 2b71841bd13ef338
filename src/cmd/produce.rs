use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use arrow::record_batch::RecordBatch;
use risksense_connectors::kafka::{
    KafkaSettings, LabelReplayer, Pace, ReplayProducer, ReplayStats, ensure_topic,
};
use risksense_formats::source::{TransactionFile, expand_inputs};

use super::generate::SynthArgs;

#[derive(clap::Args, Debug)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        alias = "kafka",
        env = "RISKSENSE_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// Extra librdkafka property (repeatable), e.g. -X compression.type=zstd
    #[arg(short = 'X', value_parser = super::parse_key_value)]
    pub property: Vec<(String, String)>,
}

impl KafkaArgs {
    pub fn settings(&self) -> KafkaSettings {
        KafkaSettings {
            brokers: self.brokers.clone(),
            properties: self.property.clone(),
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input files or folders: .csv, .csv.gz, .parquet; `-` reads CSV from stdin.
    #[arg(long, short, num_args = 1.., conflicts_with = "synthetic")]
    pub input: Vec<PathBuf>,
    /// Generate the transactions instead of reading files (see the generator options).
    #[arg(long)]
    pub synthetic: bool,
    #[command(flatten)]
    pub synth: SynthArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Topic to write to (created with --partitions if missing).
    #[arg(long, default_value = "transactions")]
    pub topic: String,
    /// Partitions of a topic we create.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Messages per second; 0 replays as fast as the broker takes them.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Skip malformed input rows (counted and reported) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
    /// Also replay the `is_fraud` column as labels on TOPIC.labels (`run` joins them with
    /// the scores: live precision and recall per model), each --label-delay-secs after
    /// its transaction: chargebacks arriving after the scores.
    #[arg(long)]
    pub labels: bool,
    /// How long after its transaction a label is sent, in seconds.
    #[arg(long, default_value_t = 5.0, requires = "labels")]
    pub label_delay_secs: f64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.input.is_empty() && !args.synthetic {
        bail!("nothing to replay: give --input FILE... (or - for stdin), or --synthetic");
    }
    let settings = args.kafka.settings();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(ensure_topic(&settings, &args.topic, args.partitions))
        .with_context(|| format!("creating topic `{}` on {}", args.topic, settings.brokers))?;
    let pace = match args.rate {
        0 => Pace::Unlimited,
        n => Pace::PerSecond(n),
    };
    let mut producer = ReplayProducer::new(&settings, &args.topic, pace)
        .with_context(|| format!("connecting to Kafka at {}", settings.brokers))?;
    let labels_topic = format!("{}.labels", args.topic);
    let mut labels = if args.labels {
        runtime
            .block_on(ensure_topic(&settings, &labels_topic, args.partitions))
            .with_context(|| format!("creating topic `{labels_topic}`"))?;
        Some(LabelReplayer::new(
            &settings,
            &labels_topic,
            Duration::try_from_secs_f64(args.label_delay_secs).map_err(|_| {
                anyhow::anyhow!(
                    "--label-delay-secs {} is not a delay in seconds",
                    args.label_delay_secs
                )
            })?,
        )?)
    } else {
        None
    };
    let bar = super::progress(None, "msgs");
    let mut skipped = 0u64;
    let mut send = |batch: anyhow::Result<RecordBatch>, what: &str| -> anyhow::Result<()> {
        let batch = batch.with_context(|| format!("reading {what}"))?;
        producer.send_batch(&batch).context("producing to Kafka")?;
        if let Some(labels) = &mut labels {
            labels.schedule(&batch).context("producing labels")?;
        }
        bar.set_position(producer.messages_sent());
        Ok(())
    };
    if args.synthetic {
        let (generator, _) = args.synth.generator()?;
        for batch in generator {
            send(batch.map_err(Into::into), "generated data")?;
        }
    } else {
        for path in expand_inputs(&args.input)? {
            let what = path.display().to_string();
            let mut file = TransactionFile::open(&path, 8192, args.skip_bad)
                .with_context(|| format!("opening {what}"))?;
            for batch in file.by_ref() {
                send(batch.map_err(Into::into), &what)?;
            }
            if file.rows_skipped() > 0 {
                skipped += file.rows_skipped();
                tracing::warn!(
                    file = %what,
                    skipped = file.rows_skipped(),
                    first = file.first_skipped().unwrap_or_default(),
                    "skipped malformed rows"
                );
            }
        }
    }
    bar.set_message("waiting for acknowledgements");
    let stats = producer
        .finish(Duration::from_secs(120))
        .context("waiting for the broker to acknowledge")?;
    if let Some(labels) = labels {
        bar.set_message("sending the last labels as they fall due");
        let sent = labels
            .finish(false, Duration::from_secs(120))
            .context("producing labels")?;
        eprintln!(
            "produced {} labels to `{labels_topic}`",
            super::thousands(sent)
        );
    }
    bar.finish_and_clear();
    report(&stats, &args.topic, skipped);
    Ok(())
}

pub fn report(stats: &ReplayStats, topic: &str, skipped: u64) {
    eprintln!(
        "produced {} messages ({:.1} MiB) to `{topic}` in {:.2} s: {:.0} msg/s{}",
        super::thousands(stats.messages),
        stats.bytes as f64 / (1 << 20) as f64,
        stats.elapsed.as_secs_f64(),
        stats.messages_per_second(),
        if skipped > 0 {
            format!(", {skipped} bad rows skipped")
        } else {
            String::new()
        }
    );
}
