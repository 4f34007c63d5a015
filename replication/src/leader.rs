//! The leader's view of one partition's replicas: each follower's log end offset, the high
//! watermark, and the in-sync replica set it would like the controller to commit.
//!
//! The ISR is the controller's: the leader proposes a change ([`LeaderState::isr_proposal`],
//! sent as AlterPartition with the partition epoch it was made against) and uses a new ISR
//! only once the metadata log has committed it ([`LeaderState::committed`]). While a change
//! is in flight the high watermark counts every replica of the old and the proposed ISR (Kafka's
//! "maximal ISR"): a shrink cannot advance it before the shrink is committed, and an expansion
//! is counted as soon as it is proposed, because the replica it adds has everything up to the
//! high watermark already.
//!
//! The high watermark advances only while the committed ISR has at least
//! `min.insync.replicas` members (at most the replication factor, Kafka's effective minimum):
//! KIP-966's condition for eligible leader replicas. A replica the controller takes out of an
//! ISR below that minimum joins the partition's ELR and may be elected when the ISR is empty,
//! so it must have everything acknowledged: the watermark stops where it was when the ISR
//! became too small. With `min.insync.replicas` 1 this never holds the watermark back.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use crate::ReplicaId;

/// What the leader knows of one follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Follower {
    /// -1 until the follower's first fetch reaches this leader.
    log_end_offset: i64,
    /// When this follower last had everything the leader had (Kafka's lastCaughtUpTimeMs).
    caught_up_ms: i64,
    /// The leader's log end offset and the time at this follower's previous fetch: a fetch
    /// that reaches that offset proves the follower was caught up then, even though the leader
    /// appended more in between (a follower under steady load is never exactly at the end).
    previous_fetch_leader_end: i64,
    previous_fetch_ms: i64,
    /// When the leader last forgot this follower's progress (it left the ISR, or this leader
    /// started): a fetch request that arrived before then may come from a process that has
    /// since died and restarted with less (an emptied disk, KIP-903), so its offset no longer
    /// says what the follower has and is not counted.
    forgotten_ms: i64,
    /// The broker epoch of the follower's process this state is about (KIP-903: the follower
    /// names it in each fetch, and the metadata image names the registered one), `None` while
    /// unknown. A fetch from an older broker epoch comes from a process that has since died
    /// (with an emptied disk, perhaps) and is not counted; a newer one, from the image or a
    /// fetch, makes the leader forget what the older process reported.
    broker_epoch: Option<u64>,
}

impl Follower {
    fn fresh(now_ms: i64) -> Self {
        Self {
            log_end_offset: -1,
            // As in Kafka, a new leader gives every follower a full lag time to show up
            // before it is taken out of the ISR.
            caught_up_ms: now_ms,
            previous_fetch_leader_end: -1,
            previous_fetch_ms: now_ms,
            forgotten_ms: now_ms,
            broker_epoch: None,
        }
    }

    /// What remains once the leader forgets this follower's progress at `now_ms`: it must
    /// show again, with fetches made from now on, that it has everything. The time it last
    /// caught up stays (a replica in the ISR is not taken out for being forgotten).
    fn forgotten(&self, now_ms: i64, broker_epoch: Option<u64>) -> Self {
        Self {
            caught_up_ms: self.caught_up_ms,
            broker_epoch,
            ..Self::fresh(now_ms)
        }
    }
}

/// Why a write with acks=all cannot be accepted now.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{in_sync} in-sync replicas, min.insync.replicas is {required}")]
pub struct NotEnoughReplicas {
    pub in_sync: usize,
    pub required: usize,
}

/// Why a follower's fetch is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FollowerRefusal {
    #[error("replica {0} is not a replica of this partition")]
    NotAReplica(ReplicaId),
    #[error("fetch offset {fetch_offset} is beyond the leader's log end offset {log_end_offset}")]
    OffsetOutOfRange {
        fetch_offset: i64,
        log_end_offset: i64,
    },
}

/// A partition's replication as its leader sees it, for one leader epoch.
#[derive(Debug, Clone)]
pub struct LeaderState {
    leader: ReplicaId,
    leader_epoch: i32,
    partition_epoch: i32,
    log_end_offset: i64,
    high_watermark: i64,
    /// The log end when this replica became leader (Kafka's leader epoch start offset): a
    /// follower rejoins the ISR only once it has at least this much, since the high watermark
    /// a new leader starts from may be behind what the previous leader had committed.
    epoch_start_offset: i64,
    /// The committed ISR, the leader included.
    isr: BTreeSet<ReplicaId>,
    /// An ISR proposed to the controller and not yet committed or refused.
    proposed: Option<BTreeSet<ReplicaId>>,
    /// The broker epochs of the proposed ISR's followers whose fetch state the proposal was
    /// decided on, where known (KIP-903): the controller refuses to add a replica whose host
    /// registered again since (INELIGIBLE_REPLICA).
    proposed_broker_epochs: Vec<(ReplicaId, u64)>,
    followers: BTreeMap<ReplicaId, Follower>,
    lag_time_max_ms: i64,
    /// The partition's `min.insync.replicas`: below it the high watermark stays.
    min_insync_replicas: usize,
}

/// What a leader starts from (a replica becoming leader, or a leader's partition opening).
#[derive(Debug, Clone)]
pub struct LeaderStart<'a> {
    pub leader: ReplicaId,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub replicas: &'a [ReplicaId],
    pub isr: &'a [ReplicaId],
    pub log_end_offset: i64,
    /// The high watermark this replica knew (as a follower, or checkpointed).
    pub high_watermark: i64,
    pub lag_time_max_ms: i64,
    /// The partition's `min.insync.replicas` (the topic's, else the broker's): the high
    /// watermark advances only while the committed ISR has that many members (KIP-966). It
    /// must be the one the controller uses to keep the ELR.
    pub min_insync_replicas: usize,
    pub now_ms: i64,
}

impl LeaderState {
    pub fn new(start: LeaderStart<'_>) -> Self {
        let followers = start
            .replicas
            .iter()
            .filter(|&&id| id != start.leader)
            .map(|&id| (id, Follower::fresh(start.now_ms)))
            .collect();
        let mut isr: BTreeSet<ReplicaId> = start.isr.iter().copied().collect();
        isr.insert(start.leader);
        let mut state = Self {
            leader: start.leader,
            leader_epoch: start.leader_epoch,
            partition_epoch: start.partition_epoch,
            log_end_offset: start.log_end_offset,
            high_watermark: start.high_watermark.min(start.log_end_offset).max(0),
            epoch_start_offset: start.log_end_offset,
            isr,
            proposed: None,
            proposed_broker_epochs: Vec::new(),
            followers,
            lag_time_max_ms: start.lag_time_max_ms,
            min_insync_replicas: start.min_insync_replicas,
        };
        state.advance_high_watermark();
        state
    }

    pub fn leader(&self) -> ReplicaId {
        self.leader
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    pub fn partition_epoch(&self) -> i32 {
        self.partition_epoch
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    pub fn log_end_offset(&self) -> i64 {
        self.log_end_offset
    }

    /// The committed ISR, the leader included.
    pub fn isr(&self) -> &BTreeSet<ReplicaId> {
        &self.isr
    }

    pub fn is_replica(&self, id: ReplicaId) -> bool {
        id == self.leader || self.followers.contains_key(&id)
    }

    /// A follower's log end offset as last reported (-1: not yet).
    pub fn follower_end(&self, id: ReplicaId) -> Option<i64> {
        self.followers.get(&id).map(|f| f.log_end_offset)
    }

    /// The controller committed a new state of the partition with this replica still its
    /// leader in the same leader epoch: its ISR, replicas and partition epoch replace ours, and
    /// a proposal made against an older partition epoch is settled. The state it already has
    /// (the same partition epoch, as when the image is read again) changes nothing: a proposal
    /// made against that epoch is still in flight and may yet commit, so it must keep counting
    /// toward the high watermark.
    pub fn committed(
        &mut self,
        partition_epoch: i32,
        replicas: &[ReplicaId],
        isr: &[ReplicaId],
        now_ms: i64,
    ) {
        if partition_epoch <= self.partition_epoch {
            return;
        }
        self.partition_epoch = partition_epoch;
        let mut isr: BTreeSet<ReplicaId> = isr.iter().copied().collect();
        isr.insert(self.leader);
        // A replica that left the ISR must show again, with fetches made from now on, that it
        // has everything before it may rejoin: the controller may have taken it out because its
        // host restarted (with an empty disk, perhaps), and what its old process reported is
        // no longer true (KIP-903).
        for (id, follower) in &mut self.followers {
            if self.isr.contains(id) && !isr.contains(id) {
                *follower = follower.forgotten(now_ms, follower.broker_epoch);
            }
        }
        self.isr = isr;
        self.proposed = None;
        self.proposed_broker_epochs.clear();
        self.followers
            .retain(|id, _| replicas.contains(id) && *id != self.leader);
        for &id in replicas {
            if id != self.leader {
                self.followers
                    .entry(id)
                    .or_insert_with(|| Follower::fresh(now_ms));
            }
        }
        self.advance_high_watermark();
    }

    /// The topic's `min.insync.replicas` changed (a config change reaches a running leader).
    pub fn set_min_insync_replicas(&mut self, min_insync_replicas: usize) {
        self.min_insync_replicas = min_insync_replicas;
        self.advance_high_watermark();
    }

    /// The ISR change in flight, as proposed (to send it again when its answer is overdue).
    pub fn proposal(&self) -> Option<Vec<ReplicaId>> {
        self.proposed
            .as_ref()
            .map(|isr| isr.iter().copied().collect())
    }

    /// The replicas this leader tracks (every replica but itself).
    pub fn followers(&self) -> Vec<ReplicaId> {
        self.followers.keys().copied().collect()
    }

    /// The broker epochs to send with the [`proposal`](Self::proposal) (AlterPartition's
    /// `broker_epochs`, Kafka's NewIsrWithEpochs): for each proposed follower whose broker
    /// epoch was known when the proposal was decided, the epoch of the process whose fetches
    /// it was decided on. Empty with no proposal in flight.
    pub fn proposal_broker_epochs(&self) -> Vec<(ReplicaId, u64)> {
        self.proposed_broker_epochs.clone()
    }

    /// The metadata image names the broker epoch `follower`'s host is registered at (the
    /// caller passes every follower's, each time it reads the image). A newer epoch than the
    /// one this leader's state of the follower comes from means its host registered again:
    /// what the older process reported is forgotten (it may have restarted with an emptied
    /// disk, KIP-903), and its fetches from now on count only from that epoch or newer.
    pub fn broker_registered(&mut self, follower: ReplicaId, broker_epoch: u64, now_ms: i64) {
        let Some(state) = self.followers.get_mut(&follower) else {
            return;
        };
        if state
            .broker_epoch
            .is_some_and(|known| known >= broker_epoch)
        {
            return;
        }
        // Fetch state from no known epoch (none yet, or fetches that did not name one) may be
        // the older process's: forgotten as well.
        *state = state.forgotten(now_ms, Some(broker_epoch));
    }

    /// The controller refused the proposal in a way that shows it was not applied: it still
    /// holds the partition epoch the proposal was made against (it checks that first) and
    /// refused it for another reason (a replica on a fenced host, an invalid ISR). The next
    /// [`isr_proposal`](Self::isr_proposal) decides again.
    ///
    /// Not for an answer that does not say whether it was applied: a timeout, a lost answer,
    /// a stale partition epoch (an earlier copy of the same request may be what moved it), a
    /// fenced leader epoch. The controller may then have committed the proposal, and a leader
    /// that stopped counting a replica it proposed to add would advance its high watermark
    /// without a member of the controller's ISR, which may be elected next and lacks what was
    /// acknowledged. Send the [`proposal`](Self::proposal) again instead, or wait for the
    /// metadata: [`committed`](Self::committed) with a newer partition epoch settles it.
    pub fn proposal_failed(&mut self) {
        self.proposed = None;
        self.proposed_broker_epochs.clear();
        self.advance_high_watermark();
    }

    /// The leader's log end offset moved (an append completed). Returns whether the high
    /// watermark moved.
    pub fn leader_appended(&mut self, log_end_offset: i64) -> bool {
        self.log_end_offset = self.log_end_offset.max(log_end_offset);
        self.advance_high_watermark()
    }

    /// A follower fetched from `fetch_offset`: it has everything before it. `request_ms`: when
    /// the fetch request arrived (a long poll reports again each time it wakes); a request
    /// from before the leader last forgot this follower is not counted. `broker_epoch`: the
    /// broker epoch of the follower's process, as its fetch names it (Kafka's
    /// ReplicaState.ReplicaEpoch, Fetch v15), `None` when the fetch does not say: a fetch
    /// from an older broker epoch than one this leader knows for the follower is not counted,
    /// and one from a newer epoch replaces what the older process reported (KIP-903). Returns
    /// whether the high watermark moved.
    pub fn follower_fetched(
        &mut self,
        id: ReplicaId,
        fetch_offset: i64,
        now_ms: i64,
        request_ms: i64,
        broker_epoch: Option<u64>,
    ) -> Result<bool, FollowerRefusal> {
        let leader_end = self.log_end_offset;
        let follower = self
            .followers
            .get_mut(&id)
            .ok_or(FollowerRefusal::NotAReplica(id))?;
        if fetch_offset > leader_end {
            return Err(FollowerRefusal::OffsetOutOfRange {
                fetch_offset,
                log_end_offset: leader_end,
            });
        }
        if let Some(epoch) = broker_epoch {
            match follower.broker_epoch {
                Some(known) if known > epoch => return Ok(false),
                Some(known) if known == epoch => {}
                // A newer process (or the first known): what came before may be the older
                // process's. This request itself arrived now, from the newer one.
                _ => {
                    *follower = Follower {
                        forgotten_ms: follower.forgotten_ms,
                        ..follower.forgotten(now_ms, Some(epoch))
                    }
                }
            }
        }
        if request_ms < follower.forgotten_ms {
            return Ok(false);
        }
        follower.log_end_offset = fetch_offset;
        if fetch_offset >= leader_end {
            follower.caught_up_ms = now_ms;
        } else if fetch_offset >= follower.previous_fetch_leader_end {
            follower.caught_up_ms = follower.caught_up_ms.max(follower.previous_fetch_ms);
        }
        follower.previous_fetch_leader_end = leader_end;
        follower.previous_fetch_ms = now_ms;
        Ok(self.advance_high_watermark())
    }

    /// The ISR this leader wants, if it differs from the committed one and nothing is in
    /// flight: followers behind the log end that have not caught up within the lag time leave,
    /// followers that have reached the high watermark join. The proposal is remembered as in
    /// flight until [`committed`](Self::committed) or [`proposal_failed`](Self::proposal_failed).
    pub fn isr_proposal(&mut self, now_ms: i64) -> Option<Vec<ReplicaId>> {
        if self.proposed.is_some() {
            return None;
        }
        let mut wanted = self.isr.clone();
        for (&id, follower) in &self.followers {
            let behind = follower.log_end_offset < self.log_end_offset;
            let lagging = behind && now_ms - follower.caught_up_ms > self.lag_time_max_ms;
            if self.isr.contains(&id) && lagging {
                wanted.remove(&id);
            }
            // A follower joins once it has everything committed: the high watermark and, as
            // in Kafka, everything this leader had when its epoch began (its high watermark may
            // trail what the previous leader committed). It must also have caught up recently.
            let committed = self.high_watermark.max(self.epoch_start_offset);
            if !self.isr.contains(&id) && follower.log_end_offset >= committed && !lagging {
                wanted.insert(id);
            }
        }
        if wanted == self.isr {
            return None;
        }
        let proposal: Vec<ReplicaId> = wanted.iter().copied().collect();
        self.proposed_broker_epochs = wanted
            .iter()
            .filter_map(|id| {
                let epoch = self.followers.get(id)?.broker_epoch?;
                Some((*id, epoch))
            })
            .collect();
        self.proposed = Some(wanted);
        Some(proposal)
    }

    /// The in-sync replicas that count for `min.insync.replicas`: the committed ISR.
    pub fn in_sync_count(&self) -> usize {
        self.isr.len()
    }

    /// Whether a write with acks=all may be accepted under `min.insync.replicas`.
    pub fn check_min_insync(&self, required: usize) -> Result<(), NotEnoughReplicas> {
        let in_sync = self.in_sync_count();
        if in_sync < required {
            return Err(NotEnoughReplicas { in_sync, required });
        }
        Ok(())
    }

    /// Whether every in-sync replica has `offset` (exclusive end), i.e. the high watermark
    /// reached it: an acks=all write ending there is committed.
    pub fn is_committed(&self, end_offset: i64) -> bool {
        self.high_watermark >= end_offset
    }

    /// Whether the committed ISR is large enough for the high watermark to move (KIP-966): at
    /// least `min.insync.replicas`, or every replica when there are fewer (Kafka's effective
    /// minimum, so a partition of fewer replicas than the minimum still makes progress).
    pub fn high_watermark_may_advance(&self) -> bool {
        let replicas = self.followers.len() + 1;
        self.isr.len() >= self.min_insync_replicas.min(replicas)
    }

    fn advance_high_watermark(&mut self) -> bool {
        // Below min.insync.replicas the replicas that left the ISR may be eligible leaders
        // (the controller's ELR): they have nothing past here, so nothing past here commits.
        if !self.high_watermark_may_advance() {
            return false;
        }
        let counted = self
            .isr
            .iter()
            .chain(self.proposed.iter().flatten())
            .filter(|&&id| id != self.leader);
        let mut smallest = self.log_end_offset;
        for id in counted {
            // A replica in the ISR that is not (or no longer) among the replicas cannot hold
            // the high watermark back; the controller removes it.
            if let Some(follower) = self.followers.get(id) {
                smallest = smallest.min(follower.log_end_offset);
            }
        }
        // The high watermark never moves backwards.
        if smallest > self.high_watermark {
            self.high_watermark = smallest;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leader(replicas: &[ReplicaId], isr: &[ReplicaId], lag: i64) -> LeaderState {
        LeaderState::new(LeaderStart {
            leader: 1,
            leader_epoch: 0,
            partition_epoch: 0,
            replicas,
            isr,
            log_end_offset: 0,
            high_watermark: 0,
            lag_time_max_ms: lag,
            min_insync_replicas: 1,
            now_ms: 0,
        })
    }

    #[test]
    fn high_watermark_is_the_smallest_in_sync_leo() {
        let mut state = leader(&[1, 2, 3], &[1, 2, 3], 1_000);
        state.leader_appended(10);
        assert_eq!(state.high_watermark(), 0);
        state.follower_fetched(2, 10, 5, 5, None).expect("replica");
        state.follower_fetched(3, 4, 5, 5, None).expect("replica");
        assert_eq!(state.high_watermark(), 4);
        assert!(!state.is_committed(10));
        state.follower_fetched(3, 10, 6, 6, None).expect("replica");
        assert_eq!(state.high_watermark(), 10);
        assert!(state.is_committed(10));
    }

    #[test]
    fn a_single_replica_commits_at_its_own_end() {
        let mut state = leader(&[1], &[1], 1_000);
        assert!(state.leader_appended(7));
        assert_eq!(state.high_watermark(), 7);
        assert!(state.isr_proposal(100_000).is_none());
    }

    #[test]
    fn a_lagging_follower_is_proposed_out_and_holds_the_watermark_until_committed() {
        let mut state = leader(&[1, 2, 3], &[1, 2, 3], 1_000);
        state.leader_appended(10);
        state
            .follower_fetched(2, 10, 100, 100, None)
            .expect("replica");
        assert_eq!(state.isr_proposal(500), None, "within the lag time");
        assert_eq!(state.isr_proposal(2_000), Some(vec![1, 2]));
        // In flight: no second proposal, and the shrink does not count yet.
        assert_eq!(state.isr_proposal(2_001), None);
        assert_eq!(state.high_watermark(), 0);
        assert!(state.check_min_insync(3).is_ok());
        state.committed(1, &[1, 2, 3], &[1, 2], 2_100);
        assert_eq!(state.high_watermark(), 10);
        assert_eq!(
            state.check_min_insync(3),
            Err(NotEnoughReplicas {
                in_sync: 2,
                required: 3
            })
        );
        // It catches up and is proposed back in.
        state
            .follower_fetched(3, 10, 2_200, 2_200, None)
            .expect("replica");
        assert_eq!(state.isr_proposal(2_200), Some(vec![1, 2, 3]));
        state.committed(2, &[1, 2, 3], &[1, 2, 3], 2_300);
        assert!(state.check_min_insync(3).is_ok());
    }

    #[test]
    fn a_follower_under_steady_load_stays_in_sync() {
        // The leader appends between every two fetches, so no fetch is at its end; each
        // fetch reaches where the leader was at the previous one.
        let mut state = leader(&[1, 2], &[1, 2], 1_000);
        let mut end = 0;
        for step in 0..100 {
            let now = step * 100;
            let fetched = end;
            end += 5;
            state.leader_appended(end);
            state
                .follower_fetched(2, fetched, now, now, None)
                .expect("replica");
            assert_eq!(state.isr_proposal(now), None, "step {step}");
        }
    }

    #[test]
    fn refused_fetches() {
        let mut state = leader(&[1, 2], &[1, 2], 1_000);
        state.leader_appended(5);
        assert_eq!(
            state.follower_fetched(9, 0, 0, 0, None),
            Err(FollowerRefusal::NotAReplica(9))
        );
        assert_eq!(
            state.follower_fetched(2, 6, 0, 0, None),
            Err(FollowerRefusal::OffsetOutOfRange {
                fetch_offset: 6,
                log_end_offset: 5
            })
        );
    }

    #[test]
    fn a_failed_proposal_is_decided_again() {
        let mut state = leader(&[1, 2], &[1, 2], 100);
        state.leader_appended(5);
        assert_eq!(state.isr_proposal(1_000), Some(vec![1]));
        state.proposal_failed();
        assert_eq!(state.isr_proposal(1_001), Some(vec![1]));
        // A committed state from an older partition epoch changes nothing.
        state.committed(1, &[1, 2], &[1], 1_002);
        state.committed(0, &[1, 2], &[1, 2], 1_003);
        assert_eq!(state.isr().len(), 1);
    }

    #[test]
    fn the_same_partition_epoch_again_keeps_the_proposal_in_flight() {
        // Found by the simulator (seed 231): the leader re-read the image (partition epoch 1,
        // ISR {1, 2}) while its expansion to {1, 2, 3} was in flight; dropping the proposal let
        // the high watermark pass replica 3, which the controller then committed into the ISR
        // and later elected.
        let mut state = leader(&[1, 2, 3], &[1, 2, 3], 100);
        state.leader_appended(10);
        state.follower_fetched(2, 10, 0, 0, None).expect("replica");
        assert_eq!(state.isr_proposal(1_000), Some(vec![1, 2]));
        state.committed(1, &[1, 2, 3], &[1, 2], 1_000);
        state
            .follower_fetched(2, 10, 1_001, 1_001, None)
            .expect("replica");
        state
            .follower_fetched(3, 10, 1_001, 1_001, None)
            .expect("replica");
        state.leader_appended(20);
        assert_eq!(state.isr_proposal(1_002), Some(vec![1, 2, 3]));
        state
            .follower_fetched(2, 20, 1_003, 1_003, None)
            .expect("replica");
        assert_eq!(
            state.high_watermark(),
            10,
            "replica 3 counts while proposed"
        );
        state.committed(1, &[1, 2, 3], &[1, 2], 1_004);
        assert_eq!(state.high_watermark(), 10, "still proposed");
        assert_eq!(state.isr_proposal(1_005), None, "still in flight");
        state.committed(2, &[1, 2, 3], &[1, 2, 3], 1_006);
        state
            .follower_fetched(3, 20, 1_007, 1_007, None)
            .expect("replica");
        assert_eq!(state.high_watermark(), 20);
    }

    #[test]
    fn kip_903_a_replica_out_of_the_isr_rejoins_only_on_fetches_made_since() {
        let mut state = leader(&[1, 2, 3], &[1, 2, 3], 1_000);
        state.leader_appended(10);
        state
            .follower_fetched(2, 10, 50, 50, None)
            .expect("replica");
        state
            .follower_fetched(3, 10, 50, 50, None)
            .expect("replica");
        assert_eq!(state.high_watermark(), 10);
        // Host of replica 3 restarts with an empty disk: the controller takes it out of the ISR.
        state.committed(1, &[1, 2, 3], &[1, 2], 100);
        assert_eq!(state.follower_end(3), Some(-1));
        // A long poll of its dead process, from before, wakes and reports offset 10 again.
        assert_eq!(state.follower_fetched(3, 10, 120, 40, None), Ok(false));
        assert_eq!(state.isr_proposal(130), None, "not back on a stale report");
        // The new process fetches from the start; it rejoins once it has caught up.
        state
            .follower_fetched(3, 0, 140, 140, None)
            .expect("replica");
        assert_eq!(state.isr_proposal(150), None);
        state
            .follower_fetched(3, 10, 160, 160, None)
            .expect("replica");
        assert_eq!(state.isr_proposal(170), Some(vec![1, 2, 3]));
    }

    #[test]
    fn kip_903_a_registration_in_a_newer_broker_epoch_forgets_the_older_process() {
        // Seed 9391 of the simulator: replica 3, out of the ISR, fetched up to 10; its host
        // crashed with an emptied disk and registered again; the leader put it back in the ISR
        // on its old process's report, and it was elected with nothing.
        let mut state = leader(&[1, 2, 3], &[1, 2], 1_000);
        state.broker_registered(2, 5, 0);
        state.broker_registered(3, 7, 0);
        state.leader_appended(10);
        state
            .follower_fetched(2, 10, 10, 10, Some(5))
            .expect("replica");
        assert_eq!(state.follower_fetched(3, 10, 20, 20, Some(7)), Ok(false));
        assert_eq!(state.follower_end(3), Some(10));
        // The image: host of replica 3 registered again, in broker epoch 9.
        state.broker_registered(3, 9, 30);
        assert_eq!(state.follower_end(3), Some(-1), "forgotten");
        // The same image read again changes nothing; an older epoch neither.
        state.broker_registered(3, 9, 31);
        state.broker_registered(3, 7, 32);
        // A late fetch of the dead process, arrived after the image: not counted.
        assert_eq!(state.follower_fetched(3, 10, 40, 40, Some(7)), Ok(false));
        assert_eq!(state.follower_end(3), Some(-1));
        assert_eq!(state.isr_proposal(50), None, "not back on a stale report");
        // The new process fetches from the start; it rejoins once it has caught up, and the
        // proposal names the broker epoch it was decided on.
        state
            .follower_fetched(3, 0, 60, 60, Some(9))
            .expect("replica");
        assert_eq!(state.isr_proposal(70), None);
        state
            .follower_fetched(3, 10, 80, 80, Some(9))
            .expect("replica");
        assert_eq!(state.isr_proposal(90), Some(vec![1, 2, 3]));
        assert_eq!(state.proposal_broker_epochs(), vec![(2, 5), (3, 9)]);
        state.committed(1, &[1, 2, 3], &[1, 2, 3], 100);
        assert!(state.proposal_broker_epochs().is_empty());
    }

    #[test]
    fn kip_903_a_fetch_in_a_newer_broker_epoch_replaces_the_older_process_state() {
        // Seed 15316: the follower's new process fetches before the leader's image shows its
        // registration; reports of the old one that arrive after it are not counted.
        let mut state = leader(&[1, 2, 3], &[1, 2], 1_000);
        state.leader_appended(10);
        state
            .follower_fetched(2, 10, 10, 10, Some(5))
            .expect("replica");
        state
            .follower_fetched(3, 10, 10, 10, Some(7))
            .expect("replica");
        assert_eq!(state.isr_proposal(20), Some(vec![1, 2, 3]));
        assert_eq!(state.proposal_broker_epochs(), vec![(2, 5), (3, 7)]);
        // Its host restarts (losing its unflushed tail) and fetches in broker epoch 9 while
        // the proposal is in flight: the proposal keeps the epoch it was decided on, so the
        // controller refuses it (INELIGIBLE_REPLICA) rather than add the new process.
        state
            .follower_fetched(3, 6, 30, 30, Some(9))
            .expect("replica");
        assert_eq!(state.follower_end(3), Some(6));
        assert_eq!(state.proposal_broker_epochs(), vec![(2, 5), (3, 7)]);
        state.proposal_failed();
        // The old process's late fetch is not counted.
        assert_eq!(state.follower_fetched(3, 10, 40, 40, Some(7)), Ok(false));
        assert_eq!(state.follower_end(3), Some(6));
        assert_eq!(state.isr_proposal(50), None);
        // The image catching up with epoch 9 changes nothing.
        state.broker_registered(3, 9, 60);
        assert_eq!(state.follower_end(3), Some(6));
        state
            .follower_fetched(3, 10, 70, 70, Some(9))
            .expect("replica");
        assert_eq!(state.isr_proposal(80), Some(vec![1, 2, 3]));
        assert_eq!(state.proposal_broker_epochs(), vec![(2, 5), (3, 9)]);
    }

    #[test]
    fn an_unanswered_expansion_keeps_counting_until_a_newer_partition_epoch_is_committed() {
        // Seed 443 of the simulator: the leader proposed adding replica 3, the controller
        // committed it, the answer was lost. Until the leader learns the newer partition epoch,
        // replica 3 may be in the controller's ISR (and elected next): it must hold the high
        // watermark back, however long the answer takes.
        let mut state = leader(&[1, 2, 3], &[1, 2], 1_000);
        state.leader_appended(10);
        state
            .follower_fetched(2, 10, 10, 10, None)
            .expect("replica");
        state
            .follower_fetched(3, 10, 10, 10, None)
            .expect("replica");
        assert_eq!(state.high_watermark(), 10);
        assert_eq!(state.isr_proposal(20), Some(vec![1, 2, 3]));
        state.leader_appended(20);
        state
            .follower_fetched(2, 20, 30, 30, None)
            .expect("replica");
        assert_eq!(
            state.high_watermark(),
            10,
            "replica 3 counts while proposed"
        );
        // Much later, no answer: the proposal is still the one in flight, to be sent again.
        assert_eq!(state.isr_proposal(5_000), None);
        assert_eq!(state.proposal(), Some(vec![1, 2, 3]));
        state
            .follower_fetched(2, 20, 5_000, 5_000, None)
            .expect("replica");
        assert_eq!(state.high_watermark(), 10);
        // The image with the same partition epoch settles nothing; a newer one does.
        state.committed(0, &[1, 2, 3], &[1, 2], 5_100);
        assert_eq!(state.high_watermark(), 10);
        state.committed(1, &[1, 2, 3], &[1, 2, 3], 5_200);
        assert_eq!(state.proposal(), None);
        assert_eq!(state.high_watermark(), 10, "replica 3 is in the ISR");
        state
            .follower_fetched(3, 20, 5_300, 5_300, None)
            .expect("replica");
        assert_eq!(state.high_watermark(), 20);
    }

    #[test]
    fn a_follower_rejoins_only_with_everything_the_leader_had_when_its_epoch_began() {
        // Found by the simulator (seed 13544): the old leader acknowledged up to 18, crashed
        // and came back with 13; the new leader, whose high watermark as a follower was 13,
        // took it back at 13 and later elected it: 13..18 were lost.
        let mut state = LeaderState::new(LeaderStart {
            leader: 2,
            leader_epoch: 1,
            partition_epoch: 1,
            replicas: &[1, 2, 3],
            isr: &[2, 3],
            log_end_offset: 18,
            high_watermark: 13,
            lag_time_max_ms: 1_000,
            min_insync_replicas: 1,
            now_ms: 0,
        });
        state
            .follower_fetched(1, 13, 10, 10, None)
            .expect("replica");
        assert_eq!(
            state.isr_proposal(20),
            None,
            "13 is not everything the leader had"
        );
        state
            .follower_fetched(1, 18, 30, 30, None)
            .expect("replica");
        assert_eq!(state.isr_proposal(40), Some(vec![1, 2, 3]));
    }

    #[test]
    fn kip_966_the_high_watermark_stays_while_the_isr_is_below_min_insync_replicas() {
        let mut state = LeaderState::new(LeaderStart {
            leader: 1,
            leader_epoch: 0,
            partition_epoch: 0,
            replicas: &[1, 2, 3],
            isr: &[1, 2, 3],
            log_end_offset: 0,
            high_watermark: 0,
            lag_time_max_ms: 1_000,
            min_insync_replicas: 2,
            now_ms: 0,
        });
        state.leader_appended(10);
        state
            .follower_fetched(2, 10, 10, 10, None)
            .expect("replica");
        state
            .follower_fetched(3, 10, 10, 10, None)
            .expect("replica");
        assert_eq!(state.high_watermark(), 10);
        // Replicas 2 and 3 are taken out (the controller keeps them in the ELR): what the
        // leader appends alone is not committed, however long it waits.
        state.committed(1, &[1, 2, 3], &[1], 100);
        assert!(!state.high_watermark_may_advance());
        assert!(!state.leader_appended(20));
        assert_eq!(state.high_watermark(), 10);
        // Replica 2 catches up and is proposed back: still not counted until committed.
        state
            .follower_fetched(2, 20, 200, 200, None)
            .expect("replica");
        assert_eq!(state.isr_proposal(200), Some(vec![1, 2]));
        assert_eq!(state.high_watermark(), 10);
        state.committed(2, &[1, 2, 3], &[1, 2], 300);
        assert!(state.high_watermark_may_advance());
        assert_eq!(state.high_watermark(), 20);
    }

    #[test]
    fn fewer_replicas_than_min_insync_replicas_still_commit() {
        // Kafka's effective minimum: at most the replication factor.
        let mut state = LeaderState::new(LeaderStart {
            leader: 1,
            leader_epoch: 0,
            partition_epoch: 0,
            replicas: &[1],
            isr: &[1],
            log_end_offset: 0,
            high_watermark: 0,
            lag_time_max_ms: 1_000,
            min_insync_replicas: 2,
            now_ms: 0,
        });
        assert!(state.leader_appended(5));
        assert_eq!(state.high_watermark(), 5);
    }

    proptest! {
        #[test]
        fn high_watermark_never_passes_an_in_sync_replica_nor_moves_back(
            steps in proptest::collection::vec((0u8..5, 0i64..20, 0i64..500), 1..80)
        ) {
            let mut state = leader(&[1, 2, 3], &[1, 2, 3], 300);
            let mut leo = 0;
            let mut now = 0;
            let mut previous = 0;
            let mut follower_end = BTreeMap::from([(2, 0i64), (3, 0i64)]);
            let mut epoch = 0;
            for (what, amount, elapsed) in steps {
                now += elapsed;
                match what {
                    0 => { leo += amount; state.leader_appended(leo); }
                    1 | 2 => {
                        let id = i32::from(what) + 1;
                        let end = follower_end[&id];
                        let fetched = (end + amount).min(leo);
                        state.follower_fetched(id, fetched, now, now, None).expect("replica");
                        follower_end.insert(id, fetched);
                    }
                    3 => {
                        if let Some(isr) = state.isr_proposal(now) {
                            epoch += 1;
                            state.committed(epoch, &[1, 2, 3], &isr, now);
                        }
                    }
                    _ => state.proposal_failed(),
                }
                let hw = state.high_watermark();
                prop_assert!(hw >= previous && hw <= leo);
                for id in state.isr().iter().filter(|&&id| id != 1) {
                    prop_assert!(hw <= follower_end[id], "hw {} past replica {}", hw, id);
                }
                previous = hw;
            }
        }
    }
}
