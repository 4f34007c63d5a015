//! ApiVersions (key 18): the first request of every client, telling it which APIs and versions
//! this broker implements.
//!
//! Only what is implemented is advertised: clients pick the highest common version of each API
//! from this list, and kafka-python even infers the broker's release from it. The reply carries
//! no tagged fields (no supported or finalized features): librdkafka 2.0.2, the one in Debian's
//! kcat, misreads a non-empty tagged-field section in an ApiVersions v3 reply.

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::ResponseError;

use super::{decode_body, decode_header, encode_response, RequestError};
use crate::RequestPrefix;

/// Versions of ApiVersions this broker answers (all of Kafka 4.1's).
pub const VERSIONS: (i16, i16) = (0, 4);
const _: () =
    assert!(super::API_VERSIONS[4].1 == VERSIONS.0 && super::API_VERSIONS[4].2 == VERSIONS.1);

/// Every API this broker implements, with its version range.
pub fn supported_apis() -> Vec<ApiVersion> {
    super::API_VERSIONS
        .iter()
        .map(|&(api, min, max)| {
            ApiVersion::default()
                .with_api_key(api as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect()
}

/// Answers an ApiVersions request; a version newer than ours gets UNSUPPORTED_VERSION in the
/// v0 format, which every client can read, so it can retry with a version we list.
pub fn handle(prefix: RequestPrefix, payload: Bytes) -> Result<Bytes, RequestError> {
    let version = prefix.api_version;
    if !(VERSIONS.0..=VERSIONS.1).contains(&version) {
        let response = ApiVersionsResponse::default()
            .with_error_code(ResponseError::UnsupportedVersion.code())
            .with_api_keys(supported_apis());
        return encode_response(ApiKey::ApiVersions, 0, prefix.correlation_id, &response);
    }
    // The body (client software name and version, v3+) is decoded only to refuse a malformed
    // request; nothing in it changes the answer.
    let mut payload = payload;
    let header = decode_header::<ApiVersionsRequest>(ApiKey::ApiVersions, version, &mut payload)?;
    decode_body::<ApiVersionsRequest>(ApiKey::ApiVersions, version, &mut payload)?;
    let response = ApiVersionsResponse::default().with_api_keys(supported_apis());
    encode_response(
        ApiKey::ApiVersions,
        version,
        header.correlation_id,
        &response,
    )
}
