//! The subcommands, and what they share: errors, the executor they run on, the partition
//! directory convention and JSON output.

pub mod append;
pub mod harness;
pub mod mesh;
pub mod recover;

use std::future::Future;
use std::path::{Path, PathBuf};

use glommio::{LocalExecutorBuilder, Placement};
use ringlog_bench::machine;
use ringlog_engine::{AppendError, LogError, OpenError};
use serde::Serialize;

/// Name of the one partition directory inside `--dir`. Only this directory is ever deleted,
/// so a mistyped `--dir` cannot wipe anything the benchmark did not create.
const PARTITION_DIR: &str = "partition-0";

/// Everything that can end a run early, as a message for the user.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("starting the glommio executor on CPU {cpu}: {message}")]
    Executor { cpu: usize, message: String },
    #[error("opening the log: {0}")]
    Open(#[from] OpenError),
    #[error("appending: {0}")]
    Append(#[from] AppendError),
    #[error("closing the log: {0}")]
    Close(#[from] LogError),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("channel mesh: {0}")]
    Mesh(String),
    #[error("latency histogram: {0}")]
    Histogram(String),
}

impl BenchError {
    pub fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

pub fn partition_dir(dir: &Path) -> PathBuf {
    dir.join(PARTITION_DIR)
}

/// Runs `make()`'s future on a fresh glommio executor pinned to `cpu` and returns its output.
/// The memlock limit is checked first: glommio's own failure names no remedy.
pub fn run_on_executor<T, F, G>(cpu: usize, io_memory: usize, make: G) -> Result<T, BenchError>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = Result<T, BenchError>> + 'static,
    T: Send + 'static,
{
    match machine::check_memlock(io_memory as u64) {
        Ok(None) => {}
        Ok(Some(warning)) => eprintln!("ringlog-bench: warning: {warning}"),
        Err(message) => return Err(BenchError::Executor { cpu, message }),
    }
    let executor_error = |e: glommio::GlommioError<()>| BenchError::Executor {
        cpu,
        message: e.to_string(),
    };
    LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .name("ringlog-bench")
        .io_memory(io_memory)
        .spawn(make)
        .map_err(executor_error)?
        .join()
        .map_err(executor_error)?
}

/// Writes `value` as pretty JSON to `path`, when one was asked for.
pub fn write_json(path: Option<&Path>, value: &impl Serialize) -> Result<(), BenchError> {
    let Some(path) = path else {
        return Ok(());
    };
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| BenchError::io("encoding JSON for", path, e.into()))?;
    text.push('\n');
    std::fs::write(path, text).map_err(|e| BenchError::io("writing", path, e))
}

/// Milliseconds as a float, for human and JSON output.
pub fn millis(duration: std::time::Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Closes the log cleanly when asked and says how long it took; `None` leaves it as a crash
/// would (for `recover`).
pub async fn timed_close(
    log: &ringlog_engine::PartitionLog,
    close: bool,
) -> Result<Option<std::time::Duration>, BenchError> {
    if !close {
        return Ok(None);
    }
    let closing = std::time::Instant::now();
    log.close().await?;
    Ok(Some(closing.elapsed()))
}
