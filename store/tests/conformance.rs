//! One suite run against every result store, the real Redis (`scripts/services.sh up`) and
//! the in-process one: what the engine and the API read back must not depend on which one
//! it is. Each check below is written once against the `ResultStore` contract (its doc
//! comments), through the `Store` handle, and `conformance!` runs it against each store,
//! as `redis_store::<check>`, `redis_cluster::<check>` (a three-shard Redis Cluster) and
//! `in_process::<check>`, every run on a store (a Redis
//! prefix) of its own. A new store joins by adding a module to the macro.
//!
//! The Redis checks fail, loudly, when Redis is not there; they never skip.

use std::collections::BTreeSet;
use std::time::Duration;

use risksense_store::{
    Alert, Checkpoint, Label, OutputRecord, Retention, ScoredRows, ScoredTransaction, Store,
    StoreError,
};

/// The test Redis, failing loudly when it is not there (these tests never skip).
fn redis_url() -> String {
    let url = std::env::var("RISKSENSE_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_string());
    reachable(&url);
    url
}

/// The test Redis Cluster (three shards, `scripts/services.sh up`), failing loudly when it
/// is not there.
fn cluster_url() -> String {
    let url = std::env::var("RISKSENSE_REDIS_CLUSTER_URL").unwrap_or_else(|_| {
        "redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003/".to_string()
    });
    reachable(&url);
    url
}

fn reachable(url: &str) {
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    let hosts = authority.rsplit('@').next().unwrap_or_default();
    for address in hosts.split(',') {
        assert!(
            std::net::TcpStream::connect(address).is_ok(),
            "Redis is not reachable at {address}: start it with `scripts/services.sh up`"
        );
    }
}

/// Small limits, so that the checks see them applied.
const CARD_HISTORY: usize = 3;
const ANOMALIES_KEPT: usize = 4;
/// Long enough for any check, short enough not to leave a run's rows in Redis for a week.
const TTL_SECS: u64 = 600;

/// A retention under a prefix no other run uses.
fn retention() -> Retention {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Retention {
        prefix: format!("conformance-{}-{stamp}", std::process::id()),
        card_history: CARD_HISTORY,
        anomalies_kept: ANOMALIES_KEPT,
        ttl_secs: TTL_SECS,
        ..Retention::default()
    }
}

/// Deletes what a Redis run left under its prefix without a TTL: the anomaly index, the
/// alerts stream, the checkpoints and the standing queries the checks save (the rest
/// expires with `TTL_SECS`; the output checks delete their own keys).
/// By name, not by a `SCAN` of a shared Redis that may hold millions of keys.
async fn forget(url: &str, prefix: &str) {
    use risksense_store::layout;
    let mut connection = risksense_store::RedisConnection::open(url)
        .await
        .expect("redis connection");
    let mut keys = vec![
        layout::checkpoint(prefix, "g", "t", 0),
        layout::checkpoint(prefix, "g", "t", 1),
        layout::queries(prefix),
        layout::served_models(prefix),
    ];
    for shard in 0..layout::SHARDS {
        keys.push(layout::anomalies(prefix, shard));
        keys.push(layout::alerts(prefix, shard));
    }
    // One key per DEL: a cluster refuses a DEL over several slots.
    for key in keys {
        let _: () = ::redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .expect("del");
    }
}

/// Runs each check against each store.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod redis_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    let url = super::redis_url();
                    let retention = super::retention();
                    let store = super::Store::redis(&url, retention.clone())
                        .await
                        .expect("connecting to Redis");
                    super::$check(&store).await;
                    super::forget(&url, &retention.prefix).await;
                }
            )*
        }

        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    let url = super::cluster_url();
                    let retention = super::retention();
                    let store = super::Store::redis(&url, retention.clone())
                        .await
                        .expect("connecting to the Redis Cluster");
                    super::$check(&store).await;
                    super::forget(&url, &retention.prefix).await;
                }
            )*
        }

        mod in_process {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    super::$check(&super::Store::memory(super::retention())).await;
                }
            )*
        }
    };
}

conformance!(
    answers,
    writes_read_back,
    labels_keep_the_first,
    replays_change_nothing,
    card_history,
    anomalies,
    alerts,
    checkpoints,
    checkpoint_deltas,
    checkpoints_never_go_back_under_races,
    cache_ttl,
    output_hashes,
    output_streams_with_ids,
    output_streams_without_ids,
    output_key_patterns,
    standing_queries,
    served_models,
);

/// A row `secs` after 2019-01-01 00:00:00 (under an hour), its time text and seconds
/// agreeing (Redis keeps the text and derives the seconds).
fn row(trans_num: &str, card: i64, secs: i64, score: f64, anomaly: bool) -> ScoredTransaction {
    ScoredTransaction {
        trans_num: trans_num.to_string(),
        cc_num: card,
        event_time: format!("2019-01-01 00:{:02}:{:02}", secs / 60, secs % 60),
        event_secs: 1_546_300_800 + secs,
        category: "misc_net".to_string(),
        merchant: "m".to_string(),
        amt: 12.5,
        score,
        is_anomaly: anomaly,
        explanation: anomaly.then(|| "log_amt".to_string()),
        is_fraud: Some(0),
        model_id: Some("default@0123456789ab".to_string()),
        challenger_id: None,
        challenger_flag: None,
    }
}

fn names(rows: &[ScoredTransaction]) -> Vec<&str> {
    rows.iter().map(|r| r.trans_num.as_str()).collect()
}

async fn answers(store: &Store) {
    store.ping().await.expect("ping");
    let describe = store.describe();
    assert!(!describe.is_empty());
    assert!(format!("{store:?}").contains(&describe), "{store:?}");
}

async fn writes_read_back(store: &Store) {
    let empty = store
        .write(&ScoredRows::default())
        .await
        .expect("empty write");
    assert_eq!((empty.rows, empty.anomalies, empty.new_alerts), (0, 0, 0));

    let mut odd = row("t4", 9, 300, 0.1 + 0.2, false);
    odd.amt = 1_234.567_890_123;
    odd.merchant = "fraud_Kirlin, Sons & Co: Ünïcode".to_string();
    odd.cc_num = 4_000_000_000_000_000_123;
    odd.is_fraud = None;
    let mut labelled = row("t5", 9, 301, 7.25, true);
    labelled.is_fraud = Some(1);
    labelled.explanation = Some("log_amt,hour_sin,cat_misc_net".to_string());
    // Shadowed by a challenger that flagged it; another row by one that did not.
    labelled.challenger_id = Some("trees@0123456789ab".to_string());
    labelled.challenger_flag = Some(true);
    let mut shadowed = row("t6", 10, 302, 0.2, false);
    shadowed.challenger_id = Some("trees@0123456789ab".to_string());
    shadowed.challenger_flag = Some(false);
    shadowed.model_id = None;
    let rows = vec![
        row("t1", 7, 100, 0.5, false),
        row("t2", 7, 200, 3.0, true),
        row("t3", 8, 150, 2.5, true),
        odd,
        labelled,
        shadowed,
    ];
    let outcome = store
        .write(&ScoredRows::from_records(&rows))
        .await
        .expect("write");
    assert_eq!(
        (outcome.rows, outcome.anomalies, outcome.new_alerts),
        (6, 3, 3)
    );
    // Every row exactly as written (floats, labels and missing fields included).
    for written in &rows {
        assert_eq!(
            store.transaction(&written.trans_num).await.expect("get"),
            Some(written.clone()),
            "{}",
            written.trans_num
        );
    }
    assert_eq!(store.transaction("nope").await.expect("get"), None);
    // Many at once, in the order asked, the unknown skipped.
    let asked: Vec<String> = ["t6", "nope", "t1", "t5"].map(String::from).to_vec();
    let many = store.transactions(&asked).await.expect("many");
    assert_eq!(names(&many), ["t6", "t1", "t5"]);
    assert_eq!(many[0], rows[5]);
    assert!(store.transactions(&[]).await.expect("none").is_empty());
}

async fn labels_keep_the_first(store: &Store) {
    let label = |trans_num: &str, is_fraud: bool, labelled_ms: i64| Label {
        trans_num: trans_num.to_string(),
        is_fraud,
        labelled_ms,
    };
    assert!(store.write_labels(&[]).await.expect("none").is_empty());
    let first = [label("t1", true, 1_000), label("t2", false, 2_000)];
    assert_eq!(
        store.write_labels(&first).await.expect("write"),
        [true, true]
    );
    // A replay, a contradicting second report, and a new one: only the new one is taken.
    let again = [
        label("t1", true, 1_000),
        label("t2", true, 9_000),
        label("t3", true, 3_000),
    ];
    assert_eq!(
        store.write_labels(&again).await.expect("again"),
        [false, false, true]
    );
    let asked: Vec<String> = ["t2", "nope", "t1", "t3"].map(String::from).to_vec();
    assert_eq!(
        store.labels(&asked).await.expect("read"),
        [
            Some(first[1].clone()),
            None,
            Some(first[0].clone()),
            Some(again[2].clone())
        ]
    );
    // The same trans_num twice in one call: the first wins.
    let twice = [label("t4", false, 4_000), label("t4", true, 5_000)];
    let taken = store.write_labels(&twice).await.expect("twice");
    assert_eq!(taken.iter().filter(|t| **t).count(), 1, "{taken:?}");
    assert_eq!(
        store.labels(&["t4".to_string()]).await.expect("read"),
        [Some(twice[0].clone())]
    );
}

async fn replays_change_nothing(store: &Store) {
    let rows = vec![
        row("t1", 7, 100, 0.5, false),
        row("t2", 7, 200, 3.0, true),
        row("t3", 8, 150, 2.5, true),
    ];
    let first = store
        .write(&ScoredRows::from_records(&rows))
        .await
        .expect("write");
    assert_eq!((first.rows, first.anomalies, first.new_alerts), (3, 2, 2));
    let card = store.card_transactions(7, 10).await.expect("card");
    let anomalies = store.anomalies(None, 10, None).await.expect("anomalies");
    let alerts = store.alerts(10).await.expect("alerts");

    // The same batch again: the same counts, but no alert.
    let again = store
        .write(&ScoredRows::from_records(&rows))
        .await
        .expect("write again");
    assert_eq!((again.rows, again.anomalies, again.new_alerts), (3, 2, 0));
    // A batch overlapping it alerts only what is new.
    let overlapping = vec![rows[1].clone(), row("t6", 8, 250, 4.0, true)];
    let third = store
        .write(&ScoredRows::from_records(&overlapping))
        .await
        .expect("write overlapping");
    assert_eq!((third.rows, third.anomalies, third.new_alerts), (2, 2, 1));

    // Nothing duplicated anywhere.
    assert_eq!(store.card_transactions(7, 10).await.expect("card"), card);
    assert_eq!(
        names(&store.anomalies(None, 10, None).await.expect("anomalies")),
        vec!["t6", "t2", "t3"]
    );
    let after = store.alerts(10).await.expect("alerts");
    assert_eq!(after.len(), alerts.len() + 1);
    assert_eq!(after[0].trans_num, "t6");
    assert_eq!(&after[1..], &alerts[..]);
    assert_eq!(anomalies.len(), 2);
    for written in &rows {
        assert_eq!(
            store.transaction(&written.trans_num).await.expect("get"),
            Some(written.clone())
        );
    }
}

async fn card_history(store: &Store) {
    // Out of event-time order, over two writes: the card keeps its newest three.
    store
        .write(&ScoredRows::from_records(&[
            row("c50", 7, 50, 0.1, false),
            row("c10", 7, 10, 0.1, false),
            row("c40", 7, 40, 0.1, false),
        ]))
        .await
        .expect("write");
    store
        .write(&ScoredRows::from_records(&[
            row("c30", 7, 30, 0.1, false),
            row("c20", 7, 20, 0.1, false),
        ]))
        .await
        .expect("write");
    // Another card, with two transactions at the same second.
    store
        .write(&ScoredRows::from_records(&[
            row("a", 9, 5, 0.1, false),
            row("b", 9, 5, 0.1, false),
            row("x", 9, 1, 0.1, false),
        ]))
        .await
        .expect("write");

    let card = |cc_num, limit| async move {
        names(&store.card_transactions(cc_num, limit).await.expect("card"))
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(card(7, 10).await, vec!["c50", "c40", "c30"]);
    assert_eq!(card(7, 2).await, vec!["c50", "c40"]);
    assert_eq!(card(7, 0).await, Vec::<String>::new());
    assert_eq!(card(8, 10).await, Vec::<String>::new());
    // Ties: the greater trans_num first.
    assert_eq!(card(9, 10).await, vec!["b", "a", "x"]);
    // Whole rows, as written.
    assert_eq!(
        store.card_transactions(7, 1).await.expect("card"),
        vec![row("c50", 7, 50, 0.1, false)]
    );
}

async fn anomalies(store: &Store) {
    // Five anomalies (the oldest trimmed: four are kept) and, newest of all, a
    // non-anomaly with the highest score.
    let scores = [5.0, 1.0, 4.0, 1.0, 1.0];
    let mut rows: Vec<ScoredTransaction> = scores
        .iter()
        .enumerate()
        .map(|(i, &score)| {
            let n = i as i64 + 1;
            row(&format!("a{n}"), n, 10 * n, score, true)
        })
        .collect();
    rows.push(row("n", 1, 60, 9.0, false));
    store
        .write(&ScoredRows::from_records(&rows))
        .await
        .expect("write");
    let base = 1_546_300_800;

    let found = |since: Option<i64>, limit, min_score| async move {
        names(
            &store
                .anomalies(since, limit, min_score)
                .await
                .expect("anomalies"),
        )
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>()
    };
    assert_eq!(found(None, 10, None).await, vec!["a5", "a4", "a3", "a2"]);
    assert_eq!(found(None, 2, None).await, vec!["a5", "a4"]);
    assert_eq!(found(None, 0, None).await, Vec::<String>::new());
    // `since` is inclusive.
    assert_eq!(
        found(Some(base + 30), 10, None).await,
        vec!["a5", "a4", "a3"]
    );
    assert_eq!(found(Some(base + 31), 10, None).await, vec!["a5", "a4"]);
    assert_eq!(
        found(Some(base + 1000), 10, None).await,
        Vec::<String>::new()
    );
    // `min_score` is inclusive, and the limit counts rows that pass it, however many
    // newer ones fail it.
    assert_eq!(found(None, 1, Some(4.0)).await, vec!["a3"]);
    assert_eq!(found(None, 10, Some(4.0)).await, vec!["a3"]);
    assert_eq!(found(None, 10, Some(4.5)).await, Vec::<String>::new());
    assert_eq!(
        found(Some(base + 31), 10, Some(4.0)).await,
        Vec::<String>::new()
    );
    // Whole rows, as written.
    assert_eq!(
        store.anomalies(None, 1, None).await.expect("anomalies"),
        vec![rows[4].clone()]
    );
}

async fn alerts(store: &Store) {
    assert_eq!(store.alerts(10).await.expect("alerts"), Vec::<Alert>::new());
    let first = vec![
        row("a", 1, 100, 3.5, true),
        row("quiet", 1, 101, 0.2, false),
        row("b", 2, 102, 2.75, true),
    ];
    store
        .write(&ScoredRows::from_records(&first))
        .await
        .expect("write");
    let mut later = row("c", 3, 50, 6.0, true);
    later.explanation = None;
    store
        .write(&ScoredRows::from_records(std::slice::from_ref(&later)))
        .await
        .expect("write");
    store
        .write(&ScoredRows::from_records(&first))
        .await
        .expect("replay");

    // Most recently emitted first (not by event time); one write's alerts in any order.
    let alerts = store.alerts(10).await.expect("alerts");
    assert_eq!(alerts.len(), 3, "{alerts:?}");
    assert_eq!(alerts[0], Alert::from(&later));
    let rest: BTreeSet<String> = alerts[1..]
        .iter()
        .map(|a| serde_json::to_string(a).expect("json"))
        .collect();
    let expected: BTreeSet<String> = [&first[0], &first[2]]
        .into_iter()
        .map(|r| serde_json::to_string(&Alert::from(r)).expect("json"))
        .collect();
    assert_eq!(rest, expected);
    assert_eq!(
        store.alerts(1).await.expect("alerts"),
        vec![Alert::from(&later)]
    );
    assert_eq!(store.alerts(0).await.expect("alerts"), Vec::<Alert>::new());
}

fn checkpoint(offset: i64, archive_file: Option<&str>) -> Checkpoint {
    Checkpoint {
        offset,
        // Binary state: every byte value survives.
        state: (0..=255u8).chain(offset.to_le_bytes()).collect(),
        archive_file: archive_file.map(str::to_string),
        deltas: Vec::new(),
    }
}

/// Deltas chain after a whole checkpoint, each only onto its parent, until the next whole
/// one replaces them all.
async fn checkpoint_deltas(store: &Store) {
    use risksense_store::DeltaSaved;
    let load = || async { store.load_checkpoint("g", "t", 0).await.expect("load") };
    let delta = |offset: i64, bytes: &[u8], archive: Option<&str>| Checkpoint {
        offset,
        state: bytes.to_vec(),
        archive_file: archive.map(str::to_string),
        deltas: Vec::new(),
    };
    let save_delta = |parent: i64, checkpoint: Checkpoint| async move {
        store
            .save_checkpoint_delta("g", "t", 0, parent, &checkpoint)
            .await
            .expect("save delta")
    };
    // No checkpoint yet: nothing to follow.
    assert_eq!(
        save_delta(0, delta(5, b"d", None)).await,
        DeltaSaved::NotParent
    );
    assert_eq!(load().await, None);

    let ten = checkpoint(10, Some("a.parquet"));
    assert!(
        store
            .save_checkpoint("g", "t", 0, &ten)
            .await
            .expect("save")
    );
    assert_eq!(
        save_delta(10, delta(15, &[0, 255, 1], Some("b.parquet"))).await,
        DeltaSaved::Saved
    );
    assert_eq!(
        save_delta(15, delta(20, b"", None)).await,
        DeltaSaved::Saved
    );
    let chained = Checkpoint {
        offset: 20,
        archive_file: None,
        deltas: vec![vec![0, 255, 1], Vec::new()],
        ..ten.clone()
    };
    assert_eq!(load().await, Some(chained.clone()));

    // Onto another parent: nothing saved. Behind a later checkpoint: nothing saved.
    assert_eq!(
        save_delta(15, delta(25, b"x", None)).await,
        DeltaSaved::NotParent
    );
    assert_eq!(
        save_delta(10, delta(18, b"x", None)).await,
        DeltaSaved::Behind
    );
    assert_eq!(load().await, Some(chained));

    // A whole checkpoint replaces the state and every delta.
    let thirty = checkpoint(30, None);
    assert!(
        store
            .save_checkpoint("g", "t", 0, &thirty)
            .await
            .expect("save")
    );
    assert_eq!(load().await, Some(thirty));
}

async fn checkpoints(store: &Store) {
    let load = |partition| async move {
        store
            .load_checkpoint("g", "t", partition)
            .await
            .expect("load")
    };
    assert_eq!(load(0).await, None);

    let ten = checkpoint(10, Some("p0/000010.parquet"));
    assert!(
        store
            .save_checkpoint("g", "t", 0, &ten)
            .await
            .expect("save")
    );
    assert_eq!(load(0).await, Some(ten.clone()));

    // An older offset is refused and changes nothing.
    let five = checkpoint(5, None);
    assert!(
        !store
            .save_checkpoint("g", "t", 0, &five)
            .await
            .expect("save")
    );
    assert_eq!(load(0).await, Some(ten.clone()));

    // The same offset again replaces it (a retried save succeeds).
    let retried = Checkpoint {
        state: b"retried".to_vec(),
        ..checkpoint(10, None)
    };
    assert!(
        store
            .save_checkpoint("g", "t", 0, &retried)
            .await
            .expect("save")
    );
    assert_eq!(load(0).await, Some(retried));

    // A newer one replaces everything, the archive file included.
    let twelve = checkpoint(12, None);
    assert!(
        store
            .save_checkpoint("g", "t", 0, &twelve)
            .await
            .expect("save")
    );
    assert_eq!(load(0).await, Some(twelve.clone()));

    // Empty state and an empty archive file name (which loads as none).
    let empty = Checkpoint {
        offset: 20,
        state: Vec::new(),
        archive_file: Some(String::new()),
        deltas: Vec::new(),
    };
    assert!(
        store
            .save_checkpoint("g", "t", 0, &empty)
            .await
            .expect("save")
    );
    assert_eq!(
        load(0).await,
        Some(Checkpoint {
            archive_file: None,
            ..empty
        })
    );

    // Partitions, topics and groups are apart.
    assert_eq!(load(1).await, None);
    assert_eq!(
        store.load_checkpoint("g", "u", 0).await.expect("load"),
        None
    );
    assert_eq!(
        store.load_checkpoint("h", "t", 0).await.expect("load"),
        None
    );
    assert!(
        store
            .save_checkpoint("g", "t", 1, &five)
            .await
            .expect("save")
    );
    assert_eq!(load(1).await, Some(five));
    assert_eq!(load(0).await.map(|c| c.offset), Some(20));
}

/// Savers racing over one partition, offsets in scrambled order, while a reader watches:
/// the stored offset only ever rises, a refusal means a higher one is stored, and a load
/// never mixes two saves.
async fn checkpoints_never_go_back_under_races(store: &Store) {
    const SAVERS: i64 = 8;
    const OFFSETS: i64 = 200;
    fn with_archive(offset: i64) -> Checkpoint {
        checkpoint(offset, Some(&format!("{offset:06}.parquet")))
    }
    fn consistent(c: &Checkpoint) {
        assert_eq!(c, &with_archive(c.offset), "a load mixed two saves");
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let store = store.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen = -1;
            let mut loads = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || loads == 0 {
                if let Some(c) = store.load_checkpoint("g", "t", 0).await.expect("load") {
                    consistent(&c);
                    assert!(c.offset >= seen, "went back from {seen} to {}", c.offset);
                    seen = c.offset;
                }
                loads += 1;
                tokio::task::yield_now().await;
            }
        })
    };
    let savers: Vec<_> = (0..SAVERS)
        .map(|saver| {
            let store = store.clone();
            tokio::spawn(async move {
                // Each saver goes through its own scrambled share of the offsets.
                for i in (saver..OFFSETS).step_by(SAVERS as usize) {
                    let offset = (i * 73) % OFFSETS;
                    let saved = store
                        .save_checkpoint("g", "t", 0, &with_archive(offset))
                        .await
                        .expect("save");
                    let now = store
                        .load_checkpoint("g", "t", 0)
                        .await
                        .expect("load")
                        .expect("a checkpoint");
                    consistent(&now);
                    if saved {
                        assert!(now.offset >= offset);
                    } else {
                        assert!(now.offset > offset, "{offset} refused under {}", now.offset);
                    }
                }
            })
        })
        .collect();
    for saver in savers {
        saver.await.expect("saver");
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.await.expect("reader");
    assert_eq!(
        store.load_checkpoint("g", "t", 0).await.expect("load"),
        Some(with_archive(OFFSETS - 1))
    );
}

async fn cache_ttl(store: &Store) {
    assert_eq!(store.cache_get(&[]).await.expect("get"), Vec::new());
    store.cache_put(&[], 1).await.expect("empty put");

    let put = |entries: &[(&str, &str)]| -> Vec<(String, String)> {
        entries
            .iter()
            .map(|(h, v)| (h.to_string(), v.to_string()))
            .collect()
    };
    store
        .cache_put(&put(&[("h1", "{\"score\":0.5}")]), 1)
        .await
        .expect("put");
    // A later put replaces the value.
    store
        .cache_put(&put(&[("h1", "{\"score\":1.0}")]), 1)
        .await
        .expect("put");
    store
        .cache_put(&put(&[("h3", "long")]), 30)
        .await
        .expect("put");
    // Answers in the order asked, None for a hash never cached.
    let keys = vec!["h2".to_string(), "h1".to_string(), "h3".to_string()];
    assert_eq!(
        store.cache_get(&keys).await.expect("get"),
        vec![
            None,
            Some("{\"score\":1.0}".to_string()),
            Some("long".to_string())
        ]
    );
    // Past its TTL an entry is gone; one with a longer TTL is not.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(
        store.cache_get(&keys).await.expect("get"),
        vec![None, None, Some("long".to_string())]
    );
}

/// Any implementation goes behind the handle (a test double, a future store).
#[tokio::test]
async fn a_handle_holds_any_store() {
    let store = Store::new(risksense_store::MemoryStore::new(retention()));
    let copy = store.clone();
    store
        .write(&ScoredRows::from_records(&[row("t1", 7, 100, 3.0, true)]))
        .await
        .expect("write");
    assert_eq!(
        copy.transaction("t1").await.expect("get").map(|r| r.score),
        Some(3.0)
    );
    assert_eq!(
        format!("{store:?}"),
        format!("Store({:?})", store.describe())
    );
}

/// An output key no other run uses (outputs are not under the store's prefix).
fn unique(what: &str) -> String {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("conformance-out-{}-{stamp}:{what}", std::process::id())
}

fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(f, v)| (f.to_string(), v.to_string()))
        .collect()
}

fn hash(key: &str, pairs: &[(&str, &str)], ttl_secs: Option<u64>) -> OutputRecord {
    OutputRecord::Hash {
        key: key.to_string(),
        fields: fields(pairs),
        ttl_secs,
    }
}

fn entry(
    key: &str,
    id: Option<&str>,
    pairs: &[(&str, &str)],
    max_len: Option<u64>,
) -> OutputRecord {
    OutputRecord::StreamEntry {
        key: key.to_string(),
        id: id.map(str::to_string),
        fields: fields(pairs),
        max_len,
    }
}

/// Deletes the outputs a check wrote (a hash without fields deletes its key, whatever it
/// holds), so that a shared Redis keeps none of them.
async fn delete_outputs(store: &Store, keys: &[&str]) {
    let records: Vec<OutputRecord> = keys.iter().map(|k| hash(k, &[], None)).collect();
    store.write_outputs(&records).await.expect("delete outputs");
    for key in keys {
        assert_eq!(store.read_output_hash(key).await.expect("read"), None);
        assert_eq!(
            store.read_output_stream(key, 1).await.expect("read"),
            Vec::new()
        );
    }
}

type Entries = Vec<(String, Vec<(String, String)>)>;

fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("<ms>-<seq>");
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

async fn output_hashes(store: &Store) {
    let (window, other, brief, kept) = (
        unique("window"),
        unique("other"),
        unique("brief"),
        unique("kept"),
    );
    let read = |key: String| async move { store.read_output_hash(&key).await.expect("read") };
    assert_eq!(read(window.clone()).await, None);
    store.write_outputs(&[]).await.expect("empty write");

    // Fields come back sorted by name.
    store
        .write_outputs(&[hash(
            &window,
            &[("n", "3"), ("avg", "2.5"), ("card", "7")],
            None,
        )])
        .await
        .expect("write");
    assert_eq!(
        read(window.clone()).await,
        Some(fields(&[("avg", "2.5"), ("card", "7"), ("n", "3")]))
    );
    // A rewrite replaces the hash (a field it no longer has is gone, not merged), and
    // writing it twice, in one call and again in another (a replayed window), leaves one
    // copy.
    let replaced = hash(&window, &[("n", "4"), ("card", "7")], None);
    store
        .write_outputs(&[replaced.clone(), replaced.clone()])
        .await
        .expect("write twice");
    store.write_outputs(&[replaced]).await.expect("replay");
    assert_eq!(
        read(window.clone()).await,
        Some(fields(&[("card", "7"), ("n", "4")]))
    );
    // A field named twice in one record: the last value.
    store
        .write_outputs(&[hash(&other, &[("a", "1"), ("a", "2")], None)])
        .await
        .expect("write");
    assert_eq!(read(other.clone()).await, Some(fields(&[("a", "2")])));

    // Past its TTL a hash is gone (and not listed); a rewrite without a TTL keeps it.
    store
        .write_outputs(&[
            // 3 s: long enough for the checks before the sleep on a loaded machine.
            hash(&brief, &[("x", "1")], Some(3)),
            hash(&kept, &[("x", "1")], Some(3)),
            hash(&kept, &[("x", "2")], None),
        ])
        .await
        .expect("write");
    assert_eq!(read(brief.clone()).await, Some(fields(&[("x", "1")])));
    assert_eq!(
        store.output_keys(&brief, 10).await.expect("keys"),
        vec![brief.clone()]
    );
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    assert_eq!(read(brief.clone()).await, None);
    assert_eq!(
        store.output_keys(&brief, 10).await.expect("keys"),
        Vec::<String>::new()
    );
    assert_eq!(read(kept.clone()).await, Some(fields(&[("x", "2")])));

    // No fields: no hash.
    store
        .write_outputs(&[hash(&other, &[], None)])
        .await
        .expect("write");
    assert_eq!(read(other.clone()).await, None);
    delete_outputs(store, &[&window, &kept]).await;
}

async fn output_streams_with_ids(store: &Store) {
    let (windows, fresh) = (unique("windows"), unique("fresh"));
    let read = |key: String, count| async move {
        store
            .read_output_stream(&key, count)
            .await
            .expect("read stream")
    };
    assert_eq!(read(windows.clone(), 10).await, Entries::new());

    store
        .write_outputs(&[
            entry(
                &windows,
                Some("60000-0"),
                &[("card", "7"), ("n", "2")],
                None,
            ),
            entry(
                &windows,
                Some("60000-1"),
                &[("card", "9"), ("n", "1")],
                None,
            ),
            entry(
                &windows,
                Some("120000-0"),
                &[("card", "7"), ("n", "5")],
                None,
            ),
        ])
        .await
        .expect("write");
    // The windows replayed (with other values: the first write stands) and an id below the
    // last one are skipped, without an error; the next window is appended, its fields in
    // written order.
    store
        .write_outputs(&[
            entry(
                &windows,
                Some("60000-1"),
                &[("card", "9"), ("n", "99")],
                None,
            ),
            entry(
                &windows,
                Some("120000-0"),
                &[("card", "7"), ("n", "99")],
                None,
            ),
            entry(&windows, Some("90000-0"), &[("late", "1")], None),
            entry(
                &windows,
                Some("180000-0"),
                &[("z", "last"), ("a", "first")],
                Some(100),
            ),
            entry(&windows, Some("180000-0"), &[("z", "again")], None),
        ])
        .await
        .expect("replay");
    let all = read(windows.clone(), 10).await;
    let expected: Entries = vec![
        ("60000-0".to_string(), fields(&[("card", "7"), ("n", "2")])),
        ("60000-1".to_string(), fields(&[("card", "9"), ("n", "1")])),
        ("120000-0".to_string(), fields(&[("card", "7"), ("n", "5")])),
        (
            "180000-0".to_string(),
            fields(&[("z", "last"), ("a", "first")]),
        ),
    ];
    assert_eq!(all, expected);
    // Oldest first, at most `count`.
    assert_eq!(read(windows.clone(), 2).await, expected[..2].to_vec());
    assert_eq!(read(windows.clone(), 0).await, Entries::new());

    // 0-0 is at or below a new stream's last id: skipped, and no stream is made for it.
    store
        .write_outputs(&[entry(&fresh, Some("0-0"), &[("a", "1")], None)])
        .await
        .expect("write");
    assert_eq!(read(fresh.clone(), 10).await, Entries::new());
    assert_eq!(
        store.output_keys(&fresh, 10).await.expect("keys"),
        Vec::<String>::new()
    );

    // A malformed record fails the call before anything in it is written.
    for bad in [
        entry(&fresh, Some("5"), &[("a", "1")], None),
        entry(&fresh, Some("x-1"), &[("a", "1")], None),
        entry(&fresh, Some("2-0"), &[], None),
    ] {
        let error = store
            .write_outputs(&[entry(&fresh, Some("1-0"), &[("a", "1")], None), bad])
            .await
            .expect_err("a malformed record");
        assert!(matches!(error, StoreError::Rejected { .. }), "{error}");
    }
    assert_eq!(read(fresh.clone(), 10).await, Entries::new());

    // One key holds one kind: a stream entry for a hash, and reading one kind as the other,
    // fail (and change nothing).
    store
        .write_outputs(&[hash(&fresh, &[("a", "1")], None)])
        .await
        .expect("write");
    assert!(
        store
            .write_outputs(&[entry(&fresh, Some("1-0"), &[("b", "2")], None)])
            .await
            .is_err()
    );
    assert!(store.read_output_stream(&fresh, 10).await.is_err());
    assert!(store.read_output_hash(&windows).await.is_err());
    assert_eq!(
        store.read_output_hash(&fresh).await.expect("read"),
        Some(fields(&[("a", "1")]))
    );
    assert_eq!(read(windows.clone(), 10).await, expected);
    delete_outputs(store, &[&windows, &fresh]).await;
}

async fn output_streams_without_ids(store: &Store) {
    let (events, mixed, capped) = (unique("events"), unique("mixed"), unique("capped"));
    let read = |key: String, count| async move {
        store
            .read_output_stream(&key, count)
            .await
            .expect("read stream")
    };

    // Without an id every write appends, the same record again too (at least once), in
    // order, under rising ids taken from the clock.
    let before_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    store
        .write_outputs(&[
            entry(&events, None, &[("i", "0")], None),
            entry(&events, None, &[("i", "1")], None),
        ])
        .await
        .expect("write");
    store
        .write_outputs(&[entry(&events, None, &[("i", "1")], None)])
        .await
        .expect("write again");
    let entries = read(events.clone(), 10).await;
    let values: Vec<Vec<(String, String)>> = entries.iter().map(|(_, f)| f.clone()).collect();
    assert_eq!(
        values,
        vec![
            fields(&[("i", "0")]),
            fields(&[("i", "1")]),
            fields(&[("i", "1")])
        ]
    );
    let ids: Vec<(u64, u64)> = entries.iter().map(|(id, _)| stream_id(id)).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // (Redis's clock and ours, on one machine: a minute's leeway.)
    assert!(
        ids.iter()
            .all(|(ms, _)| *ms + 60_000 >= before_ms && *ms <= before_ms + 60_000),
        "{ids:?} vs {before_ms}"
    );

    // After an explicit id ahead of the clock, "*" appends after it.
    let ahead = before_ms + 3_600_000;
    let explicit = format!("{ahead}-5");
    store
        .write_outputs(&[
            entry(&mixed, Some(&explicit), &[("k", "explicit")], None),
            entry(&mixed, None, &[("k", "auto")], None),
            entry(&mixed, Some(&explicit), &[("k", "replayed")], None),
        ])
        .await
        .expect("write");
    assert_eq!(
        read(mixed.clone(), 10).await,
        vec![
            (explicit.clone(), fields(&[("k", "explicit")])),
            (format!("{ahead}-6"), fields(&[("k", "auto")])),
        ]
    );

    // An approximate trim keeps at least the newest `max_len` entries, in order, and far
    // fewer than were written (Redis trims whole nodes, 100 entries each by default).
    const WRITTEN: usize = 300;
    let numbers: Vec<String> = (0..WRITTEN).map(|i| i.to_string()).collect();
    let records: Vec<OutputRecord> = numbers
        .iter()
        .map(|i| entry(&capped, None, &[("i", i)], Some(10)))
        .collect();
    store.write_outputs(&records).await.expect("write");
    let kept: Vec<usize> = read(capped.clone(), 1_000)
        .await
        .iter()
        .map(|(_, f)| f[0].1.parse().expect("a number"))
        .collect();
    assert!(
        kept.len() >= 10 && kept.len() < WRITTEN,
        "kept {}",
        kept.len()
    );
    assert_eq!(kept, (WRITTEN - kept.len()..WRITTEN).collect::<Vec<_>>());
    delete_outputs(store, &[&events, &mixed, &capped]).await;
}

async fn output_key_patterns(store: &Store) {
    let base = unique("keys");
    let names = ["a1", "a2", "b1", "ab:1", "*lit"];
    let key = |name: &str| format!("{base}:{name}");
    let mut records: Vec<OutputRecord> = names
        .iter()
        .filter(|n| **n != "ab:1")
        .map(|n| hash(&key(n), &[("v", "1")], None))
        .collect();
    // Streams are listed too.
    records.push(entry(&key("ab:1"), None, &[("v", "1")], None));
    store.write_outputs(&records).await.expect("write");

    let under = format!("{base}:");
    let keys = |pattern: &str, limit| {
        let pattern = format!("{under}{pattern}");
        let under = &under;
        async move {
            store
                .output_keys(&pattern, limit)
                .await
                .expect("keys")
                .into_iter()
                .map(|k| {
                    k.strip_prefix(under.as_str())
                        .expect("under the pattern's prefix")
                        .to_string()
                })
                .collect::<Vec<_>>()
        }
    };
    // Sorted (bytewise: `*` before letters), at most `limit`: the first ones.
    assert_eq!(keys("*", 10).await, vec!["*lit", "a1", "a2", "ab:1", "b1"]);
    assert_eq!(keys("*", 2).await, vec!["*lit", "a1"]);
    assert_eq!(keys("*", 0).await, Vec::<String>::new());
    assert_eq!(keys("a?", 10).await, vec!["a1", "a2"]);
    assert_eq!(keys("a*", 10).await, vec!["a1", "a2", "ab:1"]);
    assert_eq!(keys("*:1", 10).await, vec!["ab:1"]);
    assert_eq!(keys("[ab]1", 10).await, vec!["a1", "b1"]);
    assert_eq!(keys("[^a]*", 10).await, vec!["*lit", "b1"]);
    assert_eq!(keys("\\*lit", 10).await, vec!["*lit"]);
    // The whole key must match, not a prefix of it.
    assert_eq!(keys("a", 10).await, Vec::<String>::new());
    assert_eq!(keys("c*", 10).await, Vec::<String>::new());
    let all: Vec<String> = names.iter().map(|n| key(n)).collect();
    delete_outputs(store, &all.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(keys("*", 10).await, Vec::<String>::new());
}

async fn standing_queries(store: &Store) {
    let load = || async { store.load_queries().await.expect("load") };
    let pairs = |pairs: &[(&str, &str)]| fields(pairs);
    assert_eq!(load().await, Vec::new());

    let windowed = "SELECT cc_num, count(*) AS n\nFROM scored\n\
                    GROUP BY cc_num, tumble(event_time, '1 minute') -- «ünï»";
    store.save_query("spend", "SELECT 1").await.expect("save");
    store.save_query("by_card", windowed).await.expect("save");
    // Sorted by name, the SQL exactly as saved.
    assert_eq!(
        load().await,
        pairs(&[("by_card", windowed), ("spend", "SELECT 1")])
    );
    // Saving under a name replaces its definition.
    store.save_query("spend", "SELECT 2").await.expect("save");
    assert_eq!(
        load().await,
        pairs(&[("by_card", windowed), ("spend", "SELECT 2")])
    );
    assert!(store.delete_query("spend").await.expect("delete"));
    assert!(!store.delete_query("spend").await.expect("delete"));
    assert!(!store.delete_query("never").await.expect("delete"));
    assert_eq!(load().await, pairs(&[("by_card", windowed)]));
}

async fn served_models(store: &Store) {
    let served = || async { store.served_models().await.expect("read") };
    assert_eq!(
        served().await,
        Vec::new(),
        "nothing recorded: the flags hold"
    );
    store
        .save_served_model("champion", Some("b@0123456789ab"))
        .await
        .expect("save");
    store
        .save_served_model("challenger", Some("trees@ba9876543210"))
        .await
        .expect("save");
    // The last change of a slot counts; an emptied slot is recorded as such.
    store
        .save_served_model("champion", Some("a@aaaaaaaaaaaa"))
        .await
        .expect("save");
    store
        .save_served_model("challenger", None)
        .await
        .expect("save");
    assert_eq!(
        served().await,
        fields(&[("challenger", ""), ("champion", "a@aaaaaaaaaaaa")])
    );
}

/// An API configured with another retention than the engine's (`serve` without the
/// engine's config) still reads what the engine wrote: Redis readers take the TTL the
/// records were written with from the store. One Redis and the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_readers_find_records_whatever_their_own_ttl() {
    for url in [redis_url(), cluster_url()] {
        let written_with = retention();
        let writer = Store::redis(&url, written_with.clone())
            .await
            .expect("connecting");
        let rows = vec![row("w1", 7, 10, 0.5, false), row("w2", 7, 20, 3.0, true)];
        writer
            .write(&ScoredRows::from_records(&rows))
            .await
            .expect("write");
        for ttl_secs in [1, 7 * 24 * 3600] {
            let reader = Store::redis(
                &url,
                Retention {
                    ttl_secs,
                    ..written_with.clone()
                },
            )
            .await
            .expect("connecting");
            assert_eq!(
                reader.transaction("w1").await.expect("get"),
                Some(rows[0].clone()),
                "{url}, reader's TTL {ttl_secs}"
            );
            assert_eq!(
                names(&reader.card_transactions(7, 10).await.expect("card")),
                vec!["w2", "w1"]
            );
            assert_eq!(
                names(&reader.anomalies(None, 10, None).await.expect("anomalies")),
                vec!["w2"]
            );
        }
        forget(&url, &written_with.prefix).await;
    }
}
