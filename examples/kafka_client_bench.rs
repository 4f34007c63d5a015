//! A small measuring client for a Kafka-compatible broker, built on librdkafka (the Rust
//! `rdkafka` crate), for the numbers in the broker report.
//!
//! Produce mode (the default) creates the topic if it is missing, sends `--records` records
//! of `--record-size` bytes with no key, and prints records/s, MB/s and delivery latency
//! percentiles. Latency runs from the moment a record was meant to be sent until librdkafka
//! reports its delivery: with `--rate` that is the record's slot in the schedule, not the
//! moment the loop got round to it, so a stalled broker shows up as latency instead of
//! silently slowing the senders down (coordinated omission). Without `--rate` the loop
//! sends as fast as librdkafka's queue accepts, and latency runs from the send call.
//!
//! `--consume` reads the whole topic from the beginning (partitions assigned directly, no
//! consumer group joined) up to the high watermarks seen at the start, and prints records/s
//! and MB/s (MB counts keys and values, 10^6 bytes).
//!
//! `--end-to-end` produces at `--rate` while a consumer (assigned at the current end of every
//! partition) reads the records back, and prints produce-to-consume latency percentiles: from
//! each record's scheduled send time (carried in its first 8 bytes) to its arrival at the
//! consumer, so it covers the Fetch path and its long-poll wake-up.
//!
//! ```text
//! cargo run --release --example kafka_client_bench -- --bootstrap 127.0.0.1:9092 \
//!     --topic bench --partitions 4 --records 1000000 --record-size 100 --acks all
//! cargo run --release --example kafka_client_bench -- --bootstrap 127.0.0.1:9092 \
//!     --topic bench --consume
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use futures_lite::future::block_on;
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

/// How long admin and metadata requests may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A consume run fails if no record arrives for this long while records are still missing.
const CONSUME_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Highest latency the histogram tracks (larger values are clamped to it): one minute.
const LATENCY_US_MAX: u64 = 60_000_000;

#[derive(Debug, Parser)]
#[command(about = "Measures produce or consume throughput and latency with librdkafka")]
struct Args {
    /// Broker to bootstrap from.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Topic to write or read.
    #[arg(long, default_value = "kafka-client-bench")]
    topic: String,
    /// Partitions of the topic when this tool creates it.
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// Records to produce.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Value size of each record in bytes (records have no key).
    #[arg(long, default_value_t = 100)]
    record_size: usize,
    /// Acknowledgements the producer waits for.
    #[arg(long, default_value = "all", value_parser = ["0", "1", "all"])]
    acks: String,
    /// Records per second to send; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// librdkafka linger.ms: how long to wait for a batch to fill.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// librdkafka batch.size: the most bytes in one batch of one partition.
    #[arg(long, default_value_t = 1_000_000)]
    batch_size: u64,
    /// librdkafka enable.idempotence: producer ids and sequence checks on the broker (needs
    /// --acks all). Off by default, librdkafka's default, so figures stay comparable.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    idempotence: bool,
    /// librdkafka max.in.flight.requests.per.connection (its default when unset: 1000000, and
    /// at most 5 with idempotence), to tell the client's in-flight cap from the broker's cost.
    #[arg(long)]
    max_in_flight: Option<u32>,
    /// Read the whole topic from the beginning instead of producing.
    #[arg(long)]
    consume: bool,
    /// Produce at --rate and measure produce-to-consume latency with a consumer at the end.
    #[arg(long, conflicts_with = "consume")]
    end_to_end: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.consume {
        consume(&args)
    } else if args.end_to_end {
        end_to_end(&args)
    } else {
        produce(&args)
    }
}

fn client_config(args: &Args) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.bootstrap)
        .set("client.id", "kafka-client-bench");
    config
}

/// Collects delivery reports on the producer's polling thread.
struct DeliveryRecorder {
    latency_us: Mutex<Histogram<u64>>,
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<KafkaError>>,
}

impl ClientContext for DeliveryRecorder {}

impl ProducerContext for DeliveryRecorder {
    /// When the record was meant to be sent.
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, result: &DeliveryResult<'_>, intended_send: Box<Instant>) {
        let latency_us = u64::try_from(intended_send.elapsed().as_micros()).unwrap_or(u64::MAX);
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                // Only the polling thread takes this lock, so it is never contended.
                let mut histogram = self.latency_us.lock().unwrap_or_else(|e| e.into_inner());
                histogram.saturating_record(latency_us.clamp(1, LATENCY_US_MAX));
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
                first.get_or_insert_with(|| error.clone());
            }
        }
    }
}

fn create_topic_if_missing(args: &Args) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(args).create().context("admin client")?;
    let topic = NewTopic::new(&args.topic, args.partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new()
        .request_timeout(Some(REQUEST_TIMEOUT))
        .operation_timeout(Some(REQUEST_TIMEOUT));
    let results = block_on(admin.create_topics([&topic], &options)).context("CreateTopics")?;
    for result in results {
        match result {
            Ok(name) => println!("created topic {name} with {} partitions", args.partitions),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                println!("topic {name} exists; using it as it is");
            }
            Err((name, code)) => bail!("create topic {name}: {code}"),
        }
    }
    Ok(())
}

fn produce(args: &Args) -> Result<()> {
    produce_stamped(args, None)
}

/// Produces as `produce` does; with `stamp_from`, each payload starts with the nanoseconds
/// from that instant to the record's scheduled send time (for `--end-to-end`).
fn produce_stamped(args: &Args, stamp_from: Option<Instant>) -> Result<()> {
    create_topic_if_missing(args)?;
    let recorder = DeliveryRecorder {
        latency_us: Mutex::new(
            Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).context("histogram bounds")?,
        ),
        delivered: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        first_error: Mutex::new(None),
    };
    let mut config = client_config(args);
    config
        .set("acks", &args.acks)
        .set("linger.ms", args.linger_ms.to_string())
        .set("batch.size", args.batch_size.to_string())
        .set("enable.idempotence", args.idempotence.to_string())
        .set("message.timeout.ms", "60000");
    if let Some(max_in_flight) = args.max_in_flight {
        config.set(
            "max.in.flight.requests.per.connection",
            max_in_flight.to_string(),
        );
    }
    let producer =
        ThreadedProducer::from_config_and_context(&config, recorder).context("create producer")?;
    let mut payload = payload_bytes(
        args.record_size
            .max(if stamp_from.is_some() { 8 } else { 0 }),
    );

    println!(
        "producing {} records of {} B to {} (acks={}, idempotence={}, rate={}, linger.ms={}, batch.size={})",
        args.records,
        args.record_size,
        args.topic,
        args.acks,
        args.idempotence,
        if args.rate == 0 {
            "unlimited".to_owned()
        } else {
            format!("{}/s", args.rate)
        },
        args.linger_ms,
        args.batch_size
    );
    let start = Instant::now();
    for index in 0..args.records {
        let intended_send = if args.rate == 0 {
            Instant::now()
        } else {
            let scheduled = start + scheduled_offset(index, args.rate);
            // Behind schedule, send at once: the lateness is counted as latency.
            if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            scheduled
        };
        if let Some(origin) = stamp_from {
            let nanos = u64::try_from(intended_send.duration_since(origin).as_nanos()).unwrap_or(0);
            payload[..8].copy_from_slice(&nanos.to_le_bytes());
        }
        let mut record = BaseRecord::<(), [u8], Box<Instant>>::with_opaque_to(
            &args.topic,
            Box::new(intended_send),
        )
        .payload(&payload[..]);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_micros(500));
                }
                Err((error, _)) => bail!("enqueue record {index}: {error}"),
            }
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .context("flush: deliveries still outstanding after 120 s")?;
    let elapsed = start.elapsed();

    let recorder = producer.context();
    let delivered = recorder.delivered.load(Ordering::Relaxed);
    let failed = recorder.failed.load(Ordering::Relaxed);
    print_throughput(
        "produced",
        delivered,
        delivered * args.record_size as u64,
        elapsed,
    );
    let histogram = recorder
        .latency_us
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    println!(
        "delivery latency (µs): p50 {} p99 {} p99.9 {} max {}",
        histogram.value_at_quantile(0.50),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.max()
    );
    if failed > 0 {
        let first = recorder
            .first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        bail!("{failed} records failed; first error: {first:?}");
    }
    Ok(())
}

/// When record `index` is due after the start, at `rate` records per second.
fn scheduled_offset(index: u64, rate: u64) -> Duration {
    let nanos = u128::from(index) * 1_000_000_000 / u128::from(rate);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Bytes that do not compress to nothing (xorshift), in case the broker or a client compresses.
fn payload_bytes(size: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// A consumer that will be assigned partitions directly (no group joined, nothing committed),
/// and the partition ids of `--topic`.
fn assigning_consumer(args: &Args) -> Result<(BaseConsumer, Vec<i32>)> {
    let consumer: BaseConsumer = client_config(args)
        // librdkafka's assign() refuses to work without a group.id ("Local: Unknown group"),
        // but with assign and no commits the group is never joined.
        .set("group.id", "kafka-client-bench-unused")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .context("create consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(&args.topic), REQUEST_TIMEOUT)
        .context("Metadata")?;
    let Some(topic) = metadata.topics().first() else {
        bail!("no metadata for topic {}", args.topic);
    };
    if let Some(error) = topic.error() {
        bail!("topic {}: {error:?}", args.topic);
    }
    let partitions = topic.partitions().iter().map(|p| p.id()).collect();
    Ok((consumer, partitions))
}

fn consume(args: &Args) -> Result<()> {
    let (consumer, partitions) = assigning_consumer(args)?;
    // Read each partition up to the high watermark it has now.
    let mut remaining: BTreeMap<i32, i64> = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for id in partitions {
        let (low, high) = consumer
            .fetch_watermarks(&args.topic, id, REQUEST_TIMEOUT)
            .with_context(|| format!("watermarks of partition {id}"))?;
        if high > low {
            remaining.insert(id, high);
            assignment.add_partition_offset(&args.topic, id, Offset::Beginning)?;
        }
    }
    let expected: i64 = remaining.values().sum();
    println!(
        "consuming {} from {} partitions (high watermarks total {expected})",
        args.topic,
        remaining.len()
    );
    consumer.assign(&assignment).context("assign")?;

    let start = Instant::now();
    let mut last_record = start;
    let (mut records, mut bytes) = (0_u64, 0_u64);
    while !remaining.is_empty() {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            if last_record.elapsed() > CONSUME_IDLE_TIMEOUT {
                bail!("no record for {CONSUME_IDLE_TIMEOUT:?}; still missing: {remaining:?}");
            }
            continue;
        };
        let message = message.context("fetch")?;
        last_record = Instant::now();
        records += 1;
        bytes += (message.payload_len() + message.key().map_or(0, <[u8]>::len)) as u64;
        let partition = message.partition();
        if remaining
            .get(&partition)
            .is_some_and(|&high| message.offset() + 1 >= high)
        {
            remaining.remove(&partition);
        }
    }
    print_throughput("consumed", records, bytes, start.elapsed());
    Ok(())
}

fn end_to_end(args: &Args) -> Result<()> {
    if args.rate == 0 {
        bail!("--end-to-end needs --rate: latency at an unlimited rate measures queueing");
    }
    create_topic_if_missing(args)?;
    let (consumer, partitions) = assigning_consumer(args)?;
    // Start at each partition's current end, known exactly, so no record is skipped.
    let mut assignment = TopicPartitionList::new();
    for id in partitions {
        let (_, high) = consumer
            .fetch_watermarks(&args.topic, id, REQUEST_TIMEOUT)
            .context("watermarks")?;
        assignment.add_partition_offset(&args.topic, id, Offset::Offset(high))?;
    }
    consumer.assign(&assignment).context("assign")?;
    let origin = Instant::now();
    let expected = args.records;
    let reader = std::thread::spawn(move || -> Result<Histogram<u64>> {
        let mut latency_us =
            Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).context("histogram bounds")?;
        let mut last_record = Instant::now();
        let mut received = 0_u64;
        while received < expected {
            let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                if last_record.elapsed() > CONSUME_IDLE_TIMEOUT {
                    bail!("no record for {CONSUME_IDLE_TIMEOUT:?}; {received} of {expected}");
                }
                continue;
            };
            let message = message.context("fetch")?;
            let arrived = origin.elapsed();
            last_record = Instant::now();
            let Some(stamp) = message.payload().and_then(|p| p.get(..8)) else {
                bail!("record without a timestamp stamp");
            };
            let sent = Duration::from_nanos(u64::from_le_bytes(stamp.try_into()?));
            let micros =
                u64::try_from(arrived.saturating_sub(sent).as_micros()).unwrap_or(u64::MAX);
            latency_us.saturating_record(micros.clamp(1, LATENCY_US_MAX));
            received += 1;
        }
        Ok(latency_us)
    });
    produce_stamped(args, Some(origin))?;
    let latency_us = reader
        .join()
        .map_err(|_| anyhow::anyhow!("consumer thread panicked"))??;
    println!(
        "end-to-end latency (µs): p50 {} p99 {} p99.9 {} max {}",
        latency_us.value_at_quantile(0.50),
        latency_us.value_at_quantile(0.99),
        latency_us.value_at_quantile(0.999),
        latency_us.max()
    );
    Ok(())
}

fn print_throughput(verb: &str, records: u64, bytes: u64, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    println!(
        "{verb} {records} records, {bytes} B in {seconds:.3} s: {:.0} records/s, {:.1} MB/s",
        records as f64 / seconds,
        bytes as f64 / seconds / 1e6
    );
}
