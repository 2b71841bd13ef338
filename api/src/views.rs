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
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScoreResponse {
    pub results: Vec<ScoreResult>,
    pub cache_hits: u64,
    pub cache_misses: u64,
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
