//! The dashboard in headless Chromium: `risksense demo` against the real broker and Redis,
//! driven by tests/browser/dashboard.mjs (playwright-core): alerts, SQL, lookups, and live
//! queries (a standing query created from the page streams its rows into the live table;
//! a windowed one draws its chart). Needs Kafka, Redis, Node and
//! Debian's chromium (`scripts/services.sh install`; `scripts/test.sh` sets all of it up);
//! fails loudly without them.

#[path = "../engine/tests/common.rs"]
mod common;
mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn the_dashboard_shows_live_alerts_answers_sql_and_streams_live_queries() {
    let brokers = common::kafka_brokers();
    let redis = common::redis_url();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = repo.join("tests/browser/dashboard.mjs");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_string());
    assert!(
        PathBuf::from(&chromium).exists(),
        "no Chromium at {chromium}: install Debian's `chromium` (scripts/services.sh install)"
    );
    assert!(
        repo.join("tests/browser/node_modules/playwright-core")
            .is_dir(),
        "playwright-core is not installed: run `npm ci --prefix tests/browser` (scripts/test.sh does)"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let topic = common::unique_topic("dashboard");
    let archive = std::env::temp_dir().join(&topic);
    let mut demo = support::KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_risksense"))
            .args([
                "demo",
                "--kafka",
                &brokers,
                "--redis",
                &redis,
                "--prefix",
                &topic,
                "--topic",
                &topic,
                "--rate",
                "3000",
                "--http",
                &format!("127.0.0.1:{port}"),
                "--archive",
                archive.to_str().expect("path"),
                "--duration",
                "240",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("risksense demo starts"),
    );
    let stdout = demo.0.stdout.take().expect("stdout");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut ready = Some(ready_tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("Dashboard:")
                && let Some(tx) = ready.take()
            {
                let _ = tx.send(line);
            }
        }
    });
    let line = ready_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the demo printed its dashboard URL");
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");

    let output = Command::new("node")
        .arg(&script)
        .arg(format!("http://127.0.0.1:{port}/"))
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node runs (install Node.js)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "browser test failed:\n{text}");
    eprintln!("{text}");
    let _ = std::fs::remove_dir_all(&archive);
}
