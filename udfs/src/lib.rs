//! RiskSense SQL functions and the model runtime they use.
//!
//! This crate owns everything that touches ONNX Runtime: loading the shared library
//! ([`onnx_runtime`]), trained models and their cards ([`model`]), the handle through
//! which the functions read the current model ([`handle`]), and the DataFusion functions
//! that score rows ([`functions`]).

pub mod functions;
pub mod handle;
pub mod model;
pub mod onnx_runtime;
pub mod windows;

pub use functions::register;
pub use handle::{ModelHandle, SwapError};
pub use model::{Model, ModelCard, SessionOptions};
