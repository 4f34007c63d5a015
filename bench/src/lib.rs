//! ringlog-bench's library half, shared by the `ringlog-bench` binary, its tests and the
//! criterion benches: size parsing, the batch workload and the machine description that goes
//! with every result.

pub mod harness;
pub mod machine;
pub mod size;
pub mod workload;
