//! Kafka RecordBatch v2 (magic 2), written in place and read without copying.
//!
//! ```text
//! 0  base_offset i64        | 8  batch_length i32 (bytes after this field)
//! 12 partition_leader_epoch | 16 magic i8 = 2   | 17 crc u32 (CRC32C of bytes 21..end)
//! 21 attributes i16 (bits 0-2 compression, bit 3 timestamp type)
//! 23 last_offset_delta i32  | 27 base_timestamp i64 | 35 max_timestamp i64
//! 43 producer_id i64        | 51 producer_epoch i16 | 53 base_sequence i32
//! 57 record_count i32       | 61 records (compressed as one block when compression is on)
//! record: length varint | attributes i8 | timestamp_delta varlong | offset_delta varint |
//!         key_length varint (-1: null) | key | value_length varint | value | header_count varint
//! ```
//!
//! The writer is hand-written rather than `kafka-protocol`'s `RecordBatchEncoder`: the
//! encoder takes owned `Record`s (a `Bytes` per key and value and an `IndexMap` of headers per
//! record) and copies them into its buffer, where this one writes the caller's slices straight
//! into the request buffer. `cargo bench -p ringlog-bench --bench client` compares the two.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Decompressor, Gzip, Lz4, Snappy, Zstd};
use ringlog_engine::batch::{
    self as engine_batch, HEADER_BYTES as BATCH_HEADER_BYTES, LOG_OVERHEAD_BYTES,
};

use super::error::ClientError;

const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;

/// The batch compression codecs (attribute bits 0-2), as the storage engine names them.
pub use ringlog_engine::batch::Compression;

/// Parses Kafka's `compression.type` names.
pub fn compression_from_name(name: &str) -> Option<Compression> {
    match name {
        "none" | "uncompressed" => Some(Compression::None),
        "gzip" => Some(Compression::Gzip),
        "snappy" => Some(Compression::Snappy),
        "lz4" => Some(Compression::Lz4),
        "zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

fn compression_bits(compression: Compression) -> i16 {
    match compression {
        Compression::None => 0,
        Compression::Gzip => 1,
        Compression::Snappy => 2,
        Compression::Lz4 => 3,
        Compression::Zstd => 4,
        Compression::Unknown(bits) => i16::from(bits),
    }
}

/// The producer fields of a batch header.
#[derive(Debug, Clone, Copy)]
pub struct BatchHeader {
    /// -1 without idempotence.
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// Sequence of the first record (-1 without idempotence).
    pub base_sequence: i32,
    pub base_timestamp_ms: i64,
    pub compression: Compression,
}

impl BatchHeader {
    /// A batch from a producer without idempotence.
    pub fn plain(base_timestamp_ms: i64, compression: Compression) -> Self {
        Self {
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            base_timestamp_ms,
            compression,
        }
    }
}

/// Writes one batch at the end of a buffer: `begin`, `push` each record, `finish`.
pub struct BatchWriter<'a> {
    out: &'a mut BytesMut,
    start: usize,
    header: BatchHeader,
    record_count: i32,
    max_timestamp_ms: i64,
}

impl<'a> BatchWriter<'a> {
    /// Writes the header (lengths, counts and CRC are filled in by `finish`).
    pub fn begin(out: &'a mut BytesMut, header: BatchHeader) -> Self {
        let start = out.len();
        out.put_i64(0); // base offset: the broker assigns it
        out.put_i32(0); // batch length, patched
        out.put_i32(-1); // partition leader epoch
        out.put_i8(2); // magic
        out.put_u32(0); // crc, patched
        out.put_i16(compression_bits(header.compression)); // CreateTime, not transactional
        out.put_i32(0); // last offset delta, patched
        out.put_i64(header.base_timestamp_ms);
        out.put_i64(header.base_timestamp_ms); // max timestamp, patched
        out.put_i64(header.producer_id);
        out.put_i16(header.producer_epoch);
        out.put_i32(header.base_sequence);
        out.put_i32(0); // record count, patched
        debug_assert_eq!(out.len() - start, BATCH_HEADER_BYTES);
        Self {
            out,
            start,
            header,
            record_count: 0,
            max_timestamp_ms: header.base_timestamp_ms,
        }
    }

    pub fn record_count(&self) -> i32 {
        self.record_count
    }

    /// Appends a record whose value is the concatenation of `value_parts`.
    pub fn push(&mut self, key: Option<&[u8]>, value_parts: &[&[u8]], timestamp_ms: i64) {
        let timestamp_delta = timestamp_ms - self.header.base_timestamp_ms;
        let offset_delta = i64::from(self.record_count);
        let value_bytes: usize = value_parts.iter().map(|part| part.len()).sum();
        let key_length = key.map_or(-1, |key| len_i64(key.len()));
        let body_bytes = 1
            + varint_bytes(timestamp_delta)
            + varint_bytes(offset_delta)
            + varint_bytes(key_length)
            + key.map_or(0, <[u8]>::len)
            + varint_bytes(len_i64(value_bytes))
            + value_bytes
            + 1;
        put_varint(self.out, len_i64(body_bytes));
        self.out.put_i8(0);
        put_varint(self.out, timestamp_delta);
        put_varint(self.out, offset_delta);
        put_varint(self.out, key_length);
        if let Some(key) = key {
            self.out.extend_from_slice(key);
        }
        put_varint(self.out, len_i64(value_bytes));
        for part in value_parts {
            self.out.extend_from_slice(part);
        }
        put_varint(self.out, 0);
        self.record_count += 1;
        self.max_timestamp_ms = self.max_timestamp_ms.max(timestamp_ms);
    }

    /// Compresses the records if asked, fills in lengths, counts and the CRC; returns the
    /// batch's size in bytes.
    pub fn finish(self) -> Result<usize, ClientError> {
        assert!(self.record_count > 0, "a batch holds at least one record");
        let records_start = self.start + BATCH_HEADER_BYTES;
        if self.header.compression != Compression::None {
            let raw = self.out.split_off(records_start);
            compress(self.header.compression, &raw, self.out)?;
        }
        let start = self.start;
        let out = self.out;
        let batch_length = len_i32(out.len() - start - LOG_OVERHEAD_BYTES)?;
        out[start + 8..start + 12].copy_from_slice(&batch_length.to_be_bytes());
        out[start + 23..start + 27].copy_from_slice(&(self.record_count - 1).to_be_bytes());
        out[start + 35..start + 43].copy_from_slice(&self.max_timestamp_ms.to_be_bytes());
        out[start + 57..start + 61].copy_from_slice(&self.record_count.to_be_bytes());
        let crc = engine_batch::compute_crc(&out[start..]);
        out[start + CRC_OFFSET..start + ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
        Ok(out.len() - start)
    }
}

fn compress(compression: Compression, raw: &[u8], out: &mut BytesMut) -> Result<(), ClientError> {
    let fill = |buffer: &mut BytesMut| -> anyhow::Result<()> {
        buffer.put_slice(raw);
        Ok(())
    };
    let result = match compression {
        Compression::None => {
            out.put_slice(raw);
            Ok(())
        }
        Compression::Gzip => Gzip::compress(out, fill),
        Compression::Snappy => Snappy::compress(out, fill),
        Compression::Lz4 => Lz4::compress(out, fill),
        Compression::Zstd => Zstd::compress(out, fill),
        Compression::Unknown(bits) => {
            return Err(ClientError::Batch(format!("unknown codec {bits}")))
        }
    };
    result.map_err(|e| ClientError::Batch(format!("compressing with {compression:?}: {e}")))
}

fn decompress(compression: Compression, mut data: Bytes) -> Result<Bytes, ClientError> {
    let take = |buffer: &mut Bytes| -> anyhow::Result<Bytes> {
        Ok(buffer.copy_to_bytes(buffer.remaining()))
    };
    let result = match compression {
        Compression::None => return Ok(data),
        Compression::Gzip => Gzip::decompress(&mut data, take),
        Compression::Snappy => Snappy::decompress(&mut data, take),
        Compression::Lz4 => Lz4::decompress(&mut data, take),
        Compression::Zstd => Zstd::decompress(&mut data, take),
        Compression::Unknown(bits) => {
            return Err(ClientError::Batch(format!("unknown codec {bits}")))
        }
    };
    result.map_err(|e| ClientError::Batch(format!("decompressing {compression:?}: {e}")))
}

fn len_i64(len: usize) -> i64 {
    i64::try_from(len).expect("a record is far below 2^63 bytes")
}

fn len_i32(len: usize) -> Result<i32, ClientError> {
    i32::try_from(len)
        .map_err(|_| ClientError::Batch(format!("batch of {len} bytes is over 2 GiB")))
}

/// Bytes of `value` as a zigzag varint.
pub fn varint_bytes(value: i64) -> usize {
    let zigzag = ((value << 1) ^ (value >> 63)) as u64;
    let bits = 64 - (zigzag | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Writes `value` as a zigzag varint (Kafka's varint and varlong are the same encoding).
pub fn put_varint(out: &mut BytesMut, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.put_u8((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.put_u8(zigzag as u8);
}

/// One batch of a fetched record set, not yet decompressed or parsed.
#[derive(Debug, Clone)]
pub struct BatchView {
    pub header: engine_batch::BatchHeader,
    /// The whole batch, header included.
    pub bytes: Bytes,
}

impl BatchView {
    pub fn base_offset(&self) -> i64 {
        self.header.base_offset
    }

    pub fn record_count(&self) -> i32 {
        self.header.records_count
    }

    /// Control batches (transaction markers) carry no user records.
    pub fn is_control(&self) -> bool {
        self.header.is_control()
    }

    /// The offset after this batch.
    pub fn next_offset(&self) -> i64 {
        self.header.next_offset()
    }

    /// Checks the CRC32C over attributes..end.
    pub fn crc_matches(&self) -> bool {
        engine_batch::compute_crc(&self.bytes) == self.header.crc
    }

    /// Calls `each` with every record, decompressing first if needed. The records are read
    /// by the storage engine's parser; a compressed batch is rebuilt uncompressed for it.
    pub fn for_each_record(&self, mut each: impl FnMut(RecordView<'_>)) -> Result<(), ClientError> {
        let rebuilt;
        let compression = self.header.compression();
        let batch: &[u8] = if compression == Compression::None {
            &self.bytes
        } else {
            let records = decompress(compression, self.bytes.slice(BATCH_HEADER_BYTES..))?;
            let mut whole = Vec::with_capacity(BATCH_HEADER_BYTES + records.len());
            whole.extend_from_slice(&self.bytes[..BATCH_HEADER_BYTES]);
            whole.extend_from_slice(&records);
            rebuilt = whole;
            &rebuilt
        };
        let records = engine_batch::uncompressed_records(batch).map_err(|e| {
            ClientError::Batch(format!("batch at offset {}: {e}", self.header.base_offset))
        })?;
        for record in records {
            each(RecordView {
                offset: self.header.base_offset + i64::from(record.offset_delta),
                timestamp_ms: self.header.base_timestamp + record.timestamp_delta,
                key: record.key,
                value: record.value,
            });
        }
        Ok(())
    }
}

/// One record of a batch, borrowing the batch's bytes.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// Splits a fetched record set into batches. A partial batch at the end (a Fetch answer may
/// cut the last one) is left out; a batch of another magic is an error.
pub fn split_batches(records: &Bytes) -> Result<Vec<BatchView>, ClientError> {
    let mut batches = Vec::new();
    let mut position = 0;
    while records.len() - position >= BATCH_HEADER_BYTES {
        let rest = &records[position..];
        let header = engine_batch::BatchHeader::decode(rest)
            .map_err(|e| ClientError::Batch(e.to_string()))?;
        let total = engine_batch::declared_total_bytes(rest)
            .and_then(|total| usize::try_from(total).ok())
            .filter(|&total| total >= BATCH_HEADER_BYTES)
            .ok_or_else(|| {
                ClientError::Batch(format!("impossible batch length {}", header.batch_length))
            })?;
        if rest.len() < total {
            break;
        }
        if header.magic != engine_batch::MAGIC_V2 {
            return Err(ClientError::Batch(format!(
                "magic {} (only 2 is read)",
                header.magic
            )));
        }
        batches.push(BatchView {
            header,
            bytes: records.slice(position..position + total),
        });
        position += total;
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    fn write(compression: Compression) -> BytesMut {
        let mut out = BytesMut::new();
        let mut header = BatchHeader::plain(1_700_000_000_000, compression);
        header.producer_id = 7;
        header.producer_epoch = 1;
        header.base_sequence = 40;
        let mut writer = BatchWriter::begin(&mut out, header);
        writer.push(Some(b"key-1"), &[b"ab", b"cdef"], 1_700_000_000_000);
        writer.push(None, &[&[b'x'; 300]], 1_700_000_000_123);
        writer.push(Some(b""), &[], 1_700_000_000_050);
        writer.finish().expect("finish");
        out
    }

    #[test]
    fn batches_read_back_by_kafka_protocol_and_by_us() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let bytes = write(compression).freeze();
            let set =
                RecordBatchDecoder::decode(&mut bytes.clone()).expect("kafka-protocol decodes it");
            assert_eq!(set.records.len(), 3);
            assert_eq!(set.records[0].key.as_deref(), Some(&b"key-1"[..]));
            assert_eq!(set.records[0].value.as_deref(), Some(&b"abcdef"[..]));
            assert_eq!(set.records[0].producer_id, 7);
            assert_eq!(set.records[0].sequence, 40);
            assert_eq!(set.records[1].timestamp, 1_700_000_000_123);
            assert_eq!(set.records[2].key.as_deref(), Some(&b""[..]));
            assert_eq!(set.records[2].value.as_deref(), Some(&b""[..]));

            let batches = split_batches(&bytes).expect("split");
            assert_eq!(batches.len(), 1);
            assert!(batches[0].crc_matches());
            assert_eq!(batches[0].next_offset(), 3);
            assert_eq!(batches[0].record_count(), 3);
            let mut seen = Vec::new();
            batches[0]
                .for_each_record(|r| {
                    seen.push((
                        r.offset,
                        r.timestamp_ms,
                        r.key.map(<[u8]>::to_vec),
                        r.value.map(<[u8]>::len),
                    ))
                })
                .expect("parse");
            assert_eq!(
                seen,
                vec![
                    (0, 1_700_000_000_000, Some(b"key-1".to_vec()), Some(6)),
                    (1, 1_700_000_000_123, None, Some(300)),
                    (2, 1_700_000_000_050, Some(Vec::new()), Some(0)),
                ]
            );
        }
    }

    #[test]
    fn a_cut_last_batch_is_left_out_and_a_flipped_bit_fails_the_crc() {
        let mut two = write(Compression::None);
        let one_len = two.len();
        two.extend_from_slice(&write(Compression::None));
        let cut = two.clone().freeze().slice(..two.len() - 5);
        assert_eq!(split_batches(&cut).expect("split").len(), 1);
        two[one_len - 3] ^= 1;
        let batches = split_batches(&two.freeze()).expect("split");
        assert!(!batches[0].crc_matches());
        assert!(batches[1].crc_matches());
    }

    #[test]
    fn varint_sizes_match_what_is_written() {
        let values = [
            0,
            1,
            -1,
            63,
            64,
            -64,
            -65,
            300,
            i64::from(i32::MAX),
            i64::MIN,
            i64::MAX,
        ];
        for value in values {
            let mut out = BytesMut::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), varint_bytes(value), "{value}");
        }
    }
}
