//! ONNX Runtime is found and loaded with no variable set by the user.

use std::path::PathBuf;

use risksense_udfs::onnx_runtime::{self, RuntimeError, SETUP_COMMAND};

#[test]
fn loads_the_installed_library_without_configuration() {
    let info = onnx_runtime::init().unwrap_or_else(|e| {
        panic!("ONNX Runtime must be installed for the tests (`{SETUP_COMMAND}`): {e}")
    });
    assert!(info.library.is_file());
    let build = onnx_runtime::build_info().expect("loaded");
    assert!(
        build.starts_with("ORT Build Info"),
        "unexpected answer: {build}"
    );
    // A second call reuses the first load.
    assert_eq!(onnx_runtime::init().expect("again").library, info.library);
}

#[test]
fn a_missing_library_is_an_error_that_names_the_setup_command() {
    let missing = PathBuf::from("/nonexistent/libonnxruntime.so");
    let error = onnx_runtime::locate_in(None, vec![missing.clone()]).expect_err("not found");
    assert!(matches!(error, RuntimeError::NotFound { .. }));
    let message = error.to_string();
    assert!(message.contains(SETUP_COMMAND), "{message}");
    assert!(
        message.contains("/nonexistent/libonnxruntime.so"),
        "{message}"
    );
    // An explicit path that does not exist is refused even when a candidate would do.
    let real = onnx_runtime::locate().expect("installed");
    assert!(onnx_runtime::locate_in(Some(missing), vec![real]).is_err());
}
