-- score.sql: every row of `features` scored by the models in service.
--
-- anomaly_score runs the ONNX autoencoder (the champion) once per Arrow batch and returns
-- the mean squared reconstruction error (`score`; features whose risk runs one way count
-- only their risky side, e.g. an amount above what the model expects). Fraud comes in bursts of rows each
-- only somewhat unusual, so a row alerts on its alert score: its score plus the model
-- card's weight times `card_score`, the mean of its card's scores over the last 24 hours
-- (this row included); at or above alert_threshold() it is an anomaly (a model whose card
-- has no such rule: weight 0, its row threshold). Only anomalies pay for anomaly_explain
-- (the three features of the row that reconstruct worst). model_id names the model that
-- scored the row. After a champion swap a card's last 24 hours hold both models' scores.
--
-- A supervised model (`--supervised`, trained on labels), when one is set, gives each row
-- its fraud_probability; null without one. The rule that combines the two:
--   - an alert (is_anomaly) when either flags the row (anomaly_flag, fraud_flag): the supervised model at its
--     threshold (fraud like the labelled fraud) or the autoencoder at its own (something
--     unusual the labels may not hold yet), each with its own alert budget;
--   - risk orders alerts and any fixed budget: the probability first, the autoencoder's
--     alert score as the tie-break. On 2019 Q3 the top 1 % by risk catch as much fraud as the trees
--     alone and more than the autoencoder alone (BENCHMARKS.md, "combined").
-- A challenger (shadow model), when one is set, scores every row beside the champion:
-- challenger_score, its own alert score over its own recent scores and challenger_flag
-- are for the archive, metrics and `risksense evaluate`, never for alerts; null without
-- one.
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
    ) AS challenger_score,
    fraud_probability(
      log_amt,
      cat_entertainment, cat_food_dining, cat_gas_transport, cat_grocery_net, cat_grocery_pos,
      cat_health_fitness, cat_home, cat_kids_pets, cat_misc_net, cat_misc_pos,
      cat_personal_care, cat_shopping_net, cat_shopping_pos, cat_travel,
      hour_sin, hour_cos, dow_sin, dow_cos,
      age_years, log_distance_km, log_city_pop, is_female,
      log_secs_since_prev, log_count_24h, log_amt_over_mean, log_spend_24h_over_mean,
      night_share_24h, log_night_spend_24h_over_mean, log_night_count_24h
    ) AS fraud_probability,
    CAST(date_part('epoch', trans_date_trans_time) AS BIGINT) AS event_secs
  FROM features
),
-- The card's recent scores: the mean of its rows' scores over the last 24 hours, this
-- row included (the card window of features.sql; the stream keeps the card's scores of
-- that day). The alert score adds it to the row's own with the model card's weight (0,
-- and the row threshold, for a model without that rule).
with_card AS (
  SELECT
    *,
    mean_24h(cc_num, event_secs, score) OVER card_sequence AS card_score,
    mean_24h(cc_num, event_secs, challenger_score) OVER card_sequence AS challenger_card_score
  FROM scored_rows
  WINDOW card_sequence AS (PARTITION BY cc_num ORDER BY event_secs, row_id)
),
alerting AS (
  SELECT
    *,
    score + alert_weight() * card_score AS alert_score,
    challenger_score + challenger_alert_weight() * challenger_card_score
      AS challenger_alert_score
  FROM with_card
),
flagged AS (
  SELECT
    *,
    alert_score >= alert_threshold() AS anomaly_flag,
    fraud_probability >= fraud_threshold() AS fraud_flag
  FROM alerting
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
  anomaly_flag OR coalesce(fraud_flag, false) AS is_anomaly,
  anomaly_flag,
  CASE WHEN anomaly_flag THEN anomaly_explain(
      log_amt,
      cat_entertainment, cat_food_dining, cat_gas_transport, cat_grocery_net, cat_grocery_pos,
      cat_health_fitness, cat_home, cat_kids_pets, cat_misc_net, cat_misc_pos,
      cat_personal_care, cat_shopping_net, cat_shopping_pos, cat_travel,
      hour_sin, hour_cos, dow_sin, dow_cos,
      age_years, log_distance_km, log_city_pop, is_female,
      log_secs_since_prev, log_count_24h, log_amt_over_mean, log_spend_24h_over_mean,
      night_share_24h, log_night_spend_24h_over_mean, log_night_count_24h
  ) WHEN fraud_flag THEN
    -- (arrow_cast: concat gives Utf8View, and a column has one type.)
    arrow_cast(concat('fraud probability ', CAST(round(fraud_probability, 3) AS VARCHAR)), 'Utf8')
  END AS explanation,
  model_id() AS model_id,
  challenger_id() AS challenger_id,
  challenger_score,
  challenger_alert_score >= challenger_alert_threshold() AS challenger_flag,
  supervised_id() AS supervised_id,
  fraud_probability,
  fraud_flag,
  -- The order of alerts (and of rows for a fixed alert budget): the supervised
  -- probability first, the autoencoder's alert score, mapped into [0, 1) and weighted 0.001,
  -- ordering what the probability cannot tell apart; without a supervised model the
  -- mapped score alone (0.5 at the threshold).
  coalesce(fraud_probability, 0.0) + CASE WHEN fraud_probability IS NULL THEN 1.0 ELSE 0.001 END
    * (alert_score / (alert_score + alert_threshold())) AS risk,
  card_score,
  alert_score,
  challenger_alert_score
FROM flagged;
