//! Lookups in the result store: by transaction, by card, latest anomalies and alerts.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;

use crate::extract::{Path, Query};
use crate::views::{AlertList, TransactionList, TransactionView};
use crate::{ApiError, ApiState};

const MAX_LIMIT: usize = 1000;

fn limit(value: Option<usize>, default: usize) -> Result<usize, ApiError> {
    match value {
        Some(0) => Err(ApiError::bad_request("limit must be at least 1")),
        Some(n) if n > MAX_LIMIT => Err(ApiError::bad_request(format!(
            "limit must be at most {MAX_LIMIT}"
        ))),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

/// A scored transaction by its `trans_num`.
#[utoipa::path(get, path = "/v1/transactions/{trans_num}",
    params(("trans_num" = String, Path, description = "the transaction's id")),
    responses((status = 200, body = TransactionView), (status = 404, body = crate::error::ErrorBody),
              (status = 503, body = crate::error::ErrorBody)))]
pub async fn transaction(
    State(state): State<Arc<ApiState>>,
    Path(trans_num): Path<String>,
) -> Result<Json<TransactionView>, ApiError> {
    if trans_num.is_empty() || trans_num.len() > 128 {
        return Err(ApiError::bad_request(
            "trans_num must be 1 to 128 characters",
        ));
    }
    match state
        .store_call(state.store.transaction(&trans_num))
        .await?
    {
        Some(row) => Ok(Json(row.into())),
        None => Err(ApiError::not_found(format!(
            "no scored transaction {trans_num} (unknown, or older than the retention)"
        ))),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    /// At most this many (1..=1000).
    pub limit: Option<usize>,
}

/// A card's recent scored transactions, newest first.
#[utoipa::path(get, path = "/v1/cards/{cc_num}/transactions",
    params(("cc_num" = String, Path, description = "card number"), LimitQuery),
    responses((status = 200, body = TransactionList), (status = 400, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)))]
pub async fn card_transactions(
    State(state): State<Arc<ApiState>>,
    Path(cc_num): Path<String>,
    Query(query): Query<LimitQuery>,
) -> Result<Json<TransactionList>, ApiError> {
    let card: i64 = cc_num
        .parse()
        .map_err(|_| ApiError::bad_request(format!("cc_num `{cc_num}` is not a card number")))?;
    let limit = limit(query.limit, 50)?;
    let rows = state
        .store_call(state.store.card_transactions(card, limit))
        .await?;
    if rows.is_empty() {
        return Err(ApiError::not_found(format!(
            "no scored transactions for card {card}"
        )));
    }
    Ok(Json(TransactionList {
        transactions: rows.into_iter().map(Into::into).collect(),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AnomalyQuery {
    /// Event time lower bound: seconds since the epoch, or `YYYY-MM-DD[ HH:MM:SS]`.
    pub since: Option<String>,
    /// At most this many (1..=1000).
    pub limit: Option<usize>,
    /// Only anomalies scoring at least this.
    pub min_score: Option<f64>,
}

fn parse_since(text: &str) -> Result<i64, ApiError> {
    use risksense_common::time::{parse_date, parse_timestamp_micros};
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(secs);
    }
    if let Some(micros) = parse_timestamp_micros(&text.replace('T', " ")) {
        return Ok(micros.div_euclid(1_000_000));
    }
    if let Some(days) = parse_date(text) {
        return Ok(i64::from(days) * 86_400);
    }
    Err(ApiError::bad_request(format!(
        "since `{text}` is neither epoch seconds nor YYYY-MM-DD[ HH:MM:SS]"
    )))
}

/// The latest anomalies, newest first.
#[utoipa::path(get, path = "/v1/anomalies", params(AnomalyQuery),
    responses((status = 200, body = TransactionList), (status = 400, body = crate::error::ErrorBody)))]
pub async fn anomalies(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<AnomalyQuery>,
) -> Result<Json<TransactionList>, ApiError> {
    let since = query.since.as_deref().map(parse_since).transpose()?;
    if query.min_score.is_some_and(|m| !m.is_finite()) {
        return Err(ApiError::bad_request("min_score must be a number"));
    }
    let limit = limit(query.limit, 100)?;
    let rows = state
        .store_call(state.store.anomalies(since, limit, query.min_score))
        .await?;
    Ok(Json(TransactionList {
        transactions: rows.into_iter().map(Into::into).collect(),
    }))
}

/// The latest alerts, newest first.
#[utoipa::path(get, path = "/v1/alerts", params(LimitQuery),
    responses((status = 200, body = AlertList)))]
pub async fn alerts(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<LimitQuery>,
) -> Result<Json<AlertList>, ApiError> {
    let limit = limit(query.limit, 50)?;
    let alerts = state.store_call(state.store.alerts(limit)).await?;
    Ok(Json(AlertList {
        alerts: alerts.into_iter().map(Into::into).collect(),
    }))
}
