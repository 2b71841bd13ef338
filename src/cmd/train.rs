use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arrow::array::{AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int32Type, TimestampMicrosecondType};
use risksense_query::features::feature_matrix;
use risksense_query::scoring::{self, SessionOptions};
use risksense_trainer::error_side::{self, ErrorSide};
use risksense_trainer::pipeline::{
    Period, RunInfo, card_scores_rule, train_and_export, train_trees_and_export,
};
use risksense_trainer::trees::BoostConfig;
use risksense_trainer::{Matrix, TrainConfig};
use risksense_udfs::model::CardScores;
use risksense_udfs::{Model, ModelCard};

// The defaults of the training settings are the trainer's own (TrainConfig, BoostConfig),
// so the library and the command cannot disagree.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Training data: transaction CSV / CSV.gz / Parquet files or folders.
    #[arg(long, short, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// A later period to validate on (threshold and metrics). Without it, the last
    /// --validation-share of the input (by time) is held out.
    #[arg(long, num_args = 1..)]
    pub validation: Vec<PathBuf>,
    /// Share of the input, the latest rows, held out when no --validation is given (from
    /// the first new second there, so no second is split between the two periods).
    #[arg(long, default_value_t = 0.2)]
    pub validation_share: f64,
    /// Output folder for model.onnx and model.json.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Alert rate the threshold is calibrated to on the validation period.
    #[arg(long, default_value_t = 0.01)]
    pub alert_rate: f64,
    /// Most epochs per member (early stopping usually ends it sooner, see --patience).
    #[arg(long, default_value_t = TrainConfig::default().epochs)]
    pub epochs: usize,
    /// Autoencoders trained from consecutive seeds and averaged into the model (8: four
    /// with the amount against its category's and four without measured steadier and
    /// better than four of either; `--ensemble 4 --amount-by-category-members 0` is the
    /// previous model, at the engine's previous cost: BENCHMARKS.md).
    #[arg(long, default_value_t = 8)]
    pub ensemble: usize,
    #[arg(long, default_value_t = TrainConfig::default().batch_size)]
    pub batch_size: usize,
    #[arg(long, default_value_t = TrainConfig::default().learning_rate)]
    pub learning_rate: f64,
    #[arg(long, default_value_t = TrainConfig::default().hidden)]
    pub hidden: usize,
    /// Units of the code (the bottleneck): 3 measured better than 2 and 4 on the worst of
    /// five seeds (BENCHMARKS.md, "Model quality").
    #[arg(long, default_value_t = TrainConfig::default().code)]
    pub code: usize,
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    pub seed: u64,
    /// Train an ensemble from each of these first seeds and keep the one whose scores rank
    /// the training rows' labelled fraud best (PR-AUC; the labels never enter the fit, and
    /// the validation period stays for the threshold and the figures). Needs both classes
    /// in the training labels; takes as many times as long. models/default is
    /// `--candidate-seeds 42,7,100,1000,2024` (BENCHMARKS.md, "Model quality").
    #[arg(long, value_delimiter = ',', num_args = 1.., conflicts_with = "seed")]
    pub candidate_seeds: Vec<u64>,
    /// Weight of the card's recent scores in the alert score (sql/score.sql: a row alerts
    /// when its score + this × the mean of its card's scores over the last 24 hours
    /// reaches a threshold, calibrated here on the validation period to --alert-rate).
    /// Fraud that comes in bursts of somewhat unusual rows adds up this way
    /// (BENCHMARKS.md, "Model quality"). 0: a row's own score against its threshold.
    #[arg(long, default_value_t = 1.0)]
    pub card_weight: f64,
    /// Count a feature's reconstruction error on one side only: FEATURE=above|below (or
    /// =both, to count both sides of one the built-in table makes one-sided); repeatable
    /// or comma-separated. By default the features whose risk runs one way count their
    /// risky side only: more money, more transactions, at night, farther from home,
    /// sooner after the previous one (`risksense_trainer::error_side::RISK_SIDES`; on
    /// 2019 Q3 recall at 1 % rose on every seed measured: BENCHMARKS.md, "Model quality").
    /// The amount against its category's, which the model derives, takes log_amt's side.
    #[arg(long, value_delimiter = ',', value_parser = error_side::parse_override)]
    pub error_side: Vec<(String, ErrorSide)>,
    /// Count every feature's error on both sides (the usual autoencoder error; the models
    /// before 2026-12-02's tenth session); --error-side still applies on top.
    #[arg(long)]
    pub two_sided: bool,
    /// Largest error one feature may add to a score, in units of its training error.
    #[arg(long, default_value_t = TrainConfig::default().error_cap)]
    pub error_cap: f32,
    /// Denoising: Gaussian noise of this standard deviation on the standardised inputs
    /// while training (the target stays the clean row). 0: off.
    #[arg(long, default_value_t = TrainConfig::default().input_noise)]
    pub input_noise: f32,
    /// Early stopping: keep each member's epoch with the lowest loss on the validation
    /// period's legitimate rows, stopping after this many epochs without a better one.
    /// 0: keep the last epoch.
    #[arg(long, default_value_t = TrainConfig::default().patience)]
    pub patience: usize,
    /// How features are scaled before the network: by median and interquartile range
    /// (robust: a few extreme amounts do not squeeze the other rows together; the
    /// steadier recipe across seeds, BENCHMARKS.md), or by mean and standard deviation.
    #[arg(long, value_enum, default_value_t = Scaling::Robust)]
    pub scaling: Scaling,
    /// How the ensemble's members' per-feature errors combine: their mean, or their
    /// minimum (a feature counts only where no member reconstructs it).
    #[arg(long, value_enum, default_value_t = Combine::Mean)]
    pub combine: Combine,
    /// How many of the --ensemble members (the last ones) also see the amount against its
    /// category's, an input the model derives inside its graph (log_amt standardised by
    /// its cat_* category's mean and spread on the training rows; features.sql is
    /// unchanged). Default: half of them, which measured steadier than all or none
    /// (BENCHMARKS.md, "Model quality"); none with --combine min. 0: none.
    #[arg(long)]
    pub amount_by_category_members: Option<usize>,
    /// Units of the code of those members (the others have --code): with the derived
    /// input a 2-unit code measured better than 3 (BENCHMARKS.md).
    #[arg(long, default_value_t = 2)]
    pub amount_by_category_code: usize,
    /// What to train: the autoencoder (unsupervised, legitimate rows only), or
    /// gradient-boosted trees on the `is_fraud` labels (needs both classes).
    #[arg(long, value_enum, default_value_t = ModelKind::Autoencoder)]
    pub model: ModelKind,
    /// Trees: boosting rounds.
    #[arg(long, default_value_t = BoostConfig::default().iterations)]
    pub trees: usize,
    /// Trees: depth of each tree.
    #[arg(long, default_value_t = BoostConfig::default().max_depth)]
    pub max_depth: usize,
    /// Trees: shrinkage of each tree's leaves.
    #[arg(long, default_value_t = BoostConfig::default().learning_rate)]
    pub tree_learning_rate: f32,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scaling {
    Robust,
    Standard,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combine {
    Mean,
    Min,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    Autoencoder,
    Trees,
}

/// Features of `inputs`, computed by sql/features.sql, in event-time order.
async fn features_of(inputs: &[PathBuf]) -> anyhow::Result<(Vec<String>, Vec<RecordBatch>)> {
    let ctx = scoring::new_session(None, SessionOptions::default())?;
    scoring::register_files(&ctx, scoring::TRANSACTIONS, inputs).await?;
    scoring::install_views(&ctx, None).await?;
    let names = scoring::feature_names(&ctx).await?;
    let batches = ctx
        .sql("SELECT * FROM features ORDER BY trans_date_trans_time, trans_num")
        .await?
        .collect()
        .await?;
    Ok((names, batches))
}

/// The event times of a batch of the features view, in microseconds.
fn event_times(batch: &RecordBatch) -> anyhow::Result<arrow::array::TimestampMicrosecondArray> {
    let times = cast(
        batch
            .column_by_name("trans_date_trans_time")
            .context("time")?,
        &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
    )?;
    Ok(times.as_primitive::<TimestampMicrosecondType>().clone())
}

/// The event times of the feature batches' rows, in microseconds, in order.
fn event_micros(batches: &[RecordBatch]) -> anyhow::Result<Vec<i64>> {
    let mut micros = Vec::new();
    for batch in batches {
        micros.extend(event_times(batch)?.values());
    }
    Ok(micros)
}

/// The first row at or after `cut` whose event second differs from the row before it
/// (`micros` in event-time order): where a held-out period can start without sharing a
/// second with the training rows. `micros.len()` when the rest share the cut's second.
fn time_boundary(micros: &[i64], cut: usize) -> usize {
    let second = |i: usize| micros[i].div_euclid(1_000_000);
    let mut at = cut.min(micros.len());
    while at > 0 && at < micros.len() && second(at) == second(at - 1) {
        at += 1;
    }
    at
}

/// Rows `range` of the feature batches as a training period, with the model inputs
/// `names` (columns of the features view, taken by name) in that order.
fn period(
    batches: &[RecordBatch],
    names: &[String],
    range: std::ops::Range<usize>,
) -> anyhow::Result<Period> {
    let schema = batches.first().map(|b| b.schema()).context("no rows")?;
    let all = arrow::compute::concat_batches(&schema, batches)?.slice(range.start, range.len());
    let rows = all.num_rows();
    let data = feature_matrix(&all, names)?;
    let fraud = cast(
        all.column_by_name("is_fraud").context("is_fraud")?,
        &DataType::Int32,
    )?;
    let labels = fraud
        .as_primitive::<Int32Type>()
        .iter()
        .map(|v| v == Some(1))
        .collect();
    let trans_nums = cast(
        all.column_by_name("trans_num").context("trans_num")?,
        &DataType::Utf8,
    )?;
    let trans_nums = trans_nums
        .as_string::<i32>()
        .iter()
        .map(|s| s.unwrap_or_default().to_string())
        .collect();
    let times = event_times(&all)?;
    let text = |i: usize| risksense_common::time::event_time_text(times.value(i));
    let span = if rows > 0 {
        (text(0), text(rows - 1))
    } else {
        Default::default()
    };
    Ok(Period {
        features: Matrix::new(rows, names.len(), data)?,
        labels,
        trans_nums,
        span,
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = super::runtime()?;
    let started = std::time::Instant::now();
    let (names, batches) = runtime
        .block_on(features_of(&args.input))
        .context("computing features of the training data")?;
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let (train, validation) = if args.validation.is_empty() {
        let share = ((total as f64) * (1.0 - args.validation_share)).round() as usize;
        // The held-out period starts at a new second: none is split between the two.
        let cut = time_boundary(&event_micros(&batches)?, share);
        anyhow::ensure!(
            cut > 0 && cut < total,
            "--validation-share {} of {total} rows leaves no rows to {} (give --validation \
             or another share)",
            args.validation_share,
            if cut == 0 { "train on" } else { "hold out" }
        );
        (
            period(&batches, &names, 0..cut)?,
            period(&batches, &names, cut..total)?,
        )
    } else {
        let (valid_names, valid_batches) = runtime
            .block_on(features_of(&args.validation))
            .context("computing features of the validation data")?;
        anyhow::ensure!(
            valid_names == names,
            "validation features differ from training features"
        );
        let valid_total = valid_batches.iter().map(|b| b.num_rows()).sum();
        (
            period(&batches, &names, 0..total)?,
            period(&valid_batches, &names, 0..valid_total)?,
        )
    };
    eprintln!(
        "features: {} columns; training {} rows ({} .. {}), validation {} rows ({} .. {}) [{:.1} s]",
        names.len(),
        super::thousands(train.features.rows as u64),
        train.span.0,
        train.span.1,
        super::thousands(validation.features.rows as u64),
        validation.span.0,
        validation.span.1,
        started.elapsed().as_secs_f64()
    );
    let name = args
        .out
        .file_name()
        .map_or_else(|| "model".to_string(), |n| n.to_string_lossy().to_string());
    let error_sides = error_side::sides_for(&names, args.two_sided, &args.error_side)
        .map_err(anyhow::Error::msg)?;
    let info = RunInfo {
        name,
        feature_names: names,
        inputs: args.input.iter().map(|p| p.display().to_string()).collect(),
        alert_rate: args.alert_rate,
        ensemble: args.ensemble,
        config: TrainConfig {
            hidden: args.hidden,
            code: args.code,
            epochs: args.epochs,
            batch_size: args.batch_size,
            learning_rate: args.learning_rate,
            seed: args.seed,
            error_cap: args.error_cap,
            input_noise: args.input_noise,
            patience: args.patience,
            robust_scaling: args.scaling == Scaling::Robust,
            combination: match args.combine {
                Combine::Mean => risksense_trainer::Combination::Mean,
                Combine::Min => risksense_trainer::Combination::Min,
            },
        },
        // Members combined by their minimum must all see it or none (the pipeline refuses
        // a mix): none, unless asked.
        amount_by_category_members: args.amount_by_category_members.unwrap_or(
            if args.combine == Combine::Min {
                0
            } else {
                args.ensemble / 2
            },
        ),
        amount_by_category_code: args.amount_by_category_code,
        candidate_seeds: args.candidate_seeds.clone(),
        error_sides,
    };
    if args.model == ModelKind::Trees {
        anyhow::ensure!(
            args.candidate_seeds.is_empty(),
            "--candidate-seeds chooses among autoencoders; the trees take one --seed"
        );
        anyhow::ensure!(
            args.error_side.is_empty() && !args.two_sided,
            "--error-side and --two-sided say how an autoencoder's reconstruction errors \
             count; the trees have none"
        );
        let boost = BoostConfig {
            iterations: args.trees,
            learning_rate: args.tree_learning_rate,
            max_depth: args.max_depth,
            seed: args.seed,
            ..BoostConfig::default()
        };
        let outcome = train_trees_and_export(&train, &validation, &info, &boost, &args.out)
            .context("training the trees")?;
        let card = &outcome.card;
        eprintln!(
            "trained {} trees in {:.1} s: log loss {:.4}, validation {:.4}; threshold {:.4}",
            outcome.ensemble.trees.len(),
            started.elapsed().as_secs_f64(),
            card.training.final_train_loss,
            card.training.final_validation_loss,
            card.threshold
        );
        eprintln!(
            "ONNX Runtime vs the reference trees: max |diff| {:.2e}",
            outcome.onnx_max_abs_diff
        );
        report_validation(card);
        eprintln!("wrote {}/model.onnx and model.json", args.out.display());
        return Ok(());
    }
    anyhow::ensure!(
        args.card_weight.is_finite() && args.card_weight >= 0.0,
        "--card-weight must be a number at least 0, not {}",
        args.card_weight
    );
    let runs = args.ensemble.max(1) * args.candidate_seeds.len().max(1);
    let bar = super::progress(Some((args.epochs * runs) as u64), "epochs");
    let outcome = train_and_export(&train, &validation, &info, &args.out, |restart, report| {
        bar.set_position((restart * report.epochs + report.epoch) as u64);
        bar.set_message(format!(
            "model {} loss {:.4} (validation {:.4})",
            restart + 1,
            report.train_loss,
            report.validation_loss
        ));
    })
    .context("training")?;
    bar.finish_and_clear();
    let mut card = outcome.card;
    if args.card_weight > 0.0 {
        // The validation period as the stream scores it: the same SQL over its rows, each
        // card's history from its first row there (as its features).
        let (inputs, from) = if args.validation.is_empty() {
            (&args.input, Some(validation.span.0.clone()))
        } else {
            (&args.validation, None)
        };
        card = runtime
            .block_on(calibrate_card_scores(
                card,
                &args.out,
                inputs,
                from.as_deref(),
                args.card_weight,
                args.alert_rate,
            ))
            .context("calibrating the alert rule over the card's recent scores")?;
    }
    let card = &card;
    eprintln!(
        "trained in {:.1} s: loss {:.4}, validation loss {:.4}; threshold {:.4} ({})",
        started.elapsed().as_secs_f64(),
        card.training.final_train_loss,
        card.training.final_validation_loss,
        card.threshold,
        card.threshold_rule
    );
    eprintln!(
        "ONNX Runtime vs candle scores: max |diff| {:.2e}",
        outcome.onnx_max_abs_diff
    );
    if !card.training.error_sides.is_empty() {
        let sides: Vec<String> = card
            .training
            .error_sides
            .iter()
            .map(|(input, side)| format!("{input} {side}"))
            .collect();
        eprintln!(
            "errors counted on one side of the reconstruction only: {}",
            sides.join(", ")
        );
    }
    if let Some(selection) = &card.training.seed_selection {
        for c in &selection.candidates {
            eprintln!(
                "candidate seed {:>6}: training rows ROC-AUC {:.4}, PR-AUC {:.4}{}{}",
                c.seed,
                c.train_roc_auc,
                c.train_pr_auc,
                c.validation
                    .as_ref()
                    .map_or(String::new(), |m| format!("; validation {}", quality(m))),
                if c.seed == card.training.seed {
                    " (kept)"
                } else {
                    ""
                }
            );
        }
    }
    report_validation(card);
    if let Some(rule) = &card.card_scores {
        eprint!(
            "with the card's recent scores (weight {}): threshold {:.4}",
            rule.weight, rule.threshold
        );
        match &rule.validation {
            Some(m) => eprintln!("; {}", quality(m)),
            None => eprintln!(),
        }
    }
    eprintln!("wrote {}/model.onnx and model.json", args.out.display());
    Ok(())
}

/// Adds the rule over the card's recent scores to the card in `out` (see
/// `risksense_trainer::pipeline::card_scores_rule`): scores the rows of `inputs` from
/// `from` on (all without) with sql/score.sql and the model, weight `weight` and no
/// threshold yet, and sets the threshold where `alert_rate` of them alert.
async fn calibrate_card_scores(
    mut card: ModelCard,
    out: &Path,
    inputs: &[PathBuf],
    from: Option<&str>,
    weight: f64,
    alert_rate: f64,
) -> anyhow::Result<ModelCard> {
    let without_rule = card.clone();
    // A provisional rule lets the model load (JSON has no infinity); the threshold
    // comes from what it scores.
    card.card_scores = Some(CardScores {
        weight,
        threshold: 0.0,
        threshold_rule: String::new(),
        validation: None,
    });
    card.write(out)?;
    match scored_alerts(out, inputs, from).await {
        Ok((scores, labels)) if !scores.is_empty() => {
            card.card_scores = Some(card_scores_rule(weight, &scores, &labels, alert_rate));
            card.write(out)?;
            Ok(card)
        }
        failed => {
            // Never leave the provisional rule (threshold 0: every row alerts) behind.
            without_rule.write(out)?;
            match failed {
                Err(e) => Err(e),
                Ok(_) => anyhow::bail!("the validation period has no rows to calibrate on"),
            }
        }
    }
}

/// The alert scores (the finite ones) and labels of the rows of `inputs` from `from` on
/// (all without), as sql/score.sql computes them with the model in `out`.
async fn scored_alerts(
    out: &Path,
    inputs: &[PathBuf],
    from: Option<&str>,
) -> anyhow::Result<(Vec<f64>, Vec<bool>)> {
    let model = Arc::new(Model::load(out, risksense_udfs::SessionOptions::default())?);
    let ctx = scoring::new_session(Some(model.clone()), SessionOptions::default())?;
    scoring::register_files(&ctx, scoring::TRANSACTIONS, inputs).await?;
    scoring::install_views(&ctx, Some(&model)).await?;
    let filter = match from {
        Some(from) => format!("WHERE trans_date_trans_time >= CAST('{from}' AS TIMESTAMP)"),
        None => String::new(),
    };
    let batches = ctx
        .sql(&format!(
            "SELECT alert_score, is_fraud FROM scored {filter}"
        ))
        .await?
        .collect()
        .await?;
    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    for batch in &batches {
        let alert = cast(batch.column(0), &DataType::Float64)?;
        let fraud = cast(batch.column(1), &DataType::Int32)?;
        let pairs = alert
            .as_primitive::<Float64Type>()
            .iter()
            .zip(fraud.as_primitive::<Int32Type>().iter());
        for (score, fraud) in pairs {
            if let Some(score) = score.filter(|s| s.is_finite()) {
                scores.push(score);
                labels.push(fraud == Some(1));
            }
        }
    }
    Ok((scores, labels))
}

fn report_validation(card: &risksense_udfs::model::ModelCard) {
    if let Some(m) = &card.validation {
        eprintln!(
            "validation ({} rows, {} frauds): {}",
            m.rows,
            m.frauds,
            quality(m)
        );
    }
}

/// ROC-AUC, PR-AUC, recall and precision at the alert rate, for the training report.
fn quality(m: &risksense_udfs::model::Metrics) -> String {
    format!(
        "ROC-AUC {:.4}, PR-AUC {:.4}, recall {:.3} / precision {:.3} at a {:.1} % alert rate",
        m.roc_auc,
        m.pr_auc,
        m.recall_at_alert_rate,
        m.precision_at_alert_rate,
        m.alert_rate * 100.0
    )
}

#[cfg(test)]
mod tests {
    use super::time_boundary;

    #[test]
    fn the_held_out_period_starts_at_a_new_second() {
        let s = 1_000_000;
        // Seconds 10, 11, 11, 11 (one at half past), 12, 13.
        let micros = [10 * s, 11 * s, 11 * s, 11 * s + s / 2, 12 * s, 13 * s];
        assert_eq!(time_boundary(&micros, 1), 1, "already at a new second");
        assert_eq!(time_boundary(&micros, 2), 4, "moved past second 11");
        assert_eq!(time_boundary(&micros, 3), 4);
        assert_eq!(time_boundary(&micros, 0), 0);
        assert_eq!(time_boundary(&micros, 6), 6);
        assert_eq!(time_boundary(&micros, 9), 6, "past the end");
        assert_eq!(
            time_boundary(&[5 * s, 5 * s, 5 * s], 1),
            3,
            "one second: all trained"
        );
    }
}
