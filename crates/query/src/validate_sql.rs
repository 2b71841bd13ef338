//! The input validation ([`crate::validate`]) as a SQL function, for inputs DataFusion
//! scans itself: `rescore` and `train` over a Parquet file, folder or glob read the files
//! with DataFusion's parallel scan, never through our readers. Registering those files as
//! `transactions` puts them behind a view that calls `valid_transaction(...)` on every row,
//! which answers true or fails the query with the first bad row and its reason, as the CSV
//! and Parquet readers do without `--skip-bad`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};
use arrow::record_batch::RecordBatch;
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use risksense_common::schema::{column_names, idx, transaction_schema};
use risksense_formats::validate::invalid_rows;

/// The function's name in SQL.
pub const NAME: &str = "valid_transaction";

/// The columns the function takes, in this order: every column a bound applies to.
pub const CHECKED: [usize; 15] = [
    idx::ROW_ID,
    idx::TRANS_DATE_TRANS_TIME,
    idx::CC_NUM,
    idx::CATEGORY,
    idx::AMT,
    idx::ZIP,
    idx::LAT,
    idx::LONG,
    idx::CITY_POP,
    idx::DOB,
    idx::TRANS_NUM,
    idx::UNIX_TIME,
    idx::MERCH_LAT,
    idx::MERCH_LONG,
    idx::IS_FRAUD,
];

/// The call, with the checked columns as arguments: `valid_transaction("row_id", …)`.
pub fn call() -> String {
    let names = column_names();
    let args: Vec<String> = CHECKED
        .iter()
        .map(|&i| format!("\"{}\"", names[i]))
        .collect();
    format!("{NAME}({})", args.join(", "))
}

/// The UDF.
pub fn udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(ValidTransaction {
        signature: Signature::variadic_any(Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ValidTransaction {
    signature: Signature,
}

impl ScalarUDFImpl for ValidTransaction {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if args.args.len() != CHECKED.len() {
            return exec_err!(
                "{NAME} takes the {} checked columns, got {} arguments",
                CHECKED.len(),
                args.args.len()
            );
        }
        let rows = args.number_rows;
        let names = column_names();
        let schema = transaction_schema();
        // Columns no bound applies to stand in as empty text: they are not checked.
        let filler: ArrayRef = Arc::new(StringArray::from(vec![""; rows]));
        let mut columns: Vec<ArrayRef> = vec![filler; schema.fields().len()];
        for (arg, &column) in args.args.iter().zip(&CHECKED) {
            let array = arg.to_array(rows)?;
            let want = schema.field(column).data_type();
            if want.is_numeric() && !array.data_type().is_numeric() {
                return exec_err!(
                    "transactions: column `{}` is stored as {}: numbers must be stored as numbers",
                    names[column],
                    array.data_type()
                );
            }
            if want.is_integer() && array.data_type().is_floating() {
                let floats = cast(&array, &DataType::Float64)?;
                let floats = floats.as_primitive_opt::<Float64Type>();
                if let Some((row, value)) = floats.and_then(|f| {
                    f.iter()
                        .enumerate()
                        .find_map(|(r, v)| v.filter(|v| v.fract() != 0.0).map(|v| (r, v)))
                }) {
                    return exec_err!(
                        "transactions: row {row} of a batch: column `{}`: {value} is not an integer",
                        names[column]
                    );
                }
            }
            columns[column] = cast(&array, want)?;
        }
        let batch = RecordBatch::try_new(
            risksense_common::schema::nullable_transaction_schema(),
            columns,
        )?;
        let problems = invalid_rows(&batch)
            .map_err(|e| datafusion::error::DataFusionError::External(e.into()))?;
        if let Some((row, error)) = problems.first() {
            let row_id = batch
                .column(idx::ROW_ID)
                .as_primitive_opt::<arrow::datatypes::Int64Type>()
                .filter(|ids| !ids.is_null(*row))
                .map(|ids| ids.value(*row).to_string())
                .unwrap_or_else(|| "?".to_string());
            return exec_err!("transactions: row_id {row_id}: {error}");
        }
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(vec![
            true;
            rows
        ]))))
    }
}
