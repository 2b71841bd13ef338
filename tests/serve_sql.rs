//! `risksense serve` over the archive, queried by `risksense sql --url`: the shell-like
//! client of a running service. Needs Redis (`scripts/services.sh up`).

#[path = "../engine/tests/common.rs"]
mod common;
mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

fn risksense(args: &[&str]) -> std::process::Output {
    support::risksense_in(support::repo(), args)
}

#[test]
fn sql_against_a_running_service_reads_its_archive() {
    let redis = common::redis_url();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fixture = repo.join("data/fixtures/sparkov-2019h1-head3000.csv");
    let name = common::unique_topic("serve");
    let archive = std::env::temp_dir().join(&name);
    let output = risksense(&[
        "rescore",
        "--input",
        fixture.to_str().expect("path"),
        "--out",
        archive.to_str().expect("path"),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let _server = support::KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_risksense"))
            .args([
                "serve",
                "--redis",
                &redis,
                "--prefix",
                &name,
                "--archive",
                archive.to_str().expect("path"),
                "--http",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("risksense serve starts"),
    );
    let mut up = false;
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(up, "risksense serve did not listen on {port}");
    let url = format!("http://127.0.0.1:{port}");

    let output = risksense(&[
        "sql",
        "--url",
        &url,
        "--format",
        "csv",
        "SELECT count(*) AS n, sum(CASE WHEN is_anomaly THEN 1 ELSE 0 END) AS anomalies FROM history",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let values: Vec<i64> = stdout
        .lines()
        .nth(1)
        .expect("a result row")
        .split(',')
        .map(|v| v.trim().parse().expect("number"))
        .collect();
    assert_eq!(values[0], 3000);
    assert!(values[1] > 0);

    // The table format, like a SQL shell.
    let output = risksense(&[
        "sql",
        "--url",
        &url,
        "SELECT category, count(*) AS n FROM history GROUP BY category",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(
        stdout.contains("| category") && stdout.contains("+-"),
        "{stdout}"
    );

    // Writes are refused, with the service's reason.
    let output = risksense(&["sql", "--url", &url, "DROP TABLE history"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("400") && stderr.contains("DDL"), "{stderr}");
    let _ = std::fs::remove_dir_all(&archive);
}

/// `sql --url https://…` speaks TLS and checks the server's certificate: against a local
/// TLS server with a self-signed certificate (OpenSSL's `s_server`), the client fails the
/// handshake on the certificate, not on an unsupported scheme.
#[test]
fn sql_over_https_speaks_tls_and_checks_the_certificate() {
    let dir = std::env::temp_dir().join(common::unique_topic("tls"));
    std::fs::create_dir_all(&dir).expect("scratch");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed (scripts/services.sh test-tools)");
    assert!(made.success(), "openssl made no certificate");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let _server = support::KillOnDrop(
        Command::new("openssl")
            .args(["s_server", "-www", "-accept", &port.to_string(), "-cert"])
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server starts"),
    );
    let mut up = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(up, "the TLS server did not start");
    let url = format!("https://127.0.0.1:{port}");
    let output = risksense(&["sql", "--url", &url, "SELECT 1"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.to_lowercase().contains("certificate"),
        "the handshake must fail on the self-signed certificate: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
