//! A scripted, misbehaving async service for resilience tests.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// What kind of failure a [`Flaky`] call reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlakyErrorKind {
    /// Worth retrying (a 503, a dropped connection).
    Transient,
    /// Not worth retrying (a 400, a validation error).
    Permanent,
    /// The downstream gave up waiting (a 504).
    Timeout,
}

/// The error a [`Flaky`] call fails with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlakyError {
    /// Its kind.
    pub kind: FlakyErrorKind,
    /// The 1-based number of the call that failed.
    pub call: u64,
}

impl fmt::Display for FlakyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "flaky call #{} failed: {:?}", self.call, self.kind)
    }
}

impl std::error::Error for FlakyError {}

/// One scripted call: its outcome and how long it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// `Ok(())` to succeed, `Err(kind)` to fail with that kind.
    pub outcome: Result<(), FlakyErrorKind>,
    /// How long the call takes before answering (Tokio time, so paused tests are instant).
    pub latency: Duration,
}

impl Step {
    /// An immediate success.
    pub const fn ok() -> Step {
        Step {
            outcome: Ok(()),
            latency: Duration::ZERO,
        }
    }

    /// An immediate failure of `kind`.
    pub const fn fail(kind: FlakyErrorKind) -> Step {
        Step {
            outcome: Err(kind),
            latency: Duration::ZERO,
        }
    }

    /// The same step, answering after `latency`.
    pub const fn after(self, latency: Duration) -> Step {
        Step { latency, ..self }
    }
}

#[derive(Debug)]
struct State {
    script: Mutex<VecDeque<Step>>,
    then: Step,
    calls: AtomicU64,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A scripted async service: plays its script of [`Step`]s one call at a time, then repeats
/// its final step forever. Clones share the script and the counters.
///
/// Usable as `flaky.call().await` and as a `tower::Service<R>` for any request type; a success
/// answers with the 1-based call number.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use floodwall_testkit::{Flaky, FlakyErrorKind};
///
/// let svc = Flaky::failing(2, FlakyErrorKind::Transient);
/// assert!(svc.call().await.is_err());
/// assert!(svc.call().await.is_err());
/// assert_eq!(svc.call().await, Ok(3));
/// assert_eq!(svc.calls(), 3);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Flaky {
    state: Arc<State>,
}

impl Flaky {
    /// Plays `script`, then repeats `then`.
    pub fn scripted(script: impl IntoIterator<Item = Step>, then: Step) -> Flaky {
        Flaky {
            state: Arc::new(State {
                script: Mutex::new(script.into_iter().collect()),
                then,
                calls: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
                max_in_flight: AtomicUsize::new(0),
            }),
        }
    }

    /// Always succeeds immediately.
    pub fn healthy() -> Flaky {
        Self::scripted([], Step::ok())
    }

    /// Always fails with `kind`.
    pub fn always_failing(kind: FlakyErrorKind) -> Flaky {
        Self::scripted([], Step::fail(kind))
    }

    /// Fails `n` times with `kind`, then succeeds.
    pub fn failing(n: usize, kind: FlakyErrorKind) -> Flaky {
        Self::scripted(std::iter::repeat_n(Step::fail(kind), n), Step::ok())
    }

    /// Always succeeds after `latency`.
    pub fn slow(latency: Duration) -> Flaky {
        Self::scripted([], Step::ok().after(latency))
    }

    /// Appends a step to the script (played before the final, repeating step).
    pub fn push(&self, step: Step) {
        self.lock_script().push_back(step);
    }

    /// Calls made so far.
    pub fn calls(&self) -> u64 {
        self.state.calls.load(Ordering::Acquire)
    }

    /// Calls running now.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::Acquire)
    }

    /// The most calls that ever ran at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::Acquire)
    }

    fn lock_script(&self) -> std::sync::MutexGuard<'_, VecDeque<Step>> {
        // A panic while holding this lock cannot leave the queue inconsistent.
        self.state.script.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes one call: when first polled, takes the next step, waits its latency, answers its
    /// outcome. A future dropped before it is polled is not a call (like an `async fn`).
    pub fn call(&self) -> impl Future<Output = Result<u64, FlakyError>> + Send + 'static + use<> {
        let state = self.state.clone();
        async move {
            let call = state.calls.fetch_add(1, Ordering::AcqRel) + 1;
            let step = {
                let mut script = state.script.lock().unwrap_or_else(|e| e.into_inner());
                script.pop_front().unwrap_or(state.then)
            };
            let now = state.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
            state.max_in_flight.fetch_max(now, Ordering::AcqRel);
            let _guard = InFlight(&state);
            if !step.latency.is_zero() {
                tokio::time::sleep(step.latency).await;
            }
            step.outcome
                .map(|()| call)
                .map_err(|kind| FlakyError { kind, call })
        }
    }
}

struct InFlight<'a>(&'a State);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<R> tower::Service<R> for Flaky {
    type Response = u64;
    type Error = FlakyError;
    type Future = Pin<Box<dyn Future<Output = Result<u64, FlakyError>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: R) -> Self::Future {
        Box::pin(Flaky::call(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::Service;

    #[tokio::test(start_paused = true)]
    async fn plays_script_then_repeats() {
        let svc = Flaky::scripted(
            [
                Step::fail(FlakyErrorKind::Permanent),
                Step::ok().after(Duration::from_secs(5)),
            ],
            Step::fail(FlakyErrorKind::Timeout),
        );
        assert_eq!(
            svc.call().await,
            Err(FlakyError {
                kind: FlakyErrorKind::Permanent,
                call: 1
            })
        );
        let start = tokio::time::Instant::now();
        assert_eq!(svc.call().await, Ok(2));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        let mut tower_svc = svc.clone();
        assert_eq!(
            Service::call(&mut tower_svc, ()).await.unwrap_err().kind,
            FlakyErrorKind::Timeout
        );
        assert_eq!(svc.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn tracks_concurrency() {
        let svc = Flaky::slow(Duration::from_millis(10));
        let calls: Vec<_> = (0..4).map(|_| tokio::spawn(svc.call())).collect();
        for c in calls {
            c.await.unwrap().unwrap();
        }
        assert_eq!(svc.max_in_flight(), 4);
        assert_eq!(svc.in_flight(), 0);
    }
}
