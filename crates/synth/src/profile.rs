//! Summary statistics of transaction data, to compare generated data with the reference:
//! fraud rate, amount quantiles per category, and the hour-of-day histograms.

use std::collections::{BTreeMap, HashSet};

use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, Int32Type, Int64Type};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use risksense_common::schema::idx;

/// Quantiles reported per category.
pub const QUANTILES: [f64; 5] = [0.10, 0.25, 0.50, 0.75, 0.90];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataProfile {
    pub rows: u64,
    pub frauds: u64,
    pub cards: u64,
    pub fraud_rate: f64,
    /// Legitimate amounts: category -> quantiles at [`QUANTILES`].
    pub legit_amount_quantiles: BTreeMap<String, Vec<f64>>,
    /// Fraudulent amounts: category -> quantiles at [`QUANTILES`].
    pub fraud_amount_quantiles: BTreeMap<String, Vec<f64>>,
    /// Share of legitimate transactions in each hour 0..24.
    pub legit_hours: Vec<f64>,
    /// Share of fraudulent transactions in each hour 0..24.
    pub fraud_hours: Vec<f64>,
    /// Share of transactions in each category (legitimate only).
    pub legit_category_share: BTreeMap<String, f64>,
}

/// Accumulates a profile batch by batch.
#[derive(Default)]
pub struct ProfileBuilder {
    rows: u64,
    frauds: u64,
    cards: HashSet<i64>,
    legit_amounts: BTreeMap<String, Vec<f64>>,
    fraud_amounts: BTreeMap<String, Vec<f64>>,
    legit_hours: [u64; 24],
    fraud_hours: [u64; 24],
}

impl ProfileBuilder {
    pub fn add(&mut self, batch: &RecordBatch) {
        let cards = batch.column(idx::CC_NUM).as_primitive::<Int64Type>();
        let unix = batch.column(idx::UNIX_TIME).as_primitive::<Int64Type>();
        let amt = batch.column(idx::AMT).as_primitive::<Float64Type>();
        let fraud = batch.column(idx::IS_FRAUD).as_primitive::<Int32Type>();
        let category = batch.column(idx::CATEGORY).as_string::<i32>();
        for row in 0..batch.num_rows() {
            self.rows += 1;
            self.cards.insert(cards.value(row));
            let hour = (unix.value(row).rem_euclid(86_400) / 3600) as usize;
            let (amounts, hours) = if fraud.value(row) == 1 {
                self.frauds += 1;
                (&mut self.fraud_amounts, &mut self.fraud_hours)
            } else {
                (&mut self.legit_amounts, &mut self.legit_hours)
            };
            hours[hour] += 1;
            amounts
                .entry(category.value(row).to_string())
                .or_default()
                .push(amt.value(row));
        }
    }

    pub fn finish(self) -> DataProfile {
        let quantiles = |by_category: BTreeMap<String, Vec<f64>>| {
            by_category
                .into_iter()
                .map(|(category, mut values)| {
                    values.sort_by(f64::total_cmp);
                    let q = QUANTILES
                        .iter()
                        .map(|&q| values[((values.len() - 1) as f64 * q).round() as usize])
                        .collect();
                    (category, q)
                })
                .collect()
        };
        let shares = |counts: [u64; 24]| {
            let total = counts.iter().sum::<u64>().max(1) as f64;
            counts.iter().map(|&c| c as f64 / total).collect()
        };
        let legit_total = (self.rows - self.frauds).max(1) as f64;
        let legit_category_share = self
            .legit_amounts
            .iter()
            .map(|(c, v)| (c.clone(), v.len() as f64 / legit_total))
            .collect();
        DataProfile {
            rows: self.rows,
            frauds: self.frauds,
            cards: self.cards.len() as u64,
            fraud_rate: self.frauds as f64 / self.rows.max(1) as f64,
            legit_amount_quantiles: quantiles(self.legit_amounts),
            fraud_amount_quantiles: quantiles(self.fraud_amounts),
            legit_hours: shares(self.legit_hours),
            fraud_hours: shares(self.fraud_hours),
            legit_category_share,
        }
    }
}

/// How far one profile is from another.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileDistance {
    /// Fraud rate of each, in percent.
    pub fraud_rate_pct: (f64, f64),
    /// Median over categories and quantiles of |ln(a/b)| for legitimate amounts.
    pub legit_amount_log_error: f64,
    /// Median over categories and quantiles of |ln(a/b)| for fraudulent amounts.
    pub fraud_amount_log_error: f64,
    /// Total variation distance of the hour histograms (0 = same, 1 = disjoint).
    pub legit_hour_tv: f64,
    pub fraud_hour_tv: f64,
    /// Total variation distance of the category mix of legitimate transactions.
    pub legit_category_tv: f64,
    /// Share of fraud between 22:00 and 03:59, each.
    pub fraud_night_share: (f64, f64),
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn log_errors(a: &BTreeMap<String, Vec<f64>>, b: &BTreeMap<String, Vec<f64>>) -> f64 {
    let errors = a
        .iter()
        .filter_map(|(category, qa)| b.get(category).map(|qb| (qa, qb)))
        .flat_map(|(qa, qb)| {
            qa.iter()
                .zip(qb)
                .map(|(x, y)| (x.max(0.01) / y.max(0.01)).ln().abs())
        })
        .collect();
    median(errors)
}

fn total_variation(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / 2.0
}

fn night_share(hours: &[f64]) -> f64 {
    hours
        .iter()
        .enumerate()
        .filter(|(h, _)| *h >= 22 || *h < 4)
        .map(|(_, s)| s)
        .sum()
}

impl DataProfile {
    pub fn distance(&self, reference: &DataProfile) -> ProfileDistance {
        let categories: Vec<f64> = self
            .legit_category_share
            .iter()
            .map(|(c, s)| {
                s - reference
                    .legit_category_share
                    .get(c)
                    .copied()
                    .unwrap_or(0.0)
            })
            .collect();
        ProfileDistance {
            fraud_rate_pct: (self.fraud_rate * 100.0, reference.fraud_rate * 100.0),
            legit_amount_log_error: log_errors(
                &self.legit_amount_quantiles,
                &reference.legit_amount_quantiles,
            ),
            fraud_amount_log_error: log_errors(
                &self.fraud_amount_quantiles,
                &reference.fraud_amount_quantiles,
            ),
            legit_hour_tv: total_variation(&self.legit_hours, &reference.legit_hours),
            fraud_hour_tv: total_variation(&self.fraud_hours, &reference.fraud_hours),
            legit_category_tv: categories.iter().map(|d| d.abs()).sum::<f64>() / 2.0,
            fraud_night_share: (
                night_share(&self.fraud_hours),
                night_share(&reference.fraud_hours),
            ),
        }
    }
}
