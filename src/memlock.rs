//! The locked-memory check done before any executor starts.
//!
//! glommio registers `io_memory` bytes of buffers with io_uring per executor and needs about
//! 512 KiB more for its rings, all counted against RLIMIT_MEMLOCK. Below that it fails in
//! confusing ways or silently skips registering buffers, so the broker raises the soft limit
//! when the hard limit allows (or the process may raise it), and otherwise stops with the
//! command that fixes it.

use thiserror::Error;

/// Locked memory glommio needs per executor beyond its io_memory (measured: it fails below
/// 512 KiB even with io_memory registration skipped).
pub const RING_OVERHEAD_BYTES: u64 = 512 << 10;

/// The limit is too low and could not be raised.
#[derive(Debug, Error)]
#[error(
    "RLIMIT_MEMLOCK is {current_kib} KiB but {cores} executors need {required_kib} KiB of \
     locked memory for io_uring, and raising it failed ({reason}). Run `ulimit -l \
     {required_kib}` (or `ulimit -l unlimited`) as root in the shell that starts ringlog, set \
     `LimitMEMLOCK={required_kib}K` in its systemd unit, or add a memlock line for its user in \
     /etc/security/limits.conf; or start it with fewer --cores"
)]
pub struct MemlockError {
    pub current_kib: u64,
    pub required_kib: u64,
    pub cores: usize,
    pub reason: String,
}

/// Registered memory per executor beyond the tail cache's budget: the appender's buffers being
/// filled or written, and the O_DIRECT read-ahead windows (8 MiB at most each, several
/// streams). Reads that find no room there fall back to freshly mapped memory.
pub const IO_MEMORY_READS_BYTES: usize = 32 << 20;
/// The io_memory glommio starts with (its own default), used when more cannot be locked.
pub const IO_MEMORY_MIN_BYTES: usize = 10 << 20;

/// The io_memory an executor gets with a tail cache of `fetch_cache_bytes`: the cache keeps the
/// appender's registered buffers, so without room for the cache *and* the reads, every
/// read-ahead window is allocated afresh, and the kernel faults in and zeroes each of its pages
/// for the O_DIRECT read (measured: about one minor fault per 4 KiB read, half the broker's CPU
/// on a backlog consumer).
pub fn io_memory_bytes(fetch_cache_bytes: usize) -> usize {
    fetch_cache_bytes
        .saturating_add(IO_MEMORY_READS_BYTES)
        .max(IO_MEMORY_MIN_BYTES)
}

/// Makes sure `cores` executors may lock `wanted` bytes of io_memory each and returns what
/// they get: `wanted`, or [`IO_MEMORY_MIN_BYTES`] (with a warning) when the limit allows only
/// that, so a larger tail cache never stops a broker that started before.
pub fn choose_io_memory(cores: usize, wanted: usize) -> Result<usize, MemlockError> {
    match ensure(cores, wanted) {
        Ok(()) => Ok(wanted),
        Err(error) if wanted > IO_MEMORY_MIN_BYTES => {
            ensure(cores, IO_MEMORY_MIN_BYTES)?;
            tracing::warn!(
                %error,
                io_memory_bytes = IO_MEMORY_MIN_BYTES,
                "registered I/O memory reduced: backlog reads will use freshly mapped buffers \
                 and cost more CPU"
            );
            Ok(IO_MEMORY_MIN_BYTES)
        }
        Err(error) => Err(error),
    }
}

/// Bytes of locked memory `cores` executors need.
pub fn required_bytes(cores: usize, io_memory_bytes: usize) -> u64 {
    (cores as u64).saturating_mul(io_memory_bytes as u64 + RING_OVERHEAD_BYTES)
}

/// The (soft, hard) limits to set so that `required` bytes may be locked, or `None` when the
/// current soft limit already allows it. The hard limit is raised only when it is too low,
/// which needs CAP_SYS_RESOURCE.
pub fn limits_to_set(soft: u64, hard: u64, required: u64) -> Option<(u64, u64)> {
    if soft == libc::RLIM_INFINITY || soft >= required {
        return None;
    }
    let hard = if hard == libc::RLIM_INFINITY || hard >= required {
        hard
    } else {
        required
    };
    Some((required, hard))
}

/// Bit of CAP_IPC_LOCK in the capability masks of /proc/self/status.
const CAP_IPC_LOCK_BIT: u32 = 14;

/// Whether this process may lock memory regardless of RLIMIT_MEMLOCK (CAP_IPC_LOCK, which
/// root usually has even in containers where it cannot raise the limit itself).
fn has_ipc_lock_capability() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << CAP_IPC_LOCK_BIT) != 0)
}

/// Makes sure this process may lock what `cores` executors need, raising RLIMIT_MEMLOCK if
/// it must and can.
pub fn ensure(cores: usize, io_memory_bytes: usize) -> Result<(), MemlockError> {
    if has_ipc_lock_capability() {
        return Ok(());
    }
    let required = required_bytes(cores, io_memory_bytes);
    let error = |current: u64, reason: String| MemlockError {
        current_kib: current / 1024,
        required_kib: required.div_ceil(1024),
        cores,
        reason,
    };
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the rlimit we pass, which outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Err(error(0, std::io::Error::last_os_error().to_string()));
    }
    let Some((soft, hard)) = limits_to_set(limit.rlim_cur, limit.rlim_max, required) else {
        return Ok(());
    };
    let raised = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit only reads the rlimit we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } != 0 {
        let reason = std::io::Error::last_os_error().to_string();
        return Err(error(limit.rlim_cur, reason));
    }
    tracing::info!(
        from_kib = limit.rlim_cur / 1024,
        to_kib = soft / 1024,
        "raised RLIMIT_MEMLOCK for io_uring"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enough_or_unlimited_needs_no_change() {
        assert_eq!(limits_to_set(100, 100, 100), None);
        assert_eq!(
            limits_to_set(libc::RLIM_INFINITY, libc::RLIM_INFINITY, 100),
            None
        );
    }

    #[test]
    fn soft_limit_is_raised_and_hard_only_when_too_low() {
        assert_eq!(limits_to_set(10, 1000, 100), Some((100, 1000)));
        assert_eq!(limits_to_set(10, 50, 100), Some((100, 100)));
        assert_eq!(
            limits_to_set(10, libc::RLIM_INFINITY, 100),
            Some((100, libc::RLIM_INFINITY))
        );
    }

    #[test]
    fn the_error_says_what_to_run() {
        let error = MemlockError {
            current_kib: 64,
            required_kib: 21504,
            cores: 2,
            reason: "Operation not permitted".to_owned(),
        };
        let message = error.to_string();
        assert!(message.contains("ulimit -l 21504"), "{message}");
        assert!(message.contains("LimitMEMLOCK=21504K"), "{message}");
    }

    #[test]
    fn io_memory_holds_the_cache_and_the_reads() {
        assert_eq!(
            io_memory_bytes(64 << 20),
            (64 << 20) + IO_MEMORY_READS_BYTES
        );
        assert_eq!(
            io_memory_bytes(0),
            IO_MEMORY_READS_BYTES.max(IO_MEMORY_MIN_BYTES)
        );
        assert_eq!(io_memory_bytes(usize::MAX), usize::MAX);
    }

    #[test]
    fn required_bytes_count_every_executor() {
        assert_eq!(required_bytes(2, 10 << 20), 2 * ((10 << 20) + (512 << 10)));
    }
}
