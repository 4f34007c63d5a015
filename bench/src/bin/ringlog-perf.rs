//! `ringlog-perf`: perf-test tools for any Kafka-compatible broker, flag-compatible with
//! Kafka's `kafka-producer-perf-test` and `kafka-consumer-perf-test`, on a thread-per-core
//! glommio client. `ringlog-perf producer --help` lists the flags.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ringlog_bench::perf::consumer::{self, ConsumerConfig};
use ringlog_bench::perf::producer::{self, ProducerConfig};
use ringlog_bench::perf::props::{read_properties_file, split_pairs, ProducerProps};
use ringlog_bench::perf::{end_to_end, payload, stats};
use serde_json::{json, Value};

#[derive(Debug, Parser)]
#[command(
    name = "ringlog-perf",
    version,
    about = "Perf-test producer, consumer and end-to-end latency tools for Kafka-compatible brokers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Produce records and report throughput and latency, like kafka-producer-perf-test.
    Producer(ProducerArgs),
    /// Consume records and report throughput, like kafka-consumer-perf-test.
    Consumer(ConsumerArgs),
    /// Produce at --throughput and read the records back: produce-to-consume latency.
    EndToEnd(EndToEndArgs),
}

#[derive(Debug, clap::Args)]
struct EndToEndArgs {
    #[command(flatten)]
    producer: ProducerArgs,
    /// Consumer shards (glommio executors), the partitions dealt among them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    consumer_cores: u64,
    /// How long the broker may hold a Fetch waiting for data (fetch.max.wait.ms).
    #[arg(long, default_value_t = 500)]
    fetch_max_wait_ms: i32,
}

#[derive(Debug, clap::Args)]
struct ConsumerArgs {
    /// Broker(s) to bootstrap from, comma-separated.
    #[arg(long, value_name = "HOST:PORT")]
    bootstrap_server: String,
    /// Topic to consume.
    #[arg(long)]
    topic: String,
    /// Records to consume; the run ends when they are read (or on --timeout).
    #[arg(long)]
    messages: u64,
    /// Join this consumer group (classic protocol, range assignment), start from its
    /// committed offsets and commit the final positions; without it every partition is
    /// assigned directly.
    #[arg(long)]
    group: Option<String>,
    /// Without a committed offset, start at the end of each partition instead of the start.
    #[arg(long)]
    from_latest: bool,
    /// Print a line per reporting interval instead of one summary.
    #[arg(long)]
    show_detailed_stats: bool,
    /// Give up when no record has arrived for this many milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout: u64,
    /// Milliseconds between --show-detailed-stats lines (whole seconds).
    #[arg(long, default_value_t = 5_000)]
    reporting_interval: u64,
    /// Print no header line.
    #[arg(long)]
    hide_header: bool,
    /// Bytes asked per partition in one Fetch (max.partition.fetch.bytes).
    #[arg(long, default_value_t = 1_048_576)]
    fetch_size: i32,
    /// Bytes asked in one Fetch in all (fetch.max.bytes).
    #[arg(long, default_value_t = 52_428_800)]
    fetch_max_bytes: i32,
    /// How long the broker may hold a Fetch waiting for data (fetch.max.wait.ms).
    #[arg(long, default_value_t = 500)]
    fetch_max_wait_ms: i32,
    /// Client shards (glommio executors); the partitions are dealt among them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    cores: u64,
    /// Pin the shards to these CPUs (comma-separated); unpinned by default.
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Also print (and put in the JSON) an order-independent checksum of the records: the
    /// sum mod 2^64 of CRC32C(key length as i32 BE, -1 for none | key | value).
    #[arg(long)]
    checksum: bool,
    /// Write the results as JSON to this file.
    #[arg(long)]
    output_json: Option<PathBuf>,
    /// Accepted for compatibility with Kafka's tool; its properties are not read.
    #[arg(long = "consumer.config", value_name = "FILE")]
    consumer_config: Option<PathBuf>,
    /// Accepted for compatibility with Kafka's tool; ringlog-perf prints no client metrics.
    #[arg(long)]
    print_metrics: bool,
}

#[derive(Debug, clap::Args)]
struct ProducerArgs {
    /// Topic to produce to.
    #[arg(long)]
    topic: String,
    /// Records to produce, warm-up included (unbounded with --duration alone).
    #[arg(long)]
    num_records: Option<u64>,
    /// Value size of each record in bytes (values start with a 16-byte stamp: the record's
    /// sequence in its partition and its intended send time).
    #[arg(long, conflicts_with = "payload_file")]
    record_size: Option<usize>,
    /// Values are read from this file, split by --payload-delimiter, and sent in turn.
    #[arg(long)]
    payload_file: Option<PathBuf>,
    /// Separator of the payloads in --payload-file.
    #[arg(long, default_value = "\\n")]
    payload_delimiter: String,
    /// Records per second over the whole run; -1 sends as fast as possible. With a rate,
    /// latency is measured from each record's intended send time (open loop).
    #[arg(long, default_value_t = -1.0, allow_negative_numbers = true)]
    throughput: f64,
    /// Producer properties: bootstrap.servers, acks, linger.ms, batch.size,
    /// compression.type, enable.idempotence, max.in.flight.requests.per.connection,
    /// client.id, request.timeout.ms, retries, retry.backoff.ms (others are warned about).
    #[arg(long, num_args = 1.., value_name = "PROP=VALUE")]
    producer_props: Vec<String>,
    /// A producer properties file (Java format); --producer-props override it.
    #[arg(long = "producer.config", value_name = "FILE")]
    producer_config: Option<PathBuf>,
    /// Broker(s) to bootstrap from, comma-separated (or bootstrap.servers).
    #[arg(long, value_name = "HOST:PORT")]
    bootstrap_server: Option<String>,
    /// Create the topic with this many partitions (replication factor 1) if it is missing.
    /// Without it the topic must exist: ringlog-perf never asks the broker to auto-create one
    /// (a topic auto-created with the broker's default layout would be measured unnoticed).
    #[arg(long)]
    partitions: Option<i32>,
    /// Stop after this many seconds of the measured part.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Records at the start that are sent but neither counted nor timed.
    #[arg(long, default_value_t = 0)]
    warmup_records: u64,
    /// Client shards: one glommio executor (thread) per core, partitions dealt among them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    cores: u64,
    /// Connections each shard opens to each partition leader (its partitions dealt among
    /// them).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    connections: u64,
    /// Key size in bytes (keys are the key index in zero-padded decimal); 0: no keys.
    #[arg(long, default_value_t = 0)]
    key_size: usize,
    /// Distinct keys (default with --key-size: 1000); partitioned as Kafka's default
    /// partitioner does (murmur2).
    #[arg(long)]
    keys: Option<u64>,
    /// Pin the shards to these CPUs (comma-separated, dealt in turn); unpinned by default.
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    output_json: Option<PathBuf>,
    /// Write an HdrHistogram interval log (one histogram per second, µs) to this file.
    #[arg(long)]
    histogram_out: Option<PathBuf>,
    /// Accepted for compatibility with Kafka's tool; ringlog-perf prints no client metrics.
    #[arg(long)]
    print_metrics: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Producer(args) => run_producer(args),
        Command::Consumer(args) => run_consumer(args),
        Command::EndToEnd(args) => run_end_to_end(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ringlog-perf: error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Kafka's tool takes escapes in the delimiter (`\n` by default).
fn unescape(text: &str) -> String {
    text.replace("\\n", "\n")
        .replace("\\t", "\t")
        .replace("\\r", "\r")
}

fn producer_settings(args: &ProducerArgs, props: &ProducerProps) -> Value {
    json!({
        "topic": args.topic,
        "num_records": args.num_records,
        "record_size": args.record_size,
        "payload_file": args.payload_file.as_ref().map(|p| p.display().to_string()),
        "payload_delimiter": args.payload_delimiter,
        "throughput": args.throughput,
        "producer_props": props.given,
        "producer_config": args.producer_config.as_ref().map(|p| p.display().to_string()),
        "bootstrap_server": args.bootstrap_server,
        "partitions": args.partitions,
        "duration_s": args.duration,
        "warmup_records": args.warmup_records,
        "cores": args.cores,
        "connections": args.connections,
        "key_size": args.key_size,
        "keys": args.keys,
        "cpus": args.cpus,
        "acks": props.acks,
        "linger_ms": props.linger.as_millis() as u64,
        "batch_size": props.batch_size,
        "compression_type": props.compression.name(),
        "enable_idempotence": props.idempotence,
        "max_in_flight": props.max_in_flight,
        "client_id": props.client_id,
    })
}

/// The producer's configuration from its flags and properties.
fn producer_config(args: &ProducerArgs) -> Result<ProducerConfig, String> {
    let mut entries = match &args.producer_config {
        Some(path) => read_properties_file(path)?,
        None => Vec::new(),
    };
    entries.extend(split_pairs(&args.producer_props)?);
    let (props, warnings) = ProducerProps::parse(&entries)?;
    for warning in warnings {
        eprintln!("ringlog-perf: warning: {warning}");
    }
    let bootstrap = args
        .bootstrap_server
        .clone()
        .or_else(|| props.bootstrap_servers.clone())
        .ok_or("give --bootstrap-server or --producer-props bootstrap.servers=HOST:PORT")?;
    let num_records = match (args.num_records, args.duration) {
        (Some(n), _) => n,
        (None, Some(_)) => u64::MAX,
        (None, None) => return Err("give --num-records or --duration".to_owned()),
    };
    let payloads = match &args.payload_file {
        Some(path) => {
            let payloads = payload::read_payload_file(path, &unescape(&args.payload_delimiter))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if payloads.is_empty() {
                return Err(format!("{}: no payloads in the file", path.display()));
            }
            Some(Arc::new(payloads))
        }
        None => None,
    };
    let record_size = match (args.record_size, &payloads) {
        (Some(size), _) => size,
        (None, Some(_)) => 0,
        (None, None) => return Err("give --record-size or --payload-file".to_owned()),
    };
    let key_size = match (args.key_size, args.keys) {
        (0, Some(_)) => 8,
        (size, _) => size,
    };
    let keys = match (key_size, args.keys) {
        (0, _) => 0,
        (_, Some(keys)) => keys.max(1),
        (_, None) => 1000,
    };
    let throughput = (args.throughput > 0.0).then_some(args.throughput);
    let settings = producer_settings(args, &props);
    Ok(ProducerConfig {
        bootstrap,
        topic: args.topic.clone(),
        create_partitions: args.partitions,
        num_records,
        record_size,
        payloads,
        throughput,
        props,
        duration: args.duration.map(Duration::from_secs_f64),
        warmup_records: args.warmup_records,
        cores: args.cores as usize,
        connections: args.connections as usize,
        key_size,
        keys,
        cpus: args.cpus.clone(),
        histogram_out: args.histogram_out.clone(),
        settings,
    })
}

fn run_producer(args: ProducerArgs) -> Result<(), String> {
    let config = producer_config(&args)?;
    let throughput = config.throughput;
    let outcome = producer::run(config, Box::new(|line: &str| println!("{line}")))?;
    if let Some(rate) = throughput {
        println!(
            "Latency is measured from each record's intended send time (open loop at {rate} records/sec), \
             free of coordinated omission."
        );
    }
    println!("{}", producer::final_line(&outcome.report, "sent"));
    if outcome.report.errors > 0 {
        println!("{} records failed.", outcome.report.errors);
    }
    if let Some(error) = &outcome.report.histogram_log_error {
        eprintln!("ringlog-perf: warning: histogram log: {error}");
    }
    if let Some(path) = &args.output_json {
        stats::write_json(path, &outcome.json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn run_consumer(args: ConsumerArgs) -> Result<(), String> {
    if args.consumer_config.is_some() {
        eprintln!("ringlog-perf: warning: --consumer.config is accepted but not read");
    }
    let settings = json!({
        "bootstrap_server": args.bootstrap_server,
        "topic": args.topic,
        "messages": args.messages,
        "group": args.group,
        "from_latest": args.from_latest,
        "show_detailed_stats": args.show_detailed_stats,
        "timeout_ms": args.timeout,
        "reporting_interval_ms": args.reporting_interval,
        "fetch_size": args.fetch_size,
        "fetch_max_bytes": args.fetch_max_bytes,
        "fetch_max_wait_ms": args.fetch_max_wait_ms,
        "cores": args.cores,
        "cpus": args.cpus,
    });
    let config = ConsumerConfig {
        bootstrap: args.bootstrap_server.clone(),
        topic: args.topic.clone(),
        messages: args.messages,
        group: args.group.clone(),
        from_latest: args.from_latest,
        timeout: Duration::from_millis(args.timeout),
        fetch_size: args.fetch_size,
        fetch_max_bytes: args.fetch_max_bytes,
        fetch_max_wait_ms: args.fetch_max_wait_ms,
        cores: args.cores as usize,
        cpus: args.cpus.clone(),
        client_id: "ringlog-perf-consumer".to_owned(),
        checksum: args.checksum,
        settings,
    };
    if !args.hide_header {
        println!("{}", consumer::header(args.show_detailed_stats));
    }
    let detailed = args.show_detailed_stats;
    let on_window = Box::new(move |window: &stats::Window<'_>, rebalance_ms: u64| {
        if detailed {
            println!("{}", consumer::detailed_line(window, rebalance_ms));
        }
    });
    let window_ticks = u32::try_from(args.reporting_interval / 1000)
        .unwrap_or(u32::MAX)
        .max(1);
    let outcome = consumer::run(config, window_ticks, on_window)?;
    if outcome.timed_out {
        println!(
            "WARNING: Exiting before consuming the expected number of messages: timeout ({} ms) exceeded. \
             You can use the --timeout option to increase the timeout.",
            args.timeout
        );
    }
    if !args.show_detailed_stats {
        println!("{}", consumer::summary_line(&outcome));
    }
    if let Some(checksum) = outcome.checksum {
        println!("checksum: {checksum}");
    }
    if let Some(path) = &args.output_json {
        stats::write_json(path, &outcome.json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn run_end_to_end(args: EndToEndArgs) -> Result<(), String> {
    let mut config = producer_config(&args.producer)?;
    let Some(rate) = config.throughput else {
        return Err("end-to-end needs a rate: --throughput RECORDS_PER_SEC".to_owned());
    };
    config.settings["consumer_cores"] = json!(args.consumer_cores);
    config.settings["fetch_max_wait_ms"] = json!(args.fetch_max_wait_ms);
    let outcome = end_to_end::run(
        config,
        args.consumer_cores as usize,
        args.fetch_max_wait_ms,
        Box::new(|line: &str| println!("{line}")),
    )?;
    println!(
        "Latency is produce-to-consume, from each record's intended send time (open loop at {rate} records/sec) \
         to its arrival at the consumer."
    );
    println!("{}", producer::final_line(&outcome.report, "received"));
    if outcome.timed_out {
        println!(
            "WARNING: {} of the {} records produced were not read back in time.",
            outcome
                .produced
                .saturating_sub(outcome.report.records + args.producer.warmup_records),
            outcome.produced
        );
    }
    if let Some(path) = &args.producer.output_json {
        stats::write_json(path, &outcome.json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
