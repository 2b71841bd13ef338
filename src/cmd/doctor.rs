use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Kafka bootstrap server to check.
    #[arg(
        long,
        env = "RISKSENSE_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// Redis URL to check.
    #[arg(
        long,
        env = "RISKSENSE_REDIS",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis: String,
}

fn reachable(address: &str) -> bool {
    address
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut healthy = true;
    match risksense_udfs::onnx_runtime::build_info() {
        Ok(build) => {
            let info = risksense_udfs::onnx_runtime::init()?;
            println!(
                "onnxruntime  ok    {} ({})",
                info.library.display(),
                first_words(&build)
            );
        }
        Err(error) => {
            healthy = false;
            println!("onnxruntime  MISSING  {error}");
        }
    }
    let broker = args.brokers.split(',').next().unwrap_or_default();
    let kafka_ok = reachable(broker);
    healthy &= kafka_ok;
    println!(
        "kafka        {}  {broker}{}",
        if kafka_ok { "ok   " } else { "DOWN " },
        if kafka_ok {
            ""
        } else {
            "  (start it with scripts/services.sh up)"
        }
    );
    let redis_address = args
        .redis
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let redis_ok = reachable(&redis_address);
    healthy &= redis_ok;
    println!(
        "redis        {}  {redis_address}{}",
        if redis_ok { "ok   " } else { "DOWN " },
        if redis_ok {
            ""
        } else {
            "  (start it with scripts/services.sh up)"
        }
    );
    if !healthy {
        anyhow::bail!("some services are not available (the demo runs without them)");
    }
    Ok(())
}

fn first_words(text: &str) -> String {
    text.split(',').take(2).collect::<Vec<_>>().join(",")
}
