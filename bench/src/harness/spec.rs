//! The workload file: which brokers to measure, the topics to create on each, and the steps
//! to run against them (producers, consumers and end-to-end latency processes started
//! together, optionally after a backlog is written).
//!
//! ```toml
//! name = "max-throughput"
//! rounds = 3
//!
//! [[broker]]
//! name = "ringlog"
//! bootstrap = "127.0.0.1:19092"
//! start = "target/release/ringlog serve --data-dir {data_dir} --listen {bootstrap}"
//!
//! [[topic]]
//! name = "bench"
//! partitions = 2
//!
//! [[step]]
//! name = "produce"
//! [[step.producer]]
//! topic = "bench"
//! records = 1000000
//! ```
//!
//! Parsing refuses unknown keys (a typo must not silently fall back to a default), and
//! [`Workload::validate`] checks what TOML cannot express: names usable in file names, topics
//! that exist, producers that end, consumers that know how many records to wait for.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Rounds a workload may ask for; more is a mistake, not a benchmark.
pub const ROUNDS_MAX: u32 = 1000;
/// Processes one step may start (all kinds together).
pub const PROCESSES_PER_STEP_MAX: u32 = 256;

/// Why a workload file cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
    #[error("parsing the workload: {0}")]
    Parse(String),
    #[error("{what} {name:?}: use only letters, digits, '.', '_' and '-' (at most 100)")]
    BadName { what: &'static str, name: String },
    #[error("the workload has no [[broker]]")]
    NoBrokers,
    #[error("the workload has no [[step]]")]
    NoSteps,
    #[error("two {what} entries are named {name:?}")]
    Duplicate { what: &'static str, name: String },
    #[error("broker {broker:?}: bootstrap {bootstrap:?} is not HOST:PORT")]
    BadBootstrap { broker: String, bootstrap: String },
    #[error("--broker {0:?} is not in the workload")]
    UnknownBroker(String),
    #[error("rounds must be 1 to {ROUNDS_MAX}, not {0}")]
    BadRounds(u32),
    #[error("topic {topic:?}: {message}")]
    BadTopic { topic: String, message: String },
    #[error("step {step:?}: {message}")]
    BadStep { step: String, message: String },
}

fn step_error(step: &str, message: impl Into<String>) -> SpecError {
    SpecError::BadStep {
        step: step.to_owned(),
        message: message.into(),
    }
}

/// A whole workload file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Rounds: every broker runs every step once per round, brokers taking turns.
    #[serde(default = "default_rounds")]
    pub rounds: u32,
    #[serde(rename = "broker", default)]
    pub brokers: Vec<BrokerSpec>,
    #[serde(rename = "topic", default)]
    pub topics: Vec<TopicSpec>,
    #[serde(rename = "step", default)]
    pub steps: Vec<StepSpec>,
}

fn default_rounds() -> u32 {
    1
}

/// A broker under test: where clients bootstrap, and optionally how to start and stop it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSpec {
    pub name: String,
    /// HOST:PORT the clients bootstrap from.
    pub bootstrap: String,
    /// Shell command (`sh -c`) that runs the broker in the foreground, started before each of
    /// its rounds. `{data_dir}` becomes a fresh directory for the round, `{bootstrap}`,
    /// `{host}` and `{port}` the bootstrap address. Without it the broker must be running.
    pub start: Option<String>,
    /// Shell command that stops the broker; by default the started command's process group
    /// gets SIGTERM (SIGKILL after `stop_timeout_s`).
    pub stop: Option<String>,
    /// Seconds to wait for the bootstrap port to answer Kafka requests after `start`.
    #[serde(default = "default_ready_timeout_s")]
    pub ready_timeout_s: u64,
    /// Seconds to wait for the broker to exit after it was asked to stop.
    #[serde(default = "default_stop_timeout_s")]
    pub stop_timeout_s: u64,
    /// Environment variables for `start` and `stop`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_ready_timeout_s() -> u64 {
    60
}

fn default_stop_timeout_s() -> u64 {
    30
}

impl BrokerSpec {
    /// The bootstrap address split into host and port.
    pub fn host_port(&self) -> Option<(&str, u16)> {
        let (host, port) = self.bootstrap.rsplit_once(':')?;
        let port = port.parse().ok()?;
        (!host.is_empty()).then_some((host, port))
    }

    /// `command` with the placeholders filled in.
    pub fn expand(&self, command: &str, data_dir: &Path) -> String {
        let (host, port) = self.host_port().unwrap_or(("", 0));
        command
            .replace("{data_dir}", &data_dir.display().to_string())
            .replace("{bootstrap}", &self.bootstrap)
            .replace("{host}", host)
            .replace("{port}", &port.to_string())
    }
}

/// A topic created fresh on each broker before each round and deleted after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i16,
    /// Topic configs (`segment.bytes`, `retention.ms`, ...), values as strings.
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

fn default_partitions() -> i32 {
    1
}

fn default_replication_factor() -> i16 {
    1
}

/// One measured step: its consumers and producers run concurrently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub name: String,
    /// A warm-up step runs and is recorded like any other but left out of the summary.
    #[serde(default)]
    pub warmup: bool,
    /// Records written (and awaited) before the step's consumers and producers start, so
    /// the consumers begin behind a backlog (catch-up reads).
    pub backlog: Option<ProducerSpec>,
    #[serde(rename = "producer", default)]
    pub producers: Vec<ProducerSpec>,
    /// ringlog-perf end-to-end processes: each produces at its rate and reads its records
    /// back, for produce-to-consume latency (same settings as a producer).
    #[serde(rename = "end_to_end", default)]
    pub end_to_end: Vec<ProducerSpec>,
    #[serde(rename = "consumer", default)]
    pub consumers: Vec<ConsumerSpec>,
    /// Seconds the step may take before its processes are stopped and it counts as failed;
    /// by default ten minutes, plus the longest producer duration.
    pub timeout_s: Option<u64>,
}

/// `count` identical ringlog-perf producer processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProducerSpec {
    pub topic: String,
    #[serde(default = "default_count")]
    pub count: u32,
    /// Records each process sends (Kafka's --num-records).
    pub records: Option<u64>,
    /// Seconds each process sends for (ends at whichever of records and duration comes first).
    pub duration_s: Option<u64>,
    #[serde(default = "default_record_size")]
    pub record_size: u64,
    /// Records per second per process; -1 for as fast as possible.
    #[serde(default = "default_throughput")]
    pub throughput: i64,
    /// Records sent first and left out of the figures.
    pub warmup_records: Option<u64>,
    #[serde(default = "default_acks")]
    pub acks: String,
    pub linger_ms: Option<u64>,
    pub batch_size: Option<u64>,
    /// Client shards (one per core) in each process.
    pub cores: Option<u32>,
    pub connections: Option<u32>,
    /// Keyed records: key bytes and how many distinct keys.
    pub key_size: Option<u32>,
    pub keys: Option<u64>,
    /// Any other producer properties (compression.type, enable.idempotence, ...).
    #[serde(default)]
    pub props: BTreeMap<String, String>,
}

fn default_count() -> u32 {
    1
}

fn default_record_size() -> u64 {
    1024
}

fn default_throughput() -> i64 {
    -1
}

fn default_acks() -> String {
    "1".to_owned()
}

/// `groups` consumer groups of `count` ringlog-perf consumer processes each; every group
/// reads the whole topic (fan-out), the members of a group share it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSpec {
    pub topic: String,
    /// Consumers per group.
    #[serde(default = "default_count")]
    pub count: u32,
    /// Groups reading the topic independently.
    #[serde(default = "default_count")]
    pub groups: u32,
    /// Prefix of the group names (made unique per run, step, round and group).
    pub group: Option<String>,
    /// Records each consumer reads before it stops; by default the records the step (and
    /// its backlog) writes to the topic, divided among the group's consumers.
    pub messages: Option<u64>,
    /// Start at the end of the topic rather than the beginning.
    #[serde(default)]
    pub from_latest: bool,
    /// A consumer stops after this long without a record (ringlog-perf's --timeout).
    pub timeout_ms: Option<u64>,
    /// Client shards (one per core) in each consumer process.
    pub cores: Option<u32>,
}

impl Workload {
    /// Reads and validates a workload file.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(&text)
    }

    /// Parses and validates a workload's TOML text.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let workload: Self = toml::from_str(text).map_err(|e| SpecError::Parse(e.to_string()))?;
        workload.validate()?;
        Ok(workload)
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        check_name("workload", &self.name)?;
        if !(1..=ROUNDS_MAX).contains(&self.rounds) {
            return Err(SpecError::BadRounds(self.rounds));
        }
        if self.brokers.is_empty() {
            return Err(SpecError::NoBrokers);
        }
        if self.steps.is_empty() {
            return Err(SpecError::NoSteps);
        }
        unique("broker", self.brokers.iter().map(|b| &b.name))?;
        unique("topic", self.topics.iter().map(|t| &t.name))?;
        unique("step", self.steps.iter().map(|s| &s.name))?;
        for broker in &self.brokers {
            check_name("broker", &broker.name)?;
            if broker.host_port().is_none() {
                return Err(SpecError::BadBootstrap {
                    broker: broker.name.clone(),
                    bootstrap: broker.bootstrap.clone(),
                });
            }
        }
        for topic in &self.topics {
            check_topic(topic)?;
        }
        for step in &self.steps {
            self.check_step(step)?;
        }
        Ok(())
    }

    /// The brokers named in `only` (all when empty), in the workload's order.
    pub fn select_brokers(&self, only: &[String]) -> Result<Vec<&BrokerSpec>, SpecError> {
        if let Some(unknown) = only
            .iter()
            .find(|name| !self.brokers.iter().any(|b| &b.name == *name))
        {
            return Err(SpecError::UnknownBroker(unknown.clone()));
        }
        Ok(self
            .brokers
            .iter()
            .filter(|b| only.is_empty() || only.contains(&b.name))
            .collect())
    }

    fn check_step(&self, step: &StepSpec) -> Result<(), SpecError> {
        check_name("step", &step.name)?;
        if step.producers.is_empty() && step.consumers.is_empty() && step.end_to_end.is_empty() {
            return Err(step_error(
                &step.name,
                "has no producers, consumers or end_to_end processes",
            ));
        }
        let mut processes = 0u32;
        for producer in step.writers() {
            self.check_producer(&step.name, producer)?;
            processes = processes.saturating_add(producer.count);
        }
        for consumer in &step.consumers {
            self.check_topic_known(&step.name, &consumer.topic)?;
            if consumer.count == 0 || consumer.groups == 0 {
                return Err(step_error(
                    &step.name,
                    "a consumer needs count and groups of 1 or more",
                ));
            }
            if let Some(prefix) = &consumer.group {
                check_name("consumer group", prefix)?;
            }
            if consumer.messages == Some(0) {
                return Err(step_error(&step.name, "messages = 0 reads nothing"));
            }
            if consumer.messages.is_none() && step.records_to(&consumer.topic).is_none() {
                return Err(step_error(
                    &step.name,
                    format!(
                        "set messages for the consumers of {:?}: its producers run for a \
                         duration, so the number of records to read is not known",
                        consumer.topic
                    ),
                ));
            }
            processes = processes.saturating_add(consumer.count.saturating_mul(consumer.groups));
        }
        if processes > PROCESSES_PER_STEP_MAX {
            return Err(step_error(
                &step.name,
                format!("{processes} processes; at most {PROCESSES_PER_STEP_MAX}"),
            ));
        }
        Ok(())
    }

    fn check_producer(&self, step: &str, producer: &ProducerSpec) -> Result<(), SpecError> {
        self.check_topic_known(step, &producer.topic)?;
        let problem = if producer.count == 0 {
            Some("a producer count must be 1 or more")
        } else if producer.records.is_none() && producer.duration_s.is_none() {
            Some("a producer needs records or duration_s (or both)")
        } else if producer.records == Some(0) || producer.duration_s == Some(0) {
            Some("records and duration_s must be above 0")
        } else if producer.record_size == 0 {
            Some("record_size must be above 0")
        } else if producer.throughput == 0 || producer.throughput < -1 {
            Some("throughput is records/s per producer, or -1 for unlimited")
        } else if !["0", "1", "-1", "all"].contains(&producer.acks.as_str()) {
            Some("acks must be 0, 1, -1 or all")
        } else if producer.keys.is_some() != producer.key_size.is_some() {
            Some("keyed records need both key_size and keys")
        } else {
            None
        };
        match problem {
            Some(message) => Err(step_error(step, message)),
            None => Ok(()),
        }
    }

    fn check_topic_known(&self, step: &str, topic: &str) -> Result<(), SpecError> {
        if self.topics.iter().any(|t| t.name == topic) {
            return Ok(());
        }
        Err(step_error(
            step,
            format!("topic {topic:?} is not declared in a [[topic]]"),
        ))
    }
}

impl StepSpec {
    /// Records the step's backlog and producers write to `topic` in all, when every one of
    /// them has a record count.
    pub fn records_to(&self, topic: &str) -> Option<u64> {
        self.writers()
            .filter(|p| p.topic == topic)
            .map(|p| {
                p.records
                    .map(|records| records.saturating_mul(u64::from(p.count)))
            })
            .sum()
    }

    /// Everything in the step that writes records: backlog, producers, end-to-end processes.
    pub fn writers(&self) -> impl Iterator<Item = &ProducerSpec> {
        self.backlog
            .iter()
            .chain(&self.producers)
            .chain(&self.end_to_end)
    }

    /// Records each consumer of `consumer` reads.
    pub fn messages_per_consumer(&self, consumer: &ConsumerSpec) -> u64 {
        consumer.messages.unwrap_or_else(|| {
            let total = self.records_to(&consumer.topic).unwrap_or(0);
            total.div_ceil(u64::from(consumer.count.max(1)))
        })
    }

    /// How long the step may run.
    pub fn timeout_s(&self) -> u64 {
        let longest = self
            .writers()
            .filter_map(|p| p.duration_s)
            .max()
            .unwrap_or(0);
        self.timeout_s.unwrap_or(600 + longest)
    }
}

fn check_topic(topic: &TopicSpec) -> Result<(), SpecError> {
    check_name("topic", &topic.name)?;
    let message = if topic.partitions < 1 {
        "partitions must be 1 or more"
    } else if topic.replication_factor < 1 {
        "replication_factor must be 1 or more"
    } else {
        return Ok(());
    };
    Err(SpecError::BadTopic {
        topic: topic.name.clone(),
        message: message.to_owned(),
    })
}

/// Names end up in file names and consumer group names.
fn check_name(what: &'static str, name: &str) -> Result<(), SpecError> {
    let usable = !name.is_empty()
        && name.len() <= 100
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if usable {
        return Ok(());
    }
    Err(SpecError::BadName {
        what,
        name: name.to_owned(),
    })
}

fn unique<'a>(
    what: &'static str,
    names: impl Iterator<Item = &'a String>,
) -> Result<(), SpecError> {
    let mut seen = BTreeSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(SpecError::Duplicate {
                what,
                name: name.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// The smallest valid workload: one broker, topic, step and producer.
    pub const MINIMAL: &str = r#"
        name = "w"
        [[broker]]
        name = "a"
        bootstrap = "127.0.0.1:9092"
        [[topic]]
        name = "t"
        [[step]]
        name = "s"
        [[step.producer]]
        topic = "t"
        records = 1000
    "#;

    fn parse_with(extra: &str) -> Result<Workload, SpecError> {
        Workload::parse(&format!("{MINIMAL}\n{extra}"))
    }

    #[test]
    fn minimal_workload_gets_the_defaults() {
        let workload = Workload::parse(MINIMAL).expect("valid");
        assert_eq!(workload.rounds, 1);
        let producer = &workload.steps[0].producers[0];
        assert_eq!(producer.count, 1);
        assert_eq!(producer.record_size, 1024);
        assert_eq!(producer.throughput, -1);
        assert_eq!(producer.acks, "1");
        assert_eq!(workload.topics[0].partitions, 1);
        assert_eq!(workload.brokers[0].ready_timeout_s, 60);
    }

    #[test]
    fn consumers_default_to_what_the_step_writes() {
        let workload = parse_with(
            r#"
            [[step.consumer]]
            topic = "t"
            count = 3
            groups = 2
            [step.backlog]
            topic = "t"
            records = 500
            count = 2
            "#,
        )
        .expect("valid");
        let step = &workload.steps[0];
        assert_eq!(step.records_to("t"), Some(2000));
        assert_eq!(step.messages_per_consumer(&step.consumers[0]), 667);
        // End-to-end processes write to their topic too.
        let with_end_to_end = parse_with(
            "[[step.end_to_end]]\ntopic = \"t\"\nrecords = 100\nthroughput = 50\n\
             [[step.consumer]]\ntopic = \"t\"",
        )
        .expect("valid");
        let step = &with_end_to_end.steps[0];
        assert_eq!(step.messages_per_consumer(&step.consumers[0]), 1100);
    }

    #[test]
    fn typos_and_bad_values_are_refused() {
        let error = Workload::parse(&format!("rounds = 0\n{MINIMAL}")).expect_err("rounds");
        assert_eq!(error, SpecError::BadRounds(0));
        let cases: [(&str, &str); 8] = [
            ("[[step.producer]]\ntopic = \"t\"\nrecrods = 5", "unknown field"),
            ("[[step.producer]]\ntopic = \"nope\"\nrecords = 5", "not declared"),
            ("[[step.producer]]\ntopic = \"t\"", "records or duration_s"),
            ("[[step.producer]]\ntopic = \"t\"\nrecords = 5\nthroughput = 0", "throughput"),
            ("[[step.producer]]\ntopic = \"t\"\nrecords = 5\nacks = \"2\"", "acks"),
            (
                "[[step.consumer]]\ntopic = \"t\"\n[[step.producer]]\ntopic = \"t\"\nduration_s = 5",
                "set messages",
            ),
            ("[[broker]]\nname = \"a\"\nbootstrap = \"x:1\"", "two broker entries"),
            ("[[topic]]\nname = \"u\"\npartitions = 0", "partitions must be"),
        ];
        for (extra, expected) in cases {
            let error = parse_with(extra).expect_err(extra).to_string();
            assert!(error.contains(expected), "{extra:?}: {error}");
        }
    }

    #[test]
    fn names_and_addresses_are_checked() {
        let bad_name = MINIMAL.replace("name = \"a\"", "name = \"a/b\"");
        assert!(matches!(
            Workload::parse(&bad_name),
            Err(SpecError::BadName { what: "broker", .. })
        ));
        let bad_address = MINIMAL.replace("127.0.0.1:9092", "localhost");
        assert!(matches!(
            Workload::parse(&bad_address),
            Err(SpecError::BadBootstrap { .. })
        ));
        let no_steps = MINIMAL.split("[[step]]").next().unwrap_or_default();
        assert_eq!(Workload::parse(no_steps), Err(SpecError::NoSteps));
    }

    #[test]
    fn brokers_are_selected_by_name() {
        let workload =
            parse_with("[[broker]]\nname = \"b\"\nbootstrap = \"127.0.0.1:9093\"").expect("valid");
        let all = workload.select_brokers(&[]).expect("all");
        assert_eq!(all.len(), 2);
        let one = workload.select_brokers(&["b".to_owned()]).expect("b");
        assert_eq!(one[0].name, "b");
        assert_eq!(
            workload.select_brokers(&["c".to_owned()]).map(|v| v.len()),
            Err(SpecError::UnknownBroker("c".to_owned()))
        );
    }

    #[test]
    fn shipped_workloads_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("bench/workloads") {
            let path = entry.expect("entry").path();
            let workload = Workload::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                path.file_stem().and_then(|s| s.to_str()),
                Some(workload.name.as_str())
            );
            assert!(workload.brokers.iter().all(|b| b.start.is_some()));
            names.push(workload.name);
        }
        names.sort();
        let expected = [
            "catch-up",
            "fan-out",
            "low-latency",
            "many-partitions",
            "max-throughput",
        ];
        assert_eq!(names, expected);
    }

    #[test]
    fn start_commands_get_their_placeholders() {
        let workload = Workload::parse(MINIMAL).expect("valid");
        let command = workload.brokers[0].expand(
            "ringlog serve --data-dir {data_dir} --listen {bootstrap} # {host} {port}",
            Path::new("/d/r1"),
        );
        assert_eq!(
            command,
            "ringlog serve --data-dir /d/r1 --listen 127.0.0.1:9092 # 127.0.0.1 9092"
        );
    }
}
