//! Per-card window functions of sql/features.sql, each one pass over a partition.
//!
//! Each takes the card and the row's event time (seconds) first and is meant for a window
//! `OVER (PARTITION BY card ORDER BY event_secs, <arrival order>)`:
//!
//! - `rolling_sum_24h(card, event_secs, value)`: the sum of `value` over the partition's
//!   rows up to and including the current one (in the window's order) whose `event_secs`
//!   lies in the 24 hours ending at the current row (`[t - 86399, t]`). Rows later in the
//!   order never count, even with the same second: a row's sums depend only on rows before
//!   it, which a stream has already seen (a RANGE frame would add same-second rows that a
//!   stream may not have received yet). One pass, two pointers: DataFusion's generic RANGE
//!   frame spent most of a rescoring run on these sums.
//! - `mean_of_previous(card, event_secs, value, n)`: the mean of the non-null `value`s of
//!   the `n` rows before the current one (NULL when there are none), which is what
//!   `avg(value) OVER (… ROWS BETWEEN n PRECEDING AND 1 PRECEDING)` means. DataFusion runs
//!   that frame as a sliding accumulator with per-row slicing, which cost more than all the
//!   other card windows together in the stream's profile; here each row sums its `n`
//!   values afresh, oldest first, so a row's mean is the same floating-point sum however
//!   many earlier rows the partition holds (a stream's history or a whole file).
//! - `secs_since_previous(card, event_secs)`: seconds since the card's previous row (NULL
//!   for its first), i.e. `event_secs - lag(event_secs)`.
//! - `mean_24h(card, event_secs, value)`: the mean of the non-null `value`s over the rows
//!   `rolling_sum_24h` sums (NULL when there are none): sql/score.sql's mean of the card's
//!   recent scores.
//!
//! Why the card is an argument: in a batch job a partition holds all of a card's rows and
//! the card is not needed. The live stream registers the same functions with a
//! [`CardHistory`]: a micro-batch holds only a card's new rows, and each call finds the
//! card's earlier rows (what that call needs of them: its own `(event_secs, value)` pairs)
//! in the history under the card, computes over history ∪ new rows, and stages the new
//! history. Same SQL, same arithmetic, over the same preceding rows: the stream's features
//! equal a batch job's (engine/tests/stream.rs checks it).

mod history;
mod plan;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, PrimitiveArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::function::{PartitionEvaluatorArgs, WindowUDFFieldArgs};
use datafusion::logical_expr::{PartitionEvaluator, Signature, Volatility, WindowUDFImpl};

use history::StagedCall;
pub use history::{
    CardHistory, HistoryError, HistorySnapshot, SEEN_KEEP_ROWS, Seen, SiteId, trans_num_hash,
};
pub use plan::order_by_card;

/// Width of the window, in seconds, both ends included: 24 hours.
pub const WINDOW_SECS: i64 = 86_399;

/// Which of the card windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    RollingSum24h,
    MeanOfPrevious,
    SecsSincePrevious,
    Mean24h,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::RollingSum24h,
        Kind::MeanOfPrevious,
        Kind::SecsSincePrevious,
        Kind::Mean24h,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::RollingSum24h => "rolling_sum_24h",
            Kind::MeanOfPrevious => "mean_of_previous",
            Kind::SecsSincePrevious => "secs_since_previous",
            Kind::Mean24h => "mean_24h",
        }
    }

    fn arguments(self) -> usize {
        match self {
            Kind::RollingSum24h | Kind::Mean24h => 3,
            Kind::MeanOfPrevious => 4,
            Kind::SecsSincePrevious => 2,
        }
    }

    fn usage(self) -> &'static str {
        match self {
            Kind::RollingSum24h => "rolling_sum_24h(card, event_secs, value)",
            Kind::MeanOfPrevious => "mean_of_previous(card, event_secs, value, rows)",
            Kind::SecsSincePrevious => "secs_since_previous(card, event_secs)",
            Kind::Mean24h => "mean_24h(card, event_secs, value)",
        }
    }
}

/// One of the card window functions, optionally carrying a stream's per-card history.
#[derive(Debug)]
pub struct CardWindow {
    kind: Kind,
    signature: Signature,
    history: Option<Arc<CardHistory>>,
}

impl CardWindow {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            signature: Signature::any(kind.arguments(), Volatility::Immutable),
            history: None,
        }
    }

    /// `rolling_sum_24h(card, event_secs, value)`.
    pub fn rolling_sum_24h() -> Self {
        Self::new(Kind::RollingSum24h)
    }

    /// `mean_of_previous(card, event_secs, value, rows)`.
    pub fn mean_of_previous() -> Self {
        Self::new(Kind::MeanOfPrevious)
    }

    /// `secs_since_previous(card, event_secs)`.
    pub fn secs_since_previous() -> Self {
        Self::new(Kind::SecsSincePrevious)
    }

    /// `mean_24h(card, event_secs, value)`.
    pub fn mean_24h() -> Self {
        Self::new(Kind::Mean24h)
    }

    /// All of them, for a batch session.
    pub fn all() -> Vec<Self> {
        Kind::ALL.into_iter().map(Self::new).collect()
    }

    /// All of them, reading and staging each card's earlier rows in `history` (a stream).
    pub fn all_with_history(history: &Arc<CardHistory>) -> Vec<Self> {
        Self::all()
            .into_iter()
            .map(|mut window| {
                window.history = Some(history.clone());
                window
            })
            .collect()
    }
}

// Identity is the function (DataFusion compares UDFs); a session holds one of each.
impl PartialEq for CardWindow {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
    }
}

impl Eq for CardWindow {}

impl std::hash::Hash for CardWindow {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
    }
}

impl WindowUDFImpl for CardWindow {
    fn name(&self) -> &str {
        self.kind.name()
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn partition_evaluator(
        &self,
        args: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        // (The signature has checked the number of arguments.) In a stream, the call's
        // place in the plan names its history (see CardHistory).
        let site = self.history.as_ref().map(|history| {
            (
                history.clone(),
                history.site(self.kind.name(), args.input_exprs()),
            )
        });
        Ok(Box::new(CardEvaluator {
            kind: self.kind,
            site,
        }))
    }
    fn field(&self, field_args: WindowUDFFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(
            field_args.name(),
            DataType::Float64,
            true,
        )))
    }
}

/// One earlier (or current) row as a window call sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry {
    pub secs: i64,
    pub value: Option<f64>,
}

#[derive(Debug)]
struct CardEvaluator {
    kind: Kind,
    site: Option<(Arc<CardHistory>, SiteId)>,
}

/// The non-null Int64 values of an argument (`what` names it in the error).
fn int64_values(values: &ArrayRef, kind: Kind, what: &str) -> Result<PrimitiveArray<Int64Type>> {
    // Called for every card of every micro-batch: no cast (a copy) when the type is right.
    let array = match values.as_primitive_opt::<Int64Type>() {
        Some(array) => array.clone(),
        None => cast(values, &DataType::Int64)?
            .as_primitive::<Int64Type>()
            .clone(),
    };
    if array.null_count() > 0 {
        return exec_err!("{}: {what} must not be null", kind.name());
    }
    Ok(array)
}

/// The Float64 values of an argument.
fn float64_values(values: &ArrayRef) -> Result<PrimitiveArray<Float64Type>> {
    Ok(match values.as_primitive_opt::<Float64Type>() {
        Some(array) => array.clone(),
        None => cast(values, &DataType::Float64)?
            .as_primitive::<Float64Type>()
            .clone(),
    })
}

impl PartitionEvaluator for CardEvaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        let kind = self.kind;
        if values.len() != kind.arguments() {
            return exec_err!("{} takes {} arguments", kind.usage(), kind.arguments());
        }
        let cards = int64_values(&values[0], kind, "card")?;
        let secs = int64_values(&values[1], kind, "event_secs")?;
        let rows: Vec<Entry> = match kind {
            Kind::SecsSincePrevious => secs
                .values()
                .iter()
                .map(|&secs| Entry { secs, value: None })
                .collect(),
            Kind::RollingSum24h | Kind::MeanOfPrevious | Kind::Mean24h => {
                let amounts = float64_values(&values[2])?;
                (0..num_rows)
                    .map(|i| Entry {
                        secs: secs.value(i),
                        value: amounts.is_valid(i).then(|| amounts.value(i)),
                    })
                    .collect()
            }
        };
        let keep_rows = match kind {
            Kind::MeanOfPrevious => {
                let n = int64_values(&values[3], kind, "rows")?;
                match n.values().first() {
                    Some(&n) if n >= 0 => n as usize,
                    Some(_) => return exec_err!("mean_of_previous: rows must not be negative"),
                    None => 0,
                }
            }
            Kind::SecsSincePrevious => 1,
            Kind::RollingSum24h | Kind::Mean24h => 0,
        };
        // A partition holds one card (PARTITION BY card, as in a batch job) or several,
        // ordered by card first (the stream's plan: one call per micro-batch instead of
        // one per card, see `order_by_card`); each card's rows are one run.
        let mut out = Vec::with_capacity(num_rows);
        let mut previous_card = None;
        let mut start = 0;
        let reader = self
            .site
            .as_ref()
            .map(|(history, site)| (history.reader(), *site));
        // Every card's merged pairs go into one buffer, and what each keeps is a range of
        // it: no vector per card.
        let mut staged = StagedCall::default();
        // Where a card's new rows went in its merge with history (one buffer for all cards).
        let mut positions = Vec::new();
        for run in cards.values().chunk_by(|a, b| a == b) {
            let card = run[0];
            let rows = &rows[start..start + run.len()];
            start += run.len();
            if previous_card.is_some_and(|previous| previous >= card) {
                return exec_err!(
                    "{} needs its window partitioned by the card or ordered by it first",
                    kind.name()
                );
            }
            previous_card = Some(card);
            if rows.windows(2).any(|pair| pair[1].secs < pair[0].secs) {
                return exec_err!("{} needs its window ordered by event_secs", kind.name());
            }
            match &reader {
                None => compute_at(kind, rows, 0..rows.len(), keep_rows, &mut out),
                Some((history, site)) => {
                    let start = staged.entries.len();
                    merge_into(
                        history.entries(card, *site),
                        rows,
                        &mut positions,
                        &mut staged.entries,
                    );
                    compute_at(
                        kind,
                        &staged.entries[start..],
                        positions.iter().copied(),
                        keep_rows,
                        &mut out,
                    );
                    let kept_from = retain_from(kind, &mut staged.entries, start, keep_rows);
                    staged
                        .cards
                        .push((card, *site, kept_from, staged.entries.len()));
                }
            }
        }
        // The read lock goes before staging; a call that failed above staged nothing.
        drop(reader);
        if let Some((history, _)) = &self.site {
            history.stage_all(staged);
        }
        Ok(to_array(out))
    }
}

fn to_array(values: Vec<Option<f64>>) -> ArrayRef {
    Arc::new(Float64Array::from(values))
}

/// The window's results for the rows at `positions` (ascending) of `rows` (one card's, in
/// window order), appended to `out`: the arithmetic of [`rolling_sums`], [`means_24h`] and
/// [`means_of_previous`] step for step, in one pass and without their vectors (made per
/// card at each of the plan's eight windows per micro-batch, they were a large part of the
/// engine's allocations at the drain).
fn compute_at(
    kind: Kind,
    rows: &[Entry],
    positions: impl IntoIterator<Item = usize>,
    n: usize,
    out: &mut Vec<Option<f64>>,
) {
    match kind {
        Kind::RollingSum24h | Kind::Mean24h => {
            // Nulls add nothing to the sum, like SUM, and count for nothing in the mean.
            let (mut low, mut next) = (0usize, 0usize);
            let (mut sum, mut count) = (0.0f64, 0.0f64);
            for p in positions {
                debug_assert!(p >= next, "positions ascend");
                while next <= p {
                    let t = rows[next].secs;
                    sum += rows[next].value.unwrap_or(0.0);
                    count += f64::from(u8::from(rows[next].value.is_some()));
                    next += 1;
                    while low < next && rows[low].secs < t - WINDOW_SECS {
                        sum -= rows[low].value.unwrap_or(0.0);
                        count -= f64::from(u8::from(rows[low].value.is_some()));
                        low += 1;
                    }
                }
                out.push(match kind {
                    Kind::RollingSum24h => Some(sum),
                    _ => (count > 0.0).then(|| sum / count),
                });
            }
        }
        Kind::MeanOfPrevious => out.extend(positions.into_iter().map(|p| {
            let (sum, count) = rows[p.saturating_sub(n)..p]
                .iter()
                .filter_map(|r| r.value)
                .fold((0.0f64, 0u32), |(sum, count), v| (sum + v, count + 1));
            (count > 0).then(|| sum / f64::from(count))
        })),
        Kind::SecsSincePrevious => out.extend(
            positions
                .into_iter()
                .map(|p| (p > 0).then(|| (rows[p].secs - rows[p - 1].secs) as f64)),
        ),
    }
}

/// `earlier` (a card's history, in order) and `rows` (its new rows, in order) in one
/// order, appended to `out`, and where each new row went (from the start of what was
/// appended). On equal seconds history goes first: it arrived earlier on the card's
/// partition, and the window orders same-second rows by arrival. New rows normally all
/// come after history; a late one goes by its event time.
fn merge_into(earlier: &[Entry], rows: &[Entry], positions: &mut Vec<usize>, out: &mut Vec<Entry>) {
    let start = out.len();
    out.reserve(earlier.len() + rows.len());
    positions.clear();
    let mut e = 0;
    for row in rows {
        while e < earlier.len() && earlier[e].secs <= row.secs {
            out.push(earlier[e]);
            e += 1;
        }
        positions.push(out.len() - start);
        out.push(*row);
    }
    out.extend_from_slice(&earlier[e..]);
}

/// What a later row of the card can still need, of the card's rows `entries[start..]`
/// (in window order): the last `keep_rows` rows and every row of the 24 hours before the
/// latest one (exact for rows that arrive in event-time order, which one Kafka key per
/// card gives; a row later than that is placed by its event time among what is kept).
/// Returns where the kept rows begin; `mean_24h`'s nulls are dropped from them.
fn retain_from(kind: Kind, entries: &mut Vec<Entry>, start: usize, keep_rows: usize) -> usize {
    let rows = &entries[start..];
    let Some(latest) = rows.last().map(|r| r.secs) else {
        return start;
    };
    let by_count = rows.len().saturating_sub(keep_rows);
    let by_time = match kind {
        Kind::RollingSum24h | Kind::Mean24h => {
            rows.partition_point(|r| r.secs < latest - WINDOW_SECS)
        }
        Kind::MeanOfPrevious | Kind::SecsSincePrevious => by_count,
    };
    let from = start + by_count.min(by_time);
    if kind == Kind::Mean24h {
        // Nulls count for nothing in the mean (a challenger's scores without one).
        let mut kept = from;
        for i in from..entries.len() {
            if entries[i].value.is_some() {
                entries[kept] = entries[i];
                kept += 1;
            }
        }
        entries.truncate(kept);
    }
    from
}

/// [`merge_into`] a new vector.
#[cfg(test)]
fn merge(earlier: &[Entry], rows: &[Entry], positions: &mut Vec<usize>) -> Vec<Entry> {
    let mut merged = Vec::new();
    merge_into(earlier, rows, positions, &mut merged);
    merged
}

/// [`retain_from`] on a card's rows alone.
#[cfg(test)]
fn retain(kind: Kind, mut rows: Vec<Entry>, keep_rows: usize) -> Vec<Entry> {
    let from = retain_from(kind, &mut rows, 0, keep_rows);
    rows.drain(..from);
    rows
}

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

/// For each row `i` of one partition sorted by `secs`: the mean of the non-null
/// `values[j]` among the rows [`rolling_sums`] sums for it (None when there are none).
/// `mean_24h`'s arithmetic, which `/v1/score` applies to a request's rows too.
pub fn means_24h(secs: &[i64], values: &[Option<f64>]) -> Vec<Option<f64>> {
    let sums: Vec<f64> = values.iter().map(|v| v.unwrap_or(0.0)).collect();
    let counts: Vec<f64> = values
        .iter()
        .map(|v| f64::from(u8::from(v.is_some())))
        .collect();
    rolling_sums(secs, &sums)
        .into_iter()
        .zip(rolling_sums(secs, &counts))
        .map(|(sum, count)| (count > 0.0).then(|| sum / count))
        .collect()
}

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

    #[test]
    fn mean_of_the_last_24_hours_skips_nulls() {
        let rows: Vec<Entry> = [
            (0, Some(1.0)),
            (10, None),
            (20, Some(3.0)),
            (86_420, Some(6.0)),
        ]
        .into_iter()
        .map(|(secs, value)| Entry { secs, value })
        .collect();
        // The last row's day is [21, 86420]: only itself.
        assert_eq!(
            compute(Kind::Mean24h, &rows, 0),
            vec![Some(1.0), Some(1.0), Some(2.0), Some(6.0)]
        );
        let none = [Entry {
            secs: 5,
            value: None,
        }];
        assert_eq!(compute(Kind::Mean24h, &none, 0), vec![None]);
    }

    /// Each kind of window, with the rows it keeps (`n`).
    const EVERY_KIND: [(Kind, usize); 4] = [
        (Kind::RollingSum24h, 0),
        (Kind::Mean24h, 0),
        (Kind::MeanOfPrevious, 30),
        (Kind::SecsSincePrevious, 1),
    ];

    /// Every row's result, from the public functions the batch paths use.
    fn compute(kind: Kind, rows: &[Entry], n: usize) -> Vec<Option<f64>> {
        let secs: Vec<i64> = rows.iter().map(|r| r.secs).collect();
        let values: Vec<Option<f64>> = rows.iter().map(|r| r.value).collect();
        match kind {
            Kind::RollingSum24h => {
                let values: Vec<f64> = values.iter().map(|v| v.unwrap_or(0.0)).collect();
                rolling_sums(&secs, &values).into_iter().map(Some).collect()
            }
            Kind::MeanOfPrevious => means_of_previous(&values, n),
            Kind::SecsSincePrevious => (0..rows.len())
                .map(|i| (i > 0).then(|| (rows[i].secs - rows[i - 1].secs) as f64))
                .collect(),
            Kind::Mean24h => means_24h(&secs, &values),
        }
    }

    /// The one-pass arithmetic at any positions gives exactly (bit for bit) what the
    /// public functions give for those rows.
    #[test]
    fn results_at_positions_are_the_whole_computation_s_bit_for_bit() {
        let rows: Vec<Entry> = (0..300i64)
            .map(|i| Entry {
                secs: i * 3_001 + (i % 5) * 20_000,
                value: (i % 7 != 0).then_some(((i * 53) % 97) as f64 * 0.37),
            })
            .collect::<Vec<_>>();
        let mut rows = rows;
        rows.sort_by_key(|r| r.secs);
        for (kind, n) in EVERY_KIND {
            let whole = compute(kind, &rows, n);
            let mut all = Vec::new();
            compute_at(kind, &rows, 0..rows.len(), n, &mut all);
            let bits = |v: &[Option<f64>]| -> Vec<Option<u64>> {
                v.iter().map(|x| x.map(f64::to_bits)).collect()
            };
            assert_eq!(bits(&all), bits(&whole), "{kind:?}");
            let some: Vec<usize> = (0..rows.len())
                .filter(|i| i % 4 == 1 || *i == 299)
                .collect();
            let mut at = vec![Some(-1.0)];
            compute_at(kind, &rows, some.iter().copied(), n, &mut at);
            let expected: Vec<Option<f64>> = std::iter::once(Some(-1.0))
                .chain(some.iter().map(|&p| whole[p]))
                .collect();
            assert_eq!(bits(&at), bits(&expected), "{kind:?} at positions");
        }
    }

    fn entries(secs: &[i64]) -> Vec<Entry> {
        secs.iter()
            .map(|&s| Entry {
                secs: s,
                value: Some(s as f64),
            })
            .collect()
    }

    #[test]
    fn history_goes_before_new_rows_of_the_same_second_and_late_rows_go_by_time() {
        let earlier = entries(&[10, 20, 30]);
        let mut positions = vec![7];
        let merged = merge(&earlier, &entries(&[30, 40]), &mut positions);
        assert_eq!(merged, entries(&[10, 20, 30, 30, 40]));
        assert_eq!(positions, vec![3, 4]);
        let merged = merge(&earlier, &entries(&[15, 35]), &mut positions);
        assert_eq!(merged, entries(&[10, 15, 20, 30, 35]));
        assert_eq!(positions, vec![1, 4]);
    }

    /// A window call keeps every card's pairs in one buffer: a card's merge and trim touch
    /// only its own part of it, after the cards before it.
    #[test]
    fn cards_share_one_buffer_without_touching_each_other() {
        let day = WINDOW_SECS + 1;
        let first = entries(&[5, 6]);
        let mut buffer = Vec::new();
        let mut positions = Vec::new();
        merge_into(&[], &first, &mut positions, &mut buffer);
        let first_from = retain_from(Kind::Mean24h, &mut buffer, 0, 0);
        let first_end = buffer.len();
        // The second card: history, a null score, a new row a day later.
        let earlier = entries(&[10, 20]);
        let new_rows = [
            Entry {
                secs: 30,
                value: None,
            },
            Entry {
                secs: day + 20,
                value: Some(1.0),
            },
        ];
        let start = buffer.len();
        merge_into(&earlier, &new_rows, &mut positions, &mut buffer);
        assert_eq!(positions, vec![2, 3], "from the card's own start");
        assert_eq!(buffer[start..].len(), 4);
        let from = retain_from(Kind::Mean24h, &mut buffer, start, 0);
        // Its last day is [21, day + 20]: the null at 30 is dropped, the earlier card kept.
        assert_eq!(
            buffer[from..],
            [Entry {
                secs: day + 20,
                value: Some(1.0)
            }]
        );
        assert_eq!(buffer[first_from..first_end], first[..]);
        // The same as trimming the card's rows alone.
        let mut alone = positions.clone();
        let merged = merge(&earlier, &new_rows, &mut alone);
        assert_eq!(retain(Kind::Mean24h, merged, 0), buffer[from..].to_vec());
    }

    #[test]
    fn keeps_what_later_rows_need() {
        let day = WINDOW_SECS + 1;
        let rows = entries(&[0, 10, day, day + 5, 2 * day]);
        // The 24 h sums need the rows of the last 24 h only: [day + 1, 2 day].
        assert_eq!(
            retain(Kind::RollingSum24h, rows.clone(), 0),
            entries(&[day + 5, 2 * day])
        );
        assert_eq!(
            retain(Kind::RollingSum24h, entries(&[0, day - 1, day]), 0),
            entries(&[day - 1, day])
        );
        // The mean needs its last n rows, the previous row the last one.
        assert_eq!(
            retain(Kind::MeanOfPrevious, rows.clone(), 3),
            entries(&[day, day + 5, 2 * day])
        );
        assert_eq!(retain(Kind::MeanOfPrevious, rows.clone(), 30), rows);
        assert_eq!(
            retain(Kind::SecsSincePrevious, rows, 1),
            entries(&[2 * day])
        );
    }

    /// A card's rows scored in pieces with history give what one pass over all of them
    /// gives, for every kind.
    #[test]
    fn pieces_with_history_equal_one_pass() {
        let secs: Vec<i64> = (0..200).map(|i| i * 7_001 + (i % 3) * 40_000).collect();
        let mut rows: Vec<Entry> = secs
            .iter()
            .enumerate()
            .map(|(i, &s)| Entry {
                secs: s,
                value: (i % 11 != 0).then_some((i * 37 % 101) as f64),
            })
            .collect();
        rows.sort_by_key(|r| r.secs);
        for (kind, n) in EVERY_KIND {
            let whole = compute(kind, &rows, n);
            let mut kept: Vec<Entry> = Vec::new();
            let mut pieces = Vec::new();
            let mut positions = Vec::new();
            for piece in rows.chunks(13) {
                let merged = merge(&kept, piece, &mut positions);
                compute_at(kind, &merged, positions.iter().copied(), n, &mut pieces);
                kept = retain(kind, merged, n);
            }
            assert_eq!(pieces.len(), whole.len());
            for (i, (a, b)) in pieces.iter().zip(&whole).enumerate() {
                match (a, b) {
                    (Some(a), Some(b)) => {
                        assert!(
                            (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                            "{kind:?} row {i}: {a} vs {b}"
                        )
                    }
                    _ => assert_eq!(a, b, "{kind:?} row {i}"),
                }
            }
        }
    }
}
