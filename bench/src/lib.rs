//! ringlog-bench's library half, shared by the `ringlog-bench` and `ringlog-perf` binaries,
//! their tests and the criterion benches: size parsing, the batch workload, the machine
//! description that goes with every result, the perf tools and the harness that runs them
//! against brokers.
//!
//! The Kafka clients they use are not here: the glommio client of the perf tools and the
//! blocking admin client of the harness live in `ringlog_net::client`, where the broker (whose
//! replication followers fetch from leaders) and `ringlog groups` use them too.

pub mod harness;
pub mod machine;
pub mod perf;
pub mod size;
pub mod workload;
