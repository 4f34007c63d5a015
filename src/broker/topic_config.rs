//! Topic-level settings by their Kafka names: which exist, their defaults, and how a set of
//! overrides becomes the engine's `LogConfig`.
//!
//! A topic stores only its overrides (as Kafka does); the effective config is the broker
//! defaults with the overrides applied, so a changed broker default reaches every topic that
//! did not set it.

use std::collections::BTreeMap;

use ringlog_engine::batch::TimestampType;
use ringlog_engine::LogConfig;
use thiserror::Error;

/// Kafka's DescribeConfigs `config_type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    List = 7,
}

/// A topic config this broker knows.
#[derive(Debug, Clone, Copy)]
pub struct TopicConfigKey {
    pub name: &'static str,
    pub kind: ConfigType,
    pub doc: &'static str,
}

/// Every topic config accepted by CreateTopics, AlterConfigs and IncrementalAlterConfigs and
/// listed by DescribeConfigs. Others are refused with INVALID_CONFIG rather than stored and
/// ignored.
pub const TOPIC_CONFIGS: &[TopicConfigKey] = &[
    key("cleanup.policy", ConfigType::List, "Only `delete` (retention) is supported; compaction is not."),
    key("compression.type", ConfigType::String, "Only `producer`: batches are stored as the producer compressed them."),
    key("flush.messages", ConfigType::Long, "fdatasync once this many messages are unsynced; 1 makes every append wait for a (shared) fdatasync."),
    key("flush.ms", ConfigType::Long, "fdatasync when the oldest unsynced append is this old."),
    key("index.interval.bytes", ConfigType::Int, "Bytes between entries of the sparse offset index."),
    key("max.message.bytes", ConfigType::Int, "The largest record batch accepted."),
    key("message.timestamp.type", ConfigType::String, "CreateTime or LogAppendTime."),
    key("min.insync.replicas", ConfigType::Int, "Replicas that must have a write for acks=all (one node: only 1 is satisfiable)."),
    key("preallocate", ConfigType::Boolean, "Reserve a segment's blocks ahead of its appends."),
    key("retention.bytes", ConfigType::Long, "Delete old segments while the partition is larger than this; -1 keeps all."),
    key("retention.ms", ConfigType::Long, "Delete segments whose newest record is older than this; -1 keeps all."),
    key("segment.bytes", ConfigType::Int, "Roll to a new segment before one grows past this."),
    key("segment.index.bytes", ConfigType::Int, "Capacity of each segment's index files."),
    key("segment.ms", ConfigType::Long, "Roll a non-empty segment this long after it was created."),
    key("unclean.leader.election.enable", ConfigType::Boolean, "Let an out-of-sync replica lead when no in-sync replica is live: the partition is available again, and records only the lost in-sync replicas had are lost."),
];

const fn key(name: &'static str, kind: ConfigType, doc: &'static str) -> TopicConfigKey {
    TopicConfigKey { name, kind, doc }
}

pub fn lookup(name: &str) -> Option<&'static TopicConfigKey> {
    TOPIC_CONFIGS.iter().find(|key| key.name == name)
}

/// Why a topic config is refused (Kafka: INVALID_CONFIG).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("unknown topic config {0}")]
    Unknown(String),
    #[error("invalid value {value:?} for {name}: {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: &'static str,
    },
}

/// The value a config has when no topic override is set, as Kafka would print it.
pub fn default_value(defaults: &LogConfig, name: &str) -> String {
    match name {
        "cleanup.policy" => "delete".to_owned(),
        "compression.type" => "producer".to_owned(),
        "flush.messages" => long_or_max(defaults.flush_messages),
        "flush.ms" => defaults.flush_ms.to_string(),
        "index.interval.bytes" => defaults.index_interval_bytes.to_string(),
        "max.message.bytes" => defaults.max_message_bytes.to_string(),
        "message.timestamp.type" => timestamp_type_name(defaults.message_timestamp_type).to_owned(),
        "min.insync.replicas" => "1".to_owned(),
        "preallocate" => defaults.preallocate.to_string(),
        "retention.bytes" => defaults.retention_bytes.to_string(),
        "retention.ms" => defaults.retention_ms.to_string(),
        "segment.bytes" => defaults.segment_bytes.to_string(),
        "segment.index.bytes" => defaults.segment_index_bytes.to_string(),
        "segment.ms" => defaults.segment_ms.to_string(),
        "unclean.leader.election.enable" => "false".to_owned(),
        _ => String::new(),
    }
}

/// Kafka prints "never" as Long.MAX_VALUE.
fn long_or_max(value: u64) -> String {
    i64::try_from(value).unwrap_or(i64::MAX).to_string()
}

fn timestamp_type_name(kind: TimestampType) -> &'static str {
    match kind {
        TimestampType::LogAppendTime => "LogAppendTime",
        _ => "CreateTime",
    }
}

/// The effective log config of a topic: `defaults` with `overrides` applied. Every override
/// must be valid (see [`validate`]).
pub fn log_config(
    defaults: &LogConfig,
    overrides: &BTreeMap<String, String>,
) -> Result<LogConfig, ConfigError> {
    let mut config = defaults.clone();
    for (name, value) in overrides {
        apply(&mut config, name, value)?;
    }
    Ok(config)
}

/// Checks one override without applying it anywhere.
pub fn validate(name: &str, value: &str) -> Result<(), ConfigError> {
    apply(&mut LogConfig::default(), name, value)
}

fn apply(config: &mut LogConfig, name: &str, value: &str) -> Result<(), ConfigError> {
    let invalid = |reason| ConfigError::Invalid {
        name: name.to_owned(),
        value: value.to_owned(),
        reason,
    };
    let long = || {
        value
            .trim()
            .parse::<i64>()
            .map_err(|_| invalid("not a number"))
    };
    let at_least = |min: i64| {
        let number = long()?;
        if number < min {
            return Err(invalid("below the minimum"));
        }
        Ok(number)
    };
    let int = |min: i64| {
        let number = at_least(min)?;
        i32::try_from(number).map_err(|_| invalid("does not fit an int"))?;
        Ok(number)
    };
    match name {
        "cleanup.policy" => {
            if value.trim() != "delete" {
                return Err(invalid("only the delete policy is supported"));
            }
        }
        "compression.type" => {
            if value.trim() != "producer" {
                return Err(invalid("only producer is supported (no recompression)"));
            }
        }
        "flush.messages" => config.flush_messages = at_least(1)? as u64,
        "flush.ms" => config.flush_ms = at_least(0)?,
        "index.interval.bytes" => config.index_interval_bytes = int(0)? as u64,
        "max.message.bytes" => config.max_message_bytes = int(0)? as usize,
        "message.timestamp.type" => {
            config.message_timestamp_type = match value.trim() {
                "CreateTime" => TimestampType::CreateTime,
                "LogAppendTime" => TimestampType::LogAppendTime,
                _ => return Err(invalid("must be CreateTime or LogAppendTime")),
            }
        }
        "min.insync.replicas" => {
            int(1)?;
        }
        // Read by the controller when it elects leaders; the log itself does not use it.
        "unclean.leader.election.enable" => {
            if !matches!(value.trim(), "true" | "false") {
                return Err(invalid("must be true or false"));
            }
        }
        "preallocate" => {
            config.preallocate = match value.trim() {
                "true" => true,
                "false" => false,
                _ => return Err(invalid("must be true or false")),
            }
        }
        "retention.bytes" => config.retention_bytes = at_least(-1)?,
        "retention.ms" => config.retention_ms = at_least(-1)?,
        "segment.bytes" => config.segment_bytes = int(14)? as u64,
        "segment.index.bytes" => config.segment_index_bytes = int(4)? as usize,
        "segment.ms" => config.segment_ms = at_least(1)?,
        _ => return Err(ConfigError::Unknown(name.to_owned())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_over_defaults_and_bad_values_are_refused() {
        let defaults = LogConfig::default();
        let overrides = BTreeMap::from([
            ("retention.ms".to_owned(), "1000".to_owned()),
            (
                "message.timestamp.type".to_owned(),
                "LogAppendTime".to_owned(),
            ),
        ]);
        let config = log_config(&defaults, &overrides).expect("valid");
        assert_eq!(config.retention_ms, 1000);
        assert_eq!(config.message_timestamp_type, TimestampType::LogAppendTime);
        assert_eq!(config.segment_bytes, defaults.segment_bytes);
        assert!(validate("retention.ms", "soon").is_err());
        assert!(validate("retention.ms", "-2").is_err());
        assert!(validate("cleanup.policy", "compact").is_err());
        assert!(matches!(
            validate("no.such", "1"),
            Err(ConfigError::Unknown(_))
        ));
        for key in TOPIC_CONFIGS {
            let value = default_value(&defaults, key.name);
            assert!(validate(key.name, &value).is_ok(), "{}={value}", key.name);
        }
    }
}
