//! The generator against the reference data's profile (data/reference-profile-2019h1.json,
//! saved by `risksense profile ../shared/data/sparkov-2019h1.csv.gz --save ...`).

mod common;

use risksense_synth::profile::{DataProfile, ProfileBuilder};
use risksense_synth::{Generator, SynthConfig};

#[test]
fn generated_half_year_is_close_to_the_reference() {
    let text =
        std::fs::read_to_string(common::repo_root().join("data/reference-profile-2019h1.json"))
            .expect("reference profile committed");
    let reference: DataProfile = serde_json::from_str(&text).expect("valid profile");

    let config = SynthConfig::new(400, "2019-01-01", "2019-06-30", 2019).expect("config");
    let mut builder = ProfileBuilder::default();
    for batch in Generator::new(config) {
        builder.add(&batch.expect("generated"));
    }
    let generated = builder.finish();
    let d = generated.distance(&reference);
    println!("{d:#?}");
    assert!(
        (d.fraud_rate_pct.0 - d.fraud_rate_pct.1).abs() < 0.35,
        "fraud rate {:?}",
        d.fraud_rate_pct
    );
    assert!(
        d.legit_amount_log_error < 0.15,
        "legit amounts {}",
        d.legit_amount_log_error
    );
    assert!(
        d.fraud_amount_log_error < 0.15,
        "fraud amounts {}",
        d.fraud_amount_log_error
    );
    assert!(d.legit_hour_tv < 0.05, "legit hours {}", d.legit_hour_tv);
    assert!(d.fraud_hour_tv < 0.12, "fraud hours {}", d.fraud_hour_tv);
    assert!(
        d.legit_category_tv < 0.04,
        "category mix {}",
        d.legit_category_tv
    );
    assert!(
        (d.fraud_night_share.0 - d.fraud_night_share.1).abs() < 0.05,
        "night share {:?}",
        d.fraud_night_share
    );
}
