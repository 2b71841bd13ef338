-- Fraud and anomaly rates by category per hour, into Redis for the dashboard: a hash per
-- category and hour under risksense:fraud_rate:<category>:<hour>, kept for a week.
CREATE TABLE fraud_rate_by_category WITH (
  connector = 'redis',
  format = 'hash',
  key = 'risksense:fraud_rate:{category}:{window_start}',
  ttl = '604800',
  allowed_lateness = '5 seconds'
);
INSERT INTO fraud_rate_by_category
SELECT
  tumble(trans_date_trans_time, INTERVAL '1' HOUR) AS window_start,
  category,
  count(*) AS transactions,
  round(avg(CAST(is_fraud AS DOUBLE)), 5) AS fraud_rate,
  round(avg(CASE WHEN is_anomaly THEN 1.0 ELSE 0.0 END), 5) AS anomaly_rate,
  sum(CASE WHEN is_anomaly AND is_fraud = 1 THEN 1 ELSE 0 END) AS anomalies_confirmed
FROM scored
GROUP BY 1, 2;
