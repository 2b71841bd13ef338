//! The HTTP API against the real Redis (`scripts/services.sh up`), in process: lookups,
//! ad-hoc scoring with the cache, SQL limits, errors, metrics and the OpenAPI document.

#[path = "../../engine/tests/common.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use risksense_api::{ApiConfig, ApiState, router};
use risksense_store::ScoredTransaction;
use serde_json::{Value, json};
use support::{Api, api, fixture};
use tower::ServiceExt;

async fn call(state: &Arc<ApiState>, request: Request<Body>) -> (StatusCode, Vec<u8>, String) {
    let response = router(state.clone())
        .oneshot(request)
        .await
        .expect("response");
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, body, content_type)
}

async fn get(state: &Arc<ApiState>, uri: &str) -> (StatusCode, Value) {
    let (status, body, _) = call(
        state,
        Request::get(uri).body(Body::empty()).expect("request"),
    )
    .await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn post(
    state: &Arc<ApiState>,
    uri: &str,
    body: String,
    token: Option<&str>,
) -> (StatusCode, Vec<u8>, String) {
    let mut request = Request::post(uri).header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    call(state, request.body(Body::from(body)).expect("request")).await
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_answer_from_redis_and_unknown_ids_are_404() {
    let Api { state, rows } = api(ApiConfig::default()).await;
    let anomaly = rows
        .iter()
        .find(|r| r.is_anomaly)
        .expect("an anomaly in the fixture");

    let (status, body) = get(&state, &format!("/v1/transactions/{}", anomaly.trans_num)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["trans_num"], anomaly.trans_num);
    assert!((body["score"].as_f64().expect("score") - anomaly.score).abs() < 1e-9);
    assert_eq!(body["is_anomaly"], true);
    assert!(
        body["explanation"]
            .as_str()
            .expect("explanation")
            .contains('%')
    );
    assert_eq!(body["event_time"], anomaly.event_time);

    let (status, body) = get(&state, "/v1/transactions/no-such-transaction").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");

    // A card's list: newest first, all of that card.
    let card = anomaly.cc_num;
    let expected = rows.iter().filter(|r| r.cc_num == card).count().min(50);
    let (status, body) = get(&state, &format!("/v1/cards/{card}/transactions")).await;
    assert_eq!(status, StatusCode::OK);
    let list = body["transactions"].as_array().expect("list");
    assert_eq!(list.len(), expected);
    let times: Vec<i64> = list
        .iter()
        .map(|t| t["event_secs"].as_i64().expect("secs"))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "not newest first: {times:?}"
    );
    assert!(list.iter().all(|t| t["cc_num"] == card));
    let (status, body) = get(&state, "/v1/cards/not-a-card/transactions").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("not-a-card")
    );
    let (status, _) = get(&state, "/v1/cards/42/transactions").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Anomalies: newest first, filtered by score and time.
    let flagged: Vec<&ScoredTransaction> = rows.iter().filter(|r| r.is_anomaly).collect();
    let (status, body) = get(&state, "/v1/anomalies?limit=1000").await;
    assert_eq!(status, StatusCode::OK);
    let all = body["transactions"].as_array().expect("list");
    assert_eq!(all.len(), flagged.len());
    let median = {
        let mut scores: Vec<f64> = flagged.iter().map(|r| r.score).collect();
        scores.sort_by(f64::total_cmp);
        scores[scores.len() / 2]
    };
    let (_, body) = get(
        &state,
        &format!("/v1/anomalies?limit=1000&min_score={median}"),
    )
    .await;
    let high = body["transactions"].as_array().expect("list");
    assert_eq!(
        high.len(),
        flagged.iter().filter(|r| r.score >= median).count()
    );
    let latest = flagged.iter().map(|r| r.event_secs).max().expect("latest");
    let (_, body) = get(&state, &format!("/v1/anomalies?since={latest}")).await;
    assert!(
        body["transactions"]
            .as_array()
            .expect("list")
            .iter()
            .all(|t| t["event_secs"].as_i64() >= Some(latest))
    );
    let (status, body) = get(&state, "/v1/anomalies?since=yesterday").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "bad_request");
    let (status, _) = get(&state, "/v1/anomalies?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = get(&state, "/v1/no/such/route").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
}

/// The fixture's first `n` rows as the JSON objects `risksense produce` sends.
fn transactions_json(n: usize) -> String {
    let batch = fixture();
    let encoder = risksense_formats::codec::json::JsonRowEncoder::new(&batch).expect("encoder");
    let mut out = Vec::new();
    let mut items = Vec::new();
    for row in 0..n {
        encoder.encode_row(row, &mut out);
        items.push(String::from_utf8(out.clone()).expect("utf8"));
    }
    format!("[{}]", items.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_matches_the_batch_path_and_repeats_come_from_the_cache() {
    let Api { state, .. } = api(ApiConfig::default()).await;
    // Rows from the start of the fixture: each card's history is the same in the request
    // and in the batch job over the fixture.
    let n = 300;
    let body = transactions_json(n);
    let batches = common::batch_scored(&state.models.api().load(), fixture().slice(0, n)).await;
    let mut expected = std::collections::HashMap::new();
    for batch in &batches {
        for row in risksense_store::from_batch(batch).expect("rows") {
            expected.insert(row.trans_num.clone(), row);
        }
    }

    let (status, first, _) = post(&state, "/v1/score", body.clone(), None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&first)
    );
    let first: Value = serde_json::from_slice(&first).expect("json");
    let results = first["results"].as_array().expect("results");
    assert_eq!(results.len(), n);
    assert_eq!(first["cache_misses"], n as u64);
    for result in results {
        let want = &expected[result["trans_num"].as_str().expect("id")];
        let got = result["score"].as_f64().expect("score");
        assert!(
            (got - want.score).abs() <= 1e-6,
            "{}: {got} vs {}",
            want.trans_num,
            want.score
        );
        assert_eq!(result["is_anomaly"], want.is_anomaly);
        assert_eq!(result["explanation"].as_str(), want.explanation.as_deref());
        assert_eq!(result["cached"], false);
    }

    let (status, second, _) = post(&state, "/v1/score", body, None).await;
    assert_eq!(status, StatusCode::OK);
    let second: Value = serde_json::from_slice(&second).expect("json");
    assert_eq!(second["cache_hits"], n as u64);
    assert_eq!(second["cache_misses"], 0);
    assert_eq!(second["results"], {
        let mut again = first["results"].clone();
        for r in again.as_array_mut().expect("results") {
            r["cached"] = json!(true);
        }
        again
    });

    // Bad input is a 400 that says what was wrong.
    for (body, needle) in [
        ("not json".to_string(), "JSON array"),
        ("[]".to_string(), "no transactions"),
        ("[{\"amt\": 3}]".to_string(), "transaction 0"),
        ("{\"a\": 1}".to_string(), "JSON array"),
    ] {
        let (status, text, _) = post(&state, "/v1/score", body.clone(), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let text = String::from_utf8_lossy(&text);
        assert!(text.contains(needle), "{body}: {text}");
    }
    // Too large: 413, as JSON.
    let huge = format!("[{}]", vec!["{}"; 1_000_000].join(","));
    let (status, text, _) = post(&state, "/v1/score", huge, None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let text: Value = serde_json::from_slice(&text).expect("json error");
    assert_eq!(error_code(&text), "too_large");

    // The metrics count the cache.
    let (_, metrics, content_type) = call(
        &state,
        Request::get("/metrics")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    let metrics = String::from_utf8(metrics).expect("text");
    assert!(
        metrics.contains(&format!("risksense_score_cache_hits_total {n}")),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("risksense_score_cache_misses_total {n}")));
    assert!(metrics.contains("risksense_batch_latency_seconds_bucket"));
    assert!(content_type.starts_with("text/plain; version=0.0.4"));
    // Every stage timer, and OpenMetrics for a scraper that asks for it.
    for stage in [
        "decode",
        "score",
        "sinks",
        "checkpoint",
        "remote_sinks",
        "state",
        "poll",
    ] {
        let line = format!("risksense_stage_seconds_total{{stage=\"{stage}\"}} ");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    let (_, open, content_type) = call(
        &state,
        Request::get("/metrics")
            .header(
                "accept",
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
            )
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    let open = String::from_utf8(open).expect("text");
    assert!(content_type.starts_with("application/openmetrics-text"));
    assert!(open.contains(&format!("risksense_score_cache_hits_total {n}")));
    assert!(open.ends_with("# EOF\n"), "{open}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_is_read_only_limited_and_speaks_json_csv_and_arrow() {
    let Api { state, rows } = api(ApiConfig {
        sql_max_rows: 100,
        sql_timeout: Duration::from_millis(300),
        ..ApiConfig::default()
    })
    .await;
    let sql = |q: &str| json!({"sql": q}).to_string();

    let (status, body, _) = post(
        &state,
        "/v1/sql",
        sql("SELECT count(*) AS n, sum(CASE WHEN is_anomaly THEN 1 ELSE 0 END) AS a FROM scored"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["rows"][0]["n"], rows.len() as u64);
    assert_eq!(
        body["rows"][0]["a"],
        rows.iter().filter(|r| r.is_anomaly).count() as u64
    );
    assert_eq!(body["columns"], json!(["n", "a"]));

    // The row limit truncates and says so.
    let (_, body, _) = post(&state, "/v1/sql", sql("SELECT trans_num FROM scored"), None).await;
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["rows"].as_array().expect("rows").len(), 100);
    assert_eq!(body["truncated"], true);

    // CSV and Arrow IPC.
    let (status, body, content_type) = post(
        &state,
        "/v1/sql",
        json!({"sql": "SELECT trans_num, score FROM scored LIMIT 3", "format": "csv"}).to_string(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "text/csv");
    assert_eq!(String::from_utf8(body).expect("text").lines().count(), 4);
    let (status, body, content_type) = post(
        &state,
        "/v1/sql",
        json!({"sql": "SELECT trans_num, score FROM scored LIMIT 5", "format": "arrow"})
            .to_string(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "application/vnd.apache.arrow.stream");
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None).expect("ipc");
    let total: usize = reader.map(|b| b.expect("batch").num_rows()).sum();
    assert_eq!(total, 5);

    // Nothing but reads.
    for statement in [
        "DROP TABLE scored",
        "CREATE TABLE t AS SELECT 1",
        "INSERT INTO scored SELECT * FROM scored",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let (status, body, _) = post(&state, "/v1/sql", sql(statement), None).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{statement}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let (status, body, _) = post(&state, "/v1/sql", sql("SELECT nope FROM scored"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("nope"));

    // A query past the time limit is stopped.
    let slow = "SELECT count(*) FROM scored a, scored b, scored c WHERE a.amt + b.amt + c.amt > 0";
    let (status, body, _) = post(&state, "/v1/sql", sql(slow), None).await;
    assert_eq!(
        status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        String::from_utf8_lossy(&body)
    );

    // The archive is there as `history` (empty without one).
    let (status, body, _) = post(
        &state,
        "/v1/sql",
        sql("SELECT count(*) AS n FROM history"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["rows"][0]["n"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_health_and_the_openapi_document() {
    let Api { state, .. } = api(ApiConfig {
        token: Some("s3cret".to_string()),
        ..ApiConfig::default()
    })
    .await;
    let body = json!({"sql": "SELECT 1 AS one"}).to_string();
    let (status, text, _) = post(&state, "/v1/sql", body.clone(), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        error_code(&serde_json::from_slice(&text).expect("json")),
        "unauthorized"
    );
    let (status, _, _) = post(&state, "/v1/sql", body.clone(), Some("wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = post(&state, "/v1/sql", body, Some("s3cret")).await;
    assert_eq!(status, StatusCode::OK);
    // Lookups stay open.
    let (status, _) = get(&state, "/v1/anomalies?limit=1").await;
    assert_eq!(status, StatusCode::OK);

    let (status, _) = get(&state, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = get(&state, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The model in service, by id: its name and a hash of its files.
    let (status, models) = get(&state, "/v1/models").await;
    assert_eq!(status, StatusCode::OK, "{models}");
    let champion = &models["champion"];
    assert_eq!(champion["id"], state.models.api().load().id.as_str());
    assert!(
        champion["id"].as_str().is_some_and(|id| id
            .starts_with(&format!("{}@", state.models.api().load().card.name))
            && id.len() == state.models.api().load().card.name.len() + 13),
        "{champion}"
    );
    assert_eq!(
        champion["features"].as_array().map(Vec::len),
        Some(state.models.api().load().card.features.len())
    );
    assert!(
        champion["validation"]["pr_auc"].as_f64().is_some(),
        "{champion}"
    );
    let (status, doc) = get(&state, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/v1/transactions/{trans_num}",
        "/v1/cards/{cc_num}/transactions",
        "/v1/anomalies",
        "/v1/score",
        "/v1/sql",
        "/v1/models",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    // Query-string parameters are declared as such, and every operation documents the
    // errors any request can meet, in the one error shape.
    let parameters = doc["paths"]["/v1/anomalies"]["get"]["parameters"]
        .as_array()
        .expect("parameters");
    for name in ["since", "limit", "min_score"] {
        let parameter = parameters
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not declared"));
        assert_eq!(parameter["in"], "query", "{name}");
    }
    for (path, method) in [("/v1/anomalies", "get"), ("/v1/sql", "post")] {
        for status in ["405", "414", "503"] {
            let response = &doc["paths"][path][method]["responses"][status];
            assert!(
                response["content"]["application/json"]["schema"]["$ref"]
                    .as_str()
                    .is_some_and(|r| r.ends_with("ErrorBody")),
                "{method} {path} {status}: {response}"
            );
        }
    }
    assert!(doc["paths"]["/v1/sql"]["post"]["responses"]["429"].is_object());
    let (status, page, content_type) = call(
        &state,
        Request::get("/").body(Body::empty()).expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/html"));
    assert!(String::from_utf8_lossy(&page).contains("/assets/chart.umd.min.js"));
    let (status, script, _) = call(
        &state,
        Request::get("/assets/chart.umd.min.js")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(script.len() > 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_went_away_is_a_503_not_a_500() {
    let (mut redis, state) = support::private_redis_api().await;
    let (status, _) = get(&state, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    let _ = redis.kill();
    let _ = redis.wait();
    let (status, body) = get(&state, "/v1/transactions/abc").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(error_code(&body), "unavailable");
    let (status, _) = get(&state, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_the_json_error_shape() {
    let Api { state, .. } = api(ApiConfig {
        body_limit: 64 * 1024,
        ..ApiConfig::default()
    })
    .await;
    let long_uri = format!("/v1/anomalies?since={}", "9".repeat(16 * 1024));
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            getr("/v1/anomalies?limit=-1"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            getr("/v1/anomalies?limit=abc"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            getr("/v1/anomalies?min_score="),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            getr("/v1/anomalies?limit=1&limit=2"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            getr("/v1/cards/12/transactions?limit=x"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            getr("/v1/transactions/%FF%FE"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (getr("/v1/nothing/here"), StatusCode::NOT_FOUND, "not_found"),
        (
            Request::delete("/v1/anomalies")
                .body(Body::empty())
                .expect("request"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Request::post("/healthz")
                .body(Body::empty())
                .expect("request"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (getr(&long_uri), StatusCode::URI_TOO_LONG, "uri_too_long"),
        (
            Request::post("/v1/sql")
                .header("content-type", "application/json")
                .header("content-length", "1000000")
                .body(Body::from(vec![b' '; 1_000_000]))
                .expect("request"),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            Request::post("/v1/score")
                .body(Body::from(vec![b'['; 100_000]))
                .expect("request"),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
    ];
    for (request, expected, code) in cases {
        let what = format!("{} {}", request.method(), request.uri());
        let what = what.chars().take(80).collect::<String>();
        let (status, body, content_type) = call(&state, request).await;
        assert_eq!(
            status,
            expected,
            "{what}: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            content_type.starts_with("application/json"),
            "{what}: {content_type}"
        );
        let body: Value = serde_json::from_slice(&body).expect("a JSON body");
        assert_eq!(error_code(&body), code, "{what}: {body}");
        assert!(
            !body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{what}: {body}"
        );
    }
    // 405 says what is allowed.
    let response = router(state.clone())
        .oneshot(
            Request::delete("/v1/anomalies")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert!(response.headers().get("allow").is_some());
}

fn getr(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("request")
}

fn chain(terms: usize, op: &str) -> String {
    let mut sql = String::from("SELECT 1");
    for _ in 1..terms {
        sql.push_str(op);
        sql.push('1');
    }
    sql
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_and_wide_queries_cannot_crash_or_bloat_the_process() {
    let Api { state, .. } = api(ApiConfig {
        body_limit: 4 * 1024 * 1024,
        sql_max_rows: 1_000_000,
        sql_max_bytes: 2 * 1024 * 1024,
        sql_limits: risksense_api::sql::guard::Limits {
            max_text_bytes: 1024 * 1024,
            ..Default::default()
        },
        ..ApiConfig::default()
    })
    .await;
    // 1,000 terms: within the depth limit, planned on the pool's big stacks, answered.
    let (status, body, _) = post(
        &state,
        "/v1/sql",
        json!({"sql": format!("{} AS n", chain(1_000, "+"))}).to_string(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["rows"][0]["n"], 1000);
    // Chains too deep for the limit, of every operator, are refused before planning.
    for (terms, op) in [
        (100_000, "+"),
        (5_000, " AND "),
        (5_000, " OR "),
        (5_000, " || "),
    ] {
        let sql = if op == " || " {
            chain(terms, op).replace('1', "'a'")
        } else {
            chain(terms, op)
        };
        let (status, body, _) =
            post(&state, "/v1/sql", json!({"sql": sql}).to_string(), None).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{op}: {}",
            String::from_utf8_lossy(&body)
        );
        // `||` chains meet their own, lower limit first.
        let why = if op == " || " {
            "concatenations"
        } else {
            "deep"
        };
        assert!(String::from_utf8_lossy(&body).contains(why), "{op}");
    }
    // Nested parentheses hit the parser's own recursion limit: a 400 too.
    let nested = format!("SELECT {}1{}", "(".repeat(100_000), ")".repeat(100_000));
    let (status, _, _) = post(&state, "/v1/sql", json!({"sql": nested}).to_string(), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Functions that build values far larger than their arguments are refused before
    // they allocate; ordinary uses still work.
    for sql in [
        "SELECT length(repeat('x', 2000000000)) AS n",
        "SELECT length(repeat(trans_num, 100000000)) AS n FROM scored",
        "SELECT length(lpad('a', 1000000000)) AS n",
        "SELECT cardinality(range(1, 2000000000)) AS n",
        "SELECT cardinality(array_repeat(1, 1000000000)) AS n",
        // Each call under the limit, the nested result far past it.
        "SELECT cardinality(array_repeat(array_repeat(1, 8000000), 250)) AS n",
    ]
    .into_iter()
    .map(str::to_string)
    // Fifty constant calls of 60 MB: each under the limit, together past it.
    .chain(std::iter::once(format!(
        "SELECT {}",
        (0..50)
            .map(|i| format!("length(repeat('a', 60000000)) AS a{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))) {
        let started = std::time::Instant::now();
        let (status, body, _) =
            post(&state, "/v1/sql", json!({ "sql": sql }).to_string(), None).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{sql}: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(String::from_utf8_lossy(&body).contains("at most"), "{sql}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{sql}: {:?}",
            started.elapsed()
        );
    }
    let (status, body, _) = post(
        &state,
        "/v1/sql",
        json!({"sql": "SELECT repeat('ab', 3) AS r, lpad('7', 3, '0') AS p, cardinality(range(1, 11)) AS n"}).to_string(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["rows"][0]["r"], "ababab");
    assert_eq!(body["rows"][0]["p"], "007");
    assert_eq!(body["rows"][0]["n"], 10);
    // A wide result is cut at the byte limit, not at the row limit.
    let wide = "SELECT value, repeat('x', 10000) AS pad FROM generate_series(1, 100000)";
    for format in ["json", "csv", "arrow"] {
        let (status, body, _) = post(
            &state,
            "/v1/sql",
            json!({"sql": wide, "format": format}).to_string(),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{format}");
        assert!(
            body.len() < 3 * 1024 * 1024,
            "{format}: {} bytes",
            body.len()
        );
        assert!(body.len() > 1024 * 1024, "{format}: {} bytes", body.len());
        if format == "json" {
            let body: Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(body["truncated"], true);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_store_fails_readiness_and_lookups_fast() {
    let (mut redis, state) = support::private_redis_api().await;
    let (status, _) = get(&state, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    // Frozen, not gone: the connection stays open and nothing answers.
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &redis.id().to_string()])
        .status()
        .expect("kill -STOP");
    assert!(stopped.success());
    for uri in [
        "/readyz",
        "/v1/transactions/abc",
        "/v1/anomalies",
        "/v1/cards/1/transactions",
    ] {
        let started = std::time::Instant::now();
        let (status, body) = get(&state, uri).await;
        let took = started.elapsed();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}: {body}");
        assert_eq!(error_code(&body), "unavailable", "{uri}");
        assert!(took < Duration::from_millis(1_500), "{uri} took {took:?}");
    }
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &redis.id().to_string()])
        .status();
    let (status, _) = get(&state, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    let _ = redis.kill();
    let _ = redis.wait();
}

/// The dashboard's histogram is of what alerts: the live window's alert scores against the
/// champion's alert threshold (the card rule's, not the row score's), the threshold an
/// edge, and the buckets from it up holding exactly the alerting rows.
#[tokio::test]
async fn the_stats_histogram_counts_alert_scores_against_the_alert_threshold() {
    let Api { state, rows } = api(ApiConfig::default()).await;
    let card = &support::model().card;
    assert!(
        card.card_scores.is_some() && card.alert_threshold() != card.threshold,
        "the default model has the card rule, so the two thresholds differ"
    );
    let (status, stats) = get(&state, "/v1/stats").await;
    assert_eq!(status, StatusCode::OK);
    let threshold = stats["threshold"].as_f64().expect("threshold");
    assert_eq!(threshold, card.alert_threshold());
    let edges: Vec<f64> = serde_json::from_value(stats["histogram_edges"].clone()).expect("edges");
    let counts: Vec<u64> =
        serde_json::from_value(stats["histogram_counts"].clone()).expect("counts");
    assert_eq!((edges.len(), counts.len()), (30, 30));
    assert_eq!(edges[15], threshold);
    assert_eq!(counts.iter().sum::<u64>(), rows.len() as u64);
    assert_eq!(stats["live_rows"], rows.len() as u64);
    let alerting: u64 = edges
        .iter()
        .zip(&counts)
        .filter(|(edge, _)| **edge >= threshold)
        .map(|(_, n)| n)
        .sum();
    let flagged = rows.iter().filter(|r| r.is_anomaly).count() as u64;
    assert!(flagged > 0, "the fixture has alerts");
    assert_eq!(alerting, flagged);
}
