//! The model's input matrix, taken from rows of the `features` view by column name.
//!
//! Training, ad-hoc scoring and the benchmarks all need the same thing: the feature
//! columns the model card lists, as one row-major f32 buffer (what ONNX Runtime takes).
//! Selecting by name, not by position after the id columns, means a column added to
//! features.sql before the model inputs cannot shift them.

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::DataType;

use crate::error::QueryError;

/// Rows of `batch` as the model's inputs: the columns `names`, in that order, cast to f32
/// and laid out row-major (`rows × names.len()`). A missing column, a column that cannot
/// be cast or a null value is an error naming the feature.
pub fn feature_matrix(batch: &RecordBatch, names: &[String]) -> Result<Vec<f32>, QueryError> {
    let columns = feature_columns(batch, names)?;
    let mut matrix = Vec::with_capacity(batch.num_rows() * names.len());
    risksense_udfs::functions::row_major(&columns, 0, batch.num_rows(), &mut matrix);
    Ok(matrix)
}

/// The columns `names` of `batch` as Float32 arrays, checked for nulls.
pub fn feature_columns(batch: &RecordBatch, names: &[String]) -> Result<Vec<ArrayRef>, QueryError> {
    names
        .iter()
        .map(|name| {
            let column = batch.column_by_name(name).ok_or_else(|| {
                QueryError::ModelMismatch(format!("the features lack the model input `{name}`"))
            })?;
            let column = arrow::compute::cast(column, &DataType::Float32)?;
            if column.null_count() > 0 {
                return Err(QueryError::NullFeature { name: name.clone() });
            }
            Ok(column)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    fn batch() -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("cc_num", DataType::Int64, false),
            Field::new("b", DataType::Float64, true),
            Field::new("a", DataType::Float64, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from(vec![7, 8])),
                Arc::new(Float64Array::from(vec![Some(1.0), Some(2.0)])),
                Arc::new(Float64Array::from(vec![Some(10.0), None])),
            ],
        )
        .expect("batch")
    }

    #[test]
    fn columns_are_taken_by_name_in_the_model_order() {
        let names = vec!["b".to_string(), "cc_num".to_string()];
        let matrix = feature_matrix(&batch(), &names).expect("matrix");
        assert_eq!(matrix, vec![1.0, 7.0, 2.0, 8.0]);
    }

    #[test]
    fn a_missing_or_null_feature_is_named() {
        let missing = feature_matrix(&batch(), &["zzz".to_string()]).unwrap_err();
        assert!(missing.to_string().contains("zzz"), "{missing}");
        let null = feature_matrix(&batch(), &["a".to_string()]).unwrap_err();
        assert!(
            matches!(&null, QueryError::NullFeature { name } if name == "a"),
            "{null}"
        );
    }
}
