//! The cluster's metadata, as state machines that do no I/O.
//!
//! - [`node`]: how hosts, their cores (Kafka nodes) and controllers are numbered.
//! - [`records`]: the metadata log's records, one [`records::RecordBatch`] per Raft entry.
//! - [`image`]: the cluster as the committed log describes it; every broker applies it.
//! - [`controller`]: the active controller's decisions (registration, fencing, placement,
//!   leader election), returning the records to propose.
//! - [`quorum`]: one voter of the controller quorum (raft-rs) driving the controller, with
//!   [`log`] (its log and what it persists) and [`codec`] (raft messages on the wire).
//! - [`sim`]: a deterministic simulation of a quorum and its brokers from a seed.
//!
//! Time comes in as arguments (`now_ms`) and ids are drawn by the caller, so a simulation
//! decides everything from a seed.

pub mod codec;
pub mod controller;
pub mod image;
mod legacy;
pub mod log;
pub mod node;
pub mod quorum;
pub mod records;
pub mod rng;
pub mod sim;

pub use controller::{
    check_topic_name, AlterPartition, Controller, ControllerSettings, Election, NewTopic, Refusal,
};
pub use image::MetadataImage;
pub use node::{HostId, NodeId};
pub use quorum::{
    CatchUp, Command, CommandError, ControllerNode, Input, Output, QuorumSettings, Reply, RequestId,
};
pub use records::{MetadataRecord, RecordBatch};
