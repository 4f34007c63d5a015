//! The quorum simulator over many seeds (see `ringlog_cluster::sim`).
//!
//! `cargo test -p ringlog-cluster --test sim` runs a smoke of 40 seeds; `SIM_SEED=N` replays
//! one seed; `SIM_SEEDS=2000 cargo test -p ringlog-cluster --release --test sim --
//! --nocapture` is the long run, and prints the failover and fencing figures.

use std::time::Instant;

use ringlog_cluster::sim::{self, quantile, SimConfig};

const SMOKE_SEEDS: u64 = 40;

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let count = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SMOKE_SEEDS);
    (0..count).collect()
}

fn figures(name: &str, values: &mut [u64]) -> String {
    let p50 = quantile(values, 0.5).map_or("-".into(), |v| v.to_string());
    let p99 = quantile(values, 0.99).map_or("-".into(), |v| v.to_string());
    let max = values.last().map_or("-".into(), |v| v.to_string());
    format!(
        "{name}: n {} p50 {p50} ms p99 {p99} ms max {max} ms",
        values.len()
    )
}

#[test]
fn seeds_keep_the_invariants() {
    let started = Instant::now();
    let seeds = seeds();
    let (mut failover_ms, mut fence_ms) = (Vec::new(), Vec::new());
    let (mut events, mut batches, mut crashes, mut installs) = (0, 0, 0, 0);
    for &seed in &seeds {
        let report = match sim::run(&SimConfig::from_seed(seed)) {
            Ok(report) => report,
            Err(failure) => panic!("{failure}"),
        };
        failover_ms.extend(report.failover_ms);
        fence_ms.extend(report.fence_ms);
        events += report.events;
        batches += report.batches_committed;
        crashes += report.voter_crashes;
        installs += report.snapshots_installed;
    }
    println!(
        "{} seeds in {:.1} s: {events} events, {batches} batches committed, {crashes} voter \
         crashes, {installs} snapshots installed",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "{}",
        figures(
            "leader crash -> next CreateTopics committed",
            &mut failover_ms
        )
    );
    println!(
        "{}",
        figures("broker's last heartbeat -> fence committed", &mut fence_ms)
    );
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 11] {
        let config = SimConfig::from_seed(seed);
        let first = sim::run(&config).map_err(|f| f.to_string());
        let second = sim::run(&config).map_err(|f| f.to_string());
        let (first, second) = (first.expect("runs"), second.expect("runs"));
        assert_eq!(first.trace_hash, second.trace_hash, "seed {seed}");
        assert_eq!(first.events, second.events, "seed {seed}");
    }
}
