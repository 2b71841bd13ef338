//! Per-card window functions of sql/features.sql, each one pass over a partition.
//!
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
//!
//! `mean_of_previous(value, n) OVER (… ORDER BY …)`: the mean of the non-null `value`s of
//! the `n` rows before the current one (NULL when there are none), which is what
//! `avg(value) OVER (… ROWS BETWEEN n PRECEDING AND 1 PRECEDING)` means. DataFusion runs
//! that frame as a sliding accumulator with per-row slicing, which cost more than all
//! the other card windows together in the stream's profile; here each row sums its `n`
//! values afresh, oldest first, so a row's mean is the same floating-point sum however
//! many earlier rows the partition holds (a stream's history or a whole file).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::function::{PartitionEvaluatorArgs, WindowUDFFieldArgs};
use datafusion::logical_expr::{PartitionEvaluator, Signature, Volatility, WindowUDFImpl};

/// Width of the window, in seconds, both ends included: 24 hours.
pub const WINDOW_SECS: i64 = 86_399;

/// One of our window functions: a name and an evaluator, with a Float64 result. (The
/// evaluators take their inputs at evaluation, so one shape serves them all.)
#[derive(Debug)]
pub struct CardWindow {
    name: &'static str,
    signature: Signature,
    evaluator: fn() -> Box<dyn PartitionEvaluator>,
}

impl CardWindow {
    /// `rolling_sum_24h(event_secs, value)`.
    pub fn rolling_sum_24h() -> Self {
        Self {
            name: "rolling_sum_24h",
            signature: Signature::any(2, Volatility::Immutable),
            evaluator: || Box::new(RollingSumEvaluator),
        }
    }

    /// `mean_of_previous(value, rows)`.
    pub fn mean_of_previous() -> Self {
        Self {
            name: "mean_of_previous",
            signature: Signature::any(2, Volatility::Immutable),
            evaluator: || Box::new(MeanOfPreviousEvaluator),
        }
    }
}

// Identity is the name (DataFusion compares UDFs; function pointers do not compare
// reliably).
impl PartialEq for CardWindow {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for CardWindow {}

impl std::hash::Hash for CardWindow {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl WindowUDFImpl for CardWindow {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn partition_evaluator(
        &self,
        _: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        Ok((self.evaluator)())
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

#[derive(Debug)]
struct MeanOfPreviousEvaluator;

/// For each row `i`: the mean of the non-null `values[j]` for `i - n <= j < i`, or None.
pub fn means_of_previous(values: &[Option<f64>], n: usize) -> Vec<Option<f64>> {
    (0..values.len())
        .map(|i| {
            let (sum, count) = values[i.saturating_sub(n)..i]
                .iter()
                .flatten()
                .fold((0.0f64, 0u32), |(sum, count), v| (sum + v, count + 1));
            (count > 0).then(|| sum / f64::from(count))
        })
        .collect()
}

impl PartitionEvaluator for MeanOfPreviousEvaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        if values.len() != 2 {
            return exec_err!("mean_of_previous takes (value, rows)");
        }
        let rows = cast(&values[1], &DataType::Int64)?;
        let rows = rows.as_primitive::<Int64Type>();
        let n = match (0..rows.len()).find(|&i| rows.is_valid(i)) {
            Some(i) if rows.value(i) >= 0 => rows.value(i) as usize,
            _ => return exec_err!("mean_of_previous: rows must be a non-negative integer"),
        };
        let amounts = cast(&values[0], &DataType::Float64)?;
        let amounts = amounts.as_primitive::<Float64Type>();
        let values: Vec<Option<f64>> = (0..num_rows)
            .map(|i| amounts.is_valid(i).then(|| amounts.value(i)))
            .collect();
        Ok(Arc::new(Float64Array::from(means_of_previous(&values, n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_of_the_rows_before_the_current_one() {
        let values = [Some(1.0), Some(2.0), None, Some(6.0), Some(10.0)];
        assert_eq!(
            means_of_previous(&values, 2),
            vec![None, Some(1.0), Some(1.5), Some(2.0), Some(6.0)]
        );
        // n larger than the partition: everything before.
        assert_eq!(
            means_of_previous(&values, 30),
            vec![None, Some(1.0), Some(1.5), Some(1.5), Some(3.0)]
        );
        assert_eq!(means_of_previous(&values, 0), vec![None; 5]);
    }

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
