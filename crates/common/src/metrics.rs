//! Counters and latency histograms of a running stream, shared with whoever reports them
//! (the run summary, the HTTP `/metrics` endpoint).
//!
//! The engine counts into plain atomics ([`StreamMetrics::add`]) and records latencies
//! into HDR histograms ([`LatencyHistogram::record`]); the Prometheus exposition is
//! written by `prometheus-client` from a [`Collector`] that reads them at scrape time
//! ([`StreamMetrics::register`]), so every field is exported by one list in one place.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Highest latency a histogram tells apart (1 h); longer ones count as 1 h.
const MAX_MS: u64 = 3_600_000;
/// Significant digits kept: values are exact up to 2,047 ms and within 0.1 % above.
const SIGNIFICANT_DIGITS: u8 = 3;

/// Upper bounds (ms) of the Prometheus buckets of every latency histogram.
pub const BUCKET_BOUNDS_MS: [u64; 13] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000,
];

/// Latency histogram in milliseconds, 0 ms to 1 h at 3 significant digits: an
/// [HdrHistogram](hdrhistogram) behind a mutex (about 13,000 counters; recording is one
/// uncontended lock and an index computation).
///
/// In process, [`Self::quantile_ms`] answers from the HDR data at its full precision (the
/// run summary's p50/p99). For Prometheus the histogram is exported as a classic
/// *histogram* whose fixed buckets ([`BUCKET_BOUNDS_MS`]) are counted from the HDR data at
/// scrape time, rather than as a summary of precomputed quantiles: bucket counts can be
/// summed across processes and give any quantile over any range with `histogram_quantile`,
/// which per-process quantiles cannot. The sum is kept exactly beside the HDR counts.
pub struct LatencyHistogram {
    recorded: Mutex<Recorded>,
}

struct Recorded {
    histogram: Histogram<u64>,
    sum_ms: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        let histogram = Histogram::new_with_bounds(1, MAX_MS, SIGNIFICANT_DIGITS)
            .expect("valid HDR histogram bounds");
        Self {
            recorded: Mutex::new(Recorded {
                histogram,
                sum_ms: 0,
            }),
        }
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.count())
            .field("sum_ms", &self.sum_ms())
            .finish()
    }
}

impl LatencyHistogram {
    fn lock(&self) -> MutexGuard<'_, Recorded> {
        // The data stays consistent whatever panicked while holding the lock.
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `n` observations of `ms` milliseconds (above 1 h: as 1 h).
    pub fn record(&self, ms: u64, n: u64) {
        if n == 0 {
            return;
        }
        let mut recorded = self.lock();
        recorded.histogram.saturating_record_n(ms, n);
        recorded.sum_ms = recorded.sum_ms.saturating_add(ms.saturating_mul(n));
    }

    pub fn count(&self) -> u64 {
        self.lock().histogram.len()
    }

    /// The smallest `ms` with at least `q` of the observations at or below it (to the
    /// histogram's precision: exact up to 2,047 ms, within 0.1 % above); 0 when empty.
    pub fn quantile_ms(&self, q: f64) -> u64 {
        let recorded = self.lock();
        if recorded.histogram.is_empty() {
            return 0;
        }
        recorded.histogram.value_at_quantile(q.clamp(0.0, 1.0))
    }

    /// Cumulative counts at the given upper bounds (ms), for Prometheus buckets.
    pub fn cumulative(&self, bounds_ms: &[u64]) -> Vec<u64> {
        let recorded = self.lock();
        bounds_ms
            .iter()
            .map(|&bound| recorded.histogram.count_between(0, bound))
            .collect()
    }

    /// Sum of every observation, in ms (exact, not from the HDR buckets).
    pub fn sum_ms(&self) -> u64 {
        self.lock().sum_ms
    }

    /// Writes this histogram as a Prometheus histogram in seconds with the buckets of
    /// [`BUCKET_BOUNDS_MS`].
    fn encode(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
    ) -> Result<(), std::fmt::Error> {
        let (count, sum_ms, cumulative) = {
            let recorded = self.lock();
            let cumulative: Vec<u64> = BUCKET_BOUNDS_MS
                .iter()
                .map(|&bound| recorded.histogram.count_between(0, bound))
                .collect();
            (recorded.histogram.len(), recorded.sum_ms, cumulative)
        };
        // prometheus-client takes per-bucket counts and accumulates them itself.
        let mut previous = 0;
        let buckets: Vec<(f64, u64)> = BUCKET_BOUNDS_MS
            .iter()
            .zip(cumulative)
            .map(|(&bound, seen)| {
                let bucket = (bound as f64 / 1000.0, seen - previous);
                previous = seen;
                bucket
            })
            .collect();
        encoder
            .encode_descriptor(name, help, None, MetricType::Histogram)?
            .encode_histogram::<NoLabelSet>(sum_ms as f64 / 1000.0, count, &buckets, None)
    }
}

/// What the stream has done so far.
#[derive(Default, Debug)]
pub struct StreamMetrics {
    pub messages: AtomicU64,
    pub rows_scored: AtomicU64,
    pub anomalies: AtomicU64,
    pub new_alerts: AtomicU64,
    pub dead_letters: AtomicU64,
    pub batches: AtomicU64,
    pub checkpoints: AtomicU64,
    /// Sink writes retried after a failure (Redis or Kafka away).
    pub sink_retries: AtomicU64,
    /// Messages behind the end of the assigned partitions at the last checkpoint (set with
    /// [`Self::set_lag`]).
    pub lag: AtomicU64,
    /// When a micro-batch last closed full (more messages were waiting), in ms since the
    /// epoch: the stream is behind, and work that can wait should (see [`Self::behind`]).
    pub backlog_at_ms: AtomicU64,
    /// Time spent per stage, in ns: JSON → Arrow, state + SQL + model, sinks, checkpoints.
    pub decode_ns: AtomicU64,
    pub score_ns: AtomicU64,
    pub sink_ns: AtomicU64,
    pub checkpoint_ns: AtomicU64,
    /// Redis and Kafka writes (a task overlapping the next micro-batch).
    pub remote_sink_ns: AtomicU64,
    /// Updating per-card state after the sinks.
    pub state_ns: AtomicU64,
    /// Polling Kafka and gathering micro-batches (including waiting for messages).
    pub poll_ns: AtomicU64,
    /// From a message's Kafka timestamp (produce time) to its result in the store.
    pub visible_latency: LatencyHistogram,
    /// From a message's Kafka timestamp to the engine polling it (producer, broker and
    /// fetch time: the part of `visible_latency` spent before the engine has the row).
    pub arrival_latency: LatencyHistogram,
    /// From a micro-batch's close to its results in every sink.
    pub batch_latency: LatencyHistogram,
    /// Rows scored and flagged per model (champion, challenger in shadow, supervised).
    pub models: ModelCounts,
    /// Labels joined with what each model said: live precision and recall per model.
    pub labels: LabelCounts,
}

/// What the label consumer has seen.
#[derive(Default, Debug)]
pub struct LabelCounts {
    /// Label messages read (bad ones included).
    pub received: AtomicU64,
    /// Labels recorded for the first time (repeats are not counted twice anywhere).
    pub new: AtomicU64,
    /// Label messages that could not be read (dead-lettered).
    pub rejected: AtomicU64,
    /// New labels whose transaction the store did not hold after waiting for it.
    pub unmatched: AtomicU64,
    /// New labels waiting for their transaction to be scored.
    pub pending: AtomicU64,
    /// Per (slot, model id): [true positives, false positives, false negatives, true
    /// negatives] of its flags against the labels.
    confusion: std::sync::Mutex<std::collections::BTreeMap<(String, String), [u64; 4]>>,
}

/// One model's flags against the labels so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Confusion {
    pub true_positives: u64,
    pub false_positives: u64,
    pub false_negatives: u64,
    pub true_negatives: u64,
}

impl Confusion {
    pub fn labelled(&self) -> u64 {
        self.true_positives + self.false_positives + self.false_negatives + self.true_negatives
    }
    /// Of the flagged labelled rows, the share that are fraud (None before any flag).
    pub fn precision(&self) -> Option<f64> {
        let flagged = self.true_positives + self.false_positives;
        (flagged > 0).then(|| self.true_positives as f64 / flagged as f64)
    }
    /// Of the labelled frauds, the share flagged (None before any fraud).
    pub fn recall(&self) -> Option<f64> {
        let frauds = self.true_positives + self.false_negatives;
        (frauds > 0).then(|| self.true_positives as f64 / frauds as f64)
    }
}

impl LabelCounts {
    /// Counts one label against a model's flag on the row.
    pub fn add(&self, slot: &str, model: &str, flagged: bool, is_fraud: bool) {
        let mut confusion = self.confusion.lock().unwrap_or_else(|e| e.into_inner());
        let cell = confusion
            .entry((slot.to_string(), model.to_string()))
            .or_default();
        cell[match (flagged, is_fraud) {
            (true, true) => 0,
            (true, false) => 1,
            (false, true) => 2,
            (false, false) => 3,
        }] += 1;
    }

    /// (slot, model id, its confusion) for every model with labelled rows.
    pub fn snapshot(&self) -> Vec<(String, String, Confusion)> {
        let confusion = self.confusion.lock().unwrap_or_else(|e| e.into_inner());
        confusion
            .iter()
            .map(|((slot, model), [tp, fp, fn_, tn])| {
                (
                    slot.clone(),
                    model.clone(),
                    Confusion {
                        true_positives: *tp,
                        false_positives: *fp,
                        false_negatives: *fn_,
                        true_negatives: *tn,
                    },
                )
            })
            .collect()
    }
}

/// Rows scored and flagged per (slot, model id): how a challenger's alert rate compares
/// with the champion's on the same rows.
#[derive(Default, Debug)]
pub struct ModelCounts(std::sync::Mutex<std::collections::BTreeMap<(String, String), [u64; 2]>>);

impl ModelCounts {
    /// Adds `rows` scored by `model` in `slot` (`champion`, `challenger`, `supervised`), `flagged` of
    /// them at or above its threshold.
    pub fn add(&self, slot: &str, model: &str, rows: u64, flagged: u64) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = counts
            .entry((slot.to_string(), model.to_string()))
            .or_default();
        entry[0] += rows;
        entry[1] += flagged;
    }

    /// (slot, model id, rows, flagged) for every model that scored.
    pub fn snapshot(&self) -> Vec<(String, String, u64, u64)> {
        let counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .iter()
            .map(|((slot, model), [rows, flagged])| (slot.clone(), model.clone(), *rows, *flagged))
            .collect()
    }
}

/// Wall-clock milliseconds since the Unix epoch (the clock Kafka timestamps use).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Milliseconds from `earlier_ms` to `later_ms` (Unix epoch), 0 when a clock put them the
/// other way round (a producer's clock may run ahead of ours).
pub fn ms_between(earlier_ms: i64, later_ms: i64) -> u64 {
    later_ms.saturating_sub(earlier_ms).max(0) as u64
}

impl StreamMetrics {
    /// True while the stream has a backlog: a micro-batch closed full within `window_ms`.
    pub fn behind(&self, window_ms: u64) -> bool {
        let at = self.backlog_at_ms.load(Ordering::Relaxed);
        at > 0 && ms_between(at as i64, now_ms()) <= window_ms
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets the consumer lag (messages behind the end of the assigned partitions).
    pub fn set_lag(&self, lag: u64) {
        self.lag.store(lag, Ordering::Relaxed);
    }

    /// Adds these metrics to `registry`; they are read on each scrape.
    pub fn register(metrics: Arc<Self>, registry: &mut Registry) {
        registry.register_collector(Box::new(StreamCollector(metrics)));
    }

    /// The counters as exported: name (before the `_total` the encoder adds), help, field.
    fn counters(&self) -> [(&'static str, &'static str, &AtomicU64); 8] {
        [
            (
                "risksense_messages_consumed",
                "Messages read from the transactions topic.",
                &self.messages,
            ),
            (
                "risksense_rows_scored",
                "Transactions scored and written to every sink.",
                &self.rows_scored,
            ),
            (
                "risksense_anomalies",
                "Transactions scored at or above the threshold.",
                &self.anomalies,
            ),
            (
                "risksense_alerts",
                "Alerts added to the alerts stream (replays excluded).",
                &self.new_alerts,
            ),
            (
                "risksense_dead_letters",
                "Messages sent to the dead-letter topic.",
                &self.dead_letters,
            ),
            (
                "risksense_batches",
                "Micro-batches processed.",
                &self.batches,
            ),
            (
                "risksense_checkpoints",
                "Checkpoints completed.",
                &self.checkpoints,
            ),
            (
                "risksense_sink_retries",
                "Sink writes retried after a failure.",
                &self.sink_retries,
            ),
        ]
    }

    /// The stage timers as exported: the `stage` label and the field (ns).
    fn stages(&self) -> [(&'static str, &AtomicU64); 7] {
        [
            ("decode", &self.decode_ns),
            ("score", &self.score_ns),
            ("sinks", &self.sink_ns),
            ("checkpoint", &self.checkpoint_ns),
            ("remote_sinks", &self.remote_sink_ns),
            ("state", &self.state_ns),
            ("poll", &self.poll_ns),
        ]
    }

    /// The latency histograms as exported: name, help, histogram.
    fn histograms(&self) -> [(&'static str, &'static str, &LatencyHistogram); 3] {
        [
            (
                "risksense_batch_latency_seconds",
                "From a micro-batch's close to its results in every sink.",
                &self.batch_latency,
            ),
            (
                "risksense_visible_latency_seconds",
                "From a message's produce time to its result in the store.",
                &self.visible_latency,
            ),
            (
                "risksense_arrival_latency_seconds",
                "From a message's produce time to the engine polling it.",
                &self.arrival_latency,
            ),
        ]
    }
}

/// Writes one counter (the encoder adds `_total` to `name`).
pub fn encode_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl EncodeCounterValue,
) -> Result<(), std::fmt::Error> {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

/// Writes one gauge.
pub fn encode_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl EncodeGaugeValue,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

/// Reads a [`StreamMetrics`] on each scrape.
#[derive(Debug)]
struct StreamCollector(Arc<StreamMetrics>);

impl Collector for StreamCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let metrics = &*self.0;
        for (name, help, counter) in metrics.counters() {
            encode_counter(&mut encoder, name, help, StreamMetrics::get(counter))?;
        }
        encode_gauge(
            &mut encoder,
            "risksense_consumer_lag",
            "Messages behind the end of the assigned partitions.",
            StreamMetrics::get(&metrics.lag),
        )?;
        let mut stages = encoder.encode_descriptor(
            "risksense_stage_seconds",
            "Busy time per stage of the stream.",
            None,
            MetricType::Counter,
        )?;
        for (stage, ns) in metrics.stages() {
            let seconds = ConstCounter::new(StreamMetrics::get(ns) as f64 / 1e9);
            seconds.encode(stages.encode_family(&[("stage", stage)])?)?;
        }
        for (name, help, histogram) in metrics.histograms() {
            histogram.encode(&mut encoder, name, help)?;
        }
        for (name, help, counter) in [
            (
                "risksense_labels_received",
                "Label messages read.",
                &metrics.labels.received,
            ),
            (
                "risksense_labels_new",
                "Labels recorded for the first time.",
                &metrics.labels.new,
            ),
            (
                "risksense_labels_rejected",
                "Label messages that could not be read (dead-lettered).",
                &metrics.labels.rejected,
            ),
            (
                "risksense_labels_unmatched",
                "New labels whose transaction was never found scored.",
                &metrics.labels.unmatched,
            ),
        ] {
            encode_counter(&mut encoder, name, help, StreamMetrics::get(counter))?;
        }
        encode_gauge(
            &mut encoder,
            "risksense_labels_pending",
            "New labels waiting for their transaction to be scored.",
            StreamMetrics::get(&metrics.labels.pending),
        )?;
        let labelled = metrics.labels.snapshot();
        if !labelled.is_empty() {
            let mut family = encoder.encode_descriptor(
                "risksense_labelled",
                "Labelled rows per model and slot, by outcome of its flag (tp, fp, fn, tn).",
                None,
                MetricType::Counter,
            )?;
            for (slot, model, c) in &labelled {
                for (outcome, n) in [
                    ("tp", c.true_positives),
                    ("fp", c.false_positives),
                    ("fn", c.false_negatives),
                    ("tn", c.true_negatives),
                ] {
                    ConstCounter::new(n).encode(family.encode_family(&[
                        ("slot", slot.as_str()),
                        ("model", model.as_str()),
                        ("outcome", outcome),
                    ])?)?;
                }
            }
            for (name, help, value) in [
                (
                    "risksense_model_precision",
                    "Of a model's flagged labelled rows, the share labelled fraud.",
                    Confusion::precision as fn(&Confusion) -> Option<f64>,
                ),
                (
                    "risksense_model_recall",
                    "Of the labelled frauds, the share a model flagged.",
                    Confusion::recall,
                ),
            ] {
                let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for (slot, model, c) in &labelled {
                    if let Some(v) = value(c) {
                        ConstGauge::new(v).encode(family.encode_family(&[
                            ("slot", slot.as_str()),
                            ("model", model.as_str()),
                        ])?)?;
                    }
                }
            }
        }
        let models = metrics.models.snapshot();
        if !models.is_empty() {
            for (name, help, flagged) in [
                (
                    "risksense_model_rows",
                    "Rows scored per model and slot (champion, challenger, supervised).",
                    false,
                ),
                (
                    "risksense_model_flagged",
                    "Rows flagged per model and slot: the champion's are the alerts (with a supervised model, either's flag); a challenger's never alert.",
                    true,
                ),
            ] {
                let mut family =
                    encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                for (slot, model, rows, flags) in &models {
                    let value = ConstCounter::new(if flagged { *flags } else { *rows });
                    value.encode(
                        family
                            .encode_family(&[("slot", slot.as_str()), ("model", model.as_str())])?,
                    )?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_buckets() {
        let histogram = LatencyHistogram::default();
        assert_eq!(histogram.quantile_ms(0.5), 0);
        for ms in 1..=100 {
            histogram.record(ms, 1);
        }
        assert_eq!(histogram.quantile_ms(0.5), 50);
        assert_eq!(histogram.quantile_ms(0.99), 99);
        assert_eq!(histogram.quantile_ms(1.0), 100);
        assert_eq!(histogram.cumulative(&[10, 50, 1000]), vec![10, 50, 100]);
        assert_eq!(histogram.count(), 100);
        assert_eq!(histogram.sum_ms(), 5050);
        // Beyond 1 h: counted as 1 h (to 0.1 %).
        histogram.record(100_000_000, 1);
        let top = histogram.quantile_ms(1.0);
        assert!(top.abs_diff(MAX_MS) <= MAX_MS / 1000, "{top}");
    }

    #[test]
    fn quantiles_are_within_hdr_precision() {
        let histogram = LatencyHistogram::default();
        // 0 ms .. 200 s, each value 3 times (recorded as n = 3).
        for ms in (0..=200_000).step_by(7) {
            histogram.record(ms, 3);
        }
        let values: Vec<u64> = (0..=200_000).step_by(7).collect();
        for q in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let wanted = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
            let exact = values[wanted - 1];
            let got = histogram.quantile_ms(q);
            assert!(
                got.abs_diff(exact) as f64 <= (exact as f64 * 1e-3).max(1.0),
                "q {q}: {got} vs {exact}"
            );
        }
        assert_eq!(histogram.count(), 3 * values.len() as u64);
        assert_eq!(histogram.sum_ms(), 3 * values.iter().sum::<u64>());
        // Values up to 2,047 ms are exact.
        let small = LatencyHistogram::default();
        small.record(2_047, 1);
        small.record(1, 99);
        assert_eq!(small.quantile_ms(1.0), 2_047);
        assert_eq!(small.quantile_ms(0.99), 1);
    }

    fn exposition(metrics: &Arc<StreamMetrics>) -> String {
        let mut registry = Registry::default();
        StreamMetrics::register(metrics.clone(), &mut registry);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).expect("encode");
        text
    }

    #[test]
    fn exposition_has_every_counter_stage_and_histogram() {
        let metrics = Arc::new(StreamMetrics::default());
        for (n, (_, _, counter)) in metrics.counters().into_iter().enumerate() {
            StreamMetrics::add(counter, 10 + n as u64);
        }
        for (n, (_, ns)) in metrics.stages().into_iter().enumerate() {
            StreamMetrics::add(ns, (n as u64 + 1) * 500_000_000);
        }
        metrics.set_lag(42);
        metrics.batch_latency.record(7, 2);
        metrics.batch_latency.record(70_000, 1);
        metrics.visible_latency.record(120, 5);
        metrics.arrival_latency.record(3, 1);
        let text = exposition(&metrics);

        let lines: Vec<&str> = text.lines().collect();
        let has = |line: &str| lines.contains(&line);
        for (name, value) in [
            ("risksense_messages_consumed_total", 10),
            ("risksense_rows_scored_total", 11),
            ("risksense_anomalies_total", 12),
            ("risksense_alerts_total", 13),
            ("risksense_dead_letters_total", 14),
            ("risksense_batches_total", 15),
            ("risksense_checkpoints_total", 16),
            ("risksense_sink_retries_total", 17),
        ] {
            assert!(has(&format!("{name} {value}")), "{name} in\n{text}");
            assert!(has(&format!("# TYPE {name} counter")), "{name} in\n{text}");
        }
        assert!(has("# TYPE risksense_consumer_lag gauge"), "{text}");
        assert!(has("risksense_consumer_lag 42"), "{text}");
        assert!(
            has("# TYPE risksense_stage_seconds_total counter"),
            "{text}"
        );
        for (stage, seconds) in [
            ("decode", "0.5"),
            ("score", "1.0"),
            ("sinks", "1.5"),
            ("checkpoint", "2.0"),
            ("remote_sinks", "2.5"),
            ("state", "3.0"),
            ("poll", "3.5"),
        ] {
            let line = format!("risksense_stage_seconds_total{{stage=\"{stage}\"}} {seconds}");
            assert!(has(&line), "{line} in\n{text}");
        }
        for line in [
            "# TYPE risksense_batch_latency_seconds histogram",
            "risksense_batch_latency_seconds_bucket{le=\"0.005\"} 0",
            "risksense_batch_latency_seconds_bucket{le=\"0.01\"} 2",
            "risksense_batch_latency_seconds_bucket{le=\"60\"} 2",
            "risksense_batch_latency_seconds_bucket{le=\"+Inf\"} 3",
            "risksense_batch_latency_seconds_sum 70.014",
            "risksense_batch_latency_seconds_count 3",
            "risksense_visible_latency_seconds_bucket{le=\"0.1\"} 0",
            "risksense_visible_latency_seconds_bucket{le=\"0.25\"} 5",
            "risksense_visible_latency_seconds_count 5",
            "risksense_arrival_latency_seconds_bucket{le=\"0.005\"} 1",
            "risksense_arrival_latency_seconds_count 1",
        ] {
            assert!(has(line), "{line} in\n{text}");
        }
        // OpenMetrics, as Prometheus asks for it first.
        let mut registry = Registry::default();
        StreamMetrics::register(metrics.clone(), &mut registry);
        let mut open = String::new();
        prometheus_client::encoding::text::encode(&mut open, &registry).expect("encode");
        assert!(open.contains("risksense_stage_seconds_total{stage=\"poll\"} 3.5"));
        assert!(open.ends_with("# EOF\n"));
    }

    #[test]
    fn recording_is_cheap() {
        let histogram = LatencyHistogram::default();
        let started = std::time::Instant::now();
        for i in 0..1_000_000u64 {
            histogram.record(i % 5_000, 1);
        }
        let elapsed = started.elapsed();
        assert_eq!(histogram.count(), 1_000_000);
        // About 20 ns a record in the dev profile; the bound only catches a pathology.
        assert!(elapsed.as_secs_f64() < 2.0, "{elapsed:?} for 1e6 records");
        eprintln!("1e6 records: {elapsed:?}");
    }
}
