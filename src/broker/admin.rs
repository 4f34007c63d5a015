//! Topic administration: CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs,
//! AlterConfigs and IncrementalAlterConfigs.
//!
//! Every change runs on shard 0, the controller, one at a time: it computes the new catalog,
//! writes it to disk, then has every shard apply it (update its catalog copy, open or close
//! the partitions it owns) before answering. So a topic a client was told exists is on disk,
//! and every shard knows it, before the client can use it.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{alter_configs_response, incremental_alter_configs_response};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, CreatePartitionsRequest, CreatePartitionsResponse,
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    DescribeConfigsRequest, DescribeConfigsResponse, DescribeQuorumRequest, DescribeQuorumResponse,
    ElectLeadersRequest, ElectLeadersResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tracing::{error, info};

use super::catalog::{check_topic_name, Catalog, Topic};
use super::mesh::{Call, Route, Routed};
use super::topic_config::{self, ConfigError};
use super::{BrokerSettings, Shard, CONTROLLER};

/// DescribeConfigs / AlterConfigs / IncrementalAlterConfigs resource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// DescribeConfigs config sources.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;
/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

/// A topic to create, with defaults resolved.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
    /// Owning shard of each partition when the client assigned them to nodes (one host).
    pub placement: Option<Vec<usize>>,
    /// In a cluster: the replicas (node ids) the client assigned each partition, preferred
    /// leader first; the controller checks them.
    pub replicas: Option<Vec<Vec<i32>>>,
}

impl TopicSpec {
    pub fn with_defaults(name: String, settings: &BrokerSettings) -> Self {
        Self {
            name,
            partitions: i32::try_from(settings.num_partitions).unwrap_or(1),
            replication_factor: 1,
            configs: BTreeMap::new(),
            placement: None,
            replicas: None,
        }
    }
}

/// Why an administrative request was refused, as Kafka reports it.
#[derive(Debug, Clone)]
pub struct AdminError {
    pub code: ResponseError,
    pub message: String,
}

impl AdminError {
    fn new(code: ResponseError, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<ConfigError> for AdminError {
    fn from(error: ConfigError) -> Self {
        Self::new(ResponseError::InvalidConfig, error.to_string())
    }
}

/// A catalog change every shard applies.
#[derive(Debug, Clone)]
pub enum Change {
    Upsert {
        name: String,
        topic: Topic,
    },
    Remove {
        name: String,
        topic: Topic,
    },
    /// The cluster's live broker nodes (node id, host, port) changed.
    Brokers(Vec<(i32, String, u16)>),
    /// Another controller became active (its host's broker node, if it is one).
    Controller(Option<i32>),
    /// A host registered (again): the broker epochs of the nodes (node id -> epoch).
    BrokerEpochs(BTreeMap<i32, u64>),
}

impl Shard {
    /// Applies catalog changes decided by the controller to this shard.
    async fn apply(&self, changes: Vec<Change>) {
        for change in changes {
            match change {
                // The offsets topic's new state reaches the catalog (which routes groups to
                // their coordinator) only once the partitions this shard now leads are loaded,
                // so no group is served from offsets not yet read.
                Change::Upsert { name, topic } if name == super::groups::OFFSETS_TOPIC => {
                    self.open_owned(&name, &topic).await;
                    self.load_led_offsets().await;
                    self.catalog.borrow_mut().topics.insert(name, topic);
                }
                Change::Upsert { name, topic } => {
                    self.catalog
                        .borrow_mut()
                        .topics
                        .insert(name.clone(), topic.clone());
                    self.open_owned(&name, &topic).await;
                }
                Change::Remove { name, topic } => {
                    self.catalog.borrow_mut().topics.remove(&name);
                    for (index, partition) in topic.partitions.iter().enumerate() {
                        if partition.shard == self.id && partition.local {
                            self.remove_partition(&name, index).await;
                        }
                    }
                    self.partitions.borrow_mut().remove(&name);
                }
                Change::Brokers(brokers) => self.catalog.borrow_mut().brokers = Some(brokers),
                Change::Controller(node) => self.catalog.borrow_mut().controller = node,
                Change::BrokerEpochs(epochs) => {
                    self.catalog.borrow_mut().broker_epochs = epochs;
                    self.followers_registered();
                }
            }
        }
    }
}

/// On the controller: persists `catalog` and has every shard apply `changes`.
async fn commit(
    controller: &Rc<Shard>,
    catalog: &Catalog,
    changes: Vec<Change>,
) -> Result<(), AdminError> {
    if changes.is_empty() {
        return Ok(());
    }
    if let Err(source) = catalog.save(&controller.settings.data_dir) {
        error!("{source}");
        return Err(AdminError::new(
            ResponseError::KafkaStorageError,
            source.to_string(),
        ));
    }
    let tasks: Vec<_> = (0..controller.settings.shards)
        .map(|target| {
            let apply = Apply(changes.clone());
            let controller = Rc::clone(controller);
            glommio::spawn_local(async move { controller.call(target, apply).await })
        })
        .collect();
    for task in tasks {
        if let Err(error) = task.await {
            error!("a shard did not apply a catalog change: {error}");
        }
    }
    Ok(())
}

/// A batch of catalog edits for the controller (CreateTopics, DeleteTopics, CreatePartitions,
/// AlterConfigs, IncrementalAlterConfigs): one result per item, in order. The controller decides each item
/// against the catalog as edited so far; unless `validate_only`, the changes are applied to the
/// catalog, written and applied by every shard (`commit`), and if that fails, every item that
/// succeeded fails with it. Batches run one at a time.
pub struct Edit<I> {
    pub items: Vec<I>,
    pub validate_only: bool,
}

/// A topic to delete: by name, or (name `None`) by id.
pub type Deletion = (Option<String>, uuid::Uuid);
/// Partitions to add: the topic, its new partition count, and where the client placed them.
/// Partitions to add to a topic: its name, the new partition count, and where the client
/// assigned the new ones, if it did (as for [`TopicSpec`]: shards on one host, node ids in a
/// cluster).
pub struct Growth {
    pub name: String,
    pub count: i32,
    pub placement: Result<Option<Vec<usize>>, AdminError>,
    pub replicas: Option<Vec<Vec<i32>>>,
}
/// A config operation: (config name, IncrementalAlterConfigs operation, value).
pub type ConfigOp = (String, i8, Option<String>);

/// Config changes to a topic. IncrementalAlterConfigs edits the topic's overrides one
/// operation at a time; AlterConfigs (`replace`) sets exactly the configs it names and resets
/// every other override to its default, as Kafka does.
#[derive(Debug, Clone)]
pub struct ConfigOps {
    pub topic: String,
    pub replace: bool,
    pub ops: Vec<ConfigOp>,
}

/// Has every shard apply catalog changes the controller decided.
pub struct Apply(pub Vec<Change>);

impl Call for Apply {
    type Reply = ();

    async fn run(self, shard: Rc<Shard>) {
        shard.apply(self.0).await;
    }
}

impl Call for Edit<TopicSpec> {
    type Reply = Vec<Result<Topic, AdminError>>;

    async fn run(self, controller: Rc<Shard>) -> Self::Reply {
        if controller.settings.cluster.is_some() {
            return cluster::create(&controller, self).await;
        }
        edit_here(&controller, self, |controller, catalog, spec| {
            let topic = new_topic(controller, catalog, &spec)?;
            let change = Change::Upsert {
                name: spec.name,
                topic: topic.clone(),
            };
            Ok((topic, change))
        })
        .await
    }
}

impl Call for Edit<Deletion> {
    type Reply = Vec<Result<(String, uuid::Uuid), AdminError>>;

    async fn run(self, controller: Rc<Shard>) -> Self::Reply {
        if controller.settings.cluster.is_some() {
            return cluster::delete(&controller, self).await;
        }
        edit_here(&controller, self, |_, catalog, (name, id)| {
            let found = match &name {
                Some(name) => catalog.topics.get_key_value(name),
                None => catalog.by_id(id),
            };
            match found {
                Some((name, _)) if name == super::groups::OFFSETS_TOPIC => Err(AdminError::new(
                    ResponseError::InvalidTopicException,
                    "the internal offsets topic cannot be deleted",
                )),
                Some((name, topic)) => Ok((
                    (name.clone(), topic.uuid()),
                    Change::Remove {
                        name: name.clone(),
                        topic: topic.clone(),
                    },
                )),
                None if name.is_some() => Err(AdminError::new(
                    ResponseError::UnknownTopicOrPartition,
                    "this server does not host this topic",
                )),
                None => Err(AdminError::new(
                    ResponseError::UnknownTopicId,
                    "no topic has this id",
                )),
            }
        })
        .await
    }
}

impl Call for Edit<Growth> {
    type Reply = Vec<Result<(), AdminError>>;

    async fn run(self, controller: Rc<Shard>) -> Self::Reply {
        if controller.settings.cluster.is_some() {
            return cluster::add_partitions(&controller, self).await;
        }
        edit_here(&controller, self, |controller, catalog, growth: Growth| {
            let Growth {
                name,
                count,
                placement,
                ..
            } = growth;
            let topic = grow(controller, catalog, &name, count, placement?)?;
            Ok(((), Change::Upsert { name, topic }))
        })
        .await
    }
}

impl Call for Edit<ConfigOps> {
    type Reply = Vec<Result<(), AdminError>>;

    async fn run(self, controller: Rc<Shard>) -> Self::Reply {
        if controller.settings.cluster.is_some() {
            return cluster::alter_configs(&controller, self).await;
        }
        edit_here(&controller, self, |_, catalog, ops| {
            let topic = alter(catalog, &ops)?;
            Ok((
                (),
                Change::Upsert {
                    name: ops.topic,
                    topic,
                },
            ))
        })
        .await
    }
}

/// Runs an [`Edit`] on the controller, deciding each item with `edit` (its result and the
/// change it makes).
async fn edit_here<I, T>(
    controller: &Rc<Shard>,
    batch: Edit<I>,
    edit: impl Fn(&Shard, &Catalog, I) -> Result<(T, Change), AdminError>,
) -> Vec<Result<T, AdminError>> {
    let _permit = controller.admin.acquire_permit(1).await;
    let mut catalog = controller.catalog.borrow().clone();
    let mut changes = Vec::new();
    let mut results = Vec::with_capacity(batch.items.len());
    for item in batch.items {
        let result = edit(controller, &catalog, item).map(|(value, change)| {
            if !batch.validate_only {
                match &change {
                    Change::Upsert { name, topic } => {
                        info!(topic = name, partitions = topic.partitions.len(), configs = ?topic.configs, "topic created or changed");
                        catalog.topics.insert(name.clone(), topic.clone());
                    }
                    Change::Remove { name, .. } => {
                        info!(topic = name, "deleting topic");
                        catalog.topics.remove(name);
                    }
                    Change::Brokers(_) | Change::Controller(_) | Change::BrokerEpochs(_) => {}
                }
                changes.push(change);
            }
            value
        });
        results.push(result);
    }
    if let Err(failure) = commit(controller, &catalog, changes).await {
        return results
            .into_iter()
            .map(|r| r.and(Err(failure.clone())))
            .collect();
    }
    results
}

/// Sends an [`Edit`] to the controller; if it cannot be reached, every item fails.
async fn edit_catalog<I, T>(shard: &Rc<Shard>, edit: Edit<I>) -> Vec<Result<T, AdminError>>
where
    Edit<I>: Routed<Reply = Vec<Result<T, AdminError>>>,
{
    let count = edit.items.len();
    match shard.call(CONTROLLER, edit).await {
        Ok(results) => results,
        Err(error) => (0..count)
            .map(|_| {
                Err(AdminError::new(
                    error.code(Route::Controller),
                    error.to_string(),
                ))
            })
            .collect(),
    }
}

/// Creates topics (on the controller); one result per spec, in order.
pub async fn create_on_controller(
    shard: &Rc<Shard>,
    specs: Vec<TopicSpec>,
    validate_only: bool,
) -> Vec<Result<Topic, AdminError>> {
    let edit = Edit {
        items: specs,
        validate_only,
    };
    edit_catalog(shard, edit).await
}

fn new_topic(controller: &Shard, catalog: &Catalog, spec: &TopicSpec) -> Result<Topic, AdminError> {
    check_topic_name(&spec.name)
        .map_err(|reason| AdminError::new(ResponseError::InvalidTopicException, reason))?;
    if catalog.topics.contains_key(&spec.name) {
        return Err(AdminError::new(
            ResponseError::TopicAlreadyExists,
            format!("topic '{}' already exists", spec.name),
        ));
    }
    if spec.partitions <= 0 {
        return Err(AdminError::new(
            ResponseError::InvalidPartitions,
            "the number of partitions must be positive",
        ));
    }
    // In a cluster the controller places replicas over hosts and checks the factor.
    if spec.replication_factor != 1 && controller.settings.cluster.is_none() {
        // Metadata may list several nodes (one per core), so "not enough brokers" would
        // contradict it: say what is actually missing.
        return Err(AdminError::new(
            ResponseError::InvalidReplicationFactor,
            format!(
                "replication factor {}: this broker keeps one replica of each partition \
                 (replication between nodes is not supported yet); use 1",
                spec.replication_factor
            ),
        ));
    }
    for (name, value) in &spec.configs {
        topic_config::validate(name, value)?;
    }
    let shards = spec
        .placement
        .clone()
        .unwrap_or_else(|| catalog.place(controller.settings.shards, spec.partitions as usize));
    let topology = &controller.settings.topology;
    Ok(Topic {
        id: new_topic_id(&controller.env.random),
        partitions: shards
            .into_iter()
            .map(|shard| topology.single_replica(shard))
            .collect(),
        configs: spec.configs.clone(),
    })
}

/// A new topic id (a version 4 UUID as 32 hex digits) drawn from `random`.
pub fn new_topic_id(random: &ringlog_env::Random) -> String {
    random.uuid().simple().to_string()
}

pub async fn create_topics(
    shard: &Rc<Shard>,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let specs: Vec<Result<TopicSpec, AdminError>> = request
        .topics
        .iter()
        .map(|topic| {
            let mut partitions = topic.num_partitions;
            let mut replication_factor = match topic.replication_factor {
                -1 => 1,
                factor => factor,
            };
            let mut placement = None;
            let mut replicas = None;
            if !topic.assignments.is_empty() {
                if shard.settings.cluster.is_some() {
                    let assigned = node_ids(topic.assignments.iter().map(|a| &a.broker_ids));
                    replication_factor = assigned[0].len() as i16;
                    replicas = Some(assigned);
                } else {
                    placement = Some(assigned_shards(
                        shard,
                        topic.assignments.iter().map(|a| a.broker_ids.as_slice()),
                    )?);
                }
                partitions = topic.assignments.len() as i32;
            } else if partitions == -1 {
                partitions = i32::try_from(shard.settings.num_partitions).unwrap_or(1);
            }
            let mut configs = BTreeMap::new();
            for config in &topic.configs {
                if let Some(value) = &config.value {
                    configs.insert(config.name.to_string(), value.to_string());
                }
            }
            Ok(TopicSpec {
                name: topic.name.to_string(),
                partitions,
                replication_factor,
                configs,
                placement,
                replicas,
            })
        })
        .collect();
    let valid: Vec<TopicSpec> = specs
        .iter()
        .filter_map(|s| s.as_ref().ok().cloned())
        .collect();
    let mut created = create_on_controller(shard, valid, request.validate_only)
        .await
        .into_iter();
    let topics = request
        .topics
        .iter()
        .zip(specs)
        .map(|(topic, spec)| {
            let result = spec.and_then(|_| {
                created.next().unwrap_or_else(|| {
                    Err(AdminError::new(
                        ResponseError::UnknownServerError,
                        "no answer",
                    ))
                })
            });
            let mut response = CreatableTopicResult::default().with_name(topic.name.clone());
            match result {
                Ok(created) => {
                    if version >= 5 {
                        let configs = topic_config::TOPIC_CONFIGS
                            .iter()
                            .map(|key| {
                                let (value, source) =
                                    config_value(&shard.settings, &created, key.name);
                                CreatableTopicConfigs::default()
                                    .with_name(StrBytes::from_static_str(key.name))
                                    .with_value(Some(StrBytes::from_string(value)))
                                    .with_config_source(source)
                            })
                            .collect();
                        response = response
                            .with_num_partitions(created.partitions.len() as i32)
                            .with_replication_factor(1)
                            .with_configs(Some(configs));
                    }
                    if version >= 7 {
                        response = response.with_topic_id(created.uuid());
                    }
                }
                Err(failure) => {
                    response = response.with_error_code(failure.code.code());
                    response =
                        response.with_error_message(Some(StrBytes::from_string(failure.message)));
                }
            }
            response
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}

/// A topic config's effective value and where it comes from: the topic's own, else this
/// broker's (its log defaults, and the replication settings its flags give).
fn config_value(settings: &BrokerSettings, topic: &Topic, name: &str) -> (String, i8) {
    match (topic.configs.get(name), name) {
        (Some(value), _) => (value.clone(), SOURCE_TOPIC),
        (None, "min.insync.replicas") => (settings.min_insync_replicas.to_string(), SOURCE_DEFAULT),
        (None, "unclean.leader.election.enable") => {
            (settings.unclean_leader_election.to_string(), SOURCE_DEFAULT)
        }
        (None, _) => (
            topic_config::default_value(&settings.log_defaults, name),
            SOURCE_DEFAULT,
        ),
    }
}

pub async fn delete_topics(
    shard: &Rc<Shard>,
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    // (name, id) of each topic asked for: by name before v6, by name or id from v6.
    let wanted: Vec<(Option<String>, uuid::Uuid)> = if version >= 6 {
        request
            .topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.to_string()), t.topic_id))
            .collect()
    } else {
        request
            .topic_names
            .iter()
            .map(|n| (Some(n.to_string()), uuid::Uuid::nil()))
            .collect()
    };
    let edit = Edit {
        items: wanted.clone(),
        validate_only: false,
    };
    let results = edit_catalog(shard, edit).await;
    let responses = wanted
        .into_iter()
        .zip(results)
        .map(|((name, id), result)| {
            let (name, id, failure) = match result {
                Ok((name, id)) => (Some(name), id, None),
                Err(failure) => (name, id, Some(failure)),
            };
            let name = match (name, version >= 6) {
                (Some(name), _) => Some(TopicName(StrBytes::from_string(name))),
                (None, true) => None,
                (None, false) => Some(TopicName(StrBytes::from_static_str(""))),
            };
            let mut response = DeletableTopicResult::default().with_name(name);
            if version >= 6 {
                response = response.with_topic_id(id);
            }
            if let Some(failure) = failure {
                response = response.with_error_code(failure.code.code());
                if version >= 5 {
                    response =
                        response.with_error_message(Some(StrBytes::from_string(failure.message)));
                }
            }
            response
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}

pub async fn create_partitions(
    shard: &Rc<Shard>,
    request: CreatePartitionsRequest,
    _version: i16,
) -> CreatePartitionsResponse {
    let asked: Vec<Growth> = request
        .topics
        .iter()
        .map(|topic| {
            let in_cluster = shard.settings.cluster.is_some();
            let placement = match &topic.assignments {
                Some(all) if !in_cluster => {
                    assigned_shards(shard, all.iter().map(|a| a.broker_ids.as_slice())).map(Some)
                }
                _ => Ok(None),
            };
            let replicas = topic
                .assignments
                .as_ref()
                .filter(|_| in_cluster)
                .map(|all| node_ids(all.iter().map(|a| &a.broker_ids)));
            Growth {
                name: topic.name.to_string(),
                count: topic.count,
                placement,
                replicas,
            }
        })
        .collect();
    let edit = Edit {
        items: asked,
        validate_only: request.validate_only,
    };
    let results = edit_catalog(shard, edit).await;
    let results = request
        .topics
        .iter()
        .zip(results)
        .map(|(topic, result)| {
            let mut response = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
            if let Err(failure) = result {
                response = response
                    .with_error_code(failure.code.code())
                    .with_error_message(Some(StrBytes::from_string(failure.message)));
            }
            response
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}

fn grow(
    controller: &Shard,
    catalog: &Catalog,
    name: &str,
    count: i32,
    placement: Option<Vec<usize>>,
) -> Result<Topic, AdminError> {
    let Some(topic) = catalog.topics.get(name) else {
        return Err(AdminError::new(
            ResponseError::UnknownTopicOrPartition,
            format!("topic '{name}' does not exist"),
        ));
    };
    let current = topic.partitions.len();
    let wanted = usize::try_from(count).unwrap_or(0);
    if wanted <= current {
        return Err(AdminError::new(
            ResponseError::InvalidPartitions,
            format!("topic '{name}' has {current} partitions; the new count must be larger, not {count}"),
        ));
    }
    let added = match placement {
        Some(placement) if placement.len() != wanted - current => {
            return Err(AdminError::new(
                ResponseError::InvalidReplicaAssignment,
                format!(
                    "{} assignments given for {} new partitions",
                    placement.len(),
                    wanted - current
                ),
            ))
        }
        Some(placement) => placement,
        None => catalog.place(controller.settings.shards, wanted - current),
    };
    let mut grown = topic.clone();
    let topology = &controller.settings.topology;
    grown.partitions.extend(
        added
            .into_iter()
            .map(|shard| topology.single_replica(shard)),
    );
    Ok(grown)
}

/// The owning shards of manually assigned partitions: each partition must name exactly one
/// node (replication factor 1) and that node must be this broker (or, with a node per shard,
/// one of its shards, which then owns the partition).
/// A client's replica assignment as node ids, one list per partition.
fn node_ids<'a>(
    assignments: impl Iterator<Item = &'a Vec<kafka_protocol::messages::BrokerId>>,
) -> Vec<Vec<i32>> {
    assignments
        .map(|nodes| nodes.iter().map(|node| node.0).collect())
        .collect()
}

fn assigned_shards<'a>(
    shard: &Shard,
    assignments: impl Iterator<Item = &'a [kafka_protocol::messages::BrokerId]>,
) -> Result<Vec<usize>, AdminError> {
    let topology = &shard.settings.topology;
    let mut load = shard.catalog.borrow().load_per_shard(topology.shards);
    let known: Vec<i32> = topology.nodes().iter().map(|(node, _)| *node).collect();
    assignments
        .map(|nodes| {
            let ids: Vec<i32> = nodes.iter().map(|node| node.0).collect();
            let [node] = nodes else {
                return Err(AdminError::new(
                    ResponseError::InvalidReplicaAssignment,
                    format!(
                        "a partition is assigned to {} nodes {ids:?}: this broker keeps one \
                         replica of each partition (replication between nodes is not supported \
                         yet); assign each partition to one of the nodes {known:?}",
                        ids.len()
                    ),
                ));
            };
            let unknown = |_| {
                AdminError::new(
                    ResponseError::InvalidReplicaAssignment,
                    format!(
                        "node {} is not one of this broker's nodes {known:?}",
                        node.0
                    ),
                )
            };
            let owner = match topology.shard_of(node.0).map_err(unknown)? {
                Some(owner) => owner,
                None => (0..load.len()).min_by_key(|&s| (load[s], s)).unwrap_or(0),
            };
            load[owner] += 1;
            Ok(owner)
        })
        .collect()
}

pub fn describe_configs(
    shard: &Shard,
    request: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let results = request
        .resources
        .iter()
        .map(|resource| {
            let mut result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            let entries = match resource.resource_type {
                RESOURCE_TOPIC => topic_entries(shard, &resource.resource_name),
                RESOURCE_BROKER => Ok(broker_entries(shard)),
                other => Err(AdminError::new(
                    ResponseError::InvalidRequest,
                    format!("resource type {other} is not supported"),
                )),
            };
            match entries {
                Ok(entries) => {
                    let keys = &resource.configuration_keys;
                    result.configs = entries
                        .into_iter()
                        .filter(|entry| {
                            keys.as_ref()
                                .is_none_or(|keys| keys.iter().any(|k| **k == *entry.name))
                        })
                        .map(|entry| {
                            let mut config = DescribeConfigsResourceResult::default()
                                .with_name(StrBytes::from_static_str(entry.name))
                                .with_value(Some(StrBytes::from_string(entry.value)))
                                .with_read_only(entry.read_only);
                            config = config.with_config_source(entry.source);
                            if version >= 3 {
                                config = config.with_config_type(entry.kind as i8);
                                if request.include_documentation {
                                    config = config.with_documentation(Some(
                                        StrBytes::from_static_str(entry.doc),
                                    ));
                                }
                            }
                            config
                        })
                        .collect();
                }
                Err(failure) => {
                    result = result
                        .with_error_code(failure.code.code())
                        .with_error_message(Some(StrBytes::from_string(failure.message)));
                }
            }
            result
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// One DescribeConfigs entry.
struct Entry {
    name: &'static str,
    value: String,
    source: i8,
    read_only: bool,
    kind: topic_config::ConfigType,
    doc: &'static str,
}

fn topic_entries(shard: &Shard, name: &str) -> Result<Vec<Entry>, AdminError> {
    let catalog = shard.catalog.borrow();
    let Some(topic) = catalog.topics.get(name) else {
        return Err(AdminError::new(
            ResponseError::UnknownTopicOrPartition,
            format!("topic '{name}' does not exist"),
        ));
    };
    Ok(topic_config::TOPIC_CONFIGS
        .iter()
        .map(|key| {
            let (value, source) = config_value(&shard.settings, topic, key.name);
            Entry {
                name: key.name,
                value,
                source,
                read_only: false,
                kind: key.kind,
                doc: key.doc,
            }
        })
        .collect())
}

fn broker_entries(shard: &Shard) -> Vec<Entry> {
    use topic_config::ConfigType;
    let settings = &shard.settings;
    let entry = |name, value: String, kind, doc| Entry {
        name,
        value,
        source: SOURCE_STATIC_BROKER,
        read_only: true,
        kind,
        doc,
    };
    vec![
        entry(
            "node.id",
            shard.settings.topology.node_of(shard.id).to_string(),
            ConfigType::Int,
            "This broker's id.",
        ),
        entry(
            "auto.create.topics.enable",
            settings.auto_create_topics.to_string(),
            ConfigType::Boolean,
            "Create unknown topics asked for in Metadata.",
        ),
        entry(
            "num.partitions",
            settings.num_partitions.to_string(),
            ConfigType::Int,
            "Partitions of auto-created topics.",
        ),
        entry(
            "log.dirs",
            settings.data_dir.display().to_string(),
            ConfigType::String,
            "The data directory.",
        ),
        entry(
            "log.retention.check.interval.ms",
            settings.retention_check_interval.as_millis().to_string(),
            ConfigType::Long,
            "How often retention runs.",
        ),
    ]
}

/// One resource's answer to AlterConfigs or IncrementalAlterConfigs: resource type, name,
/// error code and message.
type Altered = (i8, StrBytes, i16, Option<StrBytes>);

/// Changes the configs of the resources of an AlterConfigs or IncrementalAlterConfigs request
/// (resource type, name, operations) on the controller: one answer per resource, in order.
/// Topics are checked and changed as one [`Edit`]; broker settings are static, so a broker
/// resource is refused, as is any other resource type.
async fn alter_resources(
    shard: &Rc<Shard>,
    resources: impl Iterator<Item = (i8, StrBytes, Vec<ConfigOp>)>,
    replace: bool,
    validate_only: bool,
) -> Vec<Altered> {
    let resources: Vec<_> = resources.collect();
    // A resource named twice is refused, both times, as Kafka does: which change would win
    // is not the client's to guess.
    let mut named: BTreeMap<(i8, &str), usize> = BTreeMap::new();
    for (kind, name, _) in &resources {
        *named.entry((*kind, name.as_str())).or_default() += 1;
    }
    let asked: Vec<Result<ConfigOps, AdminError>> = resources
        .iter()
        .map(|(kind, name, ops)| match *kind {
            _ if named[&(*kind, name.as_str())] > 1 => Err(AdminError::new(
                ResponseError::InvalidRequest,
                "the resource is named more than once in the request",
            )),
            RESOURCE_TOPIC => Ok(ConfigOps {
                topic: name.to_string(),
                replace,
                ops: ops.clone(),
            }),
            RESOURCE_BROKER => Err(AdminError::new(
                ResponseError::InvalidRequest,
                "broker settings are static: change them in the config file or flags and restart",
            )),
            other => Err(AdminError::new(
                ResponseError::InvalidRequest,
                format!("resource type {other} is not supported"),
            )),
        })
        .collect();
    let topics: Vec<ConfigOps> = asked
        .iter()
        .filter_map(|a| a.as_ref().ok().cloned())
        .collect();
    let edit = Edit {
        items: topics,
        validate_only,
    };
    let mut altered = edit_catalog(shard, edit).await.into_iter();
    resources
        .into_iter()
        .zip(asked)
        .map(|((kind, name, _), asked)| {
            let result = asked.and_then(|_| {
                altered.next().unwrap_or_else(|| {
                    Err(AdminError::new(
                        ResponseError::UnknownServerError,
                        "no answer",
                    ))
                })
            });
            match result {
                Ok(()) => (kind, name, 0, None),
                Err(failure) => (
                    kind,
                    name,
                    failure.code.code(),
                    Some(StrBytes::from_string(failure.message)),
                ),
            }
        })
        .collect()
}

/// The [`Altered`] answers as the per-resource responses of AlterConfigs or
/// IncrementalAlterConfigs: two generated types with the same fields.
macro_rules! answers {
    ($answer:ty, $altered:expr) => {
        $altered
            .into_iter()
            .map(|(kind, name, code, message)| {
                <$answer>::default()
                    .with_resource_type(kind)
                    .with_resource_name(name)
                    .with_error_code(code)
                    .with_error_message(message)
            })
            .collect()
    };
}

/// A config operation as [`alter_resources`] takes it.
fn config_op(name: StrBytes, op: i8, value: Option<StrBytes>) -> ConfigOp {
    (name.to_string(), op, value.map(|v| v.to_string()))
}

pub async fn incremental_alter_configs(
    shard: &Rc<Shard>,
    request: IncrementalAlterConfigsRequest,
    _version: i16,
) -> IncrementalAlterConfigsResponse {
    let resources = request.resources.into_iter().map(|r| {
        let ops = r.configs.into_iter();
        let ops = ops.map(|c| config_op(c.name, c.config_operation, c.value));
        (r.resource_type, r.resource_name, ops.collect())
    });
    let altered = alter_resources(shard, resources, false, request.validate_only).await;
    IncrementalAlterConfigsResponse::default().with_responses(answers!(
        incremental_alter_configs_response::AlterConfigsResourceResponse,
        altered
    ))
}

/// AlterConfigs, the non-incremental API older clients and tools use: each topic's overrides
/// become exactly the configs named (a config not named goes back to its default), checked
/// as IncrementalAlterConfigs checks a SET.
pub async fn alter_configs(
    shard: &Rc<Shard>,
    request: AlterConfigsRequest,
    _version: i16,
) -> AlterConfigsResponse {
    let resources = request.resources.into_iter().map(|r| {
        let ops = r.configs.into_iter();
        let ops = ops.map(|c| config_op(c.name, OP_SET, c.value));
        (r.resource_type, r.resource_name, ops.collect())
    });
    let altered = alter_resources(shard, resources, true, request.validate_only).await;
    AlterConfigsResponse::default().with_responses(answers!(
        alter_configs_response::AlterConfigsResourceResponse,
        altered
    ))
}

/// The topic `ops` names with its overrides changed: replaced by the configs set (AlterConfigs)
/// or edited by each operation in turn (IncrementalAlterConfigs). Every key must be a known
/// topic config and every value valid (INVALID_CONFIG).
fn alter(catalog: &Catalog, ops: &ConfigOps) -> Result<Topic, AdminError> {
    let name = &ops.topic;
    let Some(topic) = catalog.topics.get(name) else {
        return Err(AdminError::new(
            ResponseError::UnknownTopicOrPartition,
            format!("topic '{name}' does not exist"),
        ));
    };
    let mut altered = topic.clone();
    if ops.replace {
        altered.configs.clear();
    }
    for (key, op, value) in &ops.ops {
        if topic_config::lookup(key).is_none() {
            return Err(ConfigError::Unknown(key.clone()).into());
        }
        match (*op, value) {
            (OP_SET, Some(value)) => {
                topic_config::validate(key, value)?;
                altered.configs.insert(key.clone(), value.clone());
            }
            (OP_DELETE, _) => {
                altered.configs.remove(key);
            }
            (OP_SET, None) => {
                return Err(AdminError::new(ResponseError::InvalidConfig, format!("no value given for {key}")))
            }
            _ => {
                return Err(AdminError::new(
                    ResponseError::InvalidConfig,
                    format!("{key}: APPEND and SUBTRACT apply to list configs, and no list config can change here"),
                ))
            }
        }
    }
    Ok(altered)
}

/// ElectLeaders (`kafka-leader-election.sh`, AdminClient `elect_leaders`): preferred or
/// unclean elections for the asked partitions (every partition when the request names none).
/// In a cluster the controller decides; a one-host broker keeps one replica of each
/// partition, which always leads: ELECTION_NOT_NEEDED.
pub async fn elect_leaders(
    shard: &Rc<Shard>,
    request: ElectLeadersRequest,
    version: i16,
) -> ElectLeadersResponse {
    use kafka_protocol::messages::elect_leaders_response::{
        PartitionResult, ReplicaElectionResult,
    };

    // Version 0 has no election type: preferred.
    let unclean = version >= 1 && request.election_type == 1;
    let asked: Option<Vec<(String, u32)>> = request.topic_partitions.as_ref().map(|topics| {
        topics
            .iter()
            .flat_map(|topic| {
                // A negative partition can match none: u32::MAX is never a partition.
                topic.partitions.iter().map(|&partition| {
                    (
                        topic.topic.to_string(),
                        u32::try_from(partition).unwrap_or(u32::MAX),
                    )
                })
            })
            .collect()
    });
    let elections = if version >= 1 && !matches!(request.election_type, 0 | 1) {
        Err(AdminError::new(
            ResponseError::InvalidRequest,
            format!(
                "election type {} is neither preferred (0) nor unclean (1)",
                request.election_type
            ),
        ))
    } else if shard.settings.cluster.is_some() {
        let command = ringlog_cluster::Command::ElectLeaders {
            partitions: asked.clone(),
            unclean,
        };
        match cluster::forward(shard, command).await {
            Ok(ringlog_cluster::Reply::ElectLeaders(elections)) => Ok(elections),
            Ok(other) => Err(cluster::unexpected(&other)),
            Err(error) => Err(error),
        }
    } else {
        let catalog = shard.catalog.borrow();
        Ok(asked
            .iter()
            .flatten()
            .map(|(topic, partition)| {
                let exists = catalog
                    .topics
                    .get(topic)
                    .is_some_and(|t| (*partition as usize) < t.partitions.len());
                let result = if exists {
                    Err(ringlog_cluster::Refusal::new(
                        ResponseError::ElectionNotNeeded,
                        "the partition's only replica leads",
                    ))
                } else {
                    Err(ringlog_cluster::Refusal::new(
                        ResponseError::UnknownTopicOrPartition,
                        format!("topic '{topic}' has no partition {partition}"),
                    ))
                };
                ringlog_cluster::Election {
                    topic: topic.clone(),
                    partition: *partition,
                    result,
                }
            })
            .collect())
    };
    let elections = match elections {
        Ok(elections) => elections,
        // Version 1 and up carry a request-wide error; version 0 only per partition.
        Err(failure) if version >= 1 => {
            return ElectLeadersResponse::default().with_error_code(failure.code.code())
        }
        Err(failure) => asked
            .iter()
            .flatten()
            .map(|(topic, partition)| ringlog_cluster::Election {
                topic: topic.clone(),
                partition: *partition,
                result: Err(ringlog_cluster::Refusal::new(
                    failure.code,
                    failure.message.clone(),
                )),
            })
            .collect(),
    };
    let mut results: Vec<ReplicaElectionResult> = Vec::new();
    for election in elections {
        let mut answer = PartitionResult::default()
            .with_partition_id(i32::try_from(election.partition).unwrap_or(-1));
        if let Err(refusal) = election.result {
            answer = answer
                .with_error_code(refusal.code.code())
                .with_error_message(Some(StrBytes::from_string(refusal.message)));
        }
        match results
            .iter_mut()
            .find(|r| r.topic.0.as_str() == election.topic)
        {
            Some(topic) => topic.partition_result.push(answer),
            None => results.push(
                ReplicaElectionResult::default()
                    .with_topic(TopicName(StrBytes::from_string(election.topic)))
                    .with_partition_result(vec![answer]),
            ),
        }
    }
    ElectLeadersResponse::default().with_replica_election_results(results)
}

/// The name Kafka gives the metadata log's topic in DescribeQuorum.
const METADATA_TOPIC: &str = "__cluster_metadata";

/// DescribeQuorum (`kafka-metadata-quorum.sh describe`): the controller quorum's leader, epoch
/// (its raft term), high watermark (commit index) and each voter's log end and timestamps, as
/// the leader sees them. In a cluster the request is carried to the leading voter; a one-node
/// broker has no quorum to describe and says so. Only `__cluster_metadata` partition 0 exists.
pub async fn describe_quorum(
    shard: &Rc<Shard>,
    request: DescribeQuorumRequest,
    _version: i16,
) -> DescribeQuorumResponse {
    use kafka_protocol::messages::describe_quorum_response::{
        PartitionData, ReplicaState, TopicData,
    };
    use kafka_protocol::messages::BrokerId;

    let failed =
        |code: ResponseError| DescribeQuorumResponse::default().with_error_code(code.code());
    let asks_for_the_log = request.topics.len() == 1
        && request.topics[0].topic_name.0.as_str() == METADATA_TOPIC
        && request.topics[0].partitions.len() == 1
        && request.topics[0].partitions[0].partition_index == 0;
    if !asks_for_the_log {
        return failed(ResponseError::InvalidRequest);
    }
    let Some(mut client) = cluster::quorum_client(shard) else {
        return failed(ResponseError::InvalidRequest);
    };
    let description = match client.describe_quorum().await {
        Ok(description) => description,
        Err(error) => {
            tracing::debug!("DescribeQuorum: {error}");
            return failed(ResponseError::NotLeaderOrFollower);
        }
    };
    let id = |host: ringlog_cluster::HostId| BrokerId(i32::try_from(host.0).unwrap_or(-1));
    let stamp = |ms: Option<u64>| ms.map_or(-1, |ms| i64::try_from(ms).unwrap_or(i64::MAX));
    let voters = description
        .voters
        .iter()
        .map(|voter| {
            ReplicaState::default()
                .with_replica_id(id(voter.id))
                .with_log_end_offset(i64::try_from(voter.log_end_offset).unwrap_or(i64::MAX))
                .with_last_fetch_timestamp(stamp(voter.last_fetch_ms))
                .with_last_caught_up_timestamp(stamp(voter.last_caught_up_ms))
        })
        .collect();
    let partition = PartitionData::default()
        .with_partition_index(0)
        .with_leader_id(id(description.leader))
        .with_leader_epoch(i32::try_from(description.term).unwrap_or(i32::MAX))
        .with_high_watermark(i64::try_from(description.high_watermark).unwrap_or(i64::MAX))
        .with_current_voters(voters);
    DescribeQuorumResponse::default().with_topics(vec![TopicData::default()
        .with_topic_name(TopicName(StrBytes::from_static_str(METADATA_TOPIC)))
        .with_partitions(vec![partition])])
}

/// Catalog edits in a cluster: checked here as on one node, then decided by the controller
/// quorum (`ringlog_cluster::Controller`), and answered once this broker's catalog shows them
/// (the membership loop applies the quorum's log to every shard).
pub(crate) mod cluster {
    use std::rc::Rc;
    use std::time::Duration;

    use kafka_protocol::ResponseError;
    use ringlog_cluster::quorum::{Command, CommandError, Reply};
    use ringlog_env::TcpTransport;

    use super::{
        alter, grow as grown, new_topic, AdminError, ConfigOps, Deletion, Edit, Growth, Topic,
        TopicSpec,
    };
    use crate::broker::catalog::Catalog;
    use crate::broker::Shard;
    use crate::controller::driver::QuorumClient;

    /// How long a command may take to reach a controller (across an election).
    const COMMAND_ATTEMPTS: usize = 100;
    const RETRY_DELAY: Duration = Duration::from_millis(50);
    /// How long a committed change may take to reach this broker's catalog.
    const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
    const SETTLE_POLL: Duration = Duration::from_millis(10);

    fn refused(code: ResponseError, message: impl Into<String>) -> AdminError {
        AdminError::new(code, message)
    }

    /// The quorum answered a command with another command's reply (a bug, not a refusal).
    pub(super) fn unexpected(reply: &Reply) -> AdminError {
        refused(
            ResponseError::UnknownServerError,
            format!("unexpected answer {reply:?}"),
        )
    }

    /// A client's assignment (node ids) as the controller's nodes; the controller checks that
    /// each is a core of a registered host.
    fn nodes_of(assignment: &[Vec<i32>]) -> Vec<Vec<ringlog_cluster::NodeId>> {
        assignment
            .iter()
            .map(|replicas| {
                replicas
                    .iter()
                    .map(|&node| ringlog_cluster::NodeId(node))
                    .collect()
            })
            .collect()
    }

    /// A client of the controller quorum with this broker's request timeout; `None` outside a
    /// cluster.
    pub(crate) fn quorum_client(shard: &Shard) -> Option<QuorumClient<TcpTransport>> {
        let cluster = shard.settings.cluster.as_ref()?;
        let client = QuorumClient::new(TcpTransport, cluster.voters.clone()).with_timeout(
            Rc::clone(&shard.env.clock),
            crate::broker::member::QUORUM_REQUEST_TIMEOUT,
        );
        Some(client)
    }

    pub(crate) async fn forward(shard: &Shard, command: Command) -> Result<Reply, AdminError> {
        let Some(mut client) = quorum_client(shard) else {
            return Err(refused(ResponseError::NotController, "not in a cluster"));
        };
        let clock = Rc::clone(&shard.env.clock);
        match client
            .command(command, &*clock, COMMAND_ATTEMPTS, RETRY_DELAY)
            .await
        {
            Ok(Ok(reply)) => {
                shard.member_wake.now();
                Ok(reply)
            }
            Ok(Err(CommandError::Refused(refusal))) => Err(refused(refusal.code, refusal.message)),
            Ok(Err(other)) => Err(refused(other.code(), other.to_string())),
            Err(error) => Err(refused(ResponseError::NotController, error.to_string())),
        }
    }

    /// Waits until this broker's catalog satisfies `done` (the change reached it).
    async fn settle(shard: &Shard, done: impl Fn(&Catalog) -> bool) -> Result<(), AdminError> {
        let deadline = shard.env.clock.now() + SETTLE_TIMEOUT;
        while !done(&shard.catalog.borrow()) {
            if shard.env.clock.now() >= deadline {
                return Err(refused(
                    ResponseError::RequestTimedOut,
                    "committed by the controller, not yet applied by this broker",
                ));
            }
            shard.env.clock.sleep(SETTLE_POLL).await;
        }
        Ok(())
    }

    pub async fn create(
        shard: &Rc<Shard>,
        batch: Edit<TopicSpec>,
    ) -> Vec<Result<Topic, AdminError>> {
        let catalog = shard.catalog.borrow().clone();
        let mut results = Vec::with_capacity(batch.items.len());
        for spec in batch.items {
            let checked = new_topic(shard, &catalog, &spec);
            let topic = match checked {
                Ok(topic) if !batch.validate_only => topic,
                other => {
                    results.push(other);
                    continue;
                }
            };
            let command = Command::CreateTopics(vec![ringlog_cluster::NewTopic {
                name: spec.name.clone(),
                id: topic.uuid().as_u128(),
                partitions: u32::try_from(spec.partitions).unwrap_or(0),
                replication_factor: u16::try_from(spec.replication_factor).unwrap_or(0),
                assignment: spec.replicas.as_ref().map(|all| nodes_of(all)),
                configs: spec.configs.clone(),
            }]);
            let result = match forward(shard, command).await {
                Ok(Reply::CreateTopics(mut answers)) if answers.len() == 1 => {
                    match answers.remove(0) {
                        Ok(_) => {
                            let name = spec.name.clone();
                            settle(shard, |c| c.topics.contains_key(&name))
                                .await
                                .map(|()| shard.catalog.borrow().topics[&spec.name].clone())
                        }
                        Err(refusal) => Err(refused(refusal.code, refusal.message)),
                    }
                }
                Ok(other) => Err(unexpected(&other)),
                Err(error) => Err(error),
            };
            results.push(result);
        }
        results
    }

    pub async fn delete(
        shard: &Rc<Shard>,
        batch: Edit<Deletion>,
    ) -> Vec<Result<(String, uuid::Uuid), AdminError>> {
        let mut results = Vec::with_capacity(batch.items.len());
        for (name, id) in batch.items {
            let found = {
                let catalog = shard.catalog.borrow();
                match &name {
                    Some(name) => catalog.topics.get_key_value(name),
                    None => catalog.by_id(id),
                }
                .map(|(name, topic)| (name.clone(), topic.uuid()))
            };
            let Some((name, id)) = found else {
                let code = if name.is_some() {
                    ResponseError::UnknownTopicOrPartition
                } else {
                    ResponseError::UnknownTopicId
                };
                results.push(Err(refused(code, "no such topic")));
                continue;
            };
            if name == crate::broker::groups::OFFSETS_TOPIC {
                results.push(Err(refused(
                    ResponseError::InvalidTopicException,
                    "the internal offsets topic cannot be deleted",
                )));
                continue;
            }
            let result = match forward(shard, Command::DeleteTopics(vec![name.clone()])).await {
                Ok(Reply::DeleteTopics(answers)) => match answers.into_iter().next() {
                    Some(Ok(_)) => settle(shard, |c| !c.topics.contains_key(&name))
                        .await
                        .map(|()| (name, id)),
                    Some(Err(refusal)) => Err(refused(refusal.code, refusal.message)),
                    None => Err(refused(ResponseError::UnknownServerError, "no answer")),
                },
                Ok(other) => Err(unexpected(&other)),
                Err(error) => Err(error),
            };
            results.push(result);
        }
        results
    }

    pub async fn add_partitions(
        shard: &Rc<Shard>,
        batch: Edit<Growth>,
    ) -> Vec<Result<(), AdminError>> {
        let catalog = shard.catalog.borrow().clone();
        let mut results = Vec::with_capacity(batch.items.len());
        for growth in batch.items {
            let Growth {
                name,
                count,
                placement,
                replicas,
            } = growth;
            let checked = match placement {
                Ok(_) => grown(shard, &catalog, &name, count, None).map(|_| ()),
                Err(error) => Err(error),
            };
            if checked.is_err() || batch.validate_only {
                results.push(checked);
                continue;
            }
            let command = Command::CreatePartitions {
                name: name.clone(),
                count: u32::try_from(count).unwrap_or(0),
                assignment: replicas.as_ref().map(|all| nodes_of(all)),
            };
            let wanted = usize::try_from(count).unwrap_or(0);
            let result = match forward(shard, command).await {
                Ok(_) => {
                    settle(shard, |c| {
                        c.topics.get(&name).map(|t| t.partitions.len()) == Some(wanted)
                    })
                    .await
                }
                Err(error) => Err(error),
            };
            results.push(result);
        }
        results
    }

    pub async fn alter_configs(
        shard: &Rc<Shard>,
        batch: Edit<ConfigOps>,
    ) -> Vec<Result<(), AdminError>> {
        let catalog = shard.catalog.borrow().clone();
        let mut results = Vec::with_capacity(batch.items.len());
        for ops in batch.items {
            let altered = match alter(&catalog, &ops) {
                Ok(altered) => altered,
                Err(error) => {
                    results.push(Err(error));
                    continue;
                }
            };
            if batch.validate_only {
                results.push(Ok(()));
                continue;
            }
            let name = ops.topic;
            let before = &catalog.topics[&name].configs;
            let mut changes: Vec<(String, Option<String>)> = altered
                .configs
                .iter()
                .filter(|(key, value)| before.get(*key) != Some(*value))
                .map(|(key, value)| (key.clone(), Some(value.clone())))
                .collect();
            changes.extend(
                before
                    .keys()
                    .filter(|key| !altered.configs.contains_key(*key))
                    .map(|key| (key.clone(), None)),
            );
            let wanted = altered.configs.clone();
            let command = Command::AlterConfigs {
                name: name.clone(),
                changes,
            };
            let result = match forward(shard, command).await {
                Ok(_) => {
                    settle(shard, |c| {
                        c.topics.get(&name).map(|t| &t.configs) == Some(&wanted)
                    })
                    .await
                }
                Err(error) => Err(error),
            };
            results.push(result);
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kafka_protocol::ResponseError;

    use super::{alter, Catalog, ConfigOps, Topic, OP_DELETE, OP_SET};

    fn catalog(configs: &[(&str, &str)]) -> Catalog {
        let topic = Topic {
            id: "0".repeat(32),
            partitions: Vec::new(),
            configs: configs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let mut catalog = Catalog::default();
        catalog.topics.insert("t".to_owned(), topic);
        catalog
    }

    fn ops(replace: bool, ops: &[(&str, i8, Option<&str>)]) -> ConfigOps {
        ConfigOps {
            topic: "t".to_owned(),
            replace,
            ops: ops
                .iter()
                .map(|(k, op, v)| ((*k).to_owned(), *op, v.map(str::to_owned)))
                .collect(),
        }
    }

    fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        catalog(pairs).topics["t"].configs.clone()
    }

    #[test]
    fn replace_sets_exactly_the_named_configs_and_incremental_edits() {
        let before = catalog(&[("retention.ms", "1000"), ("segment.ms", "2000")]);
        let set = |replace| ops(replace, &[("retention.ms", OP_SET, Some("5000"))]);
        let replaced = alter(&before, &set(true)).expect("valid");
        assert_eq!(replaced.configs, configs(&[("retention.ms", "5000")]));
        let edited = alter(&before, &set(false)).expect("valid");
        assert_eq!(
            edited.configs,
            configs(&[("retention.ms", "5000"), ("segment.ms", "2000")])
        );
        let deleted = ops(false, &[("segment.ms", OP_DELETE, None)]);
        assert_eq!(
            alter(&before, &deleted).expect("valid").configs,
            configs(&[("retention.ms", "1000")])
        );
        // An empty replacement resets every override.
        assert!(alter(&before, &ops(true, &[]))
            .expect("valid")
            .configs
            .is_empty());
    }

    #[test]
    fn replace_refuses_unknown_configs_bad_values_and_unknown_topics() {
        let before = catalog(&[("retention.ms", "1000")]);
        for (key, value) in [("no.such", "1"), ("retention.ms", "soon")] {
            let asked = ops(
                true,
                &[
                    ("segment.ms", OP_SET, Some("2000")),
                    (key, OP_SET, Some(value)),
                ],
            );
            let refused = alter(&before, &asked).expect_err(key);
            assert_eq!(refused.code, ResponseError::InvalidConfig, "{key}");
        }
        let asked = ops(true, &[("retention.ms", OP_SET, None)]);
        let refused = alter(&before, &asked).expect_err("no value");
        assert_eq!(refused.code, ResponseError::InvalidConfig);
        let mut missing = ops(true, &[]);
        missing.topic = "other".to_owned();
        let refused = alter(&before, &missing).expect_err("unknown topic");
        assert_eq!(refused.code, ResponseError::UnknownTopicOrPartition);
    }
}
