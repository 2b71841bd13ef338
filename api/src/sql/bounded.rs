//! Bounds on the functions that build a value far larger than their arguments.
//!
//! DataFusion's memory pool counts what operators buffer, not what a scalar function
//! allocates for its result: `repeat('x', 2000000000)` allocated 2 GB in one call
//! (measured: 2.4 GB RSS for one query). In ad-hoc sessions these functions are replaced
//! by wrappers that estimate each call's result from the sizes of its arguments, before
//! anything is allocated, and refuse:
//! - a call (one batch) that would build more than the limit;
//! - a call on constants once the query's constants would pass the limit in all: the
//!   planner folds those into literals that live as long as the query, so fifty calls of
//!   60 MB each would otherwise pass one by one.
//!
//! The `||` operator is not a function: `guard` limits how many a query may have.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

/// Bytes one call may build, and the query's constant calls in all.
pub const MAX_CALL_BYTES: u64 = 64 * 1024 * 1024;

/// How a function's result size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(text, n)`: the text's bytes times n.
    Repeat,
    /// `lpad(text, n [, fill])`, `rpad`: n characters (up to 4 bytes each).
    Pad,
    /// `array_repeat(value, n)`, `array_resize(array, n [, value])`: n copies of the value.
    Elements,
    /// `range(start, stop [, step])`, `generate_series(...)` over integers: the elements.
    Range,
    /// `concat(a, b, …)`, `concat_ws(sep, a, …)`: the sum of the arguments (separators
    /// counted once per argument).
    Concat,
    /// `replace(text, from, to)`, `regexp_replace(text, pattern, to, …)`: at worst every
    /// byte of the text replaced by `to`.
    Replace,
}

/// A DataFusion function behind a size check.
#[derive(Debug)]
struct Bounded {
    inner: ScalarUDF,
    growth: Growth,
    /// Bytes the query's constant calls may still build, shared by every wrapper of the
    /// session.
    constants_left: Arc<AtomicU64>,
    limit: u64,
}

impl PartialEq for Bounded {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner && self.growth == other.growth
    }
}

impl Eq for Bounded {}

impl std::hash::Hash for Bounded {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
        self.growth.hash(state);
    }
}

/// Replaces the value-building functions of `ctx` (one query's session) with bounded
/// wrappers: `limit_bytes` per call, and for the query's constant calls in all.
pub fn install(ctx: &SessionContext, limit_bytes: u64) -> Result<()> {
    let constants_left = Arc::new(AtomicU64::new(limit_bytes));
    for (name, growth) in [
        ("repeat", Growth::Repeat),
        ("lpad", Growth::Pad),
        ("rpad", Growth::Pad),
        ("array_repeat", Growth::Elements),
        ("array_resize", Growth::Elements),
        ("range", Growth::Range),
        ("generate_series", Growth::Range),
        ("concat", Growth::Concat),
        ("concat_ws", Growth::Concat),
        ("replace", Growth::Replace),
        ("regexp_replace", Growth::Replace),
    ] {
        let Ok(inner) = ctx.udf(name) else { continue };
        ctx.register_udf(ScalarUDF::new_from_impl(Bounded {
            inner: inner.as_ref().clone(),
            growth,
            constants_left: constants_left.clone(),
            limit: limit_bytes,
        }));
    }
    Ok(())
}

/// The integer at `row` of an argument (None when null or not an integer).
fn int_at(value: &ColumnarValue, row: usize) -> Option<i64> {
    match value {
        ColumnarValue::Scalar(scalar) => match scalar.cast_to(&DataType::Int64).ok()? {
            ScalarValue::Int64(v) => v,
            _ => None,
        },
        ColumnarValue::Array(array) => {
            let ints: ArrayRef = arrow::compute::cast(array, &DataType::Int64).ok()?;
            let ints = ints.as_primitive::<Int64Type>();
            (!ints.is_null(row)).then(|| ints.value(row))
        }
    }
}

/// Bytes of the value at `row` of an argument: a text's length, a list's or struct's
/// memory (at least 8: an element's slot).
fn bytes_at(value: &ColumnarValue, row: usize) -> u64 {
    let scalar_bytes = |scalar: &ScalarValue| match scalar {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => s.len() as u64,
        other => (other.size() as u64).max(8),
    };
    match value {
        ColumnarValue::Scalar(scalar) => scalar_bytes(scalar),
        ColumnarValue::Array(array) => match array.data_type() {
            DataType::Utf8 => text_len(array.as_string::<i32>(), row),
            DataType::LargeUtf8 => text_len(array.as_string::<i64>(), row),
            _ => ScalarValue::try_from_array(array, row)
                .map(|s| scalar_bytes(&s))
                .unwrap_or(8),
        },
    }
}

fn text_len<O: arrow::array::OffsetSizeTrait>(
    array: &arrow::array::GenericStringArray<O>,
    row: usize,
) -> u64 {
    if array.is_null(row) {
        0
    } else {
        array.value(row).len() as u64
    }
}

impl Bounded {
    /// The bytes one row of the call builds.
    fn row_bytes(&self, args: &[ColumnarValue], row: usize) -> u64 {
        let count = |i: usize| args.get(i).and_then(|a| int_at(a, row)).unwrap_or(0).max(0) as u64;
        let size = |i: usize| args.get(i).map_or(0, |a| bytes_at(a, row));
        match self.growth {
            Growth::Repeat => count(1).saturating_mul(size(0)),
            Growth::Pad => count(1).saturating_mul(4),
            Growth::Elements => count(1).saturating_mul(size(0).max(8)),
            Growth::Range => {
                // Integer ranges only; dates and timestamps step by intervals, rare here.
                let (start, stop) = match args.len() {
                    1 => (Some(0), args.first().and_then(|a| int_at(a, row))),
                    _ => (
                        args.first().and_then(|a| int_at(a, row)),
                        args.get(1).and_then(|a| int_at(a, row)),
                    ),
                };
                let step = args.get(2).and_then(|a| int_at(a, row)).unwrap_or(1);
                match (start, stop) {
                    (Some(start), Some(stop)) if step != 0 => {
                        let span = (i128::from(stop) - i128::from(start)).unsigned_abs();
                        let n = span / u128::from(step.unsigned_abs());
                        u64::try_from(n.saturating_mul(8)).unwrap_or(u64::MAX)
                    }
                    _ => 0,
                }
            }
            Growth::Concat => {
                let separator = if self.inner.name() == "concat_ws" {
                    size(0)
                } else {
                    0
                };
                (0..args.len()).fold(0u64, |total, i| {
                    total.saturating_add(size(i)).saturating_add(separator)
                })
            }
            Growth::Replace => size(0).saturating_mul(size(2).max(1)),
        }
    }

    /// Refuses a call that would build more than the limit, and a constant call once the
    /// query's constants would pass it in all.
    fn check(&self, args: &[ColumnarValue], rows: usize) -> Result<()> {
        let constant = args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let bytes = if constant {
            // Every row the same: measure one.
            self.row_bytes(args, 0).saturating_mul(rows.max(1) as u64)
        } else {
            (0..rows).fold(0u64, |total, row| {
                total.saturating_add(self.row_bytes(args, row))
            })
        };
        let mib = |b: u64| b / (1024 * 1024);
        if bytes > self.limit {
            return exec_err!(
                "{}(…) would build {} MiB over {rows} rows; one call may build at most {} MiB",
                self.inner.name(),
                mib(bytes),
                mib(self.limit)
            );
        }
        if constant
            && self
                .constants_left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                    left.checked_sub(bytes)
                })
                .is_err()
        {
            return exec_err!(
                "{}(…) on constants would take the query's constant values past {} MiB, at most what they may hold in all",
                self.inner.name(),
                mib(self.limit)
            );
        }
        Ok(())
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.check(&args.args, args.number_rows)?;
        self.inner.invoke_with_args(args)
    }
}
