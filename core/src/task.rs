//! Supervised background tasks. Every long-lived task floodwall spawns — the cache's
//! invalidation bus and its heartbeat, the limiter's lease sweep, a timeout lane's timer —
//! runs inside [`supervised`]: a panic or an unexpected end is logged (`tracing` error), counted
//! ([`restarts`], and the `floodwall_task_restarts_total{task}` counter with the `metrics`
//! feature) and the task is started again after a backoff (50 ms, doubling to 5 s, reset by a
//! run that lasted a minute), until it ends as it should (its owner is gone, its work is done).
//! Nothing a task feeds is left silently stale behind a dead task.
//!
//! The supervisor is the task's own future, not a second task: starting one costs what the
//! unsupervised task cost.
//!
//! [`kill`] makes every running task of a kind panic at its next poll, as a bug would: fault
//! injection, for tests that show a feature recovering.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use floodwall_core::task::{self, Exit, Task};
//!
//! let runs = Arc::new(AtomicU32::new(0));
//! let r = runs.clone();
//! let before = task::restarts(Task::Custom);
//! let job = task::supervised(Task::Custom, move || {
//!     let n = r.fetch_add(1, Ordering::SeqCst);
//!     // The first run ends when it should not; the second ends as it should.
//!     Some(async move { if n == 0 { Exit::Unexpected("lost its input") } else { Exit::Done } })
//! });
//! job.await;
//! assert_eq!(runs.load(Ordering::SeqCst), 2);
//! assert_eq!(task::restarts(Task::Custom) - before, 1);
//! # }
//! ```

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// The kinds of supervised task (the `task` label of the restart counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Task {
    /// The cache's invalidation-bus subscriber.
    CacheBus,
    /// The cache's invalidation-bus heartbeat publisher.
    CacheHeartbeat,
    /// The limiter's lease sweep (gives back what idle leases hold).
    LeaseSweep,
    /// A timeout lane's timer (wakes the calls whose bound has passed).
    TimerLane,
    /// A task of the caller's own (examples, tests).
    Custom,
}

const KINDS: usize = 5;

impl Task {
    /// The kind's name: the `task` label of its metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Task::CacheBus => "cache_bus",
            Task::CacheHeartbeat => "cache_heartbeat",
            Task::LeaseSweep => "lease_sweep",
            Task::TimerLane => "timer_lane",
            Task::Custom => "custom",
        }
    }

    const fn index(self) -> usize {
        match self {
            Task::CacheBus => 0,
            Task::CacheHeartbeat => 1,
            Task::LeaseSweep => 2,
            Task::TimerLane => 3,
            Task::Custom => 4,
        }
    }
}

/// How a run of a supervised task ended, when it did not panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// As it should: nothing is left to do. The supervisor ends too.
    Done,
    /// It should have gone on: logged, counted and started again.
    Unexpected(&'static str),
}

static RESTARTS: [AtomicU64; KINDS] = [const { AtomicU64::new(0) }; KINDS];
static KILLS: [AtomicU64; KINDS] = [const { AtomicU64::new(0) }; KINDS];

/// How many times tasks of `kind` were started again after a panic or an unexpected end,
/// in this process.
pub fn restarts(kind: Task) -> u64 {
    RESTARTS[kind.index()].load(Ordering::Relaxed)
}

/// Fault injection: every running task of `kind` panics at its next poll, as a bug would.
/// Its supervisor starts it again.
pub fn kill(kind: Task) {
    KILLS[kind.index()].fetch_add(1, Ordering::Relaxed);
}

/// Describes the restart counter to the installed `metrics` recorder (unit: count).
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn describe_metrics() {
    metrics::describe_counter!(
        "floodwall_task_restarts_total",
        metrics::Unit::Count,
        "floodwall background tasks started again after a panic or an unexpected end, by task"
    );
}

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A run that lasted this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs the task `make` starts, again and again, until a run ends with [`Exit::Done`] or
/// `make` has nothing to start (`None`: its owner is gone). A run that panics or ends with
/// [`Exit::Unexpected`] is logged, counted and started again after a backoff. Spawn the
/// returned future.
pub async fn supervised<F, Fut>(kind: Task, mut make: F)
where
    F: FnMut() -> Option<Fut> + Send + 'static,
    Fut: Future<Output = Exit> + Send + 'static,
{
    {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let Some(run) = make() else { return };
            let started = tokio::time::Instant::now();
            let run = Run {
                inner: run,
                kind,
                seen: KILLS[kind.index()].load(Ordering::Relaxed),
            };
            let why = match run.await {
                Ok(Exit::Done) => return,
                Ok(Exit::Unexpected(why)) => why.to_owned(),
                Err(panic) => format!("panicked: {}", panic_text(&*panic)),
            };
            RESTARTS[kind.index()].fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            metrics::counter!("floodwall_task_restarts_total", "task" => kind.name()).increment(1);
            if started.elapsed() >= HEALTHY_RUN {
                backoff = FIRST_BACKOFF;
            }
            tracing::error!(task = kind.name(), reason = %why, ?backoff, "floodwall background task ended unexpectedly; starting it again");
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
        }
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

pin_project_lite::pin_project! {
    /// One run: panics once [`kill`] was called for its kind, and turns a panic of its poll
    /// into an error.
    struct Run<F> {
        #[pin]
        inner: F,
        kind: Task,
        seen: u64,
    }
}

impl<F: Future> Future for Run<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let (kind, seen, inner) = (*this.kind, *this.seen, this.inner);
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
            if KILLS[kind.index()].load(Ordering::Relaxed) != seen {
                panic!("killed by floodwall_core::task::kill({kind:?})");
            }
            inner.poll(cx)
        }));
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}
