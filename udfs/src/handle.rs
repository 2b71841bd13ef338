//! The model a plan's functions score with, replaceable while the plan runs.
//!
//! `anomaly_score`, `anomaly_explain` and `anomaly_threshold` hold a [`ModelHandle`], not
//! a model, and load its current model once per call (one Arrow batch). A plan built once
//! — the stream's, with its per-card history — can so move to another model between two
//! batches with [`ModelHandle::swap`], without planning again and without losing state.
//!
//! What a plan fixed when it was built cannot change: the calls' arguments are the feature
//! columns of the model the handle started with, in that order. A model whose card lists
//! other features is refused ([`SwapError::FeaturesDiffer`]), and so is a champion that
//! is not an anomaly model (the plan calls `anomaly_explain`, which needs the
//! autoencoder's per-feature errors).
//!
//! The handle also holds the optional *challenger* (shadow model): `challenger_score`
//! scores every row with it beside the champion, for comparison only.
//!
//! Nothing here orders a swap against a running batch: the functions of one batch load
//! the handle separately, so whoever swaps must do it between batches (the stream applies
//! swaps between micro-batches, see `crate::control`).

use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::model::{Model, Role};

/// Why [`ModelHandle::swap`] refused a model.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// The plan passes the handle's features, in its order; this model takes others.
    #[error(
        "model `{model}` takes the features [{}], but the plan passes [{}]: a model with other features needs a new plan",
        offered.join(", "),
        expected.join(", ")
    )]
    FeaturesDiffer {
        model: String,
        expected: Vec<String>,
        offered: Vec<String>,
    },
    /// The champion must be an autoencoder; this model is of another kind.
    #[error(
        "model `{model}` is {role}: the champion must be an anomaly model (the plan explains \
         anomalies with its per-feature errors); serve it as the challenger instead"
    )]
    NotAnomaly { model: String, role: Role },
}

/// The current model of a session's model functions (see the module documentation).
pub struct ModelHandle {
    current: ArcSwap<Model>,
    challenger: ArcSwapOption<Model>,
    /// Batches the challenger failed to score (its scores were null instead).
    challenger_failures: std::sync::atomic::AtomicU64,
    /// The feature list every model of this handle takes (the first model's).
    features: Vec<String>,
}

impl std::fmt::Debug for ModelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelHandle")
            .field("current", &*self.current.load())
            .field("challenger", &*self.challenger.load())
            .finish()
    }
}

impl ModelHandle {
    /// A handle whose model is `model`; later models must take the same features.
    pub fn new(model: Arc<Model>) -> Self {
        Self {
            features: model.card.features.clone(),
            current: ArcSwap::new(model),
            challenger: ArcSwapOption::empty(),
            challenger_failures: Default::default(),
        }
    }

    /// The current model. The functions call this once per batch; keep the result for as
    /// long as one unit of work should see one model.
    pub fn load(&self) -> Arc<Model> {
        self.current.load_full()
    }

    /// Makes `model` the current one for every batch that starts from now on (a batch
    /// already scoring finishes with the model it loaded) and returns the previous one.
    /// Refuses a model whose card lists other features, or the same in another order.
    pub fn swap(&self, model: Arc<Model>) -> Result<Arc<Model>, SwapError> {
        self.check_champion(&model)?;
        Ok(self.current.swap(model))
    }

    /// Whether `model` could become the champion ([`Self::swap`] would take it).
    pub fn check_champion(&self, model: &Model) -> Result<(), SwapError> {
        self.check_features(model)?;
        if model.role != Role::Anomaly {
            return Err(SwapError::NotAnomaly {
                model: model.id.clone(),
                role: model.role,
            });
        }
        Ok(())
    }

    /// Whether `model` takes the plan's features (a challenger of either kind must).
    pub fn check_features(&self, model: &Model) -> Result<(), SwapError> {
        if model.card.features != self.features {
            return Err(SwapError::FeaturesDiffer {
                model: model.id.clone(),
                expected: self.features.clone(),
                offered: model.card.features.clone(),
            });
        }
        Ok(())
    }

    /// Counts a batch the challenger failed to score; returns the count so far.
    pub fn challenger_failed(&self) -> u64 {
        self.challenger_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }

    /// Batches the challenger failed to score so far.
    pub fn challenger_failures(&self) -> u64 {
        self.challenger_failures
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The challenger, if one is set.
    pub fn challenger(&self) -> Option<Arc<Model>> {
        self.challenger.load_full()
    }

    /// Sets (or with `None` removes) the challenger for every batch that starts from now
    /// on, and returns the previous one. Refuses a model that takes other features.
    pub fn set_challenger(
        &self,
        model: Option<Arc<Model>>,
    ) -> Result<Option<Arc<Model>>, SwapError> {
        if let Some(model) = &model {
            self.check_features(model)?;
        }
        Ok(self.challenger.swap(model))
    }

    /// A new handle holding this one's champion and challenger as they are now: one
    /// request's session then sees one pair of models, whatever changes meanwhile.
    pub fn snapshot(&self) -> Self {
        Self {
            current: ArcSwap::new(self.load()),
            challenger: ArcSwapOption::new(self.challenger()),
            challenger_failures: Default::default(),
            features: self.features.clone(),
        }
    }

    /// The features every model of this handle takes, in the order the plan passes them.
    pub fn features(&self) -> &[String] {
        &self.features
    }
}

impl From<Arc<Model>> for ModelHandle {
    fn from(model: Arc<Model>) -> Self {
        Self::new(model)
    }
}
