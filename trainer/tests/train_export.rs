//! Training end to end on synthetic data with known structure: the exported ONNX graph,
//! run by ONNX Runtime, reproduces the trained network and finds the planted anomalies.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use risksense_trainer::pipeline::{Period, RunInfo, train_and_export};
use risksense_trainer::{Matrix, TrainConfig, TrainError, metrics};
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

/// The model in `dir` run by ONNX Runtime over `period`: its `score`, `feature_error` and
/// `output`.
fn score_errors_output(dir: &std::path::Path, period: &Period) -> [Vec<f32>; 3] {
    let model = Model::load(dir, SessionOptions::default()).expect("loads");
    model
        .run_outputs(
            &period.features.data,
            period.features.rows,
            [
                risksense_udfs::model::SCORE,
                risksense_udfs::model::FEATURE_ERROR,
                risksense_udfs::model::OUTPUT,
            ],
        )
        .expect("runs")
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
        amount_by_category_members: 1,
        amount_by_category_code: 2,
        candidate_seeds: Vec::new(),
        error_sides: Vec::new(),
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

/// Several candidate seeds: each candidate ensemble is ranked by its scores of the training
/// rows against their labels and the best kept (its seed on the card, every candidate's
/// figures beside it); the kept model is the one its seed alone trains; training labels
/// without fraud are refused before anything is trained.
#[test]
fn candidate_seeds_keep_the_ensemble_that_ranks_the_training_labels_best() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let mut train = period(3000, 40, &mut rng, 0);
    // Anomalies barely off the plane (0.3 against the rows' noise of 0.02), so that how
    // well a briefly trained candidate ranks them depends on its seed.
    for (i, &anomaly) in train.labels.iter().enumerate() {
        if anomaly {
            train.features.data[i * COLS + 2] -= 2.7;
            train.features.data[i * COLS + 3] += 2.7;
        }
    }
    let validation = period(1000, 50, &mut rng, 10_000);
    let out = std::env::temp_dir().join(format!("risksense-train-seeds-{}", std::process::id()));
    let config = TrainConfig {
        epochs: 3,
        patience: 0,
        ..small()
    };
    let info = |seed, candidate_seeds| RunInfo {
        ensemble: 2,
        amount_by_category_members: 0,
        candidate_seeds,
        ..run_info(TrainConfig {
            seed,
            ..config.clone()
        })
    };
    let mut runs = std::collections::BTreeSet::new();
    let outcome = train_and_export(
        &train,
        &validation,
        // The best of these is neither the first nor the last (checked below).
        &info(0, vec![11, 19, 3]),
        &out,
        |run, _| {
            runs.insert(run);
        },
    )
    .expect("trains");
    // Each candidate's two members report progress as runs of their own.
    assert_eq!(
        runs.into_iter().collect::<Vec<_>>(),
        (0..6).collect::<Vec<_>>()
    );
    let selection = outcome
        .card
        .training
        .seed_selection
        .as_ref()
        .expect("the choice is on the card");
    let seeds: Vec<u64> = selection.candidates.iter().map(|c| c.seed).collect();
    assert_eq!(seeds, vec![11, 19, 3]);
    let figures: Vec<f64> = selection
        .candidates
        .iter()
        .map(|c| c.train_pr_auc)
        .collect();
    assert!(
        figures.iter().any(|&f| f != figures[0]),
        "the candidates tie, so the choice is not tested: {figures:?}"
    );
    let best = selection
        .candidates
        .iter()
        .map(|c| c.train_pr_auc)
        .fold(f64::NEG_INFINITY, f64::max);
    let kept = selection
        .candidates
        .iter()
        .find(|c| c.train_pr_auc == best)
        .expect("a best candidate");
    assert_eq!(outcome.card.training.seed, kept.seed);
    // Each candidate's own validation figures are on the card too; the kept one's are the
    // model's.
    let (mine, model_figures) = (
        kept.validation.as_ref().expect("labelled validation"),
        outcome
            .card
            .validation
            .as_ref()
            .expect("labelled validation"),
    );
    assert!(selection.candidates.iter().all(|c| c.validation.is_some()));
    assert!(
        (mine.roc_auc - model_figures.roc_auc).abs() < 1e-3
            && (mine.pr_auc - model_figures.pr_auc).abs() < 1e-3,
        "{mine:?} vs {model_figures:?}"
    );
    assert!(
        kept.seed != seeds[0] && kept.seed != seeds[2],
        "the best is at an end: keeping the first or the last would pass too"
    );
    assert_eq!(ModelCard::read(&out).expect("card"), outcome.card);

    // Its figure is what the exported model makes of the training rows.
    let model = Model::load(&out, SessionOptions::default()).expect("loads");
    let scores = model
        .score(&train.features.data, train.features.rows)
        .expect("scores");
    let pr_auc = metrics::average_precision(&scores, &train.labels);
    assert!(
        (pr_auc - kept.train_pr_auc).abs() < 1e-3,
        "{pr_auc} vs {kept:?}"
    );

    // The kept seed alone trains the same network.
    let alone = train_and_export(
        &train,
        &validation,
        &info(kept.seed, Vec::new()),
        &out.join("alone"),
        |_, _| {},
    )
    .expect("trains");
    assert!(alone.card.training.seed_selection.is_none());
    assert_eq!(
        std::fs::read(out.join("model.onnx")).expect("kept model"),
        std::fs::read(out.join("alone/model.onnx")).expect("model of the seed alone")
    );

    // A seed given twice is refused, and so are training labels without fraud: nothing
    // to choose by.
    let twice = train_and_export(
        &train,
        &validation,
        &info(0, vec![3, 11, 3]),
        &out.join("twice"),
        |_, _| panic!("trained before refusing"),
    );
    match twice {
        Err(e @ TrainError::Config(_)) => {
            assert!(e.to_string().contains("3 is given twice"), "{e}")
        }
        other => panic!("not refused: {:?}", other.map(|o| o.card)),
    }
    let unlabelled = period(3000, 0, &mut rng, 20_000);
    let refused = train_and_export(
        &unlabelled,
        &validation,
        &info(0, vec![3, 11]),
        &out.join("refused"),
        |_, _| panic!("trained before refusing"),
    );
    match refused {
        Err(e @ TrainError::Config(_)) => assert!(e.to_string().contains("both classes"), "{e}"),
        other => panic!("not refused: {:?}", other.map(|o| o.card)),
    }
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

/// Rows of an amount, two one-hot categories and an unrelated column: category a's amounts
/// lie near 2, b's near 5; every `anomaly_every`-th row is an a with b's amount: ordinary
/// for the amounts overall, extreme for its category.
fn category_period(
    rows: usize,
    anomaly_every: usize,
    rng: &mut ChaCha8Rng,
    offset: usize,
) -> Period {
    let mut data = Vec::with_capacity(rows * 4);
    let mut labels = Vec::with_capacity(rows);
    for i in 0..rows {
        let a = rng.random_range(0.0..1.0f32) < 0.5;
        let anomaly = anomaly_every > 0 && i % anomaly_every == 0;
        let typical = if a && !anomaly { 2.0 } else { 5.0 };
        let amount = typical + rng.random_range(-0.3..0.3f32);
        let category = a || anomaly;
        data.extend_from_slice(&[
            amount,
            f32::from(u8::from(category)),
            f32::from(u8::from(!category)),
            rng.random_range(-1.0..1.0f32),
        ]);
        labels.push(anomaly);
    }
    Period {
        features: Matrix::new(rows, 4, data).expect("shape"),
        labels,
        trans_nums: (0..rows).map(|i| format!("t{}", i + offset)).collect(),
        span: ("2019-01-01 00:00:00".into(), "2019-01-31 00:00:00".into()),
    }
}

/// With `log_amt` and `cat_*` inputs the autoencoder derives the amount against its
/// category's inside its graph: the members see one more column, the graph still takes
/// and returns the features it was given (the derived column's error added to the
/// amount's), ONNX Runtime reproduces candle, and an amount wrong for its category is the
/// amount's to explain.
#[test]
fn the_amount_against_its_category_is_derived_inside_the_graph() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let train = category_period(4000, 0, &mut rng, 0);
    let validation = category_period(2000, 50, &mut rng, 10_000);
    let names: Vec<String> = ["log_amt", "cat_a", "cat_b", "noise"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = std::env::temp_dir().join(format!("risksense-train-cat-{}", std::process::id()));
    let info = |amount_by_category_members| RunInfo {
        feature_names: names.clone(),
        amount_by_category_members,
        // Their own code size; the others keep the config's 2.
        amount_by_category_code: 3,
        ..run_info(TrainConfig {
            epochs: 10,
            seed: 7,
            ..small()
        })
    };
    // One member sees it, one does not.
    let outcome = train_and_export(&train, &validation, &info(1), &out, |_, _| {}).expect("trains");
    let card = &outcome.card;
    assert_eq!(card.architecture, vec![5, 16, 3, 16, 5]);
    assert!(
        card.kind
            .starts_with("ensemble of 2 dense autoencoders (1 × 4-16-2-16-4, 1 × 5-16-3-16-5)"),
        "{}",
        card.kind
    );
    assert_eq!(card.features, names);
    assert_eq!(card.training.derived_inputs.len(), 1, "{:?}", card.training);
    assert!(
        outcome.onnx_max_abs_diff < 1e-4,
        "ONNX vs candle: {}",
        outcome.onnx_max_abs_diff
    );
    let metrics = card.validation.as_ref().expect("labelled validation");
    assert!(metrics.roc_auc > 0.95, "{metrics:?}");

    let model = Model::load(&out, SessionOptions::default()).expect("loads");
    let rows = validation.features.rows;
    let [output, errors] = model
        .run_outputs(
            &validation.features.data,
            rows,
            [
                risksense_udfs::model::OUTPUT,
                risksense_udfs::model::FEATURE_ERROR,
            ],
        )
        .expect("runs");
    assert_eq!((output.len(), errors.len()), (rows * 4, rows * 4));
    // The planted rows' largest error is the amount's (its own and the derived one's).
    for (i, _) in validation.labels.iter().enumerate().filter(|(_, l)| **l) {
        let row = &errors[i * 4..(i + 1) * 4];
        let largest = (0..4)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .expect("4 columns");
        assert_eq!(largest, 0, "row {i}: {row:?}");
    }

    // Every member sees it: still the graph's inputs in and out, ONNX Runtime agreeing.
    let all = train_and_export(&train, &validation, &info(2), &out.join("all"), |_, _| {})
        .expect("trains");
    assert_eq!(all.card.architecture, vec![5, 16, 3, 16, 5]);
    assert!(
        all.card
            .kind
            .starts_with("ensemble of 2 dense autoencoders, ")
    );
    assert!(all.onnx_max_abs_diff < 1e-4, "{}", all.onnx_max_abs_diff);

    // No member (or no such columns, as in the tests above): nothing is derived.
    let plain = train_and_export(&train, &validation, &info(0), &out.join("plain"), |_, _| {})
        .expect("trains");
    assert_eq!(plain.card.architecture, vec![4, 16, 2, 16, 4]);
    assert!(plain.card.training.derived_inputs.is_empty());

    // Uncapped, a row's score is its per-column errors' mean over the members' five
    // columns, and `feature_error` holds all of it in the four inputs' columns: the
    // derived column's error is folded into the amount's, not dropped.
    let mut uncapped = info(1);
    uncapped.config.error_cap = f32::MAX;
    let dir = out.join("uncapped");
    train_and_export(&train, &validation, &uncapped, &dir, |_, _| {}).expect("trains");
    let [scores, errors, output] = score_errors_output(&dir, &validation);
    for (i, score) in scores.iter().enumerate() {
        let total: f32 = errors[i * 4..(i + 1) * 4].iter().sum();
        assert!(
            (total - 5.0 * score).abs() <= 1e-4 * total.max(1.0),
            "row {i}: errors {total} vs 5 x score {score}"
        );
    }
    // `output` is the reconstruction of the inputs, in their order: close to them on the
    // ordinary rows (a column off by one would put an amount beside a 0/1 column).
    for col in 0..4 {
        let (mut off, mut n) = (0f32, 0);
        for (i, _) in validation.labels.iter().enumerate().filter(|(_, l)| !**l) {
            off += (output[i * 4 + col] - validation.features.row(i)[col]).abs();
            n += 1;
        }
        assert!(
            off / (n as f32) < 0.7,
            "column {col}: mean |output - input| {}",
            off / n as f32
        );
    }

    // More members with it than the ensemble has is refused.
    let refused = train_and_export(&train, &validation, &info(3), &out.join("three"), |_, _| {});
    assert!(
        matches!(refused, Err(risksense_trainer::TrainError::Config(_))),
        "{:?}",
        refused.err()
    );

    // A minimum over members some of which never see it is refused.
    let mut min = info(1);
    min.config.combination = risksense_trainer::Combination::Min;
    let refused = train_and_export(&train, &validation, &min, &out.join("min"), |_, _| {});
    assert!(
        matches!(refused, Err(risksense_trainer::TrainError::Config(_))),
        "{:?}",
        refused.err()
    );
    std::fs::remove_dir_all(&out).ok();
}

/// One-sided errors: with `log_amt` counted above its reconstruction only, a bill far
/// smaller than its category's scores as an ordinary row (two-sided it is among the
/// alerts), while a bill too large for its category still alerts; a column counted below
/// only counts only there; the network, its reconstruction and the other features' errors
/// are those of the same seed trained two-sided; ONNX Runtime reproduces candle; the card
/// says which inputs are one-sided. With members that derive the amount against its
/// category's, that input takes the amount's side and the same holds.
#[test]
fn one_sided_errors_count_only_the_risky_side() {
    use risksense_trainer::ErrorSide;
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let train = category_period(4000, 0, &mut rng, 0);
    let mut validation = category_period(2000, 50, &mut rng, 10_000);
    // Every 50th row (offset 25) a category-a bill at log amount 1 where a's are near 2:
    // unusually small, legitimate.
    let small_bills: Vec<usize> = (25..validation.features.rows).step_by(50).collect();
    for &i in &small_bills {
        validation.features.data[i * 4..i * 4 + 3].copy_from_slice(&[1.0, 1.0, 0.0]);
    }
    let planted: Vec<usize> = (0..validation.features.rows).step_by(50).collect();
    let names: Vec<String> = ["log_amt", "cat_a", "cat_b", "noise"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = std::env::temp_dir().join(format!("risksense-train-sided-{}", std::process::id()));
    let info = |error_sides: Vec<ErrorSide>, derived| RunInfo {
        feature_names: names.clone(),
        amount_by_category_members: derived,
        error_sides,
        // Without the derived input one member, so that `output` is the very
        // reconstruction whose side counts.
        ensemble: 1 + derived,
        // 4 %: room for the planted rows and the small bills.
        alert_rate: 0.04,
        ..run_info(TrainConfig {
            epochs: 10,
            seed: 9,
            // Uncapped, so that one column's error can make an alert.
            error_cap: f32::MAX,
            ..small()
        })
    };
    let sided = vec![
        ErrorSide::Above,
        ErrorSide::Both,
        ErrorSide::Both,
        ErrorSide::Below,
    ];
    let train_to = |sides: Vec<ErrorSide>, derived, dir: &str| {
        train_and_export(
            &train,
            &validation,
            &info(sides, derived),
            &out.join(dir),
            |_, _| {},
        )
        .expect("trains")
    };
    let rows = validation.features.rows;
    let run = |dir: &str| score_errors_output(&out.join(dir), &validation);
    let alerts = |scores: &[f32], threshold: f64, at: &[usize]| {
        at.iter()
            .filter(|&&i| f64::from(scores[i]) >= threshold)
            .count()
    };

    let one = train_to(sided.clone(), 0, "one");
    let two = train_to(Vec::new(), 0, "two");
    assert!(one.onnx_max_abs_diff < 1e-4, "{}", one.onnx_max_abs_diff);
    assert_eq!(
        one.card.training.error_sides,
        [
            ("log_amt".to_string(), "above".to_string()),
            ("noise".to_string(), "below".to_string())
        ]
        .into()
    );
    assert!(
        one.card.kind.ends_with("(one-sided for 2 inputs)"),
        "{}",
        one.card.kind
    );
    assert!(two.card.training.error_sides.is_empty());
    let [one_scores, one_errors, one_output] = run("one");
    let [two_scores, two_errors, two_output] = run("two");
    let (mut above, mut below) = (0, 0);
    for i in 0..rows {
        for col in 0..4 {
            let k = i * 4 + col;
            assert!(
                (one_output[k] - two_output[k]).abs() < 1e-5,
                "row {i}: not the same network"
            );
            let value = validation.features.row(i)[col];
            let counts = match col {
                0 => value > one_output[k],
                3 => value < one_output[k],
                _ => true,
            };
            let expected = if counts { two_errors[k] } else { 0.0 };
            assert!(
                (one_errors[k] - expected).abs() <= 1e-4 * expected.max(1.0),
                "row {i} column {col}: {} against {expected}",
                one_errors[k]
            );
            above += usize::from(col == 0 && counts);
            below += usize::from(col == 3 && counts);
        }
        assert!(one_scores[i] <= two_scores[i] + 1e-5, "row {i}");
    }
    // Both sides of both columns occur, so each branch above was checked.
    assert!(
        (100..rows - 100).contains(&above) && (100..rows - 100).contains(&below),
        "{above} amounts above, {below} noise values below their reconstruction"
    );
    // The small bills alert two-sided (one column's error, uncapped) and not one-sided;
    // the planted bills, too large for their category, alert in both.
    let two_small = alerts(&two_scores, two.card.threshold, &small_bills);
    let one_small = alerts(&one_scores, one.card.threshold, &small_bills);
    assert!(
        two_small >= 30 && one_small <= 2,
        "small bills alerting: {two_small} two-sided, {one_small} one-sided, of 40"
    );
    assert_eq!(alerts(&two_scores, two.card.threshold, &planted), 40);
    assert_eq!(alerts(&one_scores, one.card.threshold, &planted), 40);

    // With members that derive the amount against its category's, that input is one-sided
    // with the amount: no row scores more than two-sided, the small bills no longer alert.
    let one = train_to(sided.clone(), 1, "derived-one");
    let two = train_to(Vec::new(), 1, "derived-two");
    assert!(one.onnx_max_abs_diff < 1e-4, "{}", one.onnx_max_abs_diff);
    assert_eq!(
        one.card.training.error_sides,
        [
            ("log_amt".to_string(), "above".to_string()),
            ("log_amt_vs_category".to_string(), "above".to_string()),
            ("noise".to_string(), "below".to_string())
        ]
        .into()
    );
    let [one_scores, ..] = run("derived-one");
    let [two_scores, ..] = run("derived-two");
    for i in 0..rows {
        assert!(one_scores[i] <= two_scores[i] + 1e-5, "row {i}");
    }
    let two_small = alerts(&two_scores, two.card.threshold, &small_bills);
    let one_small = alerts(&one_scores, one.card.threshold, &small_bills);
    assert!(
        two_small >= 30 && one_small <= 2,
        "small bills alerting with the derived input: {two_small} two-sided, {one_small} \
         one-sided, of 40"
    );
    assert_eq!(alerts(&one_scores, one.card.threshold, &planted), 40);

    // Sides for other than every feature are refused.
    let refused = train_and_export(
        &train,
        &validation,
        &info(vec![ErrorSide::Above], 0),
        &out.join("refused"),
        |_, _| panic!("trained before refusing"),
    );
    assert!(
        matches!(refused, Err(TrainError::Config(_))),
        "{:?}",
        refused.err()
    );
    std::fs::remove_dir_all(&out).ok();
}
