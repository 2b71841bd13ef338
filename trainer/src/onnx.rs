//! The ONNX messages and graph builder the exports use live in `risksense-onnx`, shared
//! with the scorer (which prunes our graphs to the outputs it needs).

pub use risksense_onnx::*;
