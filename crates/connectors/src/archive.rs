//! The Parquet archive: every scored row, in rolling files that `rescore` and `sql` read.
//!
//! Each partition writes its own hidden in-progress file (`.scored-….parquet.inprogress`,
//! which readers skip), so a file's rows belong to exactly one partition checkpoint. At a
//! checkpoint, in this order:
//!
//! 1. [`ParquetArchive::take`] hands the file over (the partition's next rows start a new
//!    one) and [`UnsealedFile::seal`] finishes it (footer, fsync) and renames it to the
//!    still hidden `.scored-….parquet.sealed` (in the checkpoint's background task);
//! 2. the partition's checkpoint is saved, naming the sealed file;
//! 3. [`SealedFile::publish`] renames it to `scored-….parquet`.
//!
//! A crash before 2 leaves a hidden file no checkpoint names, and its rows (not in any
//! checkpoint) are read and archived again; in-progress leftovers are removed at start,
//! sealed ones stay hidden. A crash between 2 and 3 leaves a sealed file the checkpoint
//! names: whoever restores the partition publishes it ([`complete_publish`]). So each row
//! ends up in exactly one published file.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use arrow::array::RecordBatch;
use parquet::arrow::ArrowWriter;
use risksense_formats::codec::parquet::{
    Dictionaries, SCORED_DICTIONARY_COLUMNS, writer_properties,
};

use crate::error::ConnectorError;

/// Hidden files older than this were left by a crashed run: removed at start.
const ABANDONED_AFTER: Duration = Duration::from_secs(600);
/// Rows per row group: bounds the writer's memory.
const ROW_GROUP_ROWS: usize = 16_384;

pub struct ParquetArchive {
    dir: PathBuf,
    instance: String,
    sequence: u64,
    open: HashMap<i32, OpenFile>,
    files_written: u64,
}

struct OpenFile {
    writer: ArrowWriter<File>,
    name: String,
}

/// A partition's file taken out of the archive, still to be finished by [`Self::seal`].
pub struct UnsealedFile {
    open: OpenFile,
    dir: PathBuf,
}

/// A finished file waiting for its checkpoint before it is published.
#[derive(Debug, Clone)]
pub struct SealedFile {
    /// The name it is published under (in the archive folder).
    pub name: String,
    dir: PathBuf,
}

impl SealedFile {
    /// Renames it to its visible name (after its checkpoint is saved).
    pub fn publish(&self) -> Result<(), ConnectorError> {
        complete_publish(&self.dir, &self.name)
    }
}

fn in_progress(name: &str) -> String {
    format!(".{name}.inprogress")
}

fn sealed(name: &str) -> String {
    format!(".{name}.sealed")
}

impl ParquetArchive {
    pub fn new(dir: &Path, instance: &str) -> Result<Self, ConnectorError> {
        std::fs::create_dir_all(dir).map_err(|e| ConnectorError::Open {
            path: dir.to_path_buf(),
            source: e,
        })?;
        remove_abandoned(dir);
        Ok(Self {
            dir: dir.to_path_buf(),
            instance: instance.replace(['/', ' '], "_"),
            sequence: 0,
            open: HashMap::new(),
            files_written: 0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn files_written(&self) -> u64 {
        self.files_written
    }

    /// Appends scored rows of `partition`.
    pub fn append(&mut self, partition: i32, batch: &RecordBatch) -> Result<(), ConnectorError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if !self.open.contains_key(&partition) {
            let file = self.start_file(partition, batch)?;
            self.open.insert(partition, file);
        }
        if let Some(open) = self.open.get_mut(&partition) {
            open.writer.write(batch)?;
        }
        Ok(())
    }

    fn start_file(
        &mut self,
        partition: i32,
        batch: &RecordBatch,
    ) -> Result<OpenFile, ConnectorError> {
        self.sequence += 1;
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let name = format!(
            "scored-{stamp}-p{partition}-{}-{:06}.parquet",
            self.instance, self.sequence
        );
        let path = self.dir.join(in_progress(&name));
        let file = File::create(&path).map_err(|e| ConnectorError::Open {
            path: path.clone(),
            source: e,
        })?;
        // Dictionaries only for the columns whose values repeat (as `rescore` writes).
        let properties = writer_properties(
            ROW_GROUP_ROWS,
            Dictionaries::Only(&SCORED_DICTIONARY_COLUMNS),
        );
        let writer = ArrowWriter::try_new(file, batch.schema(), Some(properties))?;
        Ok(OpenFile { writer, name })
    }

    /// Takes `partition`'s open file out of the archive (to be sealed, maybe in the
    /// background); the partition's next rows start a new file.
    pub fn take(&mut self, partition: i32) -> Option<UnsealedFile> {
        self.open.remove(&partition).map(|open| UnsealedFile {
            open,
            dir: self.dir.clone(),
        })
    }

    /// Counts a file published with [`SealedFile::publish`].
    pub fn count_published(&mut self) {
        self.files_written += 1;
    }

    /// Drops `partition`'s open file without finishing it (its rows were never
    /// checkpointed and will be read again).
    pub fn abandon(&mut self, partition: i32) {
        if let Some(open) = self.open.remove(&partition) {
            drop(open.writer);
            let _ = std::fs::remove_file(self.dir.join(in_progress(&open.name)));
        }
    }

    pub fn abandon_all(&mut self) {
        let partitions: Vec<i32> = self.open.keys().copied().collect();
        for partition in partitions {
            self.abandon(partition);
        }
    }
}

impl UnsealedFile {
    /// A guard that removes this file's hidden copies (in progress or sealed) when it is
    /// dropped, unless [`DiscardOnDrop::keep`] was called: a file whose checkpoint was not
    /// saved holds rows that will be read and archived again.
    pub fn discard_on_drop(&self) -> DiscardOnDrop {
        DiscardOnDrop {
            dir: self.dir.clone(),
            name: self.open.name.clone(),
            armed: true,
        }
    }

    /// Finishes the file (its last row group, footer, fsync) under a hidden sealed name.
    pub fn seal(self) -> Result<SealedFile, ConnectorError> {
        let Self { open, dir } = self;
        let file = open.writer.into_inner()?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(
            dir.join(in_progress(&open.name)),
            dir.join(sealed(&open.name)),
        )?;
        Ok(SealedFile {
            name: open.name,
            dir,
        })
    }
}

/// See [`UnsealedFile::discard_on_drop`].
pub struct DiscardOnDrop {
    dir: PathBuf,
    name: String,
    armed: bool,
}

impl DiscardOnDrop {
    /// The file's checkpoint is saved: leave it for publishing.
    pub fn keep(&mut self) {
        self.armed = false;
    }
}

impl Drop for DiscardOnDrop {
    fn drop(&mut self) {
        if self.armed {
            // In this order: a seal still running elsewhere then fails to rename.
            let _ = std::fs::remove_file(self.dir.join(in_progress(&self.name)));
            let _ = std::fs::remove_file(self.dir.join(sealed(&self.name)));
        }
    }
}

/// Publishes the sealed file `name` in `dir` if it is still hidden (idempotent: a file
/// already published, or never sealed, is left alone).
pub fn complete_publish(dir: &Path, name: &str) -> Result<(), ConnectorError> {
    let from = dir.join(sealed(name));
    if !from.exists() {
        return Ok(());
    }
    std::fs::rename(&from, dir.join(name))?;
    if let Ok(folder) = File::open(dir) {
        // Make the rename itself durable.
        let _ = folder.sync_all();
    }
    Ok(())
}

fn remove_abandoned(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !(name.starts_with('.') && name.ends_with(".inprogress")) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age > ABANDONED_AFTER);
        if old {
            tracing::info!(file = %entry.path().display(), "removing an archive file a crashed run left unfinished");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn hidden_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn a_file_whose_checkpoint_was_not_saved_is_removed_a_saved_one_is_kept() {
        let dir = std::env::temp_dir().join(format!("risksense-archive-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut archive = ParquetArchive::new(&dir, "test").expect("archive folder");
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))])
            .expect("batch");

        // Dropped before its save (a failed, refused or aborted checkpoint): gone.
        archive.append(0, &batch).expect("appended");
        let file = archive.take(0).expect("an open file");
        let guard = file.discard_on_drop();
        let sealed = file.seal().expect("sealed");
        assert_eq!(hidden_files(&dir), vec![super::sealed(&sealed.name)]);
        drop(guard);
        assert!(hidden_files(&dir).is_empty());

        // Kept once saved, then published.
        archive.append(1, &batch).expect("appended");
        let file = archive.take(1).expect("an open file");
        let mut guard = file.discard_on_drop();
        let sealed = file.seal().expect("sealed");
        guard.keep();
        drop(guard);
        sealed.publish().expect("published");
        assert_eq!(hidden_files(&dir), vec![sealed.name.clone()]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
