//! What the ringlog-bench integration tests share.

// Every test crate compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

/// A fresh directory on the target's filesystem: O_DIRECT needs ext4 or xfs, and /tmp may be
/// tmpfs.
pub fn test_dir(name: &str) -> tempfile::TempDir {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&root).expect("target tmpdir");
    tempfile::Builder::new()
        .prefix(name)
        .tempdir_in(root)
        .expect("tempdir")
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("JSON written");
    serde_json::from_str(&text).expect("valid JSON")
}
