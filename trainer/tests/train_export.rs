//! Training end to end on synthetic data with known structure: the exported ONNX graph,
//! run by ONNX Runtime, reproduces the trained network and finds the planted anomalies.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use risksense_trainer::pipeline::{Period, RunInfo, train_and_export};
use risksense_trainer::{Matrix, TrainConfig};
use risksense_udfs::{Model, ModelCard, SessionOptions};

const COLS: usize = 6;

/// Normal rows lie near a 2-D plane in 6-D (plus a 0/1 flag column); anomalies are off it.
fn period(rows: usize, anomaly_every: usize, rng: &mut ChaCha8Rng, offset: usize) -> Period {
    let mut data = Vec::with_capacity(rows * COLS);
    let mut labels = Vec::with_capacity(rows);
    for i in 0..rows {
        let (a, b): (f32, f32) = (rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0));
        let noise = |rng: &mut ChaCha8Rng| rng.random_range(-0.02..0.02f32);
        let anomaly = anomaly_every > 0 && i % anomaly_every == 0;
        let mut row = [
            a + noise(rng),
            b + noise(rng),
            a + b + noise(rng),
            a - b + noise(rng),
            2.0 * a + 10.0 + noise(rng),
            f32::from(u8::from(a > 0.0)),
        ];
        if anomaly {
            row[2] += 3.0;
            row[3] -= 3.0;
        }
        data.extend_from_slice(&row);
        labels.push(anomaly);
    }
    Period {
        features: Matrix::new(rows, COLS, data).expect("shape"),
        labels,
        trans_nums: (0..rows).map(|i| format!("t{}", i + offset)).collect(),
        span: ("2019-01-01 00:00:00".into(), "2019-01-31 00:00:00".into()),
    }
}

/// A small network for the synthetic rows (16 hidden units, 2 in the code).
fn small() -> TrainConfig {
    TrainConfig {
        hidden: 16,
        code: 2,
        batch_size: 64,
        learning_rate: 3e-3,
        error_cap: 9.0,
        ..TrainConfig::default()
    }
}

/// A run of an ensemble of two with `config`, calibrated to a 2 % alert rate.
fn run_info(config: TrainConfig) -> RunInfo {
    RunInfo {
        name: "test".to_string(),
        feature_names: (0..COLS).map(|i| format!("f{i}")).collect(),
        inputs: vec!["synthetic".to_string()],
        alert_rate: 0.02,
        config,
        ensemble: 2,
    }
}

#[test]
fn trains_exports_and_onnx_runtime_matches_the_network() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let train = period(4000, 0, &mut rng, 0);
    let validation = period(2000, 50, &mut rng, 10_000);
    let out = std::env::temp_dir().join(format!("risksense-train-test-{}", std::process::id()));
    let info = run_info(TrainConfig {
        epochs: 15,
        seed: 3,
        // Every epoch, mean / standard-deviation scaling (the plain recipe).
        patience: 0,
        robust_scaling: false,
        ..small()
    });
    let mut epochs_seen = 0;
    let outcome = train_and_export(&train, &validation, &info, &out, |_, _| epochs_seen += 1)
        .expect("trains");
    assert_eq!(epochs_seen, 30, "two members of 15 epochs report progress");
    assert!(
        outcome.onnx_max_abs_diff < 1e-4,
        "ONNX vs candle: {}",
        outcome.onnx_max_abs_diff
    );

    let card = ModelCard::read(&out).expect("card written");
    assert_eq!(card, outcome.card);
    assert_eq!(card.features.len(), COLS);
    assert_eq!(card.architecture, vec![COLS, 16, 2, 16, COLS]);
    assert!(
        card.training.final_train_loss < 0.5,
        "did not learn: {}",
        card.training.final_train_loss
    );
    let metrics = card.validation.as_ref().expect("labelled validation");
    assert_eq!(metrics.frauds, 40);
    assert!(
        metrics.roc_auc > 0.95,
        "planted anomalies not found: {metrics:?}"
    );
    assert!(metrics.recall_at_alert_rate > 0.8, "{metrics:?}");

    // The exported model scores the same in a fresh load, and flags the alert rate.
    let model = Model::load(&out, SessionOptions::default()).expect("loads");
    let scores = model
        .score(&validation.features.data, validation.features.rows)
        .expect("scores");
    let flagged = scores
        .iter()
        .filter(|&&s| f64::from(s) >= card.threshold)
        .count();
    assert!(
        (35..=45).contains(&flagged),
        "{flagged} of 2000 flagged at a 2 % alert rate"
    );

    // Same seed, same model.
    let again = train_and_export(&train, &validation, &info, &out.join("again"), |_, _| {})
        .expect("trains");
    assert_eq!(again.card.threshold, outcome.card.threshold);
    assert_eq!(
        again.card.training.data_sha256,
        outcome.card.training.data_sha256
    );
    std::fs::remove_dir_all(&out).ok();
}

/// Denoising, robust scaling, early stopping and the members' minimum together: the kept
/// weights are those of each member's best validation epoch (training stops `patience`
/// epochs after it), the export (its Min over members included) still reproduces them,
/// and the planted anomalies are still found.
#[test]
fn early_stopping_keeps_the_best_epoch_and_denoising_still_finds_the_anomalies() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let train = period(4000, 0, &mut rng, 0);
    let validation = period(2000, 50, &mut rng, 10_000);
    let out = std::env::temp_dir().join(format!("risksense-train-es-{}", std::process::id()));
    let patience = 2;
    let info = run_info(TrainConfig {
        epochs: 60,
        seed: 5,
        input_noise: 0.1,
        patience,
        robust_scaling: true,
        combination: risksense_trainer::Combination::Min,
        ..small()
    });
    let mut losses: Vec<Vec<f64>> = vec![Vec::new(); 2];
    let outcome = train_and_export(&train, &validation, &info, &out, |k, report| {
        losses[k].push(report.validation_loss)
    })
    .expect("trains");
    let mut best = Vec::new();
    for member in &losses {
        let (at, min) = member
            .iter()
            .enumerate()
            .fold(
                (0, f64::INFINITY),
                |acc, (i, &l)| if l < acc.1 { (i, l) } else { acc },
            );
        // Stopped `patience` epochs after the best one, or ran out of epochs.
        assert!(
            member.len() == at + 1 + patience || member.len() == 60,
            "best epoch {} of {}: {member:?}",
            at + 1,
            member.len()
        );
        best.push(min);
    }
    // The card's validation loss is the members' best ones averaged: their weights kept.
    let mean = (best[0] + best[1]) / 2.0;
    assert!(
        (outcome.card.training.final_validation_loss - mean).abs() < 1e-9,
        "{} vs {mean}",
        outcome.card.training.final_validation_loss
    );
    assert!(outcome.card.training.robust_scaling && outcome.card.training.patience == 2);
    assert_eq!(outcome.card.training.combination, "min");
    assert!(
        outcome.onnx_max_abs_diff < 1e-4,
        "{}",
        outcome.onnx_max_abs_diff
    );
    let metrics = outcome
        .card
        .validation
        .as_ref()
        .expect("labelled validation");
    assert!(metrics.roc_auc > 0.95, "{metrics:?}");
    std::fs::remove_dir_all(&out).ok();
}
