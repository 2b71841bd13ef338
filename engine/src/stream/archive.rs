//! The Parquet archive: every scored row, in rolling files that `rescore` and `sql` read.
//!
//! Rows go into a hidden in-progress file (`.scored-….parquet.inprogress`, which readers
//! skip). At each checkpoint the file is finished, synced and renamed to `scored-….parquet`
//! before the offsets it covers are committed; after a crash the unfinished file is simply
//! abandoned and its rows, never committed, are read and archived again. So each row is in
//! exactly one finished file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use arrow::array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::error::EngineError;

/// In-progress files older than this were left by a crashed run: removed at start.
const ABANDONED_AFTER: Duration = Duration::from_secs(600);
/// Rows per row group: bounds the writer's memory.
const ROW_GROUP_ROWS: usize = 65_536;

pub struct ParquetArchive {
    dir: PathBuf,
    instance: String,
    sequence: u64,
    open: Option<OpenFile>,
    files_written: u64,
}

struct OpenFile {
    writer: ArrowWriter<File>,
    temporary: PathBuf,
    final_path: PathBuf,
    rows: usize,
}

impl ParquetArchive {
    pub fn new(dir: &Path, instance: &str) -> Result<Self, EngineError> {
        std::fs::create_dir_all(dir).map_err(|e| EngineError::Open {
            path: dir.to_path_buf(),
            source: e,
        })?;
        remove_abandoned(dir);
        Ok(Self {
            dir: dir.to_path_buf(),
            instance: instance.replace(['/', ' '], "_"),
            sequence: 0,
            open: None,
            files_written: 0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn files_written(&self) -> u64 {
        self.files_written
    }

    pub fn append(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.open.is_none() {
            self.open = Some(self.start_file(batch)?);
        }
        if let Some(open) = self.open.as_mut() {
            open.writer.write(batch)?;
            open.rows += batch.num_rows();
        }
        Ok(())
    }

    fn start_file(&mut self, batch: &RecordBatch) -> Result<OpenFile, EngineError> {
        self.sequence += 1;
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let name = format!(
            "scored-{stamp}-{}-{:06}.parquet",
            self.instance, self.sequence
        );
        let final_path = self.dir.join(&name);
        let temporary = self.dir.join(format!(".{name}.inprogress"));
        let file = File::create(&temporary).map_err(|e| EngineError::Open {
            path: temporary.clone(),
            source: e,
        })?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let writer = ArrowWriter::try_new(file, batch.schema(), Some(properties))?;
        Ok(OpenFile {
            writer,
            temporary,
            final_path,
            rows: 0,
        })
    }

    /// Finishes the open file (footer, fsync, rename) so that its rows are durable and
    /// visible. Returns the rows it held.
    pub fn finish_file(&mut self) -> Result<usize, EngineError> {
        let Some(open) = self.open.take() else {
            return Ok(0);
        };
        let file = open.writer.into_inner()?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&open.temporary, &open.final_path)?;
        if let Ok(dir) = File::open(&self.dir) {
            // Make the rename itself durable.
            let _ = dir.sync_all();
        }
        self.files_written += 1;
        Ok(open.rows)
    }

    /// Drops the open file without finishing it (its rows were never committed).
    pub fn abandon(&mut self) {
        if let Some(open) = self.open.take() {
            drop(open.writer);
            let _ = std::fs::remove_file(&open.temporary);
        }
    }
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
