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
//! The handle also holds two optional models beside the champion, each in its [`Slot`]:
//! the *challenger* (shadow model), which `challenger_score` runs on every row for
//! comparison only, and the *supervised* model, whose `fraud_probability` score.sql
//! combines with the champion's anomaly score into the alert decision.
//!
//! Nothing here orders a swap against a running batch: the functions of one batch load
//! the handle separately, so whoever swaps must do it between batches (the stream applies
//! swaps between micro-batches, see `crate::control`).

use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::model::{Model, Role};

/// Which of a handle's models something is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The anomaly model: scores every row, raises alerts and answers `/v1/score`.
    Champion,
    /// Scores every row beside the champion, for comparison only (either kind).
    Challenger,
    /// A supervised model (a fraud probability) that score.sql combines with the
    /// champion's score: its flags raise alerts too.
    Supervised,
}

impl Slot {
    pub const ALL: [Slot; 3] = [Slot::Champion, Slot::Challenger, Slot::Supervised];

    /// The slot its [`Display`](std::fmt::Display) name names.
    pub fn named(name: &str) -> Option<Slot> {
        Self::ALL.into_iter().find(|slot| slot.to_string() == name)
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Slot::Champion => "champion",
            Slot::Challenger => "challenger",
            Slot::Supervised => "supervised",
        })
    }
}

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
         anomalies with its per-feature errors); serve it as the challenger or, if it is \
         supervised, in the supervised slot instead"
    )]
    NotAnomaly { model: String, role: Role },
    /// The supervised slot takes a fraud probability; this model is of another kind.
    #[error(
        "model `{model}` is {role}: the supervised slot takes a supervised model (`risksense \
         train --model trees`); serve an anomaly model as the champion or the challenger"
    )]
    NotSupervised { model: String, role: Role },
}

/// The current model of a session's model functions (see the module documentation).
pub struct ModelHandle {
    current: ArcSwap<Model>,
    challenger: ArcSwapOption<Model>,
    supervised: ArcSwapOption<Model>,
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
            .field("supervised", &*self.supervised.load())
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
            supervised: ArcSwapOption::empty(),
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
        self.put(Slot::Challenger, model)
    }

    /// The supervised model, if one is set.
    pub fn supervised(&self) -> Option<Arc<Model>> {
        self.supervised.load_full()
    }

    /// Whether `model` could go in `slot`: the plan's features, and the kind of model the
    /// slot takes.
    pub fn check(&self, slot: Slot, model: &Model) -> Result<(), SwapError> {
        match slot {
            Slot::Champion => self.check_champion(model),
            Slot::Challenger => self.check_features(model),
            Slot::Supervised => {
                self.check_features(model)?;
                if model.role != Role::Supervised {
                    return Err(SwapError::NotSupervised {
                        model: model.id.clone(),
                        role: model.role,
                    });
                }
                Ok(())
            }
        }
    }

    /// The model in `slot` (the champion is always there).
    pub fn in_slot(&self, slot: Slot) -> Option<Arc<Model>> {
        match slot {
            Slot::Champion => Some(self.load()),
            Slot::Challenger => self.challenger(),
            Slot::Supervised => self.supervised(),
        }
    }

    /// Puts `model` in `slot` for every batch that starts from now on (None empties the
    /// slot; the champion can only be replaced, so None leaves it) and returns the
    /// previous one. Refuses a model [`Self::check`] refuses.
    pub fn put(
        &self,
        slot: Slot,
        model: Option<Arc<Model>>,
    ) -> Result<Option<Arc<Model>>, SwapError> {
        let optional = match slot {
            Slot::Champion => return model.map(|model| self.swap(model)).transpose(),
            Slot::Challenger => &self.challenger,
            Slot::Supervised => &self.supervised,
        };
        if let Some(model) = &model {
            self.check(slot, model)?;
        }
        Ok(optional.swap(model))
    }

    /// A new handle holding this one's models as they are now: one request's session then
    /// sees one set of models, whatever changes meanwhile.
    pub fn snapshot(&self) -> Self {
        Self {
            current: ArcSwap::new(self.load()),
            challenger: ArcSwapOption::new(self.challenger()),
            supervised: ArcSwapOption::new(self.supervised()),
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
