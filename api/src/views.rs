//! What the API sends and takes: its wire format, kept apart from the store's layout.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A scored transaction.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TransactionView {
    pub trans_num: String,
    pub cc_num: i64,
    /// Event time as in the source, `2019-01-01 00:05:02`.
    pub event_time: String,
    pub event_secs: i64,
    pub category: String,
    pub merchant: String,
    pub amt: f64,
    /// Reconstruction error of the autoencoder.
    pub score: f64,
    pub is_anomaly: bool,
    /// The three features that reconstruct worst (anomalies only).
    pub explanation: Option<String>,
    pub is_fraud: Option<i32>,
}

impl From<risksense_store::ScoredTransaction> for TransactionView {
    fn from(t: risksense_store::ScoredTransaction) -> Self {
        Self {
            trans_num: t.trans_num,
            cc_num: t.cc_num,
            event_time: t.event_time,
            event_secs: t.event_secs,
            category: t.category,
            merchant: t.merchant,
            amt: t.amt,
            score: t.score,
            is_anomaly: t.is_anomaly,
            explanation: t.explanation,
            is_fraud: t.is_fraud,
        }
    }
}

/// A list of transactions.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TransactionList {
    pub transactions: Vec<TransactionView>,
}

/// An alert from the alerts stream.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AlertView {
    pub trans_num: String,
    pub cc_num: i64,
    pub event_time: String,
    pub amt: f64,
    pub category: String,
    pub score: f64,
    pub explanation: Option<String>,
}

impl From<risksense_store::Alert> for AlertView {
    fn from(a: risksense_store::Alert) -> Self {
        Self {
            trans_num: a.trans_num,
            cc_num: a.cc_num,
            event_time: a.event_time,
            amt: a.amt,
            category: a.category,
            score: a.score,
            explanation: a.explanation,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AlertList {
    pub alerts: Vec<AlertView>,
}

/// One transaction's ad-hoc score.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScoreResult {
    pub trans_num: String,
    pub score: f64,
    pub is_anomaly: bool,
    pub explanation: Option<String>,
    /// Answered from the cache (the same model inputs were scored before).
    pub cached: bool,
    /// The model that scored it (`name@hash`, see `/v1/models`).
    pub model_id: String,
    /// The supervised model's probability of fraud, when one is served beside the
    /// champion (`is_anomaly` is then either's flag, as in sql/score.sql).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraud_probability: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervised_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScoreResponse {
    pub results: Vec<ScoreResult>,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// What `is_anomaly` compares against: the threshold of the alert score (a row's
    /// score plus its card's recent scores among the request's rows, sql/score.sql), the
    /// row threshold for a model without that rule.
    pub threshold: f64,
}

/// A read-only SQL query.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SqlRequest {
    /// One SELECT (or WITH … SELECT / EXPLAIN) over `scored` and `history`.
    pub sql: String,
    /// `json` (default), `csv` or `arrow` (Arrow IPC stream).
    pub format: Option<String>,
    /// At most this many rows (capped by the server's limit).
    pub max_rows: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SqlResponse {
    pub columns: Vec<String>,
    /// One JSON object per row.
    pub rows: Vec<serde_json::Value>,
    /// More rows existed than were returned.
    pub truncated: bool,
    pub elapsed_ms: u64,
}

/// SQL sent as JSON (`/v1/queries` and `/v1/subscribe` take plain text too).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueryRequest {
    /// `/v1/queries`: `CREATE VIEW name AS SELECT …`, or `CREATE TABLE name WITH
    /// (connector = …); INSERT INTO name SELECT …`. `/v1/subscribe`: one `SELECT … FROM
    /// scored` (or `transactions`).
    pub sql: String,
}

/// The standing queries a script created.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueryCreated {
    pub created: Vec<String>,
}

/// Whether a standing query runs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueryStatusView {
    /// `running` or `failed`.
    pub state: String,
    /// Why it failed (it stays listed, stopped, until deleted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A standing query with its counters.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueryView {
    pub name: String,
    /// The statements that declared it.
    pub sql: String,
    /// `api` (created through the API, saved in the store), `file` or `subscription`.
    pub origin: String,
    /// The stream it reads: `scored` or `transactions`.
    pub source: String,
    /// `windowed` (an aggregate over `tumble`/`hop` windows) or `stateless`.
    pub kind: String,
    /// Where its rows go besides subscribers: `{"connector": "view"}`, or a Kafka topic,
    /// Redis keys or a Parquet folder with their options.
    #[schema(value_type = Object)]
    pub output: serde_json::Value,
    /// Its result columns (a windowed query's end with `window_end`).
    pub columns: Vec<String>,
    pub status: QueryStatusView,
    pub rows_in: u64,
    pub rows_out: u64,
    pub rows_in_per_s: f64,
    pub rows_out_per_s: f64,
    /// Rows that came after every window holding them was emitted (counted, dropped).
    pub late_rows: u64,
    pub windows_emitted: u64,
    /// Clients streaming its rows now.
    pub subscribers: usize,
}

impl From<risksense_continuous::QueryInfo> for QueryView {
    fn from(info: risksense_continuous::QueryInfo) -> Self {
        // The registry's enums serialise to the names shown here.
        let name_of = |value: serde_json::Result<serde_json::Value>| match value {
            Ok(serde_json::Value::String(text)) => text,
            Ok(other) => other.to_string(),
            Err(error) => error.to_string(),
        };
        let (state, reason) = match info.status {
            risksense_continuous::query::Status::Running => ("running".to_string(), None),
            risksense_continuous::query::Status::Failed { reason } => {
                ("failed".to_string(), Some(reason))
            }
        };
        Self {
            name: info.name,
            sql: info.sql,
            origin: name_of(serde_json::to_value(info.origin)),
            source: name_of(serde_json::to_value(info.source)),
            kind: info.kind.to_string(),
            output: serde_json::to_value(&info.output).unwrap_or(serde_json::Value::Null),
            columns: info.columns,
            status: QueryStatusView { state, reason },
            rows_in: info.rows_in,
            rows_out: info.rows_out,
            rows_in_per_s: info.rows_in_per_s,
            rows_out_per_s: info.rows_out_per_s,
            late_rows: info.late_rows,
            windows_emitted: info.windows_emitted,
            subscribers: info.subscribers,
        }
    }
}

/// The standing queries of the stream in this process.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueryList {
    pub queries: Vec<QueryView>,
}

/// A standing query and its latest results.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueryDetail {
    #[serde(flatten)]
    pub query: QueryView,
    /// Its latest result rows (at most 1,000), oldest first, one JSON object per row.
    pub recent: Vec<serde_json::Value>,
}
