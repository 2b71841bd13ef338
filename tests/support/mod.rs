//! Helpers of the `risksense` binary's end-to-end tests (each test file is its own crate;
//! this module is included by those that need it).
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Output};

/// The repository root: where `cargo test` runs the binary's tests, so relative paths
/// such as the default `models/default` resolve.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `risksense` with `args` in `cwd`.
pub fn risksense_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_risksense"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("risksense runs")
}

/// Its stdout and stderr, one after the other.
pub fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `risksense` with `args` in `cwd`; fails the test, with everything it printed,
/// unless it succeeds.
pub fn risksense_ok(cwd: &Path, args: &[&str]) -> Output {
    let output = risksense_in(cwd, args);
    assert!(
        output.status.success(),
        "risksense {args:?} failed:\n{}",
        text(&output)
    );
    output
}

/// A child process killed (SIGKILL) and reaped when the test ends, passing or not.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
