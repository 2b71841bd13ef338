//! Counters and latency histograms of a running stream, shared with whoever reports them
//! (the run summary, the HTTP `/metrics` endpoint).

use std::sync::atomic::{AtomicU64, Ordering};

/// Millisecond-resolution latency histogram up to 60 s (one bucket per ms; beyond that,
/// the last bucket). Lock-free: the engine records, readers take quantiles.
pub struct LatencyHistogram {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_ms: AtomicU64,
}

const MAX_MS: usize = 60_000;

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..=MAX_MS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_ms: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    /// Records `n` observations of `ms` milliseconds.
    pub fn record(&self, ms: u64, n: u64) {
        let bucket = (ms as usize).min(MAX_MS);
        self.buckets[bucket].fetch_add(n, Ordering::Relaxed);
        self.count.fetch_add(n, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms * n, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The smallest `ms` with at least `q` of the observations at or below it.
    pub fn quantile_ms(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let wanted = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (ms, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= wanted {
                return ms as u64;
            }
        }
        MAX_MS as u64
    }

    /// Cumulative counts at the given upper bounds (ms), for Prometheus buckets.
    pub fn cumulative(&self, bounds_ms: &[u64]) -> Vec<u64> {
        let mut out = Vec::with_capacity(bounds_ms.len());
        let mut seen = 0;
        let mut next = 0;
        for (ms, bucket) in self.buckets.iter().enumerate() {
            while next < bounds_ms.len() && (bounds_ms[next] as usize) < ms {
                out.push(seen);
                next += 1;
            }
            seen += bucket.load(Ordering::Relaxed);
        }
        while out.len() < bounds_ms.len() {
            out.push(seen);
        }
        out
    }

    pub fn sum_ms(&self) -> u64 {
        self.sum_ms.load(Ordering::Relaxed)
    }
}

/// What the stream has done so far.
#[derive(Default)]
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
    /// Messages behind the end of the assigned partitions at the last checkpoint.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_buckets() {
        let histogram = LatencyHistogram::default();
        for ms in 1..=100 {
            histogram.record(ms, 1);
        }
        assert_eq!(histogram.quantile_ms(0.5), 50);
        assert_eq!(histogram.quantile_ms(0.99), 99);
        assert_eq!(histogram.quantile_ms(1.0), 100);
        assert_eq!(histogram.cumulative(&[10, 50, 1000]), vec![10, 50, 100]);
        histogram.record(1_000_000, 1);
        assert_eq!(histogram.quantile_ms(1.0), 60_000);
    }
}
