//! RiskSense model training.
//!
//! A dense autoencoder trained with candle (a maintained autodiff framework with Adam) on
//! legitimate transactions, exported to ONNX for the scoring UDF, with the alert threshold
//! calibrated and the quality measured on a later validation period; and gradient-boosted
//! trees for where labels exist, exported as an ONNX tree ensemble (`trees`). Kept out of
//! the engine so the streaming build does not carry the training frameworks.

pub mod autoencoder;
pub mod category_amount;
pub mod error_side;
pub mod evaluate;
pub mod metrics;
pub mod onnx;
pub mod pipeline;
pub mod trees;

pub use autoencoder::{
    Autoencoder, Combination, Ensemble, EpochReport, Matrix, Standardizer, TrainConfig,
};
pub use error_side::ErrorSide;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("shape: {0}")]
    Shape(String),
    #[error("no data: {0}")]
    NoData(String),
    /// Settings that cannot go together.
    #[error("training settings: {0}")]
    Config(String),
    #[error(transparent)]
    Model(#[from] risksense_udfs::model::ModelError),
    #[error("writing the model: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Trees(#[from] trees::TreeError),
}
