//! RiskSense SQL functions and the model runtime they use.
//!
//! This crate owns everything that touches ONNX Runtime: loading the shared library
//! ([`onnx_runtime`]), trained models and their cards ([`model`]), the handle through
//! which the functions read the current model ([`handle`]), the registry of model folders
//! ([`registry`]) and changes to the models in service ([`control`]), and the DataFusion functions
//! that score rows ([`functions`]).

pub mod control;
pub mod functions;
pub mod handle;
pub mod model;
pub mod onnx_runtime;
pub mod registry;
pub mod windows;

pub use control::{ControlError, ModelControl, Slot};
pub use functions::register;
pub use handle::{ModelHandle, SwapError};
pub use model::{Model, ModelCard, SessionOptions};
pub use registry::{ModelRegistry, RegistryEntry};
