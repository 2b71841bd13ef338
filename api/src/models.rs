//! The models the service scores with, as their cards describe them.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use risksense_udfs::Model;
use serde::Serialize;

use crate::ApiState;

/// A loaded model: what it is, what it takes and how it was validated.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelView {
    /// `name@` and a hash of the model's files: what scored a row.
    pub id: String,
    pub name: String,
    pub kind: String,
    /// The features it takes, in order (sql/features.sql's model inputs).
    pub features: Vec<String>,
    /// Rows scoring at or above it are anomalies (null if not finite).
    pub threshold: Option<f64>,
    pub threshold_rule: String,
    /// First and last event time of the training rows.
    pub trained_on: (String, String),
    /// Quality on the validation period, when it had labels: `roc_auc`, `pr_auc`,
    /// `recall_at_alert_rate`, `precision_at_alert_rate`, `alert_rate`, `rows`, `frauds`.
    #[schema(value_type = Option<Object>)]
    pub validation: Option<serde_json::Value>,
    pub created_at: String,
}

impl From<&Model> for ModelView {
    fn from(model: &Model) -> Self {
        let card = &model.card;
        Self {
            id: model.id.clone(),
            name: card.name.clone(),
            kind: card.kind.clone(),
            features: card.features.clone(),
            threshold: card.threshold.is_finite().then_some(card.threshold),
            threshold_rule: card.threshold_rule.clone(),
            trained_on: card.training.period.clone(),
            validation: card
                .validation
                .as_ref()
                .and_then(|m| serde_json::to_value(m).ok()),
            created_at: card.created_at.clone(),
        }
    }
}

/// The models in service.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    /// The model that scores every row, raises alerts and answers `/v1/score`.
    pub champion: ModelView,
}

/// The models this service scores with.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList)))]
pub async fn list(State(state): State<Arc<ApiState>>) -> Json<ModelList> {
    Json(ModelList {
        champion: ModelView::from(state.model.as_ref()),
    })
}
