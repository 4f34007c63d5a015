//! `ringlog-bench mesh`: the cost of a cross-core hand-off through glommio's channel mesh.
//!
//! Two executors, pinned to two CPUs, are joined by `MeshBuilder::full(2, capacity)`. Shard 0
//! sends a `u64` request to shard 1, which echoes it back; shard 0 times each round trip.
//! Scenarios, each on a fresh pair of executors:
//!
//! - `closed_loop` with default executor settings: one request in flight, `--gap-us` of
//!   sleep between requests so that the peer parks in between (the cost of waking it is
//!   what a broker forwarding a lone request would pay);
//! - `closed_loop` again with `spin_before_park` set to each `--spin-us` value, on both
//!   executors: spinning only helps while the idle gap is shorter than the spin;
//! - `pipelined` with `--in-flight K` requests outstanding and no gap, for
//!   `--pipelined-ms`: hand-off throughput.
//!
//! For each one it also reports the process's CPU time (getrusage RUSAGE_SELF, user+sys)
//! over the measured window, since a spinning executor burns a core while it waits.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::{MeshBuilder, Receivers, Senders};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use ringlog_bench::machine::{self, MachineInfo};
use serde::Serialize;

use super::append::print_machine;
use super::{write_json, BenchError};
use crate::MeshArgs;

/// Registered I/O memory per executor: the mesh does no I/O, so glommio's minimum will do.
const IO_MEMORY_BYTES: usize = 512 << 10;
/// Largest round trip the histogram holds, in ns (a minute); longer ones saturate.
const MAX_LATENCY_NS: u64 = 60_000_000_000;
/// The request that ends a scenario: the peer echoes it and stops.
const STOP: u64 = u64::MAX;

/// One scenario to run on a fresh pair of executors.
#[derive(Debug, Clone, Copy)]
enum Scenario {
    /// One request at a time, `gap` of sleep before each.
    ClosedLoop { spin: Option<Duration> },
    /// `in_flight` requests outstanding for the whole run.
    Pipelined { in_flight: u64 },
}

/// What shard 0 measured.
struct Outcome {
    round_trips: u64,
    wall: Duration,
    cpu: Duration,
    latency_ns: Histogram<u64>,
}

/// One row of the table and of the JSON `scenarios` array.
#[derive(Debug, Serialize)]
struct ScenarioResult {
    scenario: &'static str,
    /// `spin_before_park` on both executors, 0 when unset (the default: park at once).
    spin_us: u64,
    in_flight: u64,
    /// Sleep before each request (closed loop only; 0 when pipelined).
    gap_us: u64,
    round_trips: u64,
    round_trips_per_sec: f64,
    latency_us_p50: f64,
    latency_us_p90: f64,
    latency_us_p99: f64,
    latency_us_p999: f64,
    latency_us_max: f64,
    latency_us_mean: f64,
    wall_secs: f64,
    /// User + system CPU time of the whole process (both executors) over the measured
    /// window.
    cpu_secs: f64,
    /// `cpu_secs / wall_secs`: how many cores the two executors kept busy.
    cpu_cores_busy: f64,
    cpu_us_per_round_trip: f64,
}

#[derive(Debug, Serialize)]
struct MeshResult {
    command: &'static str,
    cpus: [usize; 2],
    channel_capacity: usize,
    requests: u64,
    warmup: u64,
    gap_us: u64,
    pipelined_ms: u64,
    scenarios: Vec<ScenarioResult>,
    #[serde(flatten)]
    machine: MachineInfo,
}

pub fn run(args: MeshArgs) -> Result<(), BenchError> {
    let cpus = check(&args)?;
    let machine = MachineInfo::collect();
    println!("ringlog-bench mesh");
    println!(
        "  shards        CPU {} -> CPU {}, full mesh, channel capacity {}",
        cpus[0], cpus[1], args.capacity
    );
    println!(
        "  closed loop   {} round trips (+{} warm-up), {} µs gap, spin {:?} µs",
        args.requests, args.warmup, args.gap_us, args.spin_us
    );
    println!(
        "  pipelined     in flight {:?}, {} ms each (+10% warm-up)",
        args.in_flight, args.pipelined_ms
    );
    print_machine(&machine);

    let mut scenarios = vec![Scenario::ClosedLoop { spin: None }];
    scenarios.extend(args.spin_us.iter().map(|&us| Scenario::ClosedLoop {
        spin: (us > 0).then(|| Duration::from_micros(us)),
    }));
    scenarios.extend(
        args.in_flight
            .iter()
            .map(|&in_flight| Scenario::Pipelined { in_flight }),
    );

    println!("results (latency in µs; cpu = user+sys of both executors over the window)");
    println!(
        "  {:<12} {:>7} {:>9} {:>14} {:>8} {:>8} {:>8} {:>9} {:>7} {:>10} {:>9}",
        "scenario",
        "spin_us",
        "in_flight",
        "round_trips/s",
        "p50",
        "p99",
        "p99.9",
        "max",
        "cpu_s",
        "cores_busy",
        "cpu_us/rt"
    );
    let mut results = Vec::with_capacity(scenarios.len());
    for scenario in scenarios {
        let outcome = run_scenario(&args, cpus, scenario)?;
        let result = summarize(&args, scenario, &outcome);
        print_row(&result);
        results.push(result);
    }
    let result = MeshResult {
        command: "mesh",
        cpus,
        channel_capacity: args.capacity,
        requests: args.requests,
        warmup: args.warmup,
        gap_us: args.gap_us,
        pipelined_ms: args.pipelined_ms,
        scenarios: results,
        machine,
    };
    write_json(args.output_json.as_deref(), &result)
}

fn check(args: &MeshArgs) -> Result<[usize; 2], BenchError> {
    let usage = |m: &str| Err(BenchError::Usage(m.to_string()));
    let [a, b] = args.cpus[..] else {
        return usage("--cpus takes exactly two CPUs, e.g. 0,1");
    };
    if a == b {
        return usage("--cpus must name two different CPUs");
    }
    if args.requests == 0 {
        return usage("--requests must be above zero");
    }
    if args.capacity == 0 {
        return usage("--capacity must be above zero");
    }
    if args.in_flight.contains(&0) {
        return usage("--in-flight values must be above zero");
    }
    if args.pipelined_ms == 0 && !args.in_flight.is_empty() {
        return usage("--pipelined-ms must be above zero");
    }
    match machine::check_memlock(2 * IO_MEMORY_BYTES as u64) {
        Ok(None) => {}
        Ok(Some(warning)) => eprintln!("ringlog-bench: warning: {warning}"),
        Err(message) => return Err(BenchError::Executor { cpu: a, message }),
    }
    Ok([a, b])
}

/// Starts both executors for one scenario and returns what shard 0 measured.
fn run_scenario(
    args: &MeshArgs,
    cpus: [usize; 2],
    scenario: Scenario,
) -> Result<Outcome, BenchError> {
    let spin = match scenario {
        Scenario::ClosedLoop { spin } => spin,
        Scenario::Pipelined { .. } => None,
    };
    let mesh = MeshBuilder::<u64, _>::full(2, args.capacity);
    let builder = |cpu: usize, name: &str| {
        let builder = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(name)
            .io_memory(IO_MEMORY_BYTES);
        match spin {
            Some(spin) => builder.spin_before_park(spin),
            None => builder,
        }
    };
    let executor_error = |cpu: usize| {
        move |e: glommio::GlommioError<()>| BenchError::Executor {
            cpu,
            message: e.to_string(),
        }
    };

    let peer_mesh = mesh.clone();
    let peer = builder(cpus[1], "ringlog-mesh-peer")
        .spawn(move || async move {
            let (senders, receivers) = join(peer_mesh).await?;
            echo(&senders, &receivers).await
        })
        .map_err(executor_error(cpus[1]))?;

    let (requests, warmup, gap) = (
        args.requests,
        args.warmup,
        Duration::from_micros(args.gap_us),
    );
    let pipelined_ms = args.pipelined_ms;
    let client = builder(cpus[0], "ringlog-mesh-client")
        .spawn(move || async move {
            let (senders, receivers) = join(mesh).await?;
            match scenario {
                Scenario::ClosedLoop { .. } => {
                    closed_loop(&senders, &receivers, warmup, requests, gap).await
                }
                Scenario::Pipelined { in_flight } => {
                    let run = Duration::from_millis(pipelined_ms);
                    pipelined(senders, receivers, in_flight, run / 10, run).await
                }
            }
        })
        .map_err(executor_error(cpus[0]))?;

    let outcome = client.join().map_err(executor_error(cpus[0]))?;
    let echoed = peer.join().map_err(executor_error(cpus[1]))?;
    let outcome = outcome?;
    echoed?;
    Ok(outcome)
}

async fn join(mesh: MeshBuilder<u64, glommio::channels::channel_mesh::Full>) -> MeshResultPair {
    mesh.join()
        .await
        .map_err(|e| BenchError::Mesh(format!("joining: {e}")))
}

type MeshResultPair = Result<(Senders<u64>, Receivers<u64>), BenchError>;

/// The other shard's index in the mesh: indices follow the order in which the executors
/// joined, not which one is the client.
fn other(senders: &Senders<u64>) -> usize {
    1 - senders.peer_id()
}

fn mesh_error(what: &str) -> BenchError {
    BenchError::Mesh(format!(
        "{what}: the other shard's channel is closed or invalid"
    ))
}

/// Shard 1: echo every request back until `STOP` (echoed too).
async fn echo(senders: &Senders<u64>, receivers: &Receivers<u64>) -> Result<(), BenchError> {
    let client = other(senders);
    loop {
        let request = receivers
            .recv_from(client)
            .await
            .map_err(|_| mesh_error("receiving a request"))?
            .ok_or_else(|| mesh_error("receiving a request"))?;
        senders
            .send_to(client, request)
            .await
            .map_err(|_| mesh_error("sending a response"))?;
        if request == STOP {
            return Ok(());
        }
    }
}

async fn round_trip(
    senders: &Senders<u64>,
    receivers: &Receivers<u64>,
    request: u64,
) -> Result<u64, BenchError> {
    let peer = other(senders);
    senders
        .send_to(peer, request)
        .await
        .map_err(|_| mesh_error("sending a request"))?;
    receivers
        .recv_from(peer)
        .await
        .map_err(|_| mesh_error("receiving a response"))?
        .ok_or_else(|| mesh_error("receiving a response"))
}

/// Shard 0, one request in flight: sleep `gap`, send, await the echo, record.
async fn closed_loop(
    senders: &Senders<u64>,
    receivers: &Receivers<u64>,
    warmup: u64,
    requests: u64,
    gap: Duration,
) -> Result<Outcome, BenchError> {
    let mut latency_ns = new_histogram()?;
    let mut started = (Instant::now(), cpu_time());
    for i in 0..warmup + requests {
        if i == warmup {
            started = (Instant::now(), cpu_time());
        }
        if !gap.is_zero() {
            glommio::timer::sleep(gap).await;
        }
        let sent = Instant::now();
        let response = round_trip(senders, receivers, i).await?;
        let elapsed = sent.elapsed();
        if response != i {
            return Err(BenchError::Mesh(format!(
                "response {response} to request {i}"
            )));
        }
        if i >= warmup {
            latency_ns.saturating_record(nanos(elapsed));
        }
    }
    let outcome = Outcome {
        round_trips: requests,
        wall: started.0.elapsed(),
        cpu: cpu_time().saturating_sub(started.1),
        latency_ns,
    };
    round_trip(senders, receivers, STOP).await?;
    Ok(outcome)
}

/// Shard 0, `in_flight` requests outstanding: a sender task takes a permit per request, the
/// receiver returns it with each response. Responses come back in order, so request `i`'s
/// send time lives in slot `i % in_flight`. Only requests sent after `warmup` are counted.
async fn pipelined(
    senders: Senders<u64>,
    receivers: Receivers<u64>,
    in_flight: u64,
    warmup: Duration,
    run: Duration,
) -> Result<Outcome, BenchError> {
    let peer = other(&senders);
    let slots = usize::try_from(in_flight)
        .map_err(|_| BenchError::Usage(format!("--in-flight {in_flight} is too large")))?;
    let sent_at = Rc::new(RefCell::new(vec![Instant::now(); slots]));
    let permits = Rc::new(glommio::sync::Semaphore::new(in_flight));
    let begin = Instant::now();
    let measure_from = begin + warmup;
    let deadline = measure_from + run;
    let start_cpu = Rc::new(Cell::new(None));

    let sender = {
        let (sent_at, permits, start_cpu) = (sent_at.clone(), permits.clone(), start_cpu.clone());
        glommio::spawn_local(async move {
            let mut i = 0u64;
            loop {
                permits
                    .acquire(1)
                    .await
                    .map_err(|e| BenchError::Mesh(e.to_string()))?;
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                if now >= measure_from && start_cpu.get().is_none() {
                    start_cpu.set(Some((now, cpu_time())));
                }
                sent_at.borrow_mut()[(i % in_flight) as usize] = now;
                senders
                    .send_to(peer, i)
                    .await
                    .map_err(|_| mesh_error("sending a request"))?;
                i += 1;
            }
            // FIFO: once STOP comes back, every earlier response has been received.
            senders
                .send_to(peer, STOP)
                .await
                .map_err(|_| mesh_error("sending a request"))?;
            Ok::<_, BenchError>(senders)
        })
    };

    let mut latency_ns = new_histogram()?;
    let mut last = Instant::now();
    let mut expected = 0u64;
    loop {
        let response = receivers
            .recv_from(peer)
            .await
            .map_err(|_| mesh_error("receiving a response"))?
            .ok_or_else(|| mesh_error("receiving a response"))?;
        if response == STOP {
            break;
        }
        let now = Instant::now();
        if response != expected {
            return Err(BenchError::Mesh(format!(
                "response {response}, expected {expected}"
            )));
        }
        let sent = sent_at.borrow()[(response % in_flight) as usize];
        expected += 1;
        permits.signal(1);
        if sent >= measure_from {
            latency_ns.saturating_record(nanos(now - sent));
            last = now;
        }
    }
    let end_cpu = cpu_time();
    // Keep the senders alive until here: dropping them closes the peer's channel.
    let _senders = sender.await?;
    let (wall, cpu) = match start_cpu.get() {
        Some((at, cpu)) => (
            last.saturating_duration_since(at),
            end_cpu.saturating_sub(cpu),
        ),
        None => (Duration::ZERO, Duration::ZERO),
    };
    Ok(Outcome {
        round_trips: latency_ns.len(),
        wall,
        cpu,
        latency_ns,
    })
}

fn new_histogram() -> Result<Histogram<u64>, BenchError> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
        .map_err(|e| BenchError::Histogram(e.to_string()))
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// User + system CPU time of the whole process so far.
fn cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes only into the struct we pass, which lives for the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn summarize(args: &MeshArgs, scenario: Scenario, o: &Outcome) -> ScenarioResult {
    let us = |q: f64| o.latency_ns.value_at_quantile(q) as f64 / 1e3;
    let wall = o.wall.as_secs_f64();
    let cpu = o.cpu.as_secs_f64();
    let per_sec = |x: f64| if wall > 0.0 { x / wall } else { 0.0 };
    let (name, spin_us, in_flight, gap_us) = match scenario {
        Scenario::ClosedLoop { spin } => (
            "closed_loop",
            spin.map_or(0, |s| s.as_micros() as u64),
            1,
            args.gap_us,
        ),
        Scenario::Pipelined { in_flight } => ("pipelined", 0, in_flight, 0),
    };
    ScenarioResult {
        scenario: name,
        spin_us,
        in_flight,
        gap_us,
        round_trips: o.round_trips,
        round_trips_per_sec: per_sec(o.round_trips as f64),
        latency_us_p50: us(0.5),
        latency_us_p90: us(0.9),
        latency_us_p99: us(0.99),
        latency_us_p999: us(0.999),
        latency_us_max: o.latency_ns.max() as f64 / 1e3,
        latency_us_mean: o.latency_ns.mean() / 1e3,
        wall_secs: wall,
        cpu_secs: cpu,
        cpu_cores_busy: per_sec(cpu),
        cpu_us_per_round_trip: if o.round_trips > 0 {
            cpu * 1e6 / o.round_trips as f64
        } else {
            0.0
        },
    }
}

fn print_row(r: &ScenarioResult) {
    println!(
        "  {:<12} {:>7} {:>9} {:>14.0} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>7.3} {:>10.2} {:>9.2}",
        r.scenario,
        r.spin_us,
        r.in_flight,
        r.round_trips_per_sec,
        r.latency_us_p50,
        r.latency_us_p99,
        r.latency_us_p999,
        r.latency_us_max,
        r.cpu_secs,
        r.cpu_cores_busy,
        r.cpu_us_per_round_trip
    );
}
