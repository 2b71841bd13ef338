//! `POST /v1/score`: score a JSON array of transactions with the stream's SQL and model.
//!
//! The features come from sql/features.sql over the posted transactions (their history is
//! each other: a request with a card's last day of transactions gets its 24 h features).
//! Each row's model inputs (the card's features, taken by name) are hashed with the model's
//! digest ([`Model::digest`]: its graph and card); rows whose hash is cached in the store skip the model, the others are
//! scored in one ONNX Runtime run (score and per-feature errors together) and cached.
//! Repeated transactions (retries, re-checks, replays) are answered from Redis.
//!
//! Requests run at once: the features plan is re-entrant (each call runs its own copy)
//! and the model's sessions serve concurrent callers.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use axum::Json;
use axum::extract::State;
use risksense_formats::message::{Incoming, PARTITION_SLOTS, decode};
use risksense_query::QueryError;
use risksense_query::features::feature_matrix;
use risksense_query::scorer::StreamScorer;
use risksense_query::scoring::SessionOptions;
use risksense_udfs::Model;
use risksense_udfs::model::{FEATURE_ERROR, SCORE};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::views::{ScoreResponse, ScoreResult};
use crate::{ApiError, ApiState};

/// The features plan (planned once, run by requests at once). The model is the API's
/// champion, loaded once per request.
pub struct Scorer {
    features: StreamScorer,
}

/// What the cache keeps per input.
#[derive(Serialize, Deserialize)]
struct CachedScore {
    score: f64,
    explanation: Option<String>,
}

impl Scorer {
    pub async fn new(model: Arc<Model>) -> Result<Self, ApiError> {
        let options = SessionOptions {
            target_partitions: 1,
            ..SessionOptions::default()
        };
        let features =
            StreamScorer::with_query(model.clone(), options, "SELECT * FROM features").await?;
        Ok(Self { features })
    }
}

/// Cache key of one row of model inputs.
fn cache_key(model: &Model, inputs: &[f32]) -> String {
    let mut hasher = Sha256::new();
    // The cache must never answer for another model, or the same one recalibrated (an
    // explanation depends on the threshold): the model's digest is part of every key.
    hasher.update(model.digest);
    for value in inputs {
        hasher.update(value.to_le_bytes());
    }
    let digest = hasher.finalize();
    digest.iter().take(20).map(|b| format!("{b:02x}")).collect()
}

/// Score transactions (a JSON array of objects with the Kaggle columns).
#[utoipa::path(post, path = "/v1/score",
    request_body(content = Vec<serde_json::Value>, description = "transactions with the Kaggle / Sparkov columns"),
    responses((status = 200, body = ScoreResponse), (status = 400, body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody), (status = 413, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn score(
    State(state): State<Arc<ApiState>>,
    body: crate::extract::Body,
) -> Result<Json<ScoreResponse>, ApiError> {
    let body = body.0;
    let values: Vec<serde_json::Value> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be a JSON array of transactions: {e}"
        ))
    })?;
    if values.is_empty() {
        return Err(ApiError::bad_request("no transactions to score"));
    }
    if values.len() > state.config.max_score_rows {
        return Err(ApiError::too_large(format!(
            "{} transactions: at most {} per request",
            values.len(),
            state.config.max_score_rows
        )));
    }
    let messages: Vec<Incoming> = values
        .iter()
        .enumerate()
        .map(|(i, value)| Incoming {
            partition: 0,
            offset: i as i64,
            key: None,
            payload: serde_json::to_vec(value).unwrap_or_default().into(),
            timestamp_ms: None,
        })
        .collect();
    let decoded = decode(&messages)?;
    if !decoded.rejected.is_empty() {
        let reasons: Vec<String> = decoded
            .rejected
            .iter()
            .take(10)
            .map(|(i, reason)| format!("transaction {i}: {reason}"))
            .collect();
        return Err(ApiError::bad_request(format!(
            "{} of {} transactions are invalid: {}",
            decoded.rejected.len(),
            values.len(),
            reasons.join("; ")
        )));
    }
    let Some(batch) = decoded.batch else {
        return Err(ApiError::bad_request("no transactions to score"));
    };
    // One request, one set of models, whatever changes meanwhile.
    let models = state.models.api().snapshot();
    let (model, supervised) = (models.load(), models.supervised());
    let features = state.scorer.features.score(vec![batch]).await?;
    let rows = feature_rows(&features, &model.card.features)?;

    let keys: Vec<String> = rows.iter().map(|r| cache_key(&model, &r.inputs)).collect();
    let cached = state.store_call(state.store.cache_get(&keys)).await?;
    // `is_anomaly` is the alert rule's, set for all rows together below.
    let mut results: Vec<Option<ScoreResult>> = vec![None; rows.len()];
    let mut misses = Vec::new();
    for (i, (row, hit)) in rows.iter().zip(&cached).enumerate() {
        match hit
            .as_deref()
            .and_then(|h| serde_json::from_str::<CachedScore>(h).ok())
        {
            Some(hit) => {
                results[i] = Some(ScoreResult {
                    trans_num: row.trans_num.clone(),
                    score: hit.score,
                    is_anomaly: false,
                    explanation: hit.explanation,
                    cached: true,
                    model_id: model.id.clone(),
                    fraud_probability: None,
                    supervised_id: None,
                });
            }
            None => misses.push(i),
        }
    }
    let hits = (rows.len() - misses.len()) as u64;
    if !misses.is_empty() {
        let width = model.feature_count();
        let matrix: Vec<f32> = misses
            .iter()
            .flat_map(|&i| rows[i].inputs.iter().copied())
            .collect();
        let count = misses.len();
        // One run for both outputs: the scores, and the per-feature errors the
        // explanations of anomalies rank.
        let [scores, errors] = tokio::task::spawn_blocking({
            let model = model.clone();
            move || model.run_outputs(&matrix, count, [SCORE, FEATURE_ERROR])
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
        let mut fresh = Vec::with_capacity(count);
        for (j, &i) in misses.iter().enumerate() {
            let score = f64::from(scores[j]);
            // Cached for every row: whether it alerts depends on the card's other rows
            // too (below), not on the row alone.
            let explanation = Some(risksense_udfs::functions::explain_row(
                &model.card.features,
                &errors[j * width..(j + 1) * width],
                3,
            ));
            let value = serde_json::to_string(&CachedScore {
                score,
                explanation: explanation.clone(),
            })
            .map_err(|e| ApiError::internal(e.to_string()))?;
            fresh.push((keys[i].clone(), value));
            results[i] = Some(ScoreResult {
                trans_num: rows[i].trans_num.clone(),
                score,
                is_anomaly: false,
                explanation,
                cached: false,
                model_id: model.id.clone(),
                fraud_probability: None,
                supervised_id: None,
            });
        }
        state
            .store_call(state.store.cache_put(&fresh, state.config.cache_ttl_secs))
            .await?;
    }
    let mut results: Vec<ScoreResult> = results.into_iter().flatten().collect();
    let threshold = model.card.alert_threshold();
    flag_by_alert_score(&rows, &mut results, model.card.card_weight(), threshold);
    if let Some(supervised) = supervised {
        add_supervised(&supervised, &rows, &mut results).await?;
    }
    state.counters.cache_hits.fetch_add(hits, Relaxed);
    state
        .counters
        .cache_misses
        .fetch_add(misses.len() as u64, Relaxed);
    state
        .counters
        .scored_rows
        .fetch_add(rows.len() as u64, Relaxed);
    Ok(Json(ScoreResponse {
        results,
        cache_hits: hits,
        cache_misses: misses.len() as u64,
        threshold,
    }))
}

/// score.sql's alert rule over the request's rows: each row's alert score is its score plus
/// `weight` × the mean of its card's scores over the 24 hours up to it among the request's
/// rows (the card window's arithmetic, in its order: event time, then position); a row
/// alerts at `threshold` and keeps its explanation only then. The stream's history of a
/// card is not the request's: a row posted alone is judged on its own score.
fn flag_by_alert_score(
    rows: &[FeatureRow],
    results: &mut [ScoreResult],
    weight: f64,
    threshold: f64,
) {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| (rows[i].card, rows[i].secs, rows[i].position));
    for run in order.chunk_by(|&a, &b| rows[a].card == rows[b].card) {
        let secs: Vec<i64> = run.iter().map(|&i| rows[i].secs).collect();
        let scores: Vec<Option<f64>> = run.iter().map(|&i| Some(results[i].score)).collect();
        let means = risksense_udfs::windows::means_24h(&secs, &scores);
        for (&i, mean) in run.iter().zip(means) {
            let result = &mut results[i];
            // (A row's own score is among its card's: the mean is never None.)
            let alert = result.score + weight * mean.unwrap_or(result.score);
            result.is_anomaly = alert >= threshold;
            if !result.is_anomaly {
                result.explanation = None;
            }
        }
    }
}

/// Applies score.sql's combined rule with the supervised model: its probability on every
/// row (not cached: the trees are a fraction of the autoencoder's cost), an alert when it
/// reaches its threshold, explained by the probability when the autoencoder did not flag.
async fn add_supervised(
    supervised: &Arc<Model>,
    rows: &[FeatureRow],
    results: &mut [ScoreResult],
) -> Result<(), ApiError> {
    let matrix: Vec<f32> = rows.iter().flat_map(|r| r.inputs.iter().copied()).collect();
    let count = rows.len();
    let probabilities = tokio::task::spawn_blocking({
        let supervised = supervised.clone();
        move || supervised.run(&matrix, count, risksense_udfs::model::PROBABILITY)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(e.to_string()))?;
    for (result, p) in results.iter_mut().zip(probabilities) {
        let p = f64::from(p);
        if p >= supervised.card.threshold && !result.is_anomaly {
            result.is_anomaly = true;
            result.explanation = Some(format!(
                "fraud probability {}",
                (p * 1000.0).round() / 1000.0
            ));
        }
        result.fraud_probability = Some(p);
        result.supervised_id = Some(supervised.id.clone());
    }
    Ok(())
}

struct FeatureRow {
    trans_num: String,
    inputs: Vec<f32>,
    /// The card, event seconds and request position: the card window's order.
    card: i64,
    secs: i64,
    position: i64,
}

/// The rows of the features view in request order, with the model inputs `names` as f32.
fn feature_rows(batches: &[RecordBatch], names: &[String]) -> Result<Vec<FeatureRow>, ApiError> {
    let width = names.len().max(1);
    let mut rows: Vec<(i64, FeatureRow)> = Vec::new();
    for batch in batches {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| ApiError::internal(format!("features lack {name}")))
        };
        let ids = column("row_id")?.as_primitive::<Int64Type>();
        let trans_nums = column("trans_num")?.as_string::<i32>();
        let cards = column("cc_num")?.as_primitive::<Int64Type>();
        let times = column("trans_date_trans_time")?.as_primitive::<TimestampMicrosecondType>();
        let matrix = feature_matrix(batch, names).map_err(|error| match error {
            // The transactions' values put a feature out of reach: the client's to fix.
            QueryError::NullFeature { .. } => ApiError::bad_request(error.to_string()),
            other => ApiError::from(other),
        })?;
        for (i, inputs) in matrix.chunks(width).enumerate() {
            rows.push((
                ids.value(i),
                FeatureRow {
                    trans_num: trans_nums.value(i).to_string(),
                    inputs: inputs.to_vec(),
                    card: cards.value(i),
                    secs: times.value(i).div_euclid(1_000_000),
                    position: ids.value(i),
                },
            ));
        }
    }
    // row_id is the position in the request (times the partition slots).
    rows.sort_by_key(|(id, _)| id / PARTITION_SLOTS);
    Ok(rows.into_iter().map(|(_, r)| r).collect())
}
