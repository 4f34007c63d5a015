//! Kafka RecordBatch v2 (magic 2), read and checked on the raw bytes.
//!
//! The engine never decodes records on the append path: it checks the 61-byte header, the
//! CRC32C that covers everything from `attributes` to the end of the batch, and the sizes, then
//! rewrites only the fields the broker owns (base offset, and for LogAppendTime topics the
//! timestamp type and max timestamp, which are inside the CRC, so the CRC is recomputed).
//! Compressed batches pass through untouched.
//!
//! ```text
//! offset  size  field                      in CRC
//!      0     8  base_offset                no   (assigned by the broker)
//!      8     4  batch_length               no   (bytes after this field)
//!     12     4  partition_leader_epoch     no
//!     16     1  magic (= 2)                no
//!     17     4  crc (CRC32C of 21..end)    no
//!     21     2  attributes                 yes  (bits 0-2 compression, 3 timestamp type,
//!                                                4 transactional, 5 control)
//!     23     4  last_offset_delta          yes
//!     27     8  base_timestamp             yes
//!     35     8  max_timestamp              yes
//!     43     8  producer_id                yes
//!     51     2  producer_epoch             yes
//!     53     4  base_sequence              yes
//!     57     4  records_count              yes
//!     61     …  records                    yes
//! ```
//! All integers are big-endian.

use thiserror::Error;

/// Bytes of the batch header, up to and including `records_count`.
pub const HEADER_BYTES: usize = 61;
/// `base_offset` plus `batch_length`: the bytes not counted by `batch_length`.
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// The only magic this engine stores.
pub const MAGIC_V2: i8 = 2;

const BASE_OFFSET_AT: usize = 0;
const BATCH_LENGTH_AT: usize = 8;
const PARTITION_LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORDS_COUNT_AT: usize = 57;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_BIT: i16 = 0x08;
const TRANSACTIONAL_BIT: i16 = 0x10;
const CONTROL_BIT: i16 = 0x20;

/// Why a byte range is not a valid v2 record batch.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BatchError {
    #[error("batch too short: {actual_bytes} bytes, a v2 header needs {HEADER_BYTES}")]
    TooShort { actual_bytes: usize },
    #[error("batch_length {declared} does not match the {actual_bytes} bytes given")]
    LengthMismatch { declared: i64, actual_bytes: usize },
    #[error("batch_length {declared} is impossible (minimum {min}, maximum {max})")]
    BadLength { declared: i64, min: i64, max: i64 },
    #[error("unsupported magic {0} (only v2 record batches are stored)")]
    BadMagic(i8),
    #[error("CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error(
        "records_count {records_count} is inconsistent with last_offset_delta {last_offset_delta}"
    )]
    BadRecordCount {
        records_count: i32,
        last_offset_delta: i32,
    },
    #[error("max_timestamp {max_timestamp} is before base_timestamp {base_timestamp}")]
    BadTimestamps {
        base_timestamp: i64,
        max_timestamp: i64,
    },
    #[error("batch of {size_bytes} bytes is over max.message.bytes {max_bytes}")]
    TooLarge { size_bytes: usize, max_bytes: usize },
    #[error("record {index} is malformed: {reason}")]
    BadRecord { index: usize, reason: &'static str },
}

/// The compression codec named by a batch's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
    Unknown(u8),
}

impl Compression {
    fn from_attributes(attributes: i16) -> Self {
        match (attributes & COMPRESSION_MASK) as u8 {
            0 => Self::None,
            1 => Self::Gzip,
            2 => Self::Snappy,
            3 => Self::Lz4,
            4 => Self::Zstd,
            other => Self::Unknown(other),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
            Self::Unknown(_) => "unknown",
        }
    }
}

/// Kafka's `message.timestamp.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampType {
    #[default]
    CreateTime,
    LogAppendTime,
}

/// The decoded 61-byte header of a v2 record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn be_i64(bytes: &[u8], at: usize) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    i64::from_be_bytes(raw)
}

fn be_i32(bytes: &[u8], at: usize) -> i32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    i32::from_be_bytes(raw)
}

fn be_i16(bytes: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// The total size of the batch that starts at `bytes`, read from its first 12 bytes, or `None`
/// when fewer than 12 bytes are given. The value is unchecked: it may be negative or absurd.
pub fn declared_total_bytes(bytes: &[u8]) -> Option<i64> {
    if bytes.len() < LOG_OVERHEAD_BYTES {
        return None;
    }
    Some(i64::from(be_i32(bytes, BATCH_LENGTH_AT)) + LOG_OVERHEAD_BYTES as i64)
}

impl BatchHeader {
    /// Decodes the header fields without checking anything but that 61 bytes are there.
    pub fn decode(bytes: &[u8]) -> Result<Self, BatchError> {
        if bytes.len() < HEADER_BYTES {
            return Err(BatchError::TooShort {
                actual_bytes: bytes.len(),
            });
        }
        Ok(Self {
            base_offset: be_i64(bytes, BASE_OFFSET_AT),
            batch_length: be_i32(bytes, BATCH_LENGTH_AT),
            partition_leader_epoch: be_i32(bytes, PARTITION_LEADER_EPOCH_AT),
            magic: bytes[MAGIC_AT] as i8,
            crc: u32::from_be_bytes([
                bytes[CRC_AT],
                bytes[CRC_AT + 1],
                bytes[CRC_AT + 2],
                bytes[CRC_AT + 3],
            ]),
            attributes: be_i16(bytes, ATTRIBUTES_AT),
            last_offset_delta: be_i32(bytes, LAST_OFFSET_DELTA_AT),
            base_timestamp: be_i64(bytes, BASE_TIMESTAMP_AT),
            max_timestamp: be_i64(bytes, MAX_TIMESTAMP_AT),
            producer_id: be_i64(bytes, PRODUCER_ID_AT),
            producer_epoch: be_i16(bytes, PRODUCER_EPOCH_AT),
            base_sequence: be_i32(bytes, BASE_SEQUENCE_AT),
            records_count: be_i32(bytes, RECORDS_COUNT_AT),
        })
    }

    /// Decodes and checks everything that can be checked without the CRC: magic, a length that
    /// can hold the header and is at most `max_total_bytes`, and a record count consistent with
    /// the offset delta.
    pub fn decode_checked(bytes: &[u8], max_total_bytes: usize) -> Result<Self, BatchError> {
        let header = Self::decode(bytes)?;
        if header.magic != MAGIC_V2 {
            return Err(BatchError::BadMagic(header.magic));
        }
        let total = i64::from(header.batch_length) + LOG_OVERHEAD_BYTES as i64;
        let max_total = i64::try_from(max_total_bytes).unwrap_or(i64::MAX);
        if total < HEADER_BYTES as i64 || total > max_total {
            return Err(BatchError::BadLength {
                declared: i64::from(header.batch_length),
                min: (HEADER_BYTES - LOG_OVERHEAD_BYTES) as i64,
                max: max_total - LOG_OVERHEAD_BYTES as i64,
            });
        }
        // A compacted batch may hold fewer records than its offset span, never more.
        let count_fits = header.records_count >= 0
            && header.last_offset_delta >= 0
            && i64::from(header.records_count) <= i64::from(header.last_offset_delta) + 1;
        if !count_fits {
            return Err(BatchError::BadRecordCount {
                records_count: header.records_count,
                last_offset_delta: header.last_offset_delta,
            });
        }
        Ok(header)
    }

    /// Bytes of the whole batch, header included.
    pub fn total_bytes(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD_BYTES
    }

    /// Saturating: `base_offset` is outside the CRC, so a damaged one must not overflow.
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }

    /// The offset after this batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset().saturating_add(1)
    }

    pub fn compression(&self) -> Compression {
        Compression::from_attributes(self.attributes)
    }

    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes & TIMESTAMP_TYPE_BIT != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }
}

/// CRC32C of a whole batch as Kafka defines it: from `attributes` to the end.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES_AT..])
}

/// Checks that `batch` is exactly one whole, valid v2 batch of at most `max_total_bytes`:
/// structure, then CRC. Returns its header.
pub fn validate(batch: &[u8], max_total_bytes: usize) -> Result<BatchHeader, BatchError> {
    if batch.len() > max_total_bytes {
        return Err(BatchError::TooLarge {
            size_bytes: batch.len(),
            max_bytes: max_total_bytes,
        });
    }
    let header = BatchHeader::decode_checked(batch, usize::MAX)?;
    if header.total_bytes() != batch.len() {
        return Err(BatchError::LengthMismatch {
            declared: i64::from(header.batch_length),
            actual_bytes: batch.len(),
        });
    }
    let computed = compute_crc(batch);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// Producers always send a batch with one record per offset of its span, and a max timestamp
/// no earlier than the base one; anything else on the produce path is a malformed batch. The
/// records of an uncompressed batch are walked to prove the count; a compressed batch's are
/// checked where it is decompressed (above the engine).
pub fn check_producer_batch(header: &BatchHeader, batch: &[u8]) -> Result<(), BatchError> {
    if header.records_count < 1 || header.records_count - 1 != header.last_offset_delta {
        return Err(BatchError::BadRecordCount {
            records_count: header.records_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    if header.max_timestamp < header.base_timestamp {
        return Err(BatchError::BadTimestamps {
            base_timestamp: header.base_timestamp,
            max_timestamp: header.max_timestamp,
        });
    }
    if header.compression() == Compression::None {
        check_uncompressed_records(batch)?;
    }
    Ok(())
}

/// The rewritten header of a batch being appended: the broker-owned fields set, the CRC
/// recomputed when a field inside it changed. Only these 61 bytes differ from the producer's
/// batch, so the body is copied once, straight into the write buffer.
#[derive(Clone, Copy)]
pub struct StampedHeader {
    pub bytes: [u8; HEADER_BYTES],
}

impl StampedHeader {
    /// Stamps `base_offset` (outside the CRC) and, when `log_append_time_ms` is given, the
    /// LogAppendTime type and max timestamp (inside the CRC, recomputed over `batch`'s body).
    pub fn stamp(batch: &[u8], base_offset: i64, log_append_time_ms: Option<i64>) -> Self {
        let mut bytes = [0u8; HEADER_BYTES];
        bytes.copy_from_slice(&batch[..HEADER_BYTES]);
        bytes[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_be_bytes());
        if let Some(now_ms) = log_append_time_ms {
            let attributes = be_i16(&bytes, ATTRIBUTES_AT) | TIMESTAMP_TYPE_BIT;
            bytes[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
            bytes[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&now_ms.to_be_bytes());
            let crc = crc32c::crc32c_append(
                crc32c::crc32c(&bytes[ATTRIBUTES_AT..]),
                &batch[HEADER_BYTES..],
            );
            bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        }
        Self { bytes }
    }

    /// The header exactly as `batch` carries it: a replica stores the leader's batches byte
    /// for byte, offsets, epoch and timestamps included.
    pub fn unchanged(batch: &[u8]) -> Self {
        let mut bytes = [0u8; HEADER_BYTES];
        bytes.copy_from_slice(&batch[..HEADER_BYTES]);
        Self { bytes }
    }

    /// Stamps the leader epoch that wrote the batch. The field is outside the CRC (which
    /// starts at the attributes), so nothing is recomputed.
    pub fn set_partition_leader_epoch(&mut self, epoch: i32) {
        self.bytes[PARTITION_LEADER_EPOCH_AT..PARTITION_LEADER_EPOCH_AT + 4]
            .copy_from_slice(&epoch.to_be_bytes());
    }
}

/// One record of an uncompressed batch, borrowed from the batch's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset_delta: i32,
    pub timestamp_delta: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a [u8], Option<&'a [u8]>)>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn varlong(&mut self) -> Option<i64> {
        let mut raw: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = *self.bytes.get(self.at)?;
            self.at += 1;
            raw |= u64::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                // Zig-zag decoding.
                return Some((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
        }
        None
    }

    fn varint(&mut self) -> Option<i32> {
        i32::try_from(self.varlong()?).ok()
    }

    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(len)?;
        let slice = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }

    /// A varint length then that many bytes; length -1 is null.
    fn nullable_bytes(&mut self) -> Option<Option<&'a [u8]>> {
        match self.varint()? {
            -1 => Some(None),
            len if len >= 0 => Some(Some(self.take(len as usize)?)),
            _ => None,
        }
    }
}

/// The records of an uncompressed batch (whole, validated bytes). Compressed batches need their
/// codec first; callers that must look inside them decompress at a layer above the engine.
pub fn uncompressed_records(batch: &[u8]) -> Result<Vec<RecordView<'_>>, BatchError> {
    let mut records = Vec::new();
    walk_records(batch, true, |record| records.push(record))?;
    Ok(records)
}

/// Checks, without allocating, that an uncompressed batch's body holds exactly `records_count`
/// well-formed records with offset deltas 0, 1, 2, ... (what every producer sends), so that a
/// batch cannot claim more offsets than it carries.
pub fn check_uncompressed_records(batch: &[u8]) -> Result<(), BatchError> {
    let mut expected_delta = 0i32;
    let mut in_sequence = true;
    walk_records(batch, false, |record| {
        in_sequence &= record.offset_delta == expected_delta;
        expected_delta = expected_delta.saturating_add(1);
    })?;
    if !in_sequence {
        return Err(BatchError::BadRecord {
            index: 0,
            reason: "record offset deltas are not 0, 1, 2, ...",
        });
    }
    Ok(())
}

/// Walks the records of an uncompressed batch, collecting each record's headers only when
/// `with_headers` (the check on the append path does not need them).
fn walk_records<'a>(
    batch: &'a [u8],
    with_headers: bool,
    mut visit: impl FnMut(RecordView<'a>),
) -> Result<(), BatchError> {
    let header = BatchHeader::decode(batch)?;
    let count = usize::try_from(header.records_count).map_err(|_| BatchError::BadRecordCount {
        records_count: header.records_count,
        last_offset_delta: header.last_offset_delta,
    })?;
    let mut cursor = Cursor {
        bytes: batch,
        at: HEADER_BYTES,
    };
    for index in 0..count {
        let bad = |reason| BatchError::BadRecord { index, reason };
        let length = cursor.varint().ok_or(bad("bad length"))?;
        let body = cursor
            .take(usize::try_from(length).map_err(|_| bad("negative length"))?)
            .ok_or(bad("length past the end of the batch"))?;
        let mut record = Cursor { bytes: body, at: 0 };
        record.take(1).ok_or(bad("no attributes"))?;
        let timestamp_delta = record.varlong().ok_or(bad("bad timestamp delta"))?;
        let offset_delta = record.varint().ok_or(bad("bad offset delta"))?;
        let key = record.nullable_bytes().ok_or(bad("bad key"))?;
        let value = record.nullable_bytes().ok_or(bad("bad value"))?;
        let header_count = record.varint().ok_or(bad("bad header count"))?;
        let header_count = usize::try_from(header_count).map_err(|_| bad("negative headers"))?;
        let mut headers = Vec::new();
        for _ in 0..header_count {
            let name = record
                .nullable_bytes()
                .ok_or(bad("bad header key"))?
                .ok_or(bad("null header key"))?;
            let value = record.nullable_bytes().ok_or(bad("bad header value"))?;
            if with_headers {
                headers.push((name, value));
            }
        }
        if record.at != body.len() {
            return Err(bad("trailing bytes in record"));
        }
        visit(RecordView {
            offset_delta,
            timestamp_delta,
            key,
            value,
            headers,
        });
    }
    if cursor.at != batch.len() {
        return Err(BatchError::BadRecord {
            index: count,
            reason: "bytes after the last record",
        });
    }
    Ok(())
}

/// Builds uncompressed v2 batches. Used by tests, the benchmark harness and tools; the broker
/// itself stores what clients send.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    base_timestamp: i64,
    records: Vec<BuiltRecord>,
}

/// (timestamp, key, value) of a record given to [`BatchBuilder`].
type BuiltRecord = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

fn put_varlong(out: &mut Vec<u8>, value: i64) {
    let mut raw = ((value << 1) ^ (value >> 63)) as u64;
    loop {
        let byte = (raw & 0x7f) as u8;
        raw >>= 7;
        if raw == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_nullable(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varlong(out, -1),
        Some(bytes) => {
            put_varlong(out, bytes.len() as i64);
            out.extend_from_slice(bytes);
        }
    }
}

impl BatchBuilder {
    pub fn new(base_timestamp: i64) -> Self {
        Self {
            base_timestamp,
            records: Vec::new(),
        }
    }

    pub fn record(mut self, timestamp: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> Self {
        self.records.push((
            timestamp,
            key.map(<[u8]>::to_vec),
            value.map(<[u8]>::to_vec),
        ));
        self
    }

    /// The batch bytes with base offset 0 and a correct CRC. Panics on an empty builder, which
    /// is a programmer error: Kafka has no empty producer batches.
    pub fn build(&self) -> Vec<u8> {
        assert!(
            !self.records.is_empty(),
            "a batch needs at least one record"
        );
        let mut out = vec![0u8; HEADER_BYTES];
        let mut body = Vec::new();
        let mut max_timestamp = self.base_timestamp;
        for (delta, (timestamp, key, value)) in self.records.iter().enumerate() {
            max_timestamp = max_timestamp.max(*timestamp);
            body.clear();
            body.push(0); // record attributes
            put_varlong(&mut body, timestamp - self.base_timestamp);
            put_varlong(&mut body, delta as i64);
            put_nullable(&mut body, key.as_deref());
            put_nullable(&mut body, value.as_deref());
            put_varlong(&mut body, 0); // header count
            put_varlong(&mut out, body.len() as i64);
            out.extend_from_slice(&body);
        }
        let count = self.records.len() as i32;
        let batch_length = (out.len() - LOG_OVERHEAD_BYTES) as i32;
        out[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&batch_length.to_be_bytes());
        out[PARTITION_LEADER_EPOCH_AT..PARTITION_LEADER_EPOCH_AT + 4]
            .copy_from_slice(&(-1i32).to_be_bytes());
        out[MAGIC_AT] = MAGIC_V2 as u8;
        out[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4]
            .copy_from_slice(&(count - 1).to_be_bytes());
        out[BASE_TIMESTAMP_AT..BASE_TIMESTAMP_AT + 8]
            .copy_from_slice(&self.base_timestamp.to_be_bytes());
        out[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&max_timestamp.to_be_bytes());
        out[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&(-1i64).to_be_bytes());
        out[PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 2].copy_from_slice(&(-1i16).to_be_bytes());
        out[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4].copy_from_slice(&(-1i32).to_be_bytes());
        out[RECORDS_COUNT_AT..RECORDS_COUNT_AT + 4].copy_from_slice(&count.to_be_bytes());
        let crc = compute_crc(&out);
        out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        BatchBuilder::new(1_000)
            .record(1_000, Some(b"k1"), Some(b"v1"))
            .record(1_005, None, Some(b"value two"))
            .record(999, Some(b"k3"), None)
            .build()
    }

    #[test]
    fn built_batch_validates_and_reads_back() {
        let batch = sample();
        let header = validate(&batch, 1 << 20).expect("valid");
        assert_eq!(header.records_count, 3);
        assert_eq!(header.last_offset_delta, 2);
        assert_eq!(header.max_timestamp, 1_005);
        assert_eq!(header.compression(), Compression::None);
        check_producer_batch(&header, &batch).expect("producer batch");
        let records = uncompressed_records(&batch).expect("records");
        assert_eq!(records.len(), 3);
        assert_eq!(records[1].value, Some(&b"value two"[..]));
        assert_eq!(records[2].timestamp_delta, -1);
        assert_eq!(records[2].value, None);
    }

    #[test]
    fn every_single_bit_flip_in_crc_range_is_caught() {
        let batch = sample();
        for byte in ATTRIBUTES_AT..batch.len() {
            for bit in 0..8 {
                let mut bad = batch.clone();
                bad[byte] ^= 1 << bit;
                assert!(validate(&bad, 1 << 20).is_err(), "flip at {byte}:{bit}");
            }
        }
    }

    #[test]
    fn refuses_wrong_magic_length_and_size() {
        let batch = sample();
        let mut bad = batch.clone();
        bad[MAGIC_AT] = 1;
        assert_eq!(validate(&bad, 1 << 20), Err(BatchError::BadMagic(1)));
        assert!(matches!(
            validate(&batch[..batch.len() - 1], 1 << 20),
            Err(BatchError::LengthMismatch { .. })
        ));
        assert!(matches!(
            validate(&batch, batch.len() - 1),
            Err(BatchError::TooLarge { .. })
        ));
        assert!(matches!(
            validate(&batch[..10], 1 << 20),
            Err(BatchError::TooShort { .. })
        ));
    }

    #[test]
    fn a_batch_claiming_more_records_than_it_carries_is_refused() {
        let mut batch = sample();
        // Claim 1000 records over 1000 offsets, with a correct CRC: structurally plausible.
        batch[RECORDS_COUNT_AT..RECORDS_COUNT_AT + 4].copy_from_slice(&1000i32.to_be_bytes());
        batch[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4]
            .copy_from_slice(&999i32.to_be_bytes());
        let crc = compute_crc(&batch);
        batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        let header = validate(&batch, 1 << 20).expect("header and CRC are fine");
        assert!(matches!(
            check_producer_batch(&header, &batch),
            Err(BatchError::BadRecord { .. })
        ));
    }

    #[test]
    fn stamping_keeps_crc_valid() {
        let batch = sample();
        let stamped = StampedHeader::stamp(&batch, 42, None);
        let mut out = batch.clone();
        out[..HEADER_BYTES].copy_from_slice(&stamped.bytes);
        let header = validate(&out, 1 << 20).expect("still valid");
        assert_eq!(header.base_offset, 42);
        assert_eq!(header.timestamp_type(), TimestampType::CreateTime);

        let stamped = StampedHeader::stamp(&batch, 7, Some(123_456));
        out[..HEADER_BYTES].copy_from_slice(&stamped.bytes);
        let header = validate(&out, 1 << 20).expect("valid after LogAppendTime");
        assert_eq!(header.timestamp_type(), TimestampType::LogAppendTime);
        assert_eq!(header.max_timestamp, 123_456);
        assert_eq!(header.base_offset, 7);
    }
}
