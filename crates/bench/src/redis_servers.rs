//! The Redis servers a benchmark writes to — one Redis, or every primary of a cluster —
//! read around each measurement: CPU used, command statistics, AOF rewrites.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

/// Calls and microseconds of one command, summed over the servers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct CommandStat {
    pub(crate) calls: u64,
    pub(crate) usec: u64,
}

/// One connection per server (a cluster's primaries, found with `CLUSTER NODES`).
pub(crate) struct RedisServers {
    servers: Vec<(String, redis::Connection)>,
}

impl RedisServers {
    pub(crate) fn connect(url: &str) -> anyhow::Result<Self> {
        let open = |url: &str| {
            redis::Client::open(url)
                .and_then(|client| client.get_connection())
                .with_context(|| format!("connecting to Redis at {url}"))
        };
        let Some(nodes) = risksense_store::cluster_nodes(url) else {
            return Ok(Self {
                servers: vec![(url.to_string(), open(url)?)],
            });
        };
        let first = nodes.first().context("a cluster URL without nodes")?;
        let mut seed = open(first)?;
        let listing: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut seed)
            .with_context(|| format!("CLUSTER NODES at {first}"))?;
        // The seed's scheme and credentials, with each primary's address.
        let (scheme, rest) = first.split_once("://").unwrap_or(("redis", first));
        let user_info = rest
            .split('/')
            .next()
            .and_then(|authority| authority.rsplit_once('@'))
            .map_or(String::new(), |(user_info, _)| format!("{user_info}@"));
        let mut servers = Vec::new();
        for address in primaries(&listing) {
            let url = format!("{scheme}://{user_info}{address}/");
            let connection = open(&url)?;
            servers.push((url, connection));
        }
        anyhow::ensure!(!servers.is_empty(), "{first} lists no primaries");
        Ok(Self { servers })
    }

    /// How many servers (1 for one Redis, the primaries of a cluster).
    pub(crate) fn len(&self) -> usize {
        self.servers.len()
    }

    fn info(connection: &mut redis::Connection, section: &str) -> anyhow::Result<String> {
        redis::cmd("INFO")
            .arg(section)
            .query::<String>(connection)
            .with_context(|| format!("reading Redis's INFO {section}"))
    }

    fn field(info: &str, name: &str) -> Option<f64> {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|value| value.trim().parse().ok())
    }

    /// Gets the machine quiet for a measurement: every server's AOF compacted (so a run's
    /// own writes do not trigger a rewrite: a fork whose child takes a whole core for about
    /// a second, which on this 2-core machine shows in whichever run it lands in), then
    /// everything written so far on disk. Returns the AOF rewrites so far.
    pub(crate) fn prepare_measurement(&mut self) -> anyhow::Result<u64> {
        for (_, connection) in &mut self.servers {
            compact(connection)?;
        }
        settle_disk()?;
        self.rewrites()
    }

    /// CPU seconds the servers have used since they started (user + system, all threads).
    pub(crate) fn cpu_secs(&mut self) -> anyhow::Result<f64> {
        let mut total = 0.0;
        for (_, connection) in &mut self.servers {
            let info = Self::info(connection, "cpu")?;
            total += Self::field(&info, "used_cpu_user").unwrap_or(f64::NAN)
                + Self::field(&info, "used_cpu_sys").unwrap_or(f64::NAN);
        }
        Ok(total)
    }

    /// AOF rewrites since the servers started (0 without AOF).
    pub(crate) fn rewrites(&mut self) -> anyhow::Result<u64> {
        let mut total = 0;
        for (_, connection) in &mut self.servers {
            let info = Self::info(connection, "persistence")?;
            total += Self::field(&info, "aof_rewrites").unwrap_or(0.0) as u64;
        }
        Ok(total)
    }

    /// Zeroes the servers' command statistics (`CONFIG RESETSTAT`).
    pub(crate) fn reset_stats(&mut self) -> anyhow::Result<()> {
        for (url, connection) in &mut self.servers {
            redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query::<()>(connection)
                .with_context(|| format!("CONFIG RESETSTAT at {url}"))?;
        }
        Ok(())
    }

    /// Calls and time per command since the last reset, summed over the servers.
    pub(crate) fn command_stats(&mut self) -> anyhow::Result<BTreeMap<String, CommandStat>> {
        let mut stats: BTreeMap<String, CommandStat> = BTreeMap::new();
        for (_, connection) in &mut self.servers {
            let info = Self::info(connection, "commandstats")?;
            for (name, stat) in command_stats(&info) {
                let entry = stats.entry(name).or_default();
                entry.calls += stat.calls;
                entry.usec += stat.usec;
            }
        }
        Ok(stats)
    }

    /// Deletes every key under `prefix` (`{prefix}:…`) on every server (a finished run's rows, so the next
    /// run starts from the same memory and AOF size).
    pub(crate) fn drop_prefix(&mut self, prefix: &str) -> anyhow::Result<u64> {
        let mut dropped = 0;
        for (url, connection) in &mut self.servers {
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{prefix}:*"))
                    .arg("COUNT")
                    .arg(10_000)
                    .query(connection)
                    .with_context(|| format!("SCAN at {url}"))?;
                // One key per UNLINK: a cluster node refuses multi-key commands across
                // slots, and these keys span many.
                if !keys.is_empty() {
                    let mut pipe = redis::pipe();
                    for key in &keys {
                        pipe.cmd("UNLINK").arg(key).ignore();
                    }
                    pipe.query::<()>(connection)
                        .with_context(|| format!("UNLINK at {url}"))?;
                }
                dropped += keys.len() as u64;
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(dropped)
    }
}

/// The primaries' `host:port` in a `CLUSTER NODES` listing (failed nodes left out).
fn primaries(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_id, address, flags) = (fields.next()?, fields.next()?, fields.next()?);
            let flags: Vec<&str> = flags.split(',').collect();
            (flags.contains(&"master") && !flags.iter().any(|f| f.starts_with("fail")))
                .then(|| address.split('@').next().unwrap_or(address).to_string())
        })
        .collect()
}

/// `cmdstat_<name>:calls=N,usec=N,…` lines of `INFO commandstats`.
fn command_stats(info: &str) -> Vec<(String, CommandStat)> {
    info.lines()
        .filter_map(|line| {
            let (name, values) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let value = |key: &str| -> Option<u64> {
                values
                    .split(',')
                    .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))?
                    .parse()
                    .ok()
            };
            Some((
                name.to_string(),
                CommandStat {
                    calls: value("calls")?,
                    usec: value("usec")?,
                },
            ))
        })
        .collect()
}

/// Rewrites one server's AOF now and waits until that is done (nothing without AOF).
fn compact(connection: &mut redis::Connection) -> anyhow::Result<()> {
    let persistence = |connection: &mut redis::Connection| -> anyhow::Result<String> {
        RedisServers::info(connection, "persistence")
    };
    let field = |info: &str, name: &str| RedisServers::field(info, name).map(|v| v as u64);
    if field(&persistence(connection)?, "aof_enabled") != Some(1) {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    // Refused while a rewrite already runs: wait for it, then ask again.
    loop {
        let info = persistence(connection)?;
        let busy = field(&info, "aof_rewrite_in_progress") == Some(1)
            || field(&info, "rdb_bgsave_in_progress") == Some(1);
        if !busy {
            let asked: redis::RedisResult<String> = redis::cmd("BGREWRITEAOF").query(connection);
            if asked.is_ok() {
                break;
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "Redis stayed busy with a background save"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let info = persistence(connection)?;
        if field(&info, "aof_rewrite_in_progress") == Some(0)
            && field(&info, "aof_rewrite_scheduled") == Some(0)
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "Redis's AOF rewrite did not finish in 5 minutes"
        );
    }
}

/// Writes what earlier phases left in the page cache (the filled topic's log segments,
/// the drain's archive, the compacted AOF: hundreds of MB) to disk before a measurement,
/// so the kernel's writeback of one phase does not land in the next one's latency.
fn settle_disk() -> anyhow::Result<()> {
    let status = Command::new("sync").status().context("running sync")?;
    anyhow::ensure!(status.success(), "sync failed: {status}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primaries_are_the_live_masters_of_a_listing() {
        let listing = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7002@17002 master - 0 0 2 connected 5461-10922
c3 127.0.0.1:7003@17003 master,fail - 0 0 3 connected 10923-16383
d4 127.0.0.1:7004@17004 slave a1 0 0 1 connected
";
        assert_eq!(primaries(listing), ["127.0.0.1:7001", "127.0.0.1:7002"]);
    }

    #[test]
    fn command_stats_are_read_per_command() {
        let info = "# Commandstats\r\ncmdstat_set:calls=10,usec=25,usec_per_call=2.50,rejected_calls=0,failed_calls=0\r\ncmdstat_zadd:calls=3,usec=9,usec_per_call=3.00\r\n";
        let stats = command_stats(info);
        assert_eq!(
            stats,
            [
                (
                    "set".to_string(),
                    CommandStat {
                        calls: 10,
                        usec: 25
                    }
                ),
                ("zadd".to_string(), CommandStat { calls: 3, usec: 9 }),
            ]
        );
    }
}
