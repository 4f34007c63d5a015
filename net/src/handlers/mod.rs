//! One handler per Kafka API key, and the dispatch that picks one.
//!
//! The connection task hands in a whole frame and gets back a whole response frame, nothing
//! (Produce with `acks = 0`), or a reason to close the connection. Decoding, the version check
//! and encoding happen here; what the answer says comes from the [`Broker`]. Closing is the only honest answer to an unknown API key, an unimplemented
//! version or an undecodable body, because a Kafka client can only parse a response in the
//! format of the version it asked for. The one exception is ApiVersions, whose v0 error reply
//! every client can read (KIP-511), so an unsupported ApiVersions version gets
//! UNSUPPORTED_VERSION as Kafka's own broker does.

pub mod api_versions;
pub mod metadata;

use std::future::Future;
use std::pin::Pin;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, ApiKey, CreatePartitionsRequest,
    CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, DescribeClusterRequest, DescribeClusterResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, FetchRequest, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest,
    MetadataResponse, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, ProduceRequest,
    ProduceResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse,
};
use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, OffsetDeleteRequest, OffsetDeleteResponse,
};
use kafka_protocol::messages::{
    DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse,
};
use kafka_protocol::messages::{DescribeQuorumRequest, DescribeQuorumResponse};
use kafka_protocol::messages::{DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse};
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};
use thiserror::Error;

use crate::response::{self, FetchAnswer, ResponseFrame};
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

/// The broker behind the wire protocol: one method per API that needs more than the request
/// itself. This crate decodes the request, checks its version against [`API_VERSIONS`] and
/// encodes whatever comes back for the negotiated version; the implementation (the `ringlog`
/// binary's shards) owns the partitions, the topic catalog and the routing between cores, and
/// must leave out of a response every field the version given to it does not have.
///
/// Futures are not `Send`: each runs on the one executor that owns the connection.
#[allow(async_fn_in_trait)]
pub trait Broker {
    fn identity(&self) -> &BrokerIdentity;
    async fn metadata(&self, request: MetadataRequest, version: i16) -> MetadataResponse;
    /// Produce, in two steps so that a connection can take its next produce request while this
    /// one's records are written. The call returns once every partition's records have their
    /// place in their log (offsets assigned, queued for writing; a later call's records come
    /// after them), or have been refused; the future it returns then gives the response once
    /// the records are written per each log's durability settings. `None` for `acks = 0`: the
    /// client expects no response at all.
    async fn produce(
        &self,
        request: ProduceRequest,
        version: i16,
    ) -> Later<Option<ProduceResponse>>;
    /// The response with every partition's records left out, and the records beside it (see
    /// [`crate::response`]): they are written to the socket from where they lie.
    async fn fetch(&self, request: FetchRequest, version: i16) -> FetchAnswer;
    async fn list_offsets(&self, request: ListOffsetsRequest, version: i16) -> ListOffsetsResponse;
    /// Where each asked leader epoch ends in the leader's log (KIP-101, KIP-320).
    async fn offset_for_leader_epoch(
        &self,
        request: OffsetForLeaderEpochRequest,
        version: i16,
    ) -> OffsetForLeaderEpochResponse;
    async fn create_topics(
        &self,
        request: CreateTopicsRequest,
        version: i16,
    ) -> CreateTopicsResponse;
    async fn delete_topics(
        &self,
        request: DeleteTopicsRequest,
        version: i16,
    ) -> DeleteTopicsResponse;
    async fn create_partitions(
        &self,
        request: CreatePartitionsRequest,
        version: i16,
    ) -> CreatePartitionsResponse;
    async fn describe_configs(
        &self,
        request: DescribeConfigsRequest,
        version: i16,
    ) -> DescribeConfigsResponse;
    async fn alter_configs(
        &self,
        request: AlterConfigsRequest,
        version: i16,
    ) -> AlterConfigsResponse;
    async fn incremental_alter_configs(
        &self,
        request: IncrementalAlterConfigsRequest,
        version: i16,
    ) -> IncrementalAlterConfigsResponse;
    async fn describe_cluster(
        &self,
        request: DescribeClusterRequest,
        version: i16,
    ) -> DescribeClusterResponse;
    async fn elect_leaders(
        &self,
        request: ElectLeadersRequest,
        version: i16,
    ) -> ElectLeadersResponse;
    async fn describe_quorum(
        &self,
        request: DescribeQuorumRequest,
        version: i16,
    ) -> DescribeQuorumResponse;
    async fn describe_topic_partitions(
        &self,
        request: DescribeTopicPartitionsRequest,
        version: i16,
    ) -> DescribeTopicPartitionsResponse;
    async fn find_coordinator(
        &self,
        request: FindCoordinatorRequest,
        version: i16,
    ) -> FindCoordinatorResponse;
    /// `client`: who is joining, for DescribeGroups.
    async fn join_group(
        &self,
        request: JoinGroupRequest,
        version: i16,
        client: ClientInfo,
    ) -> JoinGroupResponse;
    async fn sync_group(&self, request: SyncGroupRequest, version: i16) -> SyncGroupResponse;
    async fn heartbeat(&self, request: HeartbeatRequest, version: i16) -> HeartbeatResponse;
    async fn leave_group(&self, request: LeaveGroupRequest, version: i16) -> LeaveGroupResponse;
    async fn offset_commit(
        &self,
        request: OffsetCommitRequest,
        version: i16,
    ) -> OffsetCommitResponse;
    async fn offset_fetch(&self, request: OffsetFetchRequest, version: i16) -> OffsetFetchResponse;
    async fn list_groups(&self, request: ListGroupsRequest, version: i16) -> ListGroupsResponse;
    async fn delete_groups(
        &self,
        request: DeleteGroupsRequest,
        version: i16,
    ) -> DeleteGroupsResponse;
    async fn offset_delete(
        &self,
        request: OffsetDeleteRequest,
        version: i16,
    ) -> OffsetDeleteResponse;
    async fn describe_groups(
        &self,
        request: DescribeGroupsRequest,
        version: i16,
    ) -> DescribeGroupsResponse;
    /// A producer id for an idempotent producer.
    async fn init_producer_id(
        &self,
        request: InitProducerIdRequest,
        version: i16,
    ) -> InitProducerIdResponse;
    /// A heartbeat of the new consumer group protocol (KIP-848); `client` as for JoinGroup.
    async fn consumer_group_heartbeat(
        &self,
        request: ConsumerGroupHeartbeatRequest,
        version: i16,
        client: ClientInfo,
    ) -> ConsumerGroupHeartbeatResponse;
    async fn consumer_group_describe(
        &self,
        request: ConsumerGroupDescribeRequest,
        version: i16,
    ) -> ConsumerGroupDescribeResponse;
}

/// The second step of a request that is answered later: see [`Broker::produce`].
pub type Later<T> = Pin<Box<dyn Future<Output = T>>>;

/// A request taken by [`start_request`]: answered already, or to be answered once its future
/// resolves (a response frame, or nothing).
pub enum Handled {
    Now(Option<ResponseFrame>),
    Later(Later<Result<Option<Bytes>, RequestError>>),
}

/// Who sent a request: the client id from its header and the address it connected from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    pub client_id: String,
    pub host: String,
}

impl ClientInfo {
    fn of(header: &RequestHeader, peer_host: &str) -> Self {
        Self {
            client_id: header
                .client_id
                .as_ref()
                .map_or_else(String::new, |id| id.to_string()),
            host: peer_host.to_owned(),
        }
    }
}

/// Every API this broker implements, with the versions it answers. ApiVersions advertises
/// exactly this list; clients pick the highest common version of each.
pub const API_VERSIONS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 15),
    (ApiKey::ListOffsets, 1, 10),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::DescribeQuorum, 0, 1),
    (ApiKey::DescribeTopicPartitions, 0, 0),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
];

/// The versions of `api` this broker answers, if it implements it.
pub fn supported_versions(api: ApiKey) -> Option<(i16, i16)> {
    API_VERSIONS
        .iter()
        .find(|(key, _, _)| *key == api)
        .map(|&(_, min, max)| (min, max))
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

/// Takes one request payload (a frame without its size prefix), as [`handle_request`] does, but
/// returns a supported Produce request as soon as its records are queued in their logs
/// ([`Broker::produce`]), with its response to come; every other request is answered whole.
pub async fn start_request<B: Broker>(
    payload: Bytes,
    broker: &B,
    peer_host: &str,
) -> Result<Handled, RequestError> {
    let prefix = RequestPrefix::parse(&payload)?;
    let version = prefix.api_version;
    if prefix.api_key == ApiKey::Produce as i16 && check_supported(ApiKey::Produce, version).is_ok()
    {
        return start_produce(version, payload, broker)
            .await
            .map(Handled::Later);
    }
    handle_request(payload, broker, peer_host)
        .await
        .map(Handled::Now)
}

/// Decodes a Produce request (of a supported version), queues its records and returns the
/// encoding of its response to come.
async fn start_produce<B: Broker>(
    version: i16,
    mut payload: Bytes,
    broker: &B,
) -> Result<Later<Result<Option<Bytes>, RequestError>>, RequestError> {
    let api = ApiKey::Produce;
    let header = decode_header::<ProduceRequest>(api, version, &mut payload)?;
    let request = decode_body::<ProduceRequest>(api, version, &mut payload)?;
    let later = broker.produce(request, version).await;
    let correlation_id = header.correlation_id;
    Ok(Box::pin(async move {
        match later.await {
            Some(response) => encode_response(api, version, correlation_id, &response).map(Some),
            None => Ok(None),
        }
    }))
}

/// Answers one request payload (a frame without its size prefix) with a whole response frame,
/// size prefix included, or with nothing when the client asked for no response (Produce with
/// `acks = 0`). A Fetch response is a frame of pieces: its records are not copied into it.
pub async fn handle_request<B: Broker>(
    payload: Bytes,
    broker: &B,
    peer_host: &str,
) -> Result<Option<ResponseFrame>, RequestError> {
    let prefix = RequestPrefix::parse(&payload)?;
    if prefix.api_key == ApiKey::Fetch as i16 {
        return handle_fetch(prefix.api_version, payload, broker)
            .await
            .map(Some);
    }
    let response = handle_encoded(prefix, payload, broker, peer_host).await?;
    Ok(response.map(ResponseFrame::whole))
}

async fn handle_fetch<B: Broker>(
    version: i16,
    mut payload: Bytes,
    broker: &B,
) -> Result<ResponseFrame, RequestError> {
    let api = ApiKey::Fetch;
    check_supported(api, version)?;
    let header = decode_header::<FetchRequest>(api, version, &mut payload)?;
    let request = decode_body::<FetchRequest>(api, version, &mut payload)?;
    let answer = broker.fetch(request, version).await;
    response::encode_fetch(version, header.correlation_id, answer)
}

/// Refuses a version of `api` this broker does not answer.
fn check_supported(api: ApiKey, version: i16) -> Result<(), RequestError> {
    match supported_versions(api) {
        Some((min, max)) if (min..=max).contains(&version) => Ok(()),
        _ => Err(RequestError::Unsupported {
            api,
            api_version: version,
        }),
    }
}

/// Answers every request but Fetch with one encoded frame.
async fn handle_encoded<B: Broker>(
    prefix: RequestPrefix,
    payload: Bytes,
    broker: &B,
    peer_host: &str,
) -> Result<Option<Bytes>, RequestError> {
    let Ok(api) = ApiKey::try_from(prefix.api_key) else {
        return Err(RequestError::UnknownApiKey {
            api_key: prefix.api_key,
            api_version: prefix.api_version,
        });
    };
    if api == ApiKey::ApiVersions {
        return api_versions::handle(prefix, payload).map(Some);
    }
    let version = prefix.api_version;
    check_supported(api, version)?;
    match api {
        ApiKey::Metadata => {
            answer(api, version, payload, |request| async move {
                Some(broker.metadata(request, version).await)
            })
            .await
        }
        ApiKey::Produce => start_produce(version, payload, broker).await?.await,
        ApiKey::ListOffsets => {
            answer(api, version, payload, |request| async move {
                Some(broker.list_offsets(request, version).await)
            })
            .await
        }
        ApiKey::OffsetForLeaderEpoch => {
            answer(api, version, payload, |request| async move {
                Some(broker.offset_for_leader_epoch(request, version).await)
            })
            .await
        }
        ApiKey::CreateTopics => {
            answer(api, version, payload, |request| async move {
                Some(broker.create_topics(request, version).await)
            })
            .await
        }
        ApiKey::DeleteTopics => {
            answer(api, version, payload, |request| async move {
                Some(broker.delete_topics(request, version).await)
            })
            .await
        }
        ApiKey::CreatePartitions => {
            answer(api, version, payload, |request| async move {
                Some(broker.create_partitions(request, version).await)
            })
            .await
        }
        ApiKey::DescribeConfigs => {
            answer(api, version, payload, |request| async move {
                Some(broker.describe_configs(request, version).await)
            })
            .await
        }
        ApiKey::AlterConfigs => {
            answer(api, version, payload, |request| async move {
                Some(broker.alter_configs(request, version).await)
            })
            .await
        }
        ApiKey::IncrementalAlterConfigs => {
            answer(api, version, payload, |request| async move {
                Some(broker.incremental_alter_configs(request, version).await)
            })
            .await
        }
        ApiKey::DescribeCluster => {
            answer(api, version, payload, |request| async move {
                Some(broker.describe_cluster(request, version).await)
            })
            .await
        }
        ApiKey::ElectLeaders => {
            answer(api, version, payload, |request| async move {
                Some(broker.elect_leaders(request, version).await)
            })
            .await
        }
        ApiKey::DescribeQuorum => {
            answer(api, version, payload, |request| async move {
                Some(broker.describe_quorum(request, version).await)
            })
            .await
        }
        ApiKey::DescribeTopicPartitions => {
            answer(api, version, payload, |request| async move {
                Some(broker.describe_topic_partitions(request, version).await)
            })
            .await
        }
        ApiKey::FindCoordinator => {
            answer(api, version, payload, |request| async move {
                Some(broker.find_coordinator(request, version).await)
            })
            .await
        }
        ApiKey::JoinGroup => {
            let mut body = payload;
            let header = decode_header::<JoinGroupRequest>(api, version, &mut body)?;
            let request = decode_body::<JoinGroupRequest>(api, version, &mut body)?;
            let client = ClientInfo::of(&header, peer_host);
            let response = broker.join_group(request, version, client).await;
            encode_response(api, version, header.correlation_id, &response).map(Some)
        }
        ApiKey::ConsumerGroupHeartbeat => {
            let mut body = payload;
            let header = decode_header::<ConsumerGroupHeartbeatRequest>(api, version, &mut body)?;
            let request = decode_body::<ConsumerGroupHeartbeatRequest>(api, version, &mut body)?;
            let client = ClientInfo::of(&header, peer_host);
            let response = broker
                .consumer_group_heartbeat(request, version, client)
                .await;
            encode_response(api, version, header.correlation_id, &response).map(Some)
        }
        ApiKey::ConsumerGroupDescribe => {
            answer(api, version, payload, |request| async move {
                Some(broker.consumer_group_describe(request, version).await)
            })
            .await
        }
        ApiKey::SyncGroup => {
            answer(api, version, payload, |request| async move {
                Some(broker.sync_group(request, version).await)
            })
            .await
        }
        ApiKey::Heartbeat => {
            answer(api, version, payload, |request| async move {
                Some(broker.heartbeat(request, version).await)
            })
            .await
        }
        ApiKey::LeaveGroup => {
            answer(api, version, payload, |request| async move {
                Some(broker.leave_group(request, version).await)
            })
            .await
        }
        ApiKey::OffsetCommit => {
            answer(api, version, payload, |request| async move {
                Some(broker.offset_commit(request, version).await)
            })
            .await
        }
        ApiKey::OffsetFetch => {
            answer(api, version, payload, |request| async move {
                Some(broker.offset_fetch(request, version).await)
            })
            .await
        }
        ApiKey::ListGroups => {
            answer(api, version, payload, |request| async move {
                Some(broker.list_groups(request, version).await)
            })
            .await
        }
        ApiKey::DescribeGroups => {
            answer(api, version, payload, |request| async move {
                Some(broker.describe_groups(request, version).await)
            })
            .await
        }
        ApiKey::DeleteGroups => {
            answer(api, version, payload, |request| async move {
                Some(broker.delete_groups(request, version).await)
            })
            .await
        }
        ApiKey::OffsetDelete => {
            answer(api, version, payload, |request| async move {
                Some(broker.offset_delete(request, version).await)
            })
            .await
        }
        ApiKey::InitProducerId => {
            answer(api, version, payload, |request| async move {
                Some(broker.init_producer_id(request, version).await)
            })
            .await
        }
        _ => Err(RequestError::Unsupported {
            api,
            api_version: version,
        }),
    }
}

/// Decodes a request of type `Req`, lets `respond` answer it and encodes the answer.
async fn answer<Req, Resp, F, Fut>(
    api: ApiKey,
    version: i16,
    mut payload: Bytes,
    respond: F,
) -> Result<Option<Bytes>, RequestError>
where
    Req: Decodable + HeaderVersion,
    Resp: Encodable + HeaderVersion,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Option<Resp>>,
{
    let header = decode_header::<Req>(api, version, &mut payload)?;
    let request = decode_body::<Req>(api, version, &mut payload)?;
    match respond(request).await {
        Some(response) => encode_response(api, version, header.correlation_id, &response).map(Some),
        None => Ok(None),
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

    /// A broker with no topics that answers every request with the empty response: enough to
    /// exercise decoding and encoding of every API and version.
    struct EmptyBroker(BrokerIdentity);

    impl Broker for EmptyBroker {
        fn identity(&self) -> &BrokerIdentity {
            &self.0
        }
        async fn metadata(&self, _: MetadataRequest, version: i16) -> MetadataResponse {
            let node = (
                self.0.node_id,
                self.0.advertised_host.clone(),
                self.0.advertised_port,
            );
            metadata::cluster_response(version, &self.0, &[node], self.0.node_id)
        }
        async fn produce(&self, request: ProduceRequest, _: i16) -> Later<Option<ProduceResponse>> {
            Box::pin(std::future::ready(
                (request.acks != 0).then(ProduceResponse::default),
            ))
        }
        async fn fetch(&self, _: FetchRequest, _: i16) -> FetchAnswer {
            FetchAnswer::default()
        }
        async fn list_offsets(&self, _: ListOffsetsRequest, _: i16) -> ListOffsetsResponse {
            ListOffsetsResponse::default()
        }
        async fn offset_for_leader_epoch(
            &self,
            _: OffsetForLeaderEpochRequest,
            _: i16,
        ) -> OffsetForLeaderEpochResponse {
            OffsetForLeaderEpochResponse::default()
        }
        async fn create_topics(&self, _: CreateTopicsRequest, _: i16) -> CreateTopicsResponse {
            CreateTopicsResponse::default()
        }
        async fn delete_topics(&self, _: DeleteTopicsRequest, _: i16) -> DeleteTopicsResponse {
            DeleteTopicsResponse::default()
        }
        async fn create_partitions(
            &self,
            _: CreatePartitionsRequest,
            _: i16,
        ) -> CreatePartitionsResponse {
            CreatePartitionsResponse::default()
        }
        async fn describe_configs(
            &self,
            _: DescribeConfigsRequest,
            _: i16,
        ) -> DescribeConfigsResponse {
            DescribeConfigsResponse::default()
        }
        async fn alter_configs(&self, _: AlterConfigsRequest, _: i16) -> AlterConfigsResponse {
            AlterConfigsResponse::default()
        }
        async fn incremental_alter_configs(
            &self,
            _: IncrementalAlterConfigsRequest,
            _: i16,
        ) -> IncrementalAlterConfigsResponse {
            IncrementalAlterConfigsResponse::default()
        }
        async fn describe_cluster(
            &self,
            _: DescribeClusterRequest,
            _: i16,
        ) -> DescribeClusterResponse {
            DescribeClusterResponse::default()
        }
        async fn elect_leaders(&self, _: ElectLeadersRequest, _: i16) -> ElectLeadersResponse {
            ElectLeadersResponse::default()
        }
        async fn describe_quorum(
            &self,
            _: DescribeQuorumRequest,
            _: i16,
        ) -> DescribeQuorumResponse {
            DescribeQuorumResponse::default()
        }
        async fn describe_topic_partitions(
            &self,
            _: DescribeTopicPartitionsRequest,
            _: i16,
        ) -> DescribeTopicPartitionsResponse {
            DescribeTopicPartitionsResponse::default()
        }
        async fn find_coordinator(
            &self,
            _: FindCoordinatorRequest,
            _: i16,
        ) -> FindCoordinatorResponse {
            FindCoordinatorResponse::default()
        }
        async fn join_group(
            &self,
            _: JoinGroupRequest,
            _: i16,
            _: ClientInfo,
        ) -> JoinGroupResponse {
            JoinGroupResponse::default()
        }
        async fn sync_group(&self, _: SyncGroupRequest, _: i16) -> SyncGroupResponse {
            SyncGroupResponse::default()
        }
        async fn heartbeat(&self, _: HeartbeatRequest, _: i16) -> HeartbeatResponse {
            HeartbeatResponse::default()
        }
        async fn leave_group(&self, _: LeaveGroupRequest, _: i16) -> LeaveGroupResponse {
            LeaveGroupResponse::default()
        }
        async fn offset_commit(&self, _: OffsetCommitRequest, _: i16) -> OffsetCommitResponse {
            OffsetCommitResponse::default()
        }
        async fn offset_fetch(&self, _: OffsetFetchRequest, _: i16) -> OffsetFetchResponse {
            OffsetFetchResponse::default()
        }
        async fn list_groups(&self, _: ListGroupsRequest, _: i16) -> ListGroupsResponse {
            ListGroupsResponse::default()
        }
        async fn delete_groups(&self, _: DeleteGroupsRequest, _: i16) -> DeleteGroupsResponse {
            DeleteGroupsResponse::default()
        }
        async fn offset_delete(&self, _: OffsetDeleteRequest, _: i16) -> OffsetDeleteResponse {
            OffsetDeleteResponse::default()
        }
        async fn describe_groups(
            &self,
            _: DescribeGroupsRequest,
            _: i16,
        ) -> DescribeGroupsResponse {
            DescribeGroupsResponse::default()
        }
        async fn init_producer_id(
            &self,
            _: InitProducerIdRequest,
            _: i16,
        ) -> InitProducerIdResponse {
            InitProducerIdResponse::default()
        }
        async fn consumer_group_heartbeat(
            &self,
            _: ConsumerGroupHeartbeatRequest,
            _: i16,
            _: ClientInfo,
        ) -> ConsumerGroupHeartbeatResponse {
            ConsumerGroupHeartbeatResponse::default()
        }
        async fn consumer_group_describe(
            &self,
            _: ConsumerGroupDescribeRequest,
            _: i16,
        ) -> ConsumerGroupDescribeResponse {
            ConsumerGroupDescribeResponse::default()
        }
    }

    fn broker() -> EmptyBroker {
        EmptyBroker(BrokerIdentity {
            node_id: 0,
            advertised_host: "127.0.0.1".to_owned(),
            advertised_port: 9092,
            cluster_id: "fuzz".to_owned(),
        })
    }

    fn known_key() -> impl Strategy<Value = i16> {
        proptest::sample::select(
            API_VERSIONS
                .iter()
                .map(|(key, _, _)| *key as i16)
                .collect::<Vec<_>>(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 4000,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// A client controls every byte after the size prefix: whatever follows a known API key
        /// and version, the handler answers or refuses, and never panics or aborts (the
        /// kafka-protocol decoders reserve room for the element counts written in the data; a
        /// claimed array of 2^31 elements must not abort the process, see `alloc`).
        #[test]
        fn arbitrary_requests_are_answered_or_refused(
            api_key in prop_oneof![known_key(), any::<i16>()],
            api_version in -1i16..16,
            correlation_id in any::<i32>(),
            rest in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut payload = Vec::with_capacity(8 + rest.len());
            payload.extend_from_slice(&api_key.to_be_bytes());
            payload.extend_from_slice(&api_version.to_be_bytes());
            payload.extend_from_slice(&correlation_id.to_be_bytes());
            payload.extend_from_slice(&rest);
            let answer = futures_lite::future::block_on(handle_request(Bytes::from(payload), &broker(), "test"));
            if let Ok(Some(frame)) = answer {
                let frame = frame.to_vec();
                let size = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
                prop_assert_eq!(size as usize + SIZE_PREFIX_BYTES, frame.len());
                let echoed = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
                prop_assert_eq!(echoed, correlation_id);
            }
        }
    }

    /// Encodes the empty request of `api` at `version`.
    fn encode_default_request(api: ApiKey, buffer: &mut BytesMut, version: i16) {
        use kafka_protocol::messages::ApiVersionsRequest;
        let encoded = match api {
            ApiKey::Produce => ProduceRequest::default()
                .with_acks(1)
                .encode(buffer, version),
            ApiKey::Fetch => FetchRequest::default().encode(buffer, version),
            ApiKey::ListOffsets => ListOffsetsRequest::default().encode(buffer, version),
            ApiKey::OffsetForLeaderEpoch => {
                OffsetForLeaderEpochRequest::default().encode(buffer, version)
            }
            ApiKey::Metadata => MetadataRequest::default().encode(buffer, version),
            ApiKey::ApiVersions => ApiVersionsRequest::default().encode(buffer, version),
            ApiKey::CreateTopics => CreateTopicsRequest::default().encode(buffer, version),
            ApiKey::DeleteTopics => DeleteTopicsRequest::default().encode(buffer, version),
            ApiKey::DescribeConfigs => DescribeConfigsRequest::default().encode(buffer, version),
            ApiKey::CreatePartitions => CreatePartitionsRequest::default().encode(buffer, version),
            ApiKey::AlterConfigs => AlterConfigsRequest::default().encode(buffer, version),
            ApiKey::IncrementalAlterConfigs => {
                IncrementalAlterConfigsRequest::default().encode(buffer, version)
            }
            ApiKey::DescribeCluster => DescribeClusterRequest::default().encode(buffer, version),
            ApiKey::ElectLeaders => ElectLeadersRequest::default().encode(buffer, version),
            ApiKey::DescribeQuorum => DescribeQuorumRequest::default().encode(buffer, version),
            ApiKey::DescribeTopicPartitions => {
                DescribeTopicPartitionsRequest::default().encode(buffer, version)
            }
            ApiKey::FindCoordinator => FindCoordinatorRequest::default().encode(buffer, version),
            ApiKey::JoinGroup => JoinGroupRequest::default().encode(buffer, version),
            ApiKey::SyncGroup => SyncGroupRequest::default().encode(buffer, version),
            ApiKey::Heartbeat => HeartbeatRequest::default().encode(buffer, version),
            ApiKey::LeaveGroup => {
                let request = if version >= 3 {
                    LeaveGroupRequest::default().with_members(vec![Default::default()])
                } else {
                    LeaveGroupRequest::default()
                };
                request.encode(buffer, version)
            }
            ApiKey::OffsetCommit => OffsetCommitRequest::default().encode(buffer, version),
            ApiKey::OffsetFetch => OffsetFetchRequest::default().encode(buffer, version),
            ApiKey::ListGroups => ListGroupsRequest::default().encode(buffer, version),
            ApiKey::DescribeGroups => DescribeGroupsRequest::default().encode(buffer, version),
            ApiKey::InitProducerId => InitProducerIdRequest::default().encode(buffer, version),
            ApiKey::DeleteGroups => DeleteGroupsRequest::default().encode(buffer, version),
            ApiKey::OffsetDelete => OffsetDeleteRequest::default().encode(buffer, version),
            ApiKey::ConsumerGroupHeartbeat => {
                ConsumerGroupHeartbeatRequest::default().encode(buffer, version)
            }
            ApiKey::ConsumerGroupDescribe => {
                ConsumerGroupDescribeRequest::default().encode(buffer, version)
            }
            other => panic!("{other:?} is not advertised"),
        };
        encoded.expect("an empty request encodes");
    }

    /// Every version of every API answers an empty request with an encodable response.
    #[test]
    fn every_advertised_version_round_trips_an_empty_request() {
        for &(api, min, max) in API_VERSIONS {
            for version in min..=max {
                let header = RequestHeader::default()
                    .with_request_api_key(api as i16)
                    .with_request_api_version(version)
                    .with_correlation_id(7);
                let mut buffer = BytesMut::new();
                header
                    .encode(&mut buffer, api.request_header_version(version))
                    .expect("header");
                encode_default_request(api, &mut buffer, version);
                let answer = futures_lite::future::block_on(handle_request(
                    buffer.freeze(),
                    &broker(),
                    "test",
                ));
                assert!(answer.is_ok(), "{api:?} v{version}: {answer:?}");
            }
        }
    }
}
