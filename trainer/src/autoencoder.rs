//! The dense autoencoder: trained with candle (autodiff, Adam), exported to ONNX.
//!
//! Architecture: features → hidden (ReLU) → code (linear) → hidden (ReLU) → features, on
//! standardised inputs. Standardisation (median / interquartile range of the training rows
//! by default, or mean / standard deviation; 0/1 columns are left as they are) is part of
//! the exported graph, so callers pass raw features.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::TrainError;
use crate::category_amount::AmountByCategory;
use crate::error_side::ErrorSide;
use crate::onnx::{Dim, GraphBuilder, int_attribute, ints_attribute};

/// A row-major matrix of f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self, TrainError> {
        if data.len() != rows * cols {
            return Err(TrainError::Shape(format!(
                "{} values is not {rows} x {cols}",
                data.len()
            )));
        }
        Ok(Self { rows, cols, data })
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// Per-column shift and scale applied before the network.
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Which columns are scaled: all but those holding only 0 and 1 (one-hot, flags),
    /// which keep mean 0 and scale 1, so a rare category does not dominate the error.
    pub scaled: Vec<bool>,
}

impl Standardizer {
    /// Mean and standard deviation of each scaled column.
    pub fn fit(matrix: &Matrix) -> Self {
        Self::fit_by(matrix, false)
    }

    /// Like [`Self::fit`], with the median and the interquartile range (over 1.349, the
    /// standard deviation's equal for normal data) instead of the mean and the standard
    /// deviation: a few extreme amounts then do not squeeze every other row together.
    /// A column whose quartiles meet keeps its standard deviation.
    pub fn fit_robust(matrix: &Matrix) -> Self {
        Self::fit_by(matrix, true)
    }

    fn fit_by(matrix: &Matrix, robust: bool) -> Self {
        let (mut mean, mut std) = (vec![0f32; matrix.cols], vec![1f32; matrix.cols]);
        let scaled: Vec<bool> = (0..matrix.cols)
            .map(|col| {
                (0..matrix.rows).any(|r| {
                    let v = matrix.data[r * matrix.cols + col];
                    v != 0.0 && v != 1.0
                })
            })
            .collect();
        let mut values = Vec::with_capacity(matrix.rows);
        for col in (0..matrix.cols).filter(|&col| scaled[col]) {
            values.clear();
            values.extend((0..matrix.rows).map(|r| matrix.data[r * matrix.cols + col]));
            let n = values.len() as f64;
            let m = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let var = values
                .iter()
                .map(|&v| (f64::from(v) - m) * (f64::from(v) - m))
                .sum::<f64>()
                / n;
            mean[col] = m as f32;
            std[col] = if var > 1e-12 { var.sqrt() as f32 } else { 1.0 };
            if robust {
                values.sort_by(f32::total_cmp);
                let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
                let iqr = (at(0.75) - at(0.25)) / 1.349;
                mean[col] = at(0.5);
                if iqr > 1e-6 {
                    std[col] = iqr;
                }
            }
        }
        Self { mean, std, scaled }
    }

    pub fn apply(&self, matrix: &Matrix) -> Matrix {
        let mut data = matrix.data.clone();
        for row in data.chunks_mut(matrix.cols) {
            for (col, v) in row.iter_mut().enumerate() {
                *v = (*v - self.mean[col]) / self.std[col];
            }
        }
        Matrix { data, ..*matrix }
    }
}

/// Training settings.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub hidden: usize,
    pub code: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub seed: u64,
    /// See [`ErrorModel::cap`].
    pub error_cap: f32,
    /// Denoising: the standard deviation of Gaussian noise added to the scaled (non-0/1)
    /// standardised inputs while training; the target stays the clean row. 0: off.
    pub input_noise: f32,
    /// Early stopping: keep the weights of the epoch with the lowest loss on the
    /// validation period's legitimate rows, and stop after this many epochs without a
    /// better one. 0: train every epoch and keep the last.
    pub patience: usize,
    /// Median / interquartile-range scaling instead of mean / standard deviation.
    pub robust_scaling: bool,
    /// How an ensemble's members' per-feature errors combine (all members share it).
    pub combination: Combination,
}

/// How an ensemble combines its members' per-feature errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Combination {
    /// Their mean.
    #[default]
    Mean,
    /// Their minimum: a feature counts as unusual only where no member reconstructs it,
    /// so one member's blind spot for some legitimate rows does not flag them.
    Min,
}

impl std::fmt::Display for Combination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Combination::Mean => "mean",
            Combination::Min => "min",
        })
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            hidden: 64,
            code: 3,
            epochs: 30,
            batch_size: 256,
            learning_rate: 1e-3,
            seed: 42,
            error_cap: 9.0,
            input_noise: 0.0,
            patience: 3,
            robust_scaling: true,
            combination: Combination::Mean,
        }
    }
}

/// Progress reported after each epoch.
#[derive(Debug, Clone, Copy)]
pub struct EpochReport {
    pub epoch: usize,
    pub epochs: usize,
    pub train_loss: f64,
    pub validation_loss: f64,
}

/// How reconstruction errors become a score, fitted on the training rows after training.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorModel {
    /// Per-feature bounds of the standardised training data: the reconstruction is clipped
    /// to them, so a value outside everything seen in training can never be reconstructed
    /// by extrapolating along a correlated direction.
    pub low: Vec<f32>,
    pub high: Vec<f32>,
    /// Mean squared error of each feature on the training rows: each feature's error is
    /// divided by it, so a feature the model reconstructs well counts when it fails, and an
    /// unpredictable one does not drown the rest.
    pub scale: Vec<f32>,
    /// Largest error one feature may contribute (in units of its training error): one
    /// extreme value (a record travel bill) counts less than several unusual ones together.
    pub cap: f32,
    /// Per feature, which side of its reconstruction its error counts on (see
    /// [`crate::error_side`]); all [`ErrorSide::Both`] when fitted, set by the ensemble.
    pub sides: Vec<ErrorSide>,
}

impl ErrorModel {
    /// Per-feature bounds of `reconstruction − value` that keep each feature's counted
    /// side; None when every feature counts both (the difference is used as it is).
    fn difference_bounds(&self) -> Option<(Vec<f32>, Vec<f32>)> {
        if self.sides.iter().all(|&s| s == ErrorSide::Both) {
            return None;
        }
        Some(self.sides.iter().map(|s| s.difference_bounds()).unzip())
    }
}

/// A trained autoencoder.
pub struct Autoencoder {
    pub standardizer: Standardizer,
    pub errors: ErrorModel,
    /// (weight [out, in], bias [out]) per layer.
    layers: Vec<(Var, Var)>,
    pub config: TrainConfig,
}

/// A standard normal draw (Box-Muller): the noise of denoising training.
fn standard_normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn init_layer(
    rng: &mut ChaCha8Rng,
    inputs: usize,
    outputs: usize,
    device: &Device,
) -> Result<(Var, Var), TrainError> {
    // He-uniform for ReLU layers, seeded so training is reproducible.
    let bound = (6.0 / inputs as f64).sqrt() as f32;
    let weights: Vec<f32> = (0..inputs * outputs)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    let weight = Var::from_tensor(&Tensor::from_vec(weights, (outputs, inputs), device)?)?;
    let bias = Var::from_tensor(&Tensor::zeros(outputs, DType::F32, device)?)?;
    Ok((weight, bias))
}

impl Autoencoder {
    fn forward(&self, x: &Tensor) -> Result<Tensor, TrainError> {
        let mut h = x.clone();
        let last = self.layers.len() - 1;
        for (i, (w, b)) in self.layers.iter().enumerate() {
            h = h
                .matmul(&w.as_tensor().t()?)?
                .broadcast_add(b.as_tensor())?;
            // ReLU after the first encoder and the first decoder layer; the code and the
            // reconstruction stay linear.
            if i != last && i % 2 == 0 {
                h = h.relu()?;
            }
        }
        Ok(h)
    }

    fn loss_on(&self, z: &Matrix) -> Result<f64, TrainError> {
        if z.rows == 0 {
            return Ok(f64::NAN);
        }
        let mut total = 0.0;
        for start in (0..z.rows).step_by(8192) {
            let n = (z.rows - start).min(8192);
            let x = Tensor::from_slice(
                &z.data[start * z.cols..(start + n) * z.cols],
                (n, z.cols),
                &Device::Cpu,
            )?;
            let err = (self.forward(&x)? - &x)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f32>()?;
            total += f64::from(err);
        }
        Ok(total / (z.rows * z.cols) as f64)
    }

    /// Trains on `train` (raw features), watching the loss on `validation`.
    pub fn train(
        train: &Matrix,
        validation: &Matrix,
        config: TrainConfig,
        mut on_epoch: impl FnMut(EpochReport),
    ) -> Result<(Self, EpochReport), TrainError> {
        if train.rows == 0 {
            return Err(TrainError::NoData("no training rows".to_string()));
        }
        let device = Device::Cpu;
        let standardizer = if config.robust_scaling {
            Standardizer::fit_robust(train)
        } else {
            Standardizer::fit(train)
        };
        let z_train = standardizer.apply(train);
        let z_valid = standardizer.apply(validation);
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let f = train.cols;
        let sizes = [f, config.hidden, config.code, config.hidden, f];
        let layers = sizes
            .windows(2)
            .map(|w| init_layer(&mut rng, w[0], w[1], &device))
            .collect::<Result<Vec<_>, _>>()?;
        let f_cols = train.cols;
        let mut model = Self {
            standardizer,
            errors: ErrorModel {
                low: vec![f32::MIN; f_cols],
                high: vec![f32::MAX; f_cols],
                scale: vec![1.0; f_cols],
                cap: f32::MAX,
                sides: vec![ErrorSide::Both; f_cols],
            },
            layers,
            config: config.clone(),
        };
        let vars: Vec<Var> = model
            .layers
            .iter()
            .flat_map(|(w, b)| [w.clone(), b.clone()])
            .collect();
        let mut optimizer = AdamW::new(
            vars,
            ParamsAdamW {
                lr: config.learning_rate,
                weight_decay: 0.0,
                ..Default::default()
            },
        )?;
        let mut order: Vec<usize> = (0..z_train.rows).collect();
        let mut batch = Vec::with_capacity(config.batch_size * f);
        let mut report = EpochReport {
            epoch: 0,
            epochs: config.epochs,
            train_loss: f64::NAN,
            validation_loss: f64::NAN,
        };
        let mut noisy = Vec::with_capacity(config.batch_size * f);
        // The best epoch's report and weights, for early stopping.
        let mut best: Option<(EpochReport, Vec<(Tensor, Tensor)>)> = None;
        if config.patience > 0 && z_valid.rows == 0 {
            tracing::warn!("no validation rows: early stopping is off, every epoch runs");
        }
        for epoch in 1..=config.epochs {
            order.shuffle(&mut rng);
            let (mut loss_sum, mut seen) = (0.0, 0usize);
            for chunk in order.chunks(config.batch_size.max(1)) {
                batch.clear();
                for &row in chunk {
                    batch.extend_from_slice(z_train.row(row));
                }
                let x = Tensor::from_slice(&batch, (chunk.len(), f), &device)?;
                let input = if config.input_noise > 0.0 {
                    noisy.clear();
                    for (i, &v) in batch.iter().enumerate() {
                        noisy.push(if model.standardizer.scaled[i % f] {
                            v + config.input_noise * standard_normal(&mut rng)
                        } else {
                            v
                        });
                    }
                    Tensor::from_slice(&noisy, (chunk.len(), f), &device)?
                } else {
                    x.clone()
                };
                let loss = (model.forward(&input)? - &x)?.sqr()?.mean_all()?;
                optimizer.backward_step(&loss)?;
                loss_sum += f64::from(loss.to_scalar::<f32>()?) * chunk.len() as f64;
                seen += chunk.len();
            }
            report = EpochReport {
                epoch,
                epochs: config.epochs,
                train_loss: loss_sum / seen as f64,
                validation_loss: model.loss_on(&z_valid)?,
            };
            on_epoch(report);
            if config.patience > 0 && z_valid.rows > 0 {
                let improved = best
                    .as_ref()
                    .is_none_or(|(kept, _)| report.validation_loss < kept.validation_loss);
                if improved {
                    let weights = model
                        .layers
                        .iter()
                        .map(|(w, b)| Ok((w.as_tensor().copy()?, b.as_tensor().copy()?)))
                        .collect::<Result<Vec<_>, TrainError>>()?;
                    best = Some((report, weights));
                } else if best
                    .as_ref()
                    .is_some_and(|(kept, _)| epoch - kept.epoch >= config.patience)
                {
                    break;
                }
            }
        }
        if let Some((kept, weights)) = best {
            for ((w, b), (best_w, best_b)) in model.layers.iter().zip(weights) {
                w.set(&best_w)?;
                b.set(&best_b)?;
            }
            tracing::debug!(
                epoch = kept.epoch,
                validation_loss = kept.validation_loss,
                "kept the best epoch's weights"
            );
            report = kept;
            // Recomputed from the weights now in the model: the kept epoch's, restored.
            report.validation_loss = model.loss_on(&z_valid)?;
        }
        model.fit_error_model(&z_train)?;
        Ok((model, report))
    }

    fn fit_error_model(&mut self, z: &Matrix) -> Result<(), TrainError> {
        let cols = z.cols;
        let (mut low, mut high) = (vec![f32::MAX; cols], vec![f32::MIN; cols]);
        for row in z.data.chunks(cols) {
            for (c, &v) in row.iter().enumerate() {
                low[c] = low[c].min(v);
                high[c] = high[c].max(v);
            }
        }
        self.errors.low = low;
        self.errors.high = high;
        self.errors.scale = vec![1.0; cols];
        self.errors.cap = f32::MAX;
        // Each feature's scale is its error on either side: a one-sided feature's error,
        // when it counts, weighs as much as it would two-sided.
        let sides = std::mem::replace(&mut self.errors.sides, vec![ErrorSide::Both; cols]);
        let errors = self.feature_errors_standardized(z);
        self.errors.sides = sides;
        let errors = errors?;
        let mut sums = vec![0f64; cols];
        for row in errors.chunks(cols) {
            for (c, &e) in row.iter().enumerate() {
                sums[c] += f64::from(e);
            }
        }
        self.errors.scale = sums
            .iter()
            .map(|s| ((s / z.rows.max(1) as f64) as f32).max(1e-4))
            .collect();
        self.errors.cap = self.config.error_cap;
        Ok(())
    }

    /// Per-feature errors of standardised rows: the clipped reconstruction's squared
    /// error, on the feature's counted side, over the feature's training error scale.
    fn feature_errors_standardized(&self, z: &Matrix) -> Result<Vec<f32>, TrainError> {
        let device = Device::Cpu;
        let low = Tensor::from_slice(&self.errors.low, z.cols, &device)?;
        let high = Tensor::from_slice(&self.errors.high, z.cols, &device)?;
        let scale = Tensor::from_slice(&self.errors.scale, z.cols, &device)?;
        let sided = match self.errors.difference_bounds() {
            Some((low, high)) => Some((
                Tensor::from_slice(&low, z.cols, &device)?,
                Tensor::from_slice(&high, z.cols, &device)?,
            )),
            None => None,
        };
        let mut out = Vec::with_capacity(z.data.len());
        for start in (0..z.rows).step_by(8192) {
            let n = (z.rows - start).min(8192);
            let t = Tensor::from_slice(
                &z.data[start * z.cols..(start + n) * z.cols],
                (n, z.cols),
                &device,
            )?;
            let clamp = |t: Tensor, low: &Tensor, high: &Tensor| {
                t.broadcast_maximum(low)?.broadcast_minimum(high)
            };
            let recon = clamp(self.forward(&t)?, &low, &high)?;
            let mut difference = (recon - &t)?;
            if let Some((low, high)) = &sided {
                difference = clamp(difference, low, high)?;
            }
            let err = difference
                .sqr()?
                .broadcast_div(&scale)?
                .clamp(0f32, self.errors.cap)?;
            out.extend(err.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// Layer sizes, input first.
    pub fn architecture(&self) -> Vec<usize> {
        let mut sizes = vec![self.standardizer.mean.len()];
        sizes.extend(self.layers.iter().map(|(w, _)| w.as_tensor().dims()[0]));
        sizes
    }

    /// Appends this network's nodes to `g`, reading the standardised input `z` transposed
    /// ([features, rows]; see [`Ensemble::to_onnx`] for why), with names prefixed by `p`.
    /// Returns the names of its clipped reconstruction, its per-feature error and that
    /// error capped, all [features, rows].
    fn append_to_graph(
        &self,
        g: &mut GraphBuilder,
        z: &str,
        p: &str,
    ) -> Result<(String, String, String), TrainError> {
        let f = self.standardizer.mean.len() as i64;
        let last = self.layers.len() - 1;
        let mut current = z.to_string();
        for (i, (w, b)) in self.layers.iter().enumerate() {
            let dims = w.as_tensor().dims().to_vec();
            let weights = w.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let bias = b.as_tensor().to_vec1::<f32>()?;
            let (wn, bn, out) = (
                format!("{p}w{i}"),
                format!("{p}b{i}"),
                format!("{p}gemm{i}"),
            );
            // W [out, in] · x [in, rows] + b [out, 1].
            g.constant(&wn, &[dims[0] as i64, dims[1] as i64], &weights);
            g.constant(&bn, &[dims[0] as i64, 1], &bias);
            g.node("Gemm", &[&wn, &current, &bn], &out);
            current = out;
            if i != last && i % 2 == 0 {
                let relu = format!("{p}relu{i}");
                g.node("Relu", &[&current], &relu);
                current = relu;
            }
        }
        let name = |n: &str| format!("{p}{n}");
        g.constant(&name("low"), &[f, 1], &self.errors.low);
        g.constant(&name("high"), &[f, 1], &self.errors.high);
        g.constant(&name("error_scale"), &[f, 1], &self.errors.scale);
        g.constant(&name("error_cap"), &[], &[self.errors.cap]);
        g.clamp(
            &current,
            &name("low"),
            &name("high"),
            &name("reconstruction"),
        );
        g.node("Sub", &[&name("reconstruction"), z], &name("diff"));
        // One-sided features: the difference clamped to the counted side (two element-wise
        // passes, ~3 % of the graph's time measured; none when every feature counts both).
        let counted = match self.errors.difference_bounds() {
            Some((low, high)) => {
                g.constant(&name("diff_low"), &[f, 1], &low);
                g.constant(&name("diff_high"), &[f, 1], &high);
                g.clamp(
                    &name("diff"),
                    &name("diff_low"),
                    &name("diff_high"),
                    &name("counted_diff"),
                );
                name("counted_diff")
            }
            None => name("diff"),
        };
        g.node("Mul", &[&counted, &counted], &name("squared_error"));
        g.node(
            "Div",
            &[&name("squared_error"), &name("error_scale")],
            &name("scaled_error"),
        );
        g.node(
            "Min",
            &[&name("scaled_error"), &name("error_cap")],
            &name("capped_error"),
        );
        Ok((
            name("reconstruction"),
            name("scaled_error"),
            name("capped_error"),
        ))
    }
}

/// Several autoencoders trained from different seeds on the same data, their per-feature
/// errors combined (averaged, by default; see [`Combination`]). A narrow bottleneck (3
/// units by default) settles in different minima from run to run, and which one it finds
/// changes what it catches; the average is steadier than any one pick.
///
/// Members may differ in their inputs: with [`Ensemble::amount_by_category`], some see the
/// derived amount against its category's as one more, last, column and the others do not
/// (their error for it counts as 0). Members that look at the rows differently err on
/// different legitimate rows, which averaging then discounts (BENCHMARKS.md).
pub struct Ensemble {
    pub members: Vec<Autoencoder>,
    /// The derived input some members were trained with (their inputs' last column).
    pub amount_by_category: Option<AmountByCategory>,
}

impl Ensemble {
    /// The standardisation of the widest member's inputs (the others' inputs are its
    /// first columns, fitted on the same rows: the same values), after checking the
    /// members fit together: with a derived input, each member is as wide as the inputs
    /// or one wider, and one is; without, all are as wide.
    fn standardizer(&self) -> Result<&Standardizer, TrainError> {
        let widest = self
            .members
            .iter()
            .map(|m| &m.standardizer)
            .max_by_key(|s| s.mean.len())
            .ok_or_else(|| TrainError::NoData("an ensemble of no models".to_string()))?;
        let (wide, narrow) = match &self.amount_by_category {
            Some(derived) => (derived.inputs + 1, derived.inputs),
            None => (widest.mean.len(), widest.mean.len()),
        };
        let fits = |m: &Autoencoder| {
            let width = m.standardizer.mean.len();
            width == wide || width == narrow
        };
        if wide == 0 || widest.mean.len() != wide || !self.members.iter().all(fits) {
            return Err(TrainError::Shape(format!(
                "members of {:?} inputs do not make one ensemble{}",
                self.members
                    .iter()
                    .map(|m| m.standardizer.mean.len())
                    .collect::<Vec<_>>(),
                if self.amount_by_category.is_some() {
                    " with one derived input"
                } else {
                    ""
                }
            )));
        }
        Ok(widest)
    }

    /// Sets which side of its reconstruction each input's error counts on (see
    /// [`crate::error_side`]): `sides` has one per column of the widest member's inputs
    /// (the features, then the derived input if any); a narrower member takes the first.
    pub fn set_error_sides(&mut self, sides: &[ErrorSide]) -> Result<(), TrainError> {
        let width = self.standardizer()?.mean.len();
        if sides.len() != width {
            return Err(TrainError::Shape(format!(
                "{} error sides for {width} inputs",
                sides.len()
            )));
        }
        for member in &mut self.members {
            let own = member.standardizer.mean.len();
            member.errors.sides = sides[..own].to_vec();
        }
        Ok(())
    }

    fn combination(&self) -> Combination {
        self.members
            .first()
            .map_or(Combination::Mean, |m| m.config.combination)
    }

    /// Scores computed by candle: the members' per-feature errors combined (see
    /// [`Combination`]), then their mean over features.
    pub fn scores(&self, x: &Matrix) -> Result<Vec<f32>, TrainError> {
        let z = match &self.amount_by_category {
            Some(derived) => self.standardizer()?.apply(&derived.augment(x)),
            None => self.standardizer()?.apply(x),
        };
        let (combine, divisor): (fn(f32, f32) -> f32, f32) = match self.combination() {
            Combination::Mean => (|a, e| a + e, self.members.len() as f32),
            Combination::Min => (f32::min, 1.0),
        };
        // The members without the derived input read z's first columns (copied once).
        let narrow = z.cols - 1;
        let z_own = self
            .members
            .iter()
            .any(|m| m.standardizer.mean.len() < z.cols)
            .then(|| Matrix {
                rows: z.rows,
                cols: narrow,
                data: z
                    .data
                    .chunks(z.cols)
                    .flat_map(|row| &row[..narrow])
                    .copied()
                    .collect(),
            });
        let mut combined: Option<Vec<f32>> = None;
        for member in &self.members {
            let width = member.standardizer.mean.len();
            let errors = match &z_own {
                Some(own) if width == own.cols => {
                    // Padded with 0 for the derived column, which this member does not see.
                    let errors = member.feature_errors_standardized(own)?;
                    errors
                        .chunks(width)
                        .flat_map(|row| row.iter().copied().chain([0.0]))
                        .collect()
                }
                _ => member.feature_errors_standardized(&z)?,
            };
            combined = Some(match combined {
                None => errors,
                Some(mut acc) => {
                    for (a, e) in acc.iter_mut().zip(&errors) {
                        *a = combine(*a, *e);
                    }
                    acc
                }
            });
        }
        let combined = combined.unwrap_or_default();
        Ok(combined
            .chunks(z.cols.max(1))
            .map(|row| row.iter().sum::<f32>() / row.len() as f32 / divisor)
            .collect())
    }

    /// Layer sizes of the widest member, input first.
    pub fn architecture(&self) -> Vec<usize> {
        self.members
            .iter()
            .map(Autoencoder::architecture)
            .max_by_key(|a| a.first().copied())
            .unwrap_or_default()
    }

    /// The ONNX graph: `input` [rows, features] → `output` (mean reconstruction),
    /// `feature_error` (the members' squared errors per feature in standardised units, over
    /// the feature's training error, combined as [`Combination`] says), `score` (the mean
    /// over the reconstructed columns of that error capped at the cap). With a derived
    /// input, the members that see it read it as one more column (the others count 0 for
    /// it), the score's mean is over that column too, `output` leaves it out and
    /// `feature_error` adds its error to the amount's.
    ///
    /// The members work on the inputs transposed, [features, rows]: ONNX Runtime applies
    /// a per-feature constant (the clip bounds, the error scale, a bias) along runs of the
    /// innermost dimension, and with the features innermost those runs were 30 floats
    /// long; the element-wise work, most of the graph's time, then ran ~3× slower than
    /// along runs of rows (BENCHMARKS.md, "The autoencoder's graph cut down and transposed").
    pub fn to_onnx(&self, name: &str) -> Result<Vec<u8>, TrainError> {
        let standardizer = self.standardizer()?;
        let f = standardizer.mean.len() as i64;
        let inputs = self
            .amount_by_category
            .as_ref()
            .map_or(f as usize, |derived| derived.inputs);
        let mut g = GraphBuilder::default();
        g.input("input", &[Dim::Named("rows"), Dim::Fixed(inputs as i64)]);
        let features = match &self.amount_by_category {
            Some(derived) => {
                derived.append_to_graph(&mut g, "input", "augmented");
                "augmented"
            }
            None => "input",
        };
        // Tensors named `…_t` are [features, rows].
        g.transpose(features, "features_t");
        g.constant("mean", &[f, 1], &standardizer.mean);
        g.constant("std", &[f, 1], &standardizer.std);
        g.node("Sub", &["features_t", "mean"], "centered_t");
        g.node("Div", &["centered_t", "std"], "z_t");
        let narrow = self
            .members
            .iter()
            .any(|m| (m.standardizer.mean.len() as i64) < f);
        if let Some(derived) = self.amount_by_category.as_ref().filter(|_| narrow) {
            // The members without the derived input read z's first features (the inputs'
            // own columns, rows here); their outputs get a row of zeros for it.
            g.gather_rows("z_t", "own_columns", &derived.own_columns(), "z_own_t");
            g.constant_i64("pad_derived", &[4], &[0, 0, f - inputs as i64, 0]);
        }
        let mut reconstructions = Vec::new();
        let mut errors = Vec::new();
        let mut capped = Vec::new();
        for (k, member) in self.members.iter().enumerate() {
            let p = format!("m{k}_");
            let wide = member.standardizer.mean.len() as i64 == f;
            let z = if wide { "z_t" } else { "z_own_t" };
            let outputs = member.append_to_graph(&mut g, z, &p)?;
            let (reconstruction, error, capped_error) = if wide {
                outputs
            } else {
                let mut padded = |name: String| {
                    let out = format!("{name}_padded");
                    g.node("Pad", &[&name, "pad_derived"], &out);
                    out
                };
                (padded(outputs.0), padded(outputs.1), padded(outputs.2))
            };
            reconstructions.push(reconstruction);
            errors.push(error);
            capped.push(capped_error);
        }
        let count = self.members.len() as f32;
        g.constant("member_count", &[], &[count]);
        let recon: Vec<&str> = reconstructions.iter().map(String::as_str).collect();
        let errs: Vec<&str> = errors.iter().map(String::as_str).collect();
        let caps: Vec<&str> = capped.iter().map(String::as_str).collect();
        g.node("Sum", &recon, "reconstruction_sum_t");
        g.node(
            "Div",
            &["reconstruction_sum_t", "member_count"],
            "reconstruction_t",
        );
        // Explanations rank features by the uncapped error: under the cap, several
        // features of an anomaly would tie.
        // Combined as the score combines them, so that explanations rank what it counts.
        for (members, output) in [(&errs, "feature_error_t"), (&caps, "capped_error_t")] {
            match self.combination() {
                Combination::Mean => {
                    let sum = format!("{output}_sum");
                    g.node("Sum", members, &sum);
                    g.node("Div", &[&sum, "member_count"], output);
                }
                Combination::Min => g.node("Min", members, output),
            }
        }
        g.node_with(
            "ReduceMean",
            &["capped_error_t"],
            "score",
            vec![ints_attribute("axes", &[0]), int_attribute("keepdims", 0)],
        );
        g.node("Mul", &["reconstruction_t", "std"], "scaled_t");
        g.node("Add", &["scaled_t", "mean"], "reconstruction_raw_t");
        match &self.amount_by_category {
            Some(derived) => {
                g.transpose("reconstruction_raw_t", "augmented_output");
                g.transpose("feature_error_t", "augmented_feature_error");
                derived.append_unaugment(&mut g, "augmented_output", false, "output");
                derived.append_unaugment(&mut g, "augmented_feature_error", true, "feature_error");
            }
            None => {
                g.transpose("reconstruction_raw_t", "output");
                g.transpose("feature_error_t", "feature_error");
            }
        }
        let per_input = [Dim::Named("rows"), Dim::Fixed(inputs as i64)];
        g.output("output", &per_input);
        g.output("feature_error", &per_input);
        g.output("score", &[Dim::Named("rows")]);
        Ok(g.finish(
            name,
            "RiskSense transaction autoencoder ensemble; score = mean scaled squared reconstruction error",
        ))
    }
}
