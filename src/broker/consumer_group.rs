//! Consumer groups of the new protocol (KIP-848): the group coordinator's state machine for
//! ConsumerGroupHeartbeat, with no I/O, so it can be unit tested and driven step by step.
//!
//! The coordinator, not a client, assigns partitions. Each group has a *group epoch*, bumped
//! whenever what the assignment depends on changes (a member joins or leaves, a subscription
//! changes, a subscribed topic appears, disappears or grows partitions). When a member's
//! heartbeat finds the group epoch ahead of the *assignment epoch*, the server-side assignor
//! (`uniform` or `range`, the member's `ServerAssignor` choice) computes a new *target
//! assignment* for every member, stamped with the group epoch.
//!
//! Each member then converges on its target one heartbeat at a time (Kafka's
//! `CurrentAssignmentBuilder`): partitions it keeps stay, partitions it must give up are
//! *pending revocation* until a heartbeat's owned partitions no longer list them, and
//! partitions it gains are handed out only once no other member holds them, assigned or pending
//! revocation. So no partition is ever owned by two members at once, and nobody stops for a
//! rebalance: members that keep their partitions keep consuming. A member's *epoch* moves to
//! the target epoch once it has nothing left to revoke.
//!
//! Lives on the group's coordinator shard, owned by `groups::Coordinator`; nothing here runs
//! concurrently. Membership is kept in memory only: after a broker restart, members learn from
//! UNKNOWN_MEMBER_ID that they must rejoin (committed offsets are durable, in
//! `__consumer_offsets`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Partitions by topic id: an assignment, a target, or what a member says it owns.
pub type Assignment = BTreeMap<Uuid, BTreeSet<i32>>;

/// MemberEpoch of a heartbeat leaving the group.
pub const LEAVE_EPOCH: i32 = -1;
/// MemberEpoch of a static member leaving for now, to come back within the session timeout.
pub const STATIC_LEAVE_EPOCH: i32 = -2;
/// The server-side assignors, by the names clients give in `group.remote.assignor`.
pub const ASSIGNORS: &[&str] = &[UNIFORM, RANGE];
pub const UNIFORM: &str = "uniform";
pub const RANGE: &str = "range";
/// Kafka's default (`group.consumer.assignors`' first entry).
pub const DEFAULT_ASSIGNOR: &str = UNIFORM;

/// A topic as the assignment sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicInfo {
    pub id: Uuid,
    pub partitions: i32,
}

/// Where a member is in converging on its target assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Owns exactly its target (or waits for nothing).
    Stable,
    /// Must stop consuming some partitions and say so in a heartbeat.
    UnrevokedPartitions,
    /// Has what it may have; some target partitions are still held by other members.
    UnreleasedPartitions,
}

#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub epoch: i32,
    pub previous_epoch: i32,
    pub state: MemberState,
    /// Partitions the member may consume now.
    pub assigned: Assignment,
    /// Partitions it must give up before its epoch advances.
    pub pending_revocation: Assignment,
    pub subscribed: BTreeSet<String>,
    pub server_assignor: Option<String>,
    pub rebalance_timeout: Duration,
    pub last_heartbeat: Instant,
    /// While partitions are pending revocation: when the member is fenced if they still are.
    pub revocation_deadline: Option<Instant>,
}

impl Member {
    fn new(id: String, now: Instant) -> Self {
        Self {
            id,
            instance_id: None,
            rack_id: None,
            client_id: String::new(),
            client_host: String::new(),
            epoch: 0,
            previous_epoch: 0,
            state: MemberState::Stable,
            assigned: Assignment::new(),
            pending_revocation: Assignment::new(),
            subscribed: BTreeSet::new(),
            server_assignor: None,
            rebalance_timeout: Duration::ZERO,
            last_heartbeat: now,
            revocation_deadline: None,
        }
    }

    fn is_reconciled_to(&self, target_epoch: i32) -> bool {
        self.state == MemberState::Stable && self.epoch == target_epoch
    }

    fn set_epoch(&mut self, epoch: i32) {
        self.previous_epoch = self.epoch;
        self.epoch = epoch;
    }
}

/// A ConsumerGroupHeartbeat as the state machine needs it (`None`: unchanged since the last
/// heartbeat, as the protocol says).
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    /// -1: unchanged.
    pub rebalance_timeout_ms: i32,
    pub subscribed_topic_names: Option<Vec<String>>,
    pub subscribed_topic_regex: Option<String>,
    pub server_assignor: Option<String>,
    pub owned: Option<Assignment>,
    pub client_id: String,
    pub client_host: String,
}

/// What a heartbeat is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    pub member_id: String,
    pub member_epoch: i32,
    /// The member's whole assignment, when it changed or the request was a full one.
    pub assignment: Option<Assignment>,
}

/// Why a heartbeat is refused; each is a Kafka error code (`groups::heartbeat_error_code`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeartbeatError {
    InvalidRequest(&'static str),
    UnsupportedAssignor(String),
    GroupIdNotFound,
    UnknownMemberId,
    FencedMemberEpoch { received: i32, current: i32 },
    UnreleasedInstanceId,
    FencedInstanceId,
}

impl HeartbeatError {
    pub fn message(&self) -> String {
        match self {
            Self::InvalidRequest(why) => (*why).to_owned(),
            Self::UnsupportedAssignor(name) => format!(
                "ServerAssignor {name} is not supported. Supported assignors: {}.",
                ASSIGNORS.join(", ")
            ),
            Self::GroupIdNotFound => "the group does not exist or is not a consumer group".into(),
            Self::UnknownMemberId => "the member is not in the group".into(),
            Self::FencedMemberEpoch { received, current } => format!(
                "the member epoch {received} is not the coordinator's {current}: the member \
                 must abandon all its partitions and rejoin"
            ),
            Self::UnreleasedInstanceId => {
                "the instance id is still owned by a member that has not left".into()
            }
            Self::FencedInstanceId => "the instance id belongs to another member".into(),
        }
    }
}

/// Checks a heartbeat on its own, before any group is looked at (Kafka's
/// `throwIfConsumerGroupHeartbeatRequestIsInvalid`).
pub fn validate(group_id: &str, request: &Heartbeat) -> Result<(), HeartbeatError> {
    use HeartbeatError::InvalidRequest;
    if group_id.is_empty() {
        return Err(InvalidRequest("GroupId can't be empty."));
    }
    if request.instance_id.as_deref() == Some("") {
        return Err(InvalidRequest("InstanceId can't be empty."));
    }
    if request.rack_id.as_deref() == Some("") {
        return Err(InvalidRequest("RackId can't be empty."));
    }
    // librdkafka sends "" when its subscription has no pattern.
    if request
        .subscribed_topic_regex
        .as_deref()
        .is_some_and(|regex| !regex.is_empty())
    {
        return Err(InvalidRequest("SubscribedTopicRegex is not supported yet."));
    }
    match request.member_epoch {
        epoch if epoch > 0 || epoch == LEAVE_EPOCH => {
            if request.member_id.is_empty() {
                return Err(InvalidRequest("MemberId can't be empty."));
            }
        }
        0 => {
            if request.rebalance_timeout_ms == -1 {
                return Err(InvalidRequest(
                    "RebalanceTimeoutMs must be provided in first request.",
                ));
            }
            if request.owned.as_ref().is_none_or(|owned| !owned.is_empty()) {
                return Err(InvalidRequest(
                    "TopicPartitions must be empty when (re-)joining.",
                ));
            }
            if request
                .subscribed_topic_names
                .as_ref()
                .is_none_or(Vec::is_empty)
            {
                return Err(InvalidRequest(
                    "SubscribedTopicNames must be set in first request.",
                ));
            }
        }
        STATIC_LEAVE_EPOCH => {
            if request.member_id.is_empty() {
                return Err(InvalidRequest("MemberId can't be empty."));
            }
            if request.instance_id.is_none() {
                return Err(InvalidRequest("InstanceId can't be null."));
            }
        }
        _ => return Err(InvalidRequest("MemberEpoch is invalid.")),
    }
    if let Some(assignor) = &request.server_assignor {
        if !ASSIGNORS.contains(&assignor.as_str()) {
            return Err(HeartbeatError::UnsupportedAssignor(assignor.clone()));
        }
    }
    Ok(())
}

/// One consumer group.
///
/// Invariant (`check_invariants`): every partition in some member's `assigned` or
/// `pending_revocation` is recorded in `owners` under that member, and in no other member's
/// sets.
#[derive(Debug, Default)]
pub struct ConsumerGroup {
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub members: BTreeMap<String, Member>,
    /// The target assignment of each member, as of `assignment_epoch`.
    pub target: BTreeMap<String, Assignment>,
    /// Who holds each partition (assigned or pending revocation), and at which epoch.
    owners: HashMap<(Uuid, i32), String>,
    /// The subscribed topics that exist, as of `group_epoch`.
    subscription_metadata: BTreeMap<String, TopicInfo>,
    /// The assignor of the current target assignment.
    pub assignor: Option<String>,
}

impl ConsumerGroup {
    /// Kafka's group states: Empty, Assigning (a new target is due), Reconciling (members
    /// converging on it), Stable.
    pub fn state(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.group_epoch > self.assignment_epoch {
            "Assigning"
        } else if self
            .members
            .values()
            .any(|m| !m.is_reconciled_to(self.assignment_epoch))
        {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    pub fn static_member(&self, instance_id: &str) -> Option<&Member> {
        self.members
            .values()
            .find(|m| m.instance_id.as_deref() == Some(instance_id))
    }

    /// A joining or regular heartbeat (epoch 0 or above). `topics` finds a topic by name;
    /// `now` stamps the member's liveness.
    pub fn heartbeat(
        &mut self,
        request: &Heartbeat,
        topics: &dyn Fn(&str) -> Option<TopicInfo>,
        now: Instant,
    ) -> Result<HeartbeatAnswer, HeartbeatError> {
        debug_assert!(request.member_epoch >= 0);
        // A member that names no id (KIP-848 clients before Kafka 4.0's) is given one by the
        // caller, from the shard's random source, so this state machine draws nothing itself.
        let member_id = request.member_id.clone();
        let joining = request.member_epoch == 0;
        let (member, replaced) = self.find_member(&member_id, request, joining, now)?;
        let mut updated = member.clone();
        if let Some(instance_id) = &request.instance_id {
            updated.instance_id = Some(instance_id.clone());
        }
        if let Some(rack_id) = &request.rack_id {
            updated.rack_id = Some(rack_id.clone());
        }
        if request.rebalance_timeout_ms >= 0 {
            updated.rebalance_timeout =
                Duration::from_millis(request.rebalance_timeout_ms.unsigned_abs().into());
        }
        if let Some(assignor) = &request.server_assignor {
            updated.server_assignor = Some(assignor.clone());
        }
        if let Some(names) = &request.subscribed_topic_names {
            updated.subscribed = names.iter().cloned().collect();
        }
        updated.client_id = request.client_id.clone();
        updated.client_host = request.client_host.clone();
        updated.last_heartbeat = now;

        // 1. The group epoch moves when a subscription or a subscribed topic changed.
        let mut bump = updated.subscribed != member.subscribed;
        let metadata = self.subscription_metadata_with(&updated, replaced.as_deref(), topics);
        if metadata != self.subscription_metadata {
            self.subscription_metadata = metadata;
            bump = true;
        }
        if let Some(old_id) = &replaced {
            // The static member's new incarnation takes over its predecessor's place: its
            // target and the partitions it held.
            self.remove_owned(old_id);
            self.members.remove(old_id);
            if let Some(target) = self.target.remove(old_id) {
                self.target.insert(member_id.clone(), target);
            }
        }
        if bump {
            self.group_epoch += 1;
        }
        // 2. A new target assignment when the group epoch is ahead of it.
        self.remove_owned(&member_id);
        self.members.insert(member_id.clone(), updated);
        if self.group_epoch > self.assignment_epoch {
            self.compute_target();
        }
        // 3. The member converges on its target.
        let previous_assigned = member.assigned.clone();
        let target_epoch = self.assignment_epoch;
        let target = self.target.get(&member_id).cloned().unwrap_or_default();
        let mut current = self.members.remove(&member_id).unwrap_or(member);
        if !current.is_reconciled_to(target_epoch) {
            let before = (current.epoch, current.state);
            reconcile(
                &mut current,
                target_epoch,
                &target,
                request.owned.as_ref(),
                &|topic, partition| self.owners.contains_key(&(topic, partition)),
            );
            if current.state == MemberState::UnrevokedPartitions {
                if (current.epoch, current.state) != before {
                    current.revocation_deadline = Some(now + current.rebalance_timeout);
                }
            } else {
                current.revocation_deadline = None;
            }
        }
        self.add_owned(&current);
        let full_request = joining
            || (request.rebalance_timeout_ms != -1
                && request.subscribed_topic_names.is_some()
                && request.owned.is_some());
        let answer = HeartbeatAnswer {
            member_id: member_id.clone(),
            member_epoch: current.epoch,
            assignment: (full_request || current.assigned != previous_assigned)
                .then(|| current.assigned.clone()),
        };
        self.members.insert(member_id, current);
        Ok(answer)
    }

    /// The member a heartbeat speaks for (a copy; a new one when joining), and the id of a
    /// static member it replaces.
    fn find_member(
        &self,
        member_id: &str,
        request: &Heartbeat,
        joining: bool,
        now: Instant,
    ) -> Result<(Member, Option<String>), HeartbeatError> {
        let Some(instance_id) = &request.instance_id else {
            let member = match self.members.get(member_id) {
                Some(member) => member.clone(),
                None if joining => Member::new(member_id.to_owned(), now),
                None => return Err(HeartbeatError::UnknownMemberId),
            };
            check_epoch(&member, request.member_epoch, request.owned.as_ref())?;
            return Ok((member, None));
        };
        let existing = self.static_member(instance_id);
        if joining {
            let Some(existing) = existing else {
                let mut member = self
                    .members
                    .get(member_id)
                    .cloned()
                    .unwrap_or_else(|| Member::new(member_id.to_owned(), now));
                member.instance_id = Some(instance_id.clone());
                return Ok((member, None));
            };
            if existing.id == member_id {
                check_epoch(existing, request.member_epoch, request.owned.as_ref())?;
                return Ok((existing.clone(), None));
            }
            // A static member comes back under a new member id: allowed once the previous
            // incarnation has left with epoch -2; it gets the same assignment back.
            if existing.epoch != STATIC_LEAVE_EPOCH {
                return Err(HeartbeatError::UnreleasedInstanceId);
            }
            let mut member = existing.clone();
            member.id = member_id.to_owned();
            member.epoch = 0;
            member.previous_epoch = 0;
            member.state = MemberState::Stable;
            member.pending_revocation.clear();
            return Ok((member, Some(existing.id.clone())));
        }
        let existing = existing.ok_or(HeartbeatError::UnknownMemberId)?;
        if existing.id != member_id {
            return Err(HeartbeatError::FencedInstanceId);
        }
        check_epoch(existing, request.member_epoch, request.owned.as_ref())?;
        Ok((existing.clone(), None))
    }

    /// A leaving heartbeat (epoch -1 or -2). Returns the answer; the member is gone (or, for a
    /// static member's -2, kept with its partitions until its session expires).
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        epoch: i32,
    ) -> Result<HeartbeatAnswer, HeartbeatError> {
        let id = match instance_id {
            None => {
                if !self.members.contains_key(member_id) {
                    return Err(HeartbeatError::UnknownMemberId);
                }
                member_id.to_owned()
            }
            Some(instance_id) => {
                let member = self
                    .static_member(instance_id)
                    .ok_or(HeartbeatError::UnknownMemberId)?;
                if member.id != member_id {
                    return Err(HeartbeatError::FencedInstanceId);
                }
                member.id.clone()
            }
        };
        if epoch == STATIC_LEAVE_EPOCH && instance_id.is_some() {
            // It will be back: it keeps its assignment (and its partitions stay unavailable to
            // others) until then or until its session times out. No rebalance.
            self.remove_owned(&id);
            if let Some(mut member) = self.members.remove(&id) {
                member.epoch = STATIC_LEAVE_EPOCH;
                member.pending_revocation.clear();
                member.revocation_deadline = None;
                self.add_owned(&member);
                self.members.insert(id.clone(), member);
            }
            return Ok(HeartbeatAnswer {
                member_id: id,
                member_epoch: STATIC_LEAVE_EPOCH,
                assignment: None,
            });
        }
        self.fence(&id);
        Ok(HeartbeatAnswer {
            member_id: member_id.to_owned(),
            member_epoch: epoch,
            assignment: None,
        })
    }

    /// Removes a member (it left, or was fenced): its partitions become free and the group
    /// epoch moves so the others get a new target.
    pub fn fence(&mut self, member_id: &str) -> bool {
        if self.members.remove(member_id).is_none() {
            return false;
        }
        self.owners.retain(|_, owner| owner != member_id);
        self.target.remove(member_id);
        self.group_epoch += 1;
        true
    }

    /// Fences members whose session expired (no heartbeat for `session_timeout`) and members
    /// that did not revoke partitions within their rebalance timeout. Returns them with the
    /// reason.
    pub fn expire(
        &mut self,
        now: Instant,
        session_timeout: Duration,
    ) -> Vec<(String, &'static str)> {
        let doomed: Vec<(String, &'static str)> = self
            .members
            .values()
            .filter_map(|m| {
                if now.saturating_duration_since(m.last_heartbeat) > session_timeout {
                    Some((m.id.clone(), "session expired"))
                } else if m
                    .revocation_deadline
                    .is_some_and(|deadline| now >= deadline)
                {
                    Some((m.id.clone(), "did not revoke its partitions in time"))
                } else {
                    None
                }
            })
            .collect();
        for (id, _) in &doomed {
            self.fence(id);
        }
        doomed
    }

    /// A member's current epoch: offset commits must carry it (STALE_MEMBER_EPOCH otherwise).
    pub fn member_epoch(&self, member_id: &str) -> Option<i32> {
        self.members.get(member_id).map(|m| m.epoch)
    }

    /// The union of every member's subscription (with `updated` in place of its old self and
    /// without `replaced`), resolved against the existing topics.
    fn subscription_metadata_with(
        &self,
        updated: &Member,
        replaced: Option<&str>,
        topics: &dyn Fn(&str) -> Option<TopicInfo>,
    ) -> BTreeMap<String, TopicInfo> {
        let names: BTreeSet<&String> = self
            .members
            .values()
            .filter(|m| m.id != updated.id && Some(m.id.as_str()) != replaced)
            .chain(std::iter::once(updated))
            .flat_map(|m| m.subscribed.iter())
            .collect();
        names
            .into_iter()
            .filter_map(|name| topics(name).map(|info| (name.clone(), info)))
            .collect()
    }

    /// The assignor most members asked for, else the default.
    fn preferred_assignor(&self) -> &'static str {
        let mut votes: BTreeMap<&'static str, usize> = BTreeMap::new();
        for member in self.members.values() {
            if let Some(name) = &member.server_assignor {
                if let Some(known) = ASSIGNORS.iter().find(|a| **a == name.as_str()) {
                    *votes.entry(known).or_default() += 1;
                }
            }
        }
        votes
            .into_iter()
            .max_by_key(|(name, count)| (*count, std::cmp::Reverse(*name)))
            .map_or(DEFAULT_ASSIGNOR, |(name, _)| name)
    }

    /// Computes the target assignment of every member for the current group epoch.
    fn compute_target(&mut self) {
        let assignor = self.preferred_assignor();
        let members: Vec<AssignorMember> = self
            .members
            .values()
            .map(|m| AssignorMember {
                id: m.id.clone(),
                sort_key: m.instance_id.clone().unwrap_or_else(|| m.id.clone()),
                topics: m
                    .subscribed
                    .iter()
                    .filter_map(|name| self.subscription_metadata.get(name).map(|t| t.id))
                    .collect(),
            })
            .collect();
        let topics: BTreeMap<Uuid, i32> = self
            .subscription_metadata
            .values()
            .map(|t| (t.id, t.partitions))
            .collect();
        self.target = match assignor {
            RANGE => assign_range(&members, &topics),
            _ => assign_uniform(&members, &topics, &self.target),
        };
        self.assignment_epoch = self.group_epoch;
        self.assignor = Some(assignor.to_owned());
    }

    fn remove_owned(&mut self, member_id: &str) {
        let Some(member) = self.members.get(member_id) else {
            return;
        };
        for (topic, partitions) in member.assigned.iter().chain(&member.pending_revocation) {
            for partition in partitions {
                self.owners.remove(&(*topic, *partition));
            }
        }
    }

    fn add_owned(&mut self, member: &Member) {
        for (topic, partitions) in member.assigned.iter().chain(&member.pending_revocation) {
            for partition in partitions {
                let previous = self.owners.insert((*topic, *partition), member.id.clone());
                debug_assert!(
                    previous.is_none() || previous.as_deref() == Some(&member.id),
                    "partition {topic}/{partition} owned by {previous:?} and {}",
                    member.id
                );
            }
        }
    }

    /// Checks that no partition is held by two members, and that `owners` matches the
    /// members (after every heartbeat in debug builds, and in the tests).
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen: HashMap<(Uuid, i32), &str> = HashMap::new();
        for member in self.members.values() {
            for (topic, partitions) in member.assigned.iter().chain(&member.pending_revocation) {
                for partition in partitions {
                    if let Some(other) = seen.insert((*topic, *partition), &member.id) {
                        return Err(format!(
                            "{topic}/{partition} held by {other} and {}",
                            member.id
                        ));
                    }
                }
            }
        }
        let owners: HashMap<(Uuid, i32), &str> = self
            .owners
            .iter()
            .map(|(tp, id)| (*tp, id.as_str()))
            .collect();
        if owners != seen {
            return Err(format!("owners {owners:?} do not match members {seen:?}"));
        }
        Ok(())
    }
}

/// Kafka's epoch check: the current epoch, or the previous one when the member owns only
/// partitions of its current assignment (its last answer may have been lost).
fn check_epoch(
    member: &Member,
    received: i32,
    owned: Option<&Assignment>,
) -> Result<(), HeartbeatError> {
    let fenced = HeartbeatError::FencedMemberEpoch {
        received,
        current: member.epoch,
    };
    if received > member.epoch {
        return Err(fenced);
    }
    if received < member.epoch
        && (received != member.previous_epoch
            || !owned.is_some_and(|owned| is_subset(owned, &member.assigned)))
    {
        return Err(fenced);
    }
    Ok(())
}

fn is_subset(owned: &Assignment, of: &Assignment) -> bool {
    owned.iter().all(|(topic, partitions)| {
        partitions.is_empty()
            || of
                .get(topic)
                .is_some_and(|assigned| partitions.is_subset(assigned))
    })
}

fn owns_any(owned: Option<&Assignment>, of: &Assignment) -> bool {
    // A heartbeat that does not say what it owns is taken to own everything it had.
    let Some(owned) = owned else {
        return true;
    };
    owned.iter().any(|(topic, partitions)| {
        of.get(topic)
            .is_some_and(|pending| !partitions.is_disjoint(pending))
    })
}

/// One step of a member towards its target (Kafka's `CurrentAssignmentBuilder.build`).
/// `held` says whether a partition is held by any member (this one included).
pub fn reconcile(
    member: &mut Member,
    target_epoch: i32,
    target: &Assignment,
    owned: Option<&Assignment>,
    held: &dyn Fn(Uuid, i32) -> bool,
) {
    match member.state {
        MemberState::Stable => {
            if member.epoch != target_epoch {
                next_assignment(member, member.epoch, target_epoch, target, owned, held);
            }
        }
        MemberState::UnrevokedPartitions => {
            if owns_any(owned, &member.pending_revocation) {
                return;
            }
            let epoch = member.epoch + 1;
            next_assignment(member, epoch, target_epoch, target, owned, held);
        }
        MemberState::UnreleasedPartitions => {
            next_assignment(member, member.epoch, target_epoch, target, owned, held);
        }
    }
}

/// Kafka's `computeNextAssignment`: keep what is in the target, revoke the rest first, then
/// take the target partitions nobody holds.
fn next_assignment(
    member: &mut Member,
    epoch: i32,
    target_epoch: i32,
    target: &Assignment,
    owned: Option<&Assignment>,
    held: &dyn Fn(Uuid, i32) -> bool,
) {
    let mut kept = Assignment::new();
    let mut revoke = Assignment::new();
    let mut gain = Assignment::new();
    let mut unreleased = false;
    let topics: BTreeSet<Uuid> = target
        .keys()
        .chain(member.assigned.keys())
        .copied()
        .collect();
    let empty = BTreeSet::new();
    for topic in topics {
        let wanted = target.get(&topic).unwrap_or(&empty);
        let current = member.assigned.get(&topic).unwrap_or(&empty);
        let keep: BTreeSet<i32> = current.intersection(wanted).copied().collect();
        let give_up: BTreeSet<i32> = current.difference(&keep).copied().collect();
        let mut take = BTreeSet::new();
        for &partition in wanted.difference(&keep) {
            if held(topic, partition) {
                unreleased = true;
            } else {
                take.insert(partition);
            }
        }
        if !keep.is_empty() {
            kept.insert(topic, keep);
        }
        if !give_up.is_empty() {
            revoke.insert(topic, give_up);
        }
        if !take.is_empty() {
            gain.insert(topic, take);
        }
    }
    if !revoke.is_empty() && owns_any(owned, &revoke) {
        member.state = MemberState::UnrevokedPartitions;
        if member.epoch != epoch {
            member.set_epoch(epoch);
        }
        member.assigned = kept;
        member.pending_revocation = revoke;
        return;
    }
    for (topic, partitions) in gain {
        kept.entry(topic).or_default().extend(partitions);
    }
    member.state = if unreleased {
        MemberState::UnreleasedPartitions
    } else {
        MemberState::Stable
    };
    if member.epoch != target_epoch {
        member.set_epoch(target_epoch);
    }
    member.assigned = kept;
    member.pending_revocation.clear();
}

// ---------------------------------------------------------------------------------------------
// Server-side assignors

/// A member as an assignor sees it.
#[derive(Debug, Clone)]
pub struct AssignorMember {
    pub id: String,
    /// Orders members in the range assignor: the instance id of a static member (so a
    /// restarted static member gets the same ranges), else the member id.
    pub sort_key: String,
    pub topics: BTreeSet<Uuid>,
}

/// `range`: for each topic, its members in order get contiguous, equal-sized ranges of its
/// partitions, the first ones one more when it does not divide (Kafka's RangeAssignor).
pub fn assign_range(
    members: &[AssignorMember],
    topics: &BTreeMap<Uuid, i32>,
) -> BTreeMap<String, Assignment> {
    let mut result: BTreeMap<String, Assignment> = members
        .iter()
        .map(|m| (m.id.clone(), Assignment::new()))
        .collect();
    for (&topic, &partitions) in topics {
        let mut subscribers: Vec<&AssignorMember> = members
            .iter()
            .filter(|m| m.topics.contains(&topic))
            .collect();
        if subscribers.is_empty() {
            continue;
        }
        subscribers.sort_by(|a, b| (&a.sort_key, &a.id).cmp(&(&b.sort_key, &b.id)));
        let count = subscribers.len() as i32;
        let (each, extra) = (partitions / count, partitions % count);
        for (index, member) in subscribers.iter().enumerate() {
            let index = index as i32;
            let start = index * each + index.min(extra);
            let length = each + i32::from(index < extra);
            if length > 0 {
                result
                    .entry(member.id.clone())
                    .or_default()
                    .insert(topic, (start..start + length).collect());
            }
        }
    }
    result
}

/// `uniform`: every partition of the subscribed topics to one of its subscribers, as evenly as
/// the subscriptions allow (counts differ by at most one among members who could trade), and
/// sticky: a member keeps what it had in the previous target unless balance needs it moved.
///
/// Cost: the balancing pass moves a partition at most once per unit of imbalance, each move
/// scanning the most loaded member's partitions.
pub fn assign_uniform(
    members: &[AssignorMember],
    topics: &BTreeMap<Uuid, i32>,
    previous: &BTreeMap<String, Assignment>,
) -> BTreeMap<String, Assignment> {
    let mut owner: BTreeMap<(Uuid, i32), usize> = BTreeMap::new();
    let mut count = vec![0_usize; members.len()];
    // 1. Keep previous partitions still subscribed and existing.
    for (index, member) in members.iter().enumerate() {
        let Some(had) = previous.get(&member.id) else {
            continue;
        };
        for (topic, partitions) in had {
            let Some(&total) = topics.get(topic) else {
                continue;
            };
            if !member.topics.contains(topic) {
                continue;
            }
            for &partition in partitions.iter().filter(|&&p| p < total) {
                if let std::collections::btree_map::Entry::Vacant(slot) =
                    owner.entry((*topic, partition))
                {
                    slot.insert(index);
                    count[index] += 1;
                }
            }
        }
    }
    let eligible = |topic: &Uuid| -> Vec<usize> {
        members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.topics.contains(topic))
            .map(|(index, _)| index)
            .collect()
    };
    let eligible_by_topic: BTreeMap<Uuid, Vec<usize>> = topics
        .keys()
        .map(|topic| (*topic, eligible(topic)))
        .collect();
    // 2. Hand out the rest, each to its least loaded subscriber.
    for (&topic, &total) in topics {
        let candidates = &eligible_by_topic[&topic];
        if candidates.is_empty() {
            continue;
        }
        for partition in 0..total {
            if owner.contains_key(&(topic, partition)) {
                continue;
            }
            let chosen = *candidates
                .iter()
                .min_by_key(|&&index| (count[index], index))
                .expect("candidates is not empty");
            owner.insert((topic, partition), chosen);
            count[chosen] += 1;
        }
    }
    // 3. Balance: move partitions from the most loaded members to subscribers with at least
    //    two fewer, until no such move exists. Each move lowers the sum of squared counts.
    loop {
        let mut by_load: Vec<usize> = (0..members.len()).collect();
        by_load.sort_by_key(|&index| (std::cmp::Reverse(count[index]), index));
        let mut moved = None;
        'search: for &from in &by_load {
            for (&(topic, partition), &holder) in owner.iter().rev() {
                if holder != from {
                    continue;
                }
                let to = eligible_by_topic[&topic]
                    .iter()
                    .copied()
                    .filter(|&index| count[index] + 1 < count[from])
                    .min_by_key(|&index| (count[index], index));
                if let Some(to) = to {
                    moved = Some(((topic, partition), from, to));
                    break 'search;
                }
            }
        }
        let Some((partition, from, to)) = moved else {
            break;
        };
        owner.insert(partition, to);
        count[from] -= 1;
        count[to] += 1;
    }
    let mut result: BTreeMap<String, Assignment> = members
        .iter()
        .map(|m| (m.id.clone(), Assignment::new()))
        .collect();
    for ((topic, partition), index) in owner {
        let id = &members[index].id;
        result
            .entry(id.clone())
            .or_default()
            .entry(topic)
            .or_default()
            .insert(partition);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    fn member(id: &str, topics: &[Uuid]) -> AssignorMember {
        AssignorMember {
            id: id.to_owned(),
            sort_key: id.to_owned(),
            topics: topics.iter().copied().collect(),
        }
    }

    fn sizes(result: &BTreeMap<String, Assignment>) -> Vec<usize> {
        result
            .values()
            .map(|a| a.values().map(BTreeSet::len).sum())
            .collect()
    }

    fn all_once(result: &BTreeMap<String, Assignment>, topics: &BTreeMap<Uuid, i32>) -> bool {
        let mut seen = BTreeSet::new();
        for assignment in result.values() {
            for (topic, partitions) in assignment {
                for p in partitions {
                    if !seen.insert((*topic, *p)) {
                        return false;
                    }
                }
            }
        }
        let expected: BTreeSet<(Uuid, i32)> = topics
            .iter()
            .flat_map(|(t, n)| (0..*n).map(move |p| (*t, p)))
            .collect();
        seen == expected
    }

    #[test]
    fn range_gives_contiguous_ranges_first_members_one_more() {
        let topics = BTreeMap::from([(topic(1), 7)]);
        let members = [
            member("b", &[topic(1)]),
            member("a", &[topic(1)]),
            member("c", &[topic(1)]),
        ];
        let result = assign_range(&members, &topics);
        assert_eq!(result["a"][&topic(1)], BTreeSet::from([0, 1, 2]));
        assert_eq!(result["b"][&topic(1)], BTreeSet::from([3, 4]));
        assert_eq!(result["c"][&topic(1)], BTreeSet::from([5, 6]));
        assert!(all_once(&result, &topics));
    }

    #[test]
    fn uniform_balances_and_sticks() {
        let topics = BTreeMap::from([(topic(1), 6)]);
        let three = [
            member("m0", &[topic(1)]),
            member("m1", &[topic(1)]),
            member("m2", &[topic(1)]),
        ];
        let first = assign_uniform(&three, &topics, &BTreeMap::new());
        assert_eq!(sizes(&first), vec![2, 2, 2]);
        assert!(all_once(&first, &topics));
        // m1 leaves: m0 and m2 keep theirs and split m1's.
        let two = [three[0].clone(), three[2].clone()];
        let second = assign_uniform(&two, &topics, &first);
        assert_eq!(sizes(&second), vec![3, 3]);
        for id in ["m0", "m2"] {
            assert!(first[id][&topic(1)].is_subset(&second[id][&topic(1)]));
        }
        // m3 joins: it takes one from each, nobody else moves.
        let mut again = two.to_vec();
        again.push(member("m3", &[topic(1)]));
        let third = assign_uniform(&again, &topics, &second);
        assert_eq!(sizes(&third), vec![2, 2, 2]);
        for id in ["m0", "m2"] {
            assert!(third[id][&topic(1)].is_subset(&second[id][&topic(1)]));
        }
        assert!(all_once(&third, &topics));
    }

    #[test]
    fn uniform_respects_subscriptions() {
        let topics = BTreeMap::from([(topic(1), 4), (topic(2), 2)]);
        let members = [
            member("a", &[topic(1)]),
            member("b", &[topic(1), topic(2)]),
            member("c", &[topic(2)]),
        ];
        let result = assign_uniform(&members, &topics, &BTreeMap::new());
        assert!(all_once(&result, &topics));
        assert!(!result["a"].contains_key(&topic(2)));
        assert!(!result["c"].contains_key(&topic(1)));
        assert_eq!(sizes(&result), vec![2, 2, 2]);
    }

    proptest::proptest! {
        /// Any subscriptions and partition counts: each subscribed partition goes to exactly
        /// one subscriber, and two subscribers of a topic never differ by more than one
        /// partition when one could take from the other.
        #[test]
        fn uniform_is_complete_and_balanced(
            partitions in proptest::collection::vec(1i32..12, 1..4),
            subscriptions in proptest::collection::vec(proptest::collection::vec(proptest::bool::ANY, 4), 1..6),
        ) {
            let topics: BTreeMap<Uuid, i32> = partitions
                .iter()
                .enumerate()
                .map(|(i, &n)| (topic(i as u8 + 1), n))
                .collect();
            let members: Vec<AssignorMember> = subscriptions
                .iter()
                .enumerate()
                .map(|(i, subscribed)| {
                    let wanted: Vec<Uuid> = topics
                        .keys()
                        .zip(subscribed)
                        .filter(|(_, yes)| **yes)
                        .map(|(t, _)| *t)
                        .collect();
                    member(&format!("m{i}"), &wanted)
                })
                .collect();
            let subscribed: BTreeMap<Uuid, i32> = topics
                .iter()
                .filter(|(t, _)| members.iter().any(|m| m.topics.contains(t)))
                .map(|(t, n)| (*t, *n))
                .collect();
            let result = assign_uniform(&members, &topics, &BTreeMap::new());
            proptest::prop_assert!(all_once(&result, &subscribed));
            let load = |id: &str| -> usize { result[id].values().map(BTreeSet::len).sum() };
            for (id, assignment) in &result {
                for topic in assignment.keys() {
                    for other in members.iter().filter(|m| m.topics.contains(topic)) {
                        proptest::prop_assert!(load(id) <= load(&other.id) + 1);
                    }
                }
            }
        }
    }

    // -- the reconciliation state machine, through the group

    const T: u8 = 1;

    fn topics(name: &str) -> Option<TopicInfo> {
        (name == "orders").then_some(TopicInfo {
            id: topic(T),
            partitions: 6,
        })
    }

    fn join(member_id: &str) -> Heartbeat {
        Heartbeat {
            member_id: member_id.to_owned(),
            member_epoch: 0,
            rebalance_timeout_ms: 30_000,
            subscribed_topic_names: Some(vec!["orders".to_owned()]),
            owned: Some(Assignment::new()),
            ..Heartbeat::default()
        }
    }

    fn beat(member_id: &str, epoch: i32, owned: &Assignment) -> Heartbeat {
        Heartbeat {
            member_id: member_id.to_owned(),
            member_epoch: epoch,
            rebalance_timeout_ms: -1,
            owned: Some(owned.clone()),
            ..Heartbeat::default()
        }
    }

    fn parts(assignment: &Option<Assignment>) -> BTreeSet<i32> {
        assignment
            .as_ref()
            .and_then(|a| a.get(&topic(T)).cloned())
            .unwrap_or_default()
    }

    fn owned_of(partitions: &BTreeSet<i32>) -> Assignment {
        if partitions.is_empty() {
            Assignment::new()
        } else {
            Assignment::from([(topic(T), partitions.clone())])
        }
    }

    #[test]
    fn a_partition_moves_only_after_its_owner_revoked_it() {
        let now = Instant::now();
        let mut group = ConsumerGroup::default();
        let a = group.heartbeat(&join("a"), &topics, now).expect("a joins");
        assert_eq!(parts(&a.assignment).len(), 6);
        assert_eq!((a.member_epoch, group.group_epoch), (1, 1));
        let a_owned = parts(&a.assignment);

        // b joins: the target splits 3/3, but b gets nothing until a gives its share up.
        let b = group.heartbeat(&join("b"), &topics, now).expect("b joins");
        assert_eq!(group.group_epoch, 2);
        assert!(parts(&b.assignment).is_empty());
        assert_eq!(b.member_epoch, 2);
        assert_eq!(group.members["b"].state, MemberState::UnreleasedPartitions);
        group.check_invariants().expect("invariants");

        // a's heartbeat: it is told to keep 3 (revoke 3), its epoch stays.
        let a2 = group
            .heartbeat(&beat("a", 1, &owned_of(&a_owned)), &topics, now)
            .expect("a beats");
        let a_kept = parts(&a2.assignment);
        assert_eq!((a_kept.len(), a2.member_epoch), (3, 1));
        assert_eq!(group.members["a"].state, MemberState::UnrevokedPartitions);
        // b still waits: a has not acknowledged.
        let b2 = group
            .heartbeat(&beat("b", 2, &Assignment::new()), &topics, now)
            .expect("b beats");
        assert!(b2.assignment.is_none() || parts(&b2.assignment).is_empty());
        group.check_invariants().expect("invariants");

        // a acknowledges (owns only what it kept): it moves to epoch 2, and b gets the rest.
        let a3 = group
            .heartbeat(&beat("a", 1, &owned_of(&a_kept)), &topics, now)
            .expect("a acks");
        assert_eq!(a3.member_epoch, 2);
        let b3 = group
            .heartbeat(&beat("b", 2, &Assignment::new()), &topics, now)
            .expect("b beats");
        let b_got = parts(&b3.assignment);
        assert_eq!(b_got.len(), 3);
        assert!(b_got.is_disjoint(&a_kept));
        assert_eq!(group.members["b"].state, MemberState::Stable);
        assert_eq!(group.state(), "Stable");
        group.check_invariants().expect("invariants");

        // a's answer is lost: it comes back with its previous epoch, owning part of its
        // assignment, and is accepted; owning more than its assignment, it is fenced.
        assert!(group
            .heartbeat(&beat("a", 1, &owned_of(&a_kept)), &topics, now)
            .is_ok());
        assert!(matches!(
            group.heartbeat(&beat("a", 1, &owned_of(&a_owned)), &topics, now),
            Err(HeartbeatError::FencedMemberEpoch { .. })
        ));
    }

    #[test]
    fn fencing_and_unknown_members() {
        let now = Instant::now();
        let mut group = ConsumerGroup::default();
        let a = group.heartbeat(&join("a"), &topics, now).expect("a joins");
        let owned = owned_of(&parts(&a.assignment));
        assert_eq!(
            group.heartbeat(&beat("a", 7, &owned), &topics, now),
            Err(HeartbeatError::FencedMemberEpoch {
                received: 7,
                current: 1
            })
        );
        assert_eq!(
            group.heartbeat(&beat("nobody", 1, &owned), &topics, now),
            Err(HeartbeatError::UnknownMemberId)
        );
        group.leave("a", None, LEAVE_EPOCH).expect("a leaves");
        assert!(group.members.is_empty());
        assert_eq!(group.state(), "Empty");
        assert_eq!(
            group.leave("a", None, LEAVE_EPOCH),
            Err(HeartbeatError::UnknownMemberId)
        );
        group.check_invariants().expect("invariants");
    }

    #[test]
    fn validation_refuses_malformed_heartbeats() {
        let mut request = join("a");
        assert_eq!(validate("g", &request), Ok(()));
        assert!(validate("", &request).is_err());
        request.server_assignor = Some("sticky".into());
        assert_eq!(
            validate("g", &request),
            Err(HeartbeatError::UnsupportedAssignor("sticky".into()))
        );
        request.server_assignor = Some("range".into());
        request.member_epoch = -3;
        assert!(validate("g", &request).is_err());
        let mut first = join("a");
        first.subscribed_topic_names = None;
        assert!(validate("g", &first).is_err());
        let mut leave = beat("", LEAVE_EPOCH, &Assignment::new());
        assert!(validate("g", &leave).is_err());
        leave.member_id = "a".into();
        assert_eq!(validate("g", &leave), Ok(()));
        let mut regex = join("a");
        regex.subscribed_topic_regex = Some(String::new());
        assert_eq!(validate("g", &regex), Ok(()));
    }

    #[test]
    fn static_member_rejoins_with_its_assignment_without_a_rebalance() {
        let now = Instant::now();
        let mut group = ConsumerGroup::default();
        let mut a_join = join("a1");
        a_join.instance_id = Some("app-a".into());
        let a = group.heartbeat(&a_join, &topics, now).expect("a joins");
        let mut b = group.heartbeat(&join("b"), &topics, now).expect("b joins");
        // Converge.
        let mut a_owned = owned_of(&parts(&a.assignment));
        let mut a_epoch = a.member_epoch;
        for _ in 0..4 {
            let answer = group
                .heartbeat(&beat("a1", a_epoch, &a_owned), &topics, now)
                .expect("a");
            if answer.assignment.is_some() {
                a_owned = owned_of(&parts(&answer.assignment));
            }
            a_epoch = answer.member_epoch;
            b = group
                .heartbeat(&beat("b", b.member_epoch, &Assignment::new()), &topics, now)
                .expect("b");
        }
        assert_eq!(group.state(), "Stable");
        let epoch_before = group.group_epoch;
        group
            .leave("a1", Some("app-a"), STATIC_LEAVE_EPOCH)
            .expect("temporary leave");
        // Another member cannot take the instance id while... it is released now: a new
        // incarnation under a new member id gets the same partitions back.
        let mut back = join("a2");
        back.instance_id = Some("app-a".into());
        let again = group.heartbeat(&back, &topics, now).expect("a comes back");
        assert_eq!(owned_of(&parts(&again.assignment)), a_owned);
        assert_eq!(group.group_epoch, epoch_before, "no rebalance");
        assert!(!group.members.contains_key("a1"));
        // A third incarnation while a2 is active is refused.
        let mut intruder = join("a3");
        intruder.instance_id = Some("app-a".into());
        assert_eq!(
            group.heartbeat(&intruder, &topics, now).map(|_| ()),
            Err(HeartbeatError::UnreleasedInstanceId)
        );
        group.check_invariants().expect("invariants");
    }

    #[test]
    fn expiry_fences_silent_members_and_slow_revokers() {
        let start = Instant::now();
        let mut group = ConsumerGroup::default();
        let a = group.heartbeat(&join("a"), &topics, start).expect("a");
        group.heartbeat(&join("b"), &topics, start).expect("b");
        // a is asked to revoke and never acknowledges: fenced after its rebalance timeout.
        group
            .heartbeat(
                &beat("a", 1, &owned_of(&parts(&a.assignment))),
                &topics,
                start,
            )
            .expect("a");
        assert_eq!(group.members["a"].state, MemberState::UnrevokedPartitions);
        let later = start + Duration::from_secs(31);
        let expired = group.expire(later, Duration::from_secs(45));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].0, "a");
        // b's session runs out later.
        let expired = group.expire(start + Duration::from_secs(46), Duration::from_secs(45));
        assert_eq!(expired.len(), 1);
        assert!(group.members.is_empty());
        group.check_invariants().expect("invariants");
    }

    #[test]
    fn new_partitions_start_a_new_target() {
        let now = Instant::now();
        let mut group = ConsumerGroup::default();
        let a = group.heartbeat(&join("a"), &topics, now).expect("a");
        let owned = owned_of(&parts(&a.assignment));
        let grown = |name: &str| {
            (name == "orders").then_some(TopicInfo {
                id: topic(T),
                partitions: 8,
            })
        };
        let answer = group
            .heartbeat(&beat("a", 1, &owned), &grown, now)
            .expect("a");
        assert_eq!(parts(&answer.assignment).len(), 8);
        assert_eq!(answer.member_epoch, 2);
    }

    proptest::proptest! {
        /// Random joins, heartbeats (acknowledging or not) and leaves never leave a partition
        /// with two holders, and once everyone heartbeats with what it was told, the group is
        /// stable with every partition assigned.
        #[test]
        fn random_schedules_keep_ownership_exclusive(
            steps in proptest::collection::vec((0usize..4, 0u8..4), 1..60),
        ) {
            let now = Instant::now();
            let mut group = ConsumerGroup::default();
            let mut owned: BTreeMap<String, (i32, Assignment)> = BTreeMap::new();
            for (who, action) in steps {
                let id = format!("m{who}");
                match (owned.contains_key(&id), action) {
                    (false, _) => {
                        let answer = group.heartbeat(&join(&id), &topics, now).expect("join");
                        owned.insert(id, (answer.member_epoch, answer.assignment.unwrap_or_default()));
                    }
                    (true, 0) => {
                        group.leave(&id, None, LEAVE_EPOCH).expect("leave");
                        owned.remove(&id);
                    }
                    (true, _) => {
                        let (epoch, mine) = owned[&id].clone();
                        let answer = group.heartbeat(&beat(&id, epoch, &mine), &topics, now).expect("beat");
                        let assignment = answer.assignment.unwrap_or(mine);
                        owned.insert(id, (answer.member_epoch, assignment));
                    }
                }
                proptest::prop_assert!(group.check_invariants().is_ok(), "{:?}", group.check_invariants());
            }
            for _ in 0..6 {
                let ids: Vec<String> = owned.keys().cloned().collect();
                for id in ids {
                    let (epoch, mine) = owned[&id].clone();
                    let answer = group.heartbeat(&beat(&id, epoch, &mine), &topics, now).expect("beat");
                    let assignment = answer.assignment.unwrap_or(mine);
                    owned.insert(id, (answer.member_epoch, assignment));
                }
            }
            if !owned.is_empty() {
                proptest::prop_assert_eq!(group.state(), "Stable");
                let total: usize = owned.values().map(|(_, a)| a.values().map(BTreeSet::len).sum::<usize>()).sum();
                proptest::prop_assert_eq!(total, 6);
            }
        }
    }
}
