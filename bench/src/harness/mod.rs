//! The harness behind `ringlog-bench run`, `report` and `compare`: it measures Kafka-compatible
//! brokers by running ringlog-perf producer and consumer processes against them, as a workload
//! file describes, and collects their JSON results.
//!
//! - `spec`: the workload file (brokers, topics, steps of producers and consumers);
//! - `perf`: ringlog-perf's command lines and result files;
//! - `runner`: starts and stops brokers, creates topics, runs the steps, round by round with
//!   the brokers taking turns so that a noisy machine affects them alike;
//! - `results`: the run's JSON and how figures add up across processes and rounds;
//! - `compare` and `html`: ratios between two runs, and a self-contained HTML report.

pub mod compare;
pub mod html;
pub mod perf;
pub mod results;
pub mod runner;
pub mod spec;
