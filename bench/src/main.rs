//! `ringlog-bench`: measures the storage engine alone, with no network in the way.
//!
//! - `append` drives one partition on one glommio executor with N closed-loop appenders and
//!   reports throughput and append latency percentiles;
//! - `recover` opens an existing partition and reports how long recovery took and what it
//!   found, after a clean close or after `append --no-close`;
//! - `mesh` measures cross-core hand-offs through glommio's channel mesh (two pinned
//!   executors, request and echo), with and without spinning, closed loop and pipelined.
//!
//! - `run` runs a workload file against one or more Kafka-compatible brokers with ringlog-perf
//!   processes (see `ringlog_bench::harness`); `report` renders a run's JSON as HTML and
//!   `compare` prints the ratios between two runs.
//!
//! All print a human summary and can write a JSON object (`--output-json`) for scripts.

mod cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use ringlog_bench::size::parse_size;

#[derive(Debug, Parser)]
#[command(
    name = "ringlog-bench",
    version,
    about = "Benchmarks for ringlog's storage engine and cross-core hand-offs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Append one batch, over and over, into a fresh partition and measure it.
    Append(AppendArgs),
    /// Open an existing partition (as left by `append --keep` or `--no-close`) and time
    /// its recovery.
    Recover(RecoverArgs),
    /// Time round trips between two pinned executors through a glommio channel mesh.
    Mesh(MeshArgs),
    /// Run a workload file (brokers, topics, producers and consumers) with ringlog-perf
    /// processes, round by round, the brokers taking turns.
    Run(RunWorkloadArgs),
    /// Render a `run` result (JSON) as a self-contained HTML report.
    Report(ReportArgs),
    /// Print the ratios B/A between two `run` results, per broker, step, role and figure.
    Compare(CompareArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunWorkloadArgs {
    /// The workload file (TOML); bench/workloads/ has examples.
    pub workload: PathBuf,
    /// Write every figure as JSON here.
    #[arg(long)]
    pub output_json: Option<PathBuf>,
    /// Write the HTML report here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Rounds (replaces the workload's `rounds`).
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Only this broker of the workload (repeat for several).
    #[arg(long = "broker", value_name = "NAME")]
    pub brokers: Vec<String>,
    /// The ringlog-perf binary (default: next to this executable).
    #[arg(long)]
    pub perf_bin: Option<PathBuf>,
    /// Brokers' data directories and the processes' logs and results (must support O_DIRECT
    /// for ringlog: ext4 or xfs, not tmpfs).
    #[arg(long, default_value = "./ringlog-bench-data")]
    pub work_dir: PathBuf,
    /// Keep each broker's data directory after its round.
    #[arg(long)]
    pub keep_data: bool,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// A result written by `run --output-json`.
    pub result: PathBuf,
    /// Where to write the HTML.
    #[arg(long)]
    pub html: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The baseline result.
    pub a: PathBuf,
    /// The result compared with it.
    pub b: PathBuf,
    /// Compare this broker of A ...
    #[arg(long, requires = "b_broker")]
    pub a_broker: Option<String>,
    /// ... with this broker of B (A and B may be the same file).
    #[arg(long, requires = "a_broker")]
    pub b_broker: Option<String>,
}

/// When appends are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fsync {
    /// Kafka's default: the engine never fdatasyncs on its own (appends complete once
    /// written with O_DIRECT).
    Never,
    /// Group commit (`flush.messages=1`): every append waits for an fdatasync shared with
    /// the appends written while the previous one ran.
    Group,
}

impl Fsync {
    pub fn name(self) -> &'static str {
        match self {
            Self::Never => "never",
            Self::Group => "group",
        }
    }
}

/// Sizes take units: 512, 16KiB, 4GiB (powers of 1024) or 16KB, 4GB (powers of 1000).
fn size_arg(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

#[derive(Debug, clap::Args)]
pub struct AppendArgs {
    /// Directory holding the benchmark partition; the partition itself is DIR/partition-0,
    /// which is deleted first (and afterwards unless --keep or --no-close).
    #[arg(long, default_value = "./ringlog-data/bench-append")]
    pub dir: PathBuf,
    /// Bytes to append in all (rounded up to whole batches).
    #[arg(long, default_value = "1GiB", value_parser = size_arg)]
    pub total_bytes: u64,
    /// Size of the one batch that is appended, made of records of about 1 KiB.
    #[arg(long, default_value = "16KiB", value_parser = size_arg)]
    pub batch_bytes: u64,
    /// Concurrent appender tasks, each appending and awaiting in a closed loop.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub appenders: u64,
    /// When appends are made durable.
    #[arg(long, value_enum, default_value_t = Fsync::Never)]
    pub fsync: Fsync,
    /// Roll to a new segment past this size (Kafka's segment.bytes).
    #[arg(long, default_value = "1GiB", value_parser = size_arg)]
    pub segment_bytes: u64,
    /// Size of each of the engine's aligned write buffers (its largest single write).
    #[arg(long, default_value = "1MiB", value_parser = size_arg)]
    pub write_buffer_bytes: u64,
    /// The engine's limit on writes in flight for the partition.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub writes_in_flight: u64,
    /// Leave the partition on disk afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Exit without closing the log (implies --keep): leaves a crashed log for `recover`.
    #[arg(long)]
    pub no_close: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Where the executor runs and where results go, for the engine subcommands.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// CPU the executor is pinned to.
    #[arg(long, default_value_t = 0)]
    pub cpu: usize,
    /// Also write the results as a JSON object to this file.
    #[arg(long)]
    pub output_json: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct RecoverArgs {
    /// Directory given to `append --dir`; the partition opened is DIR/partition-0.
    #[arg(long, default_value = "./ringlog-data/bench-append")]
    pub dir: PathBuf,
    /// Leave the log as found after recovery instead of closing it cleanly.
    #[arg(long)]
    pub no_close: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, clap::Args)]
pub struct MeshArgs {
    /// The two CPUs the executors are pinned to: the client (shard 0), then the peer.
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    pub cpus: Vec<usize>,
    /// Round trips measured in each closed-loop scenario (after the warm-up).
    #[arg(long, default_value_t = 5_000)]
    pub requests: u64,
    /// Round trips made and discarded before measuring, in each closed-loop scenario.
    #[arg(long, default_value_t = 500)]
    pub warmup: u64,
    /// Sleep before each closed-loop request, long enough for the idle peer to park.
    #[arg(long, default_value_t = 100)]
    pub gap_us: u64,
    /// spin_before_park values (µs) for the extra closed-loop scenarios, set on both
    /// executors (0: park at once, the default).
    #[arg(long, value_delimiter = ',', default_value = "20,50,200")]
    pub spin_us: Vec<u64>,
    /// Requests outstanding in each pipelined scenario (no gap, default executor settings).
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    pub in_flight: Vec<u64>,
    /// Measured duration of each pipelined scenario, after a warm-up of a tenth of it.
    #[arg(long, default_value_t = 1000)]
    pub pipelined_ms: u64,
    /// Capacity of each bounded channel of the mesh.
    #[arg(long, default_value_t = 1024)]
    pub capacity: usize,
    /// Also write the results as a JSON object to this file.
    #[arg(long)]
    pub output_json: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Append(args) => cmd::append::run(args),
        Command::Recover(args) => cmd::recover::run(args),
        Command::Mesh(args) => cmd::mesh::run(args),
        Command::Run(args) => cmd::harness::run(args),
        Command::Report(args) => cmd::harness::report(args),
        Command::Compare(args) => cmd::harness::compare(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ringlog-bench: error: {error}");
            ExitCode::FAILURE
        }
    }
}
