//! `/v1/models`: the registry, champion swaps and the challenger through the API, against
//! the real Redis (`scripts/services.sh up`): a swap changes what `/v1/score` answers with
//! (its rows name the new model, and nothing comes from the old one's cache); a model that
//! does not fit is refused and the champion stays.

#[path = "../../engine/tests/common.rs"]
mod common;

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use risksense_api::{ApiConfig, ApiState, router};
use risksense_store::{Retention, Store};
use risksense_udfs::{Model, ModelControl, ModelRegistry, SessionOptions};
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: &str = "s3cret";

async fn call(
    state: &Arc<ApiState>,
    method: &str,
    uri: &str,
    body: Option<String>,
    token: bool,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if token {
        request = request.header("authorization", format!("Bearer {TOKEN}"));
    }
    let request = request
        .body(body.map_or_else(Body::empty, Body::from))
        .expect("request");
    let response = router(state.clone())
        .oneshot(request)
        .await
        .expect("response");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The test registry (see `risksense_testkit::test_registry`): `a`, `b` (half the
/// threshold), `renamed` and `trees`.
fn registry(root: &Path) -> ModelRegistry {
    risksense_testkit::test_registry(&common::repo_root().join("models"), root, 0.5);
    ModelRegistry::new(root)
}

fn transactions_json(n: usize) -> String {
    let path = common::repo_root().join("data/fixtures/sparkov-2019h1-head3000.csv");
    let batches: Vec<_> = risksense_formats::source::TransactionFile::open(&path, 8192, false)
        .expect("fixture")
        .collect::<Result<_, _>>()
        .expect("rows");
    let batch = common::concat(&batches);
    let encoder = risksense_formats::codec::json::JsonRowEncoder::new(&batch).expect("encoder");
    let mut items = Vec::new();
    for row in 0..n {
        let mut out = Vec::new();
        encoder.encode_row(row, &mut out);
        items.push(String::from_utf8(out).expect("utf8"));
    }
    format!("[{}]", items.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_champion_changes_through_the_api_and_a_misfit_is_refused() {
    let url = common::redis_url();
    let scratch = risksense_testkit::Scratch::new("risksense-api-models");
    let registry = registry(&scratch);
    let a = Arc::new(Model::load(&scratch.join("a"), SessionOptions::default()).expect("a"));
    let control = Arc::new(
        ModelControl::new(a.clone(), None, Some(registry), SessionOptions::default())
            .expect("control"),
    );
    let store = Store::redis(
        &url,
        Retention {
            prefix: common::unique_topic("api-models"),
            ..Retention::default()
        },
    )
    .await
    .expect("redis");
    let config = ApiConfig {
        token: Some(TOKEN.to_string()),
        ..ApiConfig::default()
    };
    let state = ApiState::new(config, store, control, None, None, None)
        .await
        .expect("state");

    let (status, models) = call(&state, "GET", "/v1/models", None, false).await;
    assert_eq!(status, StatusCode::OK, "{models}");
    assert_eq!(models["champion"]["id"], a.id.as_str());
    assert_eq!(models["champion"]["role"], "anomaly");
    assert!(models["challenger"].is_null());
    let names: Vec<&str> = models["registry"]
        .as_array()
        .expect("registry")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names, ["a", "b", "renamed", "trees"]);

    // /v1/score names the model.
    let n = 60;
    let body = transactions_json(n);
    let (status, scored_a) = call(&state, "POST", "/v1/score", Some(body.clone()), true).await;
    assert_eq!(status, StatusCode::OK, "{scored_a}");
    let results_a = scored_a["results"].as_array().expect("results").clone();
    assert!(results_a.iter().all(|r| r["model_id"] == a.id.as_str()));

    // Changes need the token; bad names, unknown models and misfits change nothing.
    let choose = |name: &str| Some(json!({ "model": name }).to_string());
    let (status, _) = call(&state, "POST", "/v1/models/champion", choose("b"), false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for (name, want, says) in [
        ("../default", StatusCode::BAD_REQUEST, "not a model name"),
        ("zzz", StatusCode::NOT_FOUND, "b ("),
        ("renamed", StatusCode::UNPROCESSABLE_ENTITY, "log_amount"),
        ("trees", StatusCode::UNPROCESSABLE_ENTITY, "supervised"),
    ] {
        let (status, error) = call(&state, "POST", "/v1/models/champion", choose(name), true).await;
        assert_eq!(status, want, "{name}: {error}");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{name}: {message}");
    }
    let (status, error) = call(
        &state,
        "POST",
        "/v1/models/champion",
        Some("{\"name\": 1}".into()),
        true,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    let (_, models) = call(&state, "GET", "/v1/models", None, false).await;
    assert_eq!(models["champion"]["id"], a.id.as_str(), "still a");

    // The swap: /v1/score answers with b, none of it from a's cache entries.
    let (status, changed) = call(&state, "POST", "/v1/models/champion", choose("b"), true).await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["previous"], a.id.as_str());
    let b_id = changed["current"].as_str().expect("b's id").to_string();
    assert!(b_id.starts_with("b@"), "{b_id}");
    let (status, scored_b) = call(&state, "POST", "/v1/score", Some(body), true).await;
    assert_eq!(status, StatusCode::OK, "{scored_b}");
    assert_eq!(scored_b["cache_hits"], 0);
    let results_b = scored_b["results"].as_array().expect("results");
    assert!(results_b.iter().all(|r| r["model_id"] == b_id.as_str()));
    // b's thresholds are a's halved: the alert score's is what `is_anomaly` compares.
    assert_eq!(
        scored_b["threshold"].as_f64(),
        Some(a.card.alert_threshold() * 0.5)
    );
    // The same graph: the same scores; every row a flags b flags, and more.
    let flagged = |results: &[Value]| results.iter().filter(|r| r["is_anomaly"] == true).count();
    for (x, y) in results_a.iter().zip(results_b) {
        assert_eq!(x["score"], y["score"]);
        if x["is_anomaly"] == true {
            assert_eq!(y["is_anomaly"], true, "{y}");
        }
    }
    assert!(
        flagged(results_b) > flagged(&results_a),
        "b's lower thresholds flag more"
    );

    // A challenger: either kind of model; removed again.
    let (status, changed) = call(
        &state,
        "POST",
        "/v1/models/challenger",
        choose("trees"),
        true,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    let (_, models) = call(&state, "GET", "/v1/models", None, false).await;
    assert_eq!(models["challenger"]["id"], changed["current"]);
    assert_eq!(models["challenger"]["role"], "supervised");
    let (status, removed) = call(&state, "DELETE", "/v1/models/challenger", None, true).await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    assert!(removed["current"].is_null());
    assert_eq!(removed["previous"], changed["current"]);
    let (_, models) = call(&state, "GET", "/v1/models", None, false).await;
    assert!(models["challenger"].is_null());

    // A supervised model: only that kind; its flags join the champion's in /v1/score.
    let (status, error) = call(&state, "POST", "/v1/models/supervised", choose("a"), true).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("supervised"), "{message}");
    let (status, changed) = call(
        &state,
        "POST",
        "/v1/models/supervised",
        choose("trees"),
        true,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    let trees_id = changed["current"].as_str().expect("trees' id").to_string();
    let (_, models) = call(&state, "GET", "/v1/models", None, false).await;
    assert_eq!(models["supervised"]["id"], trees_id.as_str());
    let trees_threshold = models["supervised"]["threshold"]
        .as_f64()
        .expect("threshold");
    let (status, combined) = call(
        &state,
        "POST",
        "/v1/score",
        Some(transactions_json(n)),
        true,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{combined}");
    for (alone, both) in results_b
        .iter()
        .zip(combined["results"].as_array().expect("results"))
    {
        let p = both["fraud_probability"].as_f64().expect("a probability");
        assert_eq!(both["supervised_id"], trees_id.as_str());
        assert_eq!(both["score"], alone["score"]);
        let ae = alone["is_anomaly"].as_bool().expect("flag");
        assert_eq!(both["is_anomaly"], ae || p >= trees_threshold, "{both}");
    }
    let (status, removed) = call(&state, "DELETE", "/v1/models/supervised", None, true).await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    let (_, models) = call(&state, "GET", "/v1/models", None, false).await;
    assert!(models["supervised"].is_null());

    let (_, doc) = call(&state, "GET", "/openapi.json", None, false).await;
    for path in [
        "/v1/models/champion",
        "/v1/models/challenger",
        "/v1/models/supervised",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} in the OpenAPI document"
        );
    }
}

/// Two processes of a group over one store: a change through either's API reaches the
/// other (each follows the records in the store), and so does a process started later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_member_reaches_the_whole_group() {
    let url = common::redis_url();
    let scratch = risksense_testkit::Scratch::new("risksense-api-group");
    registry(&scratch);
    let prefix = common::unique_topic("api-group");
    let member = || async {
        let a = Arc::new(Model::load(&scratch.join("a"), SessionOptions::default()).expect("a"));
        let control = Arc::new(
            ModelControl::new(
                a,
                None,
                Some(ModelRegistry::new(&*scratch)),
                SessionOptions::default(),
            )
            .expect("control"),
        );
        let store = Store::redis(
            &url,
            Retention {
                prefix: prefix.clone(),
                ..Retention::default()
            },
        )
        .await
        .expect("redis");
        let follower = risksense_api::models::follow_group(control.clone(), store.clone());
        let config = ApiConfig {
            token: Some(TOKEN.to_string()),
            ..ApiConfig::default()
        };
        let state = ApiState::new(config, store, control, None, None, None)
            .await
            .expect("state");
        (state, follower)
    };
    let ((first, first_follower), (second, second_follower)) = (member().await, member().await);
    let choose = |name: &str| Some(json!({ "model": name }).to_string());
    // Waits (at most 10 s: the followers look every 2 s) until `state` serves `id` in
    // `slot` (null: none).
    let served = |state: Arc<ApiState>, slot: &'static str, id: Value| async move {
        for _ in 0..100 {
            let (_, models) = call(&state, "GET", "/v1/models", None, false).await;
            let now = if models[slot].is_null() {
                Value::Null
            } else {
                models[slot]["id"].clone()
            };
            if now == id {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("{slot} never became {id}");
    };

    // Each change through one member, then the other member serving it.
    let mut ids = std::collections::HashMap::new();
    for (through, method, slot, model, other) in [
        (&first, "POST", "champion", Some("b"), &second),
        (&second, "POST", "challenger", Some("trees"), &first),
        (&first, "POST", "supervised", Some("trees"), &second),
        (&second, "DELETE", "supervised", None, &first),
    ] {
        let uri = format!("/v1/models/{slot}");
        let (status, changed) = call(through, method, &uri, model.and_then(choose), true).await;
        assert_eq!(status, StatusCode::OK, "{slot}: {changed}");
        served(other.clone(), slot, changed["current"].clone()).await;
        ids.insert(slot, changed["current"].clone());
    }

    // A member started now, on its flags (champion a, nothing else), joins the group's.
    let (third, third_follower) = member().await;
    served(third.clone(), "champion", ids["champion"].clone()).await;
    served(third.clone(), "challenger", ids["challenger"].clone()).await;
    let (_, models) = call(&third, "GET", "/v1/models", None, false).await;
    assert!(models["supervised"].is_null(), "{models}");

    // A record no member can follow (no such model here): each keeps what it serves;
    // then a record it can follow is followed again.
    first
        .store
        .save_served_model("challenger", Some("ghost@000000000000"))
        .await
        .expect("record");
    tokio::time::sleep(risksense_api::models::FOLLOW_EVERY * 2).await;
    for member in [&first, &second, &third] {
        served(member.clone(), "challenger", ids["challenger"].clone()).await;
    }
    let (status, _) = call(&first, "DELETE", "/v1/models/challenger", None, true).await;
    assert_eq!(status, StatusCode::OK);
    for member in [&second, &third] {
        served(member.clone(), "challenger", Value::Null).await;
    }
    for follower in [first_follower, second_follower, third_follower] {
        follower.abort();
    }
}
