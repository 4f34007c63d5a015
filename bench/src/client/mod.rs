//! A small asynchronous Kafka client for glommio, written for measuring brokers.
//!
//! It is built the way the broker is: one instance per core, nothing shared between cores, no
//! locks. Each core opens its own connections to the partition leaders it writes to or reads
//! from, and keeps several requests in flight on each (Kafka answers in order on a connection,
//! so the in-flight requests are a FIFO and no correlation map is needed).
//!
//! - `wire`: framing, request headers, encoding control requests and decoding their responses
//!   with the `kafka-protocol` crate;
//! - `connection`: a TCP connection with a control path (one request at a time) and a
//!   split into a writer and a reader for pipelining;
//! - `batch`: RecordBatch v2, written by hand on the hot path (CRC32C, varints) and parsed
//!   without copying;
//! - `produce`: Produce requests written in place into one reusable buffer, and their
//!   responses;
//! - `cluster`: bootstrap, ApiVersions negotiation, Metadata (leaders per partition), topic
//!   creation, InitProducerId, ListOffsets;
//! - `fetch`: Fetch requests and their responses;
//! - `reconnect`: finding a leader again (fresh metadata, a new connection, backoff);
//! - `group`: the classic consumer-group protocol (JoinGroup, SyncGroup, Heartbeat,
//!   OffsetFetch, OffsetCommit, LeaveGroup) with a range assignor run by the group leader.

pub mod batch;
pub mod cluster;
pub mod connection;
pub mod error;
pub mod fetch;
pub mod group;
pub mod produce;
pub mod reconnect;
pub mod wire;

pub use error::ClientError;
