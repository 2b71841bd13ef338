use std::path::PathBuf;

use anyhow::Context;
use risksense_query::scoring::{self, SessionOptions, TRANSACTIONS};

use super::model::ModelArgs;

#[derive(clap::Args, Debug)]
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
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Format {
    Table,
    Csv,
    Json,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(url) = &args.url {
        return remote(url, &args);
    }
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let model = args.model.load_optional()?;
        let ctx = scoring::new_session(model.clone(), SessionOptions::default())?;
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
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).to_string());
        anyhow::bail!("{url} answered {status}: {message}");
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
