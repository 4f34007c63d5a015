//! ringlog's storage engine: a partition log of Kafka RecordBatch v2 segments, appended with
//! O_DIRECT writes on the owning shard's io_uring ring (glommio), indexed by sparse
//! memory-mapped offset and time indexes, recovered after a crash from a checkpoint.
//!
//! No network and no Kafka request types live here. See `README.md` beside this crate for the
//! invariants and `docs/storage-format.md` for the on-disk layout.

pub mod batch;
pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod fetch;
pub mod index;
pub mod leader_epochs;
mod log;
pub mod scan;
pub mod segment;

pub use cache::{CacheStats, TailCache};
pub use config::LogConfig;
pub use error::{
    AppendError, CheckedAppendError, IoFailure, LogError, OpenError, ReadError, ReplicaAppendError,
};
pub use fetch::{FetchedRecords, ReadSource, RecordPiece};
pub use log::{
    AppendInfo, Appending, Corruption, FetchedBatches, LogStats, OpenOptions, PartitionLog,
    RecoveryReport, TimestampOffset, WriteFault,
};
pub use ringlog_env::{Clock, ManualClock, SystemClock};
pub use ringlog_replication::epochs::{EpochCache, EpochEntry};
