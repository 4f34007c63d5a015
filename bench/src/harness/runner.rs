//! Runs a workload: round by round, each broker in turn is started (when the workload says
//! how), gets its topics created fresh, runs every step, has its topics deleted and is
//! stopped. Only one broker runs at a time, and the brokers alternate within each round, so a
//! machine that gets busier or quieter during the run affects them alike.
//!
//! Every ringlog-perf process writes its JSON result and its log under the work directory
//! (`logs/r<round>/<broker>/`); the broker's data directory for the round is
//! `data/<broker>` there, emptied before the broker starts and removed after it stops.
//!
//! Failures (a broker that does not start, a process that exits badly or runs past the
//! step's timeout) are recorded and the run goes on: one bad round must not cost the others.
//! SIGINT and SIGTERM stop the run between polls; whatever was started is stopped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ringlog_net::client::blocking::{Cluster, NewTopic};

use super::perf::{consumer_args, producer_args, PerfOutput};
use super::results::{
    step_totals, summarize, BrokerRound, ProcessRun, Role, RoleTotals, RunResult, StepRun,
    WorkloadInfo,
};
use super::spec::{BrokerSpec, ProducerSpec, StepSpec, Workload};
use crate::machine::{loadavg, MachineInfo};

/// The client id of the harness's own admin requests.
const CLIENT_ID: &str = "ringlog-bench";
/// How often child processes and brokers are polled.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long a process asked to stop (SIGTERM) has before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(5);
/// Topic creation and deletion, including waiting for leaders.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything `run` needs besides the workload.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub workload_path: PathBuf,
    /// Replaces the workload's `rounds`.
    pub rounds: Option<u32>,
    /// Only these brokers (all when empty).
    pub brokers: Vec<String>,
    pub perf_bin: PathBuf,
    /// Data directories and process logs go here.
    pub work_dir: PathBuf,
    /// Keep each broker's data directory after its round.
    pub keep_data: bool,
}

/// What stops a run before it starts, or interrupts it.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Spec(#[from] super::spec::SpecError),
    #[error("ringlog-perf not found at {0} (build it, or say where it is with --perf-bin)")]
    PerfBin(String),
    #[error("registering a handler for SIGINT and SIGTERM: {0}")]
    Signals(std::io::Error),
    #[error("interrupted")]
    Interrupted,
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The state shared by the whole run.
struct Context<'a> {
    options: &'a RunOptions,
    run_id: u64,
    interrupted: Arc<AtomicBool>,
}

impl Context<'_> {
    fn check_interrupted(&self) -> Result<(), RunError> {
        if self.interrupted.load(Ordering::Relaxed) {
            return Err(RunError::Interrupted);
        }
        Ok(())
    }
}

/// Runs `workload` and returns every figure. An interruption returns the rounds finished so
/// far as an error-free result with the interruption among its failures.
pub fn run(workload: &Workload, options: &RunOptions) -> Result<RunResult, RunError> {
    let brokers = workload.select_brokers(&options.brokers)?;
    let rounds = options.rounds.unwrap_or(workload.rounds);
    if !(1..=super::spec::ROUNDS_MAX).contains(&rounds) {
        return Err(super::spec::SpecError::BadRounds(rounds).into());
    }
    if !options.perf_bin.is_file() {
        return Err(RunError::PerfBin(options.perf_bin.display().to_string()));
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&interrupted)).map_err(RunError::Signals)?;
    }
    let machine = MachineInfo::collect();
    let started_at_unix_ms = now_unix_ms();
    let context = Context {
        options,
        run_id: started_at_unix_ms,
        interrupted,
    };
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    'rounds: for round in 1..=rounds {
        for broker in &brokers {
            if context.check_interrupted().is_err() {
                failures.push("interrupted: the run stopped early".to_owned());
                break 'rounds;
            }
            println!("== round {round}/{rounds}: {}", broker.name);
            let turn = run_broker_round(&context, workload, broker, round);
            failures.extend(turn_failures(&turn));
            runs.push(turn);
        }
    }
    let names: Vec<String> = brokers.iter().map(|b| b.name.clone()).collect();
    Ok(RunResult {
        tool: "ringlog-bench".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        workload: WorkloadInfo {
            name: workload.name.clone(),
            description: workload.description.clone(),
            path: options.workload_path.display().to_string(),
            spec: serde_json::to_value(workload).unwrap_or_default(),
            perf_bin: options.perf_bin.display().to_string(),
        },
        machine,
        started_at_unix_ms,
        finished_at_unix_ms: now_unix_ms(),
        loadavg_end: loadavg(),
        summary: summarize(&names, &runs),
        brokers: names,
        rounds,
        runs,
        failures,
    })
}

/// One line per failure in a broker's turn.
fn turn_failures(turn: &BrokerRound) -> Vec<String> {
    let at = format!("round {} {}", turn.round, turn.broker);
    let mut failures: Vec<String> = turn.error.iter().map(|e| format!("{at}: {e}")).collect();
    for step in &turn.steps {
        for process in &step.processes {
            if let Some(error) = &process.error {
                failures.push(format!(
                    "{at} step {} {} {}: {error}",
                    step.name,
                    process.role.name(),
                    process.index
                ));
            }
        }
    }
    failures
}

fn run_broker_round(
    context: &Context,
    workload: &Workload,
    broker: &BrokerSpec,
    round: u32,
) -> BrokerRound {
    let mut turn = BrokerRound {
        round,
        broker: broker.name.clone(),
        started_at_unix_ms: now_unix_ms(),
        loadavg_before: loadavg(),
        error: None,
        steps: Vec::new(),
    };
    if let Err(error) = broker_turn(context, workload, broker, round, &mut turn.steps) {
        eprintln!("ringlog-bench: round {round} {}: {error}", broker.name);
        turn.error = Some(error);
    }
    turn
}

/// Starts the broker, runs the steps, stops it; the first error ends the turn (after the
/// broker is stopped).
fn broker_turn(
    context: &Context,
    workload: &Workload,
    broker: &BrokerSpec,
    round: u32,
    steps: &mut Vec<StepRun>,
) -> Result<(), String> {
    let work_dir = &context.options.work_dir;
    let data_dir = work_dir.join("data").join(&broker.name);
    let logs_dir = work_dir
        .join("logs")
        .join(format!("r{round}"))
        .join(&broker.name);
    fresh_dir(&data_dir)?;
    fresh_dir(&logs_dir)?;
    let mut process = BrokerProcess::start(broker, &data_dir, &logs_dir)?;
    let outcome = process
        .wait_ready(broker, &context.interrupted)
        .and_then(|cluster| run_steps(context, workload, broker, round, &logs_dir, cluster, steps));
    let stopped = process.stop(broker, &data_dir);
    if !context.options.keep_data {
        // Preallocated segments make a broker's data large; a failed removal is only noise.
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    outcome.and(stopped)
}

fn run_steps(
    context: &Context,
    workload: &Workload,
    broker: &BrokerSpec,
    round: u32,
    logs_dir: &Path,
    mut cluster: Cluster,
    steps: &mut Vec<StepRun>,
) -> Result<(), String> {
    let topics: Vec<NewTopic> = workload
        .topics
        .iter()
        .map(|t| NewTopic {
            name: t.name.clone(),
            partitions: t.partitions,
            replication_factor: t.replication_factor,
            configs: t.configs.clone(),
        })
        .collect();
    let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
    // Left over from an interrupted run against a broker that keeps its data.
    cluster
        .delete_topics(&names, ADMIN_TIMEOUT)
        .map_err(|e| format!("deleting old topics: {e}"))?;
    cluster
        .create_topics(&topics, ADMIN_TIMEOUT)
        .map_err(|e| format!("creating topics: {e}"))?;
    for step in &workload.steps {
        context.check_interrupted().map_err(|e| e.to_string())?;
        let step_run = run_step(context, broker, step, round, logs_dir);
        print_step(&step_run);
        steps.push(step_run);
    }
    // Every process of every step has exited here (wait_all reaps each one, killing those
    // past the step's timeout), and ringlog-perf never asks Metadata to auto-create a topic:
    // nothing can bring a topic back with the broker's default layout after this deletion.
    // A fresh connection: the step may have taken longer than the broker keeps idle ones.
    let mut cluster = Cluster::connect(&broker.bootstrap, CLIENT_ID)
        .map_err(|e| format!("reconnecting to delete topics: {e}"))?;
    cluster
        .delete_topics(&names, ADMIN_TIMEOUT)
        .map_err(|e| format!("deleting topics: {e}"))
}

/// Empties (or creates) `dir`.
fn fresh_dir(dir: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("emptying {}: {e}", dir.display())),
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))
}

/// The broker's `start` command while it runs, in its own process group so that stopping it
/// reaches every process the shell started.
struct BrokerProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl BrokerProcess {
    fn start(broker: &BrokerSpec, data_dir: &Path, logs_dir: &Path) -> Result<Self, String> {
        let log = logs_dir.join("broker.log");
        let Some(start) = &broker.start else {
            return Ok(Self { child: None, log });
        };
        let command = broker.expand(start, data_dir);
        println!("   starting: {command}");
        let child = shell(&command, broker, &log)
            .map_err(|e| format!("starting the broker ({command}): {e}"))?;
        Ok(Self {
            child: Some(child),
            log,
        })
    }

    /// Waits until the broker answers Metadata and every node it lists accepts connections.
    fn wait_ready(
        &mut self,
        broker: &BrokerSpec,
        interrupted: &AtomicBool,
    ) -> Result<Cluster, String> {
        let started = Instant::now();
        let limit = Duration::from_secs(broker.ready_timeout_s);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "the broker exited ({status}) before it was ready; see {}",
                        self.log.display()
                    ));
                }
            }
            let attempt = Cluster::connect(&broker.bootstrap, CLIENT_ID).and_then(|mut cluster| {
                for node in cluster.node_ids() {
                    cluster.node(node)?;
                }
                Ok(cluster)
            });
            match attempt {
                Ok(cluster) => return Ok(cluster),
                Err(error) if started.elapsed() >= limit => {
                    return Err(format!(
                        "not ready after {}s at {}: {error}",
                        broker.ready_timeout_s, broker.bootstrap
                    ))
                }
                Err(_) => {}
            }
            if interrupted.load(Ordering::Relaxed) {
                return Err("interrupted".to_owned());
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Runs the `stop` command or sends SIGTERM, then waits for the start command to end.
    fn stop(&mut self, broker: &BrokerSpec, data_dir: &Path) -> Result<(), String> {
        let mut result = Ok(());
        if let Some(stop) = &broker.stop {
            let command = broker.expand(stop, data_dir);
            let stop_log = self.log.with_file_name("broker-stop.log");
            let status = shell(&command, broker, &stop_log).and_then(|mut child| child.wait());
            match status {
                Ok(status) if status.success() => {}
                Ok(status) => result = Err(format!("stop command ({command}) {status}")),
                Err(e) => result = Err(format!("stop command ({command}): {e}")),
            }
        } else if let Some(child) = &self.child {
            signal_group(child, libc::SIGTERM);
        }
        let Some(mut child) = self.child.take() else {
            return result;
        };
        let limit = Duration::from_secs(broker.stop_timeout_s);
        if !wait_child(&mut child, limit) {
            signal_group(&child, libc::SIGKILL);
            let _ = child.wait();
            return Err(format!(
                "the broker did not stop within {}s and was killed",
                broker.stop_timeout_s
            ));
        }
        result
    }
}

impl Drop for BrokerProcess {
    /// Only reached with a child still running when the run is unwinding: kill it.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(&child, libc::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// `sh -c command` in a new process group, output to `log`.
fn shell(command: &str, broker: &BrokerSpec, log: &Path) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let out = File::create(log)?;
    let err = out.try_clone()?;
    Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(&broker.env)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
}

/// Sends `signal` to the process group `child` leads.
fn signal_group(child: &Child, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill has no memory preconditions; the group is the one we created for this
    // child (process_group(0)), and the child is not yet reaped, so its id is not reused.
    unsafe {
        libc::kill(-pid, signal);
    }
}

/// Waits up to `limit` for `child` to exit; false if it is still running.
fn wait_child(child: &mut Child, limit: Duration) -> bool {
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if started.elapsed() >= limit => return false,
            Ok(None) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

/// A ringlog-perf process of a step, while it runs.
struct Launched {
    process: ProcessRun,
    json: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

fn run_step(
    context: &Context,
    broker: &BrokerSpec,
    step: &StepSpec,
    round: u32,
    logs_dir: &Path,
) -> StepRun {
    let started = Instant::now();
    let started_at_unix_ms = now_unix_ms();
    let deadline = started + Duration::from_secs(step.timeout_s());
    let mut processes = Vec::new();
    if let Some(backlog) = &step.backlog {
        let launched = launch_producers(context, broker, step, backlog, Role::Backlog, logs_dir);
        processes.extend(wait_all(launched, deadline, &context.interrupted));
    }
    let mut launched = Vec::new();
    for consumer in &step.consumers {
        let messages = step.messages_per_consumer(consumer);
        let prefix = consumer.group.as_deref().unwrap_or(CLIENT_ID);
        for group_index in 0..consumer.groups {
            let group = format!(
                "{prefix}-{}-r{round}-{}-g{group_index}",
                context.run_id, step.name
            );
            for _ in 0..consumer.count {
                let index = launched.len() as u32;
                let json = logs_dir.join(format!("{}-consumer-{index}.json", step.name));
                let args = consumer_args(broker, consumer, &group, messages, &json);
                let process =
                    new_process(Role::Consumer, index, &consumer.topic, Some(&group), args);
                launched.push(launch(context, process, json, logs_dir, &step.name));
            }
        }
    }
    for producer in &step.producers {
        launched.extend(launch_producers(
            context,
            broker,
            step,
            producer,
            Role::Producer,
            logs_dir,
        ));
    }
    for end_to_end in &step.end_to_end {
        launched.extend(launch_producers(
            context,
            broker,
            step,
            end_to_end,
            Role::EndToEnd,
            logs_dir,
        ));
    }
    processes.extend(wait_all(launched, deadline, &context.interrupted));
    StepRun {
        name: step.name.clone(),
        warmup: step.warmup,
        started_at_unix_ms,
        elapsed_s: started.elapsed().as_secs_f64(),
        totals: step_totals(&processes, started_at_unix_ms),
        processes,
    }
}

fn new_process(
    role: Role,
    index: u32,
    topic: &str,
    group: Option<&str>,
    command: Vec<String>,
) -> ProcessRun {
    ProcessRun {
        role,
        index,
        topic: topic.to_owned(),
        group: group.map(str::to_owned),
        command,
        exit_code: None,
        error: None,
        output: None,
        histogram_log: None,
    }
}

fn launch_producers(
    context: &Context,
    broker: &BrokerSpec,
    step: &StepSpec,
    producer: &ProducerSpec,
    role: Role,
    logs_dir: &Path,
) -> Vec<Launched> {
    (0..producer.count)
        .map(|index| {
            let stem = format!("{}-{}-{index}", step.name, role.name());
            let json = logs_dir.join(format!("{stem}.json"));
            let histogram_log = logs_dir.join(format!("{stem}.hlog"));
            let mode = match role {
                Role::EndToEnd => "end-to-end",
                _ => "producer",
            };
            let args = producer_args(mode, broker, producer, &json, Some(&histogram_log));
            let mut process = new_process(role, index, &producer.topic, None, args);
            process.histogram_log = Some(histogram_log.display().to_string());
            launch(context, process, json, logs_dir, &step.name)
        })
        .collect()
}

/// Starts one ringlog-perf process (a failure to start is recorded in its `error`).
fn launch(
    context: &Context,
    mut process: ProcessRun,
    json: PathBuf,
    logs_dir: &Path,
    step: &str,
) -> Launched {
    let log = logs_dir.join(format!(
        "{step}-{}-{}.log",
        process.role.name(),
        process.index
    ));
    let _ = std::fs::remove_file(&json);
    let spawned = File::create(&log).and_then(|out| {
        let err = out.try_clone()?;
        Command::new(&context.options.perf_bin)
            .args(&process.command)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
    });
    let child = match spawned {
        Ok(child) => Some(child),
        Err(e) => {
            process.error = Some(format!("could not start: {e}"));
            None
        }
    };
    Launched {
        process,
        json,
        log,
        child,
    }
}

/// Waits for every process, stopping those still running at `deadline` or on interruption,
/// and reads their results.
fn wait_all(
    mut launched: Vec<Launched>,
    deadline: Instant,
    interrupted: &AtomicBool,
) -> Vec<ProcessRun> {
    loop {
        for entry in &mut launched {
            let Some(child) = entry.child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                entry.child = None;
                entry.process.exit_code = status.code();
                finish(
                    entry,
                    status.success().then_some(()).ok_or(status.to_string()),
                );
            }
        }
        if launched.iter().all(|l| l.child.is_none()) {
            break;
        }
        let late = Instant::now() >= deadline;
        if late || interrupted.load(Ordering::Relaxed) {
            let why = if late {
                "ran past the step's timeout"
            } else {
                "interrupted"
            };
            stop_all(&mut launched, why);
            break;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    launched.into_iter().map(|l| l.process).collect()
}

fn stop_all(launched: &mut [Launched], why: &str) {
    for entry in launched.iter().filter(|l| l.child.is_some()) {
        if let Some(child) = &entry.child {
            // SAFETY: as in signal_group; the child is not reaped yet.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    for entry in launched.iter_mut() {
        let Some(mut child) = entry.child.take() else {
            continue;
        };
        if !wait_child(&mut child, TERM_GRACE) {
            let _ = child.kill();
        }
        let status = child.wait().ok();
        entry.process.exit_code = status.and_then(|s| s.code());
        finish(entry, Err(why.to_owned()));
    }
}

/// Reads the result of a process that has ended.
fn finish(entry: &mut Launched, exit: Result<(), String>) {
    let log = entry.log.display();
    match exit {
        Err(why) => entry.process.error = Some(format!("{why}; see {log}")),
        Ok(()) => match PerfOutput::read(&entry.json) {
            Ok(output) => entry.process.output = Some(output),
            Err(e) => entry.process.error = Some(format!("{e}; see {log}")),
        },
    }
}

fn print_step(step: &StepRun) {
    let label = if step.warmup { " (warm-up)" } else { "" };
    println!("   step {}{label}: {:.1}s", step.name, step.elapsed_s);
    for totals in &step.totals {
        println!("     {}", describe_totals(totals));
    }
}

/// One line about a role's totals: throughput, latency, failures.
pub fn describe_totals(totals: &RoleTotals) -> String {
    let mut line = format!(
        "{:<8} x{}: {:.1} MB/s, {:.0} records/s, {} records",
        totals.role.name(),
        totals.processes,
        totals.mb_per_sec,
        totals.records_per_sec,
        totals.records
    );
    if let Some(fetch) = totals.fetch_mb_per_sec {
        line.push_str(&format!(
            " ({fetch:.1} MB/s fetch-only, group join left out)"
        ));
    }
    if let Some(latency) = &totals.latency_us {
        line.push_str(&format!(
            ", latency p50 {:.0} µs p99 {:.0} µs p99.9 {:.0} µs max {:.0} µs",
            latency.p50, latency.p99, latency.p999, latency.max
        ));
    }
    if totals.failed > 0 {
        line.push_str(&format!(", {} FAILED", totals.failed));
    }
    if totals.errors > 0 {
        line.push_str(&format!(", {} errors", totals.errors));
    }
    line
}
