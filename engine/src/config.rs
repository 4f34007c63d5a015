//! Per-topic log settings, named and defaulted as Kafka names and defaults them.

use crate::batch::TimestampType;

/// Kafka's topic-level log settings plus the engine's own write-path limits.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `segment.bytes`: roll to a new segment before one grows past this (Kafka: 1 GiB).
    pub segment_bytes: u64,
    /// `segment.ms`: roll a non-empty segment this long after it was created (Kafka: 7 days).
    pub segment_ms: i64,
    /// `index.interval.bytes`: bytes between sparse index entries (Kafka: 4096).
    pub index_interval_bytes: u64,
    /// `segment.index.bytes`: capacity of each index file (Kafka: 10 MiB). The active
    /// segment's files have this length but are sparse: they take blocks as entries arrive.
    pub segment_index_bytes: usize,
    /// `retention.ms`: delete segments whose newest record is older than this; -1 keeps all.
    pub retention_ms: i64,
    /// `retention.bytes`: delete old segments while the log is larger than this; -1 keeps all.
    pub retention_bytes: i64,
    /// `max.message.bytes`: the largest batch accepted (Kafka: 1048588).
    pub max_message_bytes: usize,
    /// `flush.messages`: fdatasync once this many messages are unsynced. 1 is group commit:
    /// every append waits for an fdatasync, and one fdatasync covers every append written
    /// while the previous one ran. Kafka's default (never) is `u64::MAX`.
    pub flush_messages: u64,
    /// `flush.ms`: fdatasync when the oldest unsynced append is this old (checked on appends
    /// and by [`crate::PartitionLog::tick`]); `i64::MAX` is never.
    pub flush_ms: i64,
    /// `message.timestamp.type`.
    pub message_timestamp_type: TimestampType,
    /// `preallocate`: reserve a segment's blocks ahead of its appends, in chunks that grow
    /// with it, so appends do not allocate extents (which pushes io_uring completions to
    /// worker threads). Reserved from the first write on, never for a segment nobody writes;
    /// released (trimmed) when the segment is sealed or the log closed.
    pub preallocate: bool,
    /// With `preallocate`: while a partition's appends are small, write zeros a little ahead
    /// of them, so each append overwrites written blocks instead of converting preallocated
    /// (unwritten) ones; see [`crate::segment`]'s "Zeroing ahead".
    pub zero_ahead: bool,
    /// Size of each aligned write buffer; full buffers are written as they fill.
    pub write_buffer_bytes: usize,
    /// Writes in flight at once for one partition.
    pub max_writes_in_flight: usize,
    /// Appended bytes not yet copied into write buffers before new appends wait.
    pub max_pending_bytes: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            segment_index_bytes: 10 << 20,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            max_message_bytes: 1_048_588,
            flush_messages: u64::MAX,
            flush_ms: i64::MAX,
            message_timestamp_type: TimestampType::CreateTime,
            preallocate: true,
            zero_ahead: true,
            write_buffer_bytes: 1 << 20,
            max_writes_in_flight: 8,
            max_pending_bytes: 64 << 20,
        }
    }
}

impl LogConfig {
    /// True when every append waits for an fdatasync.
    pub fn group_commit(&self) -> bool {
        self.flush_messages <= 1
    }

    /// Clamps settings to what the on-disk format can hold: positions in the `.index` are
    /// u32, and buffers must be whole 4 KiB blocks.
    pub(crate) fn normalized(mut self) -> Self {
        self.segment_bytes = self.segment_bytes.clamp(4096, u64::from(u32::MAX));
        self.index_interval_bytes = self.index_interval_bytes.max(1);
        self.write_buffer_bytes = self.write_buffer_bytes.max(4096).next_multiple_of(4096);
        self.max_writes_in_flight = self.max_writes_in_flight.max(1);
        self.max_pending_bytes = self.max_pending_bytes.max(self.max_message_bytes);
        self
    }
}

// The clock (wall time for segment age and retention, monotonic time, timers) is the one
// the broker passes in: `ringlog_env::Clock`, re-exported by this crate.
