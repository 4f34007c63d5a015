//! Client shards: one glommio executor per `--cores`, each on its own thread, each with its
//! own connections. What they share is the `Meter` (one mutex per shard) and the stop flag.

use std::future::Future;
use std::time::{Instant, SystemTime};

use glommio::{LocalExecutorBuilder, Placement};
use ringlog_net::client::ClientError;

use super::stats::Meter;

/// The items shard `shard` of `count` takes: item i goes to shard i mod count.
pub fn deal<T: Clone>(items: &[T], count: usize, shard: usize) -> Vec<T> {
    items
        .iter()
        .enumerate()
        .filter(|(i, _)| i % count == shard)
        .map(|(_, item)| item.clone())
        .collect()
}

/// The CPU shard `shard` is pinned to (`cpus` dealt in turn), if any were given.
pub fn cpu_for(cpus: &[usize], shard: usize) -> Option<usize> {
    (!cpus.is_empty()).then(|| cpus[shard % cpus.len()])
}

/// Waits for every shard; the first failure stops the others (through the meter) and is
/// returned beside the successes.
pub fn join_all<T: Send + 'static>(
    handles: Vec<glommio::ExecutorJoinHandle<Result<T, ClientError>>>,
    meter: &Meter,
) -> (Vec<T>, Option<String>) {
    let mut done = Vec::new();
    let mut first_error = None;
    for handle in handles {
        match handle
            .join()
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            Ok(value) => done.push(value),
            Err(error) => {
                meter.stop();
                first_error.get_or_insert(error);
            }
        }
    }
    (done, first_error)
}

/// Runs `make()`'s future on a fresh executor thread and returns its output: for the
/// bootstrap steps that happen before the shards start.
pub fn run_once<T, F, G>(make: G) -> Result<T, String>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = Result<T, ClientError>> + 'static,
    T: Send + 'static,
{
    spawn_shard("ringlog-perf-setup", None, make)?
        .join()
        .map_err(|e| format!("setup executor: {e}"))?
        .map_err(|e| e.to_string())
}

/// Starts one shard. `cpu` pins it; `None` leaves placement to the kernel (the default: on a
/// machine shared with the broker under test, pinning both to the same cores only adds
/// contention).
pub fn spawn_shard<T, F, G>(
    name: &str,
    cpu: Option<usize>,
    make: G,
) -> Result<glommio::ExecutorJoinHandle<T>, String>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let placement = cpu.map_or(Placement::Unbound, Placement::Fixed);
    LocalExecutorBuilder::new(placement)
        .name(name)
        // The client does no file I/O: the smallest registered-buffer area glommio accepts.
        .io_memory(512 << 10)
        .spawn(make)
        .map_err(|e| format!("starting executor {name}: {e}"))
}

/// Instants on the run's clock, converted to wall-clock microseconds (for record stamps and
/// CreateTime timestamps).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub start: Instant,
    start_unix_us: u64,
}

impl Clock {
    pub fn now() -> Self {
        let start_unix_us = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        Self {
            start: Instant::now(),
            start_unix_us,
        }
    }

    pub fn unix_us(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.start);
        self.start_unix_us + u64::try_from(since.as_micros()).unwrap_or(u64::MAX / 2)
    }
}
