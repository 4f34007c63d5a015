//! Time: monotonic instants for deadlines and timeouts, wall-clock milliseconds for record
//! timestamps and retention, and timers.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A timer: completes once its time has come on the clock that made it.
pub type Sleep = Pin<Box<dyn Future<Output = ()>>>;

/// One source of time for a shard and everything it runs.
pub trait Clock {
    /// Milliseconds since the Unix epoch, as record timestamps and retention use them.
    fn now_ms(&self) -> i64;

    /// Monotonic time: deadlines, timeouts, session expiry. Never goes backwards.
    fn now(&self) -> Instant;

    /// Completes once `duration` has passed on this clock.
    fn sleep(&self, duration: Duration) -> Sleep;
}

/// The system's clocks, and glommio's timers (`sleep` must be awaited on a glommio executor).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| {
                i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
            })
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(glommio::timer::sleep(duration))
    }
}

/// A clock that moves only when told to ([`ManualClock::advance`]); its timers fire as it
/// passes them, in deadline order, so a test or simulation decides every moment. Its instants
/// are a fixed base (taken when it is made) plus the time it was moved: differences between
/// them are exactly the time moved.
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    elapsed: Cell<Duration>,
    wall_ms: Cell<i64>,
    timers: Rc<RefCell<Timers>>,
}

#[derive(Debug, Default)]
struct Timers {
    /// (deadline since base, registration order, waker): sorted by firing order on demand.
    waiting: Vec<(Duration, u64, Waker)>,
    registered: u64,
    /// The clock's elapsed time, mirrored here so a pending timer can check it.
    now: Duration,
}

impl ManualClock {
    pub fn new(now_ms: i64) -> Rc<Self> {
        Rc::new(Self {
            base: Instant::now(),
            elapsed: Cell::new(Duration::ZERO),
            wall_ms: Cell::new(now_ms),
            timers: Rc::new(RefCell::new(Timers::default())),
        })
    }

    /// Sets the wall clock alone (a wall clock may jump, backwards too); monotonic time and
    /// timers are not touched.
    pub fn set(&self, now_ms: i64) {
        self.wall_ms.set(now_ms);
    }

    /// Moves both clocks forward by `ms` milliseconds (negative values move nothing) and wakes
    /// the timers that are due.
    pub fn advance(&self, ms: i64) {
        let ms = u64::try_from(ms).unwrap_or(0);
        self.advance_by(Duration::from_millis(ms));
    }

    /// Moves both clocks forward by `duration` and wakes the timers that are due, earliest
    /// deadline first (ties in the order they were set).
    pub fn advance_by(&self, duration: Duration) {
        let elapsed = self.elapsed.get() + duration;
        self.elapsed.set(elapsed);
        let moved_ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        self.wall_ms
            .set(self.wall_ms.get().saturating_add(moved_ms));
        let due = {
            let mut timers = self.timers.borrow_mut();
            timers.now = elapsed;
            let (mut due, waiting): (Vec<_>, Vec<_>) = timers
                .waiting
                .drain(..)
                .partition(|(deadline, _, _)| *deadline <= elapsed);
            timers.waiting = waiting;
            due.sort_by_key(|(deadline, order, _)| (*deadline, *order));
            due
        };
        for (_, _, waker) in due {
            waker.wake();
        }
    }

    /// How long until the earliest pending timer is due, if any is set: a simulation moves the
    /// clock by this much when nothing else can run.
    pub fn next_timer(&self) -> Option<Duration> {
        let timers = self.timers.borrow();
        timers
            .waiting
            .iter()
            .map(|(deadline, _, _)| deadline.saturating_sub(timers.now))
            .min()
    }

    /// Time moved since the clock was made.
    pub fn elapsed(&self) -> Duration {
        self.elapsed.get()
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.wall_ms.get()
    }

    fn now(&self) -> Instant {
        self.base + self.elapsed.get()
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(ManualSleep {
            deadline: self.elapsed.get() + duration,
            timers: Rc::clone(&self.timers),
        })
    }
}

struct ManualSleep {
    deadline: Duration,
    timers: Rc<RefCell<Timers>>,
}

impl Future for ManualSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        let mut timers = self.timers.borrow_mut();
        if timers.now >= self.deadline {
            return Poll::Ready(());
        }
        // One registration per poll: a timer polled again (woken by something else) is simply
        // woken once more when due, which a future tolerates.
        let order = timers.registered;
        timers.registered += 1;
        timers
            .waiting
            .push((self.deadline, order, context.waker().clone()));
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_timers_fire_in_deadline_order_when_the_clock_passes_them() {
        let clock = ManualClock::new(1_000);
        let fired = Rc::new(RefCell::new(Vec::new()));
        let mut sleeps = Vec::new();
        for (name, ms) in [("late", 30), ("early", 10), ("also-early", 10)] {
            let fired = Rc::clone(&fired);
            let sleep = clock.sleep(Duration::from_millis(ms));
            sleeps.push(Box::pin(async move {
                sleep.await;
                fired.borrow_mut().push(name);
            }));
        }
        let waker = Waker::noop();
        let mut context = Context::from_waker(waker);
        let mut poll_all = |sleeps: &mut Vec<Pin<Box<dyn Future<Output = ()>>>>| {
            sleeps.retain_mut(|s| s.as_mut().poll(&mut context).is_pending());
        };
        let mut sleeps: Vec<Pin<Box<dyn Future<Output = ()>>>> =
            sleeps.into_iter().map(|s| s as _).collect();
        poll_all(&mut sleeps);
        assert_eq!(clock.next_timer(), Some(Duration::from_millis(10)));
        clock.advance(9);
        poll_all(&mut sleeps);
        assert!(fired.borrow().is_empty());
        let before = clock.now();
        clock.advance(1);
        poll_all(&mut sleeps);
        assert_eq!(*fired.borrow(), vec!["early", "also-early"]);
        assert_eq!(clock.now() - before, Duration::from_millis(1));
        assert_eq!(clock.now_ms(), 1_010);
        clock.advance_by(Duration::from_millis(20));
        poll_all(&mut sleeps);
        assert_eq!(*fired.borrow(), vec!["early", "also-early", "late"]);
        assert!(sleeps.is_empty());
        assert_eq!(clock.next_timer(), None);
    }

    #[test]
    fn the_wall_clock_can_jump_without_moving_monotonic_time() {
        let clock = ManualClock::new(5_000);
        let before = clock.now();
        clock.set(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        assert_eq!(clock.now(), before);
    }
}
