//! One handler per Kafka API key, and the dispatch that picks one.
//!
//! A request is answered or refused here, synchronously and without I/O: the connection task
//! hands in a whole frame and gets back either a whole response frame or a reason to close the
//! connection. Closing is the only honest answer to an unknown API key, an unimplemented
//! version or an undecodable body, because a Kafka client can only parse a response in the
//! format of the version it asked for. The one exception is ApiVersions, whose v0 error reply
//! every client can read (KIP-511), so an unsupported ApiVersions version gets
//! UNSUPPORTED_VERSION as Kafka's own broker does.

pub mod api_versions;
pub mod metadata;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};
use thiserror::Error;

use crate::{HeaderError, RequestPrefix, SIZE_PREFIX_BYTES};

/// What this broker tells clients about itself. Built once at start, shared read-only by every
/// connection of a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerIdentity {
    pub node_id: i32,
    /// Host clients should connect to (the advertised listener, not the bind address).
    pub advertised_host: String,
    pub advertised_port: u16,
    pub cluster_id: String,
}

/// Why a request gets no response and its connection is closed.
#[derive(Debug, Error)]
pub enum RequestError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("unknown API key {api_key} (version {api_version})")]
    UnknownApiKey { api_key: i16, api_version: i16 },
    #[error("{api:?} version {api_version} is not implemented")]
    Unsupported { api: ApiKey, api_version: i16 },
    // kafka-protocol reports failures as `anyhow::Error`, which is not a `std::error::Error`;
    // its rendered chain is kept so the log line says what was wrong.
    #[error("cannot decode {api:?} v{api_version} request: {reason}")]
    Decode {
        api: ApiKey,
        api_version: i16,
        reason: String,
    },
    #[error("cannot encode {api:?} v{api_version} response: {reason}")]
    Encode {
        api: ApiKey,
        api_version: i16,
        reason: String,
    },
}

/// Answers one request payload (a frame without its size prefix) with a whole response frame,
/// size prefix included.
pub fn handle_request(payload: Bytes, broker: &BrokerIdentity) -> Result<Bytes, RequestError> {
    let prefix = RequestPrefix::parse(&payload)?;
    let Ok(api) = ApiKey::try_from(prefix.api_key) else {
        return Err(RequestError::UnknownApiKey {
            api_key: prefix.api_key,
            api_version: prefix.api_version,
        });
    };
    match api {
        ApiKey::ApiVersions => api_versions::handle(prefix, payload),
        ApiKey::Metadata => metadata::handle(prefix, payload, broker),
        _ => Err(RequestError::Unsupported {
            api,
            api_version: prefix.api_version,
        }),
    }
}

/// Decodes the request header of `api` at `version`, leaving `payload` at the body. The header
/// version comes from the body type, as each API fixes which header format its versions use.
fn decode_header<R: HeaderVersion>(
    api: ApiKey,
    api_version: i16,
    payload: &mut Bytes,
) -> Result<RequestHeader, RequestError> {
    RequestHeader::decode(payload, R::header_version(api_version))
        .map_err(|error| decode_error(api, api_version, &error))
}

/// Decodes the body of `api` at `version` from the rest of `payload`.
fn decode_body<R: Decodable>(
    api: ApiKey,
    api_version: i16,
    payload: &mut Bytes,
) -> Result<R, RequestError> {
    R::decode(payload, api_version).map_err(|error| decode_error(api, api_version, &error))
}

fn decode_error(api: ApiKey, api_version: i16, error: &anyhow::Error) -> RequestError {
    RequestError::Decode {
        api,
        api_version,
        reason: format!("{error:#}"),
    }
}

/// Encodes a whole response frame: size prefix, response header, body.
fn encode_response<R: Encodable + HeaderVersion>(
    api: ApiKey,
    api_version: i16,
    correlation_id: i32,
    body: &R,
) -> Result<Bytes, RequestError> {
    let encode_error = |reason: String| RequestError::Encode {
        api,
        api_version,
        reason,
    };
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let mut frame = BytesMut::with_capacity(256);
    frame.put_i32(0); // patched below, once the size is known
    header
        .encode(&mut frame, R::header_version(api_version))
        .map_err(|error| encode_error(format!("{error:#}")))?;
    body.encode(&mut frame, api_version)
        .map_err(|error| encode_error(format!("{error:#}")))?;
    let size = i32::try_from(frame.len() - SIZE_PREFIX_BYTES)
        .map_err(|_| encode_error(format!("{} bytes do not fit a frame", frame.len())))?;
    frame[..SIZE_PREFIX_BYTES].copy_from_slice(&size.to_be_bytes());
    Ok(frame.freeze())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn broker() -> BrokerIdentity {
        BrokerIdentity {
            node_id: 0,
            advertised_host: "127.0.0.1".to_owned(),
            advertised_port: 9092,
            cluster_id: "fuzz".to_owned(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 4000,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// A client controls every byte after the size prefix: whatever follows a known API key
        /// and version, the handler answers or refuses, and never panics or aborts (the
        /// kafka-protocol decoders size allocations from counts in the data, so this also
        /// guards against a claimed array of 2^31 elements).
        #[test]
        fn arbitrary_requests_are_answered_or_refused(
            api_key in prop_oneof![Just(ApiKey::ApiVersions as i16), Just(ApiKey::Metadata as i16), any::<i16>()],
            api_version in -1i16..16,
            correlation_id in any::<i32>(),
            rest in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut payload = Vec::with_capacity(8 + rest.len());
            payload.extend_from_slice(&api_key.to_be_bytes());
            payload.extend_from_slice(&api_version.to_be_bytes());
            payload.extend_from_slice(&correlation_id.to_be_bytes());
            payload.extend_from_slice(&rest);
            if let Ok(frame) = handle_request(Bytes::from(payload), &broker()) {
                let size = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
                prop_assert_eq!(size as usize + SIZE_PREFIX_BYTES, frame.len());
                let echoed = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
                prop_assert_eq!(echoed, correlation_id);
            }
        }
    }
}
