-- score.sql: every row of `features` scored by the loaded model.
--
-- anomaly_score runs the ONNX autoencoder once per Arrow batch and returns the mean squared
-- reconstruction error; a row at or above the model's threshold is an anomaly, and only
-- anomalies pay for anomaly_explain (the three features that reconstruct worst).
-- model_id names the model that scored the row. A challenger (shadow model), when one is
-- set, scores every row beside it: challenger_score and challenger_flag are for the
-- archive, metrics and `risksense evaluate`, never for alerts; null without one.
-- The feature arguments are the columns of features.sql after its first nine, in order.
CREATE OR REPLACE VIEW scored AS
WITH scored_rows AS (
  SELECT
    *,
    anomaly_score(
      log_amt,
      cat_entertainment, cat_food_dining, cat_gas_transport, cat_grocery_net, cat_grocery_pos,
      cat_health_fitness, cat_home, cat_kids_pets, cat_misc_net, cat_misc_pos,
      cat_personal_care, cat_shopping_net, cat_shopping_pos, cat_travel,
      hour_sin, hour_cos, dow_sin, dow_cos,
      age_years, log_distance_km, log_city_pop, is_female,
      log_secs_since_prev, log_count_24h, log_amt_over_mean, log_spend_24h_over_mean,
      night_share_24h, log_night_spend_24h_over_mean, log_night_count_24h
    ) AS score,
    challenger_score(
      log_amt,
      cat_entertainment, cat_food_dining, cat_gas_transport, cat_grocery_net, cat_grocery_pos,
      cat_health_fitness, cat_home, cat_kids_pets, cat_misc_net, cat_misc_pos,
      cat_personal_care, cat_shopping_net, cat_shopping_pos, cat_travel,
      hour_sin, hour_cos, dow_sin, dow_cos,
      age_years, log_distance_km, log_city_pop, is_female,
      log_secs_since_prev, log_count_24h, log_amt_over_mean, log_spend_24h_over_mean,
      night_share_24h, log_night_spend_24h_over_mean, log_night_count_24h
    ) AS challenger_score
  FROM features
)
SELECT
  row_id,
  trans_num,
  cc_num,
  trans_date_trans_time,
  unix_time,
  category,
  amt,
  merchant,
  is_fraud,
  score,
  score >= anomaly_threshold() AS is_anomaly,
  CASE WHEN score >= anomaly_threshold() THEN anomaly_explain(
      log_amt,
      cat_entertainment, cat_food_dining, cat_gas_transport, cat_grocery_net, cat_grocery_pos,
      cat_health_fitness, cat_home, cat_kids_pets, cat_misc_net, cat_misc_pos,
      cat_personal_care, cat_shopping_net, cat_shopping_pos, cat_travel,
      hour_sin, hour_cos, dow_sin, dow_cos,
      age_years, log_distance_km, log_city_pop, is_female,
      log_secs_since_prev, log_count_24h, log_amt_over_mean, log_spend_24h_over_mean,
      night_share_24h, log_night_spend_24h_over_mean, log_night_count_24h
  ) END AS explanation,
  model_id() AS model_id,
  challenger_id() AS challenger_id,
  challenger_score,
  challenger_score >= challenger_threshold() AS challenger_flag
FROM scored_rows;
