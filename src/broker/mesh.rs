//! Cross-shard calls: a typed request is sent through the bounded glommio channel mesh to the
//! shard that owns the data, run there, and its typed reply sent back the same way.
//!
//! A call is a value of a type that implements [`Call`]: plain data (topic names, record
//! `Bytes`, offsets, a decoded Kafka request), never a closure, so it can be logged, replayed
//! by a simulation and, later, sent to another host. Its reply type belongs to the call's type:
//! `shard.call(owner, produce::Append(parts))` returns `Vec<ProduceOutcome>`, and a call whose
//! `run` answered anything else would not compile. The [`calls!`] list names every call once
//! and generates the two enums that travel ([`Request`], [`Reply`]) and the dispatch that runs
//! a request on the receiving shard, so a request and its reply always carry the same variant.
//!
//! Parts of one client request that several shards own go out as one call per owner
//! ([`ByOwner`], [`scatter`]), and a shard that cannot be reached becomes a Kafka error code in
//! one place ([`MeshError::code`]).
//!
//! Only `Send` values cross: the call and its reply. The future a call builds runs on the
//! owner and may use that shard's `Rc` state. Each shard has one receiver task per peer; it
//! never waits on a send itself (answers are sent from the spawned calls), so two shards
//! calling each other with full channels cannot deadlock.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::rc::Rc;

use glommio::channels::channel_mesh::Senders;
use glommio::channels::local_channel::{self, LocalSender};
use glommio::channels::shared_channel::ConnectedReceiver;
use kafka_protocol::ResponseError;
use thiserror::Error;
use tracing::warn;

use super::{admin, fetch, groups, offsets, produce, producer_ids, Shard};

/// Messages in flight between a pair of shards.
pub const CHANNEL_CAPACITY: usize = 1024;

/// Work one shard asks another to do. `run` is called on the shard the call was sent to (or
/// directly, when a shard calls itself).
pub trait Call: Send + 'static {
    /// What the call answers; it travels back through the mesh.
    type Reply: Send + 'static;

    fn run(self, shard: Rc<Shard>) -> impl Future<Output = Self::Reply>;
}

/// A call's place in [`Request`] and [`Reply`]; implemented by [`calls!`] only.
pub trait Routed: Call + Sized {
    fn into_request(self) -> Request;
    /// The reply of this call; `Err` names the call of another reply, which the dispatch never
    /// produces (it answers each request variant with the same reply variant).
    fn from_reply(reply: Reply) -> Result<Self::Reply, &'static str>;
}

/// Every cross-shard call, by the variant it travels as.
macro_rules! calls {
    ($($variant:ident($call:ty),)*) => {
        /// A call on its way to the shard that runs it.
        pub enum Request {
            $($variant($call),)*
        }

        /// A call's answer on its way back.
        pub enum Reply {
            $($variant(<$call as Call>::Reply),)*
        }

        $(impl Routed for $call {
            fn into_request(self) -> Request {
                Request::$variant(self)
            }

            fn from_reply(reply: Reply) -> Result<Self::Reply, &'static str> {
                match reply {
                    Reply::$variant(value) => Ok(value),
                    other => Err(other.name()),
                }
            }
        })*

        impl Request {
            /// Runs the call on `shard` and wraps its answer in the same variant.
            async fn run(self, shard: Rc<Shard>) -> Reply {
                match self {
                    $(Request::$variant(call) => Reply::$variant(call.run(shard).await),)*
                }
            }

            pub fn name(&self) -> &'static str {
                match self {
                    $(Request::$variant(_) => stringify!($variant),)*
                }
            }
        }

        impl Reply {
            pub fn name(&self) -> &'static str {
                match self {
                    $(Reply::$variant(_) => stringify!($variant),)*
                }
            }
        }
    };
}

calls! {
    Append(produce::Append),
    Read(fetch::Read),
    WaitForData(fetch::WaitForData),
    ListOffsets(offsets::Query),
    EpochEnds(offsets::EpochEnds),
    ApplyCatalog(admin::Apply),
    CreateTopics(admin::Edit<admin::TopicSpec>),
    DeleteTopics(admin::Edit<admin::Deletion>),
    CreatePartitions(admin::Edit<admin::Growth>),
    AlterConfigs(admin::Edit<admin::ConfigOps>),
    AllocateProducerId(producer_ids::Allocate),
    JoinGroup(groups::JoinGroup),
    SyncGroup(groups::SyncGroup),
    GroupHeartbeat(groups::GroupHeartbeat),
    LeaveGroup(groups::LeaveGroup),
    CommitOffsets(groups::CommitOffsets),
    FetchOffsets(groups::FetchOffsets),
    DescribeGroup(groups::DescribeGroup),
    DeleteGroup(groups::DeleteGroup),
    DeleteOffsets(groups::DeleteOffsets),
    ListGroupsHere(groups::ListGroupsHere),
    ConsumerHeartbeat(groups::ConsumerHeartbeat),
    DescribeConsumerGroup(groups::DescribeConsumerGroup),
}

/// What travels between shards.
pub enum Message {
    Call { id: u64, request: Request },
    Reply { id: u64, reply: Reply },
}

#[derive(Debug, Clone, Copy, Error)]
pub enum MeshError {
    #[error("shard {0} is not reachable (stopping?)")]
    Unreachable(usize),
    #[error("shard {shard} answered {got} to a {expected} call")]
    WrongReply {
        shard: usize,
        expected: &'static str,
        got: &'static str,
    },
}

/// What a cross-shard call was for: it decides what a client is told when the shard that should
/// answer cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A partition's owner: the client refreshes its metadata and retries.
    Partition,
    /// A group's coordinator: the client looks the coordinator up again.
    Coordinator,
    /// The controller, which makes every catalog change.
    Controller,
}

impl MeshError {
    /// The one place a routing failure becomes a Kafka error code. Every code is retriable:
    /// a shard is unreachable only while the broker stops.
    pub fn code(&self, route: Route) -> ResponseError {
        match route {
            Route::Partition => ResponseError::NotLeaderOrFollower,
            Route::Coordinator => ResponseError::CoordinatorNotAvailable,
            Route::Controller => ResponseError::NotController,
        }
    }
}

/// One shard's end of the mesh.
pub struct Mesh {
    senders: Senders<Message>,
    /// Mesh peer id of each shard.
    peer_of: Vec<usize>,
    waiting: RefCell<HashMap<u64, LocalSender<Reply>>>,
    next_id: Cell<u64>,
}

impl Mesh {
    pub fn new(senders: Senders<Message>, peer_of: Vec<usize>) -> Self {
        Self {
            senders,
            peer_of,
            waiting: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
        }
    }

    /// Sends `call` to shard `target` and returns its reply.
    pub async fn call<C: Routed>(&self, target: usize, call: C) -> Result<C::Reply, MeshError> {
        let Some(&peer) = self.peer_of.get(target) else {
            return Err(MeshError::Unreachable(target));
        };
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (sender, receiver) = local_channel::new_bounded(1);
        self.waiting.borrow_mut().insert(id, sender);
        let request = call.into_request();
        let expected = request.name();
        if self
            .senders
            .send_to(peer, Message::Call { id, request })
            .await
            .is_err()
        {
            self.waiting.borrow_mut().remove(&id);
            return Err(MeshError::Unreachable(target));
        }
        let reply = receiver
            .recv()
            .await
            .ok_or(MeshError::Unreachable(target))?;
        C::from_reply(reply).map_err(|other| MeshError::WrongReply {
            shard: target,
            expected,
            got: other,
        })
    }

    fn deliver(&self, id: u64, reply: Reply) {
        if let Some(sender) = self.waiting.borrow_mut().remove(&id) {
            // The caller may have given up (its request was dropped); then nobody listens.
            let _ = sender.try_send(reply);
        }
    }
}

/// Serves the messages mesh peer `peer` (a peer id, not a shard index) sends to `shard` until
/// the channel closes; answers go back to the same peer.
pub async fn receive(shard: Rc<Shard>, peer: usize, receiver: ConnectedReceiver<Message>) {
    while let Some(message) = receiver.recv().await {
        match message {
            Message::Call { id, request } => {
                let owner = Rc::clone(&shard);
                let name = request.name();
                let spawned = glommio::spawn_local_into(
                    async move {
                        let reply = request.run(Rc::clone(&owner)).await;
                        if let Some(mesh) = &owner.mesh {
                            if mesh
                                .senders
                                .send_to(peer, Message::Reply { id, reply })
                                .await
                                .is_err()
                            {
                                warn!(
                                    peer,
                                    call = name,
                                    "cannot answer a cross-shard call: peer gone"
                                );
                            }
                        }
                    },
                    shard.queues.requests,
                );
                match spawned {
                    Ok(task) => {
                        task.detach();
                    }
                    Err(error) => {
                        warn!(peer, call = name, "cannot run a cross-shard call: {error}")
                    }
                }
            }
            Message::Reply { id, reply } => {
                if let Some(mesh) = &shard.mesh {
                    mesh.deliver(id, reply);
                }
            }
        }
    }
}

/// A request's parts grouped by the shard owning each, every part with the key that puts its
/// answer back in place (its position in the request).
pub struct ByOwner<K, P> {
    owners: BTreeMap<usize, (Vec<K>, Vec<P>)>,
}

impl<K, P> Default for ByOwner<K, P> {
    fn default() -> Self {
        Self {
            owners: BTreeMap::new(),
        }
    }
}

impl<K, P> ByOwner<K, P> {
    pub fn add(&mut self, owner: usize, key: K, part: P) {
        let entry = self.owners.entry(owner).or_default();
        entry.0.push(key);
        entry.1.push(part);
    }

    /// Takes out the parts `owner` owns (to be handled without a call).
    pub fn take(&mut self, owner: usize) -> Option<(Vec<K>, Vec<P>)> {
        self.owners.remove(&owner)
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// How many owners there are.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// Each owner with the keys and parts it owns.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &[K], &[P])> {
        self.owners
            .iter()
            .map(|(&owner, (keys, parts))| (owner, keys.as_slice(), parts.as_slice()))
    }
}

impl<K: Clone, P: Clone> Clone for ByOwner<K, P> {
    fn clone(&self) -> Self {
        Self {
            owners: self.owners.clone(),
        }
    }
}

/// Sends every owner its parts as one call (`call(parts)`), to all owners at once, and returns
/// each part's answer with its key. Each part of an owner that cannot be reached is answered
/// `unreachable(code)`, with the code for a partition that cannot be routed.
pub async fn scatter<K, P, C, R>(
    shard: &Rc<Shard>,
    routes: ByOwner<K, P>,
    call: impl Fn(Vec<P>) -> C,
    unreachable: impl Fn(ResponseError) -> R,
) -> Vec<(K, R)>
where
    C: Routed<Reply = Vec<R>>,
    K: 'static,
    R: 'static,
{
    let mut tasks = Vec::with_capacity(routes.owners.len());
    for (owner, (keys, parts)) in routes.owners {
        let shard = Rc::clone(shard);
        let call = call(parts);
        // Spawned, so that the calls to several owners run at once; each runs up to its first
        // wait now.
        let task = glommio::spawn_local(async move { shard.call(owner, call).await });
        tasks.push((keys, task));
    }
    let mut answers = Vec::new();
    for (keys, task) in tasks {
        match task.await {
            Ok(replies) => {
                // An owner answers every part it was sent, in order (each call's `run` says so).
                assert_eq!(replies.len(), keys.len(), "one answer per part");
                answers.extend(keys.into_iter().zip(replies));
            }
            Err(error) => {
                warn!("{error}");
                let code = error.code(Route::Partition);
                answers.extend(keys.into_iter().map(|key| (key, unreachable(code))));
            }
        }
    }
    answers
}
