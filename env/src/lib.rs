//! The environment a broker runs in, passed in rather than reached for: one [`Clock`]
//! (monotonic time, wall time, timers), a [`Random`] source, and a [`Transport`] between nodes.
//!
//! In production these are the system clock with glommio's timers, a generator seeded from the
//! OS, and TCP on glommio. In tests they are a [`ManualClock`] that only moves when the test
//! moves it, a [`Random`] seeded by the test, and a [`MemoryNetwork`] whose links a test can cut
//! and delay, so that what a broker does depends only on what the test decided, and a failure
//! replays from its seed.
//!
//! Everything here lives on one executor thread (`Rc`, `Cell`): each shard has its own.

mod clock;
mod random;
mod transport;

pub use clock::{Clock, ManualClock, Sleep, SystemClock};
pub use random::Random;
pub use transport::{Listener, MemoryNetwork, MemoryTransport, Stream, TcpTransport, Transport};

use std::rc::Rc;

/// What a shard is given instead of reaching for the system: time and randomness (the transport
/// is handed to the parts that talk to other nodes).
#[derive(Clone)]
pub struct Env {
    pub clock: Rc<dyn Clock>,
    pub random: Rc<Random>,
}

impl Env {
    /// The real environment: the system clock, randomness seeded from the OS.
    pub fn system() -> Self {
        Self {
            clock: Rc::new(SystemClock),
            random: Rc::new(Random::from_entropy()),
        }
    }

    /// A reproducible environment: a clock at `now_ms` that moves only when told, and
    /// randomness from `seed`.
    pub fn simulated(seed: u64, now_ms: i64) -> (Self, Rc<ManualClock>) {
        let clock = ManualClock::new(now_ms);
        let env = Self {
            clock: clock.clone(),
            random: Rc::new(Random::seeded(seed)),
        };
        (env, clock)
    }
}
