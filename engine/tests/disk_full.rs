//! A real full disk: a small ext4 filesystem on a loop device fills up under appends. Every
//! append either succeeds and stays readable, or fails with a disk-full error and is never
//! visible; reads keep working; once retention frees space, appends continue at the right
//! offset; a crash-reopen finds exactly what was acknowledged.
//!
//! Needs root and loop devices (mount -o loop). Where they are missing the test says so and
//! returns; the same failure path is also covered by fault injection in `log.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{batch, run, split_batches, stored_form, test_dir};
use ringlog_engine::{AppendError, LogConfig, PartitionLog};

/// A mounted loop filesystem, unmounted on drop.
struct SmallFs {
    mount_point: PathBuf,
}

impl SmallFs {
    fn mount(dir: &Path, megabytes: u64) -> Option<Self> {
        let image = dir.join("fs.img");
        let mount_point = dir.join("mnt");
        std::fs::create_dir_all(&mount_point).ok()?;
        let file = std::fs::File::create(&image).ok()?;
        file.set_len(megabytes << 20).ok()?;
        let ok = |cmd: &mut Command| cmd.status().map(|s| s.success()).unwrap_or(false);
        if !ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image)) {
            return None;
        }
        if !ok(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount_point))
        {
            return None;
        }
        Some(Self { mount_point })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Lazy: glommio closes dropped files asynchronously, so a descriptor may still be open
        // until the process exits; detach now and let the kernel finish then.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
    }
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 4 << 20,
        segment_index_bytes: 64 << 10,
        retention_bytes: -1,
        ..LogConfig::default()
    }
}

#[test]
fn appends_on_a_full_disk_fail_cleanly_and_resume_after_retention() {
    let dir = test_dir("disk-full-real");
    let Some(fs) = SmallFs::mount(dir.path(), 24) else {
        eprintln!("SKIPPED: cannot mount a loop filesystem here (needs root and loop devices)");
        return;
    };
    let path = fs.mount_point.join("partition");
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, config()).await.expect("open");
        let mut acknowledged = Vec::new();
        let mut failure = None;
        for seed in 0..2_000u64 {
            let b = batch(seed, 16, 4000, seed as i64);
            match log.append(b.clone()).await {
                Ok(info) => acknowledged.push(stored_form(&b, info.base_offset)),
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        match failure {
            Some(AppendError::Io(e)) => assert!(e.is_disk_full(), "{e}"),
            other => panic!("expected a disk-full error, got {other:?}"),
        }
        assert_eq!(log.log_end_offset(), acknowledged.len() as i64 * 16);
        // A smaller append may still fit in what the failed one left; if it does, it lands
        // exactly at the end, and if not it fails the same way and changes nothing.
        let small = batch(9_999, 16, 100, 0);
        match log.append(small.clone()).await {
            Ok(info) => {
                assert_eq!(info.base_offset, acknowledged.len() as i64 * 16);
                acknowledged.push(stored_form(&small, info.base_offset));
            }
            Err(AppendError::Io(e)) => assert!(e.is_disk_full(), "{e}"),
            Err(other) => panic!("unexpected {other}"),
        }
        let end = log.log_end_offset();
        assert_eq!(end, acknowledged.len() as i64 * 16);
        let mut got = Vec::new();
        let mut offset = 0;
        while offset < end {
            let fetched = log
                .read(offset, 1 << 20, None)
                .await
                .expect("reads work when full");
            for (header, bytes) in split_batches(fetched.bytes()) {
                offset = header.next_offset();
                got.push(bytes);
            }
        }
        assert!(
            got == acknowledged,
            "every acknowledged batch, nothing else"
        );

        // Free space by retention, then appends continue where the log ends.
        let mut relaxed = config();
        relaxed.retention_bytes = 6 << 20;
        log.set_config(relaxed);
        assert!(!log.enforce_retention().await.expect("retention").is_empty());
        let info = log
            .append(batch(10_000, 16, 4000, 0))
            .await
            .expect("space again");
        assert_eq!(info.base_offset, end);
        let start = log.log_start_offset();
        drop(log);

        let (log, report) = PartitionLog::open(&path, config()).await.expect("reopen");
        assert_eq!(report.corruption, None, "{report:?}");
        assert_eq!(log.log_start_offset(), start);
        assert_eq!(log.log_end_offset(), end + 16);
    });
    drop(fs);
}
