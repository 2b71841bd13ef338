//! Bounds on the functions that build a value far larger than their arguments.
//!
//! DataFusion's memory pool counts what operators buffer, not what a scalar function
//! allocates for its result: `repeat('x', 2000000000)` allocated 2 GB in one call
//! (measured: 2.4 GB RSS for one query), and four such queries at once, or one over a few
//! rows of `LargeUtf8`, could take the process down. In ad-hoc sessions these functions are
//! replaced by wrappers that estimate the result's size from the arguments first and refuse
//! a call past the limit, before anything is allocated (also when the planner folds a call
//! on constants).

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

/// Bytes one call may build, over all the rows of its batch.
pub const MAX_CALL_BYTES: u64 = 64 * 1024 * 1024;

/// How a function's result size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(text, n)`: the text's bytes times n.
    Repeat,
    /// `lpad(text, n [, fill])`, `rpad`: n characters (up to 4 bytes each).
    Pad,
    /// `array_repeat(value, n)`, `array_resize(array, n [, value])`: n elements.
    Elements,
    /// `range(start, stop [, step])`, `generate_series(...)` over integers: the elements.
    Range,
}

/// A DataFusion function behind a size check.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: ScalarUDF,
    growth: Growth,
}

/// Replaces the value-building functions of `ctx` with bounded ones.
pub fn install(ctx: &SessionContext) -> Result<()> {
    for (name, growth) in [
        ("repeat", Growth::Repeat),
        ("lpad", Growth::Pad),
        ("rpad", Growth::Pad),
        ("array_repeat", Growth::Elements),
        ("array_resize", Growth::Elements),
        ("range", Growth::Range),
        ("generate_series", Growth::Range),
    ] {
        let Ok(inner) = ctx.udf(name) else { continue };
        let bounded = Bounded {
            inner: inner.as_ref().clone(),
            growth,
        };
        ctx.register_udf(ScalarUDF::new_from_impl(bounded));
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

/// Bytes of the text at `row` of an argument (8 for anything that is not text).
fn bytes_at(value: &ColumnarValue, row: usize) -> u64 {
    let text_len = |scalar: &ScalarValue| match scalar {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => s.len() as u64,
        _ => 8,
    };
    match value {
        ColumnarValue::Scalar(scalar) => text_len(scalar),
        ColumnarValue::Array(array) => ScalarValue::try_from_array(array, row)
            .map(|s| text_len(&s))
            .unwrap_or(8),
    }
}

impl Bounded {
    /// The bytes a call over `rows` rows would build, as far as the arguments tell.
    fn estimate(&self, args: &[ColumnarValue], rows: usize) -> u64 {
        let arg = |i: usize| args.get(i);
        let scalar_only = args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        // Constant arguments give every row the same size: measure one row.
        let measured_rows = if scalar_only { 1 } else { rows.max(1) };
        let mut total = 0u64;
        for row in 0..measured_rows {
            let one = match self.growth {
                Growth::Repeat => {
                    let n = arg(1).and_then(|a| int_at(a, row)).unwrap_or(0).max(0) as u64;
                    n.saturating_mul(arg(0).map_or(0, |a| bytes_at(a, row)))
                }
                Growth::Pad => {
                    let n = arg(1).and_then(|a| int_at(a, row)).unwrap_or(0).max(0) as u64;
                    n.saturating_mul(4)
                }
                Growth::Elements => {
                    let n = arg(1).and_then(|a| int_at(a, row)).unwrap_or(0).max(0) as u64;
                    n.saturating_mul(arg(0).map_or(8, |a| bytes_at(a, row)).max(8))
                }
                Growth::Range => {
                    // Integer ranges only; dates and timestamps step by intervals and are
                    // bounded by their own types' ranges far less tightly, but are rare
                    // here.
                    let (start, stop) = match args.len() {
                        1 => (Some(0), arg(0).and_then(|a| int_at(a, row))),
                        _ => (
                            arg(0).and_then(|a| int_at(a, row)),
                            arg(1).and_then(|a| int_at(a, row)),
                        ),
                    };
                    let step = arg(2).and_then(|a| int_at(a, row)).unwrap_or(1);
                    match (start, stop) {
                        (Some(start), Some(stop)) if step != 0 => {
                            let span = (i128::from(stop) - i128::from(start)).unsigned_abs();
                            let n = span / u128::from(step.unsigned_abs());
                            u64::try_from(n.saturating_mul(8)).unwrap_or(u64::MAX)
                        }
                        _ => 0,
                    }
                }
            };
            total = total.saturating_add(one);
        }
        if scalar_only {
            total.saturating_mul(rows.max(1) as u64)
        } else {
            total
        }
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
        let bytes = self.estimate(&args.args, args.number_rows);
        if bytes > MAX_CALL_BYTES {
            return exec_err!(
                "{}(…) would build {} MiB over {} rows; a call may build at most {} MiB",
                self.inner.name(),
                bytes / (1024 * 1024),
                args.number_rows,
                MAX_CALL_BYTES / (1024 * 1024)
            );
        }
        self.inner.invoke_with_args(args)
    }
}
