//! The DDL that declares standing queries, modelled on Arroyo's and RisingWave's:
//!
//! ```sql
//! CREATE VIEW big_spenders AS SELECT cc_num, amt FROM scored WHERE amt > 1000;
//!
//! CREATE TABLE anomalies_per_merchant WITH (connector = 'kafka', topic = 'merchant-anomalies');
//! INSERT INTO anomalies_per_merchant
//! SELECT tumble(trans_date_trans_time, INTERVAL '1' MINUTE) AS window_start, merchant, count(*) AS anomalies
//! FROM scored WHERE is_anomaly GROUP BY 1, 2;
//! ```
//!
//! A `CREATE VIEW` is a query whose results go only to its subscribers (and its recent
//! rows); a `CREATE TABLE … WITH (connector = …)` declares an output, and the `INSERT INTO`
//! that fills it is a query named after it. Options (in either `WITH`):
//! `allowed_lateness` (how far behind the highest event time a row may be and still count,
//! default 5 seconds); for `kafka`: `topic`, `key` (columns, comma-separated; default the
//! window and the grouping columns); for `redis`: `format` (`hash`, the default, or
//! `stream`), `key` (a template such as `fraud:{category}:{window_start}`, or a stream's
//! name), `ttl` (seconds, hashes), `max_len` (streams); for `parquet`: `path` (a folder).

use std::collections::BTreeMap;

use datafusion::sql::sqlparser::ast::{
    CreateTableOptions, ObjectName, SqlOption, Statement, TableObject,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use serde::{Deserialize, Serialize};

use crate::error::ContinuousError;

/// Default `allowed_lateness`: rows of one card arrive in order, and partitions of a topic
/// replayed or produced together stay within seconds of each other.
pub const DEFAULT_LATENESS_US: i64 = 5_000_000;

/// Where a query's results go (besides its subscribers, which every query has).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "connector", rename_all = "lowercase")]
pub enum OutputSpec {
    /// No output: a view, read by subscribing or through its recent rows.
    View,
    /// JSON records to a Kafka topic, keyed by `key` columns (joined by `/`).
    Kafka { topic: String, key: Vec<String> },
    /// Redis hashes (one per row, under a key template) or stream entries.
    Redis {
        format: RedisFormat,
        key: String,
        ttl_secs: Option<u64>,
        max_len: Option<u64>,
    },
    /// Parquet files in a folder, one per flush.
    Parquet { path: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisFormat {
    Hash,
    Stream,
}

/// One standing query as declared: its name, its SELECT, where its rows go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub name: String,
    /// The SELECT, as SQL text.
    pub select: String,
    pub output: OutputSpec,
    /// Columns the output declared (`CREATE TABLE t (a, b)`): the SELECT must produce them.
    pub columns: Vec<String>,
    pub lateness_us: i64,
    /// The statements that declared it, to save and show.
    pub sql: String,
}

/// Parses a script of DDL statements into the queries it declares, in order.
pub fn parse(script: &str) -> Result<Vec<Definition>, ContinuousError> {
    let statements = Parser::parse_sql(&GenericDialect {}, script)
        .map_err(|error| ContinuousError::Parse(error.to_string()))?;
    if statements.is_empty() {
        return Err(ContinuousError::Parse("no statement".to_string()));
    }
    // Outputs declared so far: name → (spec, columns, lateness, statement text).
    let mut tables: BTreeMap<String, (OutputSpec, Vec<String>, i64, String)> = BTreeMap::new();
    let mut out = Vec::new();
    for statement in statements {
        match &statement {
            Statement::CreateView(view) => {
                if view.materialized {
                    return Err(unsupported_statement("CREATE MATERIALIZED VIEW"));
                }
                let name = object_name(&view.name)?;
                let options = options(&view.options)?;
                let lateness = lateness(&options)?;
                reject_unknown(&options, &["allowed_lateness"])?;
                out.push(Definition {
                    name,
                    select: view.query.to_string(),
                    output: OutputSpec::View,
                    columns: view.columns.iter().map(|c| c.name.value.clone()).collect(),
                    lateness_us: lateness,
                    sql: format!("{statement};"),
                });
            }
            Statement::CreateTable(table) => {
                let name = object_name(&table.name)?;
                if table.query.is_some() {
                    return Err(ContinuousError::Unsupported(format!(
                        "CREATE TABLE {name} AS SELECT: declare the output with CREATE TABLE {name} WITH (connector = …), then INSERT INTO {name} SELECT …"
                    )));
                }
                let options = options(&table.table_options)?;
                let spec = output_spec(&name, &options)?;
                let lateness = lateness(&options)?;
                let columns = table.columns.iter().map(|c| c.name.value.clone()).collect();
                tables.insert(name, (spec, columns, lateness, format!("{statement};")));
            }
            Statement::Insert(insert) => {
                let TableObject::TableName(table) = &insert.table else {
                    return Err(unsupported_statement("INSERT INTO a table function"));
                };
                let name = object_name(table)?;
                let Some((spec, columns, lateness, created)) = tables.remove(&name) else {
                    return Err(ContinuousError::Unsupported(format!(
                        "INSERT INTO {name}: declare it first in the same script with CREATE TABLE {name} WITH (connector = 'kafka' | 'redis' | 'parquet', …)"
                    )));
                };
                let Some(source) = &insert.source else {
                    return Err(unsupported_statement("INSERT without a SELECT"));
                };
                out.push(Definition {
                    name,
                    select: source.to_string(),
                    output: spec,
                    columns,
                    lateness_us: lateness,
                    sql: format!("{created}\n{statement};"),
                });
            }
            other => {
                let text = other.to_string();
                let head: String = text
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ");
                return Err(unsupported_statement(&head));
            }
        }
    }
    if let Some(name) = tables.keys().next() {
        return Err(ContinuousError::Unsupported(format!(
            "CREATE TABLE {name} has no INSERT INTO {name} SELECT … in the same script"
        )));
    }
    Ok(out)
}

fn unsupported_statement(what: &str) -> ContinuousError {
    ContinuousError::Unsupported(format!(
        "{what} is not a standing query: use CREATE VIEW name AS SELECT …, or CREATE TABLE name WITH (connector = 'kafka' | 'redis' | 'parquet', …) followed by INSERT INTO name SELECT …"
    ))
}

fn object_name(name: &ObjectName) -> Result<String, ContinuousError> {
    let text = name.to_string().trim_matches('"').to_string();
    let valid = !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !text.starts_with('-')
        // `_…` names are the engine's (subscriptions).
        && !text.starts_with('_');
    if valid {
        Ok(text)
    } else {
        Err(ContinuousError::Unsupported(format!(
            "query name {text:?}: use letters, digits, '_' and '-' (at most 64), not starting with '_' or '-'"
        )))
    }
}

fn options(options: &CreateTableOptions) -> Result<BTreeMap<String, String>, ContinuousError> {
    let list: &[SqlOption] = match options {
        CreateTableOptions::None => &[],
        CreateTableOptions::With(list)
        | CreateTableOptions::Options(list)
        | CreateTableOptions::Plain(list)
        | CreateTableOptions::TableProperties(list) => list,
    };
    let mut out = BTreeMap::new();
    for option in list {
        let SqlOption::KeyValue { key, value } = option else {
            return Err(ContinuousError::Unsupported(format!(
                "option {option}: write options as key = 'value'"
            )));
        };
        let text = value.to_string();
        let text = text
            .strip_prefix('\'')
            .and_then(|t| t.strip_suffix('\''))
            .unwrap_or(&text)
            .replace("''", "'");
        out.insert(key.value.to_ascii_lowercase(), text);
    }
    Ok(out)
}

fn reject_unknown(
    options: &BTreeMap<String, String>,
    known: &[&str],
) -> Result<(), ContinuousError> {
    for key in options.keys() {
        if !known.contains(&key.as_str()) {
            return Err(ContinuousError::Unsupported(format!(
                "unknown option {key}; known here: {}",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

fn lateness(options: &BTreeMap<String, String>) -> Result<i64, ContinuousError> {
    match options.get("allowed_lateness") {
        Some(text) => parse_duration_us(text),
        None => Ok(DEFAULT_LATENESS_US),
    }
}

fn output_spec(
    name: &str,
    options: &BTreeMap<String, String>,
) -> Result<OutputSpec, ContinuousError> {
    let required = |key: &str| {
        options.get(key).cloned().ok_or_else(|| {
            ContinuousError::Unsupported(format!("CREATE TABLE {name}: option {key} is required"))
        })
    };
    let number = |key: &str| -> Result<Option<u64>, ContinuousError> {
        options
            .get(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ContinuousError::Unsupported(format!(
                        "option {key}: {v:?} is not a whole number"
                    ))
                })
            })
            .transpose()
    };
    let connector = required("connector")?;
    match connector.as_str() {
        "kafka" => {
            reject_unknown(options, &["connector", "topic", "key", "allowed_lateness"])?;
            let key = options
                .get("key")
                .map(|k| {
                    k.split(',')
                        .map(|c| c.trim().to_string())
                        .filter(|c| !c.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            Ok(OutputSpec::Kafka {
                topic: required("topic")?,
                key,
            })
        }
        "redis" => {
            reject_unknown(
                options,
                &[
                    "connector",
                    "format",
                    "key",
                    "ttl",
                    "max_len",
                    "allowed_lateness",
                ],
            )?;
            let format = match options.get("format").map(String::as_str) {
                None | Some("hash") => RedisFormat::Hash,
                Some("stream") => RedisFormat::Stream,
                Some(other) => {
                    return Err(ContinuousError::Unsupported(format!(
                        "redis format {other:?}: use 'hash' or 'stream'"
                    )));
                }
            };
            Ok(OutputSpec::Redis {
                format,
                key: required("key")?,
                ttl_secs: number("ttl")?,
                max_len: number("max_len")?,
            })
        }
        "parquet" => {
            reject_unknown(options, &["connector", "path", "allowed_lateness"])?;
            Ok(OutputSpec::Parquet {
                path: required("path")?,
            })
        }
        other => Err(ContinuousError::Unsupported(format!(
            "connector {other:?}: use 'kafka', 'redis' or 'parquet'"
        ))),
    }
}

/// `"10 seconds"`, `"500 ms"`, `"1 minute"`, `"2h"`, `"0"` → microseconds.
pub fn parse_duration_us(text: &str) -> Result<i64, ContinuousError> {
    let bad = || {
        ContinuousError::Unsupported(format!(
            "duration {text:?}: write a number and a unit (ms, seconds, minutes, hours), e.g. '10 seconds'"
        ))
    };
    let text = text.trim().to_ascii_lowercase();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "" if number == 0.0 => 0.0,
        "ms" | "millisecond" | "milliseconds" => 1e3,
        "s" | "sec" | "secs" | "second" | "seconds" => 1e6,
        "m" | "min" | "mins" | "minute" | "minutes" => 60e6,
        "h" | "hour" | "hours" => 3600e6,
        _ => return Err(bad()),
    };
    let us = number * scale;
    if !us.is_finite() || !(0.0..=86_400e6 * 30.0).contains(&us) {
        return Err(bad());
    }
    Ok(us as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_and_a_sink_with_its_insert() {
        let defs = parse(
            "CREATE VIEW v WITH (allowed_lateness = '2 seconds') AS SELECT cc_num FROM scored WHERE amt > 10;
             CREATE TABLE per_minute WITH (connector = 'kafka', topic = 'out', key = 'merchant');
             INSERT INTO per_minute SELECT merchant FROM scored;",
        )
        .expect("parses");
        assert_eq!(defs.len(), 2);
        assert_eq!(defs[0].name, "v");
        assert_eq!(defs[0].output, OutputSpec::View);
        assert_eq!(defs[0].lateness_us, 2_000_000);
        assert!(defs[0].select.contains("amt > 10"), "{}", defs[0].select);
        assert_eq!(defs[1].name, "per_minute");
        assert_eq!(
            defs[1].output,
            OutputSpec::Kafka {
                topic: "out".into(),
                key: vec!["merchant".into()]
            }
        );
        assert_eq!(defs[1].lateness_us, DEFAULT_LATENESS_US);
        // What is saved parses back to the same query.
        let again = parse(&defs[1].sql).expect("round trip");
        assert_eq!(again[0].select, defs[1].select);
    }

    #[test]
    fn what_is_not_a_standing_query_is_refused_with_what_is() {
        for (sql, says) in [
            ("SELECT 1", "not a standing query"),
            ("DROP TABLE x", "not a standing query"),
            (
                "CREATE TABLE t WITH (connector = 'kafka', topic = 'x')",
                "no INSERT INTO t",
            ),
            ("INSERT INTO t SELECT 1", "declare it first"),
            (
                "CREATE TABLE t WITH (connector = 'mongo'); INSERT INTO t SELECT 1",
                "use 'kafka'",
            ),
            (
                "CREATE TABLE t WITH (connector = 'redis'); INSERT INTO t SELECT 1",
                "key is required",
            ),
            (
                "CREATE VIEW v WITH (allowed_lateness = 'soon') AS SELECT 1",
                "duration",
            ),
            (
                "CREATE VIEW v WITH (colour = 'red') AS SELECT 1",
                "unknown option colour",
            ),
            ("CREATE VIEW \"a b\" AS SELECT 1", "query name"),
            ("CREATE VIEW v AS", "cannot parse"),
        ] {
            let error = parse(sql).expect_err(sql).to_string();
            assert!(error.contains(says), "{sql}: {error}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_us("0").unwrap(), 0);
        assert_eq!(parse_duration_us("500 ms").unwrap(), 500_000);
        assert_eq!(parse_duration_us("1 minute").unwrap(), 60_000_000);
        assert_eq!(parse_duration_us("2h").unwrap(), 7_200_000_000);
        assert!(parse_duration_us("-1 s").is_err());
    }
}
