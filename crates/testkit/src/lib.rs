//! Test support shared by the integration tests of several crates (a dev-dependency only).
//!
//! The test Redis is named by `RISKSENSE_REDIS_URL` (one server, `redis://…`, or a cluster,
//! `redis+cluster://…`), the test cluster by `RISKSENSE_REDIS_CLUSTER_URL`. Both fail the
//! test loudly when nothing answers: these tests never skip. [`Probe`] reads back what the
//! engine wrote, through either, by the key layout of `risksense_store::layout`.

mod models;
mod probe;
mod scratch;

pub use models::{model_variant, test_registry};
pub use probe::Probe;
pub use scratch::Scratch;

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The test cluster started by `scripts/services.sh up`.
pub const DEFAULT_CLUSTER_URL: &str =
    "redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003/";

/// The test Redis (`RISKSENSE_REDIS_URL`, default the single Redis on 6379).
pub fn redis_url() -> String {
    let url = std::env::var("RISKSENSE_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_string());
    assert_reachable(&url, "RISKSENSE_REDIS_URL");
    url
}

/// The test Redis Cluster (`RISKSENSE_REDIS_CLUSTER_URL`, default the three shards on
/// 7001–7003).
pub fn redis_cluster_url() -> String {
    let url = std::env::var("RISKSENSE_REDIS_CLUSTER_URL")
        .unwrap_or_else(|_| DEFAULT_CLUSTER_URL.to_string());
    assert!(
        risksense_store::cluster_nodes(&url).is_some(),
        "RISKSENSE_REDIS_CLUSTER_URL={url} does not name a cluster (redis+cluster://host:port,…)"
    );
    assert_reachable(&url, "RISKSENSE_REDIS_CLUSTER_URL");
    url
}

/// Whether the test Redis is a cluster.
pub fn is_cluster(url: &str) -> bool {
    risksense_store::cluster_nodes(url).is_some()
}

/// The `host:port` of every node `url` names.
pub fn addresses(url: &str) -> Vec<String> {
    let urls = risksense_store::cluster_nodes(url).unwrap_or_else(|| vec![url.to_string()]);
    urls.iter()
        .map(|u| {
            let rest = u.split_once("://").map_or(u.as_str(), |(_, rest)| rest);
            let authority = rest.split('/').next().unwrap_or_default();
            authority.rsplit('@').next().unwrap_or_default().to_string()
        })
        .collect()
}

fn assert_reachable(url: &str, variable: &str) {
    for address in addresses(url) {
        let reachable = address
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(3)).is_ok());
        assert!(
            reachable,
            "Redis is not reachable at {address}: these tests need a real Redis (and a \
             three-shard Redis Cluster). Start them with `scripts/services.sh up` (or run \
             `scripts/test.sh`), or point {variable} at yours."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_from_single_and_cluster_urls() {
        assert_eq!(addresses("redis://127.0.0.1:6379/"), ["127.0.0.1:6379"]);
        assert_eq!(addresses("redis://u:p@h:1/0"), ["h:1"]);
        assert_eq!(
            addresses("redis+cluster://u:p@a:1,b:2/"),
            ["a:1".to_string(), "b:2".to_string()]
        );
        assert!(is_cluster(DEFAULT_CLUSTER_URL));
        assert!(!is_cluster("redis://a:1/"));
    }
}
