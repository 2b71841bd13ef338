//! From feature matrices to a model folder: train, export, score the validation period
//! with ONNX Runtime (the path production uses), calibrate the threshold, write the card.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::TrainError;
use crate::autoencoder::{Autoencoder, EpochReport, Matrix, TrainConfig};
use crate::metrics;
use risksense_udfs::model::{Metrics, ModelCard, TrainingInfo};
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
    /// Trainings from different seeds (seed, seed + 1, …); the one with the lowest
    /// validation loss is kept. Small bottlenecks settle in different minima, and the
    /// lower reconstruction loss is the better detector; no labels are used to choose.
    pub restarts: usize,
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
    let train_rows = legitimate_rows(train);
    let valid_rows = legitimate_rows(validation);
    let mut best: Option<(Autoencoder, EpochReport)> = None;
    for restart in 0..info.restarts.max(1) {
        let mut config = info.config.clone();
        config.seed = info.config.seed.wrapping_add(restart as u64);
        let (candidate, report) =
            Autoencoder::train(&train_rows, &valid_rows, config, |r| on_epoch(restart, r))?;
        tracing::info!(
            seed = candidate.config.seed,
            validation_loss = report.validation_loss,
            "restart done"
        );
        if best
            .as_ref()
            .is_none_or(|(_, b)| report.validation_loss < b.validation_loss)
        {
            best = Some((candidate, report));
        }
    }
    let (autoencoder, last) =
        best.ok_or_else(|| TrainError::NoData("no training run".to_string()))?;

    std::fs::create_dir_all(out_dir)?;
    std::fs::write(out_dir.join("model.onnx"), autoencoder.to_onnx(&info.name)?)?;

    // A provisional card lets ONNX Runtime load the model; the threshold comes next.
    let mut card = ModelCard {
        name: info.name.clone(),
        kind: "dense autoencoder, reconstruction error".to_string(),
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
            seed: autoencoder.config.seed,
            restarts: info.restarts.max(1),
            error_cap: autoencoder.config.error_cap,
            final_train_loss: last.train_loss,
            final_validation_loss: last.validation_loss,
            framework: "candle 0.11 (autodiff, AdamW with no weight decay = Adam)".to_string(),
        },
        validation: None,
        created_at: String::new(),
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
    let frauds = validation.labels.iter().filter(|&&l| l).count();
    if frauds > 0 {
        let (recall, precision) =
            metrics::recall_precision_at(&scores, &validation.labels, card.threshold);
        card.validation = Some(Metrics {
            rows: validation.features.rows as u64,
            frauds: frauds as u64,
            roc_auc: metrics::roc_auc(&scores, &validation.labels),
            pr_auc: metrics::average_precision(&scores, &validation.labels),
            recall_at_alert_rate: recall,
            precision_at_alert_rate: precision,
            alert_rate: info.alert_rate,
        });
    }
    card.created_at = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    card.write(out_dir)?;
    Ok(Outcome {
        card,
        onnx_max_abs_diff,
    })
}
