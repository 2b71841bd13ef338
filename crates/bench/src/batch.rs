//! The suites that run in this process: the generator and replay producer (`ingest`), the
//! model as a SQL function and Parquet rescoring (`scoring`), and the stream's scoring plan
//! alone (`micro_batch`). Each runs its measurements side by side, several times, and
//! prints median figures as a Markdown table ready for BENCHMARKS.md.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow::record_batch::RecordBatch;
use risksense_connectors::kafka::{KafkaSettings, Pace, ReplayProducer, ensure_topic};
use risksense_formats::source::{TransactionFile, TransactionFileWriter};

use crate::{ModelChoice, Synth, machine, progress, runtime};

#[derive(Debug, Clone)]
pub struct MicroBatchOptions {
    pub model: ModelChoice,
    /// Rows per micro-batch (20 ms at 50,000 messages/s is 1,000).
    pub batch_rows: usize,
    /// Customers (cards) of the generated rows.
    pub customers: u32,
    /// Last day of the generated rows (from 2019-01-01).
    pub end: String,
}

#[derive(Debug, Clone)]
pub struct ScoringOptions {
    pub model: ModelChoice,
    /// Rows per ONNX Runtime run / Arrow batch.
    pub batch_rows: usize,
    /// Batches per raw / UDF measurement.
    pub batches: usize,
    /// Customers of the generated history to rescore (5,000 customers ~ 5.2M rows a year).
    pub customers: u32,
    /// Repetitions of each measurement; the median is reported.
    pub runs: usize,
    /// Scratch folder (the generated history is kept there between runs).
    pub scratch: PathBuf,
}

#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub synth: Synth,
    /// Kafka bootstrap servers (a real broker).
    pub brokers: String,
    /// Repetitions of each measurement; the median is reported.
    pub runs: usize,
    /// Scratch folder for the files written.
    pub scratch: PathBuf,
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

pub fn ingest(args: IngestOptions) -> anyhow::Result<()> {
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
    let bar = progress((runs * figures.len()) as u64);
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
    print_table(&figures, "in-memory generate");
    Ok(())
}

fn print_table(figures: &[Figure], base_name: &str) {
    let base = figures[0].median_rate();
    println!("| measurement | rows/s (median) | ratio to {base_name} |");
    println!("|---|---:|---:|");
    for figure in figures {
        println!(
            "| {} | {:.0} | {:.3} |",
            figure.name,
            figure.median_rate(),
            figure.median_rate() / base
        );
    }
}

/// Rescores `history` (Parquet) into `out` once; the time it took. `validated`: the files
/// are registered as `rescore` does, behind the `valid_transaction` filter; else as they are.
async fn rescore_history(
    model: &std::sync::Arc<risksense_udfs::Model>,
    history: &std::path::Path,
    out: &std::path::Path,
    validated: bool,
    expected_rows: u64,
) -> anyhow::Result<Duration> {
    use risksense_query::scoring::{self, SessionOptions};
    let ctx = scoring::new_session(Some(model.clone()), SessionOptions::rescoring())?;
    if out.exists() {
        std::fs::remove_dir_all(out)?;
    }
    let started = Instant::now();
    if validated {
        scoring::register_files(&ctx, scoring::TRANSACTIONS, &[history.to_path_buf()]).await?;
    } else {
        ctx.register_parquet(
            scoring::TRANSACTIONS,
            &history.display().to_string(),
            datafusion::prelude::ParquetReadOptions::default(),
        )
        .await?;
    }
    scoring::install_views(&ctx, Some(model)).await?;
    let stats = scoring::write_scored(&ctx, out).await?;
    anyhow::ensure!(stats.rows == expected_rows);
    Ok(started.elapsed())
}

pub fn scoring(args: ScoringOptions) -> anyhow::Result<()> {
    use std::sync::Arc;

    use arrow::array::ArrayRef;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use futures::StreamExt;
    use risksense_query::scoring::{self, SessionOptions};
    use risksense_synth::{Generator, SynthConfig};

    let runs = args.runs.max(1);
    let model = args.model.load()?;
    let width = model.feature_count();
    let rows = args.batch_rows;
    std::fs::create_dir_all(&args.scratch)?;

    // Real feature rows: the features of generated transactions, cycled to fill a batch.
    let runtime = runtime()?;
    let sample = runtime.block_on(async {
        let config = SynthConfig::new(300, "2019-01-01", "2019-02-28", 5)?;
        let batches: Vec<RecordBatch> = Generator::new(config).collect::<Result<_, _>>()?;
        let ctx = scoring::new_session(None, SessionOptions::default())?;
        scoring::register_batches(
            &ctx,
            scoring::TRANSACTIONS,
            risksense_common::schema::transaction_schema(),
            batches,
        )?;
        scoring::install_views(&ctx, None).await?;
        let names = model.card.features.join(", ");
        let out = ctx
            .sql(&format!("SELECT {names} FROM features"))
            .await?
            .collect()
            .await?;
        anyhow::Ok(arrow::compute::concat_batches(&out[0].schema(), &out)?)
    })?;
    anyhow::ensure!(sample.num_rows() > 0, "no sample rows");
    // The sample's rows cycled to fill a batch, the model inputs as Float64 columns named
    // as the card lists them; the raw run's matrix is taken from it by those names.
    let cycle = arrow::array::UInt32Array::from_iter_values(
        (0..rows).map(|r| (r % sample.num_rows()) as u32),
    );
    let fields: Vec<Field> = model
        .card
        .features
        .iter()
        .map(|n| Field::new(n, DataType::Float64, false))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let columns = model
        .card
        .features
        .iter()
        .map(|name| {
            let column = sample.column_by_name(name).context("sample feature")?;
            let column = arrow::compute::take(column, &cycle, None)?;
            Ok(arrow::compute::cast(&column, &DataType::Float64)?)
        })
        .collect::<anyhow::Result<Vec<ArrayRef>>>()?;
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let matrix = risksense_query::features::feature_matrix(&batch, &model.card.features)?;

    // History to rescore: generated once, kept in the scratch folder.
    let history = args
        .scratch
        .join(format!("history-{}.parquet", args.customers));
    if !history.exists() {
        let config = SynthConfig::new(args.customers, "2019-01-01", "2019-12-31", 7)?;
        let mut writer = TransactionFileWriter::create(&history)?;
        for b in Generator::new(config) {
            writer.write(&b?)?;
        }
        writer.finish()?;
    }
    let history_rows = parquet::file::reader::FileReader::metadata(
        &parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&history)?)?,
    )
    .file_metadata()
    .num_rows() as u64;

    let total = (rows * args.batches) as u64;
    let mut figures = vec![
        Figure {
            name: "raw ONNX Runtime (one run per batch)",
            rows: total,
            runs: vec![],
        },
        Figure {
            name: "anomaly_score UDF in a DataFusion plan",
            rows: total,
            runs: vec![],
        },
        Figure {
            name: "rescore Parquet -> features -> score -> Parquet",
            rows: history_rows,
            runs: vec![],
        },
        Figure {
            name: "the same rescore without the input validation (what it costs)",
            rows: history_rows,
            runs: vec![],
        },
    ];
    let bar = progress((runs * figures.len()) as u64);
    for _ in 0..runs {
        let started = Instant::now();
        for _ in 0..args.batches {
            let scores = model.score(&matrix, rows)?;
            anyhow::ensure!(scores.len() == rows);
        }
        figures[0].runs.push(started.elapsed());
        bar.inc(1);

        let udf_time = runtime.block_on(async {
            let ctx = scoring::new_session(
                Some(model.clone()),
                SessionOptions {
                    target_partitions: 1,
                    batch_size: rows,
                    memory_limit: None,
                },
            )?;
            let table = MemTable::try_new(schema.clone(), vec![vec![batch.clone(); args.batches]])?;
            ctx.register_table("f", Arc::new(table))?;
            let query = format!(
                "SELECT anomaly_score({}) FROM f",
                model.card.features.join(", ")
            );
            let frame = ctx.sql(&query).await?;
            let started = Instant::now();
            let mut stream = frame.execute_stream().await?;
            let mut seen = 0;
            while let Some(b) = stream.next().await {
                seen += b?.num_rows();
            }
            anyhow::ensure!(seen as u64 == total);
            anyhow::Ok(started.elapsed())
        })?;
        figures[1].runs.push(udf_time);
        bar.inc(1);

        // With the input validation over the scan, then without it (what it costs).
        for (figure, validated) in [(2, true), (3, false)] {
            let elapsed = runtime.block_on(rescore_history(
                &model,
                &history,
                &args.scratch.join("scored"),
                validated,
                history_rows,
            ))?;
            figures[figure].runs.push(elapsed);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    println!(
        "machine: {}; model {} ({} features, ONNX Runtime threads {}); batches of {rows} rows; median of {runs} runs\n",
        machine(),
        model.card.name,
        width,
        args.model.threads
    );
    print_table(&figures, "raw ONNX Runtime");
    let overhead = 1.0 - figures[1].median_rate() / figures[0].median_rate();
    println!(
        "\nUDF overhead vs raw ONNX Runtime: {:.1} %",
        overhead * 100.0
    );
    Ok(())
}

/// The stream's scoring plan on micro-batches of generated rows: time per batch and per row.
pub fn micro_batch(args: MicroBatchOptions) -> anyhow::Result<()> {
    use risksense_engine::stream::StreamConfig;
    use risksense_query::scorer::StreamScorer;
    use risksense_synth::{Generator, SynthConfig};

    let model = args.model.load()?;
    let config = SynthConfig::new(args.customers, "2019-01-01", &args.end, 42)?;
    let batches: Vec<RecordBatch> = Generator::new(config).collect::<Result<_, _>>()?;
    let all =
        arrow::compute::concat_batches(&risksense_common::schema::transaction_schema(), &batches)?;
    let size = args.batch_rows.max(1);
    let runtime = runtime()?;
    // The session `risksense run` would score these micro-batches in.
    let session = StreamConfig {
        batch_rows: size,
        ..StreamConfig::default()
    }
    .session_options();
    let scorer = runtime.block_on(StreamScorer::new(model, session))?;
    let history = scorer
        .history()
        .context("the stream scorer keeps history")?
        .clone();
    let started = Instant::now();
    let mut scored = 0usize;
    let mut micro_batches = 0usize;
    for start in (0..all.num_rows()).step_by(size) {
        let batch = all.slice(start, size.min(all.num_rows() - start));
        let out = runtime.block_on(scorer.score(vec![batch]))?;
        history.commit_staged(|_| Some(0))?;
        scored += out.iter().map(|b| b.num_rows()).sum::<usize>();
        micro_batches += 1;
    }
    let elapsed = started.elapsed();
    let (cards, kept) = history.size(0);
    println!(
        "micro-batch scoring: {scored} rows ({} cards, 2019-01-01 .. {}) in {micro_batches} batches of {size}: \
         {:.2} ms per batch, {:.2} µs per row, {:.0} rows/s on one thread; history {cards} cards, {kept} pairs",
        args.customers,
        args.end,
        elapsed.as_secs_f64() * 1e3 / micro_batches.max(1) as f64,
        elapsed.as_secs_f64() * 1e6 / scored.max(1) as f64,
        scored as f64 / elapsed.as_secs_f64(),
    );
    Ok(())
}
