//! Our own wire format for raft-rs messages (`eraftpb::Message`), so protobuf never parses
//! bytes from the network.
//!
//! raft-rs 0.7 depends on protobuf 2, whose parser recurses on nested messages and overflows
//! the stack on hostile input (RUSTSEC-2024-0437). This codec is flat and bounded: fixed
//! 8-byte little-endian words, length-prefixed byte strings with a cap, an entry count with a
//! cap, no recursion, and every trailing byte refused. `clippy.toml` bans protobuf's parse
//! functions in the workspace.
//!
//! Layout: `[type][to][from][term][log_term][index][commit][commit_term][request_snapshot]
//! [reject][reject_hint][priority][context: bytes][entry count]{[entry type][term][index]
//! [sync_log][data: bytes][context: bytes]}*[has snapshot]([data: bytes][index][term]
//! [voters][learners][voters_outgoing][learners_next][auto_leave])?`, every number a u64 LE,
//! `bytes` a u64 length then the bytes, an id list a u64 count then the ids.

use protobuf::{ProtobufEnum, RepeatedField, SingularPtrField};
use raft::prelude::{
    ConfState, Entry, EntryType, Message, MessageType, Snapshot, SnapshotMetadata,
};
use thiserror::Error;

/// The largest encoded message accepted: a snapshot of the metadata image is the biggest.
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;
/// Entries one message may carry.
pub const MESSAGE_ENTRIES_MAX: u64 = 1 << 16;
/// Ids in one of a snapshot's voter or learner lists.
const IDS_MAX: u64 = 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("raft message of {0} bytes is over the {MESSAGE_BYTES_MAX}-byte limit")]
    TooLarge(usize),
    #[error("raft message ends early")]
    Truncated,
    #[error("raft message has {0} bytes after its end")]
    Trailing(usize),
    #[error("raft message field {field} is out of range: {value}")]
    OutOfRange { field: &'static str, value: u64 },
}

pub fn encode(message: &Message) -> Vec<u8> {
    let entry_bytes: usize = message.entries.iter().map(|e| e.data.len() + 64).sum();
    let mut out = Writer(Vec::with_capacity(160 + entry_bytes));
    out.word(message.msg_type.value() as u64);
    for word in [
        message.to,
        message.from,
        message.term,
        message.log_term,
        message.index,
        message.commit,
        message.commit_term,
        message.request_snapshot,
    ] {
        out.word(word);
    }
    out.word(u64::from(message.reject));
    out.word(message.reject_hint);
    out.word(message.priority as u64);
    out.bytes(&message.context);
    out.word(message.entries.len() as u64);
    for entry in message.entries.iter() {
        out.word(entry.entry_type.value() as u64);
        out.word(entry.term);
        out.word(entry.index);
        out.word(u64::from(entry.sync_log));
        out.bytes(&entry.data);
        out.bytes(&entry.context);
    }
    match message.snapshot.as_ref() {
        None => out.word(0),
        Some(snapshot) => {
            out.word(1);
            out.bytes(&snapshot.data);
            let metadata = snapshot.get_metadata();
            out.word(metadata.index);
            out.word(metadata.term);
            let conf = metadata.get_conf_state();
            out.ids(&conf.voters);
            out.ids(&conf.learners);
            out.ids(&conf.voters_outgoing);
            out.ids(&conf.learners_next);
            out.word(u64::from(conf.auto_leave));
        }
    }
    out.0
}

pub fn decode(bytes: &[u8]) -> Result<Message, CodecError> {
    if bytes.len() > MESSAGE_BYTES_MAX {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let mut input = Reader(bytes);
    let mut message = Message::default();
    let kind = input.word()?;
    message.msg_type = i32::try_from(kind)
        .ok()
        .and_then(MessageType::from_i32)
        .ok_or(CodecError::OutOfRange {
            field: "msg_type",
            value: kind,
        })?;
    message.to = input.word()?;
    message.from = input.word()?;
    message.term = input.word()?;
    message.log_term = input.word()?;
    message.index = input.word()?;
    message.commit = input.word()?;
    message.commit_term = input.word()?;
    message.request_snapshot = input.word()?;
    message.reject = input.flag("reject")?;
    message.reject_hint = input.word()?;
    message.priority = input.word()? as i64;
    message.context = input.bytes()?;
    let count = input.word()?;
    if count > MESSAGE_ENTRIES_MAX {
        return Err(CodecError::OutOfRange {
            field: "entries",
            value: count,
        });
    }
    // Capacity from what the bytes can hold, not from the count a peer claims.
    let mut entries = Vec::with_capacity((count as usize).min(input.0.len() / 48));
    for _ in 0..count {
        entries.push(input.entry()?);
    }
    message.entries = RepeatedField::from_vec(entries);
    if input.flag("has_snapshot")? {
        message.snapshot = SingularPtrField::some(input.snapshot()?);
    }
    if !input.0.is_empty() {
        return Err(CodecError::Trailing(input.0.len()));
    }
    Ok(message)
}

struct Writer(Vec<u8>);

impl Writer {
    fn word(&mut self, word: u64) {
        self.0.extend_from_slice(&word.to_le_bytes());
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.word(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    fn ids(&mut self, ids: &[u64]) {
        self.word(ids.len() as u64);
        ids.iter().for_each(|&id| self.word(id));
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn word(&mut self) -> Result<u64, CodecError> {
        let (head, tail) = self
            .0
            .split_first_chunk::<8>()
            .ok_or(CodecError::Truncated)?;
        self.0 = tail;
        Ok(u64::from_le_bytes(*head))
    }

    fn flag(&mut self, field: &'static str) -> Result<bool, CodecError> {
        match self.word()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(CodecError::OutOfRange { field, value }),
        }
    }

    fn bytes(&mut self) -> Result<bytes::Bytes, CodecError> {
        let length = self.word()?;
        let length = usize::try_from(length)
            .ok()
            .filter(|&length| length <= self.0.len())
            .ok_or(CodecError::Truncated)?;
        let (head, tail) = self.0.split_at(length);
        self.0 = tail;
        Ok(bytes::Bytes::copy_from_slice(head))
    }

    fn ids(&mut self) -> Result<Vec<u64>, CodecError> {
        let count = self.word()?;
        if count > IDS_MAX {
            return Err(CodecError::OutOfRange {
                field: "ids",
                value: count,
            });
        }
        (0..count).map(|_| self.word()).collect()
    }

    fn entry(&mut self) -> Result<Entry, CodecError> {
        let mut entry = Entry::default();
        let kind = self.word()?;
        entry.entry_type = i32::try_from(kind)
            .ok()
            .and_then(EntryType::from_i32)
            .ok_or(CodecError::OutOfRange {
                field: "entry_type",
                value: kind,
            })?;
        entry.term = self.word()?;
        entry.index = self.word()?;
        entry.sync_log = self.flag("sync_log")?;
        entry.data = self.bytes()?;
        entry.context = self.bytes()?;
        Ok(entry)
    }

    fn snapshot(&mut self) -> Result<Snapshot, CodecError> {
        // Struct literals evaluate their fields in the order written: the wire order.
        let data = self.bytes()?;
        let metadata = SnapshotMetadata {
            index: self.word()?,
            term: self.word()?,
            conf_state: SingularPtrField::some(ConfState {
                voters: self.ids()?,
                learners: self.ids()?,
                voters_outgoing: self.ids()?,
                learners_next: self.ids()?,
                auto_leave: self.flag("auto_leave")?,
                ..Default::default()
            }),
            ..Default::default()
        };
        Ok(Snapshot {
            data,
            metadata: SingularPtrField::some(metadata),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        let entry = Entry {
            index: 9,
            term: 5,
            data: bytes::Bytes::from_static(b"hello"),
            ..Default::default()
        };
        let mut snapshot = Snapshot {
            data: bytes::Bytes::from_static(b"image"),
            ..Default::default()
        };
        snapshot.mut_metadata().index = 8;
        snapshot.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        Message {
            msg_type: MessageType::MsgAppend,
            to: 2,
            from: 1,
            term: 5,
            commit: 3,
            entries: RepeatedField::from_vec(vec![entry]),
            snapshot: SingularPtrField::some(snapshot),
            ..Default::default()
        }
    }

    #[test]
    fn messages_round_trip() {
        let message = sample();
        assert_eq!(decode(&encode(&message)), Ok(message));
        assert_eq!(decode(&encode(&Message::default())), Ok(Message::default()));
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        let bytes = encode(&sample());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(CodecError::Trailing(1)));
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn flipped_bytes_never_panic(index in 0usize..400, value in proptest::num::u8::ANY) {
            let mut bytes = encode(&sample());
            let index = index % bytes.len();
            bytes[index] = value;
            let _ = decode(&bytes);
        }
    }
}
