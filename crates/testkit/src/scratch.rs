//! Scratch folders that clean up after themselves.

use std::path::{Path, PathBuf};

/// A folder under the system's temp dir, unique to this run, removed when dropped — unless
/// the test is failing (a panic unwinding), so what it left can be looked at.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    /// Creates `<temp>/<name>-<pid>-<nanos>`.
    pub fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("creating scratch folder {}: {e}", dir.display()));
        Self(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_folder_is_gone_once_dropped() {
        let scratch = Scratch::new("testkit-scratch");
        let path = scratch.to_path_buf();
        std::fs::write(scratch.join("file"), b"x").expect("write");
        assert!(path.join("file").exists());
        drop(scratch);
        assert!(!path.exists());
    }
}
