//! Gradient-boosted trees as ONNX: a fitted binary classifier's trees written as an
//! `ai.onnx.ml` TreeEnsembleRegressor summing the trees' log-odds, then a Sigmoid, so ONNX
//! Runtime runs a supervised model through the same `Model` loading and session pool as
//! the autoencoder.
//!
//! The trees are described here independently of the crate that fits them (a fitted
//! booster's nodes map onto [`TreeNode`] one to one), and [`TreeEnsemble::probability`] is
//! the reference the exported graph is tested against.
//!
//! Why a regressor and a Sigmoid, not TreeEnsembleClassifier: the classifier's binary
//! case in ONNX Runtime changes its output with the signs of the leaf weights and the
//! number of base values given; the regressor sums exactly what it is given.

use risksense_udfs::model::{INPUT, PROBABILITY};

use crate::onnx::{
    Dim, GraphBuilder, ML_DOMAIN, floats_attribute, int_attribute, ints_attribute,
    string_attribute, strings_attribute,
};

/// A node of a tree; children are indices into [`Tree::nodes`].
#[derive(Debug, Clone, PartialEq)]
pub enum TreeNode {
    /// `x[feature] < threshold` goes to `left`, otherwise `right`; a missing value (NaN)
    /// goes left if `missing_left`.
    Split {
        feature: usize,
        threshold: f64,
        left: usize,
        right: usize,
        missing_left: bool,
    },
    /// Adds `value` (log-odds, the learning rate already applied) to the row's sum.
    Leaf { value: f64 },
}

/// One tree; its root is `nodes[0]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    pub nodes: Vec<TreeNode>,
}

/// A binary classifier: probability = sigmoid(base_score + Σ trees' leaves).
#[derive(Debug, Clone, PartialEq)]
pub struct TreeEnsemble {
    pub features: usize,
    /// The initial prediction, in log-odds.
    pub base_score: f64,
    pub trees: Vec<Tree>,
}

/// What makes an ensemble unwritable.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TreeError {
    #[error("tree {tree} node {node}: {reason}")]
    Node {
        tree: usize,
        node: usize,
        reason: String,
    },
    #[error("the ensemble has no trees")]
    Empty,
    #[error("training data: {0}")]
    Data(String),
}

impl TreeEnsemble {
    /// Checks that every split reads an existing feature and points at existing nodes,
    /// and that every node is reached from the root once (a tree, not a graph).
    pub fn validate(&self) -> Result<(), TreeError> {
        if self.trees.is_empty() {
            return Err(TreeError::Empty);
        }
        for (t, tree) in self.trees.iter().enumerate() {
            let bad = |node: usize, reason: String| TreeError::Node {
                tree: t,
                node,
                reason,
            };
            if tree.nodes.is_empty() {
                return Err(bad(0, "the tree has no nodes".to_string()));
            }
            let mut reached = vec![false; tree.nodes.len()];
            reached[0] = true;
            for (n, node) in tree.nodes.iter().enumerate() {
                if let TreeNode::Split {
                    feature,
                    threshold,
                    left,
                    right,
                    ..
                } = node
                {
                    if *feature >= self.features {
                        return Err(bad(n, format!("feature {feature} of {}", self.features)));
                    }
                    if threshold.is_nan() {
                        return Err(bad(n, "the threshold is NaN".to_string()));
                    }
                    for child in [*left, *right] {
                        if child >= tree.nodes.len() || child <= n {
                            return Err(bad(n, format!("child {child} is not a later node")));
                        }
                        if std::mem::replace(&mut reached[child], true) {
                            return Err(bad(n, format!("node {child} has two parents")));
                        }
                    }
                }
            }
            if let Some(orphan) = reached.iter().position(|r| !r) {
                return Err(bad(orphan, "no split leads to it".to_string()));
            }
        }
        Ok(())
    }

    /// The row's log-odds, summed in f64 (the reference for the ONNX graph).
    pub fn logit(&self, row: &[f32]) -> f64 {
        let mut sum = self.base_score;
        for tree in &self.trees {
            let mut at = 0;
            loop {
                match &tree.nodes[at] {
                    TreeNode::Leaf { value } => {
                        sum += value;
                        break;
                    }
                    TreeNode::Split {
                        feature,
                        threshold,
                        left,
                        right,
                        missing_left,
                    } => {
                        let x = row[*feature];
                        let goes_left = if x.is_nan() {
                            *missing_left
                        } else {
                            f64::from(x) < *threshold
                        };
                        at = if goes_left { *left } else { *right };
                    }
                }
            }
        }
        sum
    }

    pub fn probability(&self, row: &[f32]) -> f64 {
        1.0 / (1.0 + (-self.logit(row)).exp())
    }

    /// The ONNX model: `input` [rows, features] → `probability` [rows].
    pub fn to_onnx(&self, name: &str, doc: &str) -> Result<Vec<u8>, TreeError> {
        self.validate()?;
        let mut tree_ids = Vec::new();
        let mut node_ids = Vec::new();
        let mut feature_ids = Vec::new();
        let mut values = Vec::new();
        let mut modes = Vec::new();
        let mut true_ids = Vec::new();
        let mut false_ids = Vec::new();
        let mut missing_true = Vec::new();
        let (mut target_trees, mut target_nodes, mut target_weights) =
            (Vec::new(), Vec::new(), Vec::new());
        for (t, tree) in self.trees.iter().enumerate() {
            for (n, node) in tree.nodes.iter().enumerate() {
                tree_ids.push(t as i64);
                node_ids.push(n as i64);
                match node {
                    TreeNode::Split {
                        feature,
                        threshold,
                        left,
                        right,
                        missing_left,
                    } => {
                        feature_ids.push(*feature as i64);
                        values.push(f32_at_or_above(*threshold));
                        modes.push("BRANCH_LT");
                        true_ids.push(*left as i64);
                        false_ids.push(*right as i64);
                        missing_true.push(i64::from(*missing_left));
                    }
                    TreeNode::Leaf { value } => {
                        feature_ids.push(0);
                        values.push(0.0);
                        modes.push("LEAF");
                        true_ids.push(0);
                        false_ids.push(0);
                        missing_true.push(0);
                        target_trees.push(t as i64);
                        target_nodes.push(n as i64);
                        target_weights.push(*value as f32);
                    }
                }
            }
        }
        let targets = target_trees.len();
        let mut graph = GraphBuilder::default();
        graph.input(
            INPUT,
            &[Dim::Named("rows"), Dim::Fixed(self.features as i64)],
        );
        graph.node_in(
            ML_DOMAIN,
            "TreeEnsembleRegressor",
            &[INPUT],
            "logit",
            vec![
                int_attribute("n_targets", 1),
                string_attribute("aggregate_function", "SUM"),
                string_attribute("post_transform", "NONE"),
                floats_attribute("base_values", &[self.base_score as f32]),
                ints_attribute("nodes_treeids", &tree_ids),
                ints_attribute("nodes_nodeids", &node_ids),
                ints_attribute("nodes_featureids", &feature_ids),
                floats_attribute("nodes_values", &values),
                strings_attribute("nodes_modes", &modes),
                ints_attribute("nodes_truenodeids", &true_ids),
                ints_attribute("nodes_falsenodeids", &false_ids),
                ints_attribute("nodes_missing_value_tracks_true", &missing_true),
                ints_attribute("target_treeids", &target_trees),
                ints_attribute("target_nodeids", &target_nodes),
                ints_attribute("target_ids", &vec![0; targets]),
                floats_attribute("target_weights", &target_weights),
            ],
        );
        graph.node("Sigmoid", &["logit"], "probability_column");
        graph.constant_i64("flat", &[1], &[-1]);
        graph.node("Reshape", &["probability_column", "flat"], PROBABILITY);
        graph.output(PROBABILITY, &[Dim::Named("rows")]);
        Ok(graph.finish(name, doc))
    }
}

/// How a supervised model is fitted: gradient-boosted trees on log loss.
#[derive(Debug, Clone)]
pub struct BoostConfig {
    pub iterations: usize,
    pub learning_rate: f32,
    pub max_depth: usize,
    pub l2: f32,
    pub min_leaf_weight: f32,
    pub seed: u64,
    /// Threads for fitting (None: all cores).
    pub threads: Option<usize>,
}

impl Default for BoostConfig {
    fn default() -> Self {
        Self {
            iterations: 300,
            learning_rate: 0.1,
            max_depth: 6,
            l2: 1.0,
            min_leaf_weight: 1.0,
            seed: 0,
            threads: None,
        }
    }
}

/// Fits a binary classifier on `rows` (row-major, `features` wide; NaN is missing) and
/// `labels` (0 or 1). Refuses data without both classes: trees fitted to one class learn
/// nothing and would score every row alike.
pub fn fit_classifier(
    rows: &[f32],
    features: usize,
    labels: &[f64],
    config: &BoostConfig,
) -> Result<TreeEnsemble, TreeError> {
    let count = labels.len();
    if features == 0 || rows.len() != count * features {
        return Err(TreeError::Data(format!(
            "{} values is not {count} rows of {features} features",
            rows.len()
        )));
    }
    if let Some(bad) = labels.iter().find(|&&y| y != 0.0 && y != 1.0) {
        return Err(TreeError::Data(format!("label {bad} is not 0 or 1")));
    }
    let positives = labels.iter().filter(|&&y| y == 1.0).count();
    if positives == 0 || positives == count {
        return Err(TreeError::Data(format!(
            "the labels hold one class only ({count} rows, {positives} positive): a \
             supervised model needs both fraud and legitimate rows"
        )));
    }
    let booster = fit_booster(rows, features, labels, config)?;
    from_booster(&booster, features)
}

/// The forust booster behind [`fit_classifier`], whose input it has checked.
fn fit_booster(
    rows: &[f32],
    features: usize,
    labels: &[f64],
    config: &BoostConfig,
) -> Result<forust_ml::GradientBooster, TreeError> {
    let count = labels.len();
    // forust reads columns: one column after another.
    let mut columns = Vec::with_capacity(rows.len());
    for feature in 0..features {
        columns.extend(
            rows.chunks_exact(features)
                .map(|row| f64::from(row[feature])),
        );
    }
    let matrix = forust_ml::Matrix::new(&columns, count, features);
    let weights = vec![1.0; count];
    let mut booster = forust_ml::GradientBooster::default()
        .set_objective_type(forust_ml::objective::ObjectiveType::LogLoss)
        .set_iterations(config.iterations)
        .set_learning_rate(config.learning_rate)
        .set_max_depth(config.max_depth)
        .set_l2(config.l2)
        .set_min_leaf_weight(config.min_leaf_weight)
        .set_seed(config.seed)
        .set_num_threads(config.threads)
        // Missing values go left or right at each split (a third branch has no ONNX form).
        .set_create_missing_branch(false);
    booster
        .fit(&matrix, labels, &weights, None)
        .map_err(|e| TreeError::Data(format!("fitting the trees: {e}")))?;
    Ok(booster)
}

/// A fitted forust booster's trees (those it predicts with) as a [`TreeEnsemble`].
pub fn from_booster(
    booster: &forust_ml::GradientBooster,
    features: usize,
) -> Result<TreeEnsemble, TreeError> {
    let used = booster
        .prediction_iteration
        .unwrap_or(booster.trees.len())
        .min(booster.trees.len());
    let mut trees = Vec::with_capacity(used);
    for (t, tree) in booster.trees[..used].iter().enumerate() {
        let mut nodes = Vec::with_capacity(tree.nodes.len());
        for (n, node) in tree.nodes.iter().enumerate() {
            let bad = |reason: String| TreeError::Node {
                tree: t,
                node: n,
                reason,
            };
            if node.num != n {
                return Err(bad(format!("numbered {}", node.num)));
            }
            nodes.push(if node.is_leaf {
                TreeNode::Leaf {
                    value: f64::from(node.weight_value),
                }
            } else {
                let missing_left = if node.missing_node == node.left_child {
                    true
                } else if node.missing_node == node.right_child {
                    false
                } else {
                    return Err(bad("a separate branch for missing values".to_string()));
                };
                TreeNode::Split {
                    feature: node.split_feature,
                    threshold: node.split_value,
                    left: node.left_child,
                    right: node.right_child,
                    missing_left,
                }
            });
        }
        trees.push(Tree { nodes });
    }
    let ensemble = TreeEnsemble {
        features,
        base_score: booster.base_score,
        trees,
    };
    ensemble.validate()?;
    Ok(ensemble)
}

/// The smallest f32 at or above `threshold`: for every f32 `x`, `x < result` exactly when
/// `x as f64 < threshold`, so ONNX Runtime's f32 comparison splits as the f64 tree does.
fn f32_at_or_above(threshold: f64) -> f32 {
    let rounded = threshold as f32;
    if f64::from(rounded) >= threshold {
        rounded
    } else {
        rounded.next_up()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Probabilities of `rows` (row-major, `features` wide) from an exported graph, run by
    /// ONNX Runtime directly (the graph has no card, so `Model` cannot load it).
    fn run_onnx(path: &std::path::Path, rows: &[f32], features: usize) -> Vec<f32> {
        let environment = risksense_udfs::onnx_runtime::environment().expect("ONNX Runtime");
        let mut builder = ort::session::Session::builder(environment).expect("builder");
        let mut session = builder
            .commit_from_file(path)
            .expect("ONNX Runtime loads the tree graph");
        let count = rows.len() / features;
        let tensor =
            ort::value::TensorRef::from_array_view(([count, features], rows)).expect("tensor");
        let outputs = session.run(ort::inputs![INPUT => tensor]).expect("run");
        let (_, data) = outputs
            .get(PROBABILITY)
            .expect("the probability output")
            .try_extract_tensor::<f32>()
            .expect("probabilities");
        data.to_vec()
    }

    /// A random tree of the given depth over `features`, nodes numbered parent first.
    fn random_tree(rng: &mut ChaCha8Rng, features: usize, depth: usize) -> Tree {
        fn grow(rng: &mut ChaCha8Rng, nodes: &mut Vec<TreeNode>, features: usize, depth: usize) {
            let at = nodes.len();
            if depth == 0 || rng.random_bool(0.2) {
                nodes.push(TreeNode::Leaf {
                    value: rng.random_range(-1.0..1.0),
                });
                return;
            }
            nodes.push(TreeNode::Leaf { value: 0.0 });
            let left = nodes.len();
            grow(rng, nodes, features, depth - 1);
            let right = nodes.len();
            grow(rng, nodes, features, depth - 1);
            nodes[at] = TreeNode::Split {
                feature: rng.random_range(0..features),
                // Thresholds that are not f32 values, to test the rounding.
                threshold: rng.random_range(-2.0..2.0) + 1e-9,
                left,
                right,
                missing_left: rng.random_bool(0.5),
            };
        }
        let mut nodes = Vec::new();
        grow(rng, &mut nodes, features, depth);
        Tree { nodes }
    }

    #[test]
    fn onnx_runtime_scores_the_exported_trees_as_the_reference_does() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let features = 6;
        let ensemble = TreeEnsemble {
            features,
            base_score: -4.2,
            trees: (0..40)
                .map(|_| random_tree(&mut rng, features, 4))
                .collect(),
        };
        let dir = std::env::temp_dir().join(format!("risksense-trees-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("model.onnx");
        std::fs::write(&path, ensemble.to_onnx("trees", "test").expect("onnx")).expect("write");

        // Rows with values on both sides of thresholds, exactly at some, and missing ones.
        let rows = 500;
        let mut matrix = Vec::with_capacity(rows * features);
        for _ in 0..rows {
            for _ in 0..features {
                matrix.push(match rng.random_range(0..10) {
                    0 => f32::NAN,
                    _ => rng.random_range(-2.5f32..2.5),
                });
            }
        }
        let got = run_onnx(&path, &matrix, features);
        assert_eq!(got.len(), rows);
        for (row, p) in got.iter().enumerate() {
            let want = ensemble.probability(&matrix[row * features..(row + 1) * features]);
            assert!(
                (f64::from(*p) - want).abs() < 1e-5,
                "row {row}: ONNX Runtime {p}, reference {want}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn thresholds_round_up_to_an_f32_that_splits_the_same() {
        for threshold in [0.1, -0.1, 1.0 + 1e-12, 3.0, -7.25e-3, 1e20] {
            let t = f32_at_or_above(threshold);
            assert!(f64::from(t) >= threshold);
            assert!(f64::from(t.next_down()) < threshold);
        }
    }

    #[test]
    fn malformed_trees_are_refused() {
        let leaf = TreeNode::Leaf { value: 1.0 };
        let split = |feature, left, right| TreeNode::Split {
            feature,
            threshold: 0.5,
            left,
            right,
            missing_left: true,
        };
        let ensemble = |nodes: Vec<TreeNode>| TreeEnsemble {
            features: 2,
            base_score: 0.0,
            trees: vec![Tree { nodes }],
        };
        assert!(
            ensemble(vec![split(0, 1, 2), leaf.clone(), leaf.clone()])
                .validate()
                .is_ok()
        );
        let refused = [
            ensemble(vec![split(2, 1, 2), leaf.clone(), leaf.clone()]),
            ensemble(vec![split(0, 1, 3), leaf.clone(), leaf.clone()]),
            ensemble(vec![split(0, 1, 1), leaf.clone()]),
            ensemble(vec![
                split(0, 1, 2),
                leaf.clone(),
                leaf.clone(),
                leaf.clone(),
            ]),
            ensemble(vec![]),
        ];
        for e in &refused {
            assert!(e.validate().is_err(), "{e:?}");
            assert!(e.to_onnx("bad", "").is_err());
        }
        let none = TreeEnsemble {
            features: 2,
            base_score: 0.0,
            trees: vec![],
        };
        assert_eq!(none.validate(), Err(TreeError::Empty));
    }

    /// Rows where fraud is x0 > 0.5 and x1 < 0 (with label noise), some values missing.
    fn synthetic(rng: &mut ChaCha8Rng, count: usize) -> (Vec<f32>, Vec<f64>) {
        let (mut rows, mut labels) = (Vec::new(), Vec::new());
        for _ in 0..count {
            let x: Vec<f32> = (0..4).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let fraud = x[0] > 0.5 && x[1] < 0.0;
            let noisy = if rng.random_bool(0.02) { !fraud } else { fraud };
            labels.push(f64::from(u8::from(noisy)));
            rows.extend(
                x.iter()
                    .map(|v| if rng.random_bool(0.05) { f32::NAN } else { *v }),
            );
        }
        (rows, labels)
    }

    #[test]
    fn fitted_trees_export_with_the_boosters_predictions_and_learn_the_pattern() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let (rows, labels) = synthetic(&mut rng, 4000);
        let config = BoostConfig {
            iterations: 40,
            max_depth: 3,
            threads: Some(1),
            ..BoostConfig::default()
        };
        let ensemble = fit_classifier(&rows, 4, &labels, &config).expect("fit");
        assert_eq!(ensemble.trees.len(), 40);
        // The exported trees predict what forust's booster predicts.
        let booster = fit_booster(&rows, 4, &labels, &config).expect("fit");
        let columns: Vec<f64> = (0..4)
            .flat_map(|f| rows.chunks_exact(4).map(move |row| f64::from(row[f])))
            .collect();
        let predicted = booster.predict(&forust_ml::Matrix::new(&columns, labels.len(), 4), false);
        for (row, logit) in rows.chunks_exact(4).zip(&predicted) {
            assert!((ensemble.logit(row) - logit).abs() < 1e-9);
        }
        // Held-out rows: the pattern is learnt (AUC well above chance).
        let (test_rows, test_labels) = synthetic(&mut rng, 2000);
        let scores: Vec<f32> = test_rows
            .chunks_exact(4)
            .map(|row| ensemble.probability(row) as f32)
            .collect();
        let frauds: Vec<bool> = test_labels.iter().map(|&y| y == 1.0).collect();
        let auc = crate::metrics::roc_auc(&scores, &frauds);
        assert!(auc > 0.9, "ROC-AUC {auc}");
    }

    #[test]
    fn one_class_or_malformed_labels_are_refused_with_a_reason() {
        let rows = vec![0.5f32; 40];
        let config = BoostConfig::default();
        let error = fit_classifier(&rows, 4, &[0.0; 10], &config).expect_err("one class");
        assert!(error.to_string().contains("one class only"), "{error}");
        let error = fit_classifier(&rows, 4, &[1.0; 10], &config).expect_err("one class");
        assert!(
            error.to_string().contains("both fraud and legitimate"),
            "{error}"
        );
        let mut labels = vec![0.0; 10];
        labels[3] = 2.0;
        let error = fit_classifier(&rows, 4, &labels, &config).expect_err("bad label");
        assert!(
            error.to_string().contains("label 2 is not 0 or 1"),
            "{error}"
        );
        let error = fit_classifier(&rows, 3, &[0.0, 1.0], &config).expect_err("shape");
        assert!(
            error.to_string().contains("is not 2 rows of 3 features"),
            "{error}"
        );
    }
}
