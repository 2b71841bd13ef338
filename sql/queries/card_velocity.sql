-- The card-velocity rule: a card with 3 or more anomalies within one hour (windows of an
-- hour, starting every 5 minutes), raised into the alerts topic with its explanation.
-- A card that keeps misbehaving is raised once per window it fills.
CREATE TABLE card_velocity WITH (
  connector = 'kafka',
  topic = 'alerts',
  key = 'rule,cc_num,window_start',
  allowed_lateness = '5 seconds'
);
INSERT INTO card_velocity
SELECT
  'card_velocity' AS rule,
  hop(trans_date_trans_time, INTERVAL '5' MINUTE, INTERVAL '1' HOUR) AS window_start,
  cc_num,
  count(*) AS anomalies,
  round(sum(amt), 2) AS amount,
  concat('card had ', count(*), ' anomalous transactions within one hour, ',
         round(sum(amt), 2), ' in total; worst score ', round(max(score), 3)) AS explanation
FROM scored
WHERE is_anomaly
GROUP BY 2, 3
HAVING count(*) >= 3;
