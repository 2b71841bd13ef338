use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use risksense_udfs::{Model, ModelControl, ModelRegistry, SessionOptions, Slot};

/// Where the default model lives, relative to the working directory or the source tree.
const DEFAULT_MODEL: &str = "models/default";

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model folder (model.onnx + model.json) [default: models/default]
    #[arg(long, env = "RISKSENSE_MODEL")]
    pub model: Option<PathBuf>,
    /// ONNX Runtime intra-op threads (1: one session per core, each scoring on its
    /// caller's thread; more: one session with a pool of this many).
    #[arg(long, default_value_t = 1)]
    pub model_threads: usize,
    /// Run without a model (features only; anomaly_score is not registered).
    #[arg(long, conflicts_with = "model")]
    pub no_model: bool,
    /// Shadow model folder: scores every row beside the champion (its score and flag go
    /// to the archive and metrics, never to alerts). An anomaly or a supervised model.
    #[arg(long, env = "RISKSENSE_CHALLENGER")]
    pub challenger: Option<PathBuf>,
    /// Supervised model folder (`risksense train --model trees`): its fraud probability
    /// joins the champion's anomaly score in score.sql's alert rule (an alert when either
    /// flags a row; `risk` ranks by the probability first).
    #[arg(long, env = "RISKSENSE_SUPERVISED")]
    pub supervised: Option<PathBuf>,
    /// Registry: the folder of model folders `POST /v1/models/champion`,
    /// `/v1/models/challenger` and `/v1/models/supervised` choose from [default: the
    /// champion's parent folder]
    #[arg(long, env = "RISKSENSE_REGISTRY")]
    pub registry: Option<PathBuf>,
}

impl ModelArgs {
    /// The model folder: --model, else ./models/default, else the source tree's.
    pub fn dir(&self) -> PathBuf {
        if let Some(dir) = &self.model {
            return dir.clone();
        }
        let local = PathBuf::from(DEFAULT_MODEL);
        if local.is_dir() {
            return local;
        }
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL)
    }

    pub fn load(&self) -> anyhow::Result<Arc<Model>> {
        let dir = self.dir();
        let model = Model::load(
            &dir,
            SessionOptions {
                threads: self.model_threads,
            },
        )
        .with_context(|| format!("loading the model in {}", dir.display()))?;
        tracing::info!(model = %model.id, dir = %dir.display(), "model loaded");
        Ok(Arc::new(model))
    }

    fn session_options(&self) -> SessionOptions {
        SessionOptions {
            threads: self.model_threads,
        }
    }

    /// The shadow model (`--challenger`), if one is given: each call loads its own
    /// sessions.
    pub fn load_challenger(&self) -> anyhow::Result<Option<Arc<Model>>> {
        let Some(dir) = &self.challenger else {
            return Ok(None);
        };
        let model = Model::load_any(dir, self.session_options())
            .with_context(|| format!("loading the challenger in {}", dir.display()))?;
        tracing::info!(challenger = %model.id, role = %model.role, "challenger loaded");
        Ok(Some(Arc::new(model)))
    }

    /// The supervised model (`--supervised`), if one is given: each call loads its own
    /// sessions.
    pub fn load_supervised(&self) -> anyhow::Result<Option<Arc<Model>>> {
        let Some(dir) = &self.supervised else {
            return Ok(None);
        };
        let model = Model::load_supervised(dir, self.session_options())
            .with_context(|| format!("loading the supervised model in {}", dir.display()))?;
        tracing::info!(supervised = %model.id, "supervised model loaded");
        Ok(Some(Arc::new(model)))
    }

    /// Puts the challenger and the supervised model, if given, beside the champion of
    /// `handle` (each call loads its own sessions).
    pub fn load_beside(&self, handle: &risksense_udfs::ModelHandle) -> anyhow::Result<()> {
        for (slot, model) in [
            (Slot::Challenger, self.load_challenger()?),
            (Slot::Supervised, self.load_supervised()?),
        ] {
            handle
                .put(slot, model)
                .with_context(|| format!("the {slot} model does not fit the champion's plan"))?;
        }
        Ok(())
    }

    /// The models in service for the API and model changes, starting from `champion`,
    /// `challenger` and `supervised` (the API's instances).
    pub fn control(
        &self,
        champion: Arc<Model>,
        challenger: Option<Arc<Model>>,
        supervised: Option<Arc<Model>>,
    ) -> anyhow::Result<Arc<ModelControl>> {
        // The champion's folder's parent, absolute (`--model mymodel` has the parent "").
        let registry = self
            .registry
            .clone()
            .or_else(|| {
                champion
                    .dir
                    .canonicalize()
                    .ok()
                    .and_then(|dir| dir.parent().map(std::path::Path::to_path_buf))
            })
            .map(ModelRegistry::new);
        let control = ModelControl::new(champion, challenger, registry, self.session_options())
            .context("the challenger does not fit the champion's plan")?;
        control
            .api()
            .put(Slot::Supervised, supervised)
            .context("the supervised model does not fit the champion's plan")?;
        Ok(Arc::new(control))
    }

    pub fn load_optional(&self) -> anyhow::Result<Option<Arc<Model>>> {
        if self.no_model {
            Ok(None)
        } else {
            self.load().map(Some)
        }
    }
}

/// Keeps this process's models those its consumer group records in `store` (changes made
/// through any member's API; see `risksense_api::models::follow_group`).
pub fn follow_group(
    runtime: &tokio::runtime::Runtime,
    control: Arc<ModelControl>,
    store: risksense_store::Store,
) {
    let _inside = runtime.enter();
    risksense_api::models::follow_group(control, store);
}

/// Loads the served models again on SIGHUP and switches to those whose files changed (a
/// retrained model written over its folder), between micro-batches as any change.
pub fn reload_on_hangup(runtime: &tokio::runtime::Runtime, control: Arc<ModelControl>) {
    runtime.spawn(async move {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hangups.recv().await.is_some() {
            let results = control.reload().await;
            if results.is_empty() {
                tracing::info!("SIGHUP: the served models' files are unchanged");
            }
            for result in results {
                match result {
                    Ok(changed) => tracing::info!(slot = %changed.slot, current = ?changed.current, previous = ?changed.previous, "SIGHUP: model reloaded"),
                    Err(error) => tracing::error!(%error, "SIGHUP: reloading a model failed; the running one stays"),
                }
            }
        }
    });
}
