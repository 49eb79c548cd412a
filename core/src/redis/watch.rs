//! Call bounds without a timer per call: one watchdog per connection.
//!
//! A `tokio::time::timeout` per call registers a timer per call, and when no earlier timer is
//! pending (a runtime whose calls all end in time has none), Tokio wakes the thread parked on
//! its driver to re-arm it: a write to an `eventfd` and one more return from `epoll` per call,
//! about 1.5 µs of the client's CPU per lone call and 6 % of the throughput of 64 callers
//! (`benches/limiter_redis.rs`, measured with and without the timer).
//!
//! Instead, each connection's calls register their deadlines in one queue, kept in deadline
//! order, and one task — the watchdog — sleeps until the earliest deadline still pending and
//! cuts off every call whose deadline has passed. A call that ends first marks its entry done;
//! done entries at the queue's front are dropped as calls register, so the queue holds about
//! the calls in flight. Every call of a connection has a deadline `bound` after its start, so
//! a new call's deadline is never the earliest and wakes nobody: under steady load the
//! watchdog wakes about once per bound, not once per call; with no call pending it ends, and
//! the next call starts it again.
//!
//! Invariant: a call registered with deadline `d` ends by `d` plus the timer's resolution
//! (1 ms), as with a timer of its own — the watchdog is always asleep until at most the
//! earliest pending deadline, or about to run. If the runtime that ran the watchdog shuts
//! down while calls of another runtime wait, its end wakes them and the first to be polled
//! starts a watchdog on its own runtime.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

const PENDING: u8 = 0;
const DONE: u8 = 1;
const EXPIRED: u8 = 2;

/// The deadlines of one connection's calls, and its watchdog.
#[derive(Default)]
pub(crate) struct Watch {
    queue: Mutex<Queue>,
    /// Whether a watchdog is alive: `Queue::watchdog.is_some()`, read without the lock on
    /// every poll of a waiting call.
    alive: AtomicBool,
    /// Tells the watchdog that a deadline earlier than the one it sleeps until came in.
    rearm: Notify,
    /// Times a watchdog looked at the queue.
    #[cfg(test)]
    passes: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Queue {
    /// Pending (and done, not yet dropped) calls, in deadline order.
    entries: VecDeque<(Instant, Arc<Slot>)>,
    /// The deadline the watchdog sleeps until.
    armed: Option<Instant>,
    /// The live watchdog's number; `None`: none runs.
    watchdog: Option<u64>,
    /// The number the next watchdog gets.
    started: u64,
}

/// One call's entry.
#[derive(Default)]
struct Slot {
    state: AtomicU8,
    waker: Mutex<Option<Waker>>,
}

impl Slot {
    fn wake(&self) {
        if let Some(w) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            w.wake();
        }
    }
}

/// The call's deadline passed before it ended.
#[derive(Debug)]
pub(crate) struct Elapsed;

impl Watch {
    /// `fut`, ended with [`Elapsed`] if it has not finished `timeout` from now.
    pub(crate) fn within<F: Future>(self: &Arc<Self>, timeout: Duration, fut: F) -> Within<F> {
        Within {
            fut,
            deadline: Instant::now().checked_add(timeout),
            watch: self.clone(),
            entry: None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a call due at `deadline`; starts the watchdog, or tells it to re-arm, when
    /// needed.
    fn register(self: &Arc<Self>, deadline: Instant) -> Entry {
        let slot = Arc::new(Slot::default());
        let mut q = self.lock();
        while q
            .entries
            .front()
            .is_some_and(|(_, s)| s.state.load(Ordering::Acquire) != PENDING)
        {
            q.entries.pop_front();
        }
        match q.entries.back() {
            Some((last, _)) if *last > deadline => {
                let at = q.entries.partition_point(|(d, _)| *d <= deadline);
                q.entries.insert(at, (deadline, slot.clone()));
            }
            _ => q.entries.push_back((deadline, slot.clone())),
        }
        let earlier = q.armed.is_none_or(|armed| deadline < armed);
        let started = self.claim(&mut q);
        drop(q);
        match started {
            Some(number) => self.spawn(number),
            None if earlier => self.rearm.notify_one(),
            None => {}
        }
        Entry(slot)
    }

    /// With no watchdog alive, makes the next one the live one: its number.
    fn claim(&self, q: &mut Queue) -> Option<u64> {
        if q.watchdog.is_some() {
            return None;
        }
        let number = q.started;
        q.started += 1;
        q.watchdog = Some(number);
        self.alive.store(true, Ordering::Release);
        Some(number)
    }

    /// Runs watchdog `number` on the current runtime.
    fn spawn(self: &Arc<Self>, number: u64) {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(watchdog(self.clone(), number));
            }
            Err(_) => self.gone(number, &mut self.lock()),
        }
    }

    /// A watchdog for the calls waiting, when the last one's runtime ended.
    fn revive(self: &Arc<Self>) {
        let number = {
            let mut q = self.lock();
            if q.entries.is_empty() {
                return;
            }
            self.claim(&mut q)
        };
        if let Some(number) = number {
            self.spawn(number);
        }
    }

    /// Watchdog `number` is gone (if it was the live one).
    fn gone(&self, number: u64, q: &mut Queue) {
        if q.watchdog == Some(number) {
            q.watchdog = None;
            q.armed = None;
            self.alive.store(false, Ordering::Release);
        }
    }

    /// Cuts off the calls due by `now`; drops done entries at the front. The earliest
    /// deadline still pending, or `None` when nothing is (or watchdog `number` is no longer
    /// the live one): then the watchdog ends.
    fn expire(&self, number: u64, now: Instant) -> Option<Instant> {
        #[cfg(test)]
        self.passes.fetch_add(1, Ordering::Relaxed);
        let mut q = self.lock();
        if q.watchdog != Some(number) {
            return None;
        }
        while let Some((d, s)) = q.entries.front() {
            if *d <= now {
                if s.state
                    .compare_exchange(PENDING, EXPIRED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    s.wake();
                }
            } else if s.state.load(Ordering::Acquire) == PENDING {
                break;
            }
            q.entries.pop_front();
        }
        q.armed = q.entries.front().map(|(d, _)| *d);
        if q.armed.is_none() {
            // Under the lock: a call registering from now on sees no watchdog and starts one.
            self.gone(number, &mut q);
        }
        q.armed
    }
}

/// Watchdog `number`: sleeps until the earliest pending deadline, cuts off what is due, again.
async fn watchdog(watch: Arc<Watch>, number: u64) {
    let _ended = Ended(watch.clone(), number);
    while let Some(next) = watch.expire(number, Instant::now()) {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = watch.rearm.notified() => {}
        }
    }
}

/// Marks watchdog `.1` gone however its task ends (its runtime shutting down included), and
/// wakes the calls still waiting: the first polled starts another.
struct Ended(Arc<Watch>, u64);

impl Drop for Ended {
    fn drop(&mut self) {
        let mut q = self.0.lock();
        if q.watchdog != Some(self.1) {
            return;
        }
        self.0.gone(self.1, &mut q);
        let waiting: Vec<Arc<Slot>> = q.entries.iter().map(|(_, s)| s.clone()).collect();
        drop(q);
        for s in waiting {
            s.wake();
        }
    }
}

/// A registered call: marks its entry done when the call ends, however it ends, and lets go
/// of the waker it kept.
struct Entry(Arc<Slot>);

impl Drop for Entry {
    fn drop(&mut self) {
        let _ = self
            .0
            .state
            .compare_exchange(PENDING, DONE, Ordering::AcqRel, Ordering::Acquire);
        // The entry may wait in the queue up to a bound longer; its task need not.
        let waker = self
            .0
            .waker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(waker); // outside the lock
    }
}

pin_project_lite::pin_project! {
    /// A call bounded by its connection's watchdog: see [`Watch::within`].
    pub(crate) struct Within<F> {
        #[pin]
        fut: F,
        // `None`: no bound (the timeout does not fit in an `Instant`).
        deadline: Option<Instant>,
        watch: Arc<Watch>,
        entry: Option<Entry>,
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            *this.entry = None;
            return Poll::Ready(Ok(v));
        }
        let Some(deadline) = *this.deadline else {
            return Poll::Pending;
        };
        let entry = match this.entry {
            Some(entry) => entry,
            None => this.entry.insert(this.watch.register(deadline)),
        };
        // The waker first, then the state: an expiry after this poll wakes this waker.
        {
            let mut w = entry.0.waker.lock().unwrap_or_else(|e| e.into_inner());
            match &mut *w {
                Some(w) if w.will_wake(cx.waker()) => {}
                w => *w = Some(cx.waker().clone()),
            }
        }
        if entry.0.state.load(Ordering::Acquire) == EXPIRED {
            return Poll::Ready(Err(Elapsed));
        }
        if !this.watch.alive.load(Ordering::Acquire) {
            // The watchdog's runtime ended while this call waited.
            this.watch.revive();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests;
