//! A trained model on disk (`model.onnx` + `model.json`) and its ONNX Runtime session.
//!
//! The ONNX graph takes the raw feature matrix `input` [rows, features] (standardisation
//! is inside the graph) and offers three outputs: `output`, the reconstruction;
//! `feature_error`, the squared reconstruction error per feature in standardised units;
//! and `score`, the mean per row of those errors, capped, over the columns the network
//! reconstructs (the features, and any input the model derives from them, whose error
//! `feature_error` reports under the feature it comes from). The card (`model.json`)
//! names the features in order, the alert threshold and how it was chosen.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

use ort::session::OutputSelector;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{RunOptions, Session};
use ort::value::TensorRef;
use serde::{Deserialize, Serialize};

use crate::onnx_runtime;

pub const INPUT: &str = "input";
pub const OUTPUT: &str = "output";
pub const FEATURE_ERROR: &str = "feature_error";
pub const SCORE: &str = "score";
/// A supervised model's output: the probability of fraud per row.
pub const PROBABILITY: &str = "probability";

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "no model at {path}: {reason}. Train one with `risksense train`, or use models/default"
    )]
    Missing { path: PathBuf, reason: String },
    #[error("model card {path} is invalid: {reason}")]
    BadCard { path: PathBuf, reason: String },
    #[error("{path} does not fit its card: {reason}")]
    Mismatch { path: PathBuf, reason: String },
    #[error(transparent)]
    Runtime(#[from] onnx_runtime::RuntimeError),
    /// ONNX Runtime refused or failed a call (its error kept as the source).
    #[error("ONNX Runtime: {source}")]
    Session {
        #[source]
        source: ort::Error,
    },
    #[error("ONNX Runtime: {0}")]
    Ort(String),
    #[error("scoring input: {0}")]
    Input(String),
}

impl From<ort::Error> for ModelError {
    fn from(source: ort::Error) -> Self {
        Self::Session { source }
    }
}

/// A session builder's error, without the builder it hands back for a retry.
impl From<ort::Error<ort::session::builder::SessionBuilder>> for ModelError {
    fn from(error: ort::Error<ort::session::builder::SessionBuilder>) -> Self {
        Self::Session {
            source: error.into(),
        }
    }
}

/// Classification quality on a labelled validation period.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    pub rows: u64,
    pub frauds: u64,
    pub roc_auc: f64,
    pub pr_auc: f64,
    /// Share of frauds flagged when the alert rate is `alert_rate`.
    pub recall_at_alert_rate: f64,
    pub precision_at_alert_rate: f64,
    pub alert_rate: f64,
}

/// `model.json`: what the model expects and how far to trust it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelCard {
    pub name: String,
    pub kind: String,
    /// Feature names, in the order of the ONNX input's columns.
    pub features: Vec<String>,
    /// Rows scoring at or above this are anomalies.
    pub threshold: f64,
    /// How the threshold was chosen.
    pub threshold_rule: String,
    /// Layer sizes, input first; of the widest member where an ensemble's members differ
    /// (its first size can then exceed the feature count: inputs the model derives).
    pub architecture: Vec<usize>,
    pub training: TrainingInfo,
    /// Metrics on the validation period, when it had labels.
    pub validation: Option<Metrics>,
    pub created_at: String,
    /// An alert rule that also weighs the card's recent scores (absent: a row's own score
    /// against `threshold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_scores: Option<CardScores>,
}

/// The alert rule over a card's recent scores (sql/score.sql): a row's alert score is its
/// score plus `weight` × the mean of its card's scores over the last 24 hours (this row
/// included), and the row is an anomaly when that reaches `threshold`. Fraud here comes in
/// bursts, each row only somewhat unusual; the card's recent scores add them up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CardScores {
    pub weight: f64,
    pub threshold: f64,
    /// How the threshold was chosen.
    pub threshold_rule: String,
    /// The rule's metrics on the validation period, when it had labels.
    pub validation: Option<Metrics>,
}

impl ModelCard {
    /// The weight of the card's recent scores in the alert score (0 without the rule).
    pub fn card_weight(&self) -> f64 {
        self.card_scores.as_ref().map_or(0.0, |c| c.weight)
    }

    /// The threshold of the alert score: the rule's, or the row score's without one.
    pub fn alert_threshold(&self) -> f64 {
        self.card_scores
            .as_ref()
            .map_or(self.threshold, |c| c.threshold)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainingInfo {
    pub inputs: Vec<String>,
    pub period: (String, String),
    pub validation_period: (String, String),
    pub train_rows: u64,
    pub validation_rows: u64,
    /// SHA-256 of the training rows' `trans_num`s in time order.
    pub data_sha256: String,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Seed of the first ensemble member (member k used seed + k).
    pub seed: u64,
    /// Autoencoders averaged into the model.
    pub ensemble: usize,
    pub error_cap: f32,
    pub final_train_loss: f64,
    pub final_validation_loss: f64,
    pub framework: String,
    /// Autoencoders: the denoising noise, the early-stopping patience (0: none) and
    /// whether the scaling was robust (median / IQR). Absent from older cards.
    #[serde(default)]
    pub input_noise: f32,
    #[serde(default)]
    pub patience: usize,
    #[serde(default)]
    pub robust_scaling: bool,
    /// How the ensemble's members' errors combine (`mean`, `min`; absent: mean).
    #[serde(default)]
    pub combination: String,
    /// Inputs the model derives inside its graph from the features, each with how
    /// (e.g. the amount against its category's; absent: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub derived_inputs: Vec<String>,
    /// When several ensembles were trained from other seeds and one kept: how it was
    /// chosen and what each measured (absent: one seed, nothing chosen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed_selection: Option<SeedSelection>,
    /// Inputs whose reconstruction error counts on one side only (`above` / `below` their
    /// reconstruction: the risky side); the others count both (absent: all both).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub error_sides: BTreeMap<String, String>,
}

/// How the kept ensemble was chosen among ensembles trained from other seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedSelection {
    pub rule: String,
    /// Each candidate's first seed and how its scores ranked the training rows' labels.
    pub candidates: Vec<SeedCandidate>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedCandidate {
    pub seed: u64,
    pub train_roc_auc: f64,
    pub train_pr_auc: f64,
    /// The candidate's own figures on the validation period (the row's score; for the
    /// record, not for the choice). Absent from older cards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Metrics>,
}

impl ModelCard {
    pub fn read(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("model.json");
        Self::parse(&read(&path)?, &path)
    }

    /// The card in `bytes`, read from `path`.
    fn parse(bytes: &[u8], path: &Path) -> Result<Self, ModelError> {
        let text = std::str::from_utf8(bytes).map_err(|e| ModelError::Missing {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        serde_json::from_str(text).map_err(|e| ModelError::BadCard {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("model.json"), text + "\n")
    }
}

/// How ONNX Runtime may use the machine.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    /// Intra-op threads. 1 (the default): scoring runs on the calling thread, with one
    /// session per core so that callers on different cores (DataFusion's partitions) score
    /// at once. More than 1: one session whose pool has this many threads.
    pub threads: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self { threads: 1 }
    }
}

/// A model's id: its card's name, `@`, and the first 12 hex digits of its digest.
pub(crate) fn id_of(name: &str, digest: &[u8; 32]) -> String {
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("{name}@{hex}")
}

/// See [`Model::digest`].
pub(crate) fn digest_of(onnx: &Path, card: &Path) -> Result<[u8; 32], ModelError> {
    Ok(digest_bytes(&read(onnx)?, &read(card)?))
}

fn digest_bytes(onnx: &[u8], card: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(onnx);
    hasher.update(card);
    hasher.finalize().into()
}

fn read(path: &Path) -> Result<Vec<u8>, ModelError> {
    std::fs::read(path).map_err(|e| ModelError::Missing {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// What a model is for: its graph's outputs differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The autoencoder: `output`, `feature_error`, `score` (the reconstruction error).
    Anomaly,
    /// Trees on the labels: `probability`.
    Supervised,
}

impl Role {
    /// The output that scores a row: higher is more suspicious, and the card's threshold
    /// applies to it.
    pub fn score_output(self) -> &'static str {
        match self {
            Role::Anomaly => SCORE,
            Role::Supervised => PROBABILITY,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Anomaly => "anomaly (autoencoder)",
            Role::Supervised => "supervised (fraud probability)",
        })
    }
}

/// A loaded model: its card and the ONNX Runtime sessions shared by every caller.
pub struct Model {
    pub card: ModelCard,
    pub dir: PathBuf,
    /// SHA-256 of `model.onnx` then `model.json`: what exactly scores (a retrained or
    /// recalibrated model under the same name has another).
    pub digest: [u8; 32],
    /// `name@` and the first 12 hex digits of [`Self::digest`].
    pub id: String,
    pub role: Role,
    // `Session::run` needs `&mut`, so a session serves one caller at a time. With one
    // intra-op thread a session has no thread pool (it runs on the caller's thread), and
    // one session per core lets the partitions of a plan score in parallel: with a single
    // one they took turns, and rescoring ran at the speed of one core. With more threads
    // there is one session and one pool (several pools would fight for the cores);
    // spinning is off so an idle pool does not steal them. (With a cut graph, below,
    // there are two such pools, but a scoring path uses only one of them.)
    sessions: Vec<Mutex<Session>>,
    /// Sessions of the graph cut down to the anomaly score (see
    /// [`risksense_onnx::keep_outputs`]), when the graph is one of ours and has other
    /// outputs; empty otherwise.
    score_sessions: Vec<Mutex<Session>>,
    next_session: AtomicUsize,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("id", &self.id)
            .field("dir", &self.dir)
            .field("features", &self.card.features.len())
            .finish()
    }
}

impl Model {
    /// Loads the anomaly model in `dir` (`model.onnx` and `model.json`), checking that they
    /// agree and that the graph has the autoencoder's outputs.
    pub fn load(dir: &Path, options: SessionOptions) -> Result<Self, ModelError> {
        Self::open(dir, options, Some(Role::Anomaly))
    }

    /// Loads the supervised model in `dir` (`risksense train --model trees`): a graph
    /// with a [`PROBABILITY`] output.
    pub fn load_supervised(dir: &Path, options: SessionOptions) -> Result<Self, ModelError> {
        Self::open(dir, options, Some(Role::Supervised))
    }

    /// Loads whichever kind of model `dir` holds (a shadow model may be either): a graph
    /// with a [`PROBABILITY`] output and no [`SCORE`] is supervised, any other an anomaly
    /// model, checked as [`Self::load`] checks it.
    pub fn load_any(dir: &Path, options: SessionOptions) -> Result<Self, ModelError> {
        Self::open(dir, options, None)
    }

    fn open(dir: &Path, options: SessionOptions, role: Option<Role>) -> Result<Self, ModelError> {
        // The card, the graph and the id from one read of each file.
        let card_path = dir.join("model.json");
        let card_bytes = read(&card_path)?;
        let card = ModelCard::parse(&card_bytes, &card_path)?;
        let onnx = dir.join("model.onnx");
        if !onnx.is_file() {
            return Err(ModelError::Missing {
                path: onnx,
                reason: "file not found".to_string(),
            });
        }
        let environment = onnx_runtime::environment()?;
        let threads = options.threads.max(1);
        let count = if threads == 1 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            1
        };
        let graph = read(&onnx)?;
        let digest = digest_bytes(&graph, &card_bytes);
        let id = id_of(&card.name, &digest);
        // The graph cut down to the score (see the field), when it is one of ours; then
        // the whole graph loads from the same bytes, so both are the model the id names.
        // Bytes our messages cannot read are left to ONNX Runtime, whose error says more.
        let score_graph = risksense_onnx::keep_outputs(&graph, &[SCORE])
            .ok()
            .flatten();
        let builder = || -> Result<SessionBuilder, ModelError> {
            Ok(Session::builder(environment)?
                .with_optimization_level(GraphOptimizationLevel::Level3)?
                .with_intra_threads(threads)?
                .with_inter_threads(1)?
                .with_intra_op_spinning(false)?
                .with_inter_op_spinning(false)?)
        };
        let sessions = (0..count)
            .map(|_| match score_graph {
                Some(_) => Ok(builder()?.commit_from_memory(&graph)?),
                // Another tool's model may keep its weights in files beside it, found
                // from the model's path.
                None => Ok(builder()?.commit_from_file(&onnx)?),
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let session = &sessions[0];
        let mismatch = |reason: String| ModelError::Mismatch {
            path: onnx.clone(),
            reason,
        };
        let input = session
            .inputs()
            .iter()
            .find(|i| i.name() == INPUT)
            .ok_or_else(|| mismatch(format!("the graph has no `{INPUT}` input")))?;
        let width = input
            .dtype()
            .tensor_shape()
            .and_then(|shape| shape.last().copied())
            .ok_or_else(|| mismatch("the input is not a 2-D tensor".to_string()))?;
        if width != card.features.len() as i64 {
            return Err(mismatch(format!(
                "the graph takes {width} features, the card lists {}",
                card.features.len()
            )));
        }
        let has = |name: &str| session.outputs().iter().any(|o| o.name() == name);
        let role = role.unwrap_or(if has(PROBABILITY) && !has(SCORE) {
            Role::Supervised
        } else {
            Role::Anomaly
        });
        match role {
            Role::Supervised if !has(PROBABILITY) => {
                return Err(mismatch(format!(
                    "a supervised model needs a `{PROBABILITY}` output (`risksense train \
                     --model trees` writes one); this graph has none"
                )));
            }
            Role::Supervised => {}
            Role::Anomaly if has(PROBABILITY) && !has(SCORE) => {
                return Err(mismatch(
                    "it is a supervised model (a `probability` output; `risksense train \
                     --model trees`), and the scoring plan runs an anomaly model (outputs \
                     `output`, `feature_error` and `score`)"
                        .to_string(),
                ));
            }
            Role::Anomaly => {
                if let Some(name) = [OUTPUT, FEATURE_ERROR, SCORE].into_iter().find(|n| !has(n)) {
                    return Err(mismatch(format!("the graph has no `{name}` output")));
                }
            }
        }
        // Only an anomaly model is asked for the score. Were the cut graph refused, the
        // whole one still scores (the same numbers, at its cost).
        let score_sessions = match (role, &score_graph) {
            (Role::Anomaly, Some(cut)) => (0..count)
                .map(|_| Ok(builder()?.commit_from_memory(cut)?))
                .collect::<Result<Vec<_>, ModelError>>()
                .unwrap_or_else(|error| {
                    tracing::warn!(%error, model = %id, "the graph cut down to the score was refused; scoring runs the whole graph");
                    Vec::new()
                }),
            _ => Vec::new(),
        };
        Ok(Self {
            card,
            dir: dir.to_path_buf(),
            digest,
            id,
            role,
            sessions: sessions.into_iter().map(Mutex::new).collect(),
            score_sessions: score_sessions.into_iter().map(Mutex::new).collect(),
            next_session: AtomicUsize::new(0),
        })
    }

    /// Whether scoring runs the graph cut down to the score (see the field).
    pub fn scores_on_a_cut_graph(&self) -> bool {
        !self.score_sessions.is_empty()
    }

    pub fn feature_count(&self) -> usize {
        self.card.features.len()
    }

    /// Runs the graph on a row-major matrix of `rows` x features and returns the named
    /// output, flattened.
    pub fn run(&self, matrix: &[f32], rows: usize, output: &str) -> Result<Vec<f32>, ModelError> {
        let [values] = self.run_outputs(matrix, rows, [output])?;
        Ok(values)
    }

    /// Like [`Model::run`], for several outputs of one run (e.g. [`SCORE`] and
    /// [`FEATURE_ERROR`]): the graph runs once. ONNX Runtime computes all of a graph's
    /// outputs whichever are asked for, so the score is computed by the graph cut down to
    /// it (when there is one), the other outputs by the whole graph.
    pub fn run_outputs<const N: usize>(
        &self,
        matrix: &[f32],
        rows: usize,
        outputs: [&str; N],
    ) -> Result<[Vec<f32>; N], ModelError> {
        let width = self.feature_count();
        if matrix.len() != rows * width {
            return Err(ModelError::Input(format!(
                "{} values is not {rows} rows of {width} features",
                matrix.len()
            )));
        }
        if rows == 0 {
            return Ok(std::array::from_fn(|_| Vec::new()));
        }
        let mut result: [Vec<f32>; N] = std::array::from_fn(|_| Vec::new());
        // The score comes from the cut graph whenever there is one, also beside other
        // outputs: one graph gives every caller (the stream, the API, the threshold's
        // calibration) the same number for a row.
        let cut = !self.score_sessions.is_empty();
        let (from_cut, from_whole): (Vec<usize>, Vec<usize>) =
            (0..N).partition(|&k| cut && outputs[k] == SCORE);
        for (pool, slots) in [
            (&self.score_sessions, from_cut),
            (&self.sessions, from_whole),
        ] {
            if slots.is_empty() {
                continue;
            }
            let tensor = TensorRef::from_array_view(([rows, width], matrix))?;
            let selector = slots
                .iter()
                .fold(OutputSelector::no_default(), |selector, &k| {
                    selector.with(outputs[k])
                });
            let options = RunOptions::new()?.with_outputs(selector);
            let mut session = self.session(pool)?;
            let values = session.run_with_options(ort::inputs![INPUT => tensor], &options)?;
            for k in slots {
                let name = outputs[k];
                let value = values
                    .get(name)
                    .ok_or_else(|| ModelError::Ort(format!("no `{name}` in the outputs")))?;
                let (_, data) = value.try_extract_tensor::<f32>()?;
                result[k] = data.to_vec();
            }
        }
        Ok(result)
    }

    /// A free session if there is one (trying each once, from a rotating start), else
    /// the next one in turn.
    fn session<'a>(
        &self,
        pool: &'a [Mutex<Session>],
    ) -> Result<MutexGuard<'a, Session>, ModelError> {
        let poisoned = || ModelError::Ort("a previous scoring call panicked".to_string());
        let count = pool.len();
        let start = self.next_session.fetch_add(1, Ordering::Relaxed) % count;
        for k in 0..count {
            match pool[(start + k) % count].try_lock() {
                Ok(session) => return Ok(session),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Poisoned(_)) => return Err(poisoned()),
            }
        }
        pool[start].lock().map_err(|_| poisoned())
    }

    /// Anomaly scores of each row (the graph's `score` output).
    pub fn score(&self, matrix: &[f32], rows: usize) -> Result<Vec<f32>, ModelError> {
        self.run(matrix, rows, SCORE)
    }
}
