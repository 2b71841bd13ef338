//! The SQL functions RiskSense adds to DataFusion.
//!
//! - `haversine(lat1, lon1, lat2, lon2)`: great-circle distance in km.
//! - `anomaly_score(f1, …, fn)`: the model's reconstruction error, one ONNX Runtime run per
//!   Arrow batch.
//! - `anomaly_explain(f1, …, fn)`: the three features with the largest reconstruction error
//!   and their share of it, e.g. `log_amt_over_mean 61%, night_share_24h 22%, hour_cos 6%`.
//! - `anomaly_threshold()`: the model's alert threshold.
//! - `alert_weight()`, `alert_threshold()`: the weight of a card's recent scores in the
//!   alert score and that score's threshold (0 and `anomaly_threshold()` for a model whose
//!   card has no such rule; `challenger_alert_…` for the challenger).
//! - `model_id()`: the id of the model that scores (`name@` and a hash of its files).
//! - `challenger_score(f1, …, fn)`, `challenger_threshold()`, `challenger_id()`: the
//!   shadow model's score (reconstruction error or fraud probability), threshold and id;
//!   null when no challenger is set.
//! - `fraud_probability(f1, …, fn)`, `fraud_threshold()`, `supervised_id()`: the
//!   supervised model's probability of fraud, alert threshold and id; null when no
//!   supervised model is set.
//! - `rolling_sum_24h`, `mean_of_previous`, `secs_since_previous`: per-card window
//!   functions, see [`crate::windows`].
//!
//! The model functions hold a [`ModelHandle`] and load its current model once per call
//! (one Arrow batch), so a plan built once scores with whatever model the handle holds.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, StringBuilder};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float32Type, Float64Type};
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err, plan_err};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::handle::ModelHandle;
use crate::model::Model;

const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Great-circle distance between two points given in degrees, in km.
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
    let d_phi = (lat2 - lat1).to_radians();
    let d_lambda = (lon2 - lon1).to_radians();
    let a = (d_phi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (d_lambda / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Haversine {
    signature: Signature,
}

impl Default for Haversine {
    fn default() -> Self {
        Self {
            signature: Signature::uniform(4, vec![DataType::Float64], Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Haversine {
    fn name(&self) -> &str {
        "haversine"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [a, b, c, d] = [0, 1, 2, 3].map(|i| arrays[i].as_primitive::<Float64Type>());
        let out: Float64Array = (0..args.number_rows)
            .map(|row| {
                if a.is_null(row) || b.is_null(row) || c.is_null(row) || d.is_null(row) {
                    None
                } else {
                    Some(haversine_km(
                        a.value(row),
                        b.value(row),
                        c.value(row),
                        d.value(row),
                    ))
                }
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// Most rows scored by one ONNX Runtime run. DataFusion's batches are 8,192 rows; a
/// larger batch (a window operator may emit a whole partition at once) is scored in runs of
/// this size, so the row-major buffer stays in cache.
pub const MAX_RUN_ROWS: usize = 8192;

/// The feature arguments of a call as f32 columns, plus the rows that had a null anywhere
/// (scored as null).
struct FeatureColumns {
    columns: Vec<ArrayRef>,
    rows: usize,
    null_rows: Option<Vec<bool>>,
}

impl FeatureColumns {
    fn new(model: &Model, name: &str, args: &ScalarFunctionArgs) -> Result<Self> {
        let width = model.feature_count();
        if args.args.len() != width {
            return exec_err!(
                "{name} expects {width} features for model `{}`, got {}",
                model.card.name,
                args.args.len()
            );
        }
        let rows = args.number_rows;
        let mut null_rows: Option<Vec<bool>> = None;
        let mut columns = Vec::with_capacity(width);
        for array in ColumnarValue::values_to_arrays(&args.args)? {
            let array: ArrayRef = if array.data_type() == &DataType::Float32 {
                array
            } else {
                cast(&array, &DataType::Float32)?
            };
            if array.null_count() > 0 {
                let mask = null_rows.get_or_insert_with(|| vec![false; rows]);
                for (row, slot) in mask.iter_mut().enumerate() {
                    *slot |= array.is_null(row);
                }
            }
            columns.push(array);
        }
        Ok(Self {
            columns,
            rows,
            null_rows,
        })
    }

    /// Rows `start..start + len` as a row-major matrix in `out`.
    fn fill(&self, start: usize, len: usize, out: &mut Vec<f32>) {
        row_major(&self.columns, start, len, out);
    }

    /// Runs the model over every row, in runs of at most [`MAX_RUN_ROWS`], and returns
    /// `output` for all of them, flattened.
    fn run(&self, model: &Model, output: &str) -> Result<Vec<f32>> {
        let mut results = Vec::new();
        let mut matrix = Vec::new();
        for start in (0..self.rows).step_by(MAX_RUN_ROWS) {
            let len = MAX_RUN_ROWS.min(self.rows - start);
            self.fill(start, len, &mut matrix);
            results.extend(model.run(&matrix, len, output).map_err(model_error)?);
        }
        Ok(results)
    }

    fn is_null(&self, row: usize) -> bool {
        self.null_rows.as_ref().is_some_and(|n| n[row])
    }

    /// `output` of `model` for each row of the call, as the function's result: the
    /// features gathered, one run per [`MAX_RUN_ROWS`], null where a feature is.
    fn score(
        model: &Model,
        name: &str,
        args: &ScalarFunctionArgs,
        output: &str,
    ) -> Result<ColumnarValue> {
        let features = Self::new(model, name, args)?;
        let values = features.run(model, output)?;
        Ok(features.per_row(&values))
    }

    /// One model output value per row as the function's result (null where a feature is).
    fn per_row(&self, values: &[f32]) -> ColumnarValue {
        let out: Float64Array = values
            .iter()
            .enumerate()
            .map(|(row, &v)| (!self.is_null(row)).then_some(f64::from(v)))
            .collect();
        ColumnarValue::Array(Arc::new(out))
    }
}

/// Rows `start..start + len` of Float32 columns as one row-major matrix in `out` (cleared
/// first): a strided write per column, the transpose from Arrow's columns to the tensor
/// ONNX Runtime reads. Null slots carry whatever value Arrow holds there; callers decide
/// what a null row means. Panics if a column is not Float32 or is shorter than the range.
pub fn row_major(columns: &[ArrayRef], start: usize, len: usize, out: &mut Vec<f32>) {
    let width = columns.len();
    out.clear();
    out.resize(len * width, 0.0);
    for (column, array) in columns.iter().enumerate() {
        let values = &array.as_primitive::<Float32Type>().values()[start..start + len];
        for (row, value) in values.iter().enumerate() {
            out[row * width + column] = *value;
        }
    }
}

fn model_error(error: crate::model::ModelError) -> DataFusionError {
    DataFusionError::External(Box::new(error))
}

fn check_feature_types(name: &str, model: &Model, arg_types: &[DataType]) -> Result<()> {
    let width = model.feature_count();
    if arg_types.len() != width {
        return plan_err!(
            "{name} takes the {width} features of model `{}` ({}), got {} arguments",
            model.card.name,
            model.card.features.join(", "),
            arg_types.len()
        );
    }
    if let Some((i, t)) = arg_types
        .iter()
        .enumerate()
        .find(|(_, t)| !t.is_numeric() && !matches!(t, DataType::Boolean | DataType::Null))
    {
        return plan_err!(
            "{name}: feature {} (`{}`) must be numeric, got {t}",
            i + 1,
            model.card.features[i]
        );
    }
    Ok(())
}

// Two instances are the same function when they read the same handle.
macro_rules! model_udf_identity {
    ($t:ty) => {
        impl PartialEq for $t {
            fn eq(&self, other: &Self) -> bool {
                Arc::ptr_eq(&self.model, &other.model)
            }
        }
        impl Eq for $t {}
        impl Hash for $t {
            fn hash<H: Hasher>(&self, state: &mut H) {
                Arc::as_ptr(&self.model).hash(state);
            }
        }
    };
}

/// `anomaly_score(features…)`: reconstruction error of each row.
#[derive(Debug)]
pub struct AnomalyScore {
    model: Arc<ModelHandle>,
    signature: Signature,
}
model_udf_identity!(AnomalyScore);

impl AnomalyScore {
    pub fn new(model: Arc<ModelHandle>) -> Self {
        Self {
            model,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for AnomalyScore {
    fn name(&self) -> &str {
        "anomaly_score"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        check_feature_types(self.name(), &self.model.load(), arg_types)?;
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        FeatureColumns::score(&self.model.load(), self.name(), &args, crate::model::SCORE)
    }
}

/// `anomaly_explain(features…)`: the top three features by reconstruction error.
#[derive(Debug)]
pub struct AnomalyExplain {
    model: Arc<ModelHandle>,
    signature: Signature,
}
model_udf_identity!(AnomalyExplain);

impl AnomalyExplain {
    pub fn new(model: Arc<ModelHandle>) -> Self {
        Self {
            model,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

/// Formats the top `k` features of one row's errors as `name share%, …`.
pub fn explain_row(features: &[String], errors: &[f32], k: usize) -> String {
    let total: f32 = errors.iter().sum();
    let mut order: Vec<usize> = (0..errors.len()).collect();
    order.sort_by(|&a, &b| errors[b].total_cmp(&errors[a]).then(a.cmp(&b)));
    order
        .iter()
        .take(k)
        .map(|&i| {
            let share = if total > 0.0 {
                errors[i] / total * 100.0
            } else {
                0.0
            };
            format!("{} {:.0}%", features[i], share)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl ScalarUDFImpl for AnomalyExplain {
    fn name(&self) -> &str {
        "anomaly_explain"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        check_feature_types(self.name(), &self.model.load(), arg_types)?;
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let model = self.model.load();
        let features = FeatureColumns::new(&model, self.name(), &args)?;
        let errors = features.run(&model, crate::model::FEATURE_ERROR)?;
        let width = model.feature_count();
        let mut out = StringBuilder::with_capacity(features.rows, features.rows * 48);
        for row in 0..features.rows {
            if features.is_null(row) {
                out.append_null();
            } else {
                let errors = &errors[row * width..(row + 1) * width];
                out.append_value(explain_row(&model.card.features, errors, 3));
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// A nullary function of the handle's models (`anomaly_threshold()`, `model_id()`,
/// `challenger_id()`, `challenger_threshold()`, `supervised_id()`, `fraud_threshold()`),
/// evaluated once per batch. Volatile,
/// although it is a constant for a model: DataFusion folds immutable and stable calls
/// without arguments into a literal when planning, and a plan built once must see the
/// models its handle holds when each batch runs.
#[derive(Debug)]
pub struct HandleValue {
    model: Arc<ModelHandle>,
    signature: Signature,
    name: &'static str,
    value: fn(&ModelHandle) -> ScalarValue,
}

impl PartialEq for HandleValue {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.model, &other.model) && self.name == other.name
    }
}
impl Eq for HandleValue {}
impl Hash for HandleValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.model).hash(state);
        self.name.hash(state);
    }
}

impl HandleValue {
    fn new(
        model: Arc<ModelHandle>,
        name: &'static str,
        value: fn(&ModelHandle) -> ScalarValue,
    ) -> Self {
        Self {
            model,
            signature: Signature::nullary(Volatility::Volatile),
            name,
            value,
        }
    }

    /// `anomaly_threshold()`: the champion's alert threshold.
    pub fn anomaly_threshold(model: Arc<ModelHandle>) -> Self {
        Self::new(model, "anomaly_threshold", |h| {
            ScalarValue::Float64(Some(h.load().card.threshold))
        })
    }

    /// `model_id()`: the champion's id.
    pub fn model_id(model: Arc<ModelHandle>) -> Self {
        Self::new(model, "model_id", |h| {
            ScalarValue::Utf8(Some(h.load().id.clone()))
        })
    }

    /// `challenger_id()`: the challenger's id, null without one.
    pub fn challenger_id(model: Arc<ModelHandle>) -> Self {
        Self::new(model, "challenger_id", |h| {
            ScalarValue::Utf8(h.challenger().map(|m| m.id.clone()))
        })
    }

    /// `supervised_id()`: the supervised model's id, null without one.
    pub fn supervised_id(model: Arc<ModelHandle>) -> Self {
        Self::new(model, "supervised_id", |h| {
            ScalarValue::Utf8(h.supervised().map(|m| m.id.clone()))
        })
    }

    /// `fraud_threshold()`: the supervised model's alert threshold (a probability), null
    /// without one.
    pub fn fraud_threshold(model: Arc<ModelHandle>) -> Self {
        Self::new(model, "fraud_threshold", |h| {
            ScalarValue::Float64(h.supervised().map(|m| m.card.threshold))
        })
    }

    /// `alert_weight()`: the weight of a card's recent scores in the champion's alert
    /// score (0 when its card has no such rule).
    pub fn alert_weight(model: Arc<ModelHandle>) -> Self {
        Self::new(model, "alert_weight", |h| {
            ScalarValue::Float64(Some(h.load().card.card_weight()))
        })
    }

    /// `alert_threshold()`: the champion's threshold of the alert score (its row
    /// threshold when its card has no rule over the card's recent scores).
    pub fn alert_threshold(model: Arc<ModelHandle>) -> Self {
        Self::new(model, "alert_threshold", |h| {
            ScalarValue::Float64(Some(h.load().card.alert_threshold()))
        })
    }

    /// `challenger_alert_weight()`, `challenger_alert_threshold()`: the same for the
    /// challenger, null without one.
    pub fn challenger_alert_weight(model: Arc<ModelHandle>) -> Self {
        Self::new(model, "challenger_alert_weight", |h| {
            ScalarValue::Float64(h.challenger().map(|m| m.card.card_weight()))
        })
    }

    pub fn challenger_alert_threshold(model: Arc<ModelHandle>) -> Self {
        Self::new(model, "challenger_alert_threshold", |h| {
            ScalarValue::Float64(h.challenger().map(|m| m.card.alert_threshold()))
        })
    }

    /// `challenger_threshold()`: the challenger's alert threshold, null without one.
    pub fn challenger_threshold(model: Arc<ModelHandle>) -> Self {
        Self::new(model, "challenger_threshold", |h| {
            ScalarValue::Float64(h.challenger().map(|m| m.card.threshold))
        })
    }
}

impl ScalarUDFImpl for HandleValue {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(match (self.value)(&self.model) {
            ScalarValue::Float64(_) => DataType::Float64,
            _ => DataType::Utf8,
        })
    }
    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar((self.value)(&self.model)))
    }
}

/// `challenger_score(features…)`: the shadow model's score of each row (its
/// reconstruction error, or its fraud probability for a supervised model); null without a
/// challenger, so a plan built once carries the column whether or not one is set.
#[derive(Debug)]
pub struct ChallengerScore {
    model: Arc<ModelHandle>,
    signature: Signature,
}
model_udf_identity!(ChallengerScore);

impl ChallengerScore {
    pub fn new(model: Arc<ModelHandle>) -> Self {
        Self {
            model,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for ChallengerScore {
    fn name(&self) -> &str {
        "challenger_score"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        // Checked against the champion: every challenger takes the same features.
        check_feature_types(self.name(), &self.model.load(), arg_types)?;
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some(model) = self.model.challenger() else {
            return Ok(ColumnarValue::Scalar(ScalarValue::Float64(None)));
        };
        // A shadow model must never stop the champion's scoring: if it fails, its scores
        // are null for the batch, the failure is counted and logged (the first, then every
        // 1,000th).
        match FeatureColumns::score(&model, self.name(), &args, model.role.score_output()) {
            Ok(scores) => Ok(scores),
            Err(error) => {
                let failures = self.model.challenger_failed();
                if failures % 1000 == 1 {
                    tracing::warn!(challenger = %model.id, failures, %error, "the challenger failed; its scores are null for this batch");
                }
                Ok(ColumnarValue::Scalar(ScalarValue::Float64(None)))
            }
        }
    }
}

/// `fraud_probability(features…)`: the supervised model's probability of fraud per row
/// (null where a feature is null); null without a supervised model, so a plan built once
/// carries the column whether or not one is set.
#[derive(Debug)]
pub struct FraudProbability {
    model: Arc<ModelHandle>,
    signature: Signature,
}

model_udf_identity!(FraudProbability);

impl FraudProbability {
    pub fn new(model: Arc<ModelHandle>) -> Self {
        Self {
            model,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for FraudProbability {
    fn name(&self) -> &str {
        "fraud_probability"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        // Checked against the champion: the supervised model takes the same features.
        check_feature_types(self.name(), &self.model.load(), arg_types)?;
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        // Unlike a shadow model's, its failure fails the batch, as the champion's does: its
        // flags raise alerts, so a batch scored without it would miss them (the stream
        // tries once more, then stops and resumes from its last checkpoint on restart).
        match self.model.supervised() {
            Some(model) => {
                FeatureColumns::score(&model, self.name(), &args, crate::model::PROBABILITY)
            }
            None => Ok(ColumnarValue::Scalar(ScalarValue::Float64(None))),
        }
    }
}

/// Registers `haversine` and the card window functions (always) and, given a model
/// handle, the model functions, which score with the handle's current model.
pub fn register(
    registry: &mut dyn FunctionRegistry,
    model: Option<Arc<ModelHandle>>,
) -> Result<()> {
    registry.register_udf(Arc::new(ScalarUDF::from(Haversine::default())))?;
    for window in crate::windows::CardWindow::all() {
        registry.register_udwf(Arc::new(datafusion::logical_expr::WindowUDF::from(window)))?;
    }
    if let Some(model) = model {
        registry.register_udf(Arc::new(ScalarUDF::from(AnomalyScore::new(model.clone()))))?;
        registry.register_udf(Arc::new(ScalarUDF::from(AnomalyExplain::new(
            model.clone(),
        ))))?;
        registry.register_udf(Arc::new(ScalarUDF::from(ChallengerScore::new(
            model.clone(),
        ))))?;
        registry.register_udf(Arc::new(ScalarUDF::from(FraudProbability::new(
            model.clone(),
        ))))?;
        for value in [
            HandleValue::anomaly_threshold(model.clone()),
            HandleValue::alert_weight(model.clone()),
            HandleValue::alert_threshold(model.clone()),
            HandleValue::challenger_alert_weight(model.clone()),
            HandleValue::challenger_alert_threshold(model.clone()),
            HandleValue::model_id(model.clone()),
            HandleValue::challenger_id(model.clone()),
            HandleValue::challenger_threshold(model.clone()),
            HandleValue::supervised_id(model.clone()),
            HandleValue::fraud_threshold(model),
        ] {
            registry.register_udf(Arc::new(ScalarUDF::from(value)))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haversine_known_distances() {
        // Paris - London, about 344 km.
        let d = haversine_km(48.8566, 2.3522, 51.5074, -0.1278);
        assert!((d - 343.9).abs() < 1.0, "{d}");
        assert_eq!(haversine_km(10.0, 20.0, 10.0, 20.0), 0.0);
        // One degree of latitude is about 111.2 km.
        assert!((haversine_km(0.0, 0.0, 1.0, 0.0) - 111.19).abs() < 0.05);
    }

    #[test]
    fn explanation_lists_the_largest_errors_first() {
        let names: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            explain_row(&names, &[1.0, 6.0, 0.0, 3.0], 3),
            "b 60%, d 30%, a 10%"
        );
        assert_eq!(explain_row(&names, &[0.0; 4], 2), "a 0%, b 0%");
    }
}
