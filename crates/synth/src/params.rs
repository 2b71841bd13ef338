//! Calibration of the generator, measured on the Sparkov reference data
//! (../shared/data/sparkov-2019h1.csv.gz; see data/README.md for how it was measured).
//! Categories are listed in the order Sparkov accumulates its category weights: the same
//! uniform draw picks the category and whether the purchase happens before noon, which is
//! why gas and online groceries are morning purchases and home or travel evening ones.

/// Sparkov's category order.
pub const CATEGORY_ORDER: [&str; 14] = [
    "gas_transport",
    "grocery_net",
    "grocery_pos",
    "misc_net",
    "misc_pos",
    "shopping_net",
    "shopping_pos",
    "entertainment",
    "food_dining",
    "health_fitness",
    "home",
    "kids_pets",
    "personal_care",
    "travel",
];

/// Share of legitimate transactions per category (same order).
pub const LEGIT_SHARE: [f64; 14] = [
    0.1027, 0.0360, 0.0919, 0.0495, 0.0611, 0.0763, 0.0886, 0.0738, 0.0712, 0.0664, 0.0954, 0.0860,
    0.0704, 0.0307,
];

/// Gamma (shape k, scale theta) of legitimate amounts per category. Draws below $1 are
/// replaced by a uniform $1–10 amount, as in the reference: that makes the spike of small
/// online purchases.
pub const LEGIT_AMOUNT_GAMMA: [(f64, f64); 14] = [
    (17.242, 3.69),
    (5.921, 9.13),
    (4.146, 28.34),
    (0.248, 261.50),
    (0.287, 205.82),
    (0.180, 295.73),
    (0.141, 396.13),
    (1.033, 58.36),
    (0.896, 52.28),
    (1.150, 45.03),
    (1.374, 39.96),
    (1.374, 41.51),
    (0.865, 54.16),
    (0.050, 5554.35),
];

/// Largest legitimate amount we draw (the reference's maximum is about $23k, in travel).
pub const MAX_LEGIT_AMOUNT: f64 = 25_000.0;

/// Share of fraudulent transactions per category (same order).
pub const FRAUD_SHARE: [f64; 14] = [
    0.0820, 0.0234, 0.2299, 0.1115, 0.0291, 0.2291, 0.1193, 0.0311, 0.0242, 0.0201, 0.0250, 0.0266,
    0.0303, 0.0184,
];

/// Log-normal (mu, sigma) of fraudulent amounts per category: tight bands, large in the
/// online and shopping categories, $8–20 in gas, online groceries and health.
pub const FRAUD_AMOUNT_LOGNORMAL: [(f64, f64); 14] = [
    (2.4443, 0.3480),
    (2.4286, 0.2855),
    (5.7413, 0.0836),
    (6.6792, 0.0929),
    (2.2, 0.15), // bimodal in the reference; the large half is drawn separately
    (6.9048, 0.1000),
    (6.7530, 0.1496),
    (6.2144, 0.1359),
    (4.7718, 0.1138),
    (3.0119, 0.0960),
    (5.5491, 0.1544),
    (2.9600, 0.1200),
    (3.0500, 0.2000),
    (2.2000, 0.1500),
];

/// Index of misc_pos in [`CATEGORY_ORDER`]; half its fraud is $300–930.
pub const MISC_POS: usize = 4;

/// Share of fraud before noon per category; the rest falls after noon.
pub const FRAUD_AM_SHARE: [f64; 14] = [
    1.0, 1.0, 0.859, 0.25, 0.423, 0.109, 0.186, 0.237, 0.22, 0.0, 0.0, 0.0, 0.0, 0.0,
];

/// Share of fraud forced into the night (22:00–03:59); the rest is spread over its half-day.
pub const FRAUD_NIGHT_SHARE: f64 = 0.80;

/// Share of customers who suffer one fraud episode over a year.
pub const FRAUD_CUSTOMER_SHARE: f64 = 0.98;

/// Fraudulent transactions on each of the episode's two days: uniform in this range.
pub const FRAUD_PER_DAY: (u32, u32) = (1, 9);

/// Day-of-week activity, Monday first, mean 1.
pub const DAY_OF_WEEK_WEIGHT: [f64; 7] = [0.627, 0.727, 0.808, 0.800, 1.212, 1.451, 1.377];

/// Month activity, January first, mean about 1 (Q4 extrapolated from the reference's
/// rising second half).
pub const MONTH_WEIGHT: [f64; 12] = [
    0.655, 0.669, 0.919, 0.869, 0.945, 1.147, 1.075, 1.123, 0.901, 1.00, 1.15, 1.50,
];

/// Age of cardholders at the start of the period: (first age, last age, weight).
pub const AGE_BANDS: [(u32, u32, f64); 9] = [
    (16, 19, 12.0),
    (20, 29, 79.0),
    (30, 39, 79.0),
    (40, 49, 82.0),
    (50, 59, 104.0),
    (60, 69, 59.0),
    (70, 79, 29.0),
    (80, 89, 22.0),
    (90, 95, 8.0),
];

/// Share of cardholders who are women.
pub const FEMALE_SHARE: f64 = 0.525;

/// A city of fewer people than this counts as rural.
pub const URBAN_POPULATION: i64 = 2500;

/// Spending habits of a customer segment.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    /// Transactions per day: a whole number drawn once per customer, uniform in this range.
    pub per_day: (u32, u32),
    /// Chance that a purchase happens before noon (coupled with the category draw).
    pub morning_share: f64,
}

/// The segment of a customer by age, gender and whether the city is urban.
pub fn segment(age: u32, female: bool, urban: bool) -> Segment {
    match (age, female, urban) {
        (0..=24, _, _) => Segment {
            per_day: (0, 6),
            morning_share: 0.20,
        },
        (25..=49, false, false) => Segment {
            per_day: (1, 5),
            morning_share: 0.44,
        },
        (25..=49, _, _) => Segment {
            per_day: (1, 6),
            morning_share: 0.30,
        },
        (_, _, true) => Segment {
            per_day: (1, 3),
            morning_share: 0.60,
        },
        (_, _, false) => Segment {
            per_day: (1, 4),
            morning_share: 0.49,
        },
    }
}

/// Card number lengths: (digits, weight, prefixes to pick from).
pub const CARD_FORMATS: [(u32, f64, &[u64]); 7] = [
    (16, 240.0, &[4, 51, 52, 53, 54, 55, 6011, 3528, 2221]),
    (15, 81.0, &[34, 37]),
    (12, 50.0, &[5018, 5020, 5038, 6304]),
    (14, 36.0, &[300, 301, 305, 36, 38]),
    (19, 33.0, &[4, 6011]),
    (13, 33.0, &[4]),
    (11, 1.0, &[1]),
];
