//! One suite run against both result stores, the real Redis (`scripts/services.sh up`) and
//! the in-process one: what the API reads back must not depend on which one it is.

use std::time::Duration;

use risksense_store::{ResultStore, Retention, ScoredTransaction};

/// The test Redis, failing loudly when it is not there (these tests never skip).
fn redis_url() -> String {
    let url = std::env::var("RISKSENSE_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_string());
    let address = url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        std::net::TcpStream::connect(&address).is_ok(),
        "Redis is not reachable at {address}: start it with `scripts/services.sh up`"
    );
    url
}

/// A row `secs` after 2019-01-01 00:00:00 (under an hour), its time text and seconds
/// agreeing (Redis keeps the text and derives the seconds).
fn row(trans_num: &str, card: i64, secs: i64, score: f64, anomaly: bool) -> ScoredTransaction {
    ScoredTransaction {
        trans_num: trans_num.to_string(),
        cc_num: card,
        event_time: format!("2019-01-01 00:{:02}:{:02}", secs / 60, secs % 60),
        event_secs: 1_546_300_800 + secs,
        category: "misc_net".to_string(),
        merchant: "m".to_string(),
        amt: 12.5,
        score,
        is_anomaly: anomaly,
        explanation: anomaly.then(|| "log_amt".to_string()),
        is_fraud: Some(0),
    }
}

async fn conforms(store: ResultStore) {
    // Writes and reads back: by transaction, by card (newest first), anomalies, alerts.
    let rows = vec![
        row("t1", 7, 100, 0.5, false),
        row("t2", 7, 200, 3.0, true),
        row("t3", 8, 150, 2.5, true),
    ];
    let outcome = store.write(&rows).await.expect("write");
    assert_eq!(
        (outcome.rows, outcome.anomalies, outcome.new_alerts),
        (3, 2, 2)
    );
    // Idempotent: a replay alerts nothing again.
    let again = store.write(&rows).await.expect("write again");
    assert_eq!(again.new_alerts, 0);
    assert_eq!(
        store.transaction("t2").await.expect("get"),
        Some(rows[1].clone())
    );
    assert_eq!(store.transaction("nope").await.expect("get"), None);
    let card: Vec<String> = store
        .card_transactions(7, 10)
        .await
        .expect("card")
        .into_iter()
        .map(|r| r.trans_num)
        .collect();
    assert_eq!(card, vec!["t2", "t1"]);
    let anomalies: Vec<String> = store
        .anomalies(None, 10, None)
        .await
        .expect("anomalies")
        .into_iter()
        .map(|r| r.trans_num)
        .collect();
    assert_eq!(anomalies, vec!["t2", "t3"]);
    assert_eq!(store.alerts(10).await.expect("alerts").len(), 2);

    // The score cache keeps an answer for its TTL, then forgets it.
    let entries = vec![("h1".to_string(), "{\"score\":1.0}".to_string())];
    store.cache_put(&entries, 1).await.expect("put");
    let keys = vec!["h1".to_string(), "h2".to_string()];
    assert_eq!(
        store.cache_get(&keys).await.expect("get"),
        vec![Some("{\"score\":1.0}".to_string()), None]
    );
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(store.cache_get(&keys).await.expect("get"), vec![None, None]);
}

fn retention() -> Retention {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Retention {
        prefix: format!("conformance-{}-{stamp}", std::process::id()),
        ..Retention::default()
    }
}

#[tokio::test]
async fn redis_conforms() {
    let store = ResultStore::redis(&redis_url(), retention())
        .await
        .expect("redis");
    conforms(store).await;
}

#[tokio::test]
async fn the_in_process_store_conforms() {
    conforms(ResultStore::memory(retention())).await;
}
