//! The standing queries' counters for Prometheus, labelled by query, read at each scrape;
//! and their summary for a run's report.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde::Serialize;

use crate::query::{RunningQuery, Status};
use crate::registry::Registry;

/// Register with `prometheus_client::registry::Registry::register_collector`.
#[derive(Debug)]
pub struct QueriesCollector(pub Arc<Registry>);

type Field = fn(&RunningQuery) -> u64;

impl Collector for QueriesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let queries = self.0.running();
        let counters: [(&str, &str, Field); 5] = [
            (
                "risksense_query_rows_in",
                "Rows a standing query read.",
                |q| q.stats.rows_in.load(Ordering::Relaxed),
            ),
            (
                "risksense_query_rows_out",
                "Rows a standing query emitted.",
                |q| q.stats.rows_out.load(Ordering::Relaxed),
            ),
            (
                "risksense_query_late_rows",
                "Rows dropped because every window holding them was already emitted.",
                |q| q.stats.late_rows.load(Ordering::Relaxed),
            ),
            (
                "risksense_query_windows_emitted",
                "Windows a standing query emitted.",
                |q| q.stats.windows_emitted.load(Ordering::Relaxed),
            ),
            (
                "risksense_query_subscribers_dropped",
                "Subscribers dropped for reading too slowly.",
                |q| q.stats.subscribers_dropped.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, field) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for query in queries.iter().filter(|q| !q.temporary) {
                ConstCounter::new(field(query))
                    .encode(family.encode_family(&[("query", query.name())])?)?;
            }
        }
        let mut running = encoder.encode_descriptor(
            "risksense_query_running",
            "1 while a standing query runs, 0 once it failed.",
            None,
            MetricType::Gauge,
        )?;
        for query in queries.iter().filter(|q| !q.temporary) {
            let up = i64::from(matches!(query.status(), Status::Running));
            ConstGauge::new(up).encode(running.encode_family(&[("query", query.name())])?)?;
        }
        let mut latency = encoder.encode_descriptor(
            "risksense_query_emit_latency_p99_seconds",
            "99th percentile, from the produce time of the message that closed a window to its result delivered.",
            None,
            MetricType::Gauge,
        )?;
        for query in queries.iter().filter(|q| q.is_windowed() && !q.temporary) {
            let p99 = query.stats.emit_latency.quantile_ms(0.99) as f64 / 1000.0;
            ConstGauge::new(p99).encode(latency.encode_family(&[("query", query.name())])?)?;
        }
        let mut close = encoder.encode_descriptor(
            "risksense_query_close_latency_p99_seconds",
            "99th percentile, from the watermark passing a window's end (the query taking the micro-batch that moved it) to its result delivered.",
            None,
            MetricType::Gauge,
        )?;
        for query in queries.iter().filter(|q| q.is_windowed() && !q.temporary) {
            let p99 = query.stats.close_latency.quantile_ms(0.99) as f64 / 1000.0;
            ConstGauge::new(p99).encode(close.encode_family(&[("query", query.name())])?)?;
        }
        Ok(())
    }
}

/// One query's totals at the end of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QuerySummary {
    pub name: String,
    pub rows_in: u64,
    pub rows_out: u64,
    pub late_rows: u64,
    pub windows_emitted: u64,
    /// Produce time of the message that closed a window → its result delivered (ms).
    pub emit_p50_ms: u64,
    pub emit_p99_ms: u64,
    pub emits: u64,
    /// The watermark passing a window's end → its result delivered (ms).
    pub close_p50_ms: u64,
    pub close_p99_ms: u64,
    pub failed: Option<String>,
}

impl Registry {
    pub fn summary(&self) -> Vec<QuerySummary> {
        self.running()
            .iter()
            .filter(|q| !q.temporary)
            .map(|q| QuerySummary {
                name: q.name().to_string(),
                rows_in: q.stats.rows_in.load(Ordering::Relaxed),
                rows_out: q.stats.rows_out.load(Ordering::Relaxed),
                late_rows: q.stats.late_rows.load(Ordering::Relaxed),
                windows_emitted: q.stats.windows_emitted.load(Ordering::Relaxed),
                emit_p50_ms: q.stats.emit_latency.quantile_ms(0.5),
                emit_p99_ms: q.stats.emit_latency.quantile_ms(0.99),
                emits: q.stats.emit_latency.count(),
                close_p50_ms: q.stats.close_latency.quantile_ms(0.5),
                close_p99_ms: q.stats.close_latency.quantile_ms(0.99),
                failed: match q.status() {
                    Status::Failed { reason } => Some(reason),
                    Status::Running => None,
                },
            })
            .collect()
    }
}
