//! The one place engine errors become Kafka error codes.

use kafka_protocol::ResponseError;
use ringlog_engine::batch::BatchError;
use ringlog_engine::{AppendError, ReadError};

/// The error code a Produce partition gets for a refused or failed append.
pub fn append_error(error: &AppendError) -> ResponseError {
    match error {
        AppendError::InvalidBatch(reason) => batch_error(reason),
        AppendError::TooLarge { .. } => ResponseError::MessageTooLarge,
        AppendError::Io(_) => ResponseError::KafkaStorageError,
        // The partition is being closed (deleted topic, shutdown): the client retries and
        // refreshes its metadata.
        AppendError::Closed => ResponseError::NotLeaderOrFollower,
    }
}

/// The error code for a batch that is not a valid producer batch.
pub fn batch_error(error: &BatchError) -> ResponseError {
    match error {
        BatchError::TooLarge { .. } => ResponseError::MessageTooLarge,
        // Kafka answers a batch whose records do not parse as INVALID_RECORD and one whose
        // bytes fail their checksum or framing as CORRUPT_MESSAGE.
        BatchError::BadRecord { .. }
        | BatchError::BadRecordCount { .. }
        | BatchError::BadTimestamps { .. } => ResponseError::InvalidRecord,
        BatchError::BadMagic(_)
        | BatchError::TooShort { .. }
        | BatchError::LengthMismatch { .. }
        | BatchError::BadLength { .. }
        | BatchError::CrcMismatch { .. } => ResponseError::CorruptMessage,
    }
}

/// The error code a Fetch or ListOffsets partition gets for a failed read.
pub fn read_error(error: &ReadError) -> ResponseError {
    match error {
        ReadError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        ReadError::Corrupt { .. } => ResponseError::CorruptMessage,
        ReadError::Io(_) => ResponseError::KafkaStorageError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_failures_are_corrupt_and_oversize_is_too_large() {
        let crc = BatchError::CrcMismatch {
            stored: 1,
            computed: 2,
        };
        assert_eq!(batch_error(&crc), ResponseError::CorruptMessage);
        let big = AppendError::TooLarge {
            size_bytes: 10,
            max_bytes: 5,
        };
        assert_eq!(append_error(&big), ResponseError::MessageTooLarge);
    }
}
