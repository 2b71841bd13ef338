-- features.sql: the model's inputs, one row per transaction.
--
-- One text serves training (`risksense train`), batch rescoring (`risksense rescore`) and
-- the live stream (`risksense run`), so a model never sees features computed two ways.
-- It reads a table or view named `transactions` with the Kaggle / Sparkov columns.
--
-- The first nine columns identify the row (`row_id` is the source's row: the index in a
-- file, or the partition and offset in the stream); every column after them is a model
-- input, in the order the model card lists them. Per-card history uses only bounded
-- windows ordered by event time (the previous row; the last 24 hours; the 30 transactions
-- before this one), so the stream can reproduce it exactly from what it keeps per card.
CREATE OR REPLACE VIEW features AS
-- Only what the windows need is computed before them; every other feature is computed
-- after them (in the last SELECT), so a query that keeps some rows only computes those
-- for kept rows.
WITH base AS (
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
    dob,
    lat,
    long,
    merch_lat,
    merch_long,
    city_pop,
    gender,
    CAST(date_part('epoch', trans_date_trans_time) AS BIGINT) AS event_secs,
    CASE WHEN date_part('hour', trans_date_trans_time) >= 22
           OR date_part('hour', trans_date_trans_time) < 4 THEN 1.0 ELSE 0.0 END AS is_night
  FROM transactions
),
history AS (
  SELECT
    *,
    -- Each card window takes the card and the event time first: a batch job has all of a
    -- card's rows in its partition, the live stream only the micro-batch's, and finds the
    -- card's earlier rows in the history it keeps under the card (udfs/src/windows).
    -- secs_since_previous(card, t): t minus the card's previous row's t (NULL for its first).
    secs_since_previous(cc_num, event_secs) OVER card_sequence AS secs_since_prev,
    -- rolling_sum_24h(card, t, x): sum(x) over the card's rows up to this one within the
    -- last 24 hours, in one pass per card. Later rows never count, even in the same
    -- second, so the stream computes it exactly from what it has seen.
    rolling_sum_24h(cc_num, event_secs, 1.0) OVER card_sequence AS count_24h,
    rolling_sum_24h(cc_num, event_secs, amt) OVER card_sequence AS spend_24h,
    rolling_sum_24h(cc_num, event_secs, is_night) OVER card_sequence AS night_count_24h,
    rolling_sum_24h(cc_num, event_secs, is_night * amt) OVER card_sequence AS night_spend_24h,
    -- mean_of_previous(card, t, x, 30): avg(x) over the 30 rows before this one, i.e.
    -- ROWS BETWEEN 30 PRECEDING AND 1 PRECEDING, without DataFusion's per-row sliding frame.
    mean_of_previous(cc_num, event_secs, amt, 30) OVER card_sequence AS card_mean_amt
  FROM base
  WINDOW
    -- Same-second rows keep their arrival order: row_id is the file's row index in a
    -- batch job and the Kafka offset in the stream (one card is on one partition).
    card_sequence AS (PARTITION BY cc_num ORDER BY event_secs, row_id)
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
  -- amount
  ln(1.0 + amt) AS log_amt,
  -- category, one-hot
  CAST(category = 'entertainment' AS DOUBLE) AS cat_entertainment,
  CAST(category = 'food_dining' AS DOUBLE) AS cat_food_dining,
  CAST(category = 'gas_transport' AS DOUBLE) AS cat_gas_transport,
  CAST(category = 'grocery_net' AS DOUBLE) AS cat_grocery_net,
  CAST(category = 'grocery_pos' AS DOUBLE) AS cat_grocery_pos,
  CAST(category = 'health_fitness' AS DOUBLE) AS cat_health_fitness,
  CAST(category = 'home' AS DOUBLE) AS cat_home,
  CAST(category = 'kids_pets' AS DOUBLE) AS cat_kids_pets,
  CAST(category = 'misc_net' AS DOUBLE) AS cat_misc_net,
  CAST(category = 'misc_pos' AS DOUBLE) AS cat_misc_pos,
  CAST(category = 'personal_care' AS DOUBLE) AS cat_personal_care,
  CAST(category = 'shopping_net' AS DOUBLE) AS cat_shopping_net,
  CAST(category = 'shopping_pos' AS DOUBLE) AS cat_shopping_pos,
  CAST(category = 'travel' AS DOUBLE) AS cat_travel,
  -- time of day and week, on the circle
  sin(2.0 * pi() * (date_part('hour', trans_date_trans_time) + date_part('minute', trans_date_trans_time) / 60.0) / 24.0) AS hour_sin,
  cos(2.0 * pi() * (date_part('hour', trans_date_trans_time) + date_part('minute', trans_date_trans_time) / 60.0) / 24.0) AS hour_cos,
  sin(2.0 * pi() * date_part('dow', trans_date_trans_time) / 7.0) AS dow_sin,
  cos(2.0 * pi() * date_part('dow', trans_date_trans_time) / 7.0) AS dow_cos,
  -- cardholder and place
  (date_part('epoch', trans_date_trans_time) - date_part('epoch', CAST(dob AS TIMESTAMP)))
    / 31557600.0 AS age_years,
  ln(1.0 + haversine(lat, long, merch_lat, merch_long)) AS log_distance_km,
  ln(1.0 + CAST(city_pop AS DOUBLE)) AS log_city_pop,
  CAST(gender = 'F' AS DOUBLE) AS is_female,
  -- the card's recent history
  ln(1.0 + CAST(CASE WHEN secs_since_prev IS NULL OR secs_since_prev > 2592000 THEN 2592000
                     ELSE secs_since_prev END AS DOUBLE)) AS log_secs_since_prev,
  ln(count_24h) AS log_count_24h,
  ln((1.0 + amt) / (1.0 + coalesce(card_mean_amt, amt))) AS log_amt_over_mean,
  ln((1.0 + spend_24h) / (1.0 + coalesce(card_mean_amt, amt))) AS log_spend_24h_over_mean,
  night_count_24h / count_24h AS night_share_24h,
  ln((1.0 + night_spend_24h) / (1.0 + coalesce(card_mean_amt, amt))) AS log_night_spend_24h_over_mean,
  ln(1.0 + night_count_24h) AS log_night_count_24h
FROM history;
