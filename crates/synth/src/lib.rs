//! A seeded generator of transactions in the Kaggle / Sparkov schema.
//!
//! It follows how the Sparkov generator behaves (measured on ../shared/data, see
//! [`params`]): customers with a home, age, gender, job and a fixed number of purchases per
//! day; purchases by category, hour and amount; and, for most customers, one two-day fraud
//! episode at night with amounts unusual for the category, during which the card's normal
//! activity stops.
//!
//! Output is generated day by day, sorted by time within the day, so memory stays bounded
//! whatever the period. Every (customer, day) has its own random stream derived from the
//! seed, so the same seed gives the same rows.

pub mod params;
pub mod profile;
pub mod tables;

/// What can go wrong generating transactions.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Format(#[from] risksense_formats::FormatError),
}

use arrow::record_batch::RecordBatch;
use rand::distr::{Distribution, weighted::WeightedIndex};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Gamma, LogNormal, Poisson};

use params::*;
use risksense_common::time::{MICROS_PER_SECOND, days_from_civil};
use risksense_formats::codec::builder::{TransactionBuilder, TransactionRow};
use tables::TABLES;

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    pub customers: u32,
    /// First day, as days since 1970-01-01.
    pub start_day: i64,
    /// Last day (inclusive), as days since 1970-01-01.
    pub end_day: i64,
    pub seed: u64,
    /// Rows per output batch.
    pub batch_size: usize,
}

impl SynthConfig {
    /// `start` and `end` as `YYYY-MM-DD`, both inclusive.
    pub fn new(customers: u32, start: &str, end: &str, seed: u64) -> Result<Self, SynthError> {
        let day = |text: &str| {
            risksense_common::time::parse_date(text)
                .map(i64::from)
                .ok_or_else(|| {
                    SynthError::InvalidArgument(format!("`{text}` is not a date like 2019-01-01"))
                })
        };
        let (start_day, end_day) = (day(start)?, day(end)?);
        if end_day < start_day {
            return Err(SynthError::InvalidArgument(format!(
                "the end date {end} is before the start date {start}"
            )));
        }
        if customers == 0 {
            return Err(SynthError::InvalidArgument(
                "at least one customer is needed".to_string(),
            ));
        }
        Ok(Self {
            customers,
            start_day,
            end_day,
            seed,
            batch_size: 8192,
        })
    }

    pub fn days(&self) -> i64 {
        self.end_day - self.start_day + 1
    }
}

/// A cardholder.
#[derive(Debug, Clone)]
struct Customer {
    cc_num: i64,
    first: String,
    last: String,
    female: bool,
    street: String,
    place: usize,
    job: usize,
    dob: i32,
    per_day: u32,
    morning_share: f64,
    /// First day of the fraud episode (days since epoch); the episode covers it and the next.
    fraud_day: Option<i64>,
}

/// One generated transaction before it becomes Arrow columns.
#[derive(Debug, Clone, Copy)]
struct Purchase {
    micros: i64,
    customer: u32,
    category: u8,
    merchant: u16,
    amt: f64,
    merch_lat: f64,
    merch_long: f64,
    trans_num: u128,
    fraud: bool,
}

/// Mixes the seed with a stream id into an independent seed (SplitMix64 finaliser).
fn stream_seed(seed: u64, a: u64, b: u64) -> u64 {
    let mut z = seed
        ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F).rotate_left(31);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// Day of week of a day number, Monday = 0 (1970-01-01 was a Thursday).
fn weekday(day: i64) -> usize {
    (day + 3).rem_euclid(7) as usize
}

fn month(day: i64) -> usize {
    (risksense_common::time::civil_from_days(day).1 - 1) as usize
}

/// The fixed random distributions, built once.
struct Distributions {
    legit_amount: Vec<Gamma<f64>>,
    fraud_amount: Vec<LogNormal<f64>>,
    fraud_category: WeightedIndex<f64>,
    legit_cumulative: [f64; 14],
}

impl Distributions {
    fn new() -> Self {
        let total: f64 = LEGIT_SHARE.iter().sum();
        let mut legit_cumulative = [0.0; 14];
        let mut running = 0.0;
        for (slot, share) in legit_cumulative.iter_mut().zip(LEGIT_SHARE) {
            running += share / total;
            *slot = running;
        }
        Self {
            legit_amount: LEGIT_AMOUNT_GAMMA
                .iter()
                .map(|&(k, theta)| Gamma::new(k, theta).expect("valid gamma"))
                .collect(),
            fraud_amount: FRAUD_AMOUNT_LOGNORMAL
                .iter()
                .map(|&(mu, sigma)| LogNormal::new(mu, sigma).expect("valid lognormal"))
                .collect(),
            fraud_category: WeightedIndex::new(FRAUD_SHARE).expect("valid weights"),
            legit_cumulative,
        }
    }
}

/// Iterator over generated transaction batches.
pub struct Generator {
    config: SynthConfig,
    customers: Vec<Customer>,
    dists: Distributions,
    day: i64,
    row_id: i64,
    pending: Vec<Purchase>,
    pending_at: usize,
    builder: TransactionBuilder,
}

impl Generator {
    pub fn new(config: SynthConfig) -> Self {
        let customers = make_customers(&config);
        let day = config.start_day;
        let builder = TransactionBuilder::with_capacity(config.batch_size);
        Self {
            config,
            customers,
            dists: Distributions::new(),
            day,
            row_id: 0,
            pending: Vec::new(),
            pending_at: 0,
            builder,
        }
    }

    /// Rows emitted so far.
    pub fn rows_emitted(&self) -> i64 {
        self.row_id
    }

    /// Days fully generated so far, for progress reporting.
    pub fn days_done(&self) -> i64 {
        self.day - self.config.start_day
    }

    /// Generates one day's purchases of every customer, sorted by time.
    fn generate_day(&mut self, day: i64) -> Vec<Purchase> {
        let activity = DAY_OF_WEEK_WEIGHT[weekday(day)] * MONTH_WEIGHT[month(day)];
        let mut purchases = Vec::new();
        for (index, customer) in self.customers.iter().enumerate() {
            let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(
                self.config.seed,
                index as u64 + 1,
                day as u64,
            ));
            let on_fraud_days = customer
                .fraud_day
                .is_some_and(|first| day == first || day == first + 1);
            if on_fraud_days {
                self.fraud_purchases(&mut rng, index, customer, day, &mut purchases);
                continue; // the card's normal activity stops while it is being abused
            }
            let mean = f64::from(customer.per_day) * activity;
            if mean <= 0.0 {
                continue;
            }
            let count = Poisson::new(mean).map_or(0.0, |p| p.sample(&mut rng)) as u32;
            for _ in 0..count {
                let u: f64 = rng.random();
                let category = self
                    .dists
                    .legit_cumulative
                    .iter()
                    .position(|&c| u <= c)
                    .unwrap_or(13);
                // Sparkov couples the time of day to the category draw (see params).
                let hour = if u < customer.morning_share {
                    rng.random_range(0..12)
                } else {
                    rng.random_range(12..24)
                };
                let mut amt = self.dists.legit_amount[category].sample(&mut rng);
                if amt < 1.0 {
                    amt = rng.random_range(1.0..10.0);
                }
                let amt = round_to(amt.min(MAX_LEGIT_AMOUNT), 2);
                purchases.push(
                    self.purchase(&mut rng, index, customer, day, hour, category, amt, false),
                );
            }
        }
        purchases.sort_by_key(|p| (p.micros, p.customer));
        purchases
    }

    fn fraud_purchases(
        &self,
        rng: &mut ChaCha8Rng,
        index: usize,
        customer: &Customer,
        day: i64,
        out: &mut Vec<Purchase>,
    ) {
        let count = rng.random_range(FRAUD_PER_DAY.0..=FRAUD_PER_DAY.1);
        for _ in 0..count {
            let category = self.dists.fraud_category.sample(rng);
            let morning = rng.random_bool(FRAUD_AM_SHARE[category]);
            let night = rng.random_bool(FRAUD_NIGHT_SHARE);
            let hour = match (morning, night) {
                (true, true) => rng.random_range(0..4),
                (false, true) => rng.random_range(22..24),
                (true, false) => rng.random_range(0..12),
                (false, false) => rng.random_range(12..24),
            };
            let amt = if category == MISC_POS && rng.random_bool(0.5) {
                rng.random_range(300.0..930.0)
            } else {
                self.dists.fraud_amount[category].sample(rng)
            };
            let amt = round_to(amt.max(1.0), 2);
            out.push(self.purchase(rng, index, customer, day, hour, category, amt, true));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn purchase(
        &self,
        rng: &mut ChaCha8Rng,
        index: usize,
        customer: &Customer,
        day: i64,
        hour: u32,
        category: usize,
        amt: f64,
        fraud: bool,
    ) -> Purchase {
        let seconds = i64::from(hour) * 3600 + rng.random_range(0..3600);
        let merchants = &TABLES.merchants[category];
        let place = &TABLES.places[customer.place];
        Purchase {
            micros: (day * 86_400 + seconds) * MICROS_PER_SECOND,
            customer: index as u32,
            category: category as u8,
            merchant: rng.random_range(0..merchants.len()) as u16,
            amt,
            // Merchants are anywhere within about one degree of home.
            merch_lat: round_to(place.lat + rng.random_range(-1.0..1.0), 6),
            merch_long: round_to(place.long + rng.random_range(-1.0..1.0), 6),
            trans_num: rng.random(),
            fraud,
        }
    }

    fn build_batch(&mut self, purchases: &[Purchase]) -> Result<RecordBatch, SynthError> {
        let builder = &mut self.builder;
        let mut hex = [0u8; 32];
        for p in purchases {
            let c = &self.customers[p.customer as usize];
            let place = &TABLES.places[c.place];
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            for (i, slot) in hex.iter_mut().enumerate() {
                *slot = DIGITS[((p.trans_num >> (124 - 4 * i)) & 0xF) as usize];
            }
            builder.append_row(&TransactionRow {
                row_id: self.row_id,
                event_time: p.micros,
                cc_num: c.cc_num,
                amt: p.amt,
                zip: place.zip,
                lat: place.lat,
                long: place.long,
                city_pop: place.city_pop,
                dob: c.dob,
                unix_time: p.micros / MICROS_PER_SECOND,
                merch_lat: p.merch_lat,
                merch_long: p.merch_long,
                is_fraud: i32::from(p.fraud),
                // In the order of STRING_COLUMNS.
                strings: [
                    TABLES.merchants[p.category as usize][p.merchant as usize].as_str(),
                    CATEGORY_ORDER[p.category as usize],
                    c.first.as_str(),
                    c.last.as_str(),
                    if c.female { "F" } else { "M" },
                    c.street.as_str(),
                    place.city.as_str(),
                    place.state.as_str(),
                    TABLES.jobs[c.job].as_str(),
                    std::str::from_utf8(&hex).unwrap_or_default(),
                ],
            });
            self.row_id += 1;
        }
        Ok(builder.finish()?)
    }
}

impl Iterator for Generator {
    type Item = Result<RecordBatch, SynthError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.pending_at >= self.pending.len() {
            if self.day > self.config.end_day {
                return None;
            }
            self.pending = self.generate_day(self.day);
            self.pending_at = 0;
            self.day += 1;
        }
        let end = (self.pending_at + self.config.batch_size.max(1)).min(self.pending.len());
        let chunk = std::mem::take(&mut self.pending);
        let batch = self.build_batch(&chunk[self.pending_at..end]);
        self.pending = chunk;
        self.pending_at = end;
        Some(batch)
    }
}

fn make_customers(config: &SynthConfig) -> Vec<Customer> {
    let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(config.seed, 0, 0));
    let age_band = WeightedIndex::new(AGE_BANDS.iter().map(|b| b.2)).expect("valid weights");
    let card_format = WeightedIndex::new(CARD_FORMATS.iter().map(|f| f.1)).expect("valid weights");
    let (start_year, _, _) = risksense_common::time::civil_from_days(config.start_day);
    let mut used_cards = std::collections::HashSet::new();
    let t = &*TABLES;
    (0..config.customers)
        .map(|_| {
            let female = rng.random_bool(FEMALE_SHARE);
            let (low, high, _) = AGE_BANDS[age_band.sample(&mut rng)];
            let age = rng.random_range(low..=high);
            let birth_year = start_year - i64::from(age) - 1;
            let dob = days_from_civil(
                birth_year,
                rng.random_range(1..=12),
                rng.random_range(1..=28),
            );
            let place = rng.random_range(0..t.places.len());
            let urban = t.places[place].city_pop >= URBAN_POPULATION;
            let segment = params::segment(age, female, urban);
            let first = if female {
                &t.female_first
            } else {
                &t.male_first
            };
            let cc_num = loop {
                let (digits, _, prefixes) = CARD_FORMATS[card_format.sample(&mut rng)];
                let prefix = prefixes[rng.random_range(0..prefixes.len())];
                let prefix_digits = prefix.ilog10() + 1;
                let rest = 10u64.pow(digits - prefix_digits);
                let number = prefix * rest + rng.random_range(0..rest);
                if used_cards.insert(number) {
                    break number as i64;
                }
            };
            let street = {
                let number = rng.random_range(1..100_000u32);
                let name = &t.streets[rng.random_range(0..t.streets.len())];
                match rng.random_range(0..10) {
                    0 | 1 => format!("{number} {name} Apt. {}", rng.random_range(100..1000)),
                    2 => format!("{number} {name} Suite {}", rng.random_range(100..1000)),
                    _ => format!("{number} {name}"),
                }
            };
            // One two-day episode, somewhere in the period (about 98 % of customers over a year).
            let episode_chance =
                (FRAUD_CUSTOMER_SHARE * config.days() as f64 / 365.0).min(FRAUD_CUSTOMER_SHARE);
            let fraud_day = (config.days() >= 2 && rng.random_bool(episode_chance))
                .then(|| config.start_day + rng.random_range(0..config.days() - 1));
            Customer {
                cc_num,
                first: first[rng.random_range(0..first.len())].clone(),
                last: t.last[rng.random_range(0..t.last.len())].clone(),
                female,
                street,
                place,
                job: rng.random_range(0..t.jobs.len()),
                dob: dob as i32,
                per_day: rng.random_range(segment.per_day.0..=segment.per_day.1),
                morning_share: segment.morning_share,
                fraud_day,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::{Int32Type, Int64Type, TimestampMicrosecondType};
    use risksense_common::schema::idx;

    fn generate(customers: u32, start: &str, end: &str, seed: u64) -> Vec<RecordBatch> {
        let config = SynthConfig::new(customers, start, end, seed).expect("valid config");
        Generator::new(config)
            .collect::<Result<_, _>>()
            .expect("generates")
    }

    #[test]
    fn same_seed_same_rows_other_seed_other_rows() {
        let a = generate(50, "2019-03-01", "2019-03-20", 7);
        let b = generate(50, "2019-03-01", "2019-03-20", 7);
        let c = generate(50, "2019-03-01", "2019-03-20", 8);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn rows_are_in_time_order_with_consecutive_ids_and_unique_trans_nums() {
        let batches = generate(100, "2019-01-01", "2019-02-28", 1);
        let mut last_time = i64::MIN;
        let mut expected_id = 0;
        let mut seen = std::collections::HashSet::new();
        for batch in &batches {
            let times = batch
                .column(idx::TRANS_DATE_TRANS_TIME)
                .as_primitive::<TimestampMicrosecondType>();
            let ids = batch.column(idx::ROW_ID).as_primitive::<Int64Type>();
            let unix = batch.column(idx::UNIX_TIME).as_primitive::<Int64Type>();
            let nums = batch.column(idx::TRANS_NUM).as_string::<i32>();
            for row in 0..batch.num_rows() {
                assert!(times.value(row) >= last_time);
                last_time = times.value(row);
                assert_eq!(ids.value(row), expected_id);
                expected_id += 1;
                assert_eq!(unix.value(row) * MICROS_PER_SECOND, times.value(row));
                assert_eq!(nums.value(row).len(), 32);
                assert!(seen.insert(nums.value(row).to_string()));
            }
        }
        assert!(expected_id > 5_000, "only {expected_id} rows");
    }

    #[test]
    fn fraud_episodes_replace_the_cards_normal_activity() {
        let batches = generate(200, "2019-01-01", "2019-06-30", 3);
        // card -> (fraud days, legit days)
        let mut fraud_days: std::collections::HashMap<i64, std::collections::BTreeSet<i64>> =
            Default::default();
        let mut legit_days: std::collections::HashMap<i64, std::collections::BTreeSet<i64>> =
            Default::default();
        let (mut rows, mut frauds) = (0usize, 0usize);
        for batch in &batches {
            let cards = batch.column(idx::CC_NUM).as_primitive::<Int64Type>();
            let unix = batch.column(idx::UNIX_TIME).as_primitive::<Int64Type>();
            let fraud = batch.column(idx::IS_FRAUD).as_primitive::<Int32Type>();
            for row in 0..batch.num_rows() {
                rows += 1;
                let day = unix.value(row).div_euclid(86_400);
                let target = if fraud.value(row) == 1 {
                    frauds += 1;
                    &mut fraud_days
                } else {
                    &mut legit_days
                };
                target.entry(cards.value(row)).or_default().insert(day);
            }
        }
        assert!(
            fraud_days.len() > 60,
            "{} cards had fraud",
            fraud_days.len()
        );
        for (card, days) in &fraud_days {
            let first = *days.first().expect("non-empty");
            let last = *days.last().expect("non-empty");
            assert!(
                last - first <= 1,
                "card {card}: fraud spans {first}..{last}"
            );
            if let Some(legit) = legit_days.get(card) {
                assert!(
                    !legit.contains(&first) && !legit.contains(&last),
                    "card {card} bought normally on a fraud day"
                );
            }
        }
        let rate = frauds as f64 / rows as f64;
        assert!((0.006..0.02).contains(&rate), "fraud rate {rate}");
    }
}
