//! Prioritized load shedding: the process notices it is overloaded — its runtime polls tasks
//! late, its memory nears its limit, its CPU quota is spent, its requests slow down — and
//! sheds the least important requests first, keeping a share of its capacity for the
//! critical ones (Stripe's load shedders, Envoy's overload manager, fastify's
//! `under-pressure`).
//!
//! # Signals, pressure and the shed level
//!
//! Each [`Signal`] reports a *pressure*: its value over its threshold, so `1.0` means "at the
//! threshold" ([`SchedulingDelay`], [`MemoryPressure`], [`CpuPressure`], a closure, and the
//! shedder's own request latency against a target). Signals are read in the background every
//! sample interval (default 100 ms); the request path reads one atomic. The highest pressure
//! `p` moves the *shed level* `s ∈ [0, 1]`, with hysteresis so it does not flap:
//!
//! ```text
//! p ≥ 1             →  s ← min(1, s + step_up)      (default step_up = 0.1)
//! p < resume_below  →  s ← max(0, s − step_down)    (default resume_below = 0.8, step_down = 0.05)
//! otherwise         →  s unchanged
//! ```
//!
//! # Which signal when
//!
//! | signal | shows | use it when |
//! |---|---|---|
//! | [`SchedulingDelay`] | tasks wait to be polled (CPU-bound handlers, blocking calls on the runtime) | always on a Tokio server: it is the first to move when the runtime is saturated |
//! | [`latency_target`](LoadShedderBuilder::latency_target) | requests take longer than they should (a saturated pool, database or downstream) | the handler waits on something with a fixed capacity; set the target a little above the unloaded latency |
//! | [`capacity`](LoadShedderBuilder::capacity) | a hard cap on requests in flight, with the reserve for critical ones | always with a latency target: it bounds the queue while the level catches up |
//! | [`WorkerBusy`] | the runtime's workers are busy most of the time | beside `SchedulingDelay`, to see saturation coming before tasks wait |
//! | [`MemoryPressure`] | memory near the container's limit (the OOM killer's line) | in containers with a memory limit, or with a budget where there is none |
//! | [`CpuPressure`] | the CPU quota (cgroup `cpu.max`) or the machine is spent | throttled containers: the quota runs out before tasks wait long |
//! | a closure | anything else: a queue's depth, a dependency's own health | |
//!
//! # Who is shed
//!
//! Shedding is graded by [`Priority`], lowest first: at level `s`,
//!
//! | priority | shed with probability |
//! |---|---|
//! | [`Sheddable`](Priority::Sheddable) | `min(1, 2s)` — all of it from `s = 0.5` |
//! | [`Default`](Priority::Default) | `max(0, 2s − 1)` — from `s = 0.5`, all of it at `s = 1` |
//! | [`Critical`](Priority::Critical) | never by the level |
//!
//! With a [`capacity`](LoadShedderBuilder::capacity) `C` and a
//! [`reserved`](LoadShedderBuilder::reserved_for_critical) share `r` (default 20 %, Stripe's),
//! at most `C` requests are in flight, and a non-critical one is admitted only while fewer
//! than `C − ⌈r·C⌉` are: the last slots are the critical requests' own.
//!
//! **Invariant:** at any level, a request is never shed while one of a lower priority would be
//! admitted in its place (the probabilities are ordered by class, and critical requests lose
//! only to the capacity).
//!
//! ```
//! use floodwall_resilience::shed::{LoadShedder, Priority};
//!
//! // Pressure from a closure (here: a fixed 1.5 — overloaded); sampled by hand.
//! let shedder = LoadShedder::builder()
//!     .signal(|| 1.5)
//!     .manual_sampling()
//!     .build()
//!     .unwrap();
//! for _ in 0..10 {
//!     shedder.sample_now();
//! }
//! assert_eq!(shedder.level(), 1.0);
//! assert!(shedder.try_acquire(Priority::Sheddable).is_err());
//! assert!(shedder.try_acquire(Priority::Default).is_err());
//! let permit = shedder.try_acquire(Priority::Critical).unwrap();
//! drop(permit); // the request finished
//! ```

mod builder;
mod metrics;
mod signal;

#[cfg(feature = "tower")]
mod layer;

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

pub use builder::LoadShedderBuilder;
pub use signal::{CpuPressure, MemoryPressure, SchedulingDelay, Signal, WorkerBusy};

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use layer::{HttpShedLayer, HttpShedService, PRIORITY_HEADER};
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use layer::{ShedLayer, ShedService};

/// How much a request matters when the service must shed: lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    /// Shed first (prefetches, analytics, retries a client can make later).
    Sheddable,
    /// Most requests.
    #[default]
    Default,
    /// Shed last: only when the whole capacity is in use (payments, logins, health checks).
    Critical,
}

impl Priority {
    /// `"sheddable"`, `"default"` or `"critical"` (the `priority` label of the metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Sheddable => "sheddable",
            Priority::Default => "default",
            Priority::Critical => "critical",
        }
    }

    /// Parses `sheddable`, `default` or `critical` (any case), as sent in a header.
    pub fn parse(s: &str) -> Option<Priority> {
        [Priority::Sheddable, Priority::Default, Priority::Critical]
            .into_iter()
            .find(|p| s.trim().eq_ignore_ascii_case(p.as_str()))
    }

    /// The chance that a request of this priority is shed at level `s` (see the
    /// [module docs](self)).
    pub fn shed_probability(self, level: f64) -> f64 {
        let s = level.clamp(0.0, 1.0);
        match self {
            Priority::Sheddable => (2.0 * s).min(1.0),
            Priority::Default => (2.0 * s - 1.0).max(0.0),
            Priority::Critical => 0.0,
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A shed level, in `[0, 1]` (kept in millionths, so it compares exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShedLevel(u32);

impl ShedLevel {
    /// The level as a number in `[0, 1]`.
    pub fn get(self) -> f64 {
        f64::from(self.0) / SCALE
    }
}

impl fmt::Display for ShedLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2}", self.get())
    }
}

/// Why a request was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// The shed level (the process is overloaded).
    Overload {
        /// The level at the time.
        level: ShedLevel,
    },
    /// The capacity (the slots left were reserved for critical requests, or none were).
    Capacity {
        /// Requests in flight.
        in_flight: usize,
        /// The most this priority may have in flight.
        limit: usize,
    },
}

/// A request the shedder turned away; it did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request shed ({priority} priority): {}; retry after {}s", reason_text(.reason), whole_seconds(*.retry_after))]
pub struct Shed {
    /// The request's priority.
    pub priority: Priority,
    /// Why.
    pub reason: ShedReason,
    /// When a retry may be admitted (the answer's `Retry-After`).
    pub retry_after: Duration,
}

/// `d` in whole seconds, rounded up, at least 1 (the unit of `Retry-After`).
pub(crate) fn whole_seconds(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

fn reason_text(reason: &ShedReason) -> String {
    match reason {
        ShedReason::Overload { level } => format!("overloaded, shedding at level {level}"),
        ShedReason::Capacity { in_flight, limit } => {
            format!("{in_flight} in flight, at most {limit} for this priority")
        }
    }
}

/// A refused [`LoadShedderBuilder`] setting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid LoadShedder `{field}`: {why}")]
pub struct ShedConfigError {
    /// The setting.
    pub field: &'static str,
    /// What is wrong with it.
    pub why: &'static str,
}

/// The shed level is kept in millionths.
const SCALE: f64 = 1_000_000.0;

/// Samples every `every` until the shedder is gone.
async fn sample_while_alive(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.sample();
    }
}

struct Inner {
    name: Arc<str>,
    metrics: metrics::ShedMetrics,
    /// The shed level in millionths.
    level: AtomicU32,
    /// The last sample's pressure (`f64` bits).
    pressure: AtomicU64,
    in_flight: AtomicUsize,
    /// `usize::MAX`: no capacity.
    capacity: usize,
    /// The most non-critical requests in flight.
    non_critical: usize,
    latency_target: Option<Duration>,
    /// Moving average of admitted requests' latency, in nanoseconds.
    latency_ewma: AtomicU64,
    signals: Vec<Box<dyn Signal>>,
    /// Each signal's pressure gauge, in the order of `signals`; then the latency's, if any.
    signal_gauges: Vec<metrics::SignalMetrics>,
    step_up: f64,
    step_down: f64,
    resume_below: f64,
    retry_after: Duration,
}

impl Inner {
    /// Reads the signals and moves the level (see the [module docs](self)).
    fn sample(&self) -> f64 {
        let mut pressure = 0.0f64;
        let mut gauges = self.signal_gauges.iter();
        for signal in &self.signals {
            let p = signal.pressure();
            if let Some(g) = gauges.next()
                && p.is_finite()
            {
                g.set(p);
                pressure = pressure.max(p);
            }
        }
        if let Some(target) = self.latency_target {
            let ewma = self.latency_ewma.load(Ordering::Relaxed) as f64;
            let p = ewma / target.as_nanos() as f64;
            if let Some(g) = gauges.next() {
                g.set(p);
            }
            pressure = pressure.max(p);
        }
        let level = f64::from(self.level.load(Ordering::Relaxed)) / SCALE;
        let next = if pressure >= 1.0 {
            (level + self.step_up).min(1.0)
        } else if pressure < self.resume_below {
            (level - self.step_down).max(0.0)
        } else {
            level
        };
        self.level
            .store((next * SCALE).round() as u32, Ordering::Relaxed);
        self.pressure.store(pressure.to_bits(), Ordering::Relaxed);
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let reserved = in_flight.saturating_sub(self.non_critical);
        self.metrics.sampled(pressure, next, in_flight, reserved);
        if (next > 0.0) != (level > 0.0) {
            tracing::info!(
                shedder = &*self.name,
                pressure,
                level = next,
                "load shedding {}",
                if next > 0.0 { "started" } else { "stopped" }
            );
        }
        pressure
    }

    fn shed(&self, priority: Priority, reason: ShedReason) -> Shed {
        self.metrics.shed(priority);
        Shed {
            priority,
            reason,
            retry_after: self.retry_after,
        }
    }
}

/// Prioritized load shedding on overload signals. See the [module docs](self). Cheap to
/// clone; clones share the level and the in-flight count.
#[derive(Clone)]
pub struct LoadShedder {
    inner: Arc<Inner>,
}

impl fmt::Debug for LoadShedder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShedder")
            .field("name", &self.inner.name)
            .field("level", &self.level())
            .field("pressure", &self.pressure())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

thread_local! {
    /// A per-thread xorshift state for the shedding draws (no lock, no shared line).
    static DRAW: Cell<u64> = Cell::new({
        // Seeded by std's per-thread random hash keys: distinct per thread and per process.
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(0x9E37_79B9_7F4A_7C15u64)
    });
}

/// A number uniform on `[0, 1)`.
fn draw() -> f64 {
    DRAW.with(|state| {
        let mut x = state.get() | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

impl LoadShedder {
    /// A builder: no signals, no capacity, 20 % reserved for critical requests once a
    /// capacity is set, sampled every 100 ms.
    pub fn builder() -> LoadShedderBuilder {
        LoadShedderBuilder::new()
    }

    /// Admits a request of `priority`, or sheds it. Hold the permit while the request runs.
    /// Reads one atomic when nothing is overloaded and no capacity or latency target is set;
    /// no lock, no allocation.
    #[inline]
    pub fn try_acquire(&self, priority: Priority) -> Result<ShedPermit, Shed> {
        let inner = &*self.inner;
        let level = inner.level.load(Ordering::Relaxed);
        if level != 0 && priority != Priority::Critical {
            let s = f64::from(level) / SCALE;
            let p = priority.shed_probability(s);
            if p >= 1.0 || (p > 0.0 && draw() < p) {
                let level = ShedLevel(level);
                return Err(inner.shed(priority, ShedReason::Overload { level }));
            }
        }
        let tracked = inner.capacity != usize::MAX || inner.latency_target.is_some();
        if !tracked {
            return Ok(ShedPermit { _held: None });
        }
        let n = inner.in_flight.fetch_add(1, Ordering::AcqRel);
        let limit = match priority {
            Priority::Critical => inner.capacity,
            _ => inner.non_critical,
        };
        if n >= limit {
            inner.in_flight.fetch_sub(1, Ordering::AcqRel);
            let reason = ShedReason::Capacity {
                in_flight: n,
                limit,
            };
            return Err(inner.shed(priority, reason));
        }
        let started = inner.latency_target.map(|_| Instant::now());
        Ok(ShedPermit {
            _held: Some(Held {
                inner: self.inner.clone(),
                started,
            }),
        })
    }

    /// Reads the signals and moves the level now (what the background sampling does every
    /// interval); returns the pressure read.
    pub fn sample_now(&self) -> f64 {
        self.inner.sample()
    }

    /// The shed level, in `[0, 1]`.
    pub fn level(&self) -> f64 {
        f64::from(self.inner.level.load(Ordering::Relaxed)) / SCALE
    }

    /// The pressure the last sample read.
    pub fn pressure(&self) -> f64 {
        f64::from_bits(self.inner.pressure.load(Ordering::Relaxed))
    }

    /// Requests in flight (counted only with a capacity or a latency target).
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// The `Retry-After` given to shed requests.
    pub fn retry_after(&self) -> Duration {
        self.inner.retry_after
    }
}

/// An admitted request; dropping it ends the request (frees its slot, records its latency).
#[must_use = "hold the permit while the request runs"]
pub struct ShedPermit {
    _held: Option<Held>,
}

struct Held {
    inner: Arc<Inner>,
    started: Option<Instant>,
}

impl fmt::Debug for ShedPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShedPermit").finish_non_exhaustive()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.inner.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(started) = self.started {
            let took = started.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
            // ewma += (sample − ewma) / 8; a lost race loses one sample, never the average.
            let ewma = &self.inner.latency_ewma;
            let old = ewma.load(Ordering::Relaxed);
            let new = if old == 0 {
                took
            } else {
                (old as i128 + (took as i128 - old as i128) / 8) as u64
            };
            let _ = ewma.compare_exchange(old, new, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classes_are_shed_in_order_at_every_level() {
        for i in 0..=100 {
            let s = f64::from(i) / 100.0;
            let (a, b, c) = (
                Priority::Sheddable.shed_probability(s),
                Priority::Default.shed_probability(s),
                Priority::Critical.shed_probability(s),
            );
            assert!(a >= b && b >= c, "at {s}: {a} {b} {c}");
            assert!((0.0..=1.0).contains(&a) && (0.0..=1.0).contains(&b));
        }
        assert_eq!(Priority::Sheddable.shed_probability(0.5), 1.0);
        assert_eq!(Priority::Default.shed_probability(0.5), 0.0);
        assert_eq!(Priority::Default.shed_probability(1.0), 1.0);
    }

    #[test]
    fn draws_are_uniform_enough() {
        let n = 100_000;
        let below: usize = (0..n).filter(|_| draw() < 0.25).count();
        let share = below as f64 / f64::from(n);
        assert!((0.23..0.27).contains(&share), "{share}");
    }
}
