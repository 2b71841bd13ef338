-- Anomalies per merchant per minute (event time), to the Kafka topic
-- `merchant-anomalies`: one JSON record per merchant and minute that had any, keyed by
-- query/window/merchant, emitted once the watermark passes the minute's end.
CREATE TABLE anomalies_per_merchant WITH (
  connector = 'kafka',
  topic = 'merchant-anomalies',
  allowed_lateness = '5 seconds'
);
INSERT INTO anomalies_per_merchant
SELECT
  tumble(trans_date_trans_time, INTERVAL '1' MINUTE) AS window_start,
  merchant,
  count(*) AS anomalies,
  round(sum(amt), 2) AS amount,
  round(max(score), 4) AS top_score
FROM scored
WHERE is_anomaly
GROUP BY 1, 2;
