//! One Redis or a Redis Cluster, behind one connection type.
//!
//! `redis://…` (or `rediss://…`) is one Redis; `redis+cluster://host:port,host:port/` (or
//! `rediss+cluster://…`) names a cluster by some of its nodes (the rest are discovered).
//! Both take `user:password@` before the first host.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A multiplexed connection that reconnects by itself (to one Redis, or to every node of a
/// cluster, following its slots as they move).
#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// What a URL names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Single(String),
    /// The nodes' URLs (`redis://[user:password@]host:port/`).
    Cluster(Vec<String>),
}

/// Reads `url`: a cluster's scheme ends in `+cluster`, and its hosts are separated by commas.
pub(crate) fn target(url: &str) -> Target {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Target::Single(url.to_string());
    };
    let Some(scheme) = scheme.strip_suffix("+cluster") else {
        return Target::Single(url.to_string());
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (user_info, hosts) = match authority.rsplit_once('@') {
        Some((user_info, hosts)) => (format!("{user_info}@"), hosts),
        None => (String::new(), authority),
    };
    Target::Cluster(
        hosts
            .split(',')
            .filter(|host| !host.is_empty())
            .map(|host| format!("{scheme}://{user_info}{host}/"))
            .collect(),
    )
}

/// The nodes' URLs when `url` names a Redis Cluster (`redis+cluster://…`), else `None`.
pub fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    match target(url) {
        Target::Single(_) => None,
        Target::Cluster(nodes) => Some(nodes),
    }
}

impl Connection {
    pub async fn open(url: &str) -> redis::RedisResult<Self> {
        match target(url) {
            Target::Single(url) => {
                let client = redis::Client::open(url)?;
                // Reconnects by itself after Redis restarts; callers retry failed writes.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(10)))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                Ok(Self::Single(
                    ConnectionManager::new_with_config(client, config).await?,
                ))
            }
            Target::Cluster(nodes) => {
                let client = redis::cluster::ClusterClientBuilder::new(nodes)
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(Duration::from_secs(10))
                    .retries(4)
                    .max_retry_wait(1000)
                    .build()?;
                Ok(Self::Cluster(client.get_async_connection().await?))
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// The primaries' addresses (one Redis: none), for commands every node must answer
    /// for its own keys (`SCAN`).
    pub async fn primaries(&mut self) -> redis::RedisResult<Vec<(String, u16)>> {
        let Self::Cluster(connection) = self else {
            return Ok(Vec::new());
        };
        let slots = connection
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        // [[start, end, [host, port, id, …], replicas…], …]
        let ranges: Vec<Vec<Value>> = redis::from_redis_value(slots)?;
        let mut primaries = Vec::new();
        for range in ranges {
            if let Some(primary) = range.into_iter().nth(2) {
                let node: Vec<Value> = redis::from_redis_value(primary)?;
                let mut node = node.into_iter();
                if let (Some(host), Some(port)) = (node.next(), node.next()) {
                    let address = (
                        redis::from_redis_value::<String>(host)?,
                        redis::from_redis_value::<u16>(port)?,
                    );
                    if !primaries.contains(&address) {
                        primaries.push(address);
                    }
                }
            }
        }
        Ok(primaries)
    }

    /// Runs `cmd` on the node at `address` (a cluster's), or on the one Redis.
    pub async fn on_node(
        &mut self,
        cmd: &Cmd,
        address: Option<&(String, u16)>,
    ) -> redis::RedisResult<Value> {
        match (self, address) {
            (Self::Cluster(connection), Some((host, port))) => {
                connection
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        }),
                    )
                    .await
            }
            (connection, _) => cmd.query_async(connection).await,
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_their_nodes() {
        assert_eq!(
            target("redis://127.0.0.1:6379/0"),
            Target::Single("redis://127.0.0.1:6379/0".to_string())
        );
        assert_eq!(
            target("redis+cluster://127.0.0.1:7001,127.0.0.1:7002/"),
            Target::Cluster(vec![
                "redis://127.0.0.1:7001/".to_string(),
                "redis://127.0.0.1:7002/".to_string()
            ])
        );
        assert_eq!(
            target("rediss+cluster://u:p@a:1,b:2"),
            Target::Cluster(vec![
                "rediss://u:p@a:1/".to_string(),
                "rediss://u:p@b:2/".to_string()
            ])
        );
    }
}
