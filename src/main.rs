//! The `ringlog` command line. Each subcommand lives in its own module; this file only parses
//! arguments, sets up logging and dispatches.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Survives the huge array counts a hostile request can claim (see `ringlog_net::alloc`).
#[global_allocator]
static ALLOCATOR: ringlog_net::alloc::ClaimTolerantAlloc = ringlog_net::alloc::ClaimTolerantAlloc;

use ringlog::{config, dump_log, groups_cli, quorum_cli, serve};

#[derive(Debug, Parser)]
#[command(name = "ringlog", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker: accept Kafka clients, one executor per core.
    Serve(Box<config::ServeArgs>),
    /// Print the batches of `.log` segments and the entries of `.index` / `.timeindex` files,
    /// checking them as Kafka's kafka-dump-log does.
    DumpLog(dump_log::Args),
    /// Consumer groups, like kafka-consumer-groups: list, describe (lag per partition),
    /// reset-offsets, delete. Works against any Kafka-compatible broker.
    Groups(groups_cli::Args),
    /// The controller quorum, like kafka-metadata-quorum: describe --status | --replication.
    MetadataQuorum(quorum_cli::Args),
}

/// Human-readable logs on stderr, filtered by RUST_LOG (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => {
            init_logging();
            serve::run(&args)
        }
        Command::DumpLog(args) => dump_log::run(&args),
        Command::Groups(args) => groups_cli::run(&args),
        Command::MetadataQuorum(args) => quorum_cli::run(&args),
    }
}
