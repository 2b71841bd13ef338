//! Which side of its reconstruction a feature's value must fall on for its error to count.
//!
//! A reconstruction error is symmetric: a bill much smaller than the model expects from
//! the rest of the row is as unusual as one much larger. For fraud it is not: stolen cards
//! buy more, more often, at night, farther from home and soon after one another. Counted,
//! the harmless side (a card spending less than usual) takes alert budget from fraud; on
//! the reference data, counting only the risky side of the features below lifted recall
//! at a 1 % alert rate on every seed measured (BENCHMARKS.md, "Model quality").
//!
//! The side changes only how a trained network's errors become a score (the error of a
//! one-sided feature on its other side counts 0, in the score and in explanations); the
//! training, the features and each feature's error scale stay as they were.

use std::fmt;
use std::str::FromStr;

/// Where a feature's value must lie, against its reconstruction, for its error to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorSide {
    /// Either side (an autoencoder's usual error).
    #[default]
    Both,
    /// Only a value above its reconstruction.
    Above,
    /// Only a value below its reconstruction.
    Below,
}

impl ErrorSide {
    /// Bounds of `reconstruction − value` that keep this side's error (the difference is
    /// clamped to them before squaring; f32::MIN / MAX: unbounded, finite for ONNX).
    pub fn difference_bounds(self) -> (f32, f32) {
        match self {
            ErrorSide::Both => (f32::MIN, f32::MAX),
            // A value above its reconstruction: a negative difference.
            ErrorSide::Above => (f32::MIN, 0.0),
            ErrorSide::Below => (0.0, f32::MAX),
        }
    }
}

impl fmt::Display for ErrorSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorSide::Both => "both",
            ErrorSide::Above => "above",
            ErrorSide::Below => "below",
        })
    }
}

impl FromStr for ErrorSide {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "both" => Ok(ErrorSide::Both),
            "above" => Ok(ErrorSide::Above),
            "below" => Ok(ErrorSide::Below),
            other => Err(format!(
                "`{other}` is not an error side (both, above or below)"
            )),
        }
    }
}

/// The risky side of sql/features.sql's features whose risk runs one way; the others
/// (categories, time of day and week, the cardholder's profile) count both sides. The
/// amount against its category's, which the model derives, takes the amount's side.
pub const RISK_SIDES: &[(&str, ErrorSide)] = &[
    ("log_amt", ErrorSide::Above),
    ("log_amt_over_mean", ErrorSide::Above),
    ("log_spend_24h_over_mean", ErrorSide::Above),
    ("log_count_24h", ErrorSide::Above),
    ("night_share_24h", ErrorSide::Above),
    ("log_night_spend_24h_over_mean", ErrorSide::Above),
    ("log_night_count_24h", ErrorSide::Above),
    ("log_distance_km", ErrorSide::Above),
    ("log_secs_since_prev", ErrorSide::Below),
];

/// The side of each of `features`: [`RISK_SIDES`] (none with `two_sided`), then
/// `overrides` (feature, side) on top. An override naming no feature is an error.
pub fn sides_for(
    features: &[String],
    two_sided: bool,
    overrides: &[(String, ErrorSide)],
) -> Result<Vec<ErrorSide>, String> {
    let mut sides: Vec<ErrorSide> = features
        .iter()
        .map(|name| {
            RISK_SIDES
                .iter()
                .find(|(risky, _)| !two_sided && risky == name)
                .map_or(ErrorSide::Both, |&(_, side)| side)
        })
        .collect();
    for (name, side) in overrides {
        let column = features.iter().position(|f| f == name).ok_or_else(|| {
            format!(
                "no feature `{name}` to set the error side of (the features: {})",
                features.join(", ")
            )
        })?;
        sides[column] = *side;
    }
    Ok(sides)
}

/// Parses `feature=side` (the command line's form).
pub fn parse_override(s: &str) -> Result<(String, ErrorSide), String> {
    let (name, side) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not feature=side (e.g. log_amt=above)"))?;
    Ok((name.trim().to_string(), side.parse()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_table_then_overrides_set_each_features_side() {
        let features = names(&["log_amt", "cat_home", "log_secs_since_prev", "custom"]);
        assert_eq!(
            sides_for(&features, false, &[]).expect("sides"),
            [
                ErrorSide::Above,
                ErrorSide::Both,
                ErrorSide::Below,
                ErrorSide::Both
            ]
        );
        assert_eq!(
            sides_for(&features, true, &[]).expect("sides"),
            [ErrorSide::Both; 4]
        );
        let overrides = [
            parse_override("custom=below").expect("parses"),
            parse_override(" log_amt = BOTH").expect("parses"),
        ];
        assert_eq!(
            sides_for(&features, false, &overrides).expect("sides"),
            [
                ErrorSide::Both,
                ErrorSide::Both,
                ErrorSide::Below,
                ErrorSide::Below
            ]
        );
        let unknown = sides_for(&features, false, &[("amt".into(), ErrorSide::Above)]);
        assert!(
            unknown
                .expect_err("no such feature")
                .contains("no feature `amt`")
        );
        assert!(parse_override("log_amt").is_err());
        assert!(parse_override("log_amt=up").is_err());
    }

    #[test]
    fn bounds_keep_only_the_risky_difference() {
        // reconstruction − value < 0: the value is above its reconstruction.
        let clamp = |side: ErrorSide, d: f32| {
            let (low, high) = side.difference_bounds();
            d.max(low).min(high)
        };
        assert_eq!(clamp(ErrorSide::Above, -2.0), -2.0);
        assert_eq!(clamp(ErrorSide::Above, 2.0), 0.0);
        assert_eq!(clamp(ErrorSide::Below, -2.0), 0.0);
        assert_eq!(clamp(ErrorSide::Below, 2.0), 2.0);
        assert_eq!(clamp(ErrorSide::Both, -2.0), -2.0);
        assert_eq!(clamp(ErrorSide::Both, 2.0), 2.0);
    }
}
