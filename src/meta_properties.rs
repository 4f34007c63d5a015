//! `meta.properties` in the data directory, as Kafka keeps it: the cluster id (generated once,
//! 22 characters of base64url like Kafka's) and the node id this directory belongs to. A data
//! directory started under another node id is refused, so two brokers' data never mix.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

const FILE_NAME: &str = "meta.properties";
const VERSION: &str = "1";

#[derive(Debug, Error)]
pub enum MetaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: line `{line}` is not `key=value`")]
    Malformed { path: PathBuf, line: String },
    #[error("{path} has no {key}")]
    Missing { path: PathBuf, key: &'static str },
    #[error(
        "{path} belongs to node.id {stored}, but this broker is node {configured}: \
         use --node-id {stored} or another --data-dir"
    )]
    NodeIdMismatch {
        path: PathBuf,
        stored: i32,
        configured: i32,
    },
}

/// The identity a data directory carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaProperties {
    pub cluster_id: String,
    pub node_id: i32,
}

impl MetaProperties {
    /// Reads the data directory's identity, creating it on first start.
    pub fn load_or_create(data_dir: &Path, node_id: i32) -> Result<Self, MetaError> {
        let path = data_dir.join(FILE_NAME);
        let io = |source| MetaError::Io {
            path: path.clone(),
            source,
        };
        match fs::read_to_string(&path) {
            Ok(text) => {
                let stored = parse(&path, &text)?;
                if stored.node_id != node_id {
                    return Err(MetaError::NodeIdMismatch {
                        path,
                        stored: stored.node_id,
                        configured: node_id,
                    });
                }
                Ok(stored)
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let created = Self {
                    cluster_id: new_cluster_id().map_err(io)?,
                    node_id,
                };
                created.write(data_dir).map_err(io)?;
                Ok(created)
            }
            Err(error) => Err(io(error)),
        }
    }

    fn write(&self, data_dir: &Path) -> std::io::Result<()> {
        let tmp = data_dir.join(format!("{FILE_NAME}.tmp"));
        let mut file = fs::File::create(&tmp)?;
        write!(
            file,
            "#ringlog broker identity; do not edit\nversion={VERSION}\ncluster.id={}\nnode.id={}\n",
            self.cluster_id, self.node_id
        )?;
        file.sync_all()?;
        fs::rename(&tmp, data_dir.join(FILE_NAME))?;
        fs::File::open(data_dir)?.sync_all()
    }
}

fn parse(path: &Path, text: &str) -> Result<MetaProperties, MetaError> {
    let mut cluster_id = None;
    let mut node_id = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let malformed = || MetaError::Malformed {
            path: path.to_owned(),
            line: line.to_owned(),
        };
        let (key, value) = line.split_once('=').ok_or_else(malformed)?;
        match key.trim() {
            "cluster.id" => cluster_id = Some(value.trim().to_owned()),
            "node.id" => node_id = Some(value.trim().parse().map_err(|_| malformed())?),
            _ => {}
        }
    }
    let missing = |key| MetaError::Missing {
        path: path.to_owned(),
        key,
    };
    Ok(MetaProperties {
        cluster_id: cluster_id.ok_or_else(|| missing("cluster.id"))?,
        node_id: node_id.ok_or_else(|| missing("node.id"))?,
    })
}

/// 16 random bytes as unpadded base64url (22 characters), the shape of Kafka's cluster ids.
fn new_cluster_id() -> std::io::Result<String> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let mut bits: u32 = 0;
    let mut pending = 0;
    let mut out = String::with_capacity(22);
    for byte in bytes {
        bits = (bits << 8) | u32::from(byte);
        pending += 8;
        while pending >= 6 {
            pending -= 6;
            out.push(char::from(ALPHABET[((bits >> pending) & 63) as usize]));
        }
    }
    if pending > 0 {
        out.push(char::from(
            ALPHABET[((bits << (6 - pending)) & 63) as usize],
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reloaded_and_guarded_by_node_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = MetaProperties::load_or_create(dir.path(), 3).expect("create");
        assert_eq!(first.cluster_id.len(), 22);
        assert!(first
            .cluster_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        let again = MetaProperties::load_or_create(dir.path(), 3).expect("reload");
        assert_eq!(again, first);
        assert!(matches!(
            MetaProperties::load_or_create(dir.path(), 4),
            Err(MetaError::NodeIdMismatch { stored: 3, .. })
        ));
        let other = tempfile::tempdir().expect("tempdir");
        let second = MetaProperties::load_or_create(other.path(), 3).expect("create");
        assert_ne!(second.cluster_id, first.cluster_id);
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(FILE_NAME), "cluster.id=abc\nnode.id=x\n").expect("write");
        assert!(matches!(
            MetaProperties::load_or_create(dir.path(), 0),
            Err(MetaError::Malformed { .. })
        ));
        fs::write(dir.path().join(FILE_NAME), "node.id=0\n").expect("write");
        assert!(matches!(
            MetaProperties::load_or_create(dir.path(), 0),
            Err(MetaError::Missing {
                key: "cluster.id",
                ..
            })
        ));
    }
}
