//! Starting and stopping the real `ringlog serve` binary for the integration tests.
//!
//! Each test gets its own broker on a free loopback port with a fresh data directory under
//! `CARGO_TARGET_TMPDIR`: that directory is on the target's filesystem (O_DIRECT needs ext4
//! or xfs; /tmp may be tmpfs). It is emptied when a broker starts, and removed when the
//! broker stops unless the test is failing: written segments are preallocated, so a passing
//! test should not leave that behind, and a failing one leaves its `broker.log` to read.

// Every test crate compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running broker, killed when dropped (also when a test panics).
pub struct Broker {
    pub child: Child,
    pub port: u16,
    pub data_dir: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

impl Broker {
    /// Starts `ringlog serve --cores <cores>` with `RUST_LOG=debug` (overridden by
    /// `extra_env` like any other variable) and waits until it accepts connections.
    pub fn start(name: &str, cores: usize, extra_env: &[(&str, String)]) -> Self {
        // With a node per core the broker also listens on the next `cores` ports.
        let port = free_port_run(cores + 1);
        let data_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("serve-{name}"));
        match std::fs::remove_dir_all(&data_dir) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => panic!("remove old data dir {}: {error}", data_dir.display()),
        }
        std::fs::create_dir_all(&data_dir).expect("create data dir");
        let log = std::fs::File::create(data_dir.join("broker.log")).expect("create log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringlog"));
        command
            .arg("serve")
            .arg("--cores")
            .arg(cores.to_string())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data_dir)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log);
        for (key, value) in extra_env {
            command.env(key, value);
        }
        let broker = Self {
            child: command.spawn().expect("start ringlog serve"),
            port,
            data_dir,
        };
        broker.wait_until_accepting();
        broker
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn wait_until_accepting(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(self.address()).is_err() {
            assert!(Instant::now() < deadline, "broker did not start accepting");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.address()).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// A port that was free a moment ago (bound with port 0, then released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// The first of `count` consecutive ports that were all free a moment ago.
pub fn free_port_run(count: usize) -> u16 {
    for _ in 0..100 {
        let first = free_port();
        let all_free = (1..count).all(|offset| {
            u16::try_from(offset)
                .ok()
                .and_then(|offset| first.checked_add(offset))
                .is_some_and(|port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        });
        if all_free {
            return first;
        }
    }
    panic!("no run of {count} free ports found");
}
