//! Replay into the real Kafka broker and read back. Needs Kafka (`scripts/services.sh up`).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use arrow::array::AsArray;
use risksense_common::schema::idx;
use risksense_connectors::kafka::{KafkaSettings, Pace, ReplayProducer, ensure_topic, read_topic};
use risksense_synth::{Generator, SynthConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_generated_row_comes_back_once_and_equal() {
    let settings = KafkaSettings::new(common::kafka_brokers());
    let topic = common::unique_topic("replay");
    ensure_topic(&settings, &topic, 4)
        .await
        .expect("topic created");

    let config = SynthConfig::new(120, "2019-03-01", "2019-04-15", 11).expect("config");
    let sent: Vec<_> = Generator::new(config)
        .collect::<Result<_, _>>()
        .expect("generated");
    let sent = common::concat(&sent);
    assert!(sent.num_rows() > 10_000, "{} rows", sent.num_rows());

    let settings_for_thread = settings.clone();
    let topic_for_thread = topic.clone();
    let batch = sent.clone();
    let stats = tokio::task::spawn_blocking(move || {
        let mut producer =
            ReplayProducer::new(&settings_for_thread, &topic_for_thread, Pace::Unlimited)
                .expect("producer");
        producer.send_batch(&batch).expect("queued");
        producer.finish(Duration::from_secs(60))
    })
    .await
    .expect("joined")
    .expect("every message acknowledged");
    assert_eq!(stats.messages, sent.num_rows() as u64);

    let contents = tokio::task::spawn_blocking(move || {
        read_topic(
            &settings,
            &topic,
            stats.messages + 1,
            Duration::from_secs(5),
        )
    })
    .await
    .expect("joined")
    .expect("topic read");
    // Waited past the expected count: nothing beyond what we sent may be there.
    assert_eq!(contents.messages, sent.num_rows() as u64);
    assert_eq!(
        contents.key_mismatches, 0,
        "every message is keyed by its cc_num"
    );

    let received = common::concat(&contents.batches);
    let mut trans_nums = HashSet::new();
    let nums = received.column(idx::TRANS_NUM).as_string::<i32>();
    for row in 0..received.num_rows() {
        assert!(
            trans_nums.insert(nums.value(row)),
            "{} arrived twice",
            nums.value(row)
        );
    }
    assert_eq!(
        common::sorted_by_row_id(&received),
        common::sorted_by_row_id(&sent),
        "rows changed on the way through Kafka"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cards_transactions_stay_in_order_on_one_partition() {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use std::collections::HashMap;

    let settings = KafkaSettings::new(common::kafka_brokers());
    let topic = common::unique_topic("order");
    ensure_topic(&settings, &topic, 4)
        .await
        .expect("topic created");
    let config = SynthConfig::new(40, "2019-05-01", "2019-05-20", 5).expect("config");
    let sent: Vec<_> = Generator::new(config)
        .collect::<Result<_, _>>()
        .expect("generated");
    let total: usize = sent.iter().map(|b| b.num_rows()).sum();
    let (s, t) = (settings.clone(), topic.clone());
    tokio::task::spawn_blocking(move || {
        let mut producer = ReplayProducer::new(&s, &t, Pace::Unlimited).expect("producer");
        for batch in &sent {
            producer.send_batch(batch).expect("queued");
        }
        producer.finish(Duration::from_secs(60))
    })
    .await
    .expect("joined")
    .expect("acknowledged");

    let consumer: BaseConsumer = settings
        .client_config(&[
            ("group.id", "order-test"),
            ("auto.offset.reset", "earliest"),
        ])
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribed");
    // card -> (partition, last row_id seen)
    let mut seen: HashMap<String, (i32, i64)> = HashMap::new();
    let mut count = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while count < total && std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.expect("message");
        let key = String::from_utf8_lossy(message.key().expect("keyed")).to_string();
        let value: serde_json::Value =
            serde_json::from_slice(message.payload().expect("payload")).expect("JSON");
        let row_id = value["row_id"].as_i64().expect("row_id");
        if let Some((partition, last)) = seen.get(&key) {
            assert_eq!(
                *partition,
                message.partition(),
                "card {key} moved partition"
            );
            assert!(row_id > *last, "card {key}: row {row_id} after {last}");
        }
        seen.insert(key, (message.partition(), row_id));
        count += 1;
    }
    assert_eq!(count, total);
}
