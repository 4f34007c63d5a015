//! Log reconciliation between a follower and its leader by leader epochs (KIP-101, KIP-279).
//!
//! A follower fetches with the epoch of the last batch it has (`last_fetched_epoch`) and its
//! log end offset. The leader looks that epoch up in its own epoch cache: if its log ends that
//! epoch earlier than the follower's fetch offset, or has only an older epoch there, the
//! follower's tail diverges and the leader answers where its own log ends that epoch instead of
//! records. The follower truncates to the point both logs agree on and fetches again; every
//! round moves to an older epoch, so it ends.

/// Where a follower's log diverges from the leader's: the leader's (epoch, end offset) for the
/// follower's last fetched epoch, as Fetch's `diverging_epoch` carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Diverging {
    pub epoch: i32,
    pub end_offset: i64,
}

/// Leader side: whether a follower fetching `fetch_offset` after `last_fetched_epoch` diverges
/// from this log, whose `end_offset_for(epoch)` answers (epoch, end offset) as the epoch cache
/// does (KIP-279). `None`: the follower's log is a prefix of ours and the fetch is answered
/// with records.
pub fn divergence(
    end_offset_for: impl FnOnce(i32) -> (i32, i64),
    last_fetched_epoch: i32,
    fetch_offset: i64,
) -> Option<Diverging> {
    if last_fetched_epoch < 0 {
        return None;
    }
    let (epoch, end_offset) = end_offset_for(last_fetched_epoch);
    (end_offset < fetch_offset || epoch < last_fetched_epoch)
        .then_some(Diverging { epoch, end_offset })
}

/// Follower side: the offset to truncate its log to after the leader answered `diverging`,
/// given the follower's own `end_offset_for(epoch)`, log end offset and high watermark. The
/// next fetch starts there; if the logs still differ below it, the leader says so again, with
/// an older epoch.
pub fn truncation_offset(
    own_end_offset_for: impl FnOnce(i32) -> (i32, i64),
    log_end_offset: i64,
    high_watermark: i64,
    diverging: Diverging,
) -> i64 {
    if diverging.epoch < 0 || diverging.end_offset < 0 {
        // The leader has no epoch at or below ours: nothing is known to agree beyond what
        // was committed.
        return high_watermark.min(log_end_offset).max(0);
    }
    let (own_epoch, own_end) = own_end_offset_for(diverging.epoch);
    let agreed = if own_epoch == diverging.epoch {
        own_end.min(diverging.end_offset)
    } else {
        // We do not have the leader's epoch: cut to where our older epoch ends, then ask again.
        own_end.min(diverging.end_offset).max(0)
    };
    agreed.min(log_end_offset).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::epochs::EpochCache;

    fn cache(entries: &[(i32, i64)]) -> EpochCache {
        let mut cache = EpochCache::new();
        for &(epoch, start) in entries {
            cache.assign(epoch, start);
        }
        cache
    }

    #[test]
    fn a_prefix_does_not_diverge() {
        let leader = cache(&[(0, 0), (2, 10)]);
        assert_eq!(divergence(|e| leader.end_offset_for(e, 20), 2, 15), None);
        assert_eq!(divergence(|e| leader.end_offset_for(e, 20), 0, 10), None);
        assert_eq!(divergence(|e| leader.end_offset_for(e, 20), -1, 0), None);
    }

    #[test]
    fn kip_101_the_follower_truncates_its_uncommitted_tail() {
        // The follower wrote offsets 10..15 in epoch 1, which the leader of epoch 2 never had.
        let leader = cache(&[(0, 0), (2, 10)]);
        let follower = cache(&[(0, 0), (1, 10)]);
        let diverging = divergence(|e| leader.end_offset_for(e, 20), 1, 15).expect("diverges");
        assert_eq!(
            diverging,
            Diverging {
                epoch: 0,
                end_offset: 10
            }
        );
        assert_eq!(
            truncation_offset(|e| follower.end_offset_for(e, 15), 15, 8, diverging),
            10
        );
        // After truncating it fetches at 10 with epoch 0: a prefix now.
        assert_eq!(divergence(|e| leader.end_offset_for(e, 20), 0, 10), None);
    }

    #[test]
    fn kip_279_fast_double_failover_converges() {
        // Leader A (epoch 1) wrote 0..10; B led epoch 2 and wrote 10..12 that only B has;
        // C leads epoch 3 from 10 on. B fetches from C.
        let leader_c = cache(&[(1, 0), (3, 10)]);
        let follower_b = cache(&[(1, 0), (2, 10)]);
        let diverging = divergence(|e| leader_c.end_offset_for(e, 14), 2, 12).expect("diverges");
        let offset = truncation_offset(|e| follower_b.end_offset_for(e, 12), 12, 10, diverging);
        assert_eq!(offset, 10);
        assert_eq!(divergence(|e| leader_c.end_offset_for(e, 14), 1, 10), None);
    }

    #[test]
    fn an_unknown_epoch_falls_back_to_the_high_watermark() {
        let follower = cache(&[(5, 0)]);
        let diverging = Diverging {
            epoch: -1,
            end_offset: -1,
        };
        assert_eq!(
            truncation_offset(|e| follower.end_offset_for(e, 12), 12, 7, diverging),
            7
        );
    }
}
