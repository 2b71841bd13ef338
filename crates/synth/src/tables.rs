//! Vocabulary of the generator (places, names, jobs, merchants), compiled into the binary.
//! `scripts/extract_synth_tables.py` builds these files from the reference data.

use std::sync::LazyLock;

use super::params::CATEGORY_ORDER;

/// A home location of cardholders.
#[derive(Debug, Clone)]
pub struct Place {
    pub city: String,
    pub state: String,
    pub zip: i32,
    pub lat: f64,
    pub long: f64,
    pub city_pop: i64,
}

pub struct Tables {
    pub places: Vec<Place>,
    pub jobs: Vec<String>,
    pub female_first: Vec<String>,
    pub male_first: Vec<String>,
    pub last: Vec<String>,
    pub streets: Vec<String>,
    /// Merchant names per category, indexed like [`CATEGORY_ORDER`].
    pub merchants: Vec<Vec<String>>,
}

fn records(text: &'static str) -> Vec<csv::StringRecord> {
    csv::Reader::from_reader(text.as_bytes())
        .records()
        .map(|r| r.expect("compiled-in table is valid CSV"))
        .collect()
}

fn column(text: &'static str) -> Vec<String> {
    records(text).iter().map(|r| r[0].to_string()).collect()
}

/// The tables, parsed on first use. They are part of the binary, so a parse failure is a
/// build defect caught by the tests, not an input error.
pub static TABLES: LazyLock<Tables> = LazyLock::new(|| {
    let places = records(include_str!("tables/places.csv"))
        .iter()
        .map(|r| Place {
            city: r[0].to_string(),
            state: r[1].to_string(),
            zip: r[2].parse().expect("zip"),
            lat: r[3].parse().expect("lat"),
            long: r[4].parse().expect("long"),
            city_pop: r[5].parse().expect("city_pop"),
        })
        .collect();
    let mut female_first = Vec::new();
    let mut male_first = Vec::new();
    for r in records(include_str!("tables/first_names.csv")) {
        match &r[1] {
            "F" => female_first.push(r[0].to_string()),
            _ => male_first.push(r[0].to_string()),
        }
    }
    let mut merchants = vec![Vec::new(); CATEGORY_ORDER.len()];
    for r in records(include_str!("tables/merchants.csv")) {
        let category = CATEGORY_ORDER
            .iter()
            .position(|c| *c == &r[1])
            .expect("known category");
        merchants[category].push(r[0].to_string());
    }
    Tables {
        places,
        jobs: column(include_str!("tables/jobs.csv")),
        female_first,
        male_first,
        last: column(include_str!("tables/last_names.csv")),
        streets: column(include_str!("tables/streets.csv")),
        merchants,
    }
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_parse_and_cover_every_category() {
        let t = &*TABLES;
        assert!(t.places.len() > 400);
        assert!(t.jobs.len() > 300);
        assert!(!t.female_first.is_empty() && !t.male_first.is_empty());
        for (category, merchants) in CATEGORY_ORDER.iter().zip(&t.merchants) {
            assert!(
                merchants.len() >= 40,
                "{category} has {} merchants",
                merchants.len()
            );
        }
    }
}
