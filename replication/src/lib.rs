//! Replication for ringlog, as pure state machines that do no I/O, so a seeded simulation
//! drives exactly the code the broker runs.
//!
//! - [`leader`]: the leader's view of a partition: followers' log end offsets, the high
//!   watermark, the ISR changes it proposes to the controller, `min.insync.replicas`.
//! - [`follower`]: reconciling a follower's log with its leader's by leader epochs (KIP-101,
//!   KIP-279): the leader's divergence check and the follower's truncation point.
//! - [`epochs`]: the leader-epoch cache (epoch -> start offset) both of them consult.
//! - [`sim`]: a seeded simulation of a partition's replication that drives the three above and
//!   the real controller of `ringlog-cluster`, with faults, and checks it after every run.

pub mod epochs;
pub mod follower;
pub mod leader;
pub mod sim;

pub use follower::{divergence, truncation_offset, Diverging};
pub use leader::{FollowerRefusal, LeaderStart, LeaderState, NotEnoughReplicas};

/// A replica: the Kafka node id of the broker core holding it.
pub type ReplicaId = i32;
