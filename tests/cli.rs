//! The `risksense` command end to end on the committed fixture: import, train, rescore and
//! SQL over the result.

use std::path::{Path, PathBuf};

mod support;

/// Runs `risksense` in `cwd`, which must succeed; returns everything it printed.
fn risksense(args: &[&str], cwd: &Path) -> String {
    support::text(&support::risksense_ok(cwd, args))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("risksense-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn import_train_rescore_and_query_the_fixture() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fixture = repo.join("data/fixtures/sparkov-2019h1-head3000.csv");
    let dir = scratch("pipeline");
    let history = dir.join("history");
    let model = dir.join("model");
    let scored = dir.join("scored");

    let out = risksense(
        &[
            "import",
            "--input",
            fixture.to_str().unwrap(),
            "--out",
            history.to_str().unwrap(),
        ],
        &dir,
    );
    assert!(out.contains("imported 3,000 rows"), "{out}");

    let out = risksense(
        &[
            "train",
            "--input",
            fixture.to_str().unwrap(),
            "--out",
            model.to_str().unwrap(),
            "--epochs",
            "3",
            "--ensemble",
            "2",
            "--validation-share",
            "0.3",
        ],
        &dir,
    );
    assert!(out.contains("ONNX Runtime vs candle scores"), "{out}");
    // By default the inputs whose risk runs one way count their risky side only.
    assert!(
        out.contains("errors counted on one side of the reconstruction only: log_amt above"),
        "{out}"
    );
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).expect("card"))
            .expect("json");
    assert_eq!(card["features"].as_array().map(Vec::len), Some(30));
    assert_eq!(
        card["training"]["error_sides"]["log_secs_since_prev"],
        "below"
    );
    assert_eq!(
        card["training"]["error_sides"]["log_amt_vs_category"],
        "above"
    );
    // Of two members, the second also sees the amount against its category's, which the
    // model derives from features.sql's log_amt and cat_* columns (one more input, its own
    // 2-unit code), while the graph still takes the 30 features.
    assert_eq!(card["architecture"][0].as_u64(), Some(31));
    assert!(
        card["kind"]
            .as_str()
            .is_some_and(|k| k.contains("(1 × 30-64-3-64-30, 1 × 31-64-2-64-31)")),
        "{}",
        card["kind"]
    );
    assert_eq!(
        card["training"]["derived_inputs"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(
        card["training"]["train_rows"].as_u64().map(|n| n > 1500),
        Some(true)
    );
    assert!(card["threshold"].as_f64().is_some_and(f64::is_finite));

    let glob = format!("{}/*.parquet", history.display());
    let out = risksense(
        &[
            "rescore",
            "--input",
            &glob,
            "--out",
            scored.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
        ],
        &dir,
    );
    assert!(out.contains("rescored 3,000 rows"), "{out}");

    let table = format!("scored={}", scored.display());
    let out = risksense(
        &[
            "sql",
            "--no-model",
            "--format",
            "csv",
            "--table",
            &table,
            "SELECT count(*) AS n, sum(CAST(is_anomaly AS INT)) AS anomalies, \
             count(explanation) AS explained FROM scored",
        ],
        &dir,
    );
    let line = out.lines().nth(1).expect("a result row");
    let values: Vec<i64> = line
        .split(',')
        .map(|v| v.trim().parse().expect("number"))
        .collect();
    assert_eq!(values[0], 3000);
    assert!(values[1] > 0 && values[1] < 300, "anomalies {}", values[1]);
    assert_eq!(
        values[1], values[2],
        "every anomaly is explained, no other row is"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_model_trained_on_other_features_is_refused_before_scoring() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = scratch("mismatch");
    let model = dir.join("model");
    std::fs::create_dir_all(&model).expect("dir");
    std::fs::copy(
        repo.join("models/default/model.onnx"),
        model.join("model.onnx"),
    )
    .expect("copy");
    let card = std::fs::read_to_string(repo.join("models/default/model.json")).expect("card");
    std::fs::write(
        model.join("model.json"),
        card.replace("\"log_amt\"", "\"log_amount\""),
    )
    .expect("write");
    let output = support::risksense_in(
        &dir,
        &[
            "rescore",
            "--input",
            repo.join("data/fixtures/sparkov-2019h1-head3000.csv")
                .to_str()
                .unwrap(),
            "--out",
            dir.join("scored").to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
        ],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("was trained on 30 features") && stderr.contains("log_amount"),
        "{stderr}"
    );
    assert!(
        !dir.join("scored").exists(),
        "nothing written before the check"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn supervised_trees_train_on_the_labels_and_refuse_a_period_without_fraud() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fixture = repo.join("data/fixtures/sparkov-2019h1-head3000.csv");
    let dir = scratch("trees");
    let model = dir.join("trees");
    let train = |share: &str| {
        support::risksense_in(
            &dir,
            &[
                "train",
                "--model",
                "trees",
                "--input",
                fixture.to_str().unwrap(),
                "--out",
                model.to_str().unwrap(),
                "--trees",
                "30",
                "--max-depth",
                "3",
                "--validation-share",
                share,
            ],
        )
    };
    // In event-time order, the first 2,100 rows hold 10 frauds, the last 900 five.
    let output = train("0.3");
    let out = support::text(&output);
    assert!(output.status.success(), "{out}");
    let diff: f64 = out
        .split("ONNX Runtime vs the reference trees: max |diff| ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no ONNX comparison in {out}"));
    assert!(diff < 1e-5, "{out}");
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).expect("card"))
            .expect("json");
    assert!(
        card["kind"]
            .as_str()
            .is_some_and(|k| k.contains("30 gradient-boosted trees")),
        "{card}"
    );
    assert_eq!(card["features"].as_array().map(Vec::len), Some(30));
    assert_eq!(card["validation"]["frauds"].as_u64(), Some(5), "{card}");
    assert_eq!(
        card["training"]["train_rows"].as_u64(),
        Some(2100),
        "{card}"
    );
    // Learnt from ten frauds: they rank above nearly every legitimate row of the later day.
    assert!(
        card["validation"]["roc_auc"]
            .as_f64()
            .is_some_and(|auc| auc > 0.9),
        "{card}"
    );
    assert!(model.join("model.onnx").is_file());

    // fraud_probability over the features, in SQL: the frauds score far above the rest.
    let features = card["features"]
        .as_array()
        .expect("features")
        .iter()
        .filter_map(|f| f.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let query = format!(
        "SELECT is_fraud, avg(fraud_probability({features})) AS p FROM features \
         GROUP BY is_fraud ORDER BY is_fraud"
    );
    let table = format!("transactions={}", fixture.display());
    let supervised = model.to_str().unwrap();
    let out = risksense(
        &[
            "sql",
            "--supervised",
            supervised,
            "--table",
            &table,
            "--format",
            "csv",
            &query,
        ],
        &dir,
    );
    let means: Vec<f64> = out
        .lines()
        .filter_map(|line| line.split_once(','))
        .filter_map(|(_, p)| p.trim().parse().ok())
        .collect();
    assert_eq!(means.len(), 2, "{out}");
    // (10 of the 15 frauds were in its training rows; 30 shallow trees.)
    assert!(
        means[1] > 0.2 && means[1] > 50.0 * means[0],
        "legitimate, fraud: {means:?}"
    );
    // An anomaly model is not a supervised one.
    let default_model = repo.join("models/default");
    let output = support::risksense_in(
        &dir,
        &[
            "sql",
            "--supervised",
            default_model.to_str().unwrap(),
            "--table",
            &table,
            "SELECT 1",
        ],
    );
    let text = support::text(&output);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("needs a `probability` output"), "{text}");

    // Not an anomaly model: the scoring plan refuses it by name.
    let output = support::risksense_in(
        &dir,
        &[
            "rescore",
            "--input",
            fixture.to_str().unwrap(),
            "--out",
            dir.join("scored").to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
        ],
    );
    let out = support::text(&output);
    assert!(!output.status.success(), "{out}");
    assert!(out.contains("it is a supervised model"), "{out}");

    // The first 600 rows hold no fraud: nothing to learn from, and it says so.
    let output = train("0.8");
    let out = support::text(&output);
    assert!(!output.status.success(), "{out}");
    assert!(out.contains("the labels hold one class only"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rescoring_with_a_challenger_and_evaluating_compares_the_two_models() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fixture = repo.join("data/fixtures/sparkov-2019h1-head3000.csv");
    let dir = scratch("evaluate");
    let (shadowed, alone) = (dir.join("shadowed"), dir.join("alone"));
    let trees = repo.join("models/trees");
    risksense(
        &[
            "rescore",
            "--input",
            fixture.to_str().unwrap(),
            "--out",
            shadowed.to_str().unwrap(),
            "--challenger",
            trees.to_str().unwrap(),
        ],
        &dir,
    );
    let out = risksense(
        &[
            "evaluate",
            "--archive",
            shadowed.to_str().unwrap(),
            "--json",
        ],
        &dir,
    );
    let pairs: serde_json::Value = serde_json::from_str(&out).expect("json");
    let pairs = pairs.as_array().expect("array");
    assert_eq!(pairs.len(), 1, "one champion and one challenger: {out}");
    let pair = &pairs[0];
    assert!(
        pair["champion"]
            .as_str()
            .is_some_and(|id| id.starts_with("default@")),
        "{pair}"
    );
    assert!(
        pair["challenger"]
            .as_str()
            .is_some_and(|id| id.starts_with("trees@")),
        "{pair}"
    );
    let comparison = &pair["comparison"];
    assert_eq!(comparison["rows"], 3000);
    assert_eq!(comparison["frauds"], 15);
    // The champion's alert rate is its share of is_anomaly rows in the output.
    let flagged = risksense(
        &[
            "sql",
            "--table",
            &format!("scored={}", shadowed.display()),
            "--format",
            "csv",
            "SELECT count(*) FILTER (WHERE is_anomaly) AS n FROM scored",
        ],
        &dir,
    );
    let flagged: f64 = flagged
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next()
        .unwrap_or_else(|| panic!("{flagged}"));
    assert_eq!(
        comparison["champion"]["alert_rate"].as_f64(),
        Some(flagged / 3000.0)
    );
    // The trees learnt these rows' labels (the fixture is the start of their training half).
    assert!(
        comparison["challenger"]["roc_auc"]
            .as_f64()
            .is_some_and(|auc| auc > 0.99),
        "{comparison}"
    );
    for share in ["challenger_recall_at_champion_rate", "alert_overlap"] {
        assert!(
            comparison[share]
                .as_f64()
                .is_some_and(|x| (0.0..=1.0).contains(&x)),
            "{share}"
        );
    }
    // The table says the same.
    let table = risksense(&["evaluate", "--archive", shadowed.to_str().unwrap()], &dir);
    assert!(
        table.contains("| ROC-AUC |") && table.contains("at the champion's alert rate"),
        "{table}"
    );

    // Without a challenger: the champion's figures alone.
    risksense(
        &[
            "rescore",
            "--input",
            fixture.to_str().unwrap(),
            "--out",
            alone.to_str().unwrap(),
        ],
        &dir,
    );
    let out = risksense(
        &["evaluate", "--archive", alone.to_str().unwrap(), "--json"],
        &dir,
    );
    let pairs: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(pairs[0]["challenger"].is_null() && pairs[0]["comparison"]["challenger"].is_null());
    // Rows without labels cannot be evaluated: a clear error.
    let output = support::risksense_in(&dir, &["evaluate", "--archive", fixture.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(
        support::text(&output).contains("is it scored rows"),
        "{}",
        support::text(&output)
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn evaluate_takes_labels_learnt_later_from_the_labels_table() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fixture = repo.join("data/fixtures/sparkov-2019h1-head3000.csv");
    let dir = scratch("evaluate-labels");
    let scored = dir.join("scored");
    risksense(
        &[
            "rescore",
            "--input",
            fixture.to_str().unwrap(),
            "--out",
            scored.to_str().unwrap(),
        ],
        &dir,
    );
    // Labels for the first 1,000 rows of the fixture: the truth as the file has it, except
    // that the first 40 are reported as fraud, then (a later, ignored report) as not.
    let rows = risksense_formats::source::TransactionFile::open(&fixture, 8192, false)
        .expect("fixture")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows");
    let mut labels = Vec::new();
    let mut later = Vec::new();
    let mut frauds = 0;
    for batch in &rows {
        use arrow::array::AsArray;
        let trans_nums = batch
            .column(risksense_common::schema::idx::TRANS_NUM)
            .as_string::<i32>();
        let is_fraud = batch
            .column(risksense_common::schema::idx::IS_FRAUD)
            .as_primitive::<arrow::datatypes::Int32Type>();
        for i in 0..batch.num_rows() {
            if labels.len() == 1000 {
                break;
            }
            let fraud = labels.len() < 40 || is_fraud.value(i) == 1;
            frauds += usize::from(fraud);
            let label = |is_fraud: bool, labelled_ms: i64| risksense_store::Label {
                trans_num: trans_nums.value(i).to_string(),
                is_fraud,
                labelled_ms,
            };
            if labels.len() < 40 {
                later.push(label(false, 2_000));
            }
            labels.push(label(fraud, 1_000));
        }
    }
    let table = dir.join("labels");
    std::fs::create_dir_all(&table).expect("dir");
    risksense_engine::labels::write_labels_table_file(&table, "a", &labels).expect("written");
    risksense_engine::labels::write_labels_table_file(&table, "b", &later).expect("written");
    let out = risksense(
        &[
            "evaluate",
            "--archive",
            scored.to_str().unwrap(),
            "--labels",
            table.to_str().unwrap(),
            "--json",
        ],
        &dir,
    );
    let pairs: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        pairs[0]["comparison"]["rows"], 1000,
        "only the labelled rows: {out}"
    );
    assert_eq!(
        pairs[0]["comparison"]["frauds"], frauds as u64,
        "the first label counts: {out}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `--supervised`: the trees' fraud probability joins the autoencoder's score in
/// score.sql's alert rule, row by row as the rule says; without it the columns are null
/// and the alerts are the autoencoder's alone.
#[test]
fn a_supervised_model_beside_the_champion_raises_alerts_by_the_combined_rule() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fixture = repo.join("data/fixtures/sparkov-2019h1-head3000.csv");
    let dir = scratch("combined");
    let trees = repo.join("models/trees");
    let card: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(trees.join("model.json")).expect("trees card"),
    )
    .expect("card json");
    let threshold = card["threshold"].as_f64().expect("threshold");
    let (combined, alone) = (dir.join("combined"), dir.join("alone"));
    for (out, supervised) in [(&combined, true), (&alone, false)] {
        let mut args = vec![
            "rescore",
            "--input",
            fixture.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        if supervised {
            args.extend(["--supervised", trees.to_str().unwrap()]);
        }
        risksense(&args, &dir);
    }
    // Per row: (fraud_probability, fraud_flag, anomaly_flag, is_anomaly, risk, score,
    // supervised_id, explanation).
    let rows = |out: &Path| -> Vec<Vec<String>> {
        let output = support::risksense_ok(
            &dir,
            &[
                "sql",
                "--table",
                &format!("scored={}", out.display()),
                "--format",
                "csv",
                "--max-rows",
                "10000",
                "SELECT fraud_probability, fraud_flag, anomaly_flag, is_anomaly, risk, score, \
                 supervised_id, replace(coalesce(explanation, ''), ',', ';') AS why FROM scored",
            ],
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .skip(1)
            .map(|l| l.split(',').map(str::to_string).collect())
            .collect()
    };
    let number = |s: &str| s.parse::<f64>().unwrap_or_else(|_| panic!("{s}"));
    let truth = |s: &str| s == "true";

    let combined_rows = rows(&combined);
    assert_eq!(combined_rows.len(), 3000);
    let (mut only_trees, mut trees_flags) = (0, 0);
    for row in &combined_rows {
        let p = number(&row[0]);
        assert_eq!(truth(&row[1]), p >= threshold, "{row:?}");
        assert_eq!(truth(&row[3]), truth(&row[1]) || truth(&row[2]), "{row:?}");
        let risk = number(&row[4]);
        assert!(risk >= p && risk < p + 0.001, "risk {risk} for p {p}");
        assert!(row[6].starts_with("trees@"), "{row:?}");
        trees_flags += usize::from(truth(&row[1]));
        if truth(&row[1]) && !truth(&row[2]) {
            only_trees += 1;
            let shown = row[7]
                .strip_prefix("fraud probability ")
                .map(number)
                .unwrap_or_else(|| panic!("{row:?}"));
            assert!((shown - p).abs() <= 0.0005, "{row:?}");
        }
    }
    // The trees learnt these rows (the start of their training half): they flag the
    // fixture's frauds, most of which the autoencoder does not.
    assert!(trees_flags >= 10, "{trees_flags} rows flagged by the trees");
    assert!(only_trees > 0, "no alert of the trees' alone");

    for row in rows(&alone) {
        assert!(
            row[0].is_empty() && row[1].is_empty() && row[6].is_empty(),
            "{row:?}"
        );
        assert_eq!(truth(&row[3]), truth(&row[2]), "{row:?}");
        let (risk, score) = (number(&row[4]), number(&row[5]));
        // The score mapped into [0, 1): 0.5 at the autoencoder's threshold.
        assert!((0.0..1.0).contains(&risk), "{risk}");
        assert_eq!(risk >= 0.5, truth(&row[2]), "risk {risk}, score {score}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
