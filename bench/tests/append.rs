//! Runs the built `ringlog-bench` binary end to end with small sizes: `append` with and without
//! group commit writes a JSON result with the headline figures, and `recover` after
//! `append --no-close` reports an unclean open without corruption, then a clean one.
//! (The size parser's and workload's unit tests live beside them in `src/`.)

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{read_json, test_dir};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ringlog-bench");
const HEADLINE_KEYS: [&str; 6] = [
    "mb_per_sec",
    "appends_per_sec",
    "latency_us_p50",
    "latency_us_p99",
    "latency_us_p999",
    "latency_us_max",
];

fn run(args: &[&str]) -> Output {
    let output = Command::new(BIN)
        .args(args)
        .output()
        .expect("run ringlog-bench");
    assert!(
        output.status.success(),
        "ringlog-bench {args:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn append(dir: &Path, json: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "append",
        "--dir",
        dir.to_str().expect("utf-8 path"),
        "--total-bytes",
        "8MiB",
        "--batch-bytes",
        "16KiB",
        "--appenders",
        "4",
        "--output-json",
        json.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    run(&args);
    read_json(json)
}

fn assert_headline_figures(result: &Value) {
    for key in HEADLINE_KEYS {
        let value = result[key].as_f64().unwrap_or(-1.0);
        assert!(value > 0.0, "{key} = {} in {result}", result[key]);
    }
    assert!(result["git_sha"].is_string());
    assert!(result["kernel"].is_string());
    assert!(result["cpu_model"].is_string());
    assert!(result["cores"].as_u64().is_some_and(|n| n > 0));
}

#[test]
fn append_without_fsync_reports_figures_and_cleans_up() {
    let dir = test_dir("append-never");
    let json = dir.path().join("result.json");
    let result = append(dir.path(), &json, &[]);
    assert_headline_figures(&result);
    assert_eq!(result["fsync"], "never");
    assert_eq!(result["batch_bytes"], 16384);
    assert_eq!(result["total_bytes"], 8 << 20);
    assert_eq!(result["bytes_appended"], 8 << 20);
    assert_eq!(result["appenders"], 4);
    assert_eq!(result["segment_bytes"], 1u64 << 30);
    assert!(
        !dir.path().join("partition-0").exists(),
        "data removed without --keep"
    );
}

#[test]
fn append_with_group_commit_reports_figures() {
    let dir = test_dir("append-group");
    let json = dir.path().join("result.json");
    let result = append(dir.path(), &json, &["--fsync", "group", "--keep"]);
    assert_headline_figures(&result);
    assert_eq!(result["fsync"], "group");
    assert!(dir.path().join("partition-0").exists(), "--keep keeps data");
}

#[test]
fn recover_after_no_close_is_unclean_without_corruption() {
    let dir = test_dir("recover");
    let dir_arg = dir.path().to_str().expect("utf-8 path");
    let json = dir.path().join("append.json");
    // Small segments so recovery has sealed segments to trust and an active one to scan.
    append(
        dir.path(),
        &json,
        &["--no-close", "--segment-bytes", "2MiB"],
    );
    let recovered = dir.path().join("recover.json");
    let recovered_arg = recovered.to_str().expect("utf-8 path");
    run(&["recover", "--dir", dir_arg, "--output-json", recovered_arg]);
    let report = read_json(&recovered);
    assert_eq!(report["clean_shutdown"], false, "{report}");
    assert!(report["corruption"].is_null(), "{report}");
    assert!(report["scanned_bytes"].as_u64().is_some_and(|n| n > 0));
    assert_eq!(report["log_end_offset"], 512 * 15, "every append recovered");
    assert!(report["segments"].as_u64().is_some_and(|n| n >= 4));

    // `recover` closed it cleanly, so the next open trusts everything.
    run(&["recover", "--dir", dir_arg, "--output-json", recovered_arg]);
    let report = read_json(&recovered);
    assert_eq!(report["clean_shutdown"], true, "{report}");
    assert!(report["corruption"].is_null(), "{report}");
}

#[test]
fn recover_refuses_a_missing_partition() {
    let dir = test_dir("recover-missing");
    let output = Command::new(BIN)
        .args(["recover", "--dir", dir.path().to_str().expect("utf-8 path")])
        .output()
        .expect("run ringlog-bench");
    assert!(!output.status.success());
    assert!(!dir.path().join("partition-0").exists(), "nothing created");
}

#[test]
fn bad_sizes_are_refused_with_a_message() {
    for bad in ["4G", "1.5MiB", "lots"] {
        let output = Command::new(BIN)
            .args(["append", "--total-bytes", bad])
            .output()
            .expect("run ringlog-bench");
        assert!(!output.status.success(), "{bad} accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--total-bytes"), "{bad}: {stderr}");
    }
}
