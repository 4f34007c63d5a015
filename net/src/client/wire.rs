//! Framing and the request/response envelope.
//!
//! A request frame is `size:i32 | header | body`; a response frame is `size:i32 |
//! correlation_id:i32 [| tagged fields for flexible versions] | body`. Control requests are
//! encoded by the `kafka-protocol` crate; the hot Produce path writes its frames itself
//! (`produce`).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

use super::error::ClientError;

/// Bytes of the size prefix of every frame.
pub const SIZE_PREFIX_BYTES: usize = 4;
/// The largest response frame accepted (Fetch responses are bounded by the request's
/// `max_bytes`; this is a guard against a garbled size).
pub const RESPONSE_MAX_BYTES: usize = 256 * 1024 * 1024;

/// The name of an API, for messages.
pub fn api_name<R: Request>() -> &'static str {
    let name = std::any::type_name::<R>();
    name.rsplit("::").next().unwrap_or(name)
}

/// Encodes one whole request frame (size prefix included) with `kafka-protocol`.
pub fn encode_request<R: Request>(
    request: &R,
    version: i16,
    correlation_id: i32,
    client_id: &str,
) -> Result<Bytes, ClientError> {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_string(client_id.to_owned())));
    let encode_error = |reason: anyhow::Error| ClientError::Encode {
        api: api_name::<R>(),
        version,
        reason: reason.to_string(),
    };
    let mut buffer = BytesMut::with_capacity(256);
    buffer.put_i32(0);
    header
        .encode(&mut buffer, R::header_version(version))
        .map_err(encode_error)?;
    request.encode(&mut buffer, version).map_err(encode_error)?;
    patch_size_prefix(&mut buffer, 0);
    Ok(buffer.freeze())
}

/// Writes the size of the frame that starts at `start` (its prefix excluded) into its prefix.
pub fn patch_size_prefix(buffer: &mut BytesMut, start: usize) {
    let size = buffer.len() - start - SIZE_PREFIX_BYTES;
    let size = i32::try_from(size).expect("a request frame is built under 2 GiB");
    buffer[start..start + SIZE_PREFIX_BYTES].copy_from_slice(&size.to_be_bytes());
}

/// Reads the correlation id at the start of a response payload (the frame without its size).
pub fn response_correlation_id(payload: &[u8]) -> Result<i32, ClientError> {
    let head = payload.get(..4).ok_or(ClientError::Decode {
        what: "response header",
        reason: format!("{} bytes", payload.len()),
    })?;
    Ok(i32::from_be_bytes([head[0], head[1], head[2], head[3]]))
}

/// Decodes a response payload (the frame without its size) for request type `R` at `version`,
/// checking its correlation id.
pub fn decode_response<R: Request>(
    mut payload: Bytes,
    version: i16,
    correlation_id: i32,
) -> Result<R::Response, ClientError> {
    let got = response_correlation_id(&payload)?;
    if got != correlation_id {
        return Err(ClientError::Correlation {
            expected: correlation_id,
            got,
        });
    }
    let decode_error = |reason: anyhow::Error| ClientError::Decode {
        what: api_name::<R>(),
        reason: reason.to_string(),
    };
    ResponseHeader::decode(
        &mut payload,
        <R::Response as HeaderVersion>::header_version(version),
    )
    .map_err(decode_error)?;
    let response = R::Response::decode(&mut payload, version).map_err(decode_error)?;
    Ok(response)
}

/// Splits the next whole frame off the front of `buffer`, returning its payload (no size
/// prefix), or `None` when more bytes are needed. `needed` is set to the bytes the next frame
/// needs in all, so the reader can grow its buffer once.
pub fn split_frame(
    buffer: &mut BytesMut,
    needed: &mut usize,
) -> Result<Option<Bytes>, ClientError> {
    if buffer.len() < SIZE_PREFIX_BYTES {
        *needed = SIZE_PREFIX_BYTES;
        return Ok(None);
    }
    let size = i32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]);
    let size = usize::try_from(size).map_err(|_| ClientError::Decode {
        what: "response frame",
        reason: format!("negative size {size}"),
    })?;
    if size > RESPONSE_MAX_BYTES {
        return Err(ClientError::FrameTooLarge {
            size,
            max: RESPONSE_MAX_BYTES,
        });
    }
    *needed = SIZE_PREFIX_BYTES + size;
    if buffer.len() < *needed {
        return Ok(None);
    }
    let mut frame = buffer.split_to(*needed).freeze();
    frame.advance(SIZE_PREFIX_BYTES);
    Ok(Some(frame))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};

    #[test]
    fn request_frames_carry_their_size_and_header() {
        let frame = encode_request(&ApiVersionsRequest::default(), 0, 7, "perf").expect("encode");
        let size = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        assert_eq!(size as usize, frame.len() - SIZE_PREFIX_BYTES);
        // api key 18, version 0, correlation id 7, client id "perf".
        assert_eq!(&frame[4..12], &[0, 18, 0, 0, 0, 0, 0, 7]);
        assert_eq!(&frame[12..18], &[0, 4, b'p', b'e', b'r', b'f']);
    }

    #[test]
    fn frames_split_only_when_whole_and_correlation_ids_are_checked() {
        let mut body = BytesMut::new();
        body.put_i32(42);
        ApiVersionsResponse::default()
            .encode(&mut body, 0)
            .expect("encode");
        let mut stream = BytesMut::new();
        stream.put_i32(body.len() as i32);
        stream.extend_from_slice(&body);
        let whole = stream.len();
        let mut partial = BytesMut::from(&stream[..whole - 1]);
        let mut needed = 0;
        assert!(split_frame(&mut partial, &mut needed)
            .expect("ok")
            .is_none());
        assert_eq!(needed, whole);
        let payload = split_frame(&mut stream, &mut needed)
            .expect("ok")
            .expect("whole");
        assert!(stream.is_empty());
        assert!(decode_response::<ApiVersionsRequest>(payload.clone(), 0, 42).is_ok());
        assert!(matches!(
            decode_response::<ApiVersionsRequest>(payload, 0, 41),
            Err(ClientError::Correlation {
                expected: 41,
                got: 42
            })
        ));
        let mut negative = BytesMut::from(&[0xff_u8, 0xff, 0xff, 0xff][..]);
        assert!(split_frame(&mut negative, &mut needed).is_err());
    }
}
