//! Event-time windows: the `tumble` and `hop` functions a query groups by, and what a
//! window is.
//!
//! In a standing query `tumble(ts, INTERVAL '1' MINUTE)` is the start of the minute `ts`
//! falls in, and `hop(ts, INTERVAL '5' MINUTE, INTERVAL '1' HOUR)` (slide, then width) a
//! row's five-minute *bin*: the aggregate keeps partial state per bin, and a one-hour
//! window is the merge of its twelve bins when it closes (as Arroyo runs sliding
//! windows). Windows are aligned to the Unix epoch, so the same rows fall in the same
//! windows on every run.

use std::sync::Arc;

use arrow::array::{Array, AsArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::error::ContinuousError;

/// A query's window: `width` long, starting every `slide` (tumbling: slide = width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    pub slide_us: i64,
    pub width_us: i64,
}

impl WindowSpec {
    pub fn new(slide_us: i64, width_us: i64) -> Result<Self, ContinuousError> {
        if slide_us <= 0 || width_us <= 0 {
            return Err(ContinuousError::Unsupported(
                "a window's width and slide must be positive intervals".to_string(),
            ));
        }
        if width_us % slide_us != 0 {
            return Err(ContinuousError::Unsupported(
                "hop(ts, slide, width): the width must be a whole number of slides".to_string(),
            ));
        }
        Ok(Self { slide_us, width_us })
    }

    /// The bin `ts` falls in (its start).
    pub fn bin(&self, ts: i64) -> i64 {
        ts.div_euclid(self.slide_us) * self.slide_us
    }

    /// Starts of the windows that contain the bin starting at `bin`, earliest first.
    pub fn windows_of_bin(&self, bin: i64) -> impl Iterator<Item = i64> + use<> {
        let (slide, n) = (self.slide_us, self.width_us / self.slide_us);
        (0..n).rev().map(move |k| bin - k * slide)
    }

    /// The last instant any window holding `bin` covers (exclusive end).
    pub fn last_end_of_bin(&self, bin: i64) -> i64 {
        bin + self.width_us
    }

    /// Window ends fall on multiples of the slide: the latest one at or before `t`.
    pub fn end_at_or_before(&self, t: i64) -> i64 {
        t.div_euclid(self.slide_us) * self.slide_us
    }
}

/// Names of the window functions.
pub const TUMBLE: &str = "tumble";
pub const HOP: &str = "hop";

/// `tumble(ts, width)` or `hop(ts, slide, width)`: the start of the row's bin.
#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowFunction {
    name: &'static str,
    signature: Signature,
}

pub fn udfs() -> Vec<ScalarUDF> {
    [(TUMBLE, 2), (HOP, 3)]
        .into_iter()
        .map(|(name, args)| {
            ScalarUDF::new_from_impl(WindowFunction {
                name,
                signature: Signature::any(args, Volatility::Immutable),
            })
        })
        .collect()
}

/// An interval literal in microseconds (months are refused: they have no fixed length).
pub fn interval_us(value: &ScalarValue) -> Result<i64, ContinuousError> {
    let bad = |what: &str| {
        ContinuousError::Unsupported(format!(
            "window sizes are interval literals such as INTERVAL '1' MINUTE, not {what}"
        ))
    };
    match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            Ok(i64::from(v.days) * 86_400_000_000 + v.nanoseconds / 1000)
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            Ok(i64::from(v.days) * 86_400_000_000 + i64::from(v.milliseconds) * 1000)
        }
        ScalarValue::IntervalMonthDayNano(Some(_)) | ScalarValue::IntervalYearMonth(_) => {
            Err(bad("months or years"))
        }
        other => Err(bad(&other.to_string())),
    }
}

impl WindowFunction {
    fn spec(&self, args: &[ColumnarValue]) -> DfResult<WindowSpec> {
        let sizes: Vec<i64> = args[1..]
            .iter()
            .map(|arg| match arg {
                ColumnarValue::Scalar(value) => interval_us(value)
                    .map_err(|e| datafusion::error::DataFusionError::Plan(e.to_string())),
                ColumnarValue::Array(_) => {
                    plan_err!("{}: window sizes must be constants", self.name)
                }
            })
            .collect::<DfResult<_>>()?;
        let (slide, width) = match sizes.as_slice() {
            [width] => (*width, *width),
            [slide, width] => (*slide, *width),
            _ => return plan_err!("{}: wrong number of arguments", self.name),
        };
        WindowSpec::new(slide, width)
            .map_err(|e| datafusion::error::DataFusionError::Plan(e.to_string()))
    }
}

impl ScalarUDFImpl for WindowFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        match args.first() {
            Some(DataType::Timestamp(TimeUnit::Microsecond, tz)) => {
                Ok(DataType::Timestamp(TimeUnit::Microsecond, tz.clone()))
            }
            other => plan_err!(
                "{}: the first argument must be an event time (timestamp, µs), not {other:?}",
                self.name
            ),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let spec = self.spec(&args.args)?;
        let bins = |ts: &TimestampMicrosecondArray| -> TimestampMicrosecondArray {
            ts.unary::<_, TimestampMicrosecondType>(|t| spec.bin(t))
                .with_data_type(ts.data_type().clone())
        };
        match &args.args[0] {
            ColumnarValue::Array(array) => {
                let Some(ts) = array.as_primitive_opt::<TimestampMicrosecondType>() else {
                    return exec_err!("{}: the event time must be a timestamp (µs)", self.name);
                };
                Ok(ColumnarValue::Array(Arc::new(bins(ts))))
            }
            ColumnarValue::Scalar(ScalarValue::TimestampMicrosecond(t, tz)) => {
                Ok(ColumnarValue::Scalar(ScalarValue::TimestampMicrosecond(
                    t.map(|t| spec.bin(t)),
                    tz.clone(),
                )))
            }
            other => exec_err!("{}: unexpected event time {other:?}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_and_windows() {
        let minute = 60_000_000;
        let hop = WindowSpec::new(5 * minute, 60 * minute).unwrap();
        assert_eq!(hop.bin(7 * minute + 3), 5 * minute);
        assert_eq!(hop.bin(-1), -5 * minute);
        let starts: Vec<i64> = hop.windows_of_bin(60 * minute).collect();
        assert_eq!(starts.len(), 12);
        assert_eq!(starts[0], 5 * minute);
        assert_eq!(starts[11], 60 * minute);
        assert_eq!(hop.last_end_of_bin(60 * minute), 120 * minute);
        assert_eq!(hop.end_at_or_before(9 * minute), 5 * minute);
        assert!(WindowSpec::new(7, 10).is_err());
    }
}
