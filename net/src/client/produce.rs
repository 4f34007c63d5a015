//! Produce requests, written in place.
//!
//! Produce v3 to v8 share one request layout (non-flexible), so the hot path writes it by hand
//! into a buffer that the sender reuses for every request: header, then for one topic each
//! partition's batches, written by `BatchWriter` straight after their length field. Nothing is
//! copied between the record payload and the socket but the write itself. Responses are small
//! and decoded with `kafka-protocol`.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

use super::error::ClientError;
use super::wire::{decode_response, patch_size_prefix, SIZE_PREFIX_BYTES};

/// The Produce versions whose request layout `ProduceFrame` writes.
pub const PRODUCE_VERSION_MIN: i16 = 3;
pub const PRODUCE_VERSION_MAX: i16 = 8;
/// Produce's API key.
const PRODUCE_API_KEY: i16 = 0;

/// The fields of a Produce request besides its records.
#[derive(Debug, Clone)]
pub struct ProduceSettings {
    pub version: i16,
    pub client_id: String,
    /// 0, 1 or -1 (all).
    pub acks: i16,
    pub timeout_ms: i32,
    pub topic: String,
}

/// One Produce request for one topic being written at the end of a buffer.
pub struct ProduceFrame<'a> {
    out: &'a mut BytesMut,
    start: usize,
    partition_count_at: usize,
    partition_count: i32,
}

impl<'a> ProduceFrame<'a> {
    pub fn begin(out: &'a mut BytesMut, settings: &ProduceSettings, correlation_id: i32) -> Self {
        debug_assert!((PRODUCE_VERSION_MIN..=PRODUCE_VERSION_MAX).contains(&settings.version));
        let start = out.len();
        out.put_i32(0); // size, patched
        out.put_i16(PRODUCE_API_KEY);
        out.put_i16(settings.version);
        out.put_i32(correlation_id);
        put_string(out, &settings.client_id);
        out.put_i16(-1); // transactional id: null
        out.put_i16(settings.acks);
        out.put_i32(settings.timeout_ms);
        out.put_i32(1); // one topic
        put_string(out, &settings.topic);
        let partition_count_at = out.len();
        out.put_i32(0); // partition count, patched
        Self {
            out,
            start,
            partition_count_at,
            partition_count: 0,
        }
    }

    /// Adds a partition whose record set `write` appends to the buffer it is given (one or
    /// more whole batches).
    pub fn partition<T>(
        &mut self,
        index: i32,
        write: impl FnOnce(&mut BytesMut) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.out.put_i32(index);
        let length_at = self.out.len();
        self.out.put_i32(0);
        let result = write(self.out)?;
        let length = self.out.len() - length_at - 4;
        let length = i32::try_from(length)
            .map_err(|_| ClientError::Batch(format!("record set of {length} bytes")))?;
        self.out[length_at..length_at + 4].copy_from_slice(&length.to_be_bytes());
        self.partition_count += 1;
        Ok(result)
    }

    pub fn partition_count(&self) -> i32 {
        self.partition_count
    }

    /// Bytes of the frame so far.
    pub fn len(&self) -> usize {
        self.out.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() <= SIZE_PREFIX_BYTES
    }

    /// Fills in the partition count and the frame size.
    pub fn finish(self) {
        let at = self.partition_count_at;
        self.out[at..at + 4].copy_from_slice(&self.partition_count.to_be_bytes());
        patch_size_prefix(self.out, self.start);
    }
}

fn put_string(out: &mut BytesMut, text: &str) {
    let length = i16::try_from(text.len()).expect("client ids and topic names are under 32 KiB");
    out.put_i16(length);
    out.put_slice(text.as_bytes());
}

/// Decodes a Produce response payload.
pub fn decode_produce_response(
    payload: Bytes,
    version: i16,
    correlation_id: i32,
) -> Result<ProduceResponse, ClientError> {
    decode_response::<ProduceRequest>(payload, version, correlation_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::batch::{BatchHeader, BatchWriter, Compression};
    use bytes::Buf;
    use kafka_protocol::messages::RequestHeader;
    use kafka_protocol::protocol::{Decodable, HeaderVersion};
    use kafka_protocol::records::RecordBatchDecoder;

    /// The hand-written frame decodes with `kafka-protocol` as the request it means, at every
    /// version it claims.
    #[test]
    fn hand_written_frames_decode_as_produce_requests() {
        for version in PRODUCE_VERSION_MIN..=PRODUCE_VERSION_MAX {
            let settings = ProduceSettings {
                version,
                client_id: "perf".to_owned(),
                acks: -1,
                timeout_ms: 30_000,
                topic: "topic-a".to_owned(),
            };
            let mut out = BytesMut::new();
            let mut frame = ProduceFrame::begin(&mut out, &settings, 99);
            for partition in [3, 0] {
                frame
                    .partition(partition, |out| {
                        let mut batch =
                            BatchWriter::begin(out, BatchHeader::plain(5, Compression::None));
                        batch.push(None, &[format!("p{partition}").as_bytes()], 5);
                        batch.finish()
                    })
                    .expect("partition");
            }
            frame.finish();
            let mut payload = out.freeze();
            let size = payload.get_i32() as usize;
            assert_eq!(size, payload.len());
            let header =
                RequestHeader::decode(&mut payload, ProduceRequest::header_version(version))
                    .expect("header");
            assert_eq!((header.request_api_key, header.correlation_id), (0, 99));
            let request = ProduceRequest::decode(&mut payload, version).expect("body");
            assert_eq!((request.acks, request.timeout_ms), (-1, 30_000));
            assert_eq!(request.topic_data.len(), 1);
            assert_eq!(request.topic_data[0].name.as_str(), "topic-a");
            let partitions = &request.topic_data[0].partition_data;
            assert_eq!(
                partitions.iter().map(|p| p.index).collect::<Vec<_>>(),
                vec![3, 0]
            );
            let mut records = partitions[0].records.clone().expect("records");
            let set = RecordBatchDecoder::decode(&mut records).expect("batch");
            assert_eq!(set.records[0].value.as_deref(), Some(&b"p3"[..]));
        }
    }
}
