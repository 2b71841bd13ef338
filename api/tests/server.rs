//! The API served on a real socket (the server loop, not `oneshot`), against the real
//! Redis: slow clients are cut off, and heavy SQL cannot starve health checks or lookups.

#[path = "../../engine/tests/common.rs"]
mod common;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use risksense_api::ApiConfig;
use risksense_api::pool::PoolConfig;
use risksense_api::server::ConnectionLimits;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Serves `state` on a free port until the test ends.
async fn serve(state: Arc<risksense_api::ApiState>) -> SocketAddr {
    let (listener, address) = risksense_api::bind("127.0.0.1:0").await.expect("bind");
    tokio::spawn(risksense_api::serve(
        listener,
        state,
        std::future::pending(),
    ));
    address
}

/// One request on its own connection; (status, headers, body).
async fn request(address: SocketAddr, raw: &str) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(raw.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, head, answer[split + 4..].to_vec())
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
}

fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// CPU seconds used so far by the threads named `name` in this process.
fn cpu_of_threads(name: &str) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task")
        .expect("proc")
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the command's closing parenthesis: utime and stime are the 12th and
        // 13th of them.
        let after = stat.rsplit(')').next().unwrap_or_default();
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.len() > 12 {
            total +=
                fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
        }
    }
    total as f64 / ticks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let support::Api { state, .. } = support::api(ApiConfig {
        body_timeout: Duration::from_secs(1),
        connections: ConnectionLimits {
            header_read_timeout: Duration::from_secs(1),
            ..ConnectionLimits::default()
        },
        ..ApiConfig::default()
    })
    .await;
    let address = serve(state).await;

    // Half the headers, then nothing: the connection is closed within the header timeout.
    let started = Instant::now();
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Half: ")
        .await
        .expect("send");
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buffer)).await;
    assert!(read.is_ok(), "the connection was held for 10 s");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // A body announced and never sent: a JSON 408 within the body timeout.
    let started = Instant::now();
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream
        .write_all(
            b"POST /v1/sql HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"sql\"",
        )
        .await
        .expect("send");
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("answered before 10 s")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"timeout\""), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // A body larger than announced limits is refused before it is read.
    let (status, _, body) = request(
        address,
        "POST /v1/sql HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 999999999\r\n\r\n",
    )
    .await;
    assert_eq!(status, 413);
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["error"]["code"], "too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_queries_do_not_starve_health_or_lookups_and_stop_at_their_deadline() {
    let pool_threads = "sql-isolation";
    let support::Api { state, rows } = support::api(ApiConfig {
        sql_timeout: Duration::from_secs(4),
        pool: PoolConfig {
            max_concurrent: 4,
            thread_name: pool_threads.to_string(),
            ..PoolConfig::default()
        },
        ..ApiConfig::default()
    })
    .await;
    let address = serve(state).await;
    let heavy = [
        "SELECT sum(a.value * b.value) AS s FROM generate_series(1, 1000000) a CROSS JOIN generate_series(1, 100000000) b",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
        "SELECT count(*) FROM scored a, scored b, scored c WHERE a.amt * b.amt * c.amt > -1",
        "SELECT max(a.value + b.value) FROM generate_series(1, 1000000) a, generate_series(1, 100000000) b WHERE a.value <> b.value",
    ];
    let started = Instant::now();
    let queries: Vec<_> = heavy
        .iter()
        .map(|sql| {
            let raw = post("/v1/sql", &json!({ "sql": sql }).to_string());
            tokio::spawn(async move { request(address, &raw).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A fifth is refused at once, with a retry hint.
    let (status, head, body) = request(address, &post("/v1/sql", r#"{"sql": "SELECT 1"}"#)).await;
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(&body));
    assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");

    // Health and a lookup answer meanwhile.
    let mut latencies = Vec::new();
    while started.elapsed() < Duration::from_millis(3_300) {
        let sent = Instant::now();
        let (status, _, _) = request(address, &get("/healthz")).await;
        latencies.push(sent.elapsed());
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, _, body) = request(
        address,
        &get(&format!("/v1/transactions/{}", rows[0].trans_num)),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    assert!(
        latencies.len() >= 50,
        "only {} health checks",
        latencies.len()
    );
    assert!(
        p99 < Duration::from_millis(50),
        "healthz p99 {p99:?} under four heavy queries"
    );

    // Each heavy query is cancelled at its deadline with a 504.
    for query in queries {
        let (status, _, body) = query.await.expect("query task");
        assert_eq!(status, 504, "{}", String::from_utf8_lossy(&body));
    }
    // And its CPU is free within a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cpu_of_threads(pool_threads);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_of_threads(pool_threads) - before;
    assert!(
        used < 0.1,
        "the pool still used {used:.2} s of CPU a second after the deadline"
    );
    // The pool takes queries again.
    let (status, _, body) =
        request(address, &post("/v1/sql", r#"{"sql": "SELECT 1 AS one"}"#)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_nobody_reads_holds_its_slot_only_until_the_write_timeout() {
    let support::Api { state, .. } = support::api(ApiConfig {
        pool: PoolConfig {
            max_concurrent: 1,
            thread_name: "sql-unread".to_string(),
            ..PoolConfig::default()
        },
        connections: ConnectionLimits {
            write_timeout: Duration::from_secs(1),
            ..ConnectionLimits::default()
        },
        ..ApiConfig::default()
    })
    .await;
    let address = serve(state).await;
    // About 20 MB of answer, more than the socket buffers take: the client never reads.
    let big = json!({"sql": "SELECT repeat('x', 1000) AS pad FROM generate_series(1, 20000)"});
    let mut reader_that_never_reads = TcpStream::connect(address).await.expect("connect");
    reader_that_never_reads
        .write_all(post("/v1/sql", &big.to_string()).as_bytes())
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Its answer still holds the only slot.
    let (status, _, _) = request(address, &post("/v1/sql", r#"{"sql": "SELECT 1"}"#)).await;
    assert_eq!(status, 429);
    // Past the write timeout the connection is cut and the slot freed.
    let started = Instant::now();
    loop {
        let (status, _, _) = request(address, &post("/v1/sql", r#"{"sql": "SELECT 1"}"#)).await;
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the slot was not freed: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(reader_that_never_reads);
}
