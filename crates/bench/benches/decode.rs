//! Decode time per message: the stream's strict decoder (parse + validate into column
//! builders) against the arrow-json decoder it replaced, on generated messages.
//! `cargo bench --workspace --bench decode` (a release build).

use std::sync::Arc;

use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use risksense_common::schema::{idx, transaction_schema};
use risksense_formats::codec::json::{JsonRowEncoder, JsonTransactionDecoder};
use risksense_formats::message::{Incoming, decode};
use risksense_synth::{Generator, SynthConfig};

/// 4,096 generated transactions as the stream receives them (one micro-batch).
fn messages() -> Vec<Incoming> {
    let config = SynthConfig::new(200, "2019-01-01", "2019-12-31", 1).expect("config");
    let mut messages = Vec::new();
    for batch in Generator::new(config) {
        let batch: RecordBatch = batch.expect("generated");
        let encoder = JsonRowEncoder::new(&batch).expect("encoder");
        for row in 0..batch.num_rows() {
            let mut payload = Vec::new();
            encoder.encode_row(row, &mut payload);
            messages.push(Incoming {
                partition: 0,
                offset: messages.len() as i64,
                key: None,
                payload: payload.into(),
                timestamp_ms: None,
            });
            if messages.len() == 4096 {
                return messages;
            }
        }
    }
    messages
}

fn decoders(c: &mut Criterion) {
    let messages = messages();
    // arrow-json needs row_id nullable: the messages do not carry it.
    let schema = {
        let mut fields: Vec<_> = transaction_schema().fields().iter().cloned().collect();
        fields[idx::ROW_ID] = Arc::new(fields[idx::ROW_ID].as_ref().clone().with_nullable(true));
        Arc::new(Schema::new(fields))
    };
    let mut group = c.benchmark_group("decode a 4,096-message micro-batch");
    group.throughput(Throughput::Elements(messages.len() as u64));
    group.bench_function("strict decode + validation", |b| {
        b.iter(|| {
            let decoded = decode(&messages).expect("decode");
            assert!(decoded.rejected.is_empty());
            decoded.batch.map_or(0, |batch| batch.num_rows())
        })
    });
    group.bench_function("arrow-json", |b| {
        b.iter(|| {
            let mut decoder =
                JsonTransactionDecoder::with_schema(schema.clone(), messages.len() + 1)
                    .expect("decoder");
            for message in &messages {
                decoder.push(&message.payload).expect("push");
            }
            decoder
                .flush()
                .expect("flush")
                .map_or(0, |batch| batch.num_rows())
        })
    });
    group.finish();
}

criterion_group!(benches, decoders);
criterion_main!(benches);
