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
use ringlog_bench::perf::props::{read_properties_file, split_pairs, ConsumerProps, ProducerProps};
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

/// The consumer's flags. Those that are also consumer properties have no default here: when
/// given they override `--consumer.config`, otherwise the file's value (or Kafka's default)
/// holds.
#[derive(Debug, clap::Args)]
struct ConsumerArgs {
    /// Broker(s) to bootstrap from, comma-separated (or bootstrap.servers in
    /// --consumer.config).
    #[arg(long, value_name = "HOST:PORT")]
    bootstrap_server: Option<String>,
    /// Topic to consume.
    #[arg(long)]
    topic: String,
    /// Records to consume; the run ends when they are read (or on --timeout).
    #[arg(long)]
    messages: u64,
    /// Join this consumer group (classic protocol, range assignment), start from its
    /// committed offsets and commit the final positions (or group.id in --consumer.config);
    /// without either every partition is assigned directly.
    #[arg(long)]
    group: Option<String>,
    /// Without a committed offset, start at the end of each partition instead of the start
    /// (auto.offset.reset=latest).
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
    /// Bytes asked per partition in one Fetch (max.partition.fetch.bytes; default 1048576).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    fetch_size: Option<i32>,
    /// Bytes asked in one Fetch in all (fetch.max.bytes; default 52428800).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    fetch_max_bytes: Option<i32>,
    /// How long the broker may hold a Fetch waiting for data (fetch.max.wait.ms; default 500).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    fetch_max_wait_ms: Option<i32>,
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
    /// A consumer properties file (Java format): bootstrap.servers, group.id,
    /// fetch.max.bytes, max.partition.fetch.bytes, fetch.min.bytes, fetch.max.wait.ms,
    /// auto.offset.reset, session.timeout.ms, heartbeat.interval.ms, client.id (others are
    /// warned about). The flags above override it.
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

/// The consumer's properties: the config file's, then the flags that set properties (later
/// entries win, so a flag overrides the file, as in Kafka's tool).
fn consumer_props(args: &ConsumerArgs) -> Result<ConsumerProps, String> {
    let mut entries = match &args.consumer_config {
        Some(path) => read_properties_file(path)?,
        None => Vec::new(),
    };
    let flags = [
        ("bootstrap.servers", args.bootstrap_server.clone()),
        ("group.id", args.group.clone()),
        (
            "max.partition.fetch.bytes",
            args.fetch_size.map(|n| n.to_string()),
        ),
        (
            "fetch.max.bytes",
            args.fetch_max_bytes.map(|n| n.to_string()),
        ),
        (
            "fetch.max.wait.ms",
            args.fetch_max_wait_ms.map(|n| n.to_string()),
        ),
        (
            "auto.offset.reset",
            args.from_latest.then(|| "latest".to_owned()),
        ),
    ];
    entries.extend(
        flags
            .into_iter()
            .filter_map(|(key, value)| Some((key.to_owned(), value?))),
    );
    let (props, warnings) = ConsumerProps::parse(&entries)?;
    for warning in warnings {
        eprintln!("ringlog-perf: warning: {warning}");
    }
    Ok(props)
}

fn consumer_config(args: &ConsumerArgs) -> Result<ConsumerConfig, String> {
    let props = consumer_props(args)?;
    let bootstrap = props
        .bootstrap_servers
        .clone()
        .ok_or("give --bootstrap-server or bootstrap.servers in --consumer.config")?;
    let settings = json!({
        "bootstrap_server": bootstrap,
        "topic": args.topic,
        "messages": args.messages,
        "group": props.group_id,
        "from_latest": props.from_latest,
        "show_detailed_stats": args.show_detailed_stats,
        "timeout_ms": args.timeout,
        "reporting_interval_ms": args.reporting_interval,
        "fetch_size": props.max_partition_fetch_bytes,
        "fetch_max_bytes": props.fetch_max_bytes,
        "fetch_min_bytes": props.fetch_min_bytes,
        "fetch_max_wait_ms": props.fetch_max_wait_ms,
        "session_timeout_ms": props.session_timeout_ms,
        "heartbeat_interval_ms": props.heartbeat_interval.as_millis() as u64,
        "client_id": props.client_id,
        "consumer_config": args.consumer_config.as_ref().map(|p| p.display().to_string()),
        "consumer_props": props.given,
        "cores": args.cores,
        "cpus": args.cpus,
    });
    Ok(ConsumerConfig {
        bootstrap,
        topic: args.topic.clone(),
        messages: args.messages,
        group: props.group_id.clone(),
        from_latest: props.from_latest,
        timeout: Duration::from_millis(args.timeout),
        fetch_size: props.max_partition_fetch_bytes,
        fetch_max_bytes: props.fetch_max_bytes,
        fetch_min_bytes: props.fetch_min_bytes,
        fetch_max_wait_ms: props.fetch_max_wait_ms,
        session_timeout_ms: props.session_timeout_ms,
        heartbeat_interval: props.heartbeat_interval,
        cores: args.cores as usize,
        cpus: args.cpus.clone(),
        client_id: props.client_id,
        checksum: args.checksum,
        settings,
    })
}

fn run_consumer(args: ConsumerArgs) -> Result<(), String> {
    let config = consumer_config(&args)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer_args(args: &[&str]) -> ConsumerArgs {
        let argv = [
            "ringlog-perf",
            "consumer",
            "--topic",
            "t",
            "--messages",
            "1",
        ];
        let cli = Cli::try_parse_from(argv.iter().chain(args)).expect("arguments");
        match cli.command {
            Command::Consumer(args) => args,
            other => panic!("not the consumer: {other:?}"),
        }
    }

    #[test]
    fn consumer_flags_override_the_config_file_and_the_file_overrides_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("consumer.properties");
        std::fs::write(
            &file,
            "bootstrap.servers=file:1\ngroup.id=file-group\nfetch.max.wait.ms=100\n\
             max.partition.fetch.bytes=2048\nsession.timeout.ms=10000\n",
        )
        .expect("write");
        let path = file.to_str().expect("utf-8 path");

        let config = consumer_config(&consumer_args(&["--consumer.config", path])).expect("file");
        assert_eq!(config.bootstrap, "file:1");
        assert_eq!(config.group.as_deref(), Some("file-group"));
        assert_eq!((config.fetch_max_wait_ms, config.fetch_size), (100, 2048));
        assert_eq!(config.session_timeout_ms, 10_000);
        assert_eq!(config.fetch_max_bytes, 52_428_800, "Kafka's default");
        assert!(!config.from_latest);

        let config = consumer_config(&consumer_args(&[
            "--consumer.config",
            path,
            "--bootstrap-server",
            "flag:2",
            "--group",
            "flag-group",
            "--fetch-max-wait-ms",
            "7",
            "--from-latest",
        ]))
        .expect("flags");
        assert_eq!(config.bootstrap, "flag:2");
        assert_eq!(config.group.as_deref(), Some("flag-group"));
        assert_eq!((config.fetch_max_wait_ms, config.fetch_size), (7, 2048));
        assert!(config.from_latest);

        let missing = consumer_config(&consumer_args(&[])).expect_err("no bootstrap");
        assert!(missing.contains("--bootstrap-server"), "{missing}");
    }
}
