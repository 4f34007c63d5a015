//! Replication state for ringlog: the high watermark and the in-sync replica set of one
//! partition, as a pure state machine that does no I/O (so it can be simulated from a seed).
//!
//! The leader tracks each replica's log end offset (LEO) and when it last caught up. A
//! follower is in sync while it has caught up to the leader's LEO within
//! `replica.lag.time.max.ms`; the high watermark is the smallest LEO in the ISR and never moves
//! backwards; acks=all waits for it and `min.insync.replicas` refuses writes when the ISR is
//! too small. Fetch loops, links and leader election arrive with the replication issue.

pub mod epochs;

use std::collections::BTreeMap;

use thiserror::Error;

/// A broker (or, for testing, a shard) holding a replica.
pub type ReplicaId = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Follower {
    log_end_offset: i64,
    /// Wall clock when this follower last had everything the leader had.
    caught_up_ms: i64,
    in_sync: bool,
}

/// Why a write with acks=all cannot be accepted now.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{in_sync} in-sync replicas, min.insync.replicas is {required}")]
pub struct NotEnoughReplicas {
    pub in_sync: usize,
    pub required: usize,
}

/// The leader's view of one partition's replicas.
#[derive(Debug, Clone)]
pub struct PartitionReplicas {
    leader_log_end_offset: i64,
    high_watermark: i64,
    followers: BTreeMap<ReplicaId, Follower>,
    lag_time_max_ms: i64,
}

impl PartitionReplicas {
    /// A leader with log end offset `leader_log_end_offset` and the given followers, all
    /// assumed in sync at `now_ms` with nothing fetched yet.
    pub fn new(
        leader_log_end_offset: i64,
        high_watermark: i64,
        followers: &[ReplicaId],
        lag_time_max_ms: i64,
        now_ms: i64,
    ) -> Self {
        let followers = followers
            .iter()
            .map(|&id| {
                let follower = Follower {
                    log_end_offset: high_watermark,
                    caught_up_ms: now_ms,
                    in_sync: true,
                };
                (id, follower)
            })
            .collect();
        Self {
            leader_log_end_offset,
            high_watermark,
            followers,
            lag_time_max_ms,
        }
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    /// The in-sync set, the leader included.
    pub fn in_sync_count(&self) -> usize {
        1 + self.followers.values().filter(|f| f.in_sync).count()
    }

    pub fn is_in_sync(&self, id: ReplicaId) -> bool {
        self.followers.get(&id).is_some_and(|f| f.in_sync)
    }

    /// The leader appended: its log end offset moved.
    pub fn leader_appended(&mut self, log_end_offset: i64) {
        assert!(
            log_end_offset >= self.leader_log_end_offset,
            "LEO never moves back"
        );
        self.leader_log_end_offset = log_end_offset;
        self.advance_high_watermark();
    }

    /// A follower fetched from `fetch_offset`: everything before it is on the follower.
    pub fn follower_fetched(&mut self, id: ReplicaId, fetch_offset: i64, now_ms: i64) {
        let leader_end = self.leader_log_end_offset;
        let Some(follower) = self.followers.get_mut(&id) else {
            return;
        };
        follower.log_end_offset = fetch_offset.min(leader_end);
        if follower.log_end_offset == leader_end {
            follower.caught_up_ms = now_ms;
        }
        if !follower.in_sync && follower.log_end_offset >= self.high_watermark {
            follower.in_sync = true;
        }
        self.advance_high_watermark();
    }

    /// Drops from the ISR the followers that are behind and have not caught up within the lag time. Returns the
    /// ids removed.
    pub fn shrink_isr(&mut self, now_ms: i64) -> Vec<ReplicaId> {
        let mut removed = Vec::new();
        let leader_end = self.leader_log_end_offset;
        for (&id, follower) in &mut self.followers {
            // As in Kafka: a follower that has everything is never out of sync, however long
            // ago it fetched; one that is behind is out once it has not caught up for too long.
            let behind = follower.log_end_offset < leader_end;
            if follower.in_sync && behind && now_ms - follower.caught_up_ms > self.lag_time_max_ms {
                follower.in_sync = false;
                removed.push(id);
            }
        }
        self.advance_high_watermark();
        removed
    }

    /// Whether a write with acks=all may be accepted under `min.insync.replicas`.
    pub fn check_min_insync(&self, required: usize) -> Result<(), NotEnoughReplicas> {
        let in_sync = self.in_sync_count();
        if in_sync < required {
            return Err(NotEnoughReplicas { in_sync, required });
        }
        Ok(())
    }

    fn advance_high_watermark(&mut self) {
        let smallest = self
            .followers
            .values()
            .filter(|f| f.in_sync)
            .map(|f| f.log_end_offset)
            .fold(self.leader_log_end_offset, i64::min);
        // The high watermark never moves backwards.
        self.high_watermark = self.high_watermark.max(smallest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn high_watermark_is_the_smallest_in_sync_leo() {
        let mut replicas = PartitionReplicas::new(0, 0, &[1, 2], 1_000, 0);
        replicas.leader_appended(10);
        assert_eq!(replicas.high_watermark(), 0);
        replicas.follower_fetched(1, 10, 5);
        replicas.follower_fetched(2, 4, 5);
        assert_eq!(replicas.high_watermark(), 4);
        replicas.follower_fetched(2, 10, 6);
        assert_eq!(replicas.high_watermark(), 10);
    }

    #[test]
    fn a_lagging_follower_leaves_the_isr_and_stops_holding_the_high_watermark() {
        let mut replicas = PartitionReplicas::new(0, 0, &[1, 2], 1_000, 0);
        replicas.leader_appended(10);
        replicas.follower_fetched(1, 10, 100);
        assert_eq!(replicas.high_watermark(), 0);
        assert_eq!(replicas.shrink_isr(2_000), vec![2]);
        assert_eq!(replicas.high_watermark(), 10);
        assert_eq!(
            replicas.check_min_insync(3),
            Err(NotEnoughReplicas {
                in_sync: 2,
                required: 3
            })
        );
        replicas.follower_fetched(2, 10, 2_100);
        assert!(replicas.is_in_sync(2));
        assert!(replicas.check_min_insync(3).is_ok());
    }

    proptest! {
        #[test]
        fn high_watermark_never_passes_an_in_sync_replica_nor_moves_back(
            steps in proptest::collection::vec((0u8..3, 0i64..20, 0i64..500), 1..60)
        ) {
            let mut replicas = PartitionReplicas::new(0, 0, &[1, 2], 300, 0);
            let mut leo = 0;
            let mut now = 0;
            let mut previous = 0;
            for (who, amount, elapsed) in steps {
                now += elapsed;
                match who {
                    0 => { leo += amount; replicas.leader_appended(leo); }
                    id => { replicas.follower_fetched(u32::from(id), leo - amount.min(leo), now); }
                }
                replicas.shrink_isr(now);
                let hw = replicas.high_watermark();
                prop_assert!(hw >= previous && hw <= leo);
                previous = hw;
            }
        }
    }
}
