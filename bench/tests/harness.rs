//! `ringlog-bench run` end to end against real `ringlog serve` brokers that the harness starts
//! and stops itself, on free loopback ports with data under CARGO_TARGET_TMPDIR.
//!
//! - With the real ringlog-perf: a tiny workload (3000 records produced and consumed, then
//!   1000 end to end; 2 rounds) against ringlog with 1 core and with 2 cores, interleaved; every process's result is in the JSON, the summary
//!   has both brokers, the HTML report has the plots, `report` re-renders it identically from
//!   the JSON and `compare` pairs the two brokers.
//! - With a stand-in for ringlog-perf (a shell script writing results, failing or hanging on
//!   cue): the harness records a failed process and one that runs past its step's timeout,
//!   carries on, exits non-zero, and still writes the figures of what worked.

mod common;

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{read_json, test_dir};
use serde_json::Value;

const BENCH_BIN: &str = env!("CARGO_BIN_EXE_ringlog-bench");

/// The ringlog binary: RINGLOG_BIN, or the one beside ringlog-bench, built first (it belongs
/// to another package, which cargo does not build for this crate's tests).
fn ringlog_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("RINGLOG_BIN") {
        return PathBuf::from(bin);
    }
    let dir = Path::new(BENCH_BIN).parent().expect("bin dir");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "-p", "ringlog", "--bin", "ringlog"]);
    if dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "building ringlog failed");
    dir.join("ringlog")
}

/// The first of `count` consecutive loopback ports that were all free a moment ago (ringlog
/// with N cores also listens on the N ports after its bootstrap port).
fn free_port_run(count: u16) -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind port 0")
            .port();
        let all_free = (1..count).all(|offset| {
            first
                .checked_add(offset)
                .is_some_and(|port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        });
        if all_free {
            return first;
        }
    }
    panic!("no run of {count} free ports");
}

/// A `[[broker]]` entry for ringlog with `cores` cores, started by the harness.
fn ringlog_broker(name: &str, cores: u16) -> (String, u16) {
    let port = free_port_run(cores + 1);
    let entry = format!(
        "[[broker]]\nname = \"{name}\"\nbootstrap = \"127.0.0.1:{port}\"\n\
         start = \"exec {} serve --cores {cores} --data-dir {{data_dir}} --listen {{bootstrap}}\"\n\
         env = {{ RUST_LOG = \"info\" }}\nready_timeout_s = 30\n",
        ringlog_bin().display()
    );
    (entry, port)
}

fn run_bench(args: &[&str]) -> Output {
    Command::new(BENCH_BIN)
        .args(args)
        .output()
        .expect("run ringlog-bench")
}

/// The (`a`, `b`) string fields of each row.
fn pairs<'a>(rows: &'a [Value], a: &str, b: &str) -> Vec<(&'a str, &'a str)> {
    rows.iter()
        .map(|row| (row[a].as_str().unwrap_or(""), row[b].as_str().unwrap_or("")))
        .collect()
}

/// Stands in for ringlog-perf: by topic, writes a plausible result ("good"), exits 3
/// ("fail") or sleeps past any timeout ("hang").
const FAKE_PERF: &str = r#"#!/bin/sh
mode=$1; out=""; topic=""
while [ $# -gt 0 ]; do
    [ "$1" = "--output-json" ] && out=$2
    [ "$1" = "--topic" ] && topic=$2
    shift
done
case "$topic" in
    fail) echo "cannot produce" >&2; exit 3 ;;
    hang) exec sleep 600 ;;
esac
cat > "$out" <<JSON
{"tool": "ringlog-perf", "version": "0", "mode": "$mode", "settings": {},
 "started_at_unix_ms": $(date +%s)000, "elapsed_s": 1.0, "records": 1000, "bytes": 1024000,
 "records_per_sec": 1000.0, "mb_per_sec": 0.9765625, "errors": 0, "latency": null,
 "timeline": [{"t_s": 1.0, "records": 1000, "bytes": 1024000}]}
JSON
"#;

#[test]
fn failures_are_recorded_and_the_run_goes_on() {
    let dir = test_dir("harness-failures");
    let perf = dir.path().join("fake-perf");
    std::fs::write(&perf, FAKE_PERF).expect("write fake perf");
    std::fs::set_permissions(&perf, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (broker, port) = ringlog_broker("one", 1);
    let workload = format!(
        "name = \"failures\"\n{broker}\n\
         [[topic]]\nname = \"good\"\n[[topic]]\nname = \"fail\"\n[[topic]]\nname = \"hang\"\n\
         [[step]]\nname = \"works\"\n[[step.producer]]\ntopic = \"good\"\nrecords = 1000\n\
         [[step]]\nname = \"half\"\n[[step.producer]]\ntopic = \"fail\"\nrecords = 1000\n\
         [[step.consumer]]\ntopic = \"good\"\nmessages = 1000\n\
         [[step]]\nname = \"stuck\"\ntimeout_s = 2\n\
         [[step.producer]]\ntopic = \"hang\"\nrecords = 1000\n"
    );
    let workload_path = dir.path().join("failures.toml");
    std::fs::write(&workload_path, workload).expect("write workload");
    let json = dir.path().join("result.json");
    let work_dir = dir.path().join("work");
    let started = Instant::now();
    let output = run_bench(&[
        "run",
        workload_path.to_str().expect("utf-8"),
        "--perf-bin",
        perf.to_str().expect("utf-8"),
        "--work-dir",
        work_dir.to_str().expect("utf-8"),
        "--output-json",
        json.to_str().expect("utf-8"),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a failed run must exit non-zero");
    assert!(stderr.contains("2 failure(s)"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );

    let result = read_json(&json);
    let failures: Vec<&str> = result["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(
        failures[0].contains("step half producer 0: exit status: 3"),
        "{failures:?}"
    );
    assert!(
        failures[1].contains("step stuck producer 0: ran past"),
        "{failures:?}"
    );
    // What worked is there: the first step, and the consumer of the half-failed one.
    let summary = result["summary"].as_array().expect("summary");
    let rows = pairs(summary, "step", "role");
    assert_eq!(rows, vec![("works", "producer"), ("half", "consumer")]);
    assert_eq!(summary[0]["records_per_sec"]["median"], 1000.0);
    let consumer = &result["runs"][0]["steps"][1]["processes"][0];
    assert_eq!(consumer["role"], "consumer");
    let group = consumer["group"].as_str().expect("group");
    assert!(group.starts_with("ringlog-bench-") && group.ends_with("-r1-half-g0"));
    // The broker was stopped and its data removed; its log says it shut down cleanly.
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "broker still up"
    );
    assert!(!work_dir.join("data").join("one").exists());
    let log = std::fs::read_to_string(work_dir.join("logs/r1/one/broker.log")).expect("log");
    assert!(log.contains("stopped"), "{log}");
}

/// ringlog-perf, built with this crate.
const PERF_BIN: &str = env!("CARGO_BIN_EXE_ringlog-perf");

#[test]
fn tiny_workload_against_two_ringlogs() {
    let dir = test_dir("harness-tiny");
    let (one_core, _) = ringlog_broker("ringlog-1core", 1);
    let (two_cores, two_cores_port) = ringlog_broker("ringlog-2cores", 2);
    let workload = format!(
        "name = \"tiny\"\nrounds = 2\n{one_core}\n{two_cores}\n\
         [[topic]]\nname = \"tiny\"\npartitions = 2\n\
         [[step]]\nname = \"produce-consume\"\ntimeout_s = 120\n\
         [[step.producer]]\ntopic = \"tiny\"\nrecords = 3000\nrecord_size = 512\nlinger_ms = 1\n\
         [[step.consumer]]\ntopic = \"tiny\"\ntimeout_ms = 20000\n\
         [[topic]]\nname = \"tiny-e2e\"\n\
         [[step]]\nname = \"latency\"\ntimeout_s = 120\n\
         [[step.end_to_end]]\ntopic = \"tiny-e2e\"\nrecords = 1000\nthroughput = 2000\n"
    );
    let workload_path = dir.path().join("tiny.toml");
    std::fs::write(&workload_path, workload).expect("write workload");
    let json = dir.path().join("tiny.json");
    let html = dir.path().join("tiny.html");
    let output = run_bench(&[
        "run",
        workload_path.to_str().expect("utf-8"),
        "--perf-bin",
        PERF_BIN,
        "--work-dir",
        dir.path().join("work").to_str().expect("utf-8"),
        "--output-json",
        json.to_str().expect("utf-8"),
        "--html",
        html.to_str().expect("utf-8"),
    ]);
    assert!(
        output.status.success(),
        "run failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let result = read_json(&json);
    assert_eq!(result["failures"], serde_json::json!([]));
    assert!(result["machine"]["git_sha"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert!(result["machine"]["cores"].as_u64().is_some_and(|n| n > 0));
    // Interleaved: each round runs both brokers, in the workload's order.
    let order: Vec<(u64, &str)> = result["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|run| {
            (
                run["round"].as_u64().unwrap_or(0),
                run["broker"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        order,
        vec![
            (1, "ringlog-1core"),
            (1, "ringlog-2cores"),
            (2, "ringlog-1core"),
            (2, "ringlog-2cores")
        ]
    );
    for run in result["runs"].as_array().expect("runs") {
        let processes = run["steps"][0]["processes"].as_array().expect("processes");
        assert_eq!(processes.len(), 2, "{run}");
        for process in processes {
            let output = &process["output"];
            assert_eq!(output["tool"], "ringlog-perf", "{process}");
            assert_eq!(output["records"], 3000, "{process}");
            assert_eq!(output["bytes"], 3000 * 512, "{process}");
            assert!(
                output["mb_per_sec"].as_f64().is_some_and(|v| v > 0.0),
                "{process}"
            );
            assert!(!output["timeline"].as_array().expect("timeline").is_empty());
        }
        let latency = &processes
            .iter()
            .find(|p| p["role"] == "producer")
            .expect("producer")["output"]["latency"];
        assert!(
            latency["p99"].as_f64().is_some_and(|v| v > 0.0),
            "{latency}"
        );
        assert!(latency["distribution"]
            .as_array()
            .is_some_and(|d| d.len() > 1));
        // The step's latency comes from the producer's HdrHistogram log.
        let producers = &run["steps"][0]["totals"][0];
        assert_eq!(producers["role"], "producer");
        assert_eq!(producers["latency_exact"], true, "{producers}");
    }
    let summary = result["summary"].as_array().expect("summary");
    let rows = pairs(summary, "broker", "role");
    assert_eq!(
        rows,
        vec![
            ("ringlog-1core", "producer"),
            ("ringlog-1core", "consumer"),
            ("ringlog-1core", "end-to-end"),
            ("ringlog-2cores", "producer"),
            ("ringlog-2cores", "consumer"),
            ("ringlog-2cores", "end-to-end")
        ]
    );
    let end_to_end = &result["runs"][0]["steps"][1]["processes"][0]["output"];
    assert_eq!(end_to_end["mode"], "end-to-end", "{end_to_end}");
    assert_eq!(end_to_end["records"], 1000, "{end_to_end}");
    assert!(end_to_end["latency"]["p99"]
        .as_f64()
        .is_some_and(|v| v > 0.0));
    for row in summary {
        assert_eq!(row["rounds"], 2, "{row}");
        assert!(row["records_per_sec"]["median"]
            .as_f64()
            .is_some_and(|v| v > 0.0));
    }
    // Every broker was stopped.
    assert!(TcpStream::connect(("127.0.0.1", two_cores_port)).is_err());

    let report = std::fs::read_to_string(&html).expect("HTML written");
    assert!(report.contains("ringlog-1core") && report.contains("ringlog-2cores"));
    assert_eq!(report.matches("Throughput over time").count(), 3);
    assert_eq!(report.matches("Latency by percentile").count(), 2);
    assert!(!report.contains("http") && !report.contains("<script"));
    // `report` renders the same page from the JSON alone.
    let again = dir.path().join("again.html");
    let rendered = run_bench(&[
        "report",
        json.to_str().expect("utf-8"),
        "--html",
        again.to_str().expect("utf-8"),
    ]);
    assert!(rendered.status.success());
    assert_eq!(std::fs::read_to_string(&again).expect("again"), report);
    // The two brokers of one run compared.
    let compared = run_bench(&[
        "compare",
        json.to_str().expect("utf-8"),
        json.to_str().expect("utf-8"),
        "--a-broker",
        "ringlog-1core",
        "--b-broker",
        "ringlog-2cores",
    ]);
    let text = String::from_utf8_lossy(&compared.stdout);
    assert!(compared.status.success(), "{text}");
    assert!(
        text.contains("ringlog-2cores vs ringlog-1core") && text.contains("B/A"),
        "{text}"
    );
}
