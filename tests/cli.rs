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
            "1",
            "--validation-share",
            "0.3",
        ],
        &dir,
    );
    assert!(out.contains("ONNX Runtime vs candle scores"), "{out}");
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).expect("card"))
            .expect("json");
    assert_eq!(card["features"].as_array().map(Vec::len), Some(30));
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
