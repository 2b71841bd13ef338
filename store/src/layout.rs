//! Redis key layout. The engine writes these keys and the API reads them; `{p}` is the
//! configured prefix (`rs` by default).
//!
//! | key                                  | type   | holds                                             |
//! |--------------------------------------|--------|---------------------------------------------------|
//! | `{p}:tx:{trans_num}`                 | hash   | a scored transaction (TTL)                        |
//! | `{p}:card:{cc_num}`                  | zset   | the card's recent trans_nums by event time (TTL)  |
//! | `{p}:anomalies`                      | zset   | anomalous trans_nums by event time (capped)       |
//! | `{p}:alerts`                         | stream | one entry per anomaly (capped)                    |
//! | `{p}:alerted:{trans_num}`            | string | marks an alert as emitted, so replays add none    |
//! | `{p}:checkpoint:{group}:{topic}:{n}` | hash   | a partition's next offset and per-card state      |
//! | `{p}:score:{hash}`                   | string | a cached `/v1/score` answer for one input (TTL)   |
//! | `{p}:queries`                        | hash   | standing queries' definitions: name → SQL         |
//!
//! Continuous queries' outputs (`OutputRecord`) go under the keys their definitions name,
//! verbatim: the user chooses them, so they are not under the prefix.

pub fn transaction(prefix: &str, trans_num: &str) -> String {
    format!("{prefix}:tx:{trans_num}")
}

pub fn card(prefix: &str, cc_num: i64) -> String {
    format!("{prefix}:card:{cc_num}")
}

pub fn anomalies(prefix: &str) -> String {
    format!("{prefix}:anomalies")
}

pub fn alerts(prefix: &str) -> String {
    format!("{prefix}:alerts")
}

pub fn alerted(prefix: &str, trans_num: &str) -> String {
    format!("{prefix}:alerted:{trans_num}")
}

pub fn checkpoint(prefix: &str, group: &str, topic: &str, partition: i32) -> String {
    format!("{prefix}:checkpoint:{group}:{topic}:{partition}")
}

pub fn score_cache(prefix: &str, hash: &str) -> String {
    format!("{prefix}:score:{hash}")
}

pub fn queries(prefix: &str) -> String {
    format!("{prefix}:queries")
}
