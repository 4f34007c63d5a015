//! One error enum per operation. Kafka error codes are assigned in `net`, from these.

use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

use crate::batch::BatchError;
use crate::scan::StopReason;

/// An I/O failure, shareable because one failed write fails every append it carried.
#[derive(Debug, Clone, Error)]
#[error("{op} {path}: {source}")]
pub struct IoFailure {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: Arc<std::io::Error>,
}

impl IoFailure {
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    /// True when the device is out of space (ENOSPC or EDQUOT). glommio wraps OS errors in
    /// messages, keeping their kind but not their number, so both are looked at.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self.source.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        ) || matches!(
            self.source.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
    }
}

/// Why an append was refused or failed. Nothing of a refused batch is stored; a failed one is
/// never visible to readers.
#[derive(Debug, Clone, Error)]
pub enum AppendError {
    /// The bytes are not a valid producer batch (Kafka: CORRUPT_MESSAGE / INVALID_RECORD).
    #[error("invalid record batch: {0}")]
    InvalidBatch(BatchError),
    /// Larger than `max.message.bytes` (Kafka: MESSAGE_TOO_LARGE).
    #[error("record batch of {size_bytes} bytes is over max.message.bytes {max_bytes}")]
    TooLarge { size_bytes: usize, max_bytes: usize },
    /// Writing or syncing failed; the append is not in the log (Kafka: KAFKA_STORAGE_ERROR).
    #[error("storage error: {0}")]
    Io(IoFailure),
    /// The log is closing or closed.
    #[error("the log is closed")]
    Closed,
}

/// Why [`crate::PartitionLog::append_replica`] stored nothing, or failed.
#[derive(Debug, Clone, Error)]
pub enum ReplicaAppendError {
    /// The batches do not continue the log: the first does not start at the log end offset
    /// (queued batches counted), or one does not start where the one before it ends. The
    /// follower's view of the leader is stale; it re-fetches from `expected`.
    #[error("replica batch starts at offset {actual}, expected {expected}")]
    OffsetMismatch { expected: i64, actual: i64 },
    #[error(transparent)]
    Append(#[from] AppendError),
}

/// Why [`crate::PartitionLog::append_checked`] stored nothing: the caller's admission check
/// refused the batch, or the append itself was refused or failed.
#[derive(Debug, Clone, Error)]
pub enum CheckedAppendError<E> {
    #[error("refused by the admission check")]
    Refused(E),
    #[error(transparent)]
    Append(#[from] AppendError),
}

/// Why a read failed.
#[derive(Debug, Clone, Error)]
pub enum ReadError {
    /// Outside `[log_start_offset, log_end_offset]` (Kafka: OFFSET_OUT_OF_RANGE).
    #[error("offset {offset} is out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start_offset: i64,
        log_end_offset: i64,
    },
    /// The stored bytes failed their check on the way out (Kafka: CORRUPT_MESSAGE).
    #[error("corrupt data in segment {segment_base_offset} at position {position}: {reason}")]
    Corrupt {
        segment_base_offset: i64,
        position: u64,
        reason: StopReason,
    },
    #[error("storage error: {0}")]
    Io(IoFailure),
}

/// Why a log could not be opened. Corruption is not among them: recovery truncates it and
/// reports it in [`crate::RecoveryReport`].
#[derive(Debug, Clone, Error)]
pub enum OpenError {
    #[error("{path} does not support O_DIRECT (tmpfs?): put the data directory on ext4 or xfs")]
    NoDirectIo { path: PathBuf },
    #[error("storage error: {0}")]
    Io(IoFailure),
}

/// Why an administrative operation (truncate, retention, checkpoint, close) failed.
#[derive(Debug, Clone, Error)]
pub enum LogError {
    #[error("storage error: {0}")]
    Io(IoFailure),
    #[error("the log is closed")]
    Closed,
}

impl From<IoFailure> for LogError {
    fn from(error: IoFailure) -> Self {
        Self::Io(error)
    }
}

impl From<IoFailure> for OpenError {
    fn from(error: IoFailure) -> Self {
        Self::Io(error)
    }
}

impl From<IoFailure> for ReadError {
    fn from(error: IoFailure) -> Self {
        Self::Io(error)
    }
}
