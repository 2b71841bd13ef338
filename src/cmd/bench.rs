//! `risksense bench`: the command line of the benchmark suites in `risksense-bench`.

use std::path::PathBuf;

use risksense_bench::batch::{IngestOptions, MicroBatchOptions, ScoringOptions};
use risksense_bench::queries::QueriesOptions;
use risksense_bench::stream::StreamOptions;
use risksense_bench::{ModelChoice, Synth};

use super::generate::SynthArgs;
use super::model::ModelArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub suite: Suite,
}

#[derive(clap::Subcommand, Debug)]
pub enum Suite {
    /// Generator and replay producer: rows/s generated, messages/s into Kafka.
    Ingest(IngestArgs),
    /// The model: raw ONNX Runtime vs the UDF in a DataFusion plan, and Parquet rescoring.
    Scoring(ScoringArgs),
    /// The streaming engine: throughput Kafka -> Redis, latency at a steady rate, peak RSS.
    Stream(StreamArgs),
    /// The stream's scoring plan alone (no Kafka, no Redis): generated rows scored in
    /// micro-batches, one after another, with the cards' history carried between them.
    MicroBatch(MicroBatchArgs),
    /// Heavy ad-hoc SQL against a running engine: stream throughput and `/healthz` latency
    /// with and without four heavy queries, side by side.
    Queries(QueriesArgs),
    /// Standing queries against a running engine: engine CPU per transaction at the drain
    /// with none and with ten (alternated), and each windowed query's emit latency at a
    /// steady rate.
    Continuous(ContinuousArgs),
    /// One Redis against a three-shard Redis Cluster, one engine instance against two in
    /// one consumer group: one filled topic drained by each in turn; throughput, and engine,
    /// Redis and broker CPU per transaction, with Redis's time by command.
    ScaleOut(ScaleOutArgs),
}

#[derive(clap::Args, Debug)]
pub struct ScaleOutArgs {
    #[command(flatten)]
    pub stream: StreamArgs,
    /// The Redis Cluster to compare with --redis (`redis+cluster://host:port,…`); "" to
    /// measure --redis alone.
    #[arg(
        long,
        env = "RISKSENSE_REDIS_CLUSTER_URL",
        default_value = "redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003/"
    )]
    pub cluster: String,
    /// Engine instance counts to measure, each in one consumer group.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub instances: Vec<usize>,
    /// Drains of each configuration (configurations alternate).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
}

#[derive(clap::Args, Debug)]
pub struct ContinuousArgs {
    #[command(flatten)]
    pub stream: StreamArgs,
    /// Drains of each kind (alternated: none, ten, none, ten, ...); 0: only the steady run.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Space event times as a live stream at --rate produces them instead of keeping the
    /// generated days. Give many customers and few days with it (e.g. --customers 100000
    /// --end 2019-01-10): with 1,000, every card makes hundreds of transactions a minute.
    #[arg(long)]
    pub live_event_time: bool,
}

#[derive(clap::Args, Debug)]
pub struct MicroBatchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Rows per micro-batch (20 ms at 50,000 messages/s is 1,000).
    #[arg(long, default_value_t = 1000)]
    pub batch_rows: usize,
    /// Customers (cards) of the generated rows.
    #[arg(long, default_value_t = 1000)]
    pub customers: u32,
    /// Last day of the generated rows (from 2019-01-01).
    #[arg(long, default_value = "2019-03-31")]
    pub end: String,
}

#[derive(clap::Args, Debug)]
pub struct ScoringArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Rows per ONNX Runtime run / Arrow batch.
    #[arg(long, default_value_t = 8192)]
    pub batch_rows: usize,
    /// Batches per raw / UDF measurement.
    #[arg(long, default_value_t = 200)]
    pub batches: usize,
    /// Customers of the generated history to rescore (5,000 customers ~ 5.2M rows a year).
    #[arg(long, default_value_t = 5000)]
    pub customers: u32,
    /// Repetitions of each measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Scratch folder (the generated history is kept there between runs).
    #[arg(long, default_value = "target/bench")]
    pub scratch: PathBuf,
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

#[derive(clap::Args, Debug)]
pub struct StreamArgs {
    #[command(flatten)]
    pub synth: SynthArgs,
    /// Kafka bootstrap servers (a real broker).
    #[arg(
        long,
        env = "RISKSENSE_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// Redis (a real one).
    #[arg(
        long,
        env = "RISKSENSE_REDIS",
        default_value = "redis://127.0.0.1:6379/"
    )]
    pub redis: String,
    /// Partitions of the benchmark topics.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Steady producer rate for the latency run, messages/s.
    #[arg(long, default_value_t = 50_000)]
    pub rate: u64,
    /// Rows replayed in the latency run (at --rate).
    #[arg(long, default_value_t = 1_000_000)]
    pub latency_rows: usize,
    /// Micro-batch row bound of the engine.
    #[arg(long, default_value_t = 4096)]
    pub batch_rows: usize,
    /// Micro-batch wait bound of the engine, ms.
    #[arg(long, default_value_t = 20)]
    pub batch_wait_ms: u64,
    /// Checkpoint interval of the engine, ms.
    #[arg(long, default_value_t = 5000)]
    pub checkpoint_ms: u64,
    /// Scratch folder (archives, configs).
    #[arg(long, default_value = "target/bench")]
    pub scratch: PathBuf,
    /// The `risksense` executable to run as the engine [default: this one]: another build,
    /// to compare two builds with the same harness.
    #[arg(long)]
    pub engine: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct QueriesArgs {
    #[command(flatten)]
    pub stream: StreamArgs,
    /// Heavy queries kept running at once in the second drain.
    #[arg(long, default_value_t = 4)]
    pub heavy: usize,
    /// Port of the engine's API.
    #[arg(long, default_value_t = 18_080)]
    pub port: u16,
    /// Deadline of each heavy query, seconds (the engine's --sql-timeout).
    #[arg(long, default_value_t = 5.0)]
    pub sql_timeout: f64,
    /// Drains of each kind (alternated: quiet, heavy, quiet, heavy, ...).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.suite {
        Suite::Ingest(args) => risksense_bench::batch::ingest(IngestOptions {
            synth: synth(&args.synth),
            brokers: args.brokers,
            runs: args.runs,
            scratch: args.scratch,
        }),
        Suite::Scoring(args) => risksense_bench::batch::scoring(ScoringOptions {
            model: model(&args.model),
            batch_rows: args.batch_rows,
            batches: args.batches,
            customers: args.customers,
            runs: args.runs,
            scratch: args.scratch,
        }),
        Suite::Stream(args) => risksense_bench::stream::stream(stream(args)),
        Suite::MicroBatch(args) => risksense_bench::batch::micro_batch(MicroBatchOptions {
            model: model(&args.model),
            batch_rows: args.batch_rows,
            customers: args.customers,
            end: args.end,
        }),
        Suite::Queries(args) => risksense_bench::queries::queries(QueriesOptions {
            stream: stream(args.stream),
            heavy: args.heavy,
            port: args.port,
            sql_timeout: args.sql_timeout,
            rounds: args.rounds,
        }),
        Suite::Continuous(args) => risksense_bench::continuous::continuous(
            risksense_bench::continuous::ContinuousOptions {
                stream: stream(args.stream),
                rounds: args.rounds,
                live_event_time: args.live_event_time,
            },
        ),
        Suite::ScaleOut(args) => {
            risksense_bench::scale_out::scale_out(risksense_bench::scale_out::ScaleOutOptions {
                stream: stream(args.stream),
                cluster: Some(args.cluster).filter(|url| !url.is_empty()),
                instances: args.instances,
                rounds: args.rounds,
            })
        }
    }
}

fn synth(args: &SynthArgs) -> Synth {
    Synth {
        customers: args.customers,
        start: args.start.clone(),
        end: args.end.clone(),
        seed: args.seed,
    }
}

fn model(args: &ModelArgs) -> ModelChoice {
    ModelChoice {
        dir: args.dir(),
        threads: args.model_threads,
    }
}

fn stream(args: StreamArgs) -> StreamOptions {
    StreamOptions {
        synth: synth(&args.synth),
        // The rescoring comparison uses the engine's default model, one thread.
        model: model(&ModelArgs {
            model: None,
            model_threads: 1,
            no_model: false,
            challenger: None,
            supervised: None,
            registry: None,
        }),
        brokers: args.brokers,
        redis: args.redis,
        partitions: args.partitions,
        rate: args.rate,
        latency_rows: args.latency_rows,
        batch_rows: args.batch_rows,
        batch_wait_ms: args.batch_wait_ms,
        checkpoint_ms: args.checkpoint_ms,
        scratch: args.scratch,
        engine: args.engine,
    }
}
