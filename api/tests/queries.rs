//! Standing queries through the HTTP API, in process over a memory store (no services):
//! creating, listing, refusing and deleting them, and their results pushed as
//! Server-Sent Events when scored rows go through the stream's sink.

#[path = "../../engine/tests/common.rs"]
mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Float64Type;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use risksense_api::{ApiConfig, ApiState, router};
use risksense_connectors::sink::{Sink, SinkBatch};
use risksense_continuous::output::Connections;
use risksense_continuous::plan::Catalog;
use risksense_continuous::{ContinuousSink, Registry};
use risksense_query::scorer::StreamScorer;
use risksense_query::scoring::SessionOptions;
use risksense_store::{Retention, Store};
use serde_json::{Value, json};
use tower::ServiceExt;

/// An API whose process runs standing queries, and scored fixture rows to feed them.
struct Setup {
    state: Arc<ApiState>,
    registry: Arc<Registry>,
    /// The fixture's first rows, scored as the stream scores them.
    scored: Vec<RecordBatch>,
}

async fn setup(config: ApiConfig) -> Setup {
    let model = support::model();
    let scorer = StreamScorer::with_query(
        model.clone(),
        SessionOptions {
            target_partitions: 1,
            ..SessionOptions::default()
        },
        "SELECT * FROM scored",
    )
    .await
    .expect("scorer");
    let head = support::fixture().slice(0, 400);
    let scored = scorer.score(vec![head]).await.expect("scored");
    assert!(scored.iter().map(RecordBatch::num_rows).sum::<usize>() == 400);
    let store = Store::memory(Retention {
        prefix: "test".to_string(),
        ..Retention::default()
    });
    let catalog = Catalog {
        scored: scorer.output_schema(),
        transactions: risksense_common::schema::transaction_schema(),
        lookups: BTreeMap::new(),
    };
    let connections = Connections {
        producer: None,
        store: Some(store.clone()),
        kafka: None,
    };
    let registry = Registry::new(catalog, connections, "test");
    let state = ApiState::new(
        config,
        store,
        risksense_udfs::ModelControl::fixed(model),
        None,
        None,
        Some(registry.clone()),
    )
    .await
    .expect("state");
    Setup {
        state,
        registry,
        scored,
    }
}

async fn call(state: &Arc<ApiState>, request: Request<Body>) -> (StatusCode, Value) {
    let response = router(state.clone())
        .oneshot(request)
        .await
        .expect("response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn post_text(uri: &str, sql: &str) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "text/plain")
        .body(Body::from(sql.to_string()))
        .expect("request")
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("request")
}

fn message(body: &Value) -> String {
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Server-Sent Events read from a response body as they arrive.
struct Events {
    body: Body,
    buffer: String,
}

impl Events {
    async fn open(state: &Arc<ApiState>, request: Request<Body>) -> Self {
        let response = router(state.clone())
            .oneshot(request)
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Self {
            body: response.into_body(),
            buffer: String::new(),
        }
    }

    /// The next (event, data), None at the end of the stream; fails after 30 s.
    async fn next(&mut self) -> Option<(String, String)> {
        tokio::time::timeout(Duration::from_secs(30), self.read())
            .await
            .expect("an event within 30 s")
    }

    async fn read(&mut self) -> Option<(String, String)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = String::from("message");
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        event = value.trim().to_string();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push(value.strip_prefix(' ').unwrap_or(value).to_string());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some((event, data.join("\n")));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(bytes) = frame.into_data() {
                        self.buffer.push_str(&String::from_utf8_lossy(&bytes));
                    }
                }
                Some(Err(error)) => panic!("reading the stream: {error}"),
                None => return None,
            }
        }
    }
}

/// (trans_num, amt) of the scored rows with `amt` above `min`.
fn rows_above(scored: &[RecordBatch], min: f64) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for batch in scored {
        let ids = batch
            .column_by_name("trans_num")
            .expect("trans_num")
            .as_string::<i32>();
        let amounts = batch
            .column_by_name("amt")
            .expect("amt")
            .as_primitive::<Float64Type>();
        for row in 0..batch.num_rows() {
            if amounts.value(row) > min {
                out.insert(ids.value(row).to_string(), amounts.value(row));
            }
        }
    }
    out
}

fn subscriptions(registry: &Registry) -> usize {
    registry.list(true).len() - registry.list(false).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standing_queries_are_created_listed_refused_and_deleted() {
    let Setup { state, .. } = setup(ApiConfig::default()).await;

    // As text, and as JSON.
    let (status, body) = call(
        &state,
        post_text(
            "/v1/queries",
            "CREATE VIEW big AS SELECT trans_num, amt FROM scored WHERE amt > 100",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body, json!({"created": ["big"]}));
    let windowed = "CREATE VIEW per_minute AS SELECT tumble(trans_date_trans_time, INTERVAL '1' MINUTE) AS window_start, category, count(*) AS n, sum(amt) AS spend FROM scored GROUP BY 1, 2";
    let request = Request::post("/v1/queries")
        .header("content-type", "application/json")
        .body(Body::from(json!({ "sql": windowed }).to_string()))
        .expect("request");
    let (status, body) = call(&state, request).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["created"], json!(["per_minute"]));

    let (status, body) = call(&state, get("/v1/queries")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let queries = body["queries"].as_array().expect("queries");
    let names: Vec<&str> = queries.iter().filter_map(|q| q["name"].as_str()).collect();
    assert_eq!(names, ["big", "per_minute"]);
    let big = &queries[0];
    assert_eq!(big["kind"], "stateless");
    assert_eq!(big["status"]["state"], "running");
    assert_eq!(big["origin"], "api");
    assert_eq!(big["source"], "scored");
    assert_eq!(big["columns"], json!(["trans_num", "amt"]));
    assert_eq!(queries[1]["kind"], "windowed");
    assert_eq!(
        queries[1]["columns"],
        json!(["window_start", "category", "n", "spend", "window_end"])
    );

    let (status, body) = call(&state, get("/v1/queries/per_minute")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "per_minute");
    assert_eq!(body["recent"], json!([]));
    assert!(body["sql"].as_str().expect("sql").contains("tumble"));

    // Refusals, each with its reason.
    for (sql, status, says) in [
        (
            "CREATE VIEW oops AS SELEC amt FROM scored",
            StatusCode::BAD_REQUEST,
            "parse",
        ),
        (
            "CREATE VIEW unknown AS SELECT no_such_column FROM scored",
            StatusCode::BAD_REQUEST,
            "no_such_column",
        ),
        (
            "CREATE VIEW per_card AS SELECT cc_num, count(*) FROM scored GROUP BY cc_num",
            StatusCode::BAD_REQUEST,
            "tumble",
        ),
        (
            "CREATE VIEW sorted AS SELECT amt FROM scored ORDER BY amt",
            StatusCode::BAD_REQUEST,
            "not supported",
        ),
        (
            "CREATE VIEW big AS SELECT amt FROM scored",
            StatusCode::CONFLICT,
            "exists",
        ),
        (
            "CREATE VIEW _subscription_7 AS SELECT amt FROM scored",
            StatusCode::BAD_REQUEST,
            "kept for subscriptions",
        ),
        (
            "SELECT amt FROM scored",
            StatusCode::BAD_REQUEST,
            "CREATE VIEW",
        ),
        ("   ", StatusCode::BAD_REQUEST, "no SQL"),
    ] {
        let (got, body) = call(&state, post_text("/v1/queries", sql)).await;
        assert_eq!(got, status, "{sql}: {body}");
        assert!(message(&body).contains(says), "{sql}: {body}");
        let code = if status == StatusCode::CONFLICT {
            "conflict"
        } else {
            "bad_request"
        };
        assert_eq!(body["error"]["code"], code, "{sql}");
    }
    // A script is created whole or not at all.
    let (status, body) = call(
        &state,
        post_text(
            "/v1/queries",
            "CREATE VIEW fine AS SELECT amt FROM scored; CREATE VIEW broken AS SELECT nope FROM scored",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = call(&state, get("/v1/queries/fine")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _) = call(
        &state,
        Request::delete("/v1/queries/big")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = call(
        &state,
        Request::delete("/v1/queries/big")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _) = call(&state, get("/v1/queries/big")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&state, get("/v1/queries/big/stream")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, body) = call(&state, get("/v1/queries")).await;
    assert_eq!(body["queries"].as_array().expect("queries").len(), 1);
    // The name is free again.
    let (status, _) = call(
        &state,
        post_text("/v1/queries", "CREATE VIEW big AS SELECT amt FROM scored"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_sql_is_refused_before_it_reaches_the_api_threads() {
    let Setup { state, .. } = setup(ApiConfig::default()).await;
    let chain = |terms: usize| {
        let mut sql = String::from("amt");
        for _ in 1..terms {
            sql.push_str(" + 1");
        }
        sql
    };
    // Deep enough to overflow an ordinary stack when parsed, planned or dropped there.
    let deep = format!(
        "CREATE VIEW deep AS SELECT {} AS x FROM scored",
        chain(20_000)
    );
    let (status, body) = call(&state, post_text("/v1/queries", &deep)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(message(&body).contains("nests"), "{body}");
    let deep = format!("SELECT {} AS x FROM scored", chain(20_000));
    let (status, body) = call(&state, post_text("/v1/subscribe", &deep)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Just under the limit plans fine on these threads (the test's 2 MiB stacks).
    let (status, body) = call(
        &state,
        post_text(
            "/v1/queries",
            &format!(
                "CREATE VIEW nested AS SELECT {} AS x FROM scored",
                chain(120)
            ),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_stream_in_the_process_queries_are_unavailable() {
    let store = Store::memory(Retention::default());
    let state = ApiState::new(
        ApiConfig::default(),
        store,
        risksense_udfs::ModelControl::fixed(support::model()),
        None,
        None,
        None,
    )
    .await
    .expect("state");
    for request in [
        get("/v1/queries"),
        post_text("/v1/queries", "CREATE VIEW v AS SELECT amt FROM scored"),
        post_text("/v1/subscribe", "SELECT amt FROM scored"),
        get("/v1/queries/v/stream"),
    ] {
        let uri = request.uri().to_string();
        let (status, body) = call(&state, request).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}: {body}");
        assert!(message(&body).contains("risksense run"), "{uri}: {body}");
    }
    // A stream still starting: try again in a moment.
    let registry = Registry::pending(BTreeMap::new(), None, "test");
    let state = ApiState::new(
        ApiConfig::default(),
        Store::memory(Retention::default()),
        risksense_udfs::ModelControl::fixed(support::model()),
        None,
        None,
        Some(registry),
    )
    .await
    .expect("state");
    let response = router(state.clone())
        .oneshot(post_text(
            "/v1/queries",
            "CREATE VIEW v AS SELECT amt FROM scored",
        ))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, body) = call(&state, get("/v1/queries")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["queries"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_guards_queries_and_streams_take_it_as_a_parameter() {
    let Setup { state, .. } = setup(ApiConfig {
        token: Some("s3cret".to_string()),
        ..ApiConfig::default()
    })
    .await;
    let (status, body) = call(&state, get("/v1/queries")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
    let authorized =
        |request: axum::http::request::Builder| request.header("authorization", "Bearer s3cret");
    let (status, _) = call(
        &state,
        authorized(Request::get("/v1/queries"))
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(
        &state,
        post_text("/v1/queries", "CREATE VIEW v AS SELECT amt FROM scored"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = call(
        &state,
        authorized(Request::post("/v1/queries"))
            .body(Body::from("CREATE VIEW v AS SELECT amt FROM scored"))
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Only the streams take `?token=` (EventSource cannot send headers).
    let (status, _) = call(&state, get("/v1/queries?token=s3cret")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(&state, get("/v1/queries/v/stream")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(&state, get("/v1/queries/v/stream?token=wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut events = Events::open(&state, get("/v1/queries/v/stream?token=s3cret")).await;
    let (event, data) = events.next().await.expect("columns");
    assert_eq!((event.as_str(), data.as_str()), ("columns", "[\"amt\"]"));
    let mut events = Events::open(
        &state,
        post_text("/v1/subscribe?token=s3cret", "SELECT amt FROM scored"),
    )
    .await;
    assert_eq!(events.next().await.expect("columns").0, "columns");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_streams_the_rows_the_stream_scores_and_ends_with_its_client() {
    let Setup {
        state,
        registry,
        scored,
    } = setup(ApiConfig::default()).await;
    let sink = ContinuousSink::new(registry.clone());

    // Bad SQL is refused before any stream starts.
    let (status, body) = call(
        &state,
        post_text("/v1/subscribe", "SELECT no_such_column FROM scored"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(message(&body).contains("no_such_column"), "{body}");
    let (status, body) = call(
        &state,
        post_text("/v1/subscribe", "CREATE VIEW v AS SELECT amt FROM scored"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(subscriptions(&registry), 0);

    let request = Request::post("/v1/subscribe")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"sql": "SELECT trans_num, amt FROM scored WHERE amt > 0"}).to_string(),
        ))
        .expect("request");
    let mut events = Events::open(&state, request).await;
    // The temporary query runs while its client reads; it is not listed as a standing one.
    assert_eq!(subscriptions(&registry), 1);
    let (status, body) = call(&state, get("/v1/queries")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["queries"], json!([]));
    let (event, data) = events.next().await.expect("columns");
    assert_eq!(event, "columns");
    assert_eq!(data, "[\"trans_num\",\"amt\"]");

    let expected = rows_above(&scored, 0.0);
    assert!(expected.len() > 300, "{}", expected.len());
    sink.write(&SinkBatch::new(0, scored.clone(), vec![]))
        .await
        .expect("written");
    let mut got = BTreeMap::new();
    while got.len() < expected.len() {
        let (event, data) = events.next().await.expect("a row");
        assert_eq!(event, "row", "{data}");
        let row: Value = serde_json::from_str(&data).expect("a JSON object");
        let object = row.as_object().expect("an object");
        assert_eq!(object.len(), 2, "{row}");
        let id = row["trans_num"].as_str().expect("trans_num").to_string();
        assert!(
            got.insert(id, row["amt"].as_f64().expect("amt")).is_none(),
            "a row twice: {row}"
        );
    }
    assert_eq!(got, expected);

    // The client goes: its query goes with it.
    drop(events);
    assert_eq!(subscriptions(&registry), 0);
    sink.write(&SinkBatch::new(1, scored, vec![]))
        .await
        .expect("written without subscribers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_streams_its_rows_keeps_recent_ones_and_its_streams_end_when_deleted() {
    let Setup {
        state,
        registry,
        scored,
    } = setup(ApiConfig::default()).await;
    let sink = ContinuousSink::new(registry.clone());
    let (status, body) = call(
        &state,
        post_text(
            "/v1/queries",
            "CREATE VIEW big AS SELECT trans_num, amt, category FROM scored WHERE amt > 100",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut events = Events::open(&state, get("/v1/queries/big/stream")).await;
    assert_eq!(events.next().await.expect("columns").0, "columns");
    let (_, body) = call(&state, get("/v1/queries/big")).await;
    assert_eq!(body["subscribers"], 1, "{body}");

    let expected = rows_above(&scored, 100.0);
    assert!(!expected.is_empty());
    sink.write(&SinkBatch::new(0, scored.clone(), vec![]))
        .await
        .expect("written");
    let mut got = BTreeSet::new();
    while got.len() < expected.len() {
        let (event, data) = events.next().await.expect("a row");
        assert_eq!(event, "row", "{data}");
        let row: Value = serde_json::from_str(&data).expect("json");
        let id = row["trans_num"].as_str().expect("trans_num").to_string();
        assert!(expected[&id] > 100.0 && row["amt"] == expected[&id]);
        assert!(row["category"].is_string(), "{row}");
        got.insert(id);
    }

    // The query's recent rows and counters.
    let (status, body) = call(&state, get("/v1/queries/big")).await;
    assert_eq!(status, StatusCode::OK);
    let recent = body["recent"].as_array().expect("recent");
    assert_eq!(recent.len(), expected.len());
    assert!(
        recent
            .iter()
            .all(|r| expected.contains_key(r["trans_num"].as_str().unwrap_or_default()))
    );
    assert_eq!(body["rows_in"], 400);
    assert_eq!(body["rows_out"], expected.len());
    // And in Prometheus, labelled by query.
    let response = router(state.clone())
        .oneshot(get("/metrics"))
        .await
        .expect("response");
    let text = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("risksense_query_rows_in_total{query=\"big\"} 400"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "risksense_query_rows_out_total{{query=\"big\"}} {}",
            expected.len()
        )),
        "{text}"
    );

    let (status, _) = call(
        &state,
        Request::delete("/v1/queries/big")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (event, _) = events.next().await.expect("end");
    assert_eq!(event, "end");
    assert!(events.next().await.is_none(), "the stream goes on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_too_slow_is_dropped_and_never_slows_the_stream() {
    let Setup {
        state,
        registry,
        scored,
    } = setup(ApiConfig::default()).await;
    let sink = ContinuousSink::new(registry.clone());
    let mut events = Events::open(
        &state,
        post_text(
            "/v1/subscribe",
            "SELECT trans_num, amt FROM scored WHERE amt >= 0",
        ),
    )
    .await;
    // The client reads nothing while 300 micro-batches go through (more than the 256
    // result batches a subscriber may fall behind by): the writes do not wait for it.
    let batch = &scored[0];
    assert!(batch.num_rows() > 10);
    let writes = async {
        for seq in 0..300u64 {
            // Two rows each: one result batch each.
            let rows = batch.slice(seq as usize % (batch.num_rows() - 2), 2);
            sink.write(&SinkBatch::new(seq, vec![rows], vec![]))
                .await
                .expect("written");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), writes)
        .await
        .expect("the stream never waits for a subscriber");
    let (event, _) = events.next().await.expect("columns");
    assert_eq!(event, "columns");
    let (event, data) = events.next().await.expect("dropped");
    assert_eq!(event, "dropped", "{data}");
    let error: Value = serde_json::from_str(&data).expect("json");
    let text = error["error"].as_str().expect("error");
    assert!(text.starts_with("client too slow: "), "{text}");
    assert!(text.contains("result batches dropped; reconnect"), "{text}");
    let dropped: u64 = text
        .trim_start_matches("client too slow: ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert!(dropped >= 300 - 256, "{dropped}");
    assert!(events.next().await.is_none(), "the stream ends");
    drop(events);
    assert_eq!(subscriptions(&registry), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_has_the_query_routes() {
    let Setup { state, .. } = setup(ApiConfig::default()).await;
    let (status, doc) = call(&state, get("/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    for (path, method) in [
        ("/v1/queries", "get"),
        ("/v1/queries", "post"),
        ("/v1/queries/{name}", "get"),
        ("/v1/queries/{name}", "delete"),
        ("/v1/queries/{name}/stream", "get"),
        ("/v1/subscribe", "post"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
    let create = &doc["paths"]["/v1/queries"]["post"];
    for status in ["201", "400", "401", "409", "429", "503"] {
        assert!(
            create["responses"][status].is_object(),
            "POST /v1/queries {status}"
        );
    }
    assert!(create["requestBody"]["content"]["text/plain"].is_object());
    assert!(
        doc["paths"]["/v1/subscribe"]["post"]["responses"]["200"]["content"]["text/event-stream"]
            .is_object()
    );
}
