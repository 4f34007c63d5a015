//! Small state files the broker replaces whole (the topic catalog, the producer id reservation,
//! each partition's producer state snapshot), written so that a crash leaves either the old
//! file or the new one, never a mix: temporary file, fsync, rename over the old one, fsync of
//! the directory (so the rename itself is durable).
//!
//! The calls block the executor: the files are small and written rarely (a catalog change, a
//! block of producer ids, a checkpoint), so they do not go through the DMA path.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// Replaces `dir/name` with `contents` durably, through `dir/name.tmp`.
pub fn replace_file(dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    let temporary = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&temporary, dir.join(name))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().expect("temp dir");
        replace_file(dir.path(), "state.json", b"first").expect("write");
        replace_file(dir.path(), "state.json", b"second").expect("replace");
        let read = std::fs::read(dir.path().join("state.json")).expect("read");
        assert_eq!(read, b"second");
        assert!(!dir.path().join("state.json.tmp").exists());
    }
}
