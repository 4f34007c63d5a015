//! Node ids: how hosts, their cores and the controller are numbered.
//!
//! Every host has a host id (`--node-id`, unique in the cluster). With a node per core (the
//! default with more than one core), core `c` of host `h` is the Kafka node `h * 1024 + c`:
//! clients talk to the core that owns a partition directly, and a node id says which host and
//! which core it is. With one node per host (`--node-per-shard false`) the host is node
//! `h * 1024`, core 0's id. The controller of host `h` (a voter of the quorum) is known by the
//! host id itself: voters and brokers are numbered apart, as KRaft's separate quorum is.
//!
//! The scheme keeps today's single-host numbers (host 0: nodes 0, 1, ...) and lets a partition's
//! replicas sit on the same core index on every host, so replication runs core `c` to core `c`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Cores a host may have: node ids leave room for this many per host.
pub const CORES_PER_HOST_MAX: u32 = 1024;
/// The largest host id whose nodes all fit in Kafka's int32 node ids.
pub const HOST_ID_MAX: u32 = (i32::MAX as u32) / CORES_PER_HOST_MAX - 1;

/// A host (one `ringlog serve` process), by its `--node-id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HostId(pub u32);

/// A Kafka node: one core of a host (or a whole host, without a node per core).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub i32);

impl NodeId {
    /// Core `core` of `host`.
    pub fn of(host: HostId, core: u32) -> Self {
        assert!(host.0 <= HOST_ID_MAX, "host id {} out of range", host.0);
        assert!(core < CORES_PER_HOST_MAX, "core {core} out of range");
        let id = host.0 * CORES_PER_HOST_MAX + core;
        Self(i32::try_from(id).expect("fits by HOST_ID_MAX"))
    }

    /// The host and core of a node id; `None` for negative ids (Kafka's "no node", -1).
    pub fn split(self) -> Option<(HostId, u32)> {
        let id = u32::try_from(self.0).ok()?;
        Some((HostId(id / CORES_PER_HOST_MAX), id % CORES_PER_HOST_MAX))
    }

    pub fn host(self) -> Option<HostId> {
        self.split().map(|(host, _)| host)
    }

    pub fn core(self) -> Option<u32> {
        self.split().map(|(_, core)| core)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(formatter)
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(formatter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_name_their_host_and_core() {
        assert_eq!(NodeId::of(HostId(0), 3), NodeId(3));
        assert_eq!(NodeId::of(HostId(2), 5).0, 2 * 1024 + 5);
        assert_eq!(NodeId(2053).split(), Some((HostId(2), 5)));
        assert_eq!(NodeId(-1).split(), None);
        let last = NodeId::of(HostId(HOST_ID_MAX), CORES_PER_HOST_MAX - 1);
        assert_eq!(last.split(), Some((HostId(HOST_ID_MAX), 1023)));
    }
}
