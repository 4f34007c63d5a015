//! What a result was measured on: the code's git SHA, the kernel, the CPU, the load, and the
//! locked-memory limit that glommio's io_uring rings and buffers need.

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

/// glommio refuses to start an executor below this RLIMIT_MEMLOCK (its own check).
pub const GLOMMIO_MIN_MEMLOCK_BYTES: u64 = 512 << 10;

/// The machine and code a measurement belongs to, recorded beside every result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineInfo {
    pub git_sha: String,
    /// Uncommitted changes in the work tree, when git could tell.
    pub git_dirty: Option<bool>,
    pub kernel: String,
    pub cpu_model: String,
    pub cores: usize,
    /// `/proc/loadavg`'s 1-, 5- and 15-minute load when collected (before the run).
    pub loadavg: String,
}

impl MachineInfo {
    pub fn collect() -> Self {
        let (git_sha, git_dirty) = git_state();
        Self {
            git_sha,
            git_dirty,
            kernel: kernel_release(),
            cpu_model: cpu_model(),
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            loadavg: loadavg(),
        }
    }
}

fn command_output(dir: &Path, program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// HEAD of the checkout the binary was built from when it still exists (results are usually
/// produced by a freshly built binary), else of the current directory, else "unknown".
fn git_state() -> (String, Option<bool>) {
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [built_from.to_path_buf(), std::path::PathBuf::from(".")];
    for dir in candidates.iter().filter(|d| d.is_dir()) {
        if let Some(sha) = command_output(dir, "git", &["rev-parse", "HEAD"]) {
            let dirty = command_output(
                dir,
                "git",
                &["status", "--porcelain", "--untracked-files=no"],
            )
            .map(|status| !status.is_empty());
            return (sha, dirty);
        }
    }
    ("unknown".to_string(), None)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .ok()
        .or_else(|| command_output(Path::new("."), "uname", &["-r"]))
        .unwrap_or_else(|| "unknown".to_string())
}

fn cpu_model() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(key, _)| key.trim() == "model name")
        .map(|(_, value)| value.trim().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

/// `/proc/loadavg`'s 1-, 5- and 15-minute load averages, now.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}

/// The soft RLIMIT_MEMLOCK in bytes (`u64::MAX` when unlimited), `None` if it cannot be read.
pub fn memlock_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct we pass, which lives for the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    (rc == 0).then_some(limit.rlim_cur)
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Checks that an executor with `io_memory` bytes of registered buffers can start. An error
/// is a message for the user: glommio itself would fail with a less helpful one. A warning
/// (the limit is below `io_memory` for a non-root user, so buffer registration may fail and
/// glommio falls back to slower unregistered buffers) is returned as `Ok(Some(..))`.
pub fn check_memlock(io_memory: u64) -> Result<Option<String>, String> {
    let Some(limit) = memlock_limit() else {
        return Ok(Some("cannot read RLIMIT_MEMLOCK; continuing".to_string()));
    };
    let raise = "raise it with `ulimit -l unlimited` (or `memlock` in /etc/security/limits.conf, \
                 or LimitMEMLOCK= for a systemd unit)";
    if limit < GLOMMIO_MIN_MEMLOCK_BYTES {
        return Err(format!(
            "locked-memory limit (RLIMIT_MEMLOCK) is {limit} bytes; glommio's io_uring \
             executor needs at least {GLOMMIO_MIN_MEMLOCK_BYTES}: {raise}"
        ));
    }
    if limit < io_memory && !running_as_root() {
        return Ok(Some(format!(
            "locked-memory limit is {limit} bytes, below the {io_memory} bytes of io_memory: \
             io_uring buffer registration may fail and slow the run; {raise}"
        )));
    }
    Ok(None)
}
