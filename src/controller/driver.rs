//! A running controller voter: the quorum's state machine ([`ControllerNode`]) driven by the
//! clock, fed by its links, and made durable by its [`MetadataLog`].
//!
//! Everything the voter does goes through [`Voter::feed`], which hands one input to the state
//! machine and carries out the output in the order the quorum demands: the leader's own
//! replication messages go out at once; the persist batch is written and fdatasynced; only
//! then go the messages that promise durability (votes, acknowledgements) and the `Persisted`
//! input that lets the state machine count the batch. `feed` never awaits, so no borrow of the
//! state machine is held across a wait.
//!
//! Links are [`ringlog_env::Transport`] streams carrying [`super::wire`] frames, the first of
//! which says who is calling ([`Hello`]): another voter (then raft messages, one per frame,
//! each way on its own connection: a voter dials every other voter and reads what they dial
//! in) or a client (a broker, a tool: one [`ClientRequest`] at a time, each answered). A
//! message to a voter that cannot be reached is dropped: Raft resends what matters.
//!
//! The clock, the transport and the randomness (the quorum's seed) are passed in, so the same
//! driver runs in `ringlog serve` (system clock, TCP) and in tests (an in-memory network).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use ringlog_cluster::quorum::{
    CatchUp, Command, CommandError, ControllerNode, Input, QuorumDescription, QuorumSettings,
    Reply, RequestId,
};
use ringlog_cluster::{HostId, MetadataImage, RecordBatch};
use ringlog_env::{Env, Listener, Transport};
use ringlog_net::connection::Shutdown;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{debug, info, warn};

use super::metadata_log::{MetadataLog, MetadataLogError};
use super::wire::{read_frame, write_frame, WireError};

/// Raft messages queued for one voter while its link is down or slow; more are dropped.
const OUTBOX_MESSAGES_MAX: usize = 1024;
/// Pause before dialing a voter again after a failed connection.
const REDIAL_DELAY: Duration = Duration::from_millis(100);

/// The first frame on every controller link.
#[derive(Debug, Serialize, Deserialize)]
pub enum Hello {
    Voter { from: HostId },
    Client,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ClientRequest {
    Command(Command),
    /// The committed metadata after log index `after`.
    CatchUp {
        after: u64,
    },
    /// The quorum as its leader sees it (DescribeQuorum).
    DescribeQuorum,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ClientResponse {
    Reply(Result<Reply, CommandError>),
    /// Committed batches after the asked index, as (index, encoded batch).
    Batches(Vec<(u64, Vec<u8>)>),
    /// The asked index was compacted away: the image at the snapshot (encoded), then batches.
    Image {
        image: Vec<u8>,
        then: Vec<(u64, Vec<u8>)>,
    },
    /// The leader's view of the quorum, its timestamps in wall-clock milliseconds.
    Quorum(QuorumDescription),
}

/// A voter's settings.
#[derive(Debug, Clone)]
pub struct VoterConfig {
    pub id: HostId,
    /// Every voter's controller address (`HOST:PORT`), this one's included.
    pub voters: BTreeMap<HostId, String>,
    pub data_dir: PathBuf,
    pub settings: QuorumSettings,
}

#[derive(Debug, Error)]
pub enum DriverError {
    #[error(transparent)]
    Log(#[from] MetadataLogError),
    #[error("cannot start the controller quorum: {0}")]
    Restore(String),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
}

/// A running voter; see the module doc.
pub struct Voter {
    id: HostId,
    node: RefCell<ControllerNode>,
    log: RefCell<MetadataLog>,
    outboxes: BTreeMap<HostId, LocalSender<Vec<u8>>>,
    waiting: RefCell<HashMap<RequestId, LocalSender<Result<Reply, CommandError>>>>,
    next_request: Cell<RequestId>,
    started: Instant,
    env: Env,
    /// A disk failure stops the voter: it must not vote or acknowledge what it cannot keep.
    failed: RefCell<Option<MetadataLogError>>,
}

impl Voter {
    /// Feeds one input and carries out what follows from it (see the module doc).
    fn feed(&self, input: Input) {
        if self.failed.borrow().is_some() {
            return;
        }
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            let output = self.node.borrow_mut().handle(input);
            for (to, bytes) in output.send_now {
                self.send(to, bytes);
            }
            if let Some(batch) = &output.persist {
                if let Err(error) = self.log.borrow_mut().persist(batch) {
                    warn!(voter = %self.id, "the metadata log cannot be written: {error}");
                    *self.failed.borrow_mut() = Some(error);
                    return;
                }
                inputs.push_back(Input::Persisted {
                    number: batch.number,
                });
            }
            for (to, bytes) in output.send_after_persist {
                self.send(to, bytes);
            }
            for (id, result) in output.replies {
                if let Some(slot) = self.waiting.borrow_mut().remove(&id) {
                    let _ = slot.try_send(result);
                }
            }
        }
    }

    fn send(&self, to: HostId, bytes: Vec<u8>) {
        if let Some(outbox) = self.outboxes.get(&to) {
            // A full outbox means the link is down or slow: Raft resends what matters.
            let _ = outbox.try_send(bytes);
        }
    }

    fn now_ms(&self) -> u64 {
        let elapsed = self.env.clock.now().saturating_duration_since(self.started);
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs a client command here and waits for its answer.
    async fn command(&self, command: Command) -> Result<Reply, CommandError> {
        let id = self.next_request.get();
        self.next_request.set(id + 1);
        let (slot, answer) = local_channel::new_bounded(1);
        self.waiting.borrow_mut().insert(id, slot);
        self.feed(Input::Client { id, command });
        match answer.recv().await {
            Some(result) => result,
            // The voter stopped: the client asks another one.
            None => Err(CommandError::NotController { leader: None }),
        }
    }

    fn catch_up(&self, after: u64) -> ClientResponse {
        let encode = |batches: Vec<(u64, RecordBatch)>| {
            batches
                .into_iter()
                .map(|(index, batch)| (index, batch.encode()))
                .collect()
        };
        match self.node.borrow().committed_since(after) {
            CatchUp::Batches(batches) => ClientResponse::Batches(encode(batches)),
            CatchUp::Image { image, then } => ClientResponse::Image {
                image: image.encode(),
                then: encode(then),
            },
        }
    }

    /// The quorum as this voter sees it if it leads (its monotonic times turned into wall
    /// clock), else NOT_CONTROLLER naming the leader it knows, which the client follows.
    fn describe_quorum(&self) -> ClientResponse {
        let node = self.node.borrow();
        let Some(mut description) = node.describe_quorum() else {
            return ClientResponse::Reply(Err(CommandError::NotController {
                leader: node.leader(),
            }));
        };
        let (now, wall) = (self.now_ms(), self.env.clock.now_ms());
        let to_wall = |ms: u64| {
            let ago = i64::try_from(now.saturating_sub(ms)).unwrap_or(i64::MAX);
            u64::try_from(wall.saturating_sub(ago)).unwrap_or(0)
        };
        for voter in &mut description.voters {
            voter.last_fetch_ms = voter.last_fetch_ms.map(to_wall);
            voter.last_caught_up_ms = voter.last_caught_up_ms.map(to_wall);
        }
        ClientResponse::Quorum(description)
    }

    pub fn id(&self) -> HostId {
        self.id
    }

    pub fn is_active(&self) -> bool {
        self.node.borrow().is_active()
    }

    pub fn leader(&self) -> Option<HostId> {
        self.node.borrow().leader()
    }

    pub fn image(&self) -> MetadataImage {
        self.node.borrow().image().clone()
    }
}

/// Starts a voter on the current glommio executor: recovers its log, listens on its address,
/// dials the other voters and ticks, until `stop` is triggered (then its tasks end and the
/// returned `Rc` is the last reference). `seed` seeds the quorum's randomness.
pub fn start<T>(
    config: VoterConfig,
    transport: T,
    env: Env,
    seed: u64,
    stop: Rc<Shutdown>,
) -> Result<Rc<Voter>, DriverError>
where
    T: Transport + Clone + 'static,
{
    let log = MetadataLog::open(&config.data_dir)?;
    if log.torn_bytes() > 0 {
        warn!(
            bytes = log.torn_bytes(),
            "cut a torn tail off the metadata log"
        );
    }
    let voters: Vec<HostId> = config.voters.keys().copied().collect();
    let recovered = log.recovered().clone();
    let node =
        ControllerNode::restore(config.id, &voters, recovered, config.settings.clone(), seed)
            .map_err(|error| DriverError::Restore(error.to_string()))?;
    let own_address = config
        .voters
        .get(&config.id)
        .cloned()
        .ok_or_else(|| DriverError::Restore(format!("voter {} has no address", config.id)))?;
    let listener = transport
        .listen(&own_address)
        .map_err(|source| DriverError::Listen {
            address: own_address.clone(),
            source,
        })?;
    let mut outboxes = BTreeMap::new();
    let mut dialers = Vec::new();
    for (&peer, address) in config.voters.iter().filter(|(&id, _)| id != config.id) {
        let (sender, receiver) = local_channel::new_bounded(OUTBOX_MESSAGES_MAX);
        outboxes.insert(peer, sender);
        dialers.push((address.clone(), receiver));
    }
    let voter = Rc::new(Voter {
        id: config.id,
        node: RefCell::new(node),
        log: RefCell::new(log),
        outboxes,
        waiting: RefCell::new(HashMap::new()),
        next_request: Cell::new(0),
        started: env.clock.now(),
        env,
        failed: RefCell::new(None),
    });
    info!(voter = %config.id, voters = ?voters, address = own_address, "controller voter started");
    for (address, receiver) in dialers {
        let transport = transport.clone();
        let (id, stop, env) = (config.id, Rc::clone(&stop), voter.env.clone());
        glommio::spawn_local(until_stopped(
            Rc::clone(&stop),
            dial(id, address, transport, receiver, env),
        ))
        .detach();
    }
    let tick = Duration::from_millis(config.settings.tick_interval_ms.max(1));
    glommio::spawn_local(until_stopped(
        Rc::clone(&stop),
        ticker(Rc::clone(&voter), tick),
    ))
    .detach();
    glommio::spawn_local(until_stopped(
        Rc::clone(&stop),
        accept(Rc::clone(&voter), listener, Rc::clone(&stop)),
    ))
    .detach();
    Ok(voter)
}

async fn until_stopped(stop: Rc<Shutdown>, work: impl std::future::Future<Output = ()>) {
    futures_lite::future::or(work, stop.wait()).await;
}

async fn ticker(voter: Rc<Voter>, tick: Duration) {
    loop {
        voter.env.clock.sleep(tick).await;
        let now_ms = voter.now_ms();
        voter.feed(Input::Tick { now_ms });
    }
}

/// Keeps a link to one voter and sends it what the outbox holds.
async fn dial<T: Transport>(
    from: HostId,
    address: String,
    transport: T,
    outbox: LocalReceiver<Vec<u8>>,
    env: Env,
) {
    let hello = postcard::to_allocvec(&Hello::Voter { from }).expect("hello encodes");
    let mut link = None;
    while let Some(bytes) = outbox.recv().await {
        if link.is_none() {
            match transport.connect(&address).await {
                Ok(mut stream) => match write_frame(&mut stream, &hello).await {
                    Ok(()) => link = Some(stream),
                    Err(error) => debug!(%address, "voter link: {error}"),
                },
                Err(error) => {
                    debug!(%address, "cannot reach voter: {error}");
                    env.clock.sleep(REDIAL_DELAY).await;
                    continue;
                }
            }
        }
        let Some(stream) = link.as_mut() else {
            continue;
        };
        if let Err(error) = write_frame(stream, &bytes).await {
            debug!(%address, "voter link dropped: {error}");
            link = None;
        }
    }
}

async fn accept<L: Listener + 'static>(voter: Rc<Voter>, listener: L, stop: Rc<Shutdown>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let voter = Rc::clone(&voter);
                glommio::spawn_local(until_stopped(Rc::clone(&stop), async move {
                    if let Err(error) = serve_link(&voter, stream).await {
                        debug!(%peer, "controller link closed: {error}");
                    }
                }))
                .detach();
            }
            Err(error) => {
                warn!("controller accept failed: {error}");
                voter.env.clock.sleep(REDIAL_DELAY).await;
            }
        }
    }
}

#[derive(Debug, Error)]
enum LinkError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("undecodable message: {0}")]
    Decode(#[from] postcard::Error),
    #[error("voter {0} is not a voter of this quorum")]
    Stranger(HostId),
}

async fn serve_link<S: ringlog_env::Stream>(voter: &Voter, mut stream: S) -> Result<(), LinkError> {
    let hello: Hello = postcard::from_bytes(&read_frame(&mut stream).await?)?;
    match hello {
        Hello::Voter { from } => {
            if from == voter.id || !voter.outboxes.contains_key(&from) {
                return Err(LinkError::Stranger(from));
            }
            loop {
                let bytes = read_frame(&mut stream).await?;
                voter.feed(Input::Peer { from, bytes });
            }
        }
        Hello::Client => loop {
            let request: ClientRequest = postcard::from_bytes(&read_frame(&mut stream).await?)?;
            let response = match request {
                ClientRequest::Command(command) => {
                    ClientResponse::Reply(voter.command(command).await)
                }
                ClientRequest::CatchUp { after } => voter.catch_up(after),
                ClientRequest::DescribeQuorum => voter.describe_quorum(),
            };
            let bytes = postcard::to_allocvec(&response).expect("responses encode");
            write_frame(&mut stream, &bytes).await?;
        },
    }
}

/// A client of the quorum (a broker, a tool): sends commands to the active controller,
/// following NOT_CONTROLLER answers to the leader they name, and reads committed metadata.
pub struct QuorumClient<T: Transport> {
    transport: T,
    voters: BTreeMap<HostId, String>,
    /// The voter believed active, and the open link to it.
    target: Option<HostId>,
    link: Option<T::Stream>,
    /// How long one request may take (connect included), on which clock: a voter that hangs
    /// (SIGSTOP, a cut link TCP has not noticed) must not hang its caller.
    timeout: Option<(Rc<dyn ringlog_env::Clock>, Duration)>,
}

#[derive(Debug, Error)]
pub enum QuorumClientError {
    #[error("no controller answered: {0}")]
    Unreachable(String),
    #[error("the controller answered something else than was asked")]
    Confused,
}

impl<T: Transport> QuorumClient<T> {
    pub fn new(transport: T, voters: BTreeMap<HostId, String>) -> Self {
        Self {
            transport,
            voters,
            target: None,
            link: None,
            timeout: None,
        }
    }

    /// Gives up on a request after `timeout` on `clock` (the link is then dropped and the
    /// next voter tried, as for any failure).
    pub fn with_timeout(mut self, clock: Rc<dyn ringlog_env::Clock>, timeout: Duration) -> Self {
        self.timeout = Some((clock, timeout));
        self
    }

    async fn ask_once(
        &mut self,
        voter: HostId,
        request: &ClientRequest,
    ) -> Result<ClientResponse, String> {
        let Some((clock, timeout)) = self.timeout.clone() else {
            return self.ask_once_unbounded(voter, request).await;
        };
        let expired = async {
            clock.sleep(timeout).await;
            Err(format!("no answer within {timeout:?}"))
        };
        let answer =
            futures_lite::future::or(self.ask_once_unbounded(voter, request), expired).await;
        if answer.is_err() {
            self.link = None;
        }
        answer
    }

    async fn ask_once_unbounded(
        &mut self,
        voter: HostId,
        request: &ClientRequest,
    ) -> Result<ClientResponse, String> {
        if self.target != Some(voter) || self.link.is_none() {
            self.link = None;
            let address = self.voters.get(&voter).ok_or("unknown voter")?;
            let mut stream = self
                .transport
                .connect(address)
                .await
                .map_err(|error| error.to_string())?;
            let hello = postcard::to_allocvec(&Hello::Client).expect("hello encodes");
            write_frame(&mut stream, &hello)
                .await
                .map_err(|error| error.to_string())?;
            self.link = Some(stream);
            self.target = Some(voter);
        }
        let stream = self.link.as_mut().ok_or("no link")?;
        let bytes = postcard::to_allocvec(request).expect("requests encode");
        let exchange = async {
            write_frame(stream, &bytes).await?;
            read_frame(stream).await
        };
        match exchange.await {
            Ok(answer) => postcard::from_bytes(&answer).map_err(|error| error.to_string()),
            Err(error) => {
                self.link = None;
                Err(error.to_string())
            }
        }
    }

    /// The voter this client last reached (the active controller, after a command).
    pub fn active(&self) -> Option<HostId> {
        self.target
    }

    /// Runs `command` on the active controller: tries the voter it last reached, then the one
    /// a NOT_CONTROLLER answer names, then every voter in turn, for `attempts` tries in all,
    /// `retry_delay` apart when nobody leads yet.
    pub async fn command(
        &mut self,
        command: Command,
        clock: &dyn ringlog_env::Clock,
        attempts: usize,
        retry_delay: Duration,
    ) -> Result<Result<Reply, CommandError>, QuorumClientError> {
        let voters: Vec<HostId> = self.voters.keys().copied().collect();
        let mut next = self.target.unwrap_or(voters[0]);
        let mut last_problem = String::from("no attempt");
        for attempt in 0..attempts {
            match self
                .ask_once(next, &ClientRequest::Command(command.clone()))
                .await
            {
                Ok(ClientResponse::Reply(Err(CommandError::NotController { leader }))) => {
                    last_problem = format!("voter {next} does not lead");
                    match leader {
                        Some(leader) if leader != next => {
                            next = leader;
                            continue;
                        }
                        _ => {}
                    }
                }
                Ok(ClientResponse::Reply(Err(CommandError::Busy { queued }))) => {
                    last_problem = format!("voter {next} is busy ({queued} queued)");
                }
                Ok(ClientResponse::Reply(result)) => return Ok(result),
                Ok(_) => return Err(QuorumClientError::Confused),
                Err(problem) => last_problem = format!("voter {next}: {problem}"),
            }
            self.link = None;
            next = voters[(attempt + 1) % voters.len()];
            clock.sleep(retry_delay).await;
        }
        Err(QuorumClientError::Unreachable(last_problem))
    }

    /// Brings `image` up to what the quorum has committed: the batches after its applied
    /// index, or the snapshot image and the batches after it when those were compacted away.
    pub async fn update(&mut self, image: &mut MetadataImage) -> Result<(), QuorumClientError> {
        loop {
            let batches = match self.catch_up(image.applied_index).await? {
                ClientResponse::Batches(batches) => batches,
                ClientResponse::Image {
                    image: encoded,
                    then,
                } => {
                    *image =
                        MetadataImage::decode(&encoded).map_err(|_| QuorumClientError::Confused)?;
                    then
                }
                ClientResponse::Reply(_) | ClientResponse::Quorum(_) => {
                    return Err(QuorumClientError::Confused)
                }
            };
            if batches.is_empty() {
                return Ok(());
            }
            for (index, bytes) in batches {
                let batch = RecordBatch::decode(&bytes).map_err(|_| QuorumClientError::Confused)?;
                image.apply(index, &batch);
            }
        }
    }

    /// The quorum as its leader sees it: asks the voters in turn, following the leader they
    /// name.
    pub async fn describe_quorum(&mut self) -> Result<QuorumDescription, QuorumClientError> {
        let voters: Vec<HostId> = self.voters.keys().copied().collect();
        let mut next = self.target.unwrap_or(voters[0]);
        let mut last_problem = String::from("no attempt");
        for attempt in 0..voters.len() * 2 {
            match self.ask_once(next, &ClientRequest::DescribeQuorum).await {
                Ok(ClientResponse::Quorum(description)) => return Ok(description),
                Ok(ClientResponse::Reply(Err(CommandError::NotController {
                    leader: Some(leader),
                }))) if leader != next => {
                    last_problem = format!("voter {next} does not lead");
                    self.link = None;
                    next = leader;
                    continue;
                }
                Ok(ClientResponse::Reply(Err(error))) => last_problem = error.to_string(),
                Ok(_) => return Err(QuorumClientError::Confused),
                Err(problem) => last_problem = format!("voter {next}: {problem}"),
            }
            self.link = None;
            next = voters[(attempt + 1) % voters.len()];
        }
        Err(QuorumClientError::Unreachable(last_problem))
    }

    /// The committed metadata after `after`, from any reachable voter.
    pub async fn catch_up(&mut self, after: u64) -> Result<ClientResponse, QuorumClientError> {
        // The voter last reached first (the active controller, usually), then the others.
        let mut voters: Vec<HostId> = self.voters.keys().copied().collect();
        if let Some(target) = self.target {
            voters.retain(|&voter| voter != target);
            voters.insert(0, target);
        }
        let mut last_problem = String::new();
        for voter in voters {
            match self
                .ask_once(voter, &ClientRequest::CatchUp { after })
                .await
            {
                Ok(response) => return Ok(response),
                Err(problem) => last_problem = problem,
            }
        }
        Err(QuorumClientError::Unreachable(last_problem))
    }
}
