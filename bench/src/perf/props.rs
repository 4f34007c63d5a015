//! Kafka client properties: the producer's (`--producer-props k=v ...`, `--producer.config
//! FILE`) and the consumer's (`--consumer.config FILE`, then the consumer's flags).
//!
//! The keys this client acts on are read with Kafka's defaults (Kafka 4: acks=all, linger.ms
//! 5, batch.size 16384, idempotence on unless a conflicting setting was given without it;
//! fetch.max.wait.ms 500, session.timeout.ms 45000, ...); serializer and deserializer classes
//! are accepted and mean nothing here; any other key is reported back as a warning, never an
//! error, so a Java client's config file works as it is. Later entries win: the caller puts
//! the file's first and the command line's after them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ringlog_net::client::batch::{compression_from_name, Compression};

/// Properties a Java producer takes that mean nothing to this client.
const IGNORED_KEYS: &[&str] = &["key.serializer", "value.serializer"];
/// Properties a Java consumer takes that mean nothing to this client.
const CONSUMER_IGNORED_KEYS: &[&str] = &["key.deserializer", "value.deserializer"];

#[derive(Debug, Clone)]
pub struct ProducerProps {
    pub bootstrap_servers: Option<String>,
    /// 0, 1 or -1 (all).
    pub acks: i16,
    pub linger: Duration,
    pub batch_size: usize,
    pub compression: Compression,
    pub idempotence: bool,
    pub max_in_flight: usize,
    pub client_id: String,
    pub request_timeout_ms: i32,
    /// Times a batch is sent again after a retriable error before it counts as failed.
    pub retries: u32,
    pub retry_backoff: Duration,
    /// How long a sender may go without a usable connection to its partitions' leader
    /// (looking it up again and reconnecting) before the run fails, as Kafka's
    /// delivery.timeout.ms bounds a record's retries.
    pub delivery_timeout: Duration,
    /// Every property as given, for the JSON settings.
    pub given: BTreeMap<String, String>,
}

/// Reads a Java properties file: `key=value` (or `key: value`) lines, `#`/`!` comments.
pub fn read_properties_file(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with('!'))
        .filter_map(|line| {
            let at = line.find(['=', ':'])?;
            Some((
                line[..at].trim().to_owned(),
                line[at + 1..].trim().to_owned(),
            ))
        })
        .collect())
}

/// Splits `k=v` arguments.
pub fn split_pairs(pairs: &[String]) -> Result<Vec<(String, String)>, String> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| format!("producer property {pair:?} is not key=value"))
        })
        .collect()
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("property {key}={value}: not a valid number"))
}

/// A count of bytes or milliseconds that goes into an i32 protocol field.
fn non_negative_i32(key: &str, value: &str) -> Result<i32, String> {
    number::<u32>(key, value).and_then(|n| {
        i32::try_from(n).map_err(|_| format!("property {key}={value}: at most {}", i32::MAX))
    })
}

/// The warning for a key this client does not act on.
fn unused_key_warning(client: &str, key: &str, value: &str) -> String {
    format!("{client} property {key}={value} is not used by ringlog-perf")
}

impl ProducerProps {
    /// Later entries win (the config file first, then `--producer-props`). Returns the
    /// properties and a warning for each key this client does not know.
    pub fn parse(entries: &[(String, String)]) -> Result<(Self, Vec<String>), String> {
        let given: BTreeMap<String, String> = entries.iter().cloned().collect();
        let mut props = Self {
            bootstrap_servers: None,
            acks: -1,
            linger: Duration::from_millis(5),
            batch_size: 16_384,
            compression: Compression::None,
            idempotence: true,
            max_in_flight: 5,
            client_id: "ringlog-perf".to_owned(),
            request_timeout_ms: 30_000,
            retries: 10,
            retry_backoff: Duration::from_millis(100),
            delivery_timeout: Duration::from_secs(120),
            given: given.clone(),
        };
        let mut warnings = Vec::new();
        for (key, value) in &given {
            match key.as_str() {
                "bootstrap.servers" => props.bootstrap_servers = Some(value.clone()),
                "acks" => {
                    props.acks = match value.as_str() {
                        "all" | "-1" => -1,
                        "0" => 0,
                        "1" => 1,
                        _ => return Err(format!("acks={value}: expected 0, 1, all or -1")),
                    }
                }
                "linger.ms" => props.linger = Duration::from_millis(number(key, value)?),
                "batch.size" => props.batch_size = number::<usize>(key, value)?.max(1),
                "compression.type" => {
                    props.compression = compression_from_name(value).ok_or_else(|| {
                        format!(
                            "compression.type={value}: expected none, gzip, snappy, lz4 or zstd"
                        )
                    })?;
                }
                "enable.idempotence" => {
                    props.idempotence = match value.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(format!(
                                "enable.idempotence={value}: expected true or false"
                            ))
                        }
                    }
                }
                "max.in.flight.requests.per.connection" => {
                    props.max_in_flight = number::<usize>(key, value)?.max(1);
                }
                "client.id" => props.client_id = value.clone(),
                "request.timeout.ms" => props.request_timeout_ms = number(key, value)?,
                "retries" => props.retries = number(key, value)?,
                "retry.backoff.ms" => {
                    props.retry_backoff = Duration::from_millis(number(key, value)?)
                }
                "delivery.timeout.ms" => {
                    props.delivery_timeout = Duration::from_millis(number(key, value)?)
                }
                known if IGNORED_KEYS.contains(&known) => {}
                unknown => warnings.push(unused_key_warning("producer", unknown, value)),
            }
        }
        props.settle_idempotence()?;
        Ok((props, warnings))
    }

    /// Kafka's rule: idempotence is on by default, but quietly off when acks or the in-flight
    /// limit conflict with it and it was not asked for explicitly; asked for explicitly, a
    /// conflict is an error.
    fn settle_idempotence(&mut self) -> Result<(), String> {
        let conflict = self.acks != -1 || self.max_in_flight > 5;
        if !conflict {
            return Ok(());
        }
        if self.given.get("enable.idempotence").map(String::as_str) == Some("true") {
            return Err(format!(
                "enable.idempotence=true needs acks=all and max.in.flight.requests.per.connection <= 5 \
                 (got acks={}, max.in.flight={})",
                self.acks, self.max_in_flight
            ));
        }
        self.idempotence = false;
        Ok(())
    }
}

/// Kafka consumer properties: what `--consumer.config` and the consumer's flags set.
#[derive(Debug, Clone)]
pub struct ConsumerProps {
    pub bootstrap_servers: Option<String>,
    pub group_id: Option<String>,
    /// Bytes asked in one Fetch in all.
    pub fetch_max_bytes: i32,
    /// Bytes asked per partition in one Fetch.
    pub max_partition_fetch_bytes: i32,
    /// Bytes the broker waits for before it answers a Fetch (up to `fetch_max_wait_ms`).
    pub fetch_min_bytes: i32,
    pub fetch_max_wait_ms: i32,
    /// auto.offset.reset=latest: without a committed offset, start at the end. The tool's
    /// default is earliest, as Kafka's perf tool has it (a Java consumer's is latest).
    pub from_latest: bool,
    pub session_timeout_ms: i32,
    pub heartbeat_interval: Duration,
    pub client_id: String,
    /// Every property as given, for the JSON settings.
    pub given: BTreeMap<String, String>,
}

impl ConsumerProps {
    /// Later entries win (the config file first, then the flags). Returns the properties and
    /// a warning for each key this client does not know.
    pub fn parse(entries: &[(String, String)]) -> Result<(Self, Vec<String>), String> {
        let given: BTreeMap<String, String> = entries.iter().cloned().collect();
        let mut props = Self {
            bootstrap_servers: None,
            group_id: None,
            fetch_max_bytes: 52_428_800,
            max_partition_fetch_bytes: 1_048_576,
            fetch_min_bytes: 1,
            fetch_max_wait_ms: 500,
            from_latest: false,
            session_timeout_ms: 45_000,
            heartbeat_interval: Duration::from_secs(3),
            client_id: "ringlog-perf-consumer".to_owned(),
            given: given.clone(),
        };
        let mut warnings = Vec::new();
        for (key, value) in &given {
            match key.as_str() {
                "bootstrap.servers" => props.bootstrap_servers = Some(value.clone()),
                "group.id" => props.group_id = Some(value.clone()),
                "fetch.max.bytes" => props.fetch_max_bytes = non_negative_i32(key, value)?,
                "max.partition.fetch.bytes" => {
                    props.max_partition_fetch_bytes = non_negative_i32(key, value)?;
                }
                "fetch.min.bytes" => props.fetch_min_bytes = non_negative_i32(key, value)?,
                "fetch.max.wait.ms" => props.fetch_max_wait_ms = non_negative_i32(key, value)?,
                "auto.offset.reset" => {
                    props.from_latest = match value.as_str() {
                        "earliest" => false,
                        "latest" => true,
                        _ => {
                            return Err(format!(
                                "auto.offset.reset={value}: expected earliest or latest"
                            ))
                        }
                    }
                }
                "session.timeout.ms" => props.session_timeout_ms = non_negative_i32(key, value)?,
                "heartbeat.interval.ms" => {
                    props.heartbeat_interval = Duration::from_millis(number(key, value)?);
                }
                "client.id" => props.client_id = value.clone(),
                known if CONSUMER_IGNORED_KEYS.contains(&known) => {}
                unknown => warnings.push(unused_key_warning("consumer", unknown, value)),
            }
        }
        // Kafka's consumer refuses this too: the session would expire between heartbeats.
        if props.heartbeat_interval.as_millis() >= props.session_timeout_ms as u128 {
            return Err(format!(
                "heartbeat.interval.ms ({}) must be lower than session.timeout.ms ({})",
                props.heartbeat_interval.as_millis(),
                props.session_timeout_ms
            ));
        }
        Ok((props, warnings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(pairs: &[&str]) -> Result<Vec<(String, String)>, String> {
        split_pairs(&pairs.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>())
    }

    fn parse(pairs: &[&str]) -> Result<(ProducerProps, Vec<String>), String> {
        ProducerProps::parse(&entries(pairs)?)
    }

    #[test]
    fn kafka_defaults_and_overrides() {
        let (props, warnings) = parse(&[]).expect("defaults");
        assert!(warnings.is_empty());
        assert_eq!(
            (props.acks, props.batch_size, props.idempotence),
            (-1, 16_384, true)
        );
        let (props, warnings) = parse(&[
            "acks=1",
            "linger.ms=0",
            "batch.size=1048576",
            "compression.type=lz4",
            "bootstrap.servers=h:1",
            "buffer.memory=1",
            "key.serializer=x",
        ])
        .expect("parse");
        assert_eq!(props.acks, 1);
        assert!(!props.idempotence, "acks=1 turns implicit idempotence off");
        assert_eq!(props.linger, Duration::ZERO);
        assert_eq!(props.compression, Compression::Lz4);
        assert_eq!(props.bootstrap_servers.as_deref(), Some("h:1"));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("buffer.memory"));
    }

    #[test]
    fn bad_values_and_conflicts_are_errors() {
        assert!(parse(&["acks=2"]).is_err());
        assert!(parse(&["linger.ms=soon"]).is_err());
        assert!(parse(&["novalue"]).is_err());
        assert!(parse(&["enable.idempotence=true", "acks=1"]).is_err());
        assert!(parse(&[
            "enable.idempotence=true",
            "max.in.flight.requests.per.connection=6"
        ])
        .is_err());
    }

    fn consumer(pairs: &[&str]) -> Result<(ConsumerProps, Vec<String>), String> {
        ConsumerProps::parse(&entries(pairs)?)
    }

    #[test]
    fn consumer_defaults_overrides_and_refusals() {
        let (props, warnings) = consumer(&[]).expect("defaults");
        assert!(warnings.is_empty());
        assert_eq!(
            (
                props.fetch_max_bytes,
                props.max_partition_fetch_bytes,
                props.fetch_max_wait_ms,
                props.from_latest,
                props.session_timeout_ms
            ),
            (52_428_800, 1_048_576, 500, false, 45_000)
        );
        let (props, warnings) = consumer(&[
            "group.id=g",
            "fetch.min.bytes=1024",
            "auto.offset.reset=latest",
            "heartbeat.interval.ms=1000",
            "enable.auto.commit=false",
            "value.deserializer=x",
            "group.id=later",
        ])
        .expect("parse");
        assert_eq!(
            props.group_id.as_deref(),
            Some("later"),
            "later entries win"
        );
        assert_eq!(props.fetch_min_bytes, 1024);
        assert!(props.from_latest);
        assert_eq!(props.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("consumer property enable.auto.commit=false"));
        assert!(consumer(&["auto.offset.reset=none"]).is_err());
        assert!(consumer(&["fetch.max.bytes=-1"]).is_err());
        assert!(consumer(&["fetch.max.bytes=4294967295"]).is_err());
        assert!(consumer(&["session.timeout.ms=3000", "heartbeat.interval.ms=3000"]).is_err());
    }

    #[test]
    fn properties_files_read_like_java() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("producer.properties");
        std::fs::write(&path, "# comment\nacks = 1\n\n! other\nclient.id: me\n").expect("write");
        assert_eq!(
            read_properties_file(&path).expect("read"),
            vec![
                ("acks".to_owned(), "1".to_owned()),
                ("client.id".to_owned(), "me".to_owned())
            ]
        );
    }
}
