//! The `ringlog` command line. Each subcommand lives in its own module; this file only parses
//! arguments and dispatches.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod dump_log;

#[derive(Debug, Parser)]
#[command(name = "ringlog", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the batches of `.log` segments and the entries of `.index` / `.timeindex` files,
    /// checking them as Kafka's kafka-dump-log does.
    DumpLog(dump_log::Args),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::DumpLog(args) => dump_log::run(&args),
    }
}
