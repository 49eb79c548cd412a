//! Shared timers for [`Deadline`](super::deadline::Deadline): one Tokio timer per *lane*
//! instead of one per waiting call.
//!
//! A lane holds the waiting calls of one runtime, one thread and one bound, in the order they
//! started waiting. Every entry of a lane has the same bound, so deadlines never decrease
//! along it: the lane's driver task needs one timer, armed at the earliest deadline not yet
//! fired, and a new entry never has to move it. A call that waits takes a lock, pushes an entry
//! and clones its waker; when it ends it takes the lock again and pops. A Tokio `Sleep` per
//! call costs a registration and a removal in the runtime's timer wheel instead: in
//! `benches/reqwest.rs`, the timed pipeline's cost over the untimed one on a loopback `GET`
//! fell from a median of about 440 ns with a `Sleep` per attempt to about 330 ns with lanes
//! (runs made on one day with both builds; the figure itself moves from day to day).
//!
//! Invariants (checked against a model by this module's property test):
//! - deadlines are non-decreasing along a lane (`deadline = max(now + after, last deadline)`);
//! - an entry fires — its waker is woken and it reads as elapsed — only once the driver's
//!   clock has reached its deadline, and at most once;
//! - while a driver runs, its timer is armed at or before every unfired entry's deadline; when
//!   it finds nothing left to fire it ends, and the next waiting call starts a new one;
//! - an entry leaves the lane when it fires, or when its call ends and no older entry waits:
//!   a lane holds only entries from its oldest waiting call on, all started within one
//!   bound — a call polled once and then neither polled nor dropped holds nothing after it
//!   fires.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};
use std::time::Duration;

use floodwall_core::task::{Exit, Task, supervised};
use tokio::runtime::{Handle, Id};
use tokio::time::{Instant, Sleep};

/// Where a bound too long to add to the clock puts the deadline.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Lanes a thread keeps for reuse; a thread seldom sees more bounds than this.
const LANES_PER_THREAD: usize = 8;

thread_local! {
    static LANES: RefCell<Vec<Arc<Lane>>> = const { RefCell::new(Vec::new()) };
}

/// The waiting calls of one runtime and one bound.
struct Lane {
    runtime: Id,
    after: Duration,
    /// `State::first` as the driver last left it, readable without the lock: a waiting call
    /// polls with a load (its entry is below it only once it has fired).
    fired: AtomicU64,
    state: Mutex<State>,
}

impl Lane {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent between statements; a panic elsewhere leaves it usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A call's place in its lane; dropping it takes the call out.
pub(crate) struct Ticket {
    lane: Arc<Lane>,
    seq: u64,
    /// The waker this call was last polled with (its data and vtable addresses, as
    /// `Waker::will_wake` compares them) — the lane holds its clone — so a poll by the same
    /// task takes no lock.
    waker: (usize, usize),
}

fn waker_id(w: &Waker) -> (usize, usize) {
    (w.data() as usize, std::ptr::from_ref(w.vtable()) as usize)
}

impl Ticket {
    /// Starts bounding a call that waits from now on: `Ready` once `after` has passed,
    /// `waker` woken then. Panics outside a Tokio runtime or without its timers, as
    /// `tokio::time::sleep` does.
    pub(crate) fn new(after: Duration, waker: &Waker) -> Self {
        let handle = Handle::current();
        let lane = lane_for(handle.id(), after);
        // The id of the waker as given, which later polls pass again: a clone may carry
        // another vtable (Tokio's borrowed wakers clone into owned ones).
        let id = waker_id(waker);
        let waker = waker.clone(); // before the lock: it is held for the push alone
        let (seq, start) = lane.lock().push(Instant::now(), waker);
        if let Some((no, at)) = start {
            // Built before the timer, so a runtime without timers (the timer panics) leaves no
            // driver marked as running.
            let driver = Driver {
                lane: Arc::clone(&lane),
                no,
            };
            let sleep = Box::pin(tokio::time::sleep_until(at));
            handle.spawn(supervised_driver(driver, sleep));
        }
        Ticket {
            lane,
            seq,
            waker: id,
        }
    }

    /// `Ready` once the call's time is up; otherwise keeps `waker` to be woken then.
    pub(crate) fn poll(&mut self, waker: &Waker) -> Poll<()> {
        if self.seq < self.lane.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if waker_id(waker) == self.waker {
            return Poll::Pending; // the lane holds a clone of this very waker
        }
        let (poll, old) = self.lane.lock().poll(self.seq, waker);
        self.waker = waker_id(waker);
        drop(old); // outside the lock
        poll
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let waker = self.lane.lock().end(self.seq);
        drop(waker); // outside the lock
    }
}

/// This thread's lane for the current runtime and `after`.
fn lane_for(runtime: Id, after: Duration) -> Arc<Lane> {
    let fresh = || {
        Arc::new(Lane {
            runtime,
            after,
            fired: AtomicU64::new(0),
            state: Mutex::new(State::new(after)),
        })
    };
    LANES
        .try_with(|lanes| {
            let mut lanes = lanes.borrow_mut();
            if let Some(lane) = lanes
                .iter()
                .find(|l| l.runtime == runtime && l.after == after)
            {
                return Arc::clone(lane);
            }
            if lanes.len() == LANES_PER_THREAD {
                lanes.remove(0);
            }
            let lane = fresh();
            lanes.push(Arc::clone(&lane));
            lane
        })
        // A thread being torn down: an unshared lane still bounds the call.
        .unwrap_or_else(|_| fresh())
}

/// A lane's running driver; dropping it (the task ended or its runtime shut down) lets the
/// next waiting call start another.
struct Driver {
    lane: Arc<Lane>,
    no: u64,
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.lane.lock().driver_gone(self.no);
    }
}

/// Runs `driver` supervised ([`floodwall_core::task`]): a driver that panics is replaced by a
/// new one armed at the lane's earliest deadline (unless another driver runs by then), so no
/// waiting call is left past its bound.
fn supervised_driver(
    driver: Driver,
    sleep: Pin<Box<Sleep>>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let lane = Arc::clone(&driver.lane);
    let mut first = Some((driver, sleep));
    supervised(Task::TimerLane, move || {
        let (driver, sleep) = match first.take() {
            Some(first) => first,
            None => {
                let (no, at) = lane.lock().start_driver()?;
                let driver = Driver {
                    lane: Arc::clone(&lane),
                    no,
                };
                (driver, Box::pin(tokio::time::sleep_until(at)))
            }
        };
        Some(drive(driver, sleep))
    })
}

/// Sleeps until the earliest unfired deadline, wakes every call that is due, and again, until
/// nothing is left to fire.
async fn drive(driver: Driver, mut sleep: Pin<Box<Sleep>>) -> Exit {
    let mut due = Vec::new();
    loop {
        sleep.as_mut().await;
        let next = {
            let mut state = driver.lane.lock();
            let next = state.fire(Instant::now(), &mut due);
            // Published before any due call is woken.
            driver.lane.fired.store(state.first, Ordering::Release);
            next
        };
        due.drain(..).for_each(Waker::wake);
        match next {
            Some(at) => sleep.as_mut().reset(at),
            None => return Exit::Done,
        }
    }
}

/// A lane's entries and driver; all of a lane's logic, clock given, so it can be checked
/// against a model.
#[derive(Debug)]
pub(crate) struct State {
    after: Duration,
    entries: VecDeque<Entry>,
    /// The sequence number of `entries[0]`. Entries numbered below it have left the lane:
    /// fired, or ended with nothing older waiting — so a call that has not ended is below it
    /// only once it has fired.
    first: u64,
    /// The running driver's number, if one runs.
    driver: Option<u64>,
    /// Drivers started so far.
    drivers: u64,
    /// Polls that took the lock (a ticket's own waker takes none).
    #[cfg(test)]
    locked_polls: u64,
}

#[derive(Debug)]
struct Entry {
    deadline: Instant,
    waker: Option<Waker>,
    ended: bool,
}

impl State {
    pub(crate) fn new(after: Duration) -> Self {
        State {
            after,
            entries: VecDeque::new(),
            first: 0,
            driver: None,
            drivers: 0,
            #[cfg(test)]
            locked_polls: 0,
        }
    }

    fn end_seq(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    /// Adds a call waiting from `now`: its number, and — if no driver runs — the number of the
    /// driver to start and the time to arm it at.
    pub(crate) fn push(&mut self, now: Instant, waker: Waker) -> (u64, Option<(u64, Instant)>) {
        // A bound too far to represent waits thirty years, as Tokio's own far future does.
        let mut deadline = now
            .checked_add(self.after)
            .unwrap_or_else(|| now + FAR_FUTURE);
        if let Some(last) = self.entries.back() {
            deadline = deadline.max(last.deadline);
        }
        self.entries.push_back(Entry {
            deadline,
            waker: Some(waker),
            ended: false,
        });
        let start = self.start_driver();
        (self.end_seq() - 1, start)
    }

    /// Whether call `seq` has fired; if not, keeps `waker` for it (returning the one it
    /// replaces, to be dropped outside the lock).
    pub(crate) fn poll(&mut self, seq: u64, waker: &Waker) -> (Poll<()>, Option<Waker>) {
        #[cfg(test)]
        {
            self.locked_polls += 1;
        }
        if seq < self.first {
            return (Poll::Ready(()), None); // fired: a call that polls has not ended
        }
        let entry = &mut self.entries[(seq - self.first) as usize];
        match &entry.waker {
            Some(w) if w.will_wake(waker) => (Poll::Pending, None),
            _ => (Poll::Pending, entry.waker.replace(waker.clone())),
        }
    }

    /// Call `seq` ended: drops its entry (and those ended before it, once nothing older
    /// waits); returns its waker, to be dropped outside the lock.
    pub(crate) fn end(&mut self, seq: u64) -> Option<Waker> {
        if seq < self.first {
            return None; // fired, and out of the lane already
        }
        let entry = &mut self.entries[(seq - self.first) as usize];
        entry.ended = true;
        let waker = entry.waker.take();
        while self.entries.front().is_some_and(|e| e.ended) {
            self.entries.pop_front();
            self.first += 1;
        }
        waker
    }

    /// The driver's clock reads `now`: moves every due call's waker into `due`, lets the
    /// fired entries go (their calls read `first`), and returns when to wake next — or `None`,
    /// and the driver ends, when nothing is left to fire.
    pub(crate) fn fire(&mut self, now: Instant, due: &mut Vec<Waker>) -> Option<Instant> {
        while let Some(entry) = self.entries.front_mut() {
            if entry.deadline > now && !entry.ended {
                break;
            }
            due.extend(entry.waker.take());
            self.entries.pop_front();
            self.first += 1;
        }
        if let Some(entry) = self.entries.front() {
            return Some(entry.deadline);
        }
        if self.entries.capacity() > 1024 {
            self.entries.shrink_to(64); // after a burst
        }
        self.driver = None;
        None
    }

    /// A driver to start — for a call that found none running, or to replace one that died:
    /// its number and when to arm it, at the earliest entry (older entries than the newest are
    /// left only if a driver was lost with its runtime or died). `None` when a driver runs or
    /// nothing waits.
    pub(crate) fn start_driver(&mut self) -> Option<(u64, Instant)> {
        if self.driver.is_some() {
            return None;
        }
        let front = self.entries.front()?.deadline;
        self.drivers += 1;
        self.driver = Some(self.drivers);
        Some((self.drivers, front))
    }

    /// Driver `no` is gone (ended, or dropped with its runtime).
    pub(crate) fn driver_gone(&mut self, no: u64) {
        if self.driver == Some(no) {
            self.driver = None;
        }
    }

    /// Entries held (ended ones waiting behind an older call included).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests;
