//! `ringlog-perf`: Kafka's perf-test tools (producer, consumer) and an end-to-end latency
//! test, on the thread-per-core client in `crate::client`. The binary
//! (`src/bin/ringlog-perf.rs`) parses flags and prints; the modules here do the work and
//! build the JSON document (`--output-json`) that the ringlog-bench harness reads.

pub mod consumer;
pub mod end_to_end;
pub mod fetcher;
mod group_member;
pub mod payload;
pub mod producer;
pub mod props;
pub mod shards;
pub mod stats;
