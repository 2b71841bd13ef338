//! Variants of the committed models, for tests of model swaps and registries.

use std::path::Path;

/// Copies the model folder `from` (model.onnx + model.json) to `to`, with its card's name
/// set to `name` and then changed by `edit` (the card as JSON): the same graph under
/// another id, or with a card that no longer fits (a renamed feature). Panics on I/O
/// errors (a test helper).
pub fn model_variant(
    from: &Path,
    to: &Path,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) {
    std::fs::create_dir_all(to).expect("variant folder");
    std::fs::copy(from.join("model.onnx"), to.join("model.onnx")).expect("model.onnx copied");
    let text = std::fs::read_to_string(from.join("model.json")).expect("model.json");
    let mut card: serde_json::Value = serde_json::from_str(&text).expect("a JSON card");
    card["name"] = serde_json::Value::String(name.to_string());
    edit(&mut card);
    std::fs::write(
        to.join("model.json"),
        serde_json::to_string_pretty(&card).expect("card"),
    )
    .expect("model.json written");
}

/// A registry folder `root` holding, from the committed models in `models`: `a` (the
/// default model), `b` (its graph with the threshold times `b_threshold`), `renamed` (its
/// first feature renamed `log_amount`: does not fit the plan) and `trees` (the supervised
/// model).
pub fn test_registry(models: &Path, root: &Path, b_threshold: f64) {
    let default = models.join("default");
    model_variant(&default, &root.join("a"), "a", |_| {});
    model_variant(&default, &root.join("b"), "b", |card| {
        let threshold = card["threshold"].as_f64().expect("a threshold");
        card["threshold"] = serde_json::json!(threshold * b_threshold);
        // And the alert rule's over the card's recent scores, where the card has one.
        if let Some(rule) = card.get_mut("card_scores").filter(|r| r.is_object()) {
            let threshold = rule["threshold"].as_f64().expect("the rule's threshold");
            rule["threshold"] = serde_json::json!(threshold * b_threshold);
        }
    });
    model_variant(&default, &root.join("renamed"), "renamed", |card| {
        card["features"][0] = serde_json::json!("log_amount");
    });
    model_variant(&models.join("trees"), &root.join("trees"), "trees", |_| {});
}
