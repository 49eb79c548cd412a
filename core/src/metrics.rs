//! One way for every floodwall crate to reach the `metrics` facade (feature `metrics`):
//! [`recorder_installed`], and [`Bound`] handles bound once — at construction when a recorder
//! is installed already, else at the first event after one was — so a hot path only bumps an
//! existing handle.
//!
//! ```
//! use floodwall_core::metrics::Bound;
//!
//! fn describe() {} // registers descriptions once a recorder exists
//! let calls: Bound<metrics::Counter> = Bound::new("payments", |name| {
//!     metrics::counter!("my_calls_total", "name" => name.to_owned())
//! }, describe);
//! // No recorder installed in this doctest: events go nowhere, as with the macros.
//! assert!(calls.get().is_none());
//! ```

use std::sync::OnceLock;
use std::time::Instant;

use metrics::Histogram;

/// Whether a real recorder is installed (globally or for this thread): the no-op recorder the
/// facade falls back to is zero-sized, every real recorder holds state.
#[inline]
pub fn recorder_installed() -> bool {
    metrics::with_recorder(|r| std::mem::size_of_val(r) != 0)
}

/// A primitive's handles, bound to the recorder as soon as one is installed: at construction
/// when it already is (so every series exists from then on, at zero), else at the first event
/// after it was. Events before any recorder existed go nowhere, as with the `metrics` macros.
/// Once bound, an event is one `OnceLock` read and the handle's own update: no lock, no
/// allocation.
pub struct Bound<H> {
    name: Box<str>,
    handles: OnceLock<H>,
    make: fn(&str) -> H,
    describe: fn(),
}

impl<H> Bound<H> {
    /// Handles for the primitive `name`, made by `make`; `describe` registers the crate's
    /// metric descriptions when they are bound.
    pub fn new(name: &str, make: fn(&str) -> H, describe: fn()) -> Self {
        let bound = Bound {
            name: name.into(),
            handles: OnceLock::new(),
            make,
            describe,
        };
        let _ = bound.get();
        bound
    }

    /// The handles, binding them now if a recorder has been installed since.
    #[inline]
    pub fn get(&self) -> Option<&H> {
        match self.handles.get() {
            Some(h) => Some(h),
            None => self.bind(),
        }
    }

    #[cold]
    fn bind(&self) -> Option<&H> {
        if !recorder_installed() {
            return None;
        }
        (self.describe)();
        Some(self.handles.get_or_init(|| (self.make)(&self.name)))
    }

    /// The handles, and whether this call bound them (so gauges must be brought up to date).
    pub fn bind_fresh(&self) -> Option<(&H, bool)> {
        if let Some(h) = self.handles.get() {
            return Some((h, false));
        }
        self.bind().map(|h| (h, true))
    }
}

impl<H> std::fmt::Debug for Bound<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("name", &self.name)
            .field("bound", &self.handles.get().is_some())
            .finish()
    }
}

/// Handles that include a call-duration histogram.
pub trait Timed {
    /// The histogram of call durations, in seconds.
    fn duration(&self) -> &Histogram;
}

impl<H: Timed> Bound<H> {
    /// When a measured call starts, if anyone is recording.
    #[inline]
    pub fn start(&self) -> Option<Instant> {
        self.get().map(|_| Instant::now())
    }

    /// Records how long the call that started at `started` took.
    #[inline]
    pub fn finish(&self, started: Option<Instant>) {
        if let Some(t) = started
            && let Some(h) = self.get()
        {
            h.duration().record(t.elapsed().as_secs_f64());
        }
    }
}
