//! From feature matrices to a model folder: train, export, score the validation period
//! with ONNX Runtime (the path production uses), calibrate the threshold, write the card.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::TrainError;
use crate::autoencoder::{Autoencoder, Combination, Ensemble, EpochReport, Matrix, TrainConfig};
use crate::category_amount::{self, AmountByCategory};
use crate::error_side::ErrorSide;
use crate::metrics;
use crate::trees::{self, BoostConfig, TreeEnsemble};
use risksense_udfs::model::{
    CardScores, Metrics, ModelCard, PROBABILITY, SeedCandidate, SeedSelection, TrainingInfo,
};
use risksense_udfs::{Model, SessionOptions};

/// Rows of one period: features, fraud labels (if known), identifiers and time.
pub struct Period {
    pub features: Matrix,
    pub labels: Vec<bool>,
    pub trans_nums: Vec<String>,
    /// First and last event time, as text.
    pub span: (String, String),
}

/// Everything about a training run besides the data.
pub struct RunInfo {
    pub name: String,
    pub feature_names: Vec<String>,
    pub inputs: Vec<String>,
    pub alert_rate: f64,
    pub config: TrainConfig,
    /// Autoencoders trained from seeds seed, seed + 1, …, averaged into one model (see
    /// [`crate::autoencoder::Ensemble`]).
    pub ensemble: usize,
    /// How many of them (the last ones) also see the amount against its category's
    /// ([`crate::category_amount`]), where the features have `log_amt` and `cat_*`.
    pub amount_by_category_members: usize,
    /// Units of those members' code (the others have `config.code`): with the derived
    /// input a narrower code measured better (BENCHMARKS.md, "Model quality").
    pub amount_by_category_code: usize,
    /// First seeds of candidate ensembles (empty: `config.seed` alone). With several, each
    /// is trained and the one that ranks the training rows' labelled fraud best is kept:
    /// which seed a small code settles well from is a lottery the training labels can
    /// call without touching the validation period (BENCHMARKS.md, "Model quality").
    pub candidate_seeds: Vec<u64>,
    /// Per feature, which side of its reconstruction its error counts on (see
    /// [`crate::error_side`]; empty: both, for every feature). The derived amount against
    /// its category's takes the amount's side.
    pub error_sides: Vec<ErrorSide>,
}

/// What a finished training run produced.
pub struct Outcome {
    pub card: ModelCard,
    /// Largest difference between ONNX Runtime's and candle's scores on validation rows.
    pub onnx_max_abs_diff: f64,
}

/// Hash of the training rows' identifiers in order: names the data a model saw.
pub fn data_hash(trans_nums: &[String]) -> String {
    let mut hasher = Sha256::new();
    for t in trans_nums {
        hasher.update(t.as_bytes());
        hasher.update(b"\n");
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The members' layer sizes when they differ (" (4 × 30-64-3-64-30, 4 × 31-64-2-64-31)"),
/// else nothing: the card's `architecture` is the widest member's.
fn member_shapes(ensemble: &Ensemble) -> String {
    let mut shapes: Vec<(Vec<usize>, usize)> = Vec::new();
    for member in &ensemble.members {
        let shape = member.architecture();
        match shapes.iter_mut().find(|(s, _)| *s == shape) {
            Some((_, n)) => *n += 1,
            None => shapes.push((shape, 1)),
        }
    }
    if shapes.len() < 2 {
        return String::new();
    }
    let each: Vec<String> = shapes
        .iter()
        .map(|(shape, n)| {
            let sizes: Vec<String> = shape.iter().map(usize::to_string).collect();
            format!("{n} × {}", sizes.join("-"))
        })
        .collect();
    format!(" ({})", each.join(", "))
}

/// Keeps the legitimate rows (an autoencoder learns what normal looks like).
pub fn legitimate_rows(period: &Period) -> Matrix {
    let cols = period.features.cols;
    let mut data = Vec::with_capacity(period.features.data.len());
    let mut rows = 0;
    for (i, &fraud) in period.labels.iter().enumerate() {
        if !fraud {
            data.extend_from_slice(period.features.row(i));
            rows += 1;
        }
    }
    Matrix { rows, cols, data }
}

pub fn train_and_export(
    train: &Period,
    validation: &Period,
    info: &RunInfo,
    out_dir: &Path,
    mut on_epoch: impl FnMut(usize, EpochReport),
) -> Result<Outcome, TrainError> {
    let mut sides = if info.error_sides.is_empty() {
        vec![ErrorSide::Both; info.feature_names.len()]
    } else {
        info.error_sides.clone()
    };
    if sides.len() != info.feature_names.len() {
        return Err(TrainError::Config(format!(
            "{} error sides for {} features",
            sides.len(),
            info.feature_names.len()
        )));
    }
    let train_rows = legitimate_rows(train);
    let valid_rows = legitimate_rows(validation);
    let count = info.ensemble.max(1);
    let derived_members = info.amount_by_category_members;
    if derived_members > count {
        return Err(TrainError::Config(format!(
            "{derived_members} members with the amount against its category's, of an ensemble \
             of {count}"
        )));
    }
    let amount_by_category = if derived_members > 0 {
        AmountByCategory::fit(&train_rows, &info.feature_names)?
    } else {
        None
    };
    if derived_members > 0 && amount_by_category.is_none() {
        tracing::warn!(
            "the features have no `{}` or no `{}*` columns: no member sees the amount against \
             its category's",
            category_amount::AMOUNT,
            category_amount::CATEGORY_PREFIX
        );
    }
    let mut derived_inputs = Vec::new();
    // Rows with the derived column, for the members that see it.
    let mut augmented = None;
    if let Some(derived) = &amount_by_category {
        if derived_members < count && info.config.combination == Combination::Min {
            return Err(TrainError::Config(
                "members combined by their minimum must all see the amount against its \
                 category's or none: the others' 0 for it would always be the minimum"
                    .to_string(),
            ));
        }
        augmented = Some((derived.augment(&train_rows), derived.augment(&valid_rows)));
        derived_inputs.push(format!(
            "{}: ({} - its category's mean) / its standard deviation over the training rows \
             ({} categories), seen by {derived_members} of {count} members",
            category_amount::NAME,
            category_amount::AMOUNT,
            derived.categories.len()
        ));
    }
    if let Some(derived) = &amount_by_category {
        sides.push(sides[derived.amount]);
    }
    let mut error_sides = std::collections::BTreeMap::new();
    let derived_name = category_amount::NAME.to_string();
    for (name, side) in info.feature_names.iter().chain([&derived_name]).zip(&sides) {
        if *side != ErrorSide::Both {
            error_sides.insert(name.clone(), side.to_string());
        }
    }
    let seeds = if info.candidate_seeds.is_empty() {
        vec![info.config.seed]
    } else {
        info.candidate_seeds.clone()
    };
    for (i, seed) in seeds.iter().enumerate() {
        if seeds[..i].contains(seed) {
            return Err(TrainError::Config(format!(
                "candidate seed {seed} is given twice"
            )));
        }
    }
    if seeds.len() > 1 && !(train.labels.contains(&true) && train.labels.contains(&false)) {
        return Err(TrainError::Config(
            "choosing among candidate seeds ranks each candidate's scores of the training \
             rows against their is_fraud labels, and these do not hold both classes: train \
             with one --seed"
                .to_string(),
        ));
    }
    let mut kept: Option<(Ensemble, EpochReport, u64, f64)> = None;
    let mut candidates = Vec::new();
    for (c, &seed) in seeds.iter().enumerate() {
        let (mut ensemble, last) = train_ensemble(
            (&train_rows, &valid_rows),
            augmented.as_ref(),
            &amount_by_category,
            info,
            seed,
            |k, report| on_epoch(c * count + k, report),
        )?;
        ensemble.set_error_sides(&sides)?;
        if seeds.len() == 1 {
            kept = Some((ensemble, last, seed, 0.0));
            break;
        }
        // The training period's labels choose: they never enter the fit (legitimate rows
        // only), and the validation period stays for the threshold and the measurement.
        let scores = ensemble.scores(&train.features)?;
        let valid_scores = ensemble.scores(&validation.features)?;
        let candidate = SeedCandidate {
            seed,
            train_roc_auc: metrics::roc_auc(&scores, &train.labels),
            train_pr_auc: metrics::average_precision(&scores, &train.labels),
            validation: metrics_at_rate(&valid_scores, validation, info.alert_rate),
        };
        tracing::info!(
            seed,
            train_pr_auc = candidate.train_pr_auc,
            train_roc_auc = candidate.train_roc_auc,
            "candidate trained"
        );
        if kept
            .as_ref()
            .is_none_or(|(.., best)| candidate.train_pr_auc > *best)
        {
            kept = Some((ensemble, last, seed, candidate.train_pr_auc));
        }
        candidates.push(candidate);
    }
    let (autoencoder, last, seed, _) =
        kept.ok_or_else(|| TrainError::NoData("no candidate seed".to_string()))?;
    let seed_selection = (seeds.len() > 1).then(|| SeedSelection {
        rule: "the candidate whose scores of the training rows have the highest PR-AUC \
               against their is_fraud labels (labels not used in fitting)"
            .to_string(),
        candidates,
    });
    std::fs::create_dir_all(out_dir)?;
    std::fs::write(out_dir.join("model.onnx"), autoencoder.to_onnx(&info.name)?)?;

    // A provisional card lets ONNX Runtime load the model; the threshold comes next.
    let mut card = ModelCard {
        name: info.name.clone(),
        kind: format!(
            "ensemble of {} dense autoencoders{}, {} scaled reconstruction error{}",
            count,
            member_shapes(&autoencoder),
            info.config.combination,
            match error_sides.len() {
                0 => String::new(),
                1 => " (one-sided for 1 input)".to_string(),
                n => format!(" (one-sided for {n} inputs)"),
            }
        ),
        features: info.feature_names.clone(),
        threshold: f64::INFINITY,
        threshold_rule: String::new(),
        architecture: autoencoder.architecture(),
        training: TrainingInfo {
            inputs: info.inputs.clone(),
            period: train.span.clone(),
            validation_period: validation.span.clone(),
            train_rows: train_rows.rows as u64,
            validation_rows: validation.features.rows as u64,
            data_sha256: data_hash(&train.trans_nums),
            epochs: info.config.epochs,
            batch_size: info.config.batch_size,
            learning_rate: info.config.learning_rate,
            seed,
            ensemble: info.ensemble.max(1),
            error_cap: info.config.error_cap,
            final_train_loss: last.train_loss,
            final_validation_loss: last.validation_loss,
            framework: "candle 0.11 (autodiff, AdamW with no weight decay = Adam)".to_string(),
            input_noise: info.config.input_noise,
            patience: info.config.patience,
            robust_scaling: info.config.robust_scaling,
            combination: info.config.combination.to_string(),
            derived_inputs,
            seed_selection,
            error_sides,
        },
        validation: None,
        created_at: String::new(),
        card_scores: None,
    };
    card.threshold = 0.0;
    card.write(out_dir)?;

    let model = Model::load(out_dir, SessionOptions::default())?;
    let scores = model.score(&validation.features.data, validation.features.rows)?;
    let reference = autoencoder.scores(&validation.features)?;
    let onnx_max_abs_diff = scores
        .iter()
        .zip(&reference)
        .map(|(a, b)| f64::from((a - b).abs()))
        .fold(0.0, f64::max);

    card.threshold = metrics::threshold_for_alert_rate(&scores, info.alert_rate);
    card.threshold_rule = format!(
        "the score above which {:.2} % of the validation period's transactions fall \
         (target alert rate; labels not used)",
        info.alert_rate * 100.0
    );
    card.validation = validation_metrics(&scores, validation, card.threshold, info.alert_rate);
    card.created_at = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    card.write(out_dir)?;
    Ok(Outcome {
        card,
        onnx_max_abs_diff,
    })
}

/// The alert rule over the card's recent scores (see [`CardScores`]) for `weight`, given
/// the alert scores of the validation period's rows (`score + weight × card_score`, as
/// sql/score.sql computes them) and their labels (empty: none): the threshold at which
/// `alert_rate` of the rows alert, and the rule's metrics where there are frauds.
pub fn card_scores_rule(
    weight: f64,
    alert_scores: &[f64],
    labels: &[bool],
    alert_rate: f64,
) -> CardScores {
    let threshold = metrics::threshold_for_alert_rate(alert_scores, alert_rate);
    let frauds = labels.iter().filter(|&&l| l).count();
    let validation = (frauds > 0 && labels.len() == alert_scores.len()).then(|| {
        // The ranking metrics take f32 scores: ties from the rounding are rare and count
        // half; the flags compare the f64 scores, as the SQL does.
        let ranked: Vec<f32> = alert_scores.iter().map(|&s| s as f32).collect();
        let (recall, precision) = metrics::recall_precision_at(alert_scores, labels, threshold);
        Metrics {
            rows: alert_scores.len() as u64,
            frauds: frauds as u64,
            roc_auc: metrics::roc_auc(&ranked, labels),
            pr_auc: metrics::average_precision(&ranked, labels),
            recall_at_alert_rate: recall,
            precision_at_alert_rate: precision,
            alert_rate,
        }
    });
    CardScores {
        weight,
        threshold,
        threshold_rule: format!(
            "the alert score (score + {weight} × the card's mean score over its last 24 hours) \
             above which {:.2} % of the validation period's transactions fall (labels not \
             used)",
            alert_rate * 100.0
        ),
        validation,
    }
}

/// One ensemble from consecutive seeds starting at `seed`: the last members see the
/// derived amount against its category's when `augmented` holds those rows. Returns it
/// with the members' mean final losses.
fn train_ensemble(
    (train_rows, valid_rows): (&Matrix, &Matrix),
    augmented: Option<&(Matrix, Matrix)>,
    amount_by_category: &Option<AmountByCategory>,
    info: &RunInfo,
    seed: u64,
    mut on_epoch: impl FnMut(usize, EpochReport),
) -> Result<(Ensemble, EpochReport), TrainError> {
    let count = info.ensemble.max(1);
    let derived_members = info.amount_by_category_members;
    let mut members = Vec::new();
    let mut last: Option<EpochReport> = None;
    for k in 0..count {
        let mut config = info.config.clone();
        config.seed = seed.wrapping_add(k as u64);
        let (train_rows, valid_rows) = match augmented {
            Some((train, valid)) if k >= count - derived_members => {
                config.code = info.amount_by_category_code;
                (train, valid)
            }
            _ => (train_rows, valid_rows),
        };
        let (member, report) =
            Autoencoder::train(train_rows, valid_rows, config, |r| on_epoch(k, r))?;
        tracing::info!(
            seed = member.config.seed,
            validation_loss = report.validation_loss,
            "member trained"
        );
        let mean = |a: f64, b: f64| (a * k as f64 + b) / (k + 1) as f64;
        last = Some(match last {
            None => report,
            Some(l) => EpochReport {
                train_loss: mean(l.train_loss, report.train_loss),
                validation_loss: mean(l.validation_loss, report.validation_loss),
                ..report
            },
        });
        members.push(member);
    }
    let last = last.ok_or_else(|| TrainError::NoData("no training run".to_string()))?;
    Ok((
        Ensemble {
            members,
            amount_by_category: amount_by_category.clone(),
        },
        last,
    ))
}

/// Quality of `scores` on the validation period at the threshold that alerts on
/// `alert_rate` of its rows (None without frauds).
fn metrics_at_rate(scores: &[f32], validation: &Period, alert_rate: f64) -> Option<Metrics> {
    let threshold = metrics::threshold_for_alert_rate(scores, alert_rate);
    validation_metrics(scores, validation, threshold, alert_rate)
}

/// Quality of `scores` on the validation period at `threshold` (None without frauds).
fn validation_metrics(
    scores: &[f32],
    validation: &Period,
    threshold: f64,
    alert_rate: f64,
) -> Option<Metrics> {
    let frauds = validation.labels.iter().filter(|&&l| l).count();
    (frauds > 0).then(|| {
        let (recall, precision) =
            metrics::recall_precision_at(scores, &validation.labels, threshold);
        Metrics {
            rows: validation.features.rows as u64,
            frauds: frauds as u64,
            roc_auc: metrics::roc_auc(scores, &validation.labels),
            pr_auc: metrics::average_precision(scores, &validation.labels),
            recall_at_alert_rate: recall,
            precision_at_alert_rate: precision,
            alert_rate,
        }
    })
}

/// What a supervised training run produced.
pub struct TreeOutcome {
    pub card: ModelCard,
    pub ensemble: TreeEnsemble,
    /// Largest difference between ONNX Runtime's and the reference trees' probabilities
    /// on the validation rows.
    pub onnx_max_abs_diff: f64,
}

/// Gradient-boosted trees on the labelled training period, exported to ONNX, the
/// validation period scored by ONNX Runtime, the threshold calibrated to the alert rate,
/// the card written. Needs both classes in the training labels.
pub fn train_trees_and_export(
    train: &Period,
    validation: &Period,
    info: &RunInfo,
    boost: &BoostConfig,
    out_dir: &Path,
) -> Result<TreeOutcome, TrainError> {
    let cols = train.features.cols;
    let labels: Vec<f64> = train
        .labels
        .iter()
        .map(|&l| f64::from(u8::from(l)))
        .collect();
    let ensemble = trees::fit_classifier(&train.features.data, cols, &labels, boost)?;
    std::fs::create_dir_all(out_dir)?;
    std::fs::write(
        out_dir.join("model.onnx"),
        ensemble.to_onnx(&info.name, "gradient-boosted trees: probability of fraud")?,
    )?;
    let log_loss = |period: &Period| {
        let rows = period.features.rows.max(1) as f64;
        period
            .features
            .data
            .chunks_exact(cols)
            .zip(&period.labels)
            .map(|(row, &fraud)| {
                let p = ensemble.probability(row).clamp(1e-15, 1.0 - 1e-15);
                -(if fraud { p.ln() } else { (1.0 - p).ln() })
            })
            .sum::<f64>()
            / rows
    };
    // A provisional card lets the serving loader check the graph; the threshold and the
    // validation quality come from its scores next.
    let mut card = ModelCard {
        name: info.name.clone(),
        kind: format!(
            "{} gradient-boosted trees (log loss): probability of fraud",
            ensemble.trees.len()
        ),
        features: info.feature_names.clone(),
        threshold: 0.0,
        threshold_rule: String::new(),
        architecture: vec![cols, ensemble.trees.len(), boost.max_depth],
        training: TrainingInfo {
            inputs: info.inputs.clone(),
            period: train.span.clone(),
            validation_period: validation.span.clone(),
            train_rows: train.features.rows as u64,
            validation_rows: validation.features.rows as u64,
            data_sha256: data_hash(&train.trans_nums),
            // Boosting rounds.
            epochs: boost.iterations,
            batch_size: 0,
            learning_rate: f64::from(boost.learning_rate),
            seed: boost.seed,
            ensemble: 1,
            error_cap: 0.0,
            final_train_loss: log_loss(train),
            final_validation_loss: log_loss(validation),
            framework: "forust-ml 0.8 (histogram gradient boosting)".to_string(),
            input_noise: 0.0,
            patience: 0,
            robust_scaling: false,
            combination: String::new(),
            derived_inputs: Vec::new(),
            seed_selection: None,
            error_sides: Default::default(),
        },
        validation: None,
        created_at: String::new(),
        card_scores: None,
    };
    card.write(out_dir)?;

    // Scored as `fraud_probability` will score them: the serving loader and session pool.
    let model = Model::load_supervised(out_dir, SessionOptions::default())?;
    let scores = model.run(
        &validation.features.data,
        validation.features.rows,
        PROBABILITY,
    )?;
    let onnx_max_abs_diff = scores
        .iter()
        .zip(validation.features.data.chunks_exact(cols))
        .map(|(a, row)| (f64::from(*a) - ensemble.probability(row)).abs())
        .fold(0.0, f64::max);
    card.threshold = metrics::threshold_for_alert_rate(&scores, info.alert_rate);
    card.threshold_rule = format!(
        "the probability above which {:.2} % of the validation period's transactions fall \
         (target alert rate)",
        info.alert_rate * 100.0
    );
    card.validation = validation_metrics(&scores, validation, card.threshold, info.alert_rate);
    card.created_at = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    card.write(out_dir)?;
    Ok(TreeOutcome {
        card,
        ensemble,
        onnx_max_abs_diff,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_card_rule_alerts_on_the_alert_rate_and_measures_itself() {
        // 200 rows: alert scores 0..199, the frauds the top three and one low row.
        let scores: Vec<f64> = (0..200).map(f64::from).collect();
        let labels: Vec<bool> = (0..200).map(|i| i >= 197 || i == 10).collect();
        let rule = card_scores_rule(1.5, &scores, &labels, 0.02);
        // 2 % of 200 rows: the four highest alert, 196 and above.
        assert_eq!(rule.threshold, 196.0);
        assert_eq!(rule.weight, 1.5);
        let m = rule.validation.expect("labelled");
        assert_eq!((m.rows, m.frauds), (200, 4));
        assert_eq!(
            (m.recall_at_alert_rate, m.precision_at_alert_rate),
            (0.75, 0.75)
        );
        // Three frauds above all 196 legitimate rows, one above ten of them.
        assert_eq!(m.roc_auc, (3.0 * 196.0 + 10.0) / (4.0 * 196.0));
        // Without labels: the threshold alone.
        let unlabelled = card_scores_rule(1.0, &scores, &[], 0.02);
        assert_eq!(unlabelled.threshold, 196.0);
        assert!(unlabelled.validation.is_none());
    }
}
