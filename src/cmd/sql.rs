use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;
use risksense_query::scoring::{self, SessionOptions, TRANSACTIONS};

use super::model::ModelArgs;

const EXAMPLES: &str = "\
Examples:
  risksense sql \"SELECT category, count(*) FROM scored WHERE is_anomaly GROUP BY 1\" --table scored=scored/
  risksense sql --url http://127.0.0.1:8080 \"SELECT count(*) FROM scored WHERE is_anomaly\"
  risksense sql --supervised models/trees --table transactions=q3.csv \"SELECT avg(fraud_probability(log_amt, …)) FROM features\"
  # follow the live stream: each result row as it is scored, until Ctrl-C
  risksense sql --url http://127.0.0.1:8080 --follow \"SELECT trans_num, cc_num, amt, score FROM scored WHERE is_anomaly\"
  # windowed: one row per category and minute of event time, when the minute closes
  risksense sql --url http://127.0.0.1:8080 --follow --format csv \\
    \"SELECT tumble(trans_date_trans_time, INTERVAL '1' MINUTE) AS window_start, category, count(*) AS n FROM scored GROUP BY 1, 2\"";

#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The query. Tables come from --table; with a `transactions` table the `features`
    /// view (and `scored`, given a model) is there too.
    pub query: String,
    /// A table: name=path (Parquet file, folder or glob; or transaction CSV). Repeatable.
    #[arg(long = "table", short = 't', value_parser = super::parse_key_value)]
    pub tables: Vec<(String, String)>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Show at most this many rows (the query itself is not limited).
    #[arg(long, default_value_t = 200)]
    pub max_rows: usize,
    /// Ask a running service instead (`risksense run --http`, `serve` or `demo`), e.g.
    /// http://127.0.0.1:8080: its tables are `scored` (live window) and `history`.
    #[arg(long, conflicts_with = "tables")]
    pub url: Option<String>,
    /// Bearer token for --url.
    #[arg(long, env = "RISKSENSE_API_TOKEN")]
    pub token: Option<String>,
    /// With --url: run the SELECT over the live stream from now on (`/v1/subscribe`) and
    /// print each result row as it is produced, until Ctrl-C or the server ends the stream.
    /// Rows are printed one per line: JSON objects (json), CSV (csv) or `|`-separated
    /// values under a header (table); --max-rows does not apply.
    #[arg(long, requires = "url")]
    pub follow: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Format {
    Table,
    Csv,
    Json,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(url) = &args.url {
        if args.model.supervised.is_some() || args.model.challenger.is_some() {
            anyhow::bail!(
                "--supervised and --challenger are for local tables; a service at --url \
                 scores with the models it serves (GET {url}/v1/models)"
            );
        }
        if args.follow {
            return follow(url, &args);
        }
        return remote(url, &args);
    }
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let model = args.model.load_optional()?;
        let handle = model
            .clone()
            .map(|m| std::sync::Arc::new(risksense_udfs::ModelHandle::new(m)));
        match &handle {
            Some(handle) => args.model.load_beside(handle)?,
            None if args.model.challenger.is_some() || args.model.supervised.is_some() => {
                anyhow::bail!(
                    "--challenger and --supervised need an anomaly model beside them (not --no-model)"
                )
            }
            None => {}
        }
        let ctx = scoring::new_session_with_handle(handle, SessionOptions::default())?;
        for (name, path) in &args.tables {
            scoring::register_files(&ctx, name, &[PathBuf::from(path)])
                .await
                .with_context(|| format!("registering table `{name}` from {path}"))?;
        }
        if args.tables.iter().any(|(name, _)| name == TRANSACTIONS) {
            scoring::install_views(&ctx, model.as_deref()).await?;
        }
        let started = std::time::Instant::now();
        let frame = ctx.sql(&args.query).await.context("planning the query")?;
        let batches = frame.collect().await.context("running the query")?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        super::print_batches(&batches, args.format, args.max_rows)?;
        eprintln!("{rows} rows in {:.3} s", started.elapsed().as_secs_f64());
        Ok(())
    })
}

/// Runs the query on a service's `/v1/sql` (answer as Arrow IPC) and prints it the same way.
fn remote(url: &str, args: &Args) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let body = serde_json::json!({"sql": args.query, "format": "arrow", "max_rows": args.max_rows});
    let (status, bytes) = http_post_json(url, "/v1/sql", &body.to_string(), args.token.as_deref())?;
    if status != 200 {
        anyhow::bail!("{url} answered {status}: {}", error_message(&bytes));
    }
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .context("reading the Arrow answer")?;
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    super::print_batches(&batches, args.format, args.max_rows)?;
    eprintln!(
        "{rows} rows in {:.3} s (from {url})",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Subscribes to the query on a service's `/v1/subscribe` and prints its rows as the
/// Server-Sent Events bring them.
fn follow(url: &str, args: &Args) -> anyhow::Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(std::time::Duration::from_secs(10)))
        .timeout_recv_response(Some(std::time::Duration::from_secs(60)))
        // The server sends a comment every 15 s on an idle stream: a minute of silence is
        // a server or network gone.
        .timeout_per_read(Some(std::time::Duration::from_secs(60)))
        .build()
        .into();
    let target = format!("{}/v1/subscribe", url.trim_end_matches('/'));
    let mut request = agent
        .post(&target)
        .header("content-type", "application/json")
        .header("accept", "text/event-stream");
    if let Some(token) = &args.token {
        request = request.header("authorization", &format!("Bearer {token}"));
    }
    let body = serde_json::json!({ "sql": args.query }).to_string();
    let mut response = request
        .send(&body)
        .with_context(|| format!("POST {target}"))?;
    let status = response.status().as_u16();
    if status != 200 {
        let bytes = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .unwrap_or_default();
        anyhow::bail!("{url} answered {status}: {}", error_message(&bytes));
    }
    let reader = std::io::BufReader::new(response.into_body().into_reader());
    let mut printer = RowPrinter::new(args.format);
    let (mut event, mut data) = (String::new(), String::new());
    for line in reader.lines() {
        let line = line.with_context(|| format!("reading the stream of {target}"))?;
        if line.is_empty() {
            let done = match printer.event(&event, &data) {
                Ok(done) => done,
                // The reader of our output went (`| head`): stop quietly.
                Err(error)
                    if error
                        .downcast_ref::<std::io::Error>()
                        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
                {
                    return Ok(());
                }
                Err(error) => return Err(error),
            };
            event.clear();
            data.clear();
            if done {
                break;
            }
            continue;
        }
        if line.starts_with(':') {
            continue; // a keep-alive comment
        }
        let (field, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = value.to_string(),
            "data" => {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            _ => {}
        }
    }
    eprintln!("{} rows (from {url}); the stream ended", printer.rows);
    Ok(())
}

/// The message of the API's JSON error (`{"error": {"message"}}`, or a stream's
/// `{"error": "…"}`), or the body as text.
fn error_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| {
            let error = &v["error"];
            error["message"]
                .as_str()
                .or_else(|| error.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).to_string())
}

/// Prints a subscription's rows as they come.
struct RowPrinter {
    format: Format,
    columns: Vec<String>,
    rows: u64,
}

impl RowPrinter {
    fn new(format: Format) -> Self {
        Self {
            format,
            columns: Vec::new(),
            rows: 0,
        }
    }

    /// Handles one event; true when the stream is over.
    fn event(&mut self, event: &str, data: &str) -> anyhow::Result<bool> {
        let mut out = std::io::stdout().lock();
        match event {
            "columns" => {
                self.columns = serde_json::from_str(data).context("reading the columns")?;
                let header = match self.format {
                    Format::Json => None,
                    Format::Csv => Some(
                        self.columns
                            .iter()
                            .map(|c| csv_field(c))
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                    Format::Table => Some(self.columns.join(" | ")),
                };
                if let Some(header) = header {
                    writeln!(out, "{header}")?;
                }
            }
            "row" => {
                self.rows += 1;
                match self.format {
                    Format::Json => writeln!(out, "{data}")?,
                    Format::Csv | Format::Table => {
                        let row: serde_json::Map<String, serde_json::Value> =
                            serde_json::from_str(data).context("reading a row")?;
                        let text = |c: &String| match row.get(c) {
                            None | Some(serde_json::Value::Null) => String::new(),
                            Some(serde_json::Value::String(s)) => s.clone(),
                            Some(other) => other.to_string(),
                        };
                        let line = match self.format {
                            Format::Csv => self
                                .columns
                                .iter()
                                .map(|c| csv_field(&text(c)))
                                .collect::<Vec<_>>()
                                .join(","),
                            _ => self
                                .columns
                                .iter()
                                .map(text)
                                .collect::<Vec<_>>()
                                .join(" | "),
                        };
                        writeln!(out, "{line}")?;
                    }
                }
                out.flush()?;
            }
            "end" => return Ok(true),
            "dropped" | "error" => {
                anyhow::bail!(
                    "the server ended the subscription: {}",
                    error_message(data.as_bytes())
                )
            }
            _ => {}
        }
        Ok(false)
    }
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// POSTs JSON and returns the status and the body, whatever the status (an error answer
/// carries the API's JSON error). `https://` URLs work too (rustls, Mozilla's roots): an API
/// published behind a TLS-terminating proxy.
fn http_post_json(
    url: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(120)))
        .build()
        .into();
    let target = format!("{}{path}", url.trim_end_matches('/'));
    let mut request = agent
        .post(&target)
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", &format!("Bearer {token}"));
    }
    let mut response = request
        .send(body)
        .with_context(|| format!("POST {target}"))?;
    let status = response.status().as_u16();
    let bytes = response
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .with_context(|| format!("reading the answer of {target}"))?;
    Ok((status, bytes))
}
