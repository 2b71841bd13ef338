//! `risksense healthcheck`: asks a running service's `/healthz` (or `/readyz`) and exits
//! non-zero unless it answers 2xx. The container image's HEALTHCHECK runs it: Debian slim
//! has no curl, and the binary already carries an HTTP client.

use std::time::Duration;

use anyhow::{Context, bail};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The service: a URL, or the address it listens on (a wildcard such as 0.0.0.0:8080 is
    /// asked on loopback).
    #[arg(long, env = "RISKSENSE_HTTP", default_value = "127.0.0.1:8080")]
    pub http: String,
    /// Ask /readyz (the result store answers too) instead of /healthz (the process serves).
    #[arg(long)]
    pub ready: bool,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3.0)]
    pub timeout: f64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let url = probe_url(&args.http, if args.ready { "/readyz" } else { "/healthz" });
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .with_context(|| format!("--timeout {} is not a duration", args.timeout))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        // A loopback probe never goes through an HTTP_PROXY the environment sets.
        .proxy(None)
        .build()
        .into();
    let response = agent
        .get(&url)
        .call()
        .with_context(|| format!("asking {url}"))?;
    let status = response.status();
    if !status.is_success() {
        bail!("{url} answered {status}");
    }
    println!("{url}: {status}");
    Ok(())
}

/// The probe's URL for a service address as `RISKSENSE_HTTP` gives it.
fn probe_url(address: &str, path: &str) -> String {
    let address = address.trim().trim_end_matches('/');
    if address.starts_with("http://") || address.starts_with("https://") {
        return format!("{address}{path}");
    }
    let address = match address.rsplit_once(':') {
        Some(("0.0.0.0" | "", port)) => format!("127.0.0.1:{port}"),
        Some(("[::]", port)) => format!("[::1]:{port}"),
        _ => address.to_string(),
    };
    format!("http://{address}{path}")
}

#[cfg(test)]
mod tests {
    use super::probe_url;

    #[test]
    fn a_listen_address_becomes_a_probe_url() {
        assert_eq!(
            probe_url("0.0.0.0:8080", "/healthz"),
            "http://127.0.0.1:8080/healthz"
        );
        assert_eq!(
            probe_url(":9000", "/healthz"),
            "http://127.0.0.1:9000/healthz"
        );
        assert_eq!(
            probe_url("[::]:8080", "/readyz"),
            "http://[::1]:8080/readyz"
        );
        assert_eq!(
            probe_url("10.0.0.0:8080", "/healthz"),
            "http://10.0.0.0:8080/healthz"
        );
        assert_eq!(
            probe_url("http://api.internal:80/", "/healthz"),
            "http://api.internal:80/healthz"
        );
    }
}
