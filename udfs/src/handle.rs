//! The model a plan's functions score with, replaceable while the plan runs.
//!
//! `anomaly_score`, `anomaly_explain` and `anomaly_threshold` hold a [`ModelHandle`], not
//! a model, and load its current model once per call (one Arrow batch). A plan built once
//! — the stream's, with its per-card history — can so move to another model between two
//! batches with [`ModelHandle::swap`], without planning again and without losing state.
//!
//! What a plan fixed when it was built cannot change: the calls' arguments are the feature
//! columns of the model the handle started with, in that order. A model whose card lists
//! other features is refused ([`SwapError::FeaturesDiffer`]).

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::model::Model;

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
}

/// The current model of a session's model functions (see the module documentation).
pub struct ModelHandle {
    current: ArcSwap<Model>,
    /// The feature list every model of this handle takes (the first model's).
    features: Vec<String>,
}

impl std::fmt::Debug for ModelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelHandle")
            .field("current", &*self.current.load())
            .finish()
    }
}

impl ModelHandle {
    /// A handle whose model is `model`; later models must take the same features.
    pub fn new(model: Arc<Model>) -> Self {
        Self {
            features: model.card.features.clone(),
            current: ArcSwap::new(model),
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
        if model.card.features != self.features {
            return Err(SwapError::FeaturesDiffer {
                model: model.card.name.clone(),
                expected: self.features.clone(),
                offered: model.card.features.clone(),
            });
        }
        Ok(self.current.swap(model))
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
