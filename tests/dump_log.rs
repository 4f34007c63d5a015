//! `ringlog dump-log` against logs written by the engine: listing, records, compressed batches,
//! and the damage it must point at (bad CRC, rewritten offsets, bad index entries, garbage).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions};
use kafka_protocol::records::{TimestampType, NO_PARTITION_LEADER_EPOCH};
use ringlog_engine::batch::BatchBuilder;
use ringlog_engine::{LogConfig, PartitionLog};

const BATCHES: i64 = 60;
const RECORDS_PER_BATCH: i64 = 3;

/// A fresh directory on the target's filesystem (O_DIRECT needs ext4/xfs, not tmpfs).
fn test_dir(name: &str) -> tempfile::TempDir {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&root).expect("target tmpdir");
    tempfile::Builder::new()
        .prefix(name)
        .tempdir_in(root)
        .expect("tempdir")
}

/// Small segments and a dense index, so a few KiB of data make several of each.
fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 300,
        ..LogConfig::default()
    }
}

/// Appends `batches` to a new log in `dir` on a glommio executor and closes it cleanly.
/// Returns each batch's (base offset, last offset).
fn write_log(dir: &Path, batches: Vec<Bytes>) -> Vec<(i64, i64)> {
    let dir = dir.to_path_buf();
    glommio::LocalExecutorBuilder::default()
        .io_memory(2 << 20)
        .spawn(move || async move {
            let (log, _) = PartitionLog::open(&dir, small_segments())
                .await
                .expect("open");
            let mut offsets = Vec::new();
            for batch in batches {
                let info = log.append(batch).await.expect("append");
                offsets.push((info.base_offset, info.last_offset));
            }
            log.close().await.expect("close");
            offsets
        })
        .expect("executor starts")
        .join()
        .expect("executor finishes")
}

fn key(batch: i64, record: i64) -> String {
    format!("key-{batch}-{record}")
}

fn value(batch: i64, record: i64) -> String {
    format!("value-{batch}-{record}-{}", "x".repeat(30))
}

fn plain_batch(batch: i64) -> Bytes {
    let base_timestamp = 1_000 + batch * 10;
    let mut builder = BatchBuilder::new(base_timestamp);
    for record in 0..RECORDS_PER_BATCH {
        builder = builder.record(
            base_timestamp + record,
            Some(key(batch, record).as_bytes()),
            Some(value(batch, record).as_bytes()),
        );
    }
    Bytes::from(builder.build())
}

/// A log of `BATCHES` uncompressed batches over several segments.
fn plain_log(name: &str) -> (tempfile::TempDir, Vec<(i64, i64)>) {
    let dir = test_dir(name);
    let offsets = write_log(dir.path(), (0..BATCHES).map(plain_batch).collect());
    (dir, offsets)
}

/// The segment files of `dir` with `extension`, in offset order.
fn files(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == extension))
        .collect();
    found.sort();
    found
}

fn dump(args: &[&Path], print_data_log: bool) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringlog"));
    command.arg("dump-log").args(args);
    if print_data_log {
        command.arg("--print-data-log");
    }
    command.output().expect("run ringlog")
}

/// stdout of a run that must succeed.
fn dump_ok(args: &[&Path], print_data_log: bool) -> String {
    let output = dump(args, print_data_log);
    let stdout = String::from_utf8(output.stdout).expect("utf-8 stdout");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "failed: {stderr}\n{stdout}");
    stdout
}

/// The `name: value` pairs of an output line, before any ` <- ` flag.
fn fields(line: &str) -> HashMap<&str, &str> {
    let body = line.split(" <- ").next().unwrap_or_default();
    let tokens: Vec<&str> = body.split_whitespace().collect();
    tokens
        .windows(2)
        .filter_map(|pair| Some((pair[0].strip_suffix(':')?, pair[1])))
        .collect()
}

fn num(line: &str, name: &str) -> i64 {
    fields(line)
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number in {line}"))
}

fn batch_lines(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|line| line.starts_with("baseOffset: "))
        .collect()
}

fn record_lines(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|line| line.starts_with("| offset: "))
        .collect()
}

/// Flips one byte of a file in place.
fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[at] ^= 0xff;
    std::fs::write(path, bytes).expect("write");
}

fn append_bytes(path: &Path, extra: &[u8]) -> usize {
    let mut bytes = std::fs::read(path).expect("read");
    let end = bytes.len();
    bytes.extend_from_slice(extra);
    std::fs::write(path, bytes).expect("write");
    end
}

#[test]
fn lists_every_batch_of_every_segment_with_clean_indexes() {
    let (dir, offsets) = plain_log("dump-list");
    let logs = files(dir.path(), "log");
    assert!(logs.len() >= 3, "several segments: {logs:?}");
    let indexes = files(dir.path(), "index");
    let time_indexes = files(dir.path(), "timeindex");
    let mut args: Vec<&Path> = logs.iter().map(PathBuf::as_path).collect();
    args.extend(indexes.iter().map(PathBuf::as_path));
    args.extend(time_indexes.iter().map(PathBuf::as_path));
    let output = dump_ok(&args, false);

    for path in &args {
        assert!(output.contains(&format!("Dumping {}", path.display())));
    }
    let lines = batch_lines(&output);
    assert_eq!(lines.len(), offsets.len(), "{output}");
    let mut next_position = 0;
    for (line, &(base, last)) in lines.iter().zip(&offsets) {
        assert_eq!(num(line, "baseOffset"), base, "{line}");
        assert_eq!(num(line, "lastOffset"), last, "{line}");
        assert_eq!(num(line, "count"), RECORDS_PER_BATCH, "{line}");
        assert_eq!(num(line, "baseSequence"), -1, "{line}");
        assert_eq!(num(line, "lastSequence"), -1, "{line}");
        assert_eq!(fields(line)["isvalid"], "true", "{line}");
        assert_eq!(fields(line)["compresscodec"], "none", "{line}");
        assert_eq!(num(line, "CreateTime"), 1_000 + base / 3 * 10 + 2, "{line}");
        // Positions restart at 0 in each segment and are otherwise contiguous.
        let position = num(line, "position");
        assert!(position == 0 || position == next_position, "{line}");
        next_position = position + num(line, "size");
    }
    let index_entries = output.lines().filter(|l| l.starts_with("offset: ")).count();
    let time_entries = output
        .lines()
        .filter(|l| l.starts_with("timestamp: "))
        .count();
    assert!(
        index_entries >= logs.len(),
        "index entries listed: {output}"
    );
    assert!(
        time_entries >= logs.len(),
        "time index entries listed: {output}"
    );
    assert!(!output.contains(" <- "), "nothing flagged: {output}");
    assert!(!output.contains("Not a batch"), "{output}");
}

#[test]
fn print_data_log_shows_every_record() {
    let (dir, _) = plain_log("dump-records");
    let logs = files(dir.path(), "log");
    let args: Vec<&Path> = logs.iter().map(PathBuf::as_path).collect();
    let output = dump_ok(&args, true);
    let records = record_lines(&output);
    assert_eq!(
        records.len() as i64,
        BATCHES * RECORDS_PER_BATCH,
        "{output}"
    );
    for (offset, line) in (0..).zip(&records) {
        let (batch, record) = (offset / RECORDS_PER_BATCH, offset % RECORDS_PER_BATCH);
        assert_eq!(num(line, "offset"), offset, "{line}");
        assert_eq!(
            num(line, "CreateTime"),
            1_000 + batch * 10 + record,
            "{line}"
        );
        assert_eq!(num(line, "sequence"), -1, "{line}");
        assert_eq!(fields(line)["headerKeys"], "[]", "{line}");
        assert_eq!(fields(line)["key"], key(batch, record), "{line}");
        assert_eq!(fields(line)["payload"], value(batch, record), "{line}");
        assert_eq!(num(line, "keySize"), key(batch, record).len() as i64);
        assert_eq!(num(line, "valueSize"), value(batch, record).len() as i64);
    }
    // Records follow their batch line.
    let first_lines: Vec<&str> = output.lines().skip(2).take(4).collect();
    assert!(first_lines[0].starts_with("baseOffset: 0 "), "{output}");
    assert!(first_lines[1..].iter().all(|l| l.starts_with("| offset: ")));
}

#[test]
fn flipped_body_byte_marks_that_batch_invalid_and_the_walk_continues() {
    let (dir, _) = plain_log("dump-crc");
    let log = files(dir.path(), "log").remove(0);
    let before = dump_ok(&[&log], false);
    let lines = batch_lines(&before);
    assert!(lines.len() >= 4);
    let victim = num(lines[1], "position") as usize;
    flip_byte(&log, victim + 70);

    let after = dump_ok(&[&log], true);
    let lines = batch_lines(&after);
    assert_eq!(lines.len(), batch_lines(&before).len(), "{after}");
    for (i, line) in lines.iter().enumerate() {
        let valid = if i == 1 { "false" } else { "true" };
        assert_eq!(fields(line)["isvalid"], valid, "{line}");
    }
    assert!(!after.contains(" <- "), "offsets still contiguous: {after}");
    let not_decoded: Vec<&str> = after
        .lines()
        .filter(|l| l.starts_with("| records not decoded: "))
        .collect();
    assert_eq!(not_decoded.len(), 1, "{after}");
    assert!(not_decoded[0].contains("Cyclic redundancy check failed"));
}

#[test]
fn rewritten_base_offset_is_flagged_as_a_gap() {
    let (dir, _) = plain_log("dump-gap");
    let log = files(dir.path(), "log").remove(0);
    let lines_before = batch_lines(&dump_ok(&[&log], false))
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>();
    let position = num(&lines_before[2], "position") as usize;
    let mut bytes = std::fs::read(&log).expect("read");
    // The base offset is outside the CRC: the batch stays valid, only the sequence breaks.
    bytes[position..position + 8].copy_from_slice(&1_000i64.to_be_bytes());
    std::fs::write(&log, bytes).expect("write");

    let output = dump_ok(&[&log], false);
    let lines = batch_lines(&output);
    assert!(
        lines[2].ends_with(" <- offset gap: expected base offset 6, found 1000"),
        "{}",
        lines[2]
    );
    assert_eq!(fields(lines[2])["isvalid"], "true");
    assert!(
        lines[3].contains(" <- offset gap: expected base offset 1003, found 9"),
        "{}",
        lines[3]
    );
    let flagged = lines.iter().filter(|l| l.contains(" <- ")).count();
    assert_eq!(flagged, 2, "{output}");
}

#[test]
fn corrupt_index_entries_are_flagged() {
    let (dir, _) = plain_log("dump-index");
    let index = files(dir.path(), "index").remove(0);
    let time_index = files(dir.path(), "timeindex").remove(0);
    let clean = dump_ok(&[&index, &time_index], false);
    let entries: Vec<&str> = clean
        .lines()
        .filter(|l| l.starts_with("offset: "))
        .collect();
    assert!(entries.len() >= 3, "{clean}");
    assert!(!clean.contains(" <- "), "{clean}");

    let mut bytes = std::fs::read(&index).expect("read");
    // Entry 0: relative offset + 1. Entry 1: position + 1.
    bytes[3] = bytes[3].wrapping_add(1);
    bytes[15] = bytes[15].wrapping_add(1);
    std::fs::write(&index, bytes).expect("write");
    let mut bytes = std::fs::read(&time_index).expect("read");
    // Entry 0's relative offset (bytes 8..12) + 1: batches start at multiples of 3.
    bytes[11] = bytes[11].wrapping_add(1);
    std::fs::write(&time_index, bytes).expect("write");

    let output = dump_ok(&[&index, &time_index], false);
    let entries: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("offset: "))
        .collect();
    let base = num(entries[0], "offset") - 1;
    assert!(
        entries[0].ends_with(&format!(
            " <- offset mismatch: batch at that position has base offset {base}"
        )),
        "{}",
        entries[0]
    );
    assert!(
        entries[1].ends_with(" <- not a batch boundary"),
        "{}",
        entries[1]
    );
    assert!(entries[2..].iter().all(|l| !l.contains(" <- ")), "{output}");
    let time_entries: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("timestamp: "))
        .collect();
    assert!(
        time_entries[0].ends_with(" <- not a batch base offset"),
        "{}",
        time_entries[0]
    );
    assert!(time_entries[1..].iter().all(|l| !l.contains(" <- ")));
}

#[test]
fn zeroed_index_tail_and_missing_sibling_log_are_reported() {
    let (dir, _) = plain_log("dump-index-tail");
    let index = files(dir.path(), "index").remove(0);
    let entries = std::fs::read(&index).expect("read").len() / 8;
    append_bytes(&index, &[0; 8 * 100 + 3]);
    let output = dump_ok(&[&index], false);
    assert_eq!(
        output.lines().filter(|l| l.starts_with("offset: ")).count(),
        entries
    );
    assert!(
        output.contains("100 unused entries (all zeros)"),
        "{output}"
    );
    assert!(output.contains("3 trailing bytes"), "{output}");

    let log = index.with_extension("log");
    std::fs::remove_file(&log).expect("remove log");
    let output = dump_ok(&[&index], false);
    assert!(
        output.contains(&format!("Sibling log {} not found", log.display())),
        "{output}"
    );
    assert_eq!(
        output.lines().filter(|l| l.starts_with("offset: ")).count(),
        entries
    );
}

#[test]
fn garbage_and_zero_fill_after_the_data_are_reported_with_their_position() {
    let (dir, _) = plain_log("dump-tail");
    let logs = files(dir.path(), "log");
    let garbage = b"GARBAGE GARBAGE GARBAGE GARBAGE GARBAGE GARBAGE GARBAGE GARBAGE GARBAGE!";
    let batches_in_first = batch_lines(&dump_ok(&[&logs[0]], false)).len();
    let garbage_at = append_bytes(&logs[0], garbage);
    let zeros_at = append_bytes(&logs[1], &[0; 1000]);

    let output = dump_ok(&[&logs[0]], false);
    assert_eq!(batch_lines(&output).len(), batches_in_first);
    let last = output.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "Not a batch at position {garbage_at}: invalid batch: "
        )),
        "{output}"
    );
    assert!(
        last.ends_with(&format!("; {} bytes remain unread", garbage.len())),
        "{last}"
    );

    let output = dump_ok(&[&logs[1]], false);
    let last = output.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "Zero-filled tail at position {zeros_at}: 1000 bytes"
        )),
        "{output}"
    );
}

/// One batch of `count` records compressed with `compression`, from an idempotent producer
/// (id 7, sequences from 0).
fn compressed_batch(compression: Compression, tag: &str, count: i64) -> Bytes {
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            producer_id: 7,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: i as i32,
            timestamp: 5_000 + i,
            key: Some(Bytes::from(format!("{tag}-key-{i}"))),
            value: Some(Bytes::from(format!("{tag}-value-{i}"))),
            headers: IndexMap::from([(StrBytes::from_static_str("h1"), None)]),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression,
    };
    RecordBatchEncoder::encode(&mut buf, records.iter(), &options).expect("encode");
    buf.freeze()
}

#[test]
fn compressed_batches_are_listed_and_their_records_printed() {
    let dir = test_dir("dump-compressed");
    let codecs = [
        (Compression::Gzip, "gzip"),
        (Compression::Snappy, "snappy"),
        (Compression::Lz4, "lz4"),
        (Compression::Zstd, "zstd"),
    ];
    let batches = codecs
        .iter()
        .map(|&(codec, name)| compressed_batch(codec, name, 4))
        .collect();
    write_log(dir.path(), batches);
    let logs = files(dir.path(), "log");
    let args: Vec<&Path> = logs.iter().map(PathBuf::as_path).collect();
    let output = dump_ok(&args, true);

    let lines = batch_lines(&output);
    assert_eq!(lines.len(), codecs.len(), "{output}");
    for (line, (_, name)) in lines.iter().zip(&codecs) {
        assert_eq!(fields(line)["compresscodec"], *name, "{line}");
        assert_eq!(fields(line)["isvalid"], "true", "{line}");
        assert_eq!(num(line, "count"), 4, "{line}");
        assert_eq!(num(line, "baseSequence"), 0, "{line}");
        assert_eq!(num(line, "lastSequence"), 3, "{line}");
        assert_eq!(num(line, "producerId"), 7, "{line}");
    }
    let records = record_lines(&output);
    assert_eq!(records.len(), codecs.len() * 4, "{output}");
    for (offset, line) in (0..).zip(&records) {
        let (name, i) = (codecs[offset as usize / 4].1, offset % 4);
        assert_eq!(num(line, "offset"), offset, "{line}");
        assert_eq!(num(line, "sequence"), i, "{line}");
        assert_eq!(num(line, "CreateTime"), 5_000 + i, "{line}");
        assert_eq!(fields(line)["headerKeys"], "[h1]", "{line}");
        assert_eq!(fields(line)["key"], format!("{name}-key-{i}"), "{line}");
        assert_eq!(
            fields(line)["payload"],
            format!("{name}-value-{i}"),
            "{line}"
        );
    }
}

#[test]
fn non_segment_file_fails_with_a_message_after_dumping_the_others() {
    let (dir, offsets) = plain_log("dump-bad-arg");
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "not a segment").expect("write");
    let missing = dir.path().join("00000000000000099999.log");
    let logs = files(dir.path(), "log");
    let output = dump(&[&notes, &logs[0], &missing], false);

    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}: not a segment file", notes.display())),
        "{stderr}"
    );
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines = batch_lines(&stdout);
    assert!(!lines.is_empty());
    assert_eq!(num(lines[0], "baseOffset"), offsets[0].0);
}
