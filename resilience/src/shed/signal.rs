//! Overload signals: each reports a pressure — its value over its threshold, `1.0` at the
//! threshold — read by the shedder in the background, never on the request path.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::ShedConfigError;

/// A source of overload pressure: `1.0` means "at the threshold", above it overloaded. A
/// closure `Fn() -> f64` is one. Read every sample interval, off the request path; a value
/// that is not finite is ignored.
pub trait Signal: Send + Sync + 'static {
    /// The pressure now.
    fn pressure(&self) -> f64;

    /// The `signal` label of its pressure gauge (`floodwall_shed_signal_pressure`). Default:
    /// `"custom"`.
    fn name(&self) -> &str {
        "custom"
    }
}

impl<F: Fn() -> f64 + Send + Sync + 'static> Signal for F {
    fn pressure(&self) -> f64 {
        self()
    }
}

/// How late the Tokio runtime polls a task that is ready — the runtime's equivalent of an
/// event loop's delay. A probe task measures, every interval, how long a task that yields
/// waits to be polled again; pressure = the largest such delay since the pressure was last
/// read, over `target`. A runtime whose workers are all busy with work that does not yield
/// shows it at once.
#[derive(Debug, Clone)]
pub struct SchedulingDelay {
    probe: Arc<Probe>,
}

#[derive(Debug)]
struct Probe {
    target: Duration,
    last_nanos: AtomicU64,
    task: OnceLock<tokio::task::AbortHandle>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

impl SchedulingDelay {
    /// Starts the probe on the current Tokio runtime, every `every` (an error outside a
    /// runtime, or for a zero `target` or `every`). The probe ends with the last clone.
    pub fn spawn(target: Duration, every: Duration) -> Result<SchedulingDelay, ShedConfigError> {
        if target.is_zero() || every.is_zero() {
            return Err(ShedConfigError {
                field: "SchedulingDelay",
                why: "the target and the interval must not be zero",
            });
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| ShedConfigError {
            field: "SchedulingDelay",
            why: "the probe needs a Tokio runtime: start it inside one",
        })?;
        let probe = Arc::new(Probe {
            target,
            last_nanos: AtomicU64::new(0),
            task: OnceLock::new(),
        });
        let weak = Arc::downgrade(&probe);
        let task = handle.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let asked = Instant::now();
                tokio::task::yield_now().await;
                let waited = asked.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
                let Some(probe) = weak.upgrade() else { return };
                probe.last_nanos.fetch_max(waited, Ordering::Relaxed);
            }
        });
        let _ = probe.task.set(task.abort_handle());
        Ok(SchedulingDelay { probe })
    }

    /// The largest delay the probe measured since the pressure was last read.
    pub fn delay(&self) -> Duration {
        Duration::from_nanos(self.probe.last_nanos.load(Ordering::Relaxed))
    }
}

impl Signal for SchedulingDelay {
    fn name(&self) -> &str {
        "scheduling_delay"
    }

    /// The largest delay since the last read over the target; the reading starts a new
    /// interval.
    fn pressure(&self) -> f64 {
        let worst = self.probe.last_nanos.swap(0, Ordering::Relaxed);
        Duration::from_nanos(worst).as_secs_f64() / self.probe.target.as_secs_f64()
    }
}

/// How busy the Tokio runtime's workers are: pressure = the share of wall time the workers
/// spent busy between two samples (Tokio's `worker_total_busy_duration`, summed over workers)
/// over `threshold` (default 0.9). Busy workers alone are not overload — a runtime at 95 %
/// that keeps up is fine — so pair it with [`SchedulingDelay`], which shows whether work
/// waits. Tokio adds a worker's busy time when the worker parks, so a worker that never
/// parks reads idle until it does. The first sample reads no pressure.
#[derive(Debug)]
pub struct WorkerBusy {
    metrics: tokio::runtime::RuntimeMetrics,
    threshold: f64,
    last: Mutex<Option<(Instant, Duration)>>,
}

impl WorkerBusy {
    /// The current runtime's workers (an error outside a runtime).
    pub fn current() -> Result<WorkerBusy, ShedConfigError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| ShedConfigError {
            field: "WorkerBusy",
            why: "needs a Tokio runtime: create it inside one",
        })?;
        Ok(WorkerBusy {
            metrics: handle.metrics(),
            threshold: 0.9,
            last: Mutex::new(None),
        })
    }

    /// The busy share at which the pressure is 1.0. Default: 0.9.
    pub fn threshold(mut self, share: f64) -> WorkerBusy {
        self.threshold = share;
        self
    }

    fn busy_total(&self) -> Duration {
        (0..self.metrics.num_workers())
            .map(|w| self.metrics.worker_total_busy_duration(w))
            .sum()
    }
}

impl Signal for WorkerBusy {
    fn name(&self) -> &str {
        "worker_busy"
    }

    fn pressure(&self) -> f64 {
        let now = Instant::now();
        let busy = self.busy_total();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let Some((then, busy_then)) = last.replace((now, busy)) else {
            return 0.0;
        };
        let wall = now.duration_since(then).as_secs_f64() * self.metrics.num_workers() as f64;
        if wall <= 0.0 {
            return 0.0;
        }
        busy.saturating_sub(busy_then).as_secs_f64() / wall / self.threshold
    }
}

type UsageFn = dyn Fn() -> Option<(u64, u64)> + Send + Sync;

/// Memory in use against a limit: pressure = used / (limit × threshold), threshold 0.9 by
/// default (so pressure 1.0 at 90 % of the limit).
///
/// - [`cgroup_or_budget`](Self::cgroup_or_budget): the process's cgroup (v2)
///   `memory.current` over `memory.max` — what the container is killed at — or, where the
///   cgroup sets no limit, the process's resident set over a budget;
/// - [`rss_budget`](Self::rss_budget): the resident set (`VmRSS`) over a budget;
/// - [`from_fn`](Self::from_fn): `(used, limit)` from a function of one's own.
pub struct MemoryPressure {
    usage: Box<UsageFn>,
    threshold: f64,
}

impl std::fmt::Debug for MemoryPressure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryPressure")
            .field("usage", &self.usage())
            .field("threshold", &self.threshold)
            .finish()
    }
}

impl MemoryPressure {
    /// The cgroup's usage over its limit; where there is none, the resident set over
    /// `budget` (no pressure at all without a budget).
    pub fn cgroup_or_budget(budget: Option<u64>) -> MemoryPressure {
        let dir = cgroup_dir();
        MemoryPressure::from_fn(move || {
            if let Some(dir) = &dir
                && let (Some(used), Some(limit)) = (
                    read_u64(&dir.join("memory.current")),
                    read_u64(&dir.join("memory.max")),
                )
            {
                return Some((used, limit));
            }
            Some((resident_bytes()?, budget?))
        })
    }

    /// The process's resident set over `budget` bytes.
    pub fn rss_budget(budget: u64) -> MemoryPressure {
        MemoryPressure::from_fn(move || Some((resident_bytes()?, budget)))
    }

    /// `(used, limit)` in bytes from `usage`; `None`: no reading (no pressure).
    pub fn from_fn(
        usage: impl Fn() -> Option<(u64, u64)> + Send + Sync + 'static,
    ) -> MemoryPressure {
        MemoryPressure {
            usage: Box::new(usage),
            threshold: 0.9,
        }
    }

    /// The share of the limit at which the pressure is 1.0. Default: 0.9.
    pub fn threshold(mut self, share: f64) -> MemoryPressure {
        self.threshold = share;
        self
    }

    /// `(used, limit)` now.
    pub fn usage(&self) -> Option<(u64, u64)> {
        (self.usage)()
    }
}

impl Signal for MemoryPressure {
    fn name(&self) -> &str {
        "memory"
    }

    fn pressure(&self) -> f64 {
        match self.usage() {
            Some((used, limit)) if limit > 0 => used as f64 / (limit as f64 * self.threshold),
            _ => 0.0,
        }
    }
}

/// CPU time used against what the process may use: pressure = CPUs busy (the change in CPU
/// time between two samples over the wall time between them) / (CPUs allowed × threshold),
/// threshold 0.9 by default. CPU time and the allowance come from the cgroup (v2:
/// `cpu.stat`'s `usage_usec`, `cpu.max`'s quota / period) when it sets a quota, else from
/// `/proc/self/stat` and the machine's CPUs. The first sample reads no pressure.
pub struct CpuPressure {
    threshold: f64,
    cgroup: Option<PathBuf>,
    last: Mutex<Option<(Instant, f64)>>,
}

impl std::fmt::Debug for CpuPressure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuPressure")
            .field("threshold", &self.threshold)
            .field("allowed_cpus", &self.allowed_cpus())
            .finish()
    }
}

impl Default for CpuPressure {
    fn default() -> Self {
        CpuPressure::new()
    }
}

impl CpuPressure {
    /// The process's (or its cgroup's) CPU use, threshold 0.9.
    pub fn new() -> CpuPressure {
        let cgroup = cgroup_dir().filter(|d| cgroup_quota(d).is_some());
        CpuPressure {
            threshold: 0.9,
            cgroup,
            last: Mutex::new(None),
        }
    }

    /// The share of the allowance at which the pressure is 1.0. Default: 0.9.
    pub fn threshold(mut self, share: f64) -> CpuPressure {
        self.threshold = share;
        self
    }

    /// CPUs the process may keep busy: the cgroup's quota, or the machine's CPUs.
    pub fn allowed_cpus(&self) -> f64 {
        self.cgroup
            .as_deref()
            .and_then(cgroup_quota)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()) as f64)
    }

    /// CPU seconds used so far (by the cgroup when it has a quota, else by the process).
    fn cpu_seconds(&self) -> Option<f64> {
        match &self.cgroup {
            Some(dir) => {
                let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
                let usec = stat
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))?
                    .trim()
                    .parse::<u64>()
                    .ok()?;
                Some(usec as f64 / 1e6)
            }
            None => process_cpu_seconds(),
        }
    }
}

impl Signal for CpuPressure {
    fn name(&self) -> &str {
        "cpu"
    }

    fn pressure(&self) -> f64 {
        let Some(used) = self.cpu_seconds() else {
            return 0.0;
        };
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let previous = last.replace((now, used));
        let Some((then, used_then)) = previous else {
            return 0.0;
        };
        let wall = now.duration_since(then).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        let busy = (used - used_then).max(0.0) / wall;
        busy / (self.allowed_cpus() * self.threshold)
    }
}

/// The process's cgroup v2 directory, from `/proc/self/cgroup`'s `0::/path` line.
fn cgroup_dir() -> Option<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = Path::new("/sys/fs/cgroup").join(path.trim().trim_start_matches('/'));
    dir.join("cgroup.controllers").exists().then_some(dir)
}

/// A file holding one number (`max`, no limit, reads as `None`).
fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `cpu.max`'s `quota period` as CPUs; `None` for `max` (no quota).
fn cgroup_quota(dir: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join("cpu.max")).ok()?;
    let mut parts = text.split_whitespace();
    let quota: f64 = parts.next()?.parse().ok()?;
    let period: f64 = parts.next()?.parse().ok()?;
    (period > 0.0).then(|| quota / period)
}

/// The process's resident set, from `/proc/self/status`'s `VmRSS` (kB).
pub(crate) fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

/// The process's user + system CPU time from `/proc/self/stat` (clock ticks of 1/100 s,
/// Linux's fixed `USER_HZ`).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_readings_are_there_on_linux() {
        let rss = resident_bytes().expect("VmRSS");
        assert!(rss > 1 << 20, "{rss}");
        let before = process_cpu_seconds().expect("/proc/self/stat");
        let mut x = 0u64;
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(process_cpu_seconds().unwrap() >= before);
    }

    #[test]
    fn memory_pressure_is_use_over_the_limits_threshold() {
        let m = MemoryPressure::from_fn(|| Some((450, 1000))).threshold(0.9);
        assert!((m.pressure() - 0.5).abs() < 1e-9);
        let none = MemoryPressure::from_fn(|| None);
        assert_eq!(none.pressure(), 0.0);
    }
}
