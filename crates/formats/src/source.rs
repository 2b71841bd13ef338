//! Opening transaction files by name: `.csv`, `.csv.gz`, `.parquet`, or `-` for CSV on
//! standard input. Every source yields batches of the transaction schema.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use arrow::record_batch::RecordBatch;
use flate2::read::MultiGzDecoder;

use crate::codec::csv::CsvTransactionReader;
use crate::codec::parquet::ParquetTransactionReader;
use crate::error::FormatError;

/// The formats we read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Csv,
    CsvGz,
    Parquet,
}

impl FileFormat {
    /// The format a path's extension names; `-` is CSV on stdin/stdout.
    pub fn of(path: &Path) -> Result<Self, FormatError> {
        let name = path.to_string_lossy().to_ascii_lowercase();
        if name == "-" || name.ends_with(".csv") {
            Ok(Self::Csv)
        } else if name.ends_with(".csv.gz") {
            Ok(Self::CsvGz)
        } else if name.ends_with(".parquet") || name.ends_with(".pq") {
            Ok(Self::Parquet)
        } else {
            Err(FormatError::UnsupportedInput {
                path: path.to_path_buf(),
                reason: "expected a .csv, .csv.gz or .parquet file (or - for CSV on stdin)"
                    .to_string(),
            })
        }
    }
}

/// Batches read from one file, with the counters the CLI reports.
pub enum TransactionFile {
    Csv(Box<CsvTransactionReader<Box<dyn Read + Send>>>),
    Parquet(ParquetTransactionReader),
}

impl TransactionFile {
    pub fn open(path: &Path, batch_size: usize, skip_bad: bool) -> Result<Self, FormatError> {
        let open = |p: &Path| -> Result<File, FormatError> {
            File::open(p).map_err(|e| FormatError::Open {
                path: p.to_path_buf(),
                source: e,
            })
        };
        Ok(match FileFormat::of(path)? {
            FileFormat::Csv if path == Path::new("-") => {
                let input: Box<dyn Read + Send> = Box::new(std::io::stdin());
                Self::Csv(Box::new(CsvTransactionReader::new(
                    input, batch_size, skip_bad,
                )?))
            }
            FileFormat::Csv => {
                let input: Box<dyn Read + Send> =
                    Box::new(BufReader::with_capacity(1 << 20, open(path)?));
                Self::Csv(Box::new(CsvTransactionReader::new(
                    input, batch_size, skip_bad,
                )?))
            }
            FileFormat::CsvGz => {
                let input: Box<dyn Read + Send> = Box::new(BufReader::with_capacity(
                    1 << 20,
                    MultiGzDecoder::new(BufReader::new(open(path)?)),
                ));
                Self::Csv(Box::new(CsvTransactionReader::new(
                    input, batch_size, skip_bad,
                )?))
            }
            FileFormat::Parquet => {
                Self::Parquet(ParquetTransactionReader::open(path, batch_size, skip_bad)?)
            }
        })
    }

    /// Bad rows skipped so far (with `skip_bad` only): rows that fail the checks every
    /// input path shares (crate::validate), or that do not parse.
    pub fn rows_skipped(&self) -> u64 {
        match self {
            Self::Csv(reader) => reader.rows_skipped(),
            Self::Parquet(reader) => reader.rows_skipped(),
        }
    }

    /// The first skipped row's reason, if any.
    pub fn first_skipped(&self) -> Option<&str> {
        match self {
            Self::Csv(reader) => reader.first_skipped(),
            Self::Parquet(reader) => reader.first_skipped(),
        }
    }
}

impl Iterator for TransactionFile {
    type Item = Result<RecordBatch, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Csv(reader) => reader.next(),
            Self::Parquet(reader) => reader.next(),
        }
    }
}

/// Reads every batch of a file into memory (tests and small fixtures).
pub fn read_all(path: &Path) -> Result<Vec<RecordBatch>, FormatError> {
    TransactionFile::open(path, 8192, false)?.collect()
}

/// Expands a list of paths, directories becoming their transaction files (sorted).
pub fn expand_inputs(paths: &[PathBuf]) -> Result<Vec<PathBuf>, FormatError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| FormatError::Open {
                    path: path.clone(),
                    source: e,
                })?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| FileFormat::of(p).is_ok())
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// Expands folders and globs (`*`, `**`) into files.
pub fn expand_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, FormatError> {
    let mut files = Vec::new();
    for input in inputs {
        let text = input.to_string_lossy();
        if text.contains('*') {
            files.extend(glob_files(&text)?);
        } else {
            files.extend(expand_inputs(std::slice::from_ref(input))?);
        }
    }
    if files.is_empty() {
        return Err(FormatError::NoInputs(
            inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    Ok(files)
}

/// Files matching a glob (`*`, `?`, `[…]`, `{a,b}` within a path segment, `**` across
/// segments), walked from the pattern's literal directory prefix.
fn glob_files(pattern: &str) -> Result<Vec<PathBuf>, FormatError> {
    let glob = globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| FormatError::Glob {
            pattern: pattern.to_string(),
            source: e,
        })?
        .compile_matcher();
    let segments: Vec<&str> = pattern.split('/').collect();
    let literal = segments
        .iter()
        .take_while(|part| !part.contains(['*', '?', '[', '{']))
        .count();
    let root: PathBuf = segments[..literal].join("/").into();
    let root_is_here = root.as_os_str().is_empty();
    let root = if root_is_here {
        PathBuf::from(".")
    } else {
        root
    };
    let mut walker = walkdir::WalkDir::new(&root).follow_links(true);
    if !pattern.contains("**") {
        // Without `**`, nothing deeper than the pattern's own segments can match.
        walker = walker.max_depth(segments.len() - literal);
    }
    let mut found = Vec::new();
    for entry in walker {
        let entry = entry.map_err(|e| FormatError::Open {
            path: e.path().map_or_else(|| root.clone(), Path::to_path_buf),
            source: e.into(),
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let path = entry.path();
        // Walked from ".", paths start with "./"; the pattern does not.
        let candidate = if root_is_here {
            path.strip_prefix(".").unwrap_or(path)
        } else {
            path
        };
        if glob.is_match(candidate) && FileFormat::of(path).is_ok() {
            found.push(candidate.to_path_buf());
        }
    }
    found.sort();
    Ok(found)
}

/// Writes transaction batches to a `.csv`, `.csv.gz` or `.parquet` file, or CSV to stdout
/// for `-`.
pub enum TransactionFileWriter {
    Csv(crate::codec::csv::CsvTransactionWriter<Box<dyn std::io::Write + Send>>),
    Parquet(parquet::arrow::ArrowWriter<File>),
}

impl TransactionFileWriter {
    pub fn create(path: &Path) -> Result<Self, FormatError> {
        use crate::codec::csv::CsvTransactionWriter;
        use std::io::{BufWriter, Write};
        let create = |p: &Path| -> Result<File, FormatError> {
            File::create(p).map_err(|e| FormatError::Open {
                path: p.to_path_buf(),
                source: e,
            })
        };
        Ok(match FileFormat::of(path)? {
            FileFormat::Csv if path == Path::new("-") => {
                let out: Box<dyn Write + Send> =
                    Box::new(BufWriter::with_capacity(1 << 20, std::io::stdout()));
                Self::Csv(CsvTransactionWriter::new(out))
            }
            FileFormat::Csv => {
                let out: Box<dyn Write + Send> =
                    Box::new(BufWriter::with_capacity(1 << 20, create(path)?));
                Self::Csv(CsvTransactionWriter::new(out))
            }
            FileFormat::CsvGz => {
                let out: Box<dyn Write + Send> = Box::new(flate2::write::GzEncoder::new(
                    BufWriter::with_capacity(1 << 20, create(path)?),
                    flate2::Compression::fast(),
                ));
                Self::Csv(CsvTransactionWriter::new(out))
            }
            FileFormat::Parquet => Self::Parquet(crate::codec::parquet::create_writer(
                path,
                risksense_common::schema::transaction_schema(),
            )?),
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), FormatError> {
        match self {
            Self::Csv(writer) => writer.write(batch),
            Self::Parquet(writer) => Ok(writer.write(batch)?),
        }
    }

    pub fn finish(self) -> Result<(), FormatError> {
        match self {
            Self::Csv(writer) => {
                let mut out = writer.finish()?;
                out.flush()?;
                Ok(())
            }
            Self::Parquet(writer) => {
                writer.close()?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_in_directory_segments_and_across_them() {
        let dir = std::env::temp_dir().join(format!("risksense-glob-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for file in [
            "y-0.csv",
            "2019/x-1.csv",
            "2019/x-2.parquet",
            "2019/notes.txt",
            "2020/x-3.csv",
            "2020/deep/x-4.csv",
        ] {
            let path = dir.join(file);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
            std::fs::write(&path, b"").expect("file");
        }
        let root = dir.display().to_string();
        let names = |pattern: &str| -> Vec<String> {
            glob_files(&format!("{root}/{pattern}"))
                .expect("glob")
                .iter()
                .map(|p| {
                    p.strip_prefix(&dir)
                        .expect("under dir")
                        .display()
                        .to_string()
                })
                .collect()
        };
        // A wildcard in a directory segment (the hand-written glob ignored it).
        assert_eq!(names("20*/x-*.csv"), vec!["2019/x-1.csv", "2020/x-3.csv"]);
        assert_eq!(
            names("**/x-*.csv"),
            vec!["2019/x-1.csv", "2020/deep/x-4.csv", "2020/x-3.csv"]
        );
        assert_eq!(
            names("2019/x-[12].*"),
            vec!["2019/x-1.csv", "2019/x-2.parquet"]
        );
        assert_eq!(names("*.csv"), vec!["y-0.csv"]);
        assert!(names("*/nothing-*.csv").is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
