//! ringlog's Kafka clients: a small asynchronous one for glommio, and a blocking one for tools
//! (`blocking`).
//!
//! The glommio client was written for measuring brokers (`ringlog-perf`, in the bench crate);
//! it lives in this crate rather than in bench so that the broker can use it too: a
//! replication follower fetches from its leader as any Kafka client does. The blocking client
//! (`ringlog groups`, the `ringlog-bench` harness) runs on the same wire code and reports the
//! same `ClientError`; only its socket is its own.
//!
//! The glommio client is built the way the broker is: one instance per core, nothing shared
//! between cores, no locks. Each core opens its own connections to the partition leaders it
//! writes to or reads from, and keeps several requests in flight on each (Kafka answers in
//! order on a connection, so the in-flight requests are a FIFO and no correlation map is
//! needed).
//!
//! - `wire`: framing, request headers, encoding control requests and decoding their responses
//!   with the `kafka-protocol` crate, ApiVersions negotiation; both clients use it;
//! - `error`: the one error type of both clients, and Kafka error codes by name;
//! - `connection`: a TCP connection with a control path (one request at a time) and a
//!   split into a writer and a reader for pipelining;
//! - `batch`: RecordBatch v2, written by hand on the hot path (CRC32C, varints) and parsed
//!   without copying;
//! - `produce`: Produce requests written in place into one reusable buffer, and their
//!   responses;
//! - `cluster`: bootstrap, ApiVersions, Metadata (leaders per partition), topic
//!   creation, InitProducerId, ListOffsets;
//! - `fetch`: Fetch requests and their responses;
//! - `reconnect`: finding a leader again (fresh metadata, a new connection, backoff);
//! - `group`: the classic consumer-group protocol (JoinGroup, SyncGroup, Heartbeat,
//!   OffsetFetch, OffsetCommit, LeaveGroup) with a range assignor run by the group leader;
//! - `blocking`: the admin client over a `std` TCP stream (metadata, topics, groups,
//!   offsets), one request at a time; not for the data path.

pub mod batch;
pub mod blocking;
pub mod cluster;
pub mod connection;
pub mod error;
pub mod fetch;
pub mod group;
pub mod produce;
pub mod reconnect;
pub mod wire;

pub use error::ClientError;
