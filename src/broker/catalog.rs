//! The topic catalog: every topic's id, partition placement (which shard owns each partition)
//! and config overrides, persisted as `topics.json` in the data directory.
//!
//! Shard 0 is the controller: it alone changes the catalog, writes the file (to a temporary
//! name, fsynced, renamed over the old one, directory fsynced) and only then tells every shard
//! to apply the change, so what a client was told exists survives a crash. Each shard keeps its
//! own copy for lookups, with no locks.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// File name of the catalog in the data directory.
pub const CATALOG_FILE: &str = "topics.json";
/// Kafka's limit on topic name length.
const MAX_TOPIC_NAME_CHARS: usize = 249;

/// One topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topic {
    /// The topic id (Metadata v10+, Fetch v13+), as 32 hex digits.
    pub id: String,
    /// Owning shard of each partition, by partition index.
    pub partitions: Vec<usize>,
    /// Config overrides by Kafka name; everything else is the broker default.
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

impl Topic {
    pub fn uuid(&self) -> uuid::Uuid {
        uuid::Uuid::parse_str(&self.id).unwrap_or_default()
    }

    /// The shard owning `partition`, if the topic has it.
    pub fn owner(&self, partition: i32) -> Option<usize> {
        usize::try_from(partition)
            .ok()
            .and_then(|index| self.partitions.get(index).copied())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub topics: BTreeMap<String, Topic>,
}

#[derive(Debug, Error)]
pub enum CatalogError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a valid topic catalog: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

impl Catalog {
    /// Loads the catalog of `data_dir`; a missing file is an empty catalog (a new broker).
    pub fn load(data_dir: &Path) -> Result<Self, CatalogError> {
        let path = data_dir.join(CATALOG_FILE);
        let mut text = String::new();
        match fs::File::open(&path) {
            Ok(mut file) => {
                file.read_to_string(&mut text)
                    .map_err(|source| CatalogError::Read {
                        path: path.clone(),
                        source,
                    })?
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(CatalogError::Read { path, source }),
        };
        serde_json::from_str(&text).map_err(|source| CatalogError::Parse { path, source })
    }

    /// Writes the catalog durably: temporary file, fsync, rename, fsync of the directory.
    pub fn save(&self, data_dir: &Path) -> Result<(), CatalogError> {
        let write_error = |source| CatalogError::Write {
            path: data_dir.join(CATALOG_FILE),
            source,
        };
        let text = serde_json::to_vec_pretty(self).map_err(|error| write_error(error.into()))?;
        super::durable::replace_file(data_dir, CATALOG_FILE, &text).map_err(write_error)
    }

    /// Moves every partition placed on a shard that no longer exists (the broker was restarted
    /// with fewer cores) to the least loaded shard. Returns whether anything moved.
    pub fn fit_to_shards(&mut self, shards: usize) -> bool {
        let mut load = self.load_per_shard(shards);
        let mut moved = false;
        for topic in self.topics.values_mut() {
            for owner in &mut topic.partitions {
                if *owner >= shards {
                    *owner = least_loaded(&load);
                    load[*owner] += 1;
                    moved = true;
                }
            }
        }
        moved
    }

    /// Partitions owned by each shard.
    pub fn load_per_shard(&self, shards: usize) -> Vec<usize> {
        let mut load = vec![0; shards.max(1)];
        for topic in self.topics.values() {
            for &owner in &topic.partitions {
                if let Some(count) = load.get_mut(owner) {
                    *count += 1;
                }
            }
        }
        load
    }

    /// Places `count` new partitions, each on the shard owning the fewest so far.
    pub fn place(&self, shards: usize, count: usize) -> Vec<usize> {
        let mut load = self.load_per_shard(shards);
        (0..count)
            .map(|_| {
                let shard = least_loaded(&load);
                load[shard] += 1;
                shard
            })
            .collect()
    }

    pub fn by_id(&self, id: uuid::Uuid) -> Option<(&String, &Topic)> {
        self.topics.iter().find(|(_, topic)| topic.uuid() == id)
    }
}

fn least_loaded(load: &[usize]) -> usize {
    load.iter()
        .enumerate()
        .min_by_key(|&(shard, &count)| (count, shard))
        .map_or(0, |(shard, _)| shard)
}

/// Kafka's rule for topic names: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn check_topic_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("topic name is empty");
    }
    if name == "." || name == ".." {
        return Err("topic name cannot be \".\" or \"..\"");
    }
    if name.chars().count() > MAX_TOPIC_NAME_CHARS {
        return Err("topic name is longer than 249 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err("topic name may only contain ASCII alphanumerics, '.', '_' and '-'");
    }
    Ok(())
}

/// The directory of one partition, named as Kafka names it.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: usize) -> PathBuf {
    data_dir.join(format!("{topic}-{partition}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(partitions: Vec<usize>) -> Topic {
        Topic {
            id: uuid::Uuid::nil().simple().to_string(),
            partitions,
            configs: BTreeMap::new(),
        }
    }

    #[test]
    fn placement_balances_and_survives_fewer_shards() {
        let mut catalog = Catalog::default();
        catalog.topics.insert("a".into(), topic(vec![0, 1, 2, 3]));
        assert_eq!(catalog.place(4, 3), vec![0, 1, 2]);
        assert!(catalog.fit_to_shards(2));
        assert_eq!(catalog.load_per_shard(2), vec![2, 2]);
        assert!(!catalog.fit_to_shards(2));
    }

    #[test]
    fn saved_catalog_loads_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(
            Catalog::load(dir.path()).expect("empty"),
            Catalog::default()
        );
        let mut catalog = Catalog::default();
        let mut orders = topic(vec![1, 0]);
        orders.configs.insert("retention.ms".into(), "1000".into());
        catalog.topics.insert("orders".into(), orders);
        catalog.save(dir.path()).expect("save");
        assert_eq!(Catalog::load(dir.path()).expect("load"), catalog);
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(check_topic_name("orders.v2_eu-1").is_ok());
        for bad in ["", ".", "..", "a/b", "spaces no", &"x".repeat(250)] {
            assert!(check_topic_name(bad).is_err(), "{bad}");
        }
    }
}
