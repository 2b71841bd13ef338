use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use risksense_udfs::{Model, SessionOptions};

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

    pub fn load_optional(&self) -> anyhow::Result<Option<Arc<Model>>> {
        if self.no_model {
            Ok(None)
        } else {
            self.load().map(Some)
        }
    }
}
