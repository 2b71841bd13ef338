//! The models the service scores with, as their cards describe them, the registry they
//! can be changed to, and the changes: a new champion, a challenger (shadow model) or a
//! supervised model set or removed. A change is loaded and checked before anything switches (a model that does
//! not fit the plan is refused with 422 and the running one stays), and a stream in this
//! process switches between two micro-batches (see `risksense_udfs::control`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use risksense_udfs::{ControlError, Model, Slot};
use serde::{Deserialize, Serialize};

use crate::{ApiError, ApiState};

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
    /// `anomaly` (the autoencoder) or `supervised` (a fraud probability).
    pub role: String,
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
            role: match model.role {
                risksense_udfs::model::Role::Anomaly => "anomaly",
                risksense_udfs::model::Role::Supervised => "supervised",
            }
            .to_string(),
        }
    }
}

/// A model folder of the registry.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RegistryView {
    /// Its folder name: what `POST /v1/models/champion` takes (or its id).
    pub name: String,
    pub id: Option<String>,
    pub kind: Option<String>,
    /// Why it cannot be served, if it cannot.
    pub problem: Option<String>,
}

/// The models in service.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    /// The model that scores every row, raises alerts and answers `/v1/score`.
    pub champion: ModelView,
    /// The shadow model scoring every row beside it (archive and metrics only), if any.
    pub challenger: Option<ModelView>,
    /// The supervised model whose flags raise alerts beside the champion's (score.sql's
    /// combined rule), if any.
    pub supervised: Option<ModelView>,
    /// The registry folder's models, when one is configured.
    pub registry: Vec<RegistryView>,
    /// Why the registry could not be listed, if it could not.
    pub registry_problem: Option<String>,
}

/// The models this service scores with, and those it could.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList)))]
pub async fn list(State(state): State<Arc<ApiState>>) -> Result<Json<ModelList>, ApiError> {
    let handle = state.models.api();
    let mut registry_problem = None;
    let registry = match state.models.registry() {
        Some(registry) => {
            let registry = registry.clone();
            match tokio::task::spawn_blocking(move || registry.list())
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
            {
                Ok(entries) => entries
                    .into_iter()
                    .map(|e| RegistryView {
                        name: e.name,
                        id: e.id,
                        kind: e.kind,
                        problem: e.problem,
                    })
                    .collect(),
                // The models in service are still worth answering with.
                Err(error) => {
                    registry_problem = Some(error.to_string());
                    Vec::new()
                }
            }
        }
        None => Vec::new(),
    };
    Ok(Json(ModelList {
        champion: ModelView::from(handle.load().as_ref()),
        challenger: handle.challenger().map(|m| ModelView::from(m.as_ref())),
        supervised: handle.supervised().map(|m| ModelView::from(m.as_ref())),
        registry,
        registry_problem,
    }))
}

/// Which registry model to serve.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ModelChoice {
    /// A folder name of the registry (`GET /v1/models`) or a model id (`name@hash`, which
    /// also pins the exact files).
    pub model: String,
}

/// What a change did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelChanged {
    /// `champion`, `challenger` or `supervised`.
    pub slot: String,
    /// The id now in the slot (null: the slot was emptied).
    pub current: Option<String>,
    pub previous: Option<String>,
}

/// Puts the registry model the body names (`{"model": …}`) in `slot`.
async fn choose(state: &ApiState, slot: Slot, body: &[u8]) -> Result<Json<ModelChanged>, ApiError> {
    let choice: ModelChoice = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be {{\"model\": \"<registry name or id>\"}}: {e}"
        ))
    })?;
    change(state, slot, Some(&choice.model)).await
}

/// Puts the registry model `name` in `slot` (None: empties it) and answers with what
/// changed; a change made is recorded in the store for the rest of the group to follow
/// (`follow_group`), in one group step with it.
async fn change(
    state: &ApiState,
    slot: Slot,
    name: Option<&str>,
) -> Result<Json<ModelChanged>, ApiError> {
    let _step = state.models.group_step().await;
    match state.models.change(slot, name).await {
        Ok(changed) => {
            let slot = changed.slot.to_string();
            if let Err(mut error) = state
                .store_call(
                    state
                        .store
                        .save_served_model(&slot, changed.current.as_deref()),
                )
                .await
            {
                // The record is what every member follows, this one included: unrecorded,
                // this process goes back to the recorded model within seconds. Retrying is
                // safe.
                error.message = format!(
                    "the {slot} change could not be recorded for the group, so it will not \
                     last (this process returns to the group's recorded model): retry: {}",
                    error.message
                );
                return Err(error);
            }
            Ok(Json(ModelChanged {
                slot,
                current: changed.current,
                previous: changed.previous,
            }))
        }
        Err(error) => Err(match &error {
            ControlError::Registry(risksense_udfs::registry::RegistryError::BadName(_)) => {
                ApiError::bad_request(error.to_string())
            }
            ControlError::Registry(risksense_udfs::registry::RegistryError::Unknown { .. }) => {
                ApiError::not_found(error.to_string())
            }
            // The model's own files do not make a servable model: the request's to fix.
            ControlError::Load {
                source:
                    risksense_udfs::model::ModelError::Missing { .. }
                    | risksense_udfs::model::ModelError::BadCard { .. }
                    | risksense_udfs::model::ModelError::Mismatch { .. },
                ..
            }
            | ControlError::Refused(_)
            | ControlError::ChampionRequired => ApiError::unprocessable(error.to_string()),
            ControlError::Load { .. } => ApiError::internal(error.to_string()),
            ControlError::NoRegistry => ApiError::conflict(error.to_string()),
            ControlError::StreamBusy(_) | ControlError::Changed { .. } => {
                let mut api = ApiError::unavailable(error.to_string());
                api.retry_after = Some(1);
                api
            }
            ControlError::Registry(_) | ControlError::StreamStopped => {
                let mut api = ApiError::unavailable(error.to_string());
                api.retry_after = Some(1);
                api
            }
        }),
    }
}

/// Serve another registry model as the champion, with no restart: a stream in this
/// process switches between two micro-batches, keeping its per-card state; every row
/// carries the id of the model that scored it. A model whose features are not the plan's,
/// or that is not an anomaly model, is refused (422) and the champion stays.
#[utoipa::path(post, path = "/v1/models/champion", request_body = ModelChoice,
    responses((status = 200, body = ModelChanged), (status = 404, body = crate::error::ErrorBody),
              (status = 422, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_champion(
    State(state): State<Arc<ApiState>>,
    body: crate::extract::Body,
) -> Result<Json<ModelChanged>, ApiError> {
    choose(&state, Slot::Champion, &body.0).await
}

/// Score every row with a registry model beside the champion (an anomaly or a supervised
/// model): its score and flag go to the archive and metrics, never to alerts.
#[utoipa::path(post, path = "/v1/models/challenger", request_body = ModelChoice,
    responses((status = 200, body = ModelChanged), (status = 404, body = crate::error::ErrorBody),
              (status = 422, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_challenger(
    State(state): State<Arc<ApiState>>,
    body: crate::extract::Body,
) -> Result<Json<ModelChanged>, ApiError> {
    choose(&state, Slot::Challenger, &body.0).await
}

/// Stop shadow scoring.
#[utoipa::path(delete, path = "/v1/models/challenger",
    responses((status = 200, body = ModelChanged), (status = 503, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove_challenger(
    State(state): State<Arc<ApiState>>,
) -> Result<Json<ModelChanged>, ApiError> {
    change(&state, Slot::Challenger, None).await
}

/// Raise alerts with a registry supervised model (`risksense train --model trees`) beside
/// the champion: a row is an alert when either flags it, and `risk` orders alerts by its
/// fraud probability first (sql/score.sql). Any other kind of model is refused (422).
#[utoipa::path(post, path = "/v1/models/supervised", request_body = ModelChoice,
    responses((status = 200, body = ModelChanged), (status = 404, body = crate::error::ErrorBody),
              (status = 422, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_supervised(
    State(state): State<Arc<ApiState>>,
    body: crate::extract::Body,
) -> Result<Json<ModelChanged>, ApiError> {
    choose(&state, Slot::Supervised, &body.0).await
}

/// Stop alerting on the supervised model's flags (the champion alone raises alerts).
#[utoipa::path(delete, path = "/v1/models/supervised",
    responses((status = 200, body = ModelChanged), (status = 503, body = crate::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove_supervised(
    State(state): State<Arc<ApiState>>,
) -> Result<Json<ModelChanged>, ApiError> {
    change(&state, Slot::Supervised, None).await
}

/// How often a process looks for changes recorded by the rest of its group.
pub const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Keeps this process's models those its group records in `store` (a change made through
/// any member's API, or a member started later): at once, then every [`FOLLOW_EVERY`],
/// each slot whose record differs from what it serves is changed to it, by id from the
/// registry, through `control` (so a stream here switches between micro-batches). The
/// record is per store prefix and wins over the flags a process started with. A record
/// this process cannot follow (the model is not in its registry, or does not fit) is
/// logged once and not tried again until it changes; the store being away only delays
/// following.
pub fn follow_group(
    control: Arc<risksense_udfs::ModelControl>,
    store: risksense_store::Store,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Records this process failed to follow: skipped until the record changes.
        let mut failed: std::collections::HashSet<(String, String)> = Default::default();
        loop {
            {
                let _step = control.group_step().await;
                // Bounded: changes through this API wait while the step is held.
                match tokio::time::timeout(FOLLOW_EVERY, store.served_models()).await {
                    Ok(Ok(served)) => {
                        failed.retain(|record| served.contains(record));
                        let to_follow: Vec<(String, String)> =
                            served.into_iter().filter(|r| !failed.contains(r)).collect();
                        for (record, result) in control.follow(&to_follow).await {
                            match result {
                                Ok(changed) => {
                                    tracing::info!(slot = %changed.slot, current = ?changed.current, previous = ?changed.previous, "followed the group's model record");
                                }
                                // A stream busy or stopping: tried again at the next step.
                                Err(
                                    error @ (ControlError::StreamBusy(_)
                                    | ControlError::StreamStopped),
                                ) => {
                                    tracing::debug!(%error, "following the group's model record later");
                                }
                                Err(error) => {
                                    tracing::warn!(slot = %record.0, model = %record.1, %error, "cannot follow the group's model record; keeping the model served until the record changes");
                                    failed.insert(record);
                                }
                            }
                        }
                    }
                    Ok(Err(error)) => tracing::debug!(%error, "reading the group's models"),
                    Err(_) => tracing::debug!("reading the group's models timed out"),
                }
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    })
}
