//! Limit algorithms: AIMD and Gradient2.

use std::time::Duration;

/// One finished call, as a limit algorithm sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// How long the call took.
    pub rtt: Duration,
    /// Calls in flight when it started (itself included).
    pub in_flight: usize,
    /// Whether it was dropped: failed in a way that signals overload (a timeout, a 503).
    pub dropped: bool,
}

/// Computes the next concurrency limit from the current one and a sample.
pub trait LimitAlgorithm: Send + 'static {
    /// The limit to start with.
    fn initial_limit(&self) -> usize;
    /// The limit after `sample`.
    fn update(&mut self, limit: usize, sample: Sample) -> usize;
}

/// Additive increase, multiplicative decrease (Netflix concurrency-limits' `AIMDLimit`).
///
/// ```text
/// dropped or rtt > timeout        : limit = max(min, floor(limit * backoff_ratio))
/// else if 2 * in_flight >= limit  : limit = min(max, limit + 1)
/// else                            : limit unchanged (the limit is not what holds calls back)
/// ```
///
/// Invariant: `min <= limit <= max` after every update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aimd {
    /// Starting limit. Default: 20.
    pub initial: usize,
    /// Lower bound. Default: 1.
    pub min: usize,
    /// Upper bound. Default: 200.
    pub max: usize,
    /// Factor applied on a drop, in `(0, 1)`. Default: 0.9.
    pub backoff_ratio: f64,
    /// A slower call counts as dropped. Default: 5 s.
    pub timeout: Duration,
}

impl Default for Aimd {
    fn default() -> Self {
        Aimd {
            initial: 20,
            min: 1,
            max: 200,
            backoff_ratio: 0.9,
            timeout: Duration::from_secs(5),
        }
    }
}

impl LimitAlgorithm for Aimd {
    fn initial_limit(&self) -> usize {
        self.initial.clamp(self.min.max(1), self.max.max(1))
    }

    fn update(&mut self, limit: usize, s: Sample) -> usize {
        let (min, max) = (self.min.max(1), self.max.max(self.min.max(1)));
        let next = if s.dropped || s.rtt > self.timeout {
            (limit as f64 * self.backoff_ratio.clamp(0.0, 1.0)).floor() as usize
        } else if s.in_flight.saturating_mul(2) >= limit {
            limit.saturating_add(1)
        } else {
            limit
        };
        next.clamp(min, max)
    }
}

/// Netflix concurrency-limits' `Gradient2Limit`: compare the latest RTT with a long-term
/// average and shrink the limit when calls get slower than the average allows.
///
/// ```text
/// long_rtt   = exponential average of rtt over `long_window` samples
///              (decayed by 5% per sample while long_rtt > 2 * rtt, so it follows load drops)
/// if not dropped and in_flight < limit / 2: limit unchanged (application-limited)
/// gradient   = clamp(tolerance * long_rtt / rtt, 0.5, 1.0)   (0.5 when dropped)
/// target     = limit * gradient + queue_size
/// limit      = clamp(round(limit * (1 - smoothing) + target * smoothing), min, max)
/// ```
///
/// Invariant: `min <= limit <= max`; the limit only grows (by at most
/// `smoothing * queue_size` per sample) while rtt stays within `tolerance` of the average.
/// Configured by [`Gradient2Config`].
#[derive(Debug, Clone, PartialEq)]
pub struct Gradient2 {
    config: Gradient2Config,
    long_rtt: Option<f64>,
}

/// The settings of [`Gradient2`]; defaults are Netflix's.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradient2Config {
    /// Starting limit. Default: 20.
    pub initial: usize,
    /// Lower bound. Default: 20.
    pub min: usize,
    /// Upper bound. Default: 200.
    pub max: usize,
    /// Weight of each new target, in `(0, 1]`. Default: 0.2.
    pub smoothing: f64,
    /// How much slower than the average a call may be before the limit shrinks. Default: 1.5.
    pub tolerance: f64,
    /// Samples in the long-term average. Default: 600.
    pub long_window: usize,
    /// Headroom added to the target. Default: 4.
    pub queue_size: usize,
}

impl Default for Gradient2Config {
    fn default() -> Self {
        Gradient2Config {
            initial: 20,
            min: 20,
            max: 200,
            smoothing: 0.2,
            tolerance: 1.5,
            long_window: 600,
            queue_size: 4,
        }
    }
}

impl Default for Gradient2 {
    fn default() -> Self {
        Gradient2::new(Gradient2Config::default())
    }
}

impl Gradient2 {
    /// Gradient2 with these settings.
    pub fn new(config: Gradient2Config) -> Self {
        Gradient2 {
            config,
            long_rtt: None,
        }
    }

    /// The long-term average RTT, once a sample was seen.
    pub fn long_rtt(&self) -> Option<Duration> {
        self.long_rtt.map(Duration::from_secs_f64)
    }
}

impl LimitAlgorithm for Gradient2 {
    fn initial_limit(&self) -> usize {
        let c = &self.config;
        c.initial.clamp(c.min.max(1), c.max.max(1))
    }

    fn update(&mut self, limit: usize, s: Sample) -> usize {
        let c = &self.config;
        let (min, max) = (c.min.max(1), c.max.max(c.min.max(1)));
        let rtt = s.rtt.as_secs_f64().max(1e-9);
        let k = 2.0 / (c.long_window.max(1) as f64 + 1.0);
        let mut long = match self.long_rtt {
            None => rtt,
            Some(l) => l * (1.0 - k) + rtt * k,
        };
        if long > 2.0 * rtt {
            long *= 0.95;
        }
        self.long_rtt = Some(long);
        if !s.dropped && s.in_flight.saturating_mul(2) < limit {
            return limit.clamp(min, max);
        }
        let gradient = if s.dropped {
            0.5
        } else {
            (c.tolerance * long / rtt).clamp(0.5, 1.0)
        };
        let target = limit as f64 * gradient + c.queue_size as f64;
        let smoothing = c.smoothing.clamp(f64::MIN_POSITIVE, 1.0);
        let next = (limit as f64 * (1.0 - smoothing) + target * smoothing).round();
        (next.max(0.0) as usize).clamp(min, max)
    }
}

/// Netflix concurrency-limits' `VegasLimit` (after TCP Vegas): estimate the queue from how
/// much slower calls are than the fastest seen, and keep it small.
///
/// ```text
/// rtt_noload = the smallest rtt seen
/// queue      = ceil(limit * (1 - rtt_noload / rtt))
/// with l = log10(limit):  alpha = 3l, beta = 6l, threshold = l
/// dropped                                    : limit - l
/// in_flight < limit / 2                      : unchanged (application-limited)
/// queue <= threshold                         : limit + beta
/// queue <  alpha                             : limit + l
/// queue >  beta                              : limit - l
/// otherwise                                  : unchanged
/// limit = clamp(round(new), min, max)
/// ```
///
/// Invariant: `min <= limit <= max`; at equilibrium the estimated queue lies in
/// `[alpha, beta]`, a few calls beyond what the downstream serves at its best latency.
#[derive(Debug, Clone, PartialEq)]
pub struct Vegas {
    /// Starting limit. Default: 20.
    pub initial: usize,
    /// Lower bound. Default: 1.
    pub min: usize,
    /// Upper bound. Default: 1000.
    pub max: usize,
    rtt_noload: Option<Duration>,
}

impl Default for Vegas {
    fn default() -> Self {
        Vegas {
            initial: 20,
            min: 1,
            max: 1000,
            rtt_noload: None,
        }
    }
}

impl Vegas {
    /// Vegas between `min` and `max`, starting at `initial`.
    pub fn new(initial: usize, min: usize, max: usize) -> Self {
        Vegas {
            initial,
            min,
            max,
            rtt_noload: None,
        }
    }

    /// The smallest RTT seen so far.
    pub fn rtt_noload(&self) -> Option<Duration> {
        self.rtt_noload
    }
}

impl LimitAlgorithm for Vegas {
    fn initial_limit(&self) -> usize {
        self.initial.clamp(self.min.max(1), self.max.max(1))
    }

    fn update(&mut self, limit: usize, s: Sample) -> usize {
        let (min, max) = (self.min.max(1), self.max.max(self.min.max(1)));
        let noload = match self.rtt_noload {
            Some(n) if n <= s.rtt => n,
            _ => {
                self.rtt_noload = Some(s.rtt);
                s.rtt
            }
        };
        let l = (limit.max(1) as f64).log10().max(1.0);
        let next = if s.dropped {
            limit as f64 - l
        } else if s.in_flight.saturating_mul(2) < limit {
            return limit.clamp(min, max);
        } else {
            let rtt = s.rtt.as_secs_f64().max(1e-9);
            let queue = (limit as f64 * (1.0 - noload.as_secs_f64() / rtt)).ceil();
            let (alpha, beta, threshold) = (3.0 * l, 6.0 * l, l);
            if queue <= threshold {
                limit as f64 + beta
            } else if queue < alpha {
                limit as f64 + l
            } else if queue > beta {
                limit as f64 - l
            } else {
                limit as f64
            }
        };
        (next.round().max(0.0) as usize).clamp(min, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ms: u64, in_flight: usize, dropped: bool) -> Sample {
        Sample {
            rtt: Duration::from_millis(ms),
            in_flight,
            dropped,
        }
    }

    #[test]
    fn vegas_formula() {
        let mut v = Vegas::default();
        // Baseline 10 ms; at limit 100, l = 2, alpha 6, beta 12, threshold 2.
        assert_eq!(v.update(100, s(10, 100, false)), 112, "no queue: + beta");
        assert_eq!(v.update(100, s(10, 10, false)), 100, "application-limited");
        // queue = ceil(100 * (1 - 10/10.5)) = 5 < alpha: + l
        assert_eq!(
            v.update(
                100,
                Sample {
                    rtt: Duration::from_micros(10_500),
                    in_flight: 100,
                    dropped: false
                }
            ),
            102
        );
        // queue = ceil(100 * (1 - 10/11)) = 10, within [alpha, beta]: unchanged
        assert_eq!(v.update(100, s(11, 100, false)), 100);
        // queue = 50 > beta: - l
        assert_eq!(v.update(100, s(20, 100, false)), 98);
        assert_eq!(v.update(100, s(10, 100, true)), 98, "drop: - l");
        assert_eq!(v.rtt_noload(), Some(Duration::from_millis(10)));
    }

    #[test]
    fn aimd_formula() {
        let mut a = Aimd::default();
        assert_eq!(a.update(20, s(10, 10, false)), 21);
        assert_eq!(a.update(20, s(10, 9, false)), 20, "limit not in use");
        assert_eq!(a.update(20, s(10, 20, true)), 18);
        assert_eq!(
            a.update(20, s(6000, 20, false)),
            18,
            "slow counts as dropped"
        );
        assert_eq!(a.update(1, s(10, 1, true)), 1, "never below min");
        assert_eq!(a.update(200, s(10, 200, false)), 200, "never above max");
    }

    #[test]
    fn gradient2_shrinks_on_slowdown_and_regrows() {
        let mut g = Gradient2::default();
        let mut limit = 50;
        for _ in 0..200 {
            limit = g.update(limit, s(10, limit, false));
        }
        let grown = limit;
        assert!(grown > 50, "steady latency lets the limit grow: {grown}");
        for _ in 0..20 {
            limit = g.update(limit, s(40, limit, false));
        }
        assert!(
            limit < grown,
            "a 4x slowdown shrinks the limit: {limit} < {grown}"
        );
        let low = limit;
        for _ in 0..400 {
            limit = g.update(limit, s(10, limit, false));
        }
        assert!(
            limit > low,
            "recovers once latency is back: {limit} > {low}"
        );
        assert!(limit <= 200);
        assert_eq!(
            g.update(100, s(10, 10, false)),
            100,
            "application-limited: unchanged"
        );
        assert!(g.update(100, s(10, 100, true)) < 100, "a drop shrinks it");
    }
}
