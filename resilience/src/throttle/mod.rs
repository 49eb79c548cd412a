//! Client-side adaptive throttling (Google SRE book, "Handling Overload"): a client that sees
//! its backend reject requests rejects some of its own requests locally, so an overloaded
//! backend is not hammered by requests (and retries) it would only turn away.
//!
//! # Formula and invariant
//!
//! Over a sliding window (default 2 minutes, in 10 buckets) the throttle counts `requests`
//! (every call asked for, locally rejected ones included) and `accepts` (calls the backend
//! accepted). Each new call is rejected locally with probability
//!
//! ```text
//! p = max(0, (requests − K · accepts) / (requests + 1))
//! ```
//!
//! `K` (default 2) is how many requests per accepted one the client may send: while the
//! backend accepts everything, `requests ≤ K · accepts` and nothing is rejected; when it
//! accepts only some, what the client sends settles near `K` times what it accepts. A locally
//! rejected call is [`Throttled`]; it was not sent, so it is never the backend's load.
//!
//! The hot path reads and bumps atomics only: no lock, no allocation.
//!
//! ```
//! use floodwall_resilience::throttle::AdaptiveThrottle;
//!
//! let throttle = AdaptiveThrottle::builder().build().unwrap();
//! match throttle.try_acquire() {
//!     Ok(permit) => {
//!         let backend_accepted = true; // e.g. not a 429 / 503
//!         if backend_accepted { permit.accepted() } else { permit.rejected() }
//!     }
//!     Err(throttled) => println!("not sent: {throttled}"),
//! }
//! ```

mod metrics;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use floodwall_core::{Clock, SystemClock};

/// Buckets of the sliding window.
const BUCKETS: usize = 10;

/// A call the throttle rejected locally: it was not sent.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("throttled locally: the backend accepted too few recent requests (rejecting {:.0} % now)", .probability * 100.0)]
pub struct Throttled {
    /// The rejection probability the call was drawn against.
    pub probability: f64,
}

/// A refused [`AdaptiveThrottleBuilder`] setting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid AdaptiveThrottle `{field}`: {why}")]
pub struct ThrottleConfigError {
    /// The setting.
    pub field: &'static str,
    /// What is wrong with it.
    pub why: &'static str,
}

/// Builds an [`AdaptiveThrottle`]; defaults follow the SRE book.
#[must_use = "a builder does nothing until `build` is called"]
pub struct AdaptiveThrottleBuilder {
    name: Arc<str>,
    k: f64,
    window: Duration,
    clock: Option<Arc<dyn Clock>>,
}

impl fmt::Debug for AdaptiveThrottleBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveThrottleBuilder")
            .field("k", &self.k)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl AdaptiveThrottleBuilder {
    /// A name: the `throttle` label of `floodwall_throttle_rejected_total` (feature
    /// `metrics`). Default: `"default"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Requests the client may send per request the backend accepts, at least 1. Default: 2
    /// (lower rejects sooner; higher wastes more of the backend's work on rejections).
    pub fn k(mut self, k: f64) -> Self {
        self.k = k;
        self
    }

    /// The span of history the counts cover. Default: 2 minutes. At least 10 ms.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The clock the window runs on. Default: the system clock.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<AdaptiveThrottle, ThrottleConfigError> {
        if !(self.k.is_finite() && self.k >= 1.0) {
            return Err(ThrottleConfigError {
                field: "k",
                why: "must be a finite number of at least 1",
            });
        }
        if self.window < Duration::from_millis(10) {
            return Err(ThrottleConfigError {
                field: "window",
                why: "must be at least 10 ms",
            });
        }
        let bucket_nanos =
            (floodwall_core::clock::duration_to_nanos(self.window) / BUCKETS as u64).max(1);
        Ok(AdaptiveThrottle {
            inner: Arc::new(Inner {
                metrics: self::metrics::ThrottleMetrics::new(&self.name),
                k: self.k,
                bucket_nanos,
                clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock::new())),
                buckets: std::array::from_fn(|_| Bucket::default()),
            }),
        })
    }
}

/// Client-side adaptive throttling. See the [module docs](self). Cheap to clone; clones
/// share the counts.
#[derive(Clone)]
pub struct AdaptiveThrottle {
    inner: Arc<Inner>,
}

struct Inner {
    metrics: self::metrics::ThrottleMetrics,
    k: f64,
    bucket_nanos: u64,
    clock: Arc<dyn Clock>,
    buckets: [Bucket; BUCKETS],
}

#[derive(Default)]
struct Bucket {
    /// Which slice of time (clock / bucket length) the counts belong to.
    epoch: AtomicU64,
    requests: AtomicU64,
    accepts: AtomicU64,
}

impl fmt::Debug for AdaptiveThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (requests, accepts) = self.counts();
        f.debug_struct("AdaptiveThrottle")
            .field("k", &self.inner.k)
            .field("requests", &requests)
            .field("accepts", &accepts)
            .finish()
    }
}

/// Permission to send one call; say how the backend answered with
/// [`accepted`](Self::accepted) or [`rejected`](Self::rejected). Dropped unreported, the
/// call counts as rejected (it did not get through).
#[must_use = "report how the backend answered"]
pub struct ThrottlePermit {
    inner: Arc<Inner>,
}

impl fmt::Debug for ThrottlePermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottlePermit").finish_non_exhaustive()
    }
}

impl ThrottlePermit {
    /// The backend accepted the call.
    pub fn accepted(self) {
        self.inner.bucket().accepts.fetch_add(1, Ordering::Relaxed);
    }

    /// The backend rejected the call (overloaded: a `429`, a `503`, a timeout).
    pub fn rejected(self) {}
}

impl AdaptiveThrottle {
    /// A builder: `K` = 2, a 2-minute window, the system clock.
    pub fn builder() -> AdaptiveThrottleBuilder {
        AdaptiveThrottleBuilder {
            name: Arc::from("default"),
            k: 2.0,
            window: Duration::from_secs(120),
            clock: None,
        }
    }

    /// Asks to send one call: counted as a request, then rejected locally with the
    /// probability of the [formula](self), or admitted.
    pub fn try_acquire(&self) -> Result<ThrottlePermit, Throttled> {
        let p = self.reject_probability();
        self.inner.bucket().requests.fetch_add(1, Ordering::Relaxed);
        if p > 0.0 && rand::random::<f64>() < p {
            self.inner.metrics.rejected();
            return Err(Throttled { probability: p });
        }
        Ok(ThrottlePermit {
            inner: self.inner.clone(),
        })
    }

    /// The probability a call asked for now is rejected locally.
    pub fn reject_probability(&self) -> f64 {
        let (requests, accepts) = self.counts();
        let excess = requests as f64 - self.inner.k * accepts as f64;
        (excess / (requests as f64 + 1.0)).max(0.0)
    }

    /// `(requests, accepts)` within the window now.
    pub fn counts(&self) -> (u64, u64) {
        let inner = &*self.inner;
        let now = inner.epoch();
        let (mut requests, mut accepts) = (0, 0);
        for b in &inner.buckets {
            let epoch = b.epoch.load(Ordering::Acquire);
            if now.saturating_sub(epoch) < BUCKETS as u64 {
                requests += b.requests.load(Ordering::Relaxed);
                accepts += b.accepts.load(Ordering::Relaxed);
            }
        }
        (requests, accepts)
    }
}

impl Inner {
    fn epoch(&self) -> u64 {
        self.clock.now_nanos() / self.bucket_nanos
    }

    /// The current bucket, cleared first if it still holds an older slice's counts.
    fn bucket(&self) -> &Bucket {
        let now = self.epoch();
        let b = &self.buckets[(now % BUCKETS as u64) as usize];
        let seen = b.epoch.load(Ordering::Acquire);
        if seen != now
            && b.epoch
                .compare_exchange(seen, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // A count that raced the reset may be lost or kept: the window is statistics.
            b.requests.store(0, Ordering::Relaxed);
            b.accepts.store(0, Ordering::Relaxed);
        }
        b
    }
}
