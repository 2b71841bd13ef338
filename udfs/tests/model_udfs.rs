//! The scoring functions against the committed default model (models/default).

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Float64Type, Schema};
use datafusion::datasource::MemTable;
use datafusion::execution::SessionStateBuilder;
use datafusion::physical_plan::collect;
use datafusion::prelude::{SessionConfig, SessionContext};
use risksense_udfs::model::ModelError;
use risksense_udfs::{Model, ModelCard, ModelHandle, SessionOptions, SwapError};

fn default_model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/default")
}

fn model() -> Arc<Model> {
    Arc::new(
        Model::load(&default_model_dir(), SessionOptions::default()).expect("default model loads"),
    )
}

/// `rows` rows of plausible feature values: deterministic, varied, some unusual.
fn feature_batch(model: &Model, rows: usize) -> RecordBatch {
    let fields: Vec<Field> = model
        .card
        .features
        .iter()
        .map(|n| Field::new(n, DataType::Float64, false))
        .collect();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let columns: Vec<ArrayRef> = (0..fields.len())
        .map(|_| {
            Arc::new(Float64Array::from_iter_values(
                (0..rows).map(|_| next() * 4.0 - 1.0),
            )) as ArrayRef
        })
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("batch")
}

fn context(model: &Arc<Model>, batch: &RecordBatch, batch_rows: usize) -> SessionContext {
    context_with_handle(
        &Arc::new(ModelHandle::new(model.clone())),
        batch,
        batch_rows,
    )
}

fn context_with_handle(
    model: &Arc<ModelHandle>,
    batch: &RecordBatch,
    batch_rows: usize,
) -> SessionContext {
    let config = SessionConfig::new()
        .with_target_partitions(1)
        .with_batch_size(batch_rows);
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .build();
    risksense_udfs::register(&mut state, Some(model.clone())).expect("register");
    let ctx = SessionContext::new_with_state(state);
    // The table's own batches have `batch_rows` rows, so every UDF call sees that many.
    let chunks: Vec<RecordBatch> = (0..batch.num_rows())
        .step_by(batch_rows)
        .map(|start| batch.slice(start, batch_rows.min(batch.num_rows() - start)))
        .collect();
    let table = MemTable::try_new(batch.schema(), vec![chunks]).expect("table");
    ctx.register_table("f", Arc::new(table))
        .expect("registered");
    ctx
}

async fn scores(ctx: &SessionContext, model: &Model) -> Vec<f64> {
    let query = format!(
        "SELECT anomaly_score({}) AS s FROM f",
        model.card.features.join(", ")
    );
    let batches = ctx
        .sql(&query)
        .await
        .expect("plans")
        .collect()
        .await
        .expect("runs");
    batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Float64Type>().values().to_vec())
        .collect()
}

#[tokio::test]
async fn same_scores_on_batches_of_1_7_8192_and_8197_rows() {
    let model = model();
    let batch = feature_batch(&model, 8192 + 5);
    let reference = scores(&context(&model, &batch, 8192), &model).await;
    assert_eq!(reference.len(), 8197);
    // 8,197 rows in one batch: more than one ONNX Runtime run (MAX_RUN_ROWS) inside one call.
    for size in [1, 7, 8197] {
        let other = scores(&context(&model, &batch, size), &model).await;
        assert_eq!(other.len(), reference.len());
        for (row, (a, b)) in reference.iter().zip(&other).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                "row {row}: {a} vs {b} (batch {size})"
            );
        }
    }
    // And the same as calling the model directly on the row-major matrix.
    let width = model.feature_count();
    let mut matrix = vec![0f32; 16 * width];
    for c in 0..width {
        for r in 0..16 {
            matrix[r * width + c] = batch.column(c).as_primitive::<Float64Type>().value(r) as f32;
        }
    }
    let direct = model.score(&matrix, 16).expect("scores");
    for (a, b) in direct.iter().zip(&reference) {
        assert!((f64::from(*a) - b).abs() <= 1e-5 * b.abs().max(1.0));
    }
    // Scores differ between rows: the function does look at its inputs.
    assert!(reference.iter().any(|s| (s - reference[0]).abs() > 1e-3));
}

#[tokio::test]
async fn explanations_name_three_model_features_and_threshold_is_the_cards() {
    let model = model();
    let batch = feature_batch(&model, 50);
    let ctx = context(&model, &batch, 50);
    let args = model.card.features.join(", ");
    let query = format!("SELECT anomaly_explain({args}) AS why, anomaly_threshold() AS t FROM f");
    let batches = ctx
        .sql(&query)
        .await
        .expect("plans")
        .collect()
        .await
        .expect("runs");
    let why = batches[0].column(0).as_string::<i32>();
    for row in 0..why.len() {
        let parts: Vec<&str> = why.value(row).split(", ").collect();
        assert_eq!(parts.len(), 3, "{}", why.value(row));
        for part in parts {
            let (name, share) = part.rsplit_once(' ').expect("name share");
            assert!(model.card.features.iter().any(|f| f == name), "{name}");
            assert!(share.ends_with('%'));
        }
    }
    let threshold = batches[0].column(1).as_primitive::<Float64Type>().value(0);
    assert_eq!(threshold, model.card.threshold);
}

#[tokio::test]
async fn a_call_with_the_wrong_number_of_features_fails_at_planning() {
    let model = model();
    let batch = feature_batch(&model, 10);
    let ctx = context(&model, &batch, 10);
    let short = model.card.features[..model.feature_count() - 1].join(", ");
    let error = ctx
        .sql(&format!("SELECT anomaly_score({short}) FROM f"))
        .await
        .expect_err("refused when planning");
    let message = error.to_string();
    assert!(
        message.contains(&format!("takes the {} features", model.feature_count())),
        "{message}"
    );
}

#[test]
fn a_missing_model_or_one_of_the_wrong_width_fails_at_load() {
    let root = std::env::temp_dir().join(format!("risksense-model-test-{}", std::process::id()));
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).expect("dir");
    let error = Model::load(&empty, SessionOptions::default()).expect_err("no model");
    assert!(matches!(error, ModelError::Missing { .. }));
    assert!(error.to_string().contains("risksense train"), "{error}");

    let narrow = root.join("narrow");
    std::fs::create_dir_all(&narrow).expect("dir");
    std::fs::copy(
        default_model_dir().join("model.onnx"),
        narrow.join("model.onnx"),
    )
    .expect("copy");
    let mut card = ModelCard::read(&default_model_dir()).expect("card");
    card.features.pop();
    card.write(&narrow).expect("write card");
    let error = Model::load(&narrow, SessionOptions::default()).expect_err("width mismatch");
    assert!(matches!(error, ModelError::Mismatch { .. }));
    let message = error.to_string();
    assert!(
        message.contains("takes 30 features, the card lists 29"),
        "{message}"
    );
    std::fs::remove_dir_all(&root).ok();
}

/// The default model's files under `name` in a scratch folder, with its card changed by
/// `edit`: the same graph, so a model that scores alike and differs only where the card does.
fn variant(name: &str, edit: impl FnOnce(&mut ModelCard)) -> (PathBuf, Arc<Model>) {
    let dir = std::env::temp_dir().join(format!(
        "risksense-model-variant-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::copy(
        default_model_dir().join("model.onnx"),
        dir.join("model.onnx"),
    )
    .expect("copy");
    let mut card = ModelCard::read(&default_model_dir()).expect("card");
    card.name = name.to_string();
    edit(&mut card);
    card.write(&dir).expect("write card");
    let model = Model::load(&dir, SessionOptions::default()).expect("variant loads");
    (dir, Arc::new(model))
}

#[tokio::test]
async fn a_plan_built_once_scores_with_the_model_its_handle_holds_now() {
    let a = model();
    // B: the same graph and features, a threshold no row reaches.
    let (dir, b) = variant("never-alerts", |card| card.threshold = 1e30);
    let batch = feature_batch(&a, 64);
    let handle = Arc::new(ModelHandle::new(a.clone()));
    let ctx = context_with_handle(&handle, &batch, 64);
    let args = a.card.features.join(", ");
    let plan = ctx
        .sql(&format!(
            "SELECT anomaly_score({args}) AS s, anomaly_threshold() AS t, \
             anomaly_score({args}) >= anomaly_threshold() AS flagged, \
             CASE WHEN anomaly_score({args}) >= anomaly_threshold() THEN anomaly_explain({args}) END AS why \
             FROM f"
        ))
        .await
        .expect("plans")
        .create_physical_plan()
        .await
        .expect("physical plan");

    // What one run of the plan says: (scores, thresholds, rows flagged, rows explained).
    let run = || async {
        let batches = collect(plan.clone(), ctx.task_ctx()).await.expect("runs");
        let mut out = (Vec::new(), Vec::new(), 0, 0);
        for batch in &batches {
            out.0.extend(
                batch
                    .column(0)
                    .as_primitive::<Float64Type>()
                    .values()
                    .iter()
                    .copied(),
            );
            out.1.extend(
                batch
                    .column(1)
                    .as_primitive::<Float64Type>()
                    .values()
                    .iter()
                    .copied(),
            );
            out.2 += batch.column(2).as_boolean().true_count();
            out.3 += batch.num_rows() - batch.column(3).null_count();
        }
        out
    };
    let (scores_a, thresholds_a, flagged_a, explained_a) = run().await;
    assert_eq!(scores_a.len(), 64);
    assert!(thresholds_a.iter().all(|&t| t == a.card.threshold));
    let expected_a = scores_a.iter().filter(|&&s| s >= a.card.threshold).count();
    assert_eq!((flagged_a, explained_a), (expected_a, expected_a));
    assert!(
        expected_a > 0,
        "the default threshold flags no generated row"
    );

    let previous = handle.swap(b.clone()).expect("same features");
    assert!(Arc::ptr_eq(&previous, &a));
    let (scores_b, thresholds_b, flagged_b, explained_b) = run().await;
    assert!(thresholds_b.iter().all(|&t| t == 1e30), "{thresholds_b:?}");
    assert_eq!((flagged_b, explained_b), (0, 0));
    // Same graph: the same scores.
    assert_eq!(scores_a, scores_b);

    // And back.
    handle.swap(a.clone()).expect("same features");
    assert_eq!(run().await.2, expected_a);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_handle_refuses_a_model_with_other_features() {
    let a = model();
    let handle = ModelHandle::new(a.clone());
    // Same width (so the graph loads), one feature renamed.
    let (renamed_dir, renamed) = variant("renamed", |card| card.features[0] = "log_amount".into());
    // Same names, another order.
    let (reordered_dir, reordered) = variant("reordered", |card| card.features.swap(0, 1));
    for other in [renamed, reordered] {
        let error = handle.swap(other.clone()).expect_err("refused");
        let SwapError::FeaturesDiffer {
            model,
            expected,
            offered,
        } = &error
        else {
            panic!("not a feature mismatch: {error}");
        };
        assert_eq!(model, &other.id);
        assert_eq!(expected, &a.card.features);
        assert_eq!(offered, &other.card.features);
        assert!(error.to_string().contains("needs a new plan"), "{error}");
        // Still the model it had.
        assert!(Arc::ptr_eq(&handle.load(), &a));
    }
    std::fs::remove_dir_all(&renamed_dir).ok();
    std::fs::remove_dir_all(&reordered_dir).ok();
}

#[test]
fn one_run_gives_several_outputs() {
    let model = model();
    let batch = feature_batch(&model, 20);
    let width = model.feature_count();
    let mut matrix = vec![0f32; 20 * width];
    for c in 0..width {
        for r in 0..20 {
            matrix[r * width + c] = batch.column(c).as_primitive::<Float64Type>().value(r) as f32;
        }
    }
    let [scores, errors] = model
        .run_outputs(
            &matrix,
            20,
            [
                risksense_udfs::model::SCORE,
                risksense_udfs::model::FEATURE_ERROR,
            ],
        )
        .expect("runs");
    // The score comes from the graph cut down to it, asked for alone or not.
    assert!(model.scores_on_a_cut_graph());
    assert_eq!(scores, model.score(&matrix, 20).expect("scores"));
    assert_eq!(
        errors,
        model
            .run(&matrix, 20, risksense_udfs::model::FEATURE_ERROR)
            .expect("errors")
    );
    assert_eq!(errors.len(), 20 * width);
    let [none] = model
        .run_outputs(&[], 0, [risksense_udfs::model::SCORE])
        .expect("no rows");
    assert!(none.is_empty());
}

#[test]
fn a_model_id_names_its_files_not_just_its_name() {
    let first = model();
    assert_eq!(first.id, model().id, "the same files, the same id");
    assert!(first.id.starts_with(&format!("{}@", first.card.name)));
    // The same model recalibrated (another threshold in its card) is another model.
    let dir = std::env::temp_dir().join(format!("risksense-model-id-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::copy(
        default_model_dir().join("model.onnx"),
        dir.join("model.onnx"),
    )
    .expect("copy");
    let mut card = first.card.clone();
    card.threshold *= 1.5;
    card.write(&dir).expect("card");
    let other = Model::load(&dir, SessionOptions::default()).expect("loads");
    assert_eq!(other.card.name, first.card.name);
    assert_ne!(other.id, first.id);
    let _ = std::fs::remove_dir_all(&dir);
}

fn trees() -> Arc<Model> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/trees");
    Arc::new(Model::load_any(&dir, SessionOptions::default()).expect("models/trees loads"))
}

#[tokio::test]
async fn a_supervised_model_cannot_be_champion_but_shadows_every_row_as_challenger() {
    let a = model();
    let trees = trees();
    assert_eq!(trees.role, risksense_udfs::model::Role::Supervised);
    assert_eq!(
        Model::load_any(&default_model_dir(), SessionOptions::default())
            .expect("loads")
            .role,
        risksense_udfs::model::Role::Anomaly
    );
    let handle = Arc::new(ModelHandle::new(a.clone()));
    let error = handle
        .swap(trees.clone())
        .expect_err("not an anomaly model");
    assert!(matches!(error, SwapError::NotAnomaly { .. }), "{error}");
    assert!(error.to_string().contains("challenger"), "{error}");
    assert!(Arc::ptr_eq(&handle.load(), &a));

    let batch = feature_batch(&a, 40);
    let ctx = context_with_handle(&handle, &batch, 16);
    let args = a.card.features.join(", ");
    let query = format!(
        "SELECT model_id() AS m, challenger_id() AS c, challenger_score({args}) AS s, \
         challenger_score({args}) >= challenger_threshold() AS flag FROM f"
    );
    let plan = ctx
        .sql(&query)
        .await
        .expect("plans")
        .create_physical_plan()
        .await
        .expect("physical plan");
    type Row = (String, Option<String>, Option<f64>, Option<bool>);
    let run = || async {
        let batches = collect(plan.clone(), ctx.task_ctx()).await.expect("runs");
        let mut rows: Vec<Row> = Vec::new();
        for batch in &batches {
            let m = batch.column(0).as_string::<i32>();
            let c = batch.column(1).as_string::<i32>();
            let s = batch.column(2).as_primitive::<Float64Type>();
            let flag = batch.column(3).as_boolean();
            for i in 0..batch.num_rows() {
                rows.push((
                    m.value(i).to_string(),
                    c.is_valid(i).then(|| c.value(i).to_string()),
                    s.is_valid(i).then(|| s.value(i)),
                    flag.is_valid(i).then(|| flag.value(i)),
                ));
            }
        }
        rows
    };
    // No challenger: the columns exist, all null.
    let none = run().await;
    assert_eq!(none.len(), 40);
    assert!(
        none.iter()
            .all(|r| r.0 == a.id && r.1.is_none() && r.2.is_none() && r.3.is_none())
    );

    // The same plan, with the trees set as challenger: their probabilities, row by row.
    handle
        .set_challenger(Some(trees.clone()))
        .expect("same features");
    let shadowed = run().await;
    let mut matrix: Vec<f32> = Vec::new();
    for row in 0..40 {
        for column in batch.columns() {
            matrix.push(column.as_primitive::<Float64Type>().value(row) as f32);
        }
    }
    let expected = trees
        .run(&matrix, 40, risksense_udfs::model::PROBABILITY)
        .expect("trees run");
    for (row, (m, c, s, flag)) in shadowed.iter().enumerate() {
        assert_eq!(m, &a.id, "the champion still scores");
        assert_eq!(c.as_deref(), Some(trees.id.as_str()));
        let s = s.expect("scored");
        assert!(
            (s - f64::from(expected[row])).abs() < 1e-6,
            "{s} vs {}",
            expected[row]
        );
        assert_eq!(*flag, Some(s >= trees.card.threshold));
    }

    // A challenger with other features is refused and the trees stay.
    let (dir, renamed) = variant("renamed-shadow", |card| {
        card.features[0] = "log_amount".into()
    });
    assert!(handle.set_challenger(Some(renamed)).is_err());
    assert_eq!(
        handle.challenger().map(|m| m.id.clone()),
        Some(trees.id.clone())
    );
    handle.set_challenger(None).expect("removed");
    assert!(run().await.iter().all(|r| r.1.is_none() && r.2.is_none()));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_registry_finds_models_by_folder_name_or_id_and_nothing_outside_it() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models");
    let registry = risksense_udfs::ModelRegistry::new(&root);
    let entries = registry.list().expect("lists");
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert!(
        names.contains(&"default") && names.contains(&"trees"),
        "{names:?}"
    );
    let default = model();
    let found = entries
        .iter()
        .find(|e| e.name == "default")
        .expect("default");
    assert_eq!(found.id.as_deref(), Some(default.id.as_str()));
    assert!(found.problem.is_none());

    assert_eq!(
        registry
            .resolve("default")
            .expect("by name")
            .canonicalize()
            .ok(),
        default_model_dir().canonicalize().ok()
    );
    assert_eq!(
        registry
            .resolve(&default.id)
            .expect("by id")
            .canonicalize()
            .ok(),
        default_model_dir().canonicalize().ok()
    );
    // An id whose files are not there (another version of the model) is not found.
    let error = registry
        .resolve("default@000000000000")
        .expect_err("no such version");
    assert!(
        error.to_string().contains(&default.id),
        "lists what exists: {error}"
    );
    for bad in [
        "../models/default",
        "default/..",
        "..",
        "",
        "a b",
        "default@xyz",
    ] {
        let error = registry.resolve(bad).expect_err(bad);
        assert!(
            matches!(error, risksense_udfs::registry::RegistryError::BadName(_)),
            "{bad}: {error}"
        );
    }
}
