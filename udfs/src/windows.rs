//! `rolling_sum_24h(event_secs, value) OVER (PARTITION BY card ORDER BY event_secs, …)`: the
//! sum of `value` over the partition's rows up to and including the current one (in the
//! window's order) whose `event_secs` lies in the 24 hours ending at the current row
//! (`[t - 86399, t]`).
//!
//! Rows later in the order never count, even with the same second: a row's sums depend
//! only on rows before it, so a stream that has seen a card's transactions up to this one
//! computes exactly what a batch over the whole history computes (a RANGE frame would add
//! same-second rows that a stream may not have received yet). One pass, two pointers:
//! DataFusion's generic RANGE frame spent most of a rescoring run on these sums. It is also
//! the shape of per-card state a stream keeps: the rows of the last 24 hours.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::function::{PartitionEvaluatorArgs, WindowUDFFieldArgs};
use datafusion::logical_expr::{PartitionEvaluator, Signature, Volatility, WindowUDFImpl};

/// Width of the window, in seconds, both ends included: 24 hours.
pub const WINDOW_SECS: i64 = 86_399;

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct RollingSum24h {
    signature: Signature,
}

impl Default for RollingSum24h {
    fn default() -> Self {
        Self {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl WindowUDFImpl for RollingSum24h {
    fn name(&self) -> &str {
        "rolling_sum_24h"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn partition_evaluator(
        &self,
        _: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        Ok(Box::new(RollingSumEvaluator))
    }
    fn field(&self, field_args: WindowUDFFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(
            field_args.name(),
            DataType::Float64,
            true,
        )))
    }
}

#[derive(Debug)]
struct RollingSumEvaluator;

/// For each row `i` of one partition sorted by `secs`: the sum of `values[j]` for `j <= i`
/// with `secs[j]` in `[secs[i] - WINDOW_SECS, secs[i]]`.
pub fn rolling_sums(secs: &[i64], values: &[f64]) -> Vec<f64> {
    let n = secs.len();
    let mut out = Vec::with_capacity(n);
    let mut low = 0usize;
    let mut sum = 0.0f64;
    for i in 0..n {
        let t = secs[i];
        // Take in the current row (never rows after it, even at the same second).
        sum += values[i];
        let high = i + 1;
        // Let go of rows older than the window.
        while low < high && secs[low] < t - WINDOW_SECS {
            sum -= values[low];
            low += 1;
        }
        out.push(sum);
    }
    out
}

impl PartitionEvaluator for RollingSumEvaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        if values.len() != 2 {
            return exec_err!("rolling_sum_24h takes (event_secs, value)");
        }
        let secs = cast(&values[0], &DataType::Int64)?;
        let amounts = cast(&values[1], &DataType::Float64)?;
        let secs = secs.as_primitive::<Int64Type>();
        let amounts = amounts.as_primitive::<Float64Type>();
        if secs.null_count() > 0 {
            return exec_err!("rolling_sum_24h: event_secs must not be null");
        }
        // Nulls add nothing, like SUM.
        let values: Vec<f64> = (0..num_rows)
            .map(|i| {
                if amounts.is_null(i) {
                    0.0
                } else {
                    amounts.value(i)
                }
            })
            .collect();
        for pair in secs.values().windows(2) {
            if pair[1] < pair[0] {
                return exec_err!("rolling_sum_24h needs its window ordered by event_secs");
            }
        }
        Ok(Arc::new(Float64Array::from(rolling_sums(
            secs.values(),
            &values,
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_last_24_hours_up_to_the_current_row() {
        let secs = [0, 10, 10, 86_399, 86_400, 86_410, 200_000];
        let values = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
        // Brute force: every row up to this one within [t - 86399, t].
        let expected: Vec<f64> = (0..secs.len())
            .map(|i| {
                (0..=i)
                    .filter(|&j| secs[j] >= secs[i] - WINDOW_SECS)
                    .map(|j| values[j])
                    .sum()
            })
            .collect();
        assert_eq!(rolling_sums(&secs, &values), expected);
        // The second row at t = 10 does not see the third (same second, later in order).
        assert_eq!(expected, vec![1.0, 3.0, 7.0, 15.0, 30.0, 56.0, 64.0]);
    }
}
