//! ringlog-bench's library half, shared by the `ringlog-bench` and `ringlog-perf` binaries,
//! their tests and the criterion benches: size parsing, the batch workload, the machine
//! description that goes with every result, the glommio Kafka client, the perf tools and the
//! harness that runs them against brokers.

pub mod client;
pub mod harness;
pub mod machine;
pub mod perf;
pub mod size;
pub mod workload;
