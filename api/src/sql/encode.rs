//! A query's result as response bytes (JSON, CSV or Arrow IPC), bounded in rows and in
//! bytes as it is encoded: the batches are never turned into `serde_json::Value`s, and
//! encoding stops at the limit, so a wide result cannot blow up the process's memory.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::json::ArrayWriter;

/// Output formats of `/v1/sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    Arrow,
}

impl Format {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "json" => Some(Self::Json),
            "csv" => Some(Self::Csv),
            "arrow" => Some(Self::Arrow),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Csv => "text/csv",
            Self::Arrow => "application/vnd.apache.arrow.stream",
        }
    }
}

/// Bytes a chunk of rows is aimed at: small enough that the byte limit is overshot by
/// little, big enough that the writers' per-call cost does not matter.
const CHUNK_BYTES: usize = 64 * 1024;

/// Encodes batches as they arrive until a row or byte limit is reached.
pub struct Encoder {
    format: Format,
    out: Vec<u8>,
    json: Option<ArrayWriter<Vec<u8>>>,
    ipc: Option<arrow::ipc::writer::StreamWriter<Vec<u8>>>,
    rows: usize,
    max_rows: usize,
    max_bytes: usize,
    /// Set once a limit cut the result short.
    pub truncated: bool,
}

impl Encoder {
    pub fn new(
        format: Format,
        schema: &SchemaRef,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Self, ArrowError> {
        let (json, ipc) = match format {
            Format::Json => (Some(ArrayWriter::new(Vec::new())), None),
            Format::Arrow => (
                None,
                Some(arrow::ipc::writer::StreamWriter::try_new(
                    Vec::new(),
                    schema,
                )?),
            ),
            Format::Csv => (None, None),
        };
        Ok(Self {
            format,
            out: Vec::new(),
            json,
            ipc,
            rows: 0,
            max_rows,
            max_bytes,
            truncated: false,
        })
    }

    /// Bytes encoded so far.
    fn len(&self) -> usize {
        match self.format {
            Format::Json => self.json.as_ref().map_or(0, |w| w.get_ref().len()),
            Format::Arrow => self.ipc.as_ref().map_or(0, |w| w.get_ref().len()),
            Format::Csv => self.out.len(),
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Encodes as much of `batch` as the limits allow; returns false once full.
    pub fn push(&mut self, batch: &RecordBatch) -> Result<bool, ArrowError> {
        if self.truncated {
            return Ok(false);
        }
        if batch.num_rows() == 0 {
            return Ok(true);
        }
        // Arrow's in-memory size per row guides the chunking; the encoded length is what
        // the limit is checked against.
        let row_bytes = (batch.get_array_memory_size() / batch.num_rows()).max(1);
        let chunk_rows = (CHUNK_BYTES / row_bytes).clamp(1, 8192);
        let mut offset = 0;
        while offset < batch.num_rows() {
            // Rows are left over here: at a limit, the result is cut short.
            if self.rows >= self.max_rows || self.len() >= self.max_bytes {
                self.truncated = true;
                return Ok(false);
            }
            let mut take = chunk_rows
                .min(batch.num_rows() - offset)
                .min(self.max_rows - self.rows);
            // Do not start a chunk that would overshoot the byte limit by much.
            let room = self.max_bytes - self.len();
            if take * row_bytes > room {
                take = (room / row_bytes).clamp(1, take);
            }
            self.write(&batch.slice(offset, take))?;
            offset += take;
        }
        Ok(true)
    }

    fn write(&mut self, chunk: &RecordBatch) -> Result<(), ArrowError> {
        match self.format {
            Format::Json => {
                if let Some(writer) = &mut self.json {
                    writer.write(chunk)?;
                }
            }
            Format::Arrow => {
                if let Some(writer) = &mut self.ipc {
                    writer.write(chunk)?;
                }
            }
            Format::Csv => {
                let mut writer = arrow::csv::WriterBuilder::new()
                    .with_header(self.rows == 0)
                    .build(&mut self.out);
                writer.write(chunk)?;
            }
        }
        self.rows += chunk.num_rows();
        Ok(())
    }

    /// The encoded bytes. JSON: `{"columns": […], "rows": […], "truncated", "elapsed_ms"}`
    /// (rows as objects, nulls left out), assembled around the writer's array so the rows
    /// are written once.
    pub fn finish(
        self,
        schema: &SchemaRef,
        header_if_empty: bool,
        elapsed_ms: u64,
    ) -> Result<Vec<u8>, ArrowError> {
        match self.format {
            Format::Json => {
                let mut writer = self.json.unwrap_or_else(|| ArrayWriter::new(Vec::new()));
                writer.finish()?;
                let mut rows = writer.into_inner();
                if rows.is_empty() {
                    rows = b"[]".to_vec();
                }
                let columns: Vec<&str> =
                    schema.fields().iter().map(|f| f.name().as_str()).collect();
                let columns = serde_json::to_string(&columns)
                    .map_err(|e| ArrowError::JsonError(e.to_string()))?;
                let mut out = Vec::with_capacity(rows.len() + columns.len() + 64);
                out.extend_from_slice(b"{\"columns\":");
                out.extend_from_slice(columns.as_bytes());
                out.extend_from_slice(b",\"rows\":");
                out.extend_from_slice(&rows);
                out.extend_from_slice(
                    format!(
                        ",\"truncated\":{},\"elapsed_ms\":{elapsed_ms}}}",
                        self.truncated
                    )
                    .as_bytes(),
                );
                Ok(out)
            }
            Format::Arrow => match self.ipc {
                Some(mut writer) => {
                    writer.finish()?;
                    writer.into_inner()
                }
                None => Ok(Vec::new()),
            },
            Format::Csv => {
                let mut out = self.out;
                if self.rows == 0 && header_if_empty {
                    let mut writer = arrow::csv::WriterBuilder::new()
                        .with_header(true)
                        .build(&mut out);
                    writer.write(&RecordBatch::new_empty(schema.clone()))?;
                }
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(rows: usize, pad: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("pad", DataType::Utf8, false),
        ]));
        let pad_value = "x".repeat(pad);
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows as i64)),
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|_| pad_value.as_str()),
                )),
            ],
        )
        .expect("batch")
    }

    #[test]
    fn a_wide_result_stops_near_the_byte_limit() {
        for format in [Format::Json, Format::Csv, Format::Arrow] {
            let wide = batch(8192, 10_000);
            let schema = wide.schema();
            let mut encoder = Encoder::new(format, &schema, 1_000_000, 1_000_000).expect("enc");
            let mut more = true;
            for _ in 0..10 {
                more = encoder.push(&wide).expect("push");
                if !more {
                    break;
                }
            }
            assert!(!more, "{format:?}: the limit never stopped it");
            assert!(encoder.truncated);
            let out = encoder.finish(&schema, true, 1).expect("finish");
            // At most one chunk past the limit.
            assert!(
                out.len() < 1_000_000 + 2 * CHUNK_BYTES,
                "{format:?}: {}",
                out.len()
            );
            assert!(out.len() > 500_000, "{format:?}: {}", out.len());
        }
    }

    #[test]
    fn rows_are_limited_and_json_keeps_its_shape() {
        let small = batch(100, 3);
        let schema = small.schema();
        let mut encoder = Encoder::new(Format::Json, &schema, 30, 1 << 20).expect("enc");
        assert!(!encoder.push(&small).expect("push"));
        assert_eq!(encoder.rows(), 30);
        let out = encoder.finish(&schema, true, 7).expect("finish");
        let value: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(value["columns"], serde_json::json!(["n", "pad"]));
        assert_eq!(value["rows"].as_array().expect("rows").len(), 30);
        assert_eq!(value["rows"][29]["n"], 29);
        assert_eq!(value["truncated"], true);
        assert_eq!(value["elapsed_ms"], 7);
        let empty = Encoder::new(Format::Json, &schema, 30, 1 << 20).expect("enc");
        let out = empty.finish(&schema, true, 0).expect("finish");
        let value: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(value["rows"], serde_json::json!([]));
        assert_eq!(value["truncated"], false);
    }
}
