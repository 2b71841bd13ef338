//! Opening transaction files by name: `.csv`, `.csv.gz`, `.parquet`, or `-` for CSV on
//! standard input. Every source yields batches of the transaction schema.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use arrow::record_batch::RecordBatch;
use flate2::read::MultiGzDecoder;

use crate::codec::csv::CsvTransactionReader;
use crate::codec::parquet::ParquetTransactionReader;
use crate::error::EngineError;

/// The formats we read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Csv,
    CsvGz,
    Parquet,
}

impl FileFormat {
    /// The format a path's extension names; `-` is CSV on stdin/stdout.
    pub fn of(path: &Path) -> Result<Self, EngineError> {
        let name = path.to_string_lossy().to_ascii_lowercase();
        if name == "-" || name.ends_with(".csv") {
            Ok(Self::Csv)
        } else if name.ends_with(".csv.gz") {
            Ok(Self::CsvGz)
        } else if name.ends_with(".parquet") || name.ends_with(".pq") {
            Ok(Self::Parquet)
        } else {
            Err(EngineError::UnsupportedInput {
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
    pub fn open(path: &Path, batch_size: usize, skip_bad: bool) -> Result<Self, EngineError> {
        let open = |p: &Path| -> Result<File, EngineError> {
            File::open(p).map_err(|e| EngineError::Open {
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
    type Item = Result<RecordBatch, EngineError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Csv(reader) => reader.next(),
            Self::Parquet(reader) => reader.next(),
        }
    }
}

/// Reads every batch of a file into memory (tests and small fixtures).
pub fn read_all(path: &Path) -> Result<Vec<RecordBatch>, EngineError> {
    TransactionFile::open(path, 8192, false)?.collect()
}

/// Expands a list of paths, directories becoming their transaction files (sorted).
pub fn expand_inputs(paths: &[PathBuf]) -> Result<Vec<PathBuf>, EngineError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| EngineError::Open {
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

/// Writes transaction batches to a `.csv`, `.csv.gz` or `.parquet` file, or CSV to stdout
/// for `-`.
pub enum TransactionFileWriter {
    Csv(crate::codec::csv::CsvTransactionWriter<Box<dyn std::io::Write + Send>>),
    Parquet(parquet::arrow::ArrowWriter<File>),
}

impl TransactionFileWriter {
    pub fn create(path: &Path) -> Result<Self, EngineError> {
        use crate::codec::csv::CsvTransactionWriter;
        use std::io::{BufWriter, Write};
        let create = |p: &Path| -> Result<File, EngineError> {
            File::create(p).map_err(|e| EngineError::Open {
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
                crate::schema::transaction_schema(),
            )?),
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
        match self {
            Self::Csv(writer) => writer.write(batch),
            Self::Parquet(writer) => Ok(writer.write(batch)?),
        }
    }

    pub fn finish(self) -> Result<(), EngineError> {
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
