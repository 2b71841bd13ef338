//! RiskSense SQL functions and the model runtime they use.
//!
//! This crate owns everything that touches ONNX Runtime: loading the shared library
//! ([`onnx_runtime`]) and, from the model issue on, the DataFusion UDFs that score rows.

pub mod onnx_runtime;
