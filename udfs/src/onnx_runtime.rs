//! Finding and loading ONNX Runtime.
//!
//! `ort` is built with `load-dynamic`: the shared library is opened at run time. Our setup
//! (`scripts/services.sh onnxruntime`) takes `libonnxruntime.so.1.31.1` out of the PyPI
//! `onnxruntime` wheel into `.local/onnxruntime/` and copies it beside the built binaries, so
//! neither the binary nor the tests need a variable set by the user.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The ONNX Runtime release our `ort` version is built against.
pub const ONNX_RUNTIME_VERSION: &str = "1.31.1";

/// The command that installs the library, named in every "not found" error.
pub const SETUP_COMMAND: &str = "scripts/services.sh onnxruntime";

/// Overrides the search below with an explicit path to `libonnxruntime.so`.
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";

const LIB_NAMES: [&str; 2] = ["libonnxruntime.so", "libonnxruntime.so.1.31.1"];

#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime {ONNX_RUNTIME_VERSION} was not found (looked in: {}). \
         Install it with `{SETUP_COMMAND}` from the repository root, or set {DYLIB_ENV} to the library's path",
        .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound { searched: Vec<PathBuf> },
    #[error("could not load ONNX Runtime from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("ONNX Runtime loaded but its environment could not be created: {0}")]
    Environment(String),
}

/// What was loaded, for logs and `risksense doctor`-style reports.
#[derive(Debug, Clone)]
pub struct RuntimeInfo {
    pub library: PathBuf,
}

static RUNTIME: OnceLock<Result<(RuntimeInfo, ort::environment::Environment), RuntimeError>> =
    OnceLock::new();

/// Candidate locations, most specific first.
pub fn candidate_paths() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // Beside the binary, and one level up: test executables live in target/<profile>/deps.
        if let Some(dir) = exe.parent() {
            dirs.push(dir.to_path_buf());
            if let Some(up) = dir.parent() {
                dirs.push(up.to_path_buf());
            }
        }
    }
    // The source tree this binary was built from (the setup script's install folder).
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    dirs.push(workspace.join(".local").join("onnxruntime"));
    dirs.push(PathBuf::from("/usr/local/lib/risksense"));
    dirs.iter()
        .flat_map(|dir| LIB_NAMES.iter().map(move |name| dir.join(name)))
        .collect()
}

/// Locates the library: `ORT_DYLIB_PATH` if set, else the first candidate that exists.
pub fn locate() -> Result<PathBuf, RuntimeError> {
    locate_in(
        std::env::var_os(DYLIB_ENV).map(PathBuf::from),
        candidate_paths(),
    )
}

/// [`locate`] with its inputs given: an explicit path wins and must exist; otherwise the
/// first existing candidate.
pub fn locate_in(
    explicit: Option<PathBuf>,
    candidates: Vec<PathBuf>,
) -> Result<PathBuf, RuntimeError> {
    if let Some(path) = explicit {
        // Absolute, so that ort never resolves it against the executable's folder.
        return match std::fs::canonicalize(&path) {
            Ok(absolute) if absolute.is_file() => Ok(absolute),
            _ => Err(RuntimeError::NotFound {
                searched: vec![path],
            }),
        };
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or(RuntimeError::NotFound {
            searched: candidates,
        })
}

/// Loads ONNX Runtime once per process and creates its global environment.
///
/// Safe to call from many places: the first call does the work, later calls return the same
/// outcome. A missing or broken library is an error here, never a panic later inside `ort`.
pub fn init() -> Result<RuntimeInfo, RuntimeError> {
    let outcome = RUNTIME.get_or_init(|| {
        let library = locate()?;
        let builder = ort::init_from(&library).map_err(|e| RuntimeError::Load {
            path: library.clone(),
            reason: e.to_string(),
        })?;
        let environment = builder
            .with_name("risksense")
            .with_telemetry(false)
            .build()
            .map_err(|e| RuntimeError::Environment(e.to_string()))?;
        tracing::debug!(library = %library.display(), "ONNX Runtime loaded");
        Ok((RuntimeInfo { library }, environment))
    });
    match outcome {
        Ok((info, _)) => Ok(info.clone()),
        Err(error) => Err(error.clone()),
    }
}

/// The process-wide ONNX Runtime environment sessions are created in (loads the library
/// on first use).
pub fn environment() -> Result<&'static ort::environment::Environment, RuntimeError> {
    match RUNTIME.get() {
        Some(Ok((_, environment))) => Ok(environment),
        _ => {
            init()?;
            match RUNTIME.get() {
                Some(Ok((_, environment))) => Ok(environment),
                Some(Err(error)) => Err(error.clone()),
                None => Err(RuntimeError::Environment("not initialised".to_string())),
            }
        }
    }
}

/// The build description the loaded library reports (proves it is loaded and callable).
pub fn build_info() -> Result<String, RuntimeError> {
    init()?;
    Ok(ort::info().to_string())
}
