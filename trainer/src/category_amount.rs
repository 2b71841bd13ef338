//! The amount against its category's: an input the autoencoder derives inside its own
//! graph from two it already has.
//!
//! `log_amt` alone says little about whether an amount is unusual: $300 is an ordinary
//! online shopping order and an extreme grocery bill, and a 3-unit code cannot learn every
//! category's amounts from the one-hot columns beside it. So the model standardises the
//! log amount by its category's mean and standard deviation on the training rows, and
//! reconstructs that too (the measurements are in BENCHMARKS.md, "Model quality").
//!
//! It is fitted by the trainer and computed in the exported graph from `log_amt` and the
//! `cat_*` one-hot columns, so features.sql, score.sql and the other models keep their
//! inputs, and the statistics travel with the model that learnt them rather than with
//! the SQL.

use crate::TrainError;
use crate::autoencoder::Matrix;
use crate::onnx::{GraphBuilder, int_attribute};

/// The amount feature the statistics are of.
pub const AMOUNT: &str = "log_amt";
/// Prefix of the one-hot category features.
pub const CATEGORY_PREFIX: &str = "cat_";
/// The derived input's name (explanations fold it into [`AMOUNT`]).
pub const NAME: &str = "log_amt_vs_category";

/// Per-category mean and standard deviation of the amount, fitted on training rows.
#[derive(Debug, Clone, PartialEq)]
pub struct AmountByCategory {
    /// How many inputs the model takes (the derived value is one more).
    pub inputs: usize,
    /// Column of [`AMOUNT`] in the model's inputs.
    pub amount: usize,
    /// Columns of the one-hot categories, and each category's mean and spread.
    pub categories: Vec<usize>,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// For a row with no category set (one the training data never had).
    pub overall_mean: f32,
    pub overall_std: f32,
}

/// Fewest training rows a category's own statistics are fitted from; rarer categories
/// count as the overall amounts.
pub const MIN_ROWS: usize = 30;
/// Least spread of a category, as a share of the overall one: a category whose amounts
/// barely vary (a fixed fee) would otherwise make any other amount in it thousands of
/// standard deviations out. (On the reference data the narrowest category, gas, has a
/// fifth of the overall spread, so this never binds there.)
const LEAST_STD_SHARE: f32 = 0.05;

/// Count, mean and standard deviation of `values` (f64 sums).
fn mean_std(values: impl Iterator<Item = f32>) -> (usize, f32, f32) {
    let (mut n, mut sum, mut sum_sq) = (0usize, 0f64, 0f64);
    for v in values {
        n += 1;
        sum += f64::from(v);
        sum_sq += f64::from(v) * f64::from(v);
    }
    let mean = sum / n.max(1) as f64;
    let var = (sum_sq / n.max(1) as f64 - mean * mean).max(0.0);
    (n, mean as f32, var.sqrt() as f32)
}

impl AmountByCategory {
    /// Fitted on `train` (columns named `names`); None when the inputs have no
    /// [`AMOUNT`] or no [`CATEGORY_PREFIX`] columns.
    pub fn fit(train: &Matrix, names: &[String]) -> Result<Option<Self>, TrainError> {
        if names.len() != train.cols {
            return Err(TrainError::Shape(format!(
                "{} feature names for {} columns",
                names.len(),
                train.cols
            )));
        }
        let Some(amount) = names.iter().position(|n| n == AMOUNT) else {
            return Ok(None);
        };
        let categories: Vec<usize> = (0..names.len())
            .filter(|&c| names[c].starts_with(CATEGORY_PREFIX))
            .collect();
        let amounts = |category: Option<usize>| {
            (0..train.rows)
                .map(|r| train.row(r))
                .filter(move |row| category.is_none_or(|c| row[c] == 1.0))
                .map(|row| row[amount])
        };
        let (rows, overall_mean, overall_std) = mean_std(amounts(None));
        if categories.is_empty() || rows < 2 || overall_std <= 0.0 || !overall_std.is_finite() {
            return Ok(None);
        }
        let (mut mean, mut std) = (Vec::new(), Vec::new());
        for &c in &categories {
            let (n, m, s) = mean_std(amounts(Some(c)));
            let (m, s) = if n >= MIN_ROWS && m.is_finite() && s.is_finite() {
                (m, s.max(overall_std * LEAST_STD_SHARE))
            } else {
                (overall_mean, overall_std)
            };
            mean.push(m);
            std.push(s);
        }
        Ok(Some(Self {
            inputs: names.len(),
            amount,
            categories,
            mean,
            std,
            overall_mean,
            overall_std,
        }))
    }

    /// The indices of the model's own inputs among the augmented columns: all but the
    /// last.
    pub fn own_columns(&self) -> Vec<i64> {
        (0..self.inputs as i64).collect()
    }

    /// The least spread a row can be divided by: the smallest fitted one. features.sql's
    /// one-hot columns never go under it, but `anomaly_score(…)` also takes hand-written
    /// values (ad-hoc SQL), where several partly set categories could sum to 0 or less.
    fn least_std(&self) -> f32 {
        self.std.iter().copied().fold(self.overall_std, f32::min)
    }

    /// The row's category's mean and spread: the overall ones plus each set category's
    /// difference from them (exactly the category's for a one-hot row). The graph sums the
    /// same terms with MatMul, in an order of ONNX Runtime's choosing: equal within f32
    /// rounding.
    fn of(&self, row: &[f32]) -> (f32, f32) {
        let (mut mean, mut std) = (0f32, 0f32);
        for (k, &c) in self.categories.iter().enumerate() {
            mean += row[c] * (self.mean[k] - self.overall_mean);
            std += row[c] * (self.std[k] - self.overall_std);
        }
        (
            mean + self.overall_mean,
            (std + self.overall_std).max(self.least_std()),
        )
    }

    /// The derived value of one row of model inputs.
    pub fn value(&self, row: &[f32]) -> f32 {
        let (mean, std) = self.of(row);
        (row[self.amount] - mean) / std
    }

    /// `matrix` with the derived value as one more, last, column.
    pub fn augment(&self, matrix: &Matrix) -> Matrix {
        let cols = matrix.cols + 1;
        let mut data = Vec::with_capacity(matrix.rows * cols);
        for r in 0..matrix.rows {
            let row = matrix.row(r);
            data.extend_from_slice(row);
            data.push(self.value(row));
        }
        Matrix {
            rows: matrix.rows,
            cols,
            data,
        }
    }

    /// Per-column weights of the inputs giving `values[k]`'s difference from `overall`
    /// for category k (0 elsewhere): a [inputs, 1] matrix for MatMul.
    fn offsets(&self, values: &[f32], overall: f32) -> Vec<f32> {
        let mut w = vec![0f32; self.inputs];
        for (k, &c) in self.categories.iter().enumerate() {
            w[c] = values[k] - overall;
        }
        w
    }

    /// Appends nodes computing `output` = `input` [rows, inputs] with the derived value as
    /// one more column, as [`Self::augment`] does.
    pub fn append_to_graph(&self, g: &mut GraphBuilder, input: &str, output: &str) {
        let n = self.inputs as i64;
        g.constant(
            "cat_mean_offsets",
            &[n, 1],
            &self.offsets(&self.mean, self.overall_mean),
        );
        g.constant(
            "cat_std_offsets",
            &[n, 1],
            &self.offsets(&self.std, self.overall_std),
        );
        g.constant("cat_overall_mean", &[1], &[self.overall_mean]);
        g.constant("cat_overall_std", &[1], &[self.overall_std]);
        g.constant("cat_least_std", &[1], &[self.least_std()]);
        g.constant_i64("cat_amount_column", &[1], &[self.amount as i64]);
        g.node("MatMul", &[input, "cat_mean_offsets"], "cat_mean_offset");
        g.node("Add", &["cat_mean_offset", "cat_overall_mean"], "cat_mean");
        g.node("MatMul", &[input, "cat_std_offsets"], "cat_std_offset");
        g.node("Add", &["cat_std_offset", "cat_overall_std"], "cat_std_sum");
        g.node("Max", &["cat_std_sum", "cat_least_std"], "cat_std");
        g.node_with(
            "Gather",
            &[input, "cat_amount_column"],
            "cat_amount",
            vec![int_attribute("axis", 1)],
        );
        g.node("Sub", &["cat_amount", "cat_mean"], "cat_centered");
        g.node("Div", &["cat_centered", "cat_std"], "cat_value");
        g.node_with(
            "Concat",
            &[input, "cat_value"],
            output,
            vec![int_attribute("axis", 1)],
        );
    }

    /// Appends nodes turning `columns` [rows, inputs + 1] (per-column values of the
    /// augmented inputs) into [rows, inputs]: the model's own inputs, with `fold` the
    /// derived column's value added to the amount's (errors: an unusual amount for its
    /// category is the amount's to explain), or without it dropped (reconstructions).
    pub fn append_unaugment(&self, g: &mut GraphBuilder, columns: &str, fold: bool, output: &str) {
        let name = |n: &str| format!("{output}_{n}");
        let own = if fold {
            name("own")
        } else {
            output.to_string()
        };
        g.gather_columns(columns, &name("kept"), &self.own_columns(), &own);
        if fold {
            let mut at_amount = vec![0f32; self.inputs];
            at_amount[self.amount] = 1.0;
            g.constant(&name("at_amount"), &[self.inputs as i64], &at_amount);
            g.gather_columns(
                columns,
                &name("derived"),
                &[self.inputs as i64],
                &name("derived_value"),
            );
            g.node(
                "Mul",
                &[&name("derived_value"), &name("at_amount")],
                &name("folded"),
            );
            g.node("Add", &[&own, &name("folded")], output);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        ["log_amt", "cat_a", "cat_b", "hour"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// `n` rows of category `column` (1 or 2; 0: none) cycling through `amounts`.
    fn rows(n: usize, column: usize, amounts: &[f32]) -> Vec<f32> {
        (0..n)
            .flat_map(|i| {
                let mut row = [amounts[i % amounts.len()], 0.0, 0.0, i as f32];
                if column > 0 {
                    row[column] = 1.0;
                }
                row
            })
            .collect()
    }

    #[test]
    fn fits_each_categorys_amounts_and_standardises_by_them() {
        // Category a: amounts 1 and 3 (mean 2, sd 1); b: 10 and 14 (mean 12, sd 2).
        let data = [rows(40, 1, &[1.0, 3.0]), rows(40, 2, &[10.0, 14.0])].concat();
        let m = Matrix::new(80, 4, data).expect("shape");
        let fit = AmountByCategory::fit(&m, &names())
            .expect("fits")
            .expect("has the columns");
        assert_eq!((fit.amount, fit.categories.clone()), (0, vec![1, 2]));
        assert_eq!(
            (fit.mean.clone(), fit.std.clone()),
            (vec![2.0, 12.0], vec![1.0, 2.0])
        );
        // The same amount is ordinary in one category and extreme in the other.
        assert_eq!(fit.value(&[13.0, 0.0, 1.0, 0.0]), 0.5);
        assert_eq!(fit.value(&[13.0, 1.0, 0.0, 0.0]), 11.0);
        // No category set: the overall amounts (mean 7, sd sqrt(27.5)).
        let overall = fit.value(&[7.0, 0.0, 0.0, 0.0]);
        assert!(overall.abs() < 1e-6, "{overall}");
        // Partly set categories (hand-written values): mean 7 + 1.5 (2 - 7) - 0.5 (12 - 7)
        // = -3, spread 0.5 under the least fitted one (1), which it is divided by instead.
        assert_eq!(fit.value(&[3.0, 1.5, -0.5, 0.0]), 6.0);
        let augmented = fit.augment(&m);
        assert_eq!((augmented.rows, augmented.cols), (80, 5));
        assert_eq!(augmented.row(41), &[14.0, 0.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn rare_or_fixed_categories_do_not_make_extreme_values() {
        // a: fewer rows than MIN_ROWS (the overall statistics); b: one fixed amount (the
        // least spread, a share of the overall one); the rest uncategorised.
        let data = [
            rows(MIN_ROWS - 1, 1, &[100.0]),
            rows(40, 2, &[5.0]),
            rows(40, 0, &[1.0, 9.0]),
        ]
        .concat();
        let m = Matrix::new(MIN_ROWS - 1 + 80, 4, data).expect("shape");
        let fit = AmountByCategory::fit(&m, &names())
            .expect("fits")
            .expect("has the columns");
        assert_eq!(
            (fit.mean[0], fit.std[0]),
            (fit.overall_mean, fit.overall_std)
        );
        assert_eq!(fit.mean[1], 5.0);
        assert_eq!(fit.std[1], fit.overall_std * LEAST_STD_SHARE);
        let off = fit.value(&[6.0, 0.0, 1.0, 0.0]);
        assert!(
            (off - 1.0 / (fit.overall_std * LEAST_STD_SHARE)).abs() < 1e-4,
            "{off}"
        );
    }

    #[test]
    fn inputs_without_an_amount_or_categories_derive_nothing() {
        let m = Matrix::new(2, 4, vec![0.0; 8]).expect("shape");
        let mut other = names();
        other[0] = "amount".to_string();
        assert_eq!(AmountByCategory::fit(&m, &other).expect("fits"), None);
        other[0] = "log_amt".to_string();
        other[1] = "a".to_string();
        other[2] = "b".to_string();
        assert_eq!(AmountByCategory::fit(&m, &other).expect("fits"), None);
        assert!(AmountByCategory::fit(&m, &other[..3]).is_err());
    }
}
