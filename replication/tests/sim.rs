//! The replication simulator (see `ringlog_replication::sim`): random seeds and named
//! scenarios.
//!
//! `cargo test -p ringlog-replication --test sim` runs the smoke seeds and the scenarios;
//! `SIM_SEED=N` replays one seed; `SIM_SEEDS=100000 cargo test -p ringlog-replication --release
//! --test sim -- --nocapture` is the long run, and prints the figures.

use std::time::Instant;

use ringlog_replication::sim::{self, SimConfig};

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

#[test]
fn seeds_keep_the_invariants() {
    let started = Instant::now();
    let seeds = seeds();
    let mut totals = sim::SimReport::default();
    let mut failures = Vec::new();
    for &seed in &seeds {
        let mut config = SimConfig::from_seed(seed);
        config.verbose = std::env::var("SIM_VERBOSE").is_ok();
        match sim::run(&config) {
            Ok(report) => {
                totals.events += report.events;
                totals.acked_records += report.acked_records;
                totals.produced_records += report.produced_records;
                totals.faults += report.faults;
                totals.crashes += report.crashes;
                totals.failovers += report.failovers;
                totals.divergence_truncations += report.divergence_truncations;
                totals.duplicate_records += report.duplicate_records;
                totals.consumed_records += report.consumed_records;
                totals.max_truncation = totals.max_truncation.max(report.max_truncation);
            }
            Err(failure) => {
                println!("{failure}");
                failures.push(failure.seed);
            }
        }
    }
    println!(
        "{} seeds in {:.1} s: {} events, {} records produced, {} acknowledged, {} consumed, \
         {} faults ({} crashes), {} failovers, {} divergence truncations, max truncation {} \
         records, {} duplicate records",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        totals.events,
        totals.produced_records,
        totals.acked_records,
        totals.consumed_records,
        totals.faults,
        totals.crashes,
        totals.failovers,
        totals.divergence_truncations,
        totals.max_truncation,
        totals.duplicate_records,
    );
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
}
