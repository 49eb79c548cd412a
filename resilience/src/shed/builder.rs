//! [`LoadShedderBuilder`]: a shedder's signals, capacity, steps and sampling.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize};
use std::time::Duration;

use super::{Inner, LoadShedder, ShedConfigError, Signal, sample_while_alive};

/// Builds a [`LoadShedder`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct LoadShedderBuilder {
    name: Arc<str>,
    signals: Vec<Box<dyn Signal>>,
    capacity: Option<usize>,
    reserved: f64,
    latency_target: Option<Duration>,
    every: Duration,
    manual: bool,
    step_up: f64,
    step_down: f64,
    resume_below: f64,
    retry_after: Duration,
}

impl fmt::Debug for LoadShedderBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShedderBuilder")
            .field("name", &self.name)
            .field("signals", &self.signals.len())
            .field("capacity", &self.capacity)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl LoadShedderBuilder {
    pub(super) fn new() -> Self {
        LoadShedderBuilder {
            name: Arc::from("default"),
            signals: Vec::new(),
            capacity: None,
            reserved: 0.2,
            latency_target: None,
            every: Duration::from_millis(100),
            manual: false,
            step_up: 0.1,
            step_down: 0.05,
            resume_below: 0.8,
            retry_after: Duration::from_secs(1),
        }
    }

    /// A name: the `shedder` label of its metrics. Default: `"default"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Adds a signal (a [`SchedulingDelay`](super::SchedulingDelay), a
    /// [`MemoryPressure`](super::MemoryPressure), a [`CpuPressure`](super::CpuPressure), or a
    /// closure returning the pressure). The level follows the highest pressure.
    pub fn signal(mut self, signal: impl Signal) -> Self {
        self.signals.push(Box::new(signal));
        self
    }

    /// At most `n` requests in flight. Default: no limit.
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = Some(n);
        self
    }

    /// The share of the capacity only critical requests may use. Default: 0.2.
    pub fn reserved_for_critical(mut self, share: f64) -> Self {
        self.reserved = share;
        self
    }

    /// Adds the shedder's own requests' latency as a signal: pressure = a moving average of
    /// how long admitted requests took (weight 1/8 each) over `target`.
    pub fn latency_target(mut self, target: Duration) -> Self {
        self.latency_target = Some(target);
        self
    }

    /// How often the signals are read. Default: 100 ms.
    pub fn sample_every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    /// No background sampling: the level moves only when [`LoadShedder::sample_now`] is
    /// called (tests; a driver of one's own).
    pub fn manual_sampling(mut self) -> Self {
        self.manual = true;
        self
    }

    /// How the level moves per sample: up by `up` while overloaded, down by `down` once the
    /// pressure is below `resume_below`. Defaults: 0.1, 0.05, 0.8.
    pub fn steps(mut self, up: f64, down: f64, resume_below: f64) -> Self {
        (self.step_up, self.step_down, self.resume_below) = (up, down, resume_below);
        self
    }

    /// The `Retry-After` a shed request is given. Default: 1 s.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = after;
        self
    }

    fn validate(&self) -> Result<(), ShedConfigError> {
        let err = |field, why| Err(ShedConfigError { field, why });
        if self.capacity == Some(0) {
            return err("capacity", "must be at least 1");
        }
        if !(0.0..1.0).contains(&self.reserved) {
            return err("reserved_for_critical", "must be in [0, 1)");
        }
        if !(self.step_up > 0.0
            && self.step_up <= 1.0
            && self.step_down > 0.0
            && self.step_down <= 1.0)
        {
            return err("steps", "each step must be in (0, 1]");
        }
        if !(self.resume_below > 0.0 && self.resume_below <= 1.0) {
            return err("steps", "resume_below must be in (0, 1]");
        }
        if self.every < Duration::from_millis(1) {
            return err("sample_every", "must be at least 1 ms");
        }
        if self.latency_target.is_some_and(|t| t.is_zero()) {
            return err("latency_target", "must not be zero");
        }
        Ok(())
    }

    /// Validates and builds; unless sampling is manual, starts the background sampling on the
    /// current Tokio runtime (an error outside one). The sampling ends when the last clone of
    /// the shedder is dropped.
    pub fn build(self) -> Result<LoadShedder, ShedConfigError> {
        self.validate()?;
        let runtime = match (self.manual, tokio::runtime::Handle::try_current()) {
            (true, _) => None,
            (false, Ok(handle)) => Some(handle),
            (false, Err(_)) => {
                return Err(ShedConfigError {
                    field: "sample_every",
                    why: "background sampling needs a Tokio runtime: build inside one, or use manual_sampling",
                });
            }
        };
        let capacity = self.capacity.unwrap_or(usize::MAX);
        let reserved = match self.capacity {
            Some(c) => ((c as f64 * self.reserved).ceil() as usize).min(c - 1),
            None => 0,
        };
        let signal_gauges = self
            .signals
            .iter()
            .map(|s| s.name())
            .chain(self.latency_target.map(|_| "latency"))
            .map(|signal| super::metrics::SignalMetrics::new(&self.name, signal))
            .collect();
        let inner = Arc::new(Inner {
            signal_gauges,
            metrics: super::metrics::ShedMetrics::new(&self.name),
            name: self.name,
            level: AtomicU32::new(0),
            pressure: AtomicU64::new(0f64.to_bits()),
            in_flight: AtomicUsize::new(0),
            capacity,
            non_critical: capacity - reserved,
            latency_target: self.latency_target,
            latency_ewma: AtomicU64::new(0),
            signals: self.signals,
            step_up: self.step_up,
            step_down: self.step_down,
            resume_below: self.resume_below,
            retry_after: self.retry_after,
        });
        if let Some(runtime) = runtime {
            runtime.spawn(sample_while_alive(Arc::downgrade(&inner), self.every));
        }
        Ok(LoadShedder { inner })
    }
}
