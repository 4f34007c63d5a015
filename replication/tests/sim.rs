//! The replication simulator (see `ringlog_replication::sim`): random seeds and named
//! scenarios.
//!
//! `cargo test -p ringlog-replication --test sim` runs 200 seeds (about 4 s in debug) and the scenarios;
//! `SIM_SEED=N` replays one seed; `SIM_SEEDS=100000 cargo test -p ringlog-replication --release
//! --test sim -- --nocapture` is the long run, and prints the figures.

use std::time::Instant;

use ringlog_replication::sim::{self, Action, SimConfig, SimReport};

const SMOKE_SEEDS: u64 = 200;

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
                totals.elr_elections += report.elr_elections;
                totals.unclean_elr_removals += report.unclean_elr_removals;
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
         {} faults ({} crashes), {} failovers ({} from the ELR; {} replicas out of the ELR by \
         unclean shutdowns), {} divergence truncations, max truncation {} records, {} duplicate \
         records",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        totals.events,
        totals.produced_records,
        totals.acked_records,
        totals.consumed_records,
        totals.faults,
        totals.crashes,
        totals.failovers,
        totals.elr_elections,
        totals.unclean_elr_removals,
        totals.divergence_truncations,
        totals.max_truncation,
        totals.duplicate_records,
    );
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 11] {
        let config = SimConfig::from_seed(seed);
        let first = sim::run(&config).map_err(|f| f.to_string()).expect("runs");
        let second = sim::run(&config).map_err(|f| f.to_string()).expect("runs");
        assert_eq!(first.trace_hash, second.trace_hash, "seed {seed}");
        assert_eq!(first.events, second.events, "seed {seed}");
    }
}

fn scenario(name: &str, chaos_ms: u64, script: Vec<(u64, Action)>) -> Result<SimReport, String> {
    let mut config = SimConfig::scripted(1, chaos_ms, script);
    config.verbose = std::env::var("SIM_VERBOSE").is_ok();
    let result = sim::run(&config).map_err(|failure| failure.to_string());
    println!("{name}: {result:?}");
    result
}

/// KIP-101: the leader appends a tail its followers never fetch, and crashes with the tail on
/// disk; a new leader takes writes; the old leader comes back and must cut its tail where the
/// new leader's epoch begins (by epochs), keeping what both have.
#[test]
fn kip_101_the_old_leader_truncates_its_unreplicated_tail_by_epochs() {
    let script = vec![
        (
            1_000,
            Action::Cut {
                host: 1,
                peers: true,
                controller: false,
                heal_after_ms: 400,
            },
        ),
        (
            1_000,
            Action::Cut {
                host: 2,
                peers: true,
                controller: false,
                heal_after_ms: 400,
            },
        ),
        (
            1_300,
            Action::Crash {
                host: 0,
                wipe: false,
                restart_after_ms: Some(4_000),
            },
        ),
    ];
    let mut config = SimConfig::scripted(1, 9_000, script);
    // Several producers, so the leader appends while the followers are cut off.
    config.producers = 3;
    config.flush_interval_ms = (1, 3);
    config.verbose = std::env::var("SIM_VERBOSE").is_ok();
    let report = sim::run(&config)
        .map_err(|f| f.to_string())
        .expect("keeps the invariants");
    println!("kip_101: {report:?}");
    assert!(report.failovers >= 1, "{report:?}");
    assert!(report.divergence_truncations >= 1, "{report:?}");
    assert!(
        report.max_truncation >= 1,
        "the old leader's tail was cut: {report:?}"
    );
}

/// KIP-279: two quick failovers leave a follower with a tail from an epoch the newest leader
/// never saw; it converges by asking about older epochs.
#[test]
fn kip_279_fast_double_failover() {
    let script = vec![
        (
            1_000,
            Action::Crash {
                host: 0,
                wipe: false,
                restart_after_ms: Some(7_000),
            },
        ),
        // Host 1 leads epoch 1 from about 3 s; host 2 stops fetching, host 1 writes a tail
        // only it has, then crashes with it on disk.
        (3_200, Action::Pause { host: 2, ms: 600 }),
        (
            3_700,
            Action::Crash {
                host: 1,
                wipe: false,
                restart_after_ms: Some(3_000),
            },
        ),
    ];
    let mut config = SimConfig::scripted(2, 12_000, script);
    config.flush_interval_ms = (1, 3);
    config.verbose = std::env::var("SIM_VERBOSE").is_ok();
    let report = sim::run(&config)
        .map_err(|f| f.to_string())
        .expect("keeps the invariants");
    println!("kip_279: {report:?}");
    assert!(report.failovers >= 2, "{report:?}");
    assert!(report.divergence_truncations >= 1, "{report:?}");
}

/// KIP-903: a follower loses its whole disk and restarts while a fetch its old process sent
/// (at the end of the log) is parked at the leader (the long poll). The controller takes the
/// replica out of the ISR (its old process's session expires); the leader must then count
/// neither what the old process had reported nor the parked fetch when it wakes (it arrived
/// before the leader forgot the replica): if it does, the empty replica rejoins the ISR and a
/// single failure of the leader elects it, losing every acknowledged record.
#[test]
fn kip_903_an_empty_replica_is_not_counted_by_a_stale_fetch() {
    let script = vec![
        // Host 1 falls behind and out of the ISR (alive, only cut off from its peers).
        (
            1_000,
            Action::Cut {
                host: 1,
                peers: true,
                controller: false,
                heal_after_ms: 20_000,
            },
        ),
        (4_000, Action::StopProducers),
        // Host 2's next fetch (at the log end) waits at the leader until about 9.2 s.
        (4_200, Action::HoldNextFetch { host: 2, ms: 5_000 }),
        (
            4_300,
            Action::Crash {
                host: 2,
                wipe: true,
                restart_after_ms: Some(100),
            },
        ),
        // Its old session expires about 6.3 s (ISR [0]); the new process registers at once but
        // cannot fetch before the leader crashes.
        (
            4_400,
            Action::Cut {
                host: 2,
                peers: true,
                controller: false,
                heal_after_ms: 7_000,
            },
        ),
        // One failure: the leader, after the stale fetch woke, while host 2 is still empty.
        (
            10_000,
            Action::Crash {
                host: 0,
                wipe: false,
                restart_after_ms: Some(4_000),
            },
        ),
    ];
    let report = scenario("kip_903", 16_000, script).expect("no acknowledged record lost");
    assert!(report.acked_records > 0, "{report:?}");
    // Host 2 never led: the leader crash left the partition without a leader until host 0
    // came back (epoch 1: leader -1; epoch 2: host 0 again).
    assert_eq!(report.final_leader_epoch, 2, "{report:?}");
}

/// KIP-966: the ISR shrinks to the leader alone, which then crashes and loses its unflushed
/// tail. The followers left the ISR below min.insync.replicas=2, so they are eligible leader
/// replicas with everything acknowledged (the high watermark stopped when the ISR became too
/// small); the crashed leader moves to the ELR when fenced, an eligible follower leads, and the
/// crashed replica, registering after an unclean shutdown, leaves the ELR. Before ELR the
/// controller kept the crashed replica as the ISR and made it leader again: records lost.
#[test]
fn kip_966_the_last_replica_standing_shuts_down_uncleanly() {
    let script = vec![
        (500, Action::StopFlushing(0)),
        (
            1_500,
            Action::Cut {
                host: 1,
                peers: true,
                controller: false,
                heal_after_ms: 20_000,
            },
        ),
        (
            1_500,
            Action::Cut {
                host: 2,
                peers: true,
                controller: false,
                heal_after_ms: 20_000,
            },
        ),
        (
            4_500,
            Action::Crash {
                host: 0,
                wipe: false,
                restart_after_ms: Some(500),
            },
        ),
    ];
    let mut config = SimConfig::scripted(1, 10_000, script);
    config.verbose = std::env::var("SIM_VERBOSE").is_ok();
    let report = sim::run(&config)
        .map_err(|f| f.to_string())
        .expect("no acknowledged record lost");
    println!("kip_966: {report:?}");
    assert!(report.acked_records > 0, "{report:?}");
    assert!(
        report.elr_elections >= 1,
        "an eligible leader replica took over: {report:?}"
    );
    assert!(
        report.unclean_elr_removals >= 1,
        "the crashed leader left the ELR: {report:?}"
    );
}
