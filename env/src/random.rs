//! Randomness: ids (topic ids, member ids), jitter and shuffles, from one generator per shard,
//! seeded by the OS in production and by the test in a simulation.

use std::cell::RefCell;

/// A shard's random source. Not for secrets: it is a fast, seedable generator (fastrand's
/// WyRand), so that a seed decides every "random" choice a simulated broker makes.
#[derive(Debug)]
pub struct Random(RefCell<fastrand::Rng>);

impl Random {
    pub fn seeded(seed: u64) -> Self {
        Self(RefCell::new(fastrand::Rng::with_seed(seed)))
    }

    pub fn from_entropy() -> Self {
        Self(RefCell::new(fastrand::Rng::new()))
    }

    pub fn u64(&self) -> u64 {
        self.0.borrow_mut().u64(..)
    }

    /// A value in `0..bound` (0 when `bound` is 0).
    pub fn below(&self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        self.0.borrow_mut().u64(..bound)
    }

    /// True with probability `p` (0 never, 1 always).
    pub fn chance(&self, p: f64) -> bool {
        self.0.borrow_mut().f64() < p
    }

    /// A version 4 UUID from this generator.
    pub fn uuid(&self) -> uuid::Uuid {
        let mut bytes = [0u8; 16];
        self.0.borrow_mut().fill(&mut bytes);
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    /// A new generator seeded from this one: a part of a simulation gets its own stream, so
    /// adding draws in one part does not shift every other part's.
    pub fn fork(&self) -> Self {
        Self::seeded(self.u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_decides_every_draw() {
        let draws = |seed| {
            let random = Random::seeded(seed);
            (
                random.u64(),
                random.below(10),
                random.uuid(),
                random.fork().u64(),
            )
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
        let id = Random::seeded(1).uuid();
        assert_eq!(id.get_version_num(), 4);
        assert_eq!(Random::seeded(1).below(0), 0);
    }
}
