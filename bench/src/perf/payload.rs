//! What the records carry.
//!
//! Generated values (`--record-size`) start with a 16-byte stamp so that a reader can check
//! them: the record's sequence number within its partition stream (u64, big-endian), then
//! the microseconds since the Unix epoch at which it was meant to be sent (u64, big-endian;
//! the end-to-end mode measures produce-to-consume latency from it). The rest is a fixed run
//! of the letters A–Z. Values shorter than 16 bytes carry the stamp's first bytes only.
//! With `--payload-file` values are the file's payloads, taken in turn, unstamped.
//!
//! Keys (`--key-size`, `--keys`) are the key's index in decimal, zero-padded to the key size,
//! and each goes to the partition Kafka's default partitioner would choose for it
//! (murmur2 of the key, positive, modulo the partition count).

use std::path::Path;

/// Bytes of the stamp at the start of generated values.
pub const STAMP_BYTES: usize = 16;

/// The stamp for a record.
pub fn stamp(sequence: u64, intended_unix_us: u64) -> [u8; STAMP_BYTES] {
    let mut stamp = [0_u8; STAMP_BYTES];
    stamp[..8].copy_from_slice(&sequence.to_be_bytes());
    stamp[8..].copy_from_slice(&intended_unix_us.to_be_bytes());
    stamp
}

/// Reads a stamp back: (sequence, intended send time in µs since the epoch).
pub fn read_stamp(value: &[u8]) -> Option<(u64, u64)> {
    let stamp = value.get(..STAMP_BYTES)?;
    let sequence = u64::from_be_bytes(stamp[..8].try_into().ok()?);
    let intended = u64::from_be_bytes(stamp[8..].try_into().ok()?);
    Some((sequence, intended))
}

/// The letters after the stamp: `len` bytes of A–Z repeating, from position `STAMP_BYTES`.
pub fn filler(record_size: usize) -> Vec<u8> {
    (STAMP_BYTES..record_size.max(STAMP_BYTES))
        .map(|i| b'A' + (i % 26) as u8)
        .collect()
}

/// Splits a payload file by `delimiter` (Kafka's default: a newline), dropping empty pieces.
pub fn read_payload_file(path: &Path, delimiter: &str) -> std::io::Result<Vec<Vec<u8>>> {
    let text = std::fs::read(path)?;
    let delimiter = delimiter.as_bytes();
    let mut payloads = Vec::new();
    let mut rest: &[u8] = &text;
    while !rest.is_empty() {
        let end = if delimiter.is_empty() {
            None
        } else {
            rest.windows(delimiter.len()).position(|w| w == delimiter)
        };
        let (piece, next) = match end {
            Some(end) => (&rest[..end], &rest[end + delimiter.len()..]),
            None => (rest, &[][..]),
        };
        if !piece.is_empty() {
            payloads.push(piece.to_vec());
        }
        rest = next;
    }
    Ok(payloads)
}

/// The key with index `index`: its decimal digits, zero-padded (or cut on the left) to `size`.
pub fn key(index: u64, size: usize) -> Vec<u8> {
    let digits = format!("{index:0size$}");
    digits.as_bytes()[digits.len() - size..].to_vec()
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), which its default
/// partitioner applies to keys.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len() as u32;
    let mut h = SEED ^ length;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner gives a key.
pub fn partition_for_key(key: &[u8], partition_count: usize) -> usize {
    ((murmur2(key) & 0x7fff_ffff) as usize) % partition_count
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from Kafka's own UtilsTest.
    #[test]
    fn murmur2_matches_kafka() {
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58_897_971
        );
        assert_eq!(murmur2(b"abc"), 479_470_107);
    }

    #[test]
    fn stamps_keys_and_payload_files() {
        let value = stamp(42, 1_700_000_000_123_456);
        assert_eq!(read_stamp(&value), Some((42, 1_700_000_000_123_456)));
        assert_eq!(read_stamp(&value[..15]), None);
        assert_eq!(key(42, 5), b"00042");
        assert_eq!(key(123_456, 3), b"456");
        assert_eq!(filler(20), b"QRST");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("payloads");
        std::fs::write(&path, "one\ntwo\n\nthree").expect("write");
        assert_eq!(
            read_payload_file(&path, "\n").expect("read"),
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
    }
}
