//! Response frames as lists of pieces, so record bytes reach the socket from the buffers they
//! live in (the tail cache, an O_DIRECT read) without a copy in user space.
//!
//! Every response but Fetch is one encoded buffer. A Fetch response is encoded around its
//! records: in every version ringlog answers (4 to 15) a partition's `records` field is the
//! last field of the partition, followed only by its tagged fields (v12 and up), so the frame
//! is [encoded bytes, records of partition 1, encoded bytes, records of partition 2, ...]. The
//! partition fields themselves are encoded by kafka-protocol; only the response and topic
//! framing around them is written here: a topic is named by its name up to v12 and by its id
//! (16 bytes) from v13 (KIP-516); v13 to v15 change nothing else in the response (v14 and v15
//! change only the request). A unit test checks the whole frame byte for byte against
//! kafka-protocol's own encoding for every version.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::{ApiKey, FetchResponse, ResponseHeader};
use kafka_protocol::protocol::{Encodable, HeaderVersion};
use ringlog_engine::RecordPiece;

use crate::handlers::RequestError;
use crate::SIZE_PREFIX_BYTES;

/// Part of a response frame.
#[derive(Debug, Clone)]
pub enum Piece {
    Bytes(Bytes),
    Records(RecordPiece),
}

impl Piece {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Bytes(bytes) => bytes,
            Self::Records(records) => records.as_bytes(),
        }
    }
}

/// A whole response frame, size prefix included, as pieces to write in order.
#[derive(Debug, Clone)]
pub struct ResponseFrame {
    pieces: Vec<Piece>,
    len: usize,
    record_bytes: usize,
}

impl ResponseFrame {
    /// A frame encoded into one buffer.
    pub fn whole(frame: Bytes) -> Self {
        Self {
            len: frame.len(),
            pieces: vec![Piece::Bytes(frame)],
            record_bytes: 0,
        }
    }

    /// A frame of `pieces`, in order (the size prefix is the caller's).
    pub fn from_pieces(pieces: Vec<Piece>) -> Self {
        let len = pieces.iter().map(|p| p.as_bytes().len()).sum();
        let record_bytes = pieces
            .iter()
            .filter(|p| matches!(p, Piece::Records(_)))
            .map(|p| p.as_bytes().len())
            .sum();
        Self {
            pieces,
            len,
            record_bytes,
        }
    }

    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// Bytes in the frame, size prefix included.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of records (held in place, not copied) the frame carries.
    pub fn record_bytes(&self) -> usize {
        self.record_bytes
    }

    /// The frame as one buffer (a copy): for tests and callers that need contiguous bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for piece in &self.pieces {
            out.extend_from_slice(piece.as_bytes());
        }
        out
    }
}

/// What the broker answers a Fetch with: the response with every partition's `records` left
/// out, and the records of each partition in response order (topics, then their partitions).
#[derive(Debug, Default)]
pub struct FetchAnswer {
    pub response: FetchResponse,
    pub records: Vec<Vec<Piece>>,
}

/// Builds a frame piece by piece: encoded bytes accumulate in `open` until records come.
struct FrameBuilder {
    pieces: Vec<Piece>,
    open: BytesMut,
    record_bytes: usize,
}

impl FrameBuilder {
    fn push_records(&mut self, records: Vec<Piece>) {
        if !self.open.is_empty() {
            self.pieces.push(Piece::Bytes(self.open.split().freeze()));
        }
        for piece in records {
            self.record_bytes += piece.as_bytes().len();
            self.pieces.push(piece);
        }
    }

    fn finish(mut self) -> (Vec<Piece>, usize) {
        if !self.open.is_empty() {
            self.pieces.push(Piece::Bytes(self.open.split().freeze()));
        }
        (self.pieces, self.record_bytes)
    }
}

/// The Fetch versions [`encode_fetch`] writes. v16 adds response-level tagged fields
/// (`node_endpoints`) this encoder does not write.
pub const FETCH_VERSIONS: std::ops::RangeInclusive<i16> = 4..=15;

/// Encodes a Fetch response frame of `version` (see [`FETCH_VERSIONS`]) around
/// `answer.records`.
pub fn encode_fetch(
    version: i16,
    correlation_id: i32,
    answer: FetchAnswer,
) -> Result<ResponseFrame, RequestError> {
    let fail = |reason: String| RequestError::Encode {
        api: ApiKey::Fetch,
        api_version: version,
        reason,
    };
    if !FETCH_VERSIONS.contains(&version) {
        return Err(fail(format!(
            "the piecewise encoder covers versions {} to {}",
            FETCH_VERSIONS.start(),
            FETCH_VERSIONS.end()
        )));
    }
    let FetchAnswer { response, records } = answer;
    let flexible = version >= 12;
    let mut open = BytesMut::with_capacity(256);
    open.put_i32(0); // the size, patched once known
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut open, FetchResponse::header_version(version))
        .map_err(|e| fail(format!("{e:#}")))?;
    open.put_i32(response.throttle_time_ms);
    if version >= 7 {
        open.put_i16(response.error_code);
        open.put_i32(response.session_id);
    }
    if !response.unknown_tagged_fields.is_empty() || !response.node_endpoints.is_empty() {
        return Err(fail(
            "response-level tagged fields are not encoded".to_owned(),
        ));
    }
    let mut frame = FrameBuilder {
        pieces: Vec::new(),
        open,
        record_bytes: 0,
    };
    let mut records = records.into_iter();
    put_array_len(&mut frame.open, flexible, response.responses.len());
    for topic in &response.responses {
        if version >= 13 {
            frame.open.put_slice(topic.topic_id.as_bytes());
        } else {
            put_string(&mut frame.open, flexible, topic.topic.as_bytes()).map_err(fail)?;
        }
        put_array_len(&mut frame.open, flexible, topic.partitions.len());
        for partition in &topic.partitions {
            let pieces = records.next().unwrap_or_default();
            put_partition(&mut frame, version, partition, pieces).map_err(fail)?;
        }
        if flexible {
            if !topic.unknown_tagged_fields.is_empty() {
                return Err(fail("topic tagged fields are not encoded".to_owned()));
            }
            frame.open.put_u8(0);
        }
    }
    if flexible {
        frame.open.put_u8(0);
    }
    let (mut pieces, record_bytes) = frame.finish();
    let len: usize = pieces.iter().map(|p| p.as_bytes().len()).sum();
    let size = i32::try_from(len - SIZE_PREFIX_BYTES)
        .map_err(|_| fail(format!("{len} bytes do not fit a frame")))?;
    let Some(Piece::Bytes(head)) = pieces.first_mut() else {
        unreachable!("a frame starts with its encoded header");
    };
    let mut patched = BytesMut::from(&head[..]);
    patched[..SIZE_PREFIX_BYTES].copy_from_slice(&size.to_be_bytes());
    *head = patched.freeze();
    Ok(ResponseFrame {
        pieces,
        len,
        record_bytes,
    })
}

/// One partition: its fields by kafka-protocol with `records` null, whose null marker (and, in
/// v12, the tagged fields after it) is then replaced by the records' length, the records and
/// the tagged fields. A partition with tagged fields (a follower's diverging epoch, the
/// current leader) is encoded twice, with and without them, to cut its tagged section out.
fn put_partition(
    frame: &mut FrameBuilder,
    version: i16,
    partition: &PartitionData,
    pieces: Vec<Piece>,
) -> Result<(), String> {
    let flexible = version >= 12;
    let mut fields = partition.clone();
    fields.records = None;
    let tagged = flexible
        && (fields.diverging_epoch != Default::default()
            || fields.current_leader != Default::default()
            || fields.snapshot_id != Default::default()
            || !fields.unknown_tagged_fields.is_empty());
    let tags = if tagged {
        let mut with_tags = BytesMut::new();
        fields
            .encode(&mut with_tags, version)
            .map_err(|e| format!("{e:#}"))?;
        fields.diverging_epoch = Default::default();
        fields.current_leader = Default::default();
        fields.snapshot_id = Default::default();
        fields.unknown_tagged_fields = Default::default();
        Some(with_tags)
    } else {
        None
    };
    let start = frame.open.len();
    fields
        .encode(&mut frame.open, version)
        .map_err(|e| format!("{e:#}"))?;
    // Null records: i32 -1, or in v12 a varint 0 followed by the tagged-field count 0.
    let tail = if flexible { 2 } else { 4 };
    let encoded = frame.open.len() - start;
    assert!(encoded >= tail, "the partition ends with its records");
    frame.open.truncate(frame.open.len() - tail);
    let len: usize = pieces.iter().map(|p| p.as_bytes().len()).sum();
    if flexible {
        let len = u32::try_from(len + 1).map_err(|_| format!("{len} bytes of records"))?;
        put_unsigned_varint(&mut frame.open, len);
    } else {
        let len = i32::try_from(len).map_err(|_| format!("{len} bytes of records"))?;
        frame.open.put_i32(len);
    }
    frame.push_records(pieces);
    match tags {
        // The fields before the records are the same in both encodings; after the null
        // records marker comes the tagged section.
        Some(with_tags) => frame.open.extend_from_slice(&with_tags[encoded - 1..]),
        None if flexible => frame.open.put_u8(0),
        None => {}
    }
    Ok(())
}

/// An array's length: compact (length + 1, varint) in flexible versions, else an i32. The
/// arrays here are as long as the request's, which a frame's size bounds far below 2^31.
fn put_array_len(buf: &mut BytesMut, flexible: bool, len: usize) {
    if flexible {
        put_unsigned_varint(buf, (len + 1) as u32);
    } else {
        buf.put_i32(len as i32);
    }
}

/// A non-null string: compact (length + 1, varint) in flexible versions, else an i16 length.
fn put_string(buf: &mut BytesMut, flexible: bool, text: &[u8]) -> Result<(), String> {
    if flexible {
        let len = u32::try_from(text.len() + 1).map_err(|_| "string too long".to_owned())?;
        put_unsigned_varint(buf, len);
    } else {
        let len = i16::try_from(text.len()).map_err(|_| "string too long".to_owned())?;
        buf.put_i16(len);
    }
    buf.put_slice(text);
    Ok(())
}

fn put_unsigned_varint(buf: &mut BytesMut, mut value: u32) {
    while value >= 0x80 {
        buf.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::fetch_response::FetchableTopicResponse;
    use kafka_protocol::messages::{BrokerId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    use super::*;

    /// A response as `src/broker/fetch.rs` builds it, with each partition's records given.
    fn response(version: i16, partitions: &[(&str, i32, Vec<u8>)]) -> FetchResponse {
        let mut topics: Vec<FetchableTopicResponse> = Vec::new();
        for (topic, index, records) in partitions {
            let name = TopicName(StrBytes::from_string((*topic).to_owned()));
            // v13 and up name the topic by id only: one derived from the name here.
            let id = uuid::Uuid::from_u128(topic.bytes().fold(0x5eed_u128, |id, b| {
                id.wrapping_mul(131).wrapping_add(u128::from(b))
            }));
            let named = |t: &FetchableTopicResponse| {
                if version >= 13 {
                    t.topic_id == id
                } else {
                    t.topic == name
                }
            };
            if !topics.last().is_some_and(named) {
                let entry = if version >= 13 {
                    FetchableTopicResponse::default().with_topic_id(id)
                } else {
                    FetchableTopicResponse::default().with_topic(name)
                };
                topics.push(entry);
            }
            let mut data = PartitionData::default()
                .with_partition_index(*index)
                .with_error_code(if records.is_empty() { 1 } else { 0 })
                .with_high_watermark(1000 + i64::from(*index))
                .with_last_stable_offset(999)
                .with_records(Some(Bytes::from(records.clone())));
            if version >= 5 {
                data = data.with_log_start_offset(7);
            }
            data = data.with_aborted_transactions(Some(Vec::new()));
            if version >= 11 {
                data = data.with_preferred_read_replica(BrokerId(-1));
            }
            // Tagged fields: a follower's diverging epoch, a current-leader hint.
            if version >= 12 && *index == 4 {
                data.diverging_epoch.epoch = 3;
                data.diverging_epoch.end_offset = 12_345;
            }
            if version >= 12 && *index == 1 {
                data.current_leader.leader_id = BrokerId(1024);
                data.current_leader.leader_epoch = 7;
            }
            if let Some(topic) = topics.last_mut() {
                topic.partitions.push(data);
            }
        }
        let mut response = FetchResponse::default().with_responses(topics);
        if version >= 7 {
            response = response.with_session_id(0);
        }
        response.with_throttle_time_ms(3)
    }

    /// kafka-protocol's own encoding of the whole frame.
    fn reference(version: i16, correlation_id: i32, response: &FetchResponse) -> Vec<u8> {
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        ResponseHeader::default()
            .with_correlation_id(correlation_id)
            .encode(&mut frame, FetchResponse::header_version(version))
            .expect("header");
        response.encode(&mut frame, version).expect("body");
        let size = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&size.to_be_bytes());
        frame.to_vec()
    }

    #[test]
    fn piecewise_frames_match_kafka_protocol_byte_for_byte() {
        let big: Vec<u8> = (0..70_000u32).map(|i| (i * 31) as u8).collect();
        let cases: Vec<Vec<(&str, i32, Vec<u8>)>> = vec![
            vec![],
            vec![("t", 0, vec![])],
            vec![
                ("t", 0, b"abc".to_vec()),
                ("t", 1, vec![]),
                ("u", 4, big.clone()),
            ],
            vec![("a-much-longer-topic-name", 2, big[..300].to_vec())],
        ];
        for version in FETCH_VERSIONS {
            for case in &cases {
                let full = response(version, case);
                let expected = reference(version, 42, &full);
                // The broker's answer: records left out, handed over as two pieces each.
                let mut stripped = full.clone();
                let mut records = Vec::new();
                for topic in &mut stripped.responses {
                    for partition in &mut topic.partitions {
                        let bytes = partition.records.take().unwrap_or_default();
                        let half = bytes.len() / 2;
                        records.push(vec![
                            Piece::Bytes(bytes.slice(..half)),
                            Piece::Bytes(bytes.slice(half..)),
                        ]);
                    }
                }
                let answer = FetchAnswer {
                    response: stripped,
                    records,
                };
                let frame = encode_fetch(version, 42, answer).expect("encodes");
                assert_eq!(frame.to_vec(), expected, "version {version}, {case:?}");
                assert_eq!(frame.len(), expected.len());
                let record_bytes: usize = case.iter().map(|(_, _, r)| r.len()).sum();
                assert_eq!(frame.record_bytes(), record_bytes);
            }
        }
    }

    #[test]
    fn versions_the_encoder_does_not_write_are_refused() {
        assert!(encode_fetch(16, 1, FetchAnswer::default()).is_err());
        assert!(encode_fetch(3, 1, FetchAnswer::default()).is_err());
    }
}
