//! Criterion micro-benchmark of the client's hot path: writing a RecordBatch v2 of 1 KiB
//! records, with `kafka-protocol`'s `RecordBatchEncoder` and with the client's hand-written
//! `BatchWriter` (which `ringlog-perf` uses because it measured faster: see the commit that
//! added this bench and docs/perf.md). Both write the same records: no key, a 1 KiB value,
//! CreateTime, no compression, into a reused buffer.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use ringlog_net::client::batch::{self, BatchHeader, BatchWriter};

const RECORD_BYTES: usize = 1024;
const TIMESTAMP_MS: i64 = 1_700_000_000_000;

fn with_kafka_protocol(out: &mut BytesMut, value: &Bytes, count: usize) {
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: TIMESTAMP_MS,
            key: None,
            value: Some(value.clone()),
            headers: IndexMap::new(),
        })
        .collect();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(out, records.iter(), &options).expect("encode");
}

fn with_batch_writer(out: &mut BytesMut, value: &[u8], count: usize) {
    let mut writer = BatchWriter::begin(
        out,
        BatchHeader::plain(TIMESTAMP_MS, batch::Compression::None),
    );
    for _ in 0..count {
        writer.push(None, &[value], TIMESTAMP_MS);
    }
    writer.finish().expect("finish");
}

fn bench_encode(c: &mut Criterion) {
    let value = Bytes::from(vec![b'x'; RECORD_BYTES]);
    let mut group = c.benchmark_group("record_batch_encode");
    for count in [16_usize, 1000] {
        group.throughput(Throughput::Bytes((count * RECORD_BYTES) as u64));
        let mut out = BytesMut::with_capacity(count * (RECORD_BYTES + 64) + 128);
        group.bench_with_input(
            BenchmarkId::new("kafka_protocol", count),
            &count,
            |b, &count| {
                b.iter(|| {
                    out.clear();
                    with_kafka_protocol(&mut out, &value, count);
                    black_box(out.len())
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("batch_writer", count),
            &count,
            |b, &count| {
                b.iter(|| {
                    out.clear();
                    with_batch_writer(&mut out, &value, count);
                    black_box(out.len())
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_encode);
criterion_main!(benches);
