//! Runs the built `ringlog-bench mesh` end to end with tiny counts: it must exit 0 within a
//! bounded time and write one JSON row per scenario with the headline keys.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ringlog-bench");
const TIME_LIMIT: Duration = Duration::from_secs(60);
const ROW_KEYS: [&str; 10] = [
    "scenario",
    "spin_us",
    "in_flight",
    "round_trips_per_sec",
    "latency_us_p50",
    "latency_us_p99",
    "latency_us_p999",
    "latency_us_max",
    "cpu_secs",
    "cpu_us_per_round_trip",
];

#[test]
fn mesh_writes_every_scenario_with_its_keys() {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&root).expect("target tmpdir");
    let dir = tempfile::tempdir_in(root).expect("tempdir");
    let json = dir.path().join("mesh.json");
    let mut child = Command::new(BIN)
        .args([
            "mesh",
            "--requests",
            "50",
            "--warmup",
            "5",
            "--gap-us",
            "50",
            "--spin-us",
            "20,200",
            "--in-flight",
            "1,8",
            "--pipelined-ms",
            "20",
            "--output-json",
            json.to_str().expect("utf-8 path"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ringlog-bench");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > TIME_LIMIT {
            child.kill().expect("kill");
            panic!("ringlog-bench mesh still running after {TIME_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("stdout");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    assert!(
        status.success(),
        "mesh failed ({status}):\n{stdout}\n{stderr}"
    );

    let value: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written")).expect("JSON");
    assert_eq!(value["command"], "mesh");
    let rows = value["scenarios"].as_array().expect("scenarios array");
    // Parked closed loop, two spin values, two pipelined depths.
    assert_eq!(rows.len(), 5, "{value:#}");
    for row in rows {
        for key in ROW_KEYS {
            assert!(row.get(key).is_some(), "missing {key} in {row:#}");
        }
        assert!(
            row["round_trips_per_sec"].as_f64().expect("number") > 0.0,
            "{row:#}"
        );
        assert!(
            row["latency_us_p50"].as_f64().expect("number") > 0.0,
            "{row:#}"
        );
    }
    let spins: Vec<_> = rows.iter().map(|r| r["spin_us"].as_u64()).collect();
    assert_eq!(spins, [Some(0), Some(20), Some(200), Some(0), Some(0)]);
    let depths: Vec<_> = rows.iter().map(|r| r["in_flight"].as_u64()).collect();
    assert_eq!(depths, [Some(1), Some(1), Some(1), Some(1), Some(8)]);
    assert_eq!(rows[0]["scenario"], "closed_loop");
    assert_eq!(rows[4]["scenario"], "pipelined");
}
