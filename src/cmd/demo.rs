//! The demo: real engine code paths on an embedded default, nothing to install.
//!
//! Without `--kafka` it starts librdkafka's in-process mock cluster (a Kafka-protocol
//! broker inside this process) and says so. It generates transactions, replays them into
//! the `transactions` topic, reads them back as Arrow batches, and scores them with the
//! model through the same SQL as `rescore` (features.sql + score.sql). The streaming engine,
//! Redis and the dashboard come with later issues.

use std::time::Duration;

use anyhow::Context;
use risksense_engine::kafka::{
    EmbeddedBroker, KafkaSettings, Pace, ReplayProducer, ensure_topic, read_topic,
};

use super::generate::SynthArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Use a real Kafka at these bootstrap servers instead of the in-process broker.
    #[arg(long, env = "RISKSENSE_KAFKA_BROKERS")]
    pub kafka: Option<String>,
    #[command(flatten)]
    pub synth: SynthArgs,
    /// Messages per second to replay; 0 for as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Topic name.
    #[arg(long, default_value = "transactions")]
    pub topic: String,
    #[command(flatten)]
    pub model: super::model::ModelArgs,
}

pub fn run(mut args: Args) -> anyhow::Result<()> {
    // A small default: the mock broker keeps about 5 MiB per partition.
    if args.synth.customers == 1000 && args.synth.end == "2019-12-31" {
        args.synth.customers = 100;
        args.synth.end = "2019-01-31".to_string();
    }
    let _mock; // keeps the in-process broker alive for the whole demo
    let brokers = match &args.kafka {
        Some(brokers) => {
            eprintln!("using Kafka at {brokers}");
            brokers.clone()
        }
        None => {
            let cluster = EmbeddedBroker::start(&[(args.topic.as_str(), 4)])
                .context("starting the in-process Kafka broker")?;
            let servers = cluster.bootstrap_servers();
            eprintln!(
                "no --kafka given: using an in-process Kafka-protocol broker (librdkafka mock cluster) at {servers}"
            );
            _mock = cluster;
            servers
        }
    };
    let settings = KafkaSettings::new(brokers);
    if args.kafka.is_some() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(ensure_topic(&settings, &args.topic, 4))?;
    }
    let pace = match args.rate {
        0 => Pace::Unlimited,
        n => Pace::PerSecond(n),
    };
    let (generator, _) = args.synth.generator()?;
    let mut producer = ReplayProducer::new(&settings, &args.topic, pace)?;
    let bar = super::progress(None, "msgs");
    for batch in generator {
        producer.send_batch(&batch.context("generating")?)?;
        bar.set_position(producer.messages_sent());
    }
    let stats = producer.finish(Duration::from_secs(60))?;
    bar.finish_and_clear();
    super::produce::report(&stats, &args.topic, 0);

    let contents = read_topic(
        &settings,
        &args.topic,
        stats.messages,
        Duration::from_secs(60),
    )
    .context("reading the topic back")?;
    let rows: usize = contents.batches.iter().map(|b| b.num_rows()).sum();
    let frauds: u64 = contents
        .batches
        .iter()
        .map(super::generate::fraud_count)
        .sum();
    eprintln!(
        "read back {} messages as {} Arrow batches: {} rows, {} labelled fraud, {} keys not equal to cc_num",
        super::thousands(contents.messages),
        contents.batches.len(),
        super::thousands(rows as u64),
        frauds,
        contents.key_mismatches
    );
    if let Some(first) = contents.batches.first() {
        let preview = first.slice(0, first.num_rows().min(3));
        eprintln!(
            "{}",
            arrow::util::pretty::pretty_format_batches(&[preview])?
        );
    }
    if contents.messages != stats.messages {
        anyhow::bail!(
            "only {} of {} messages came back",
            contents.messages,
            stats.messages
        );
    }
    score(&args.model, contents.batches)
}

/// Scores what came back through Kafka with the model, as `rescore` would, and shows the
/// anomalies with their explanations.
fn score(
    model: &super::model::ModelArgs,
    batches: Vec<arrow::record_batch::RecordBatch>,
) -> anyhow::Result<()> {
    use risksense_engine::scoring::{self, SessionOptions};
    let model = model.load()?;
    super::runtime()?.block_on(async {
        let ctx = scoring::new_session(Some(model.clone()), SessionOptions::default())?;
        scoring::register_batches(
            &ctx,
            scoring::TRANSACTIONS,
            risksense_engine::schema::transaction_schema(),
            batches,
        )?;
        scoring::install_views(&ctx, Some(&model)).await?;
        let summary = ctx
            .sql(
                "SELECT count(*) AS transactions, sum(CAST(is_anomaly AS INT)) AS anomalies, \
                 sum(is_fraud) AS labelled_fraud, \
                 sum(CASE WHEN is_anomaly THEN is_fraud ELSE 0 END) AS fraud_flagged \
                 FROM scored",
            )
            .await?
            .collect()
            .await?;
        eprintln!(
            "\nscored with model `{}` (threshold {:.3}):",
            model.card.name, model.card.threshold
        );
        eprintln!("{}", arrow::util::pretty::pretty_format_batches(&summary)?);
        let top = ctx
            .sql(
                "SELECT trans_date_trans_time, cc_num, category, amt, round(score, 2) AS score, \
                 is_fraud, explanation FROM scored WHERE is_anomaly ORDER BY score DESC LIMIT 10",
            )
            .await?
            .collect()
            .await?;
        eprintln!(
            "top anomalies:\n{}",
            arrow::util::pretty::pretty_format_batches(&top)?
        );
        anyhow::Ok(())
    })
}
