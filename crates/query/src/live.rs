//! The live window: the last minutes of scored rows, kept in memory as Arrow for ad-hoc SQL
//! over the stream (`POST /v1/sql`, table `scored`).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;

/// Scored micro-batches of the last `span`, at most `max_rows` rows (oldest dropped first).
#[derive(Debug)]
pub struct LiveWindow {
    span: Duration,
    max_rows: usize,
    batches: Mutex<VecDeque<(Instant, RecordBatch)>>,
}

impl LiveWindow {
    pub fn new(span: Duration, max_rows: usize) -> Self {
        Self {
            span,
            max_rows: max_rows.max(1),
            batches: Mutex::new(VecDeque::new()),
        }
    }

    pub fn push(&self, batch: RecordBatch) {
        if batch.num_rows() == 0 {
            return;
        }
        let mut batches = self.batches.lock().unwrap_or_else(|e| e.into_inner());
        batches.push_back((Instant::now(), batch));
        let mut rows: usize = batches.iter().map(|(_, b)| b.num_rows()).sum();
        while let Some((at, oldest)) = batches.front() {
            if rows <= self.max_rows && at.elapsed() <= self.span {
                break;
            }
            rows -= oldest.num_rows();
            batches.pop_front();
        }
    }

    /// The rows now in the window (cheap: batches are shared, not copied).
    pub fn snapshot(&self) -> Vec<RecordBatch> {
        let batches = self.batches.lock().unwrap_or_else(|e| e.into_inner());
        batches
            .iter()
            .filter(|(at, _)| at.elapsed() <= self.span)
            .map(|(_, b)| b.clone())
            .collect()
    }

    pub fn rows(&self) -> usize {
        self.snapshot().iter().map(|b| b.num_rows()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use std::sync::Arc;

    fn batch(n: i64) -> RecordBatch {
        RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from_iter_values(0..n)) as _)])
            .expect("batch")
    }

    #[test]
    fn keeps_at_most_max_rows_newest_first() {
        let window = LiveWindow::new(Duration::from_secs(60), 25);
        for _ in 0..5 {
            window.push(batch(10));
        }
        assert_eq!(window.rows(), 20);
        let span = LiveWindow::new(Duration::from_millis(1), 1000);
        span.push(batch(10));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(span.rows(), 0);
    }
}
