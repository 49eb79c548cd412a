//! Permits: one admitted call and how it went.

use std::fmt;

use super::{Cause, CircuitBreaker, Outcome, RawPermit};

/// Permission to make one call. Record how it went with [`success`](Permit::success),
/// [`failure`](Permit::failure), [`ignore`](Permit::ignore) or [`record`](Permit::record);
/// dropping it unrecorded counts as ignored.
#[must_use = "record the call's outcome, or the permit counts as ignored"]
pub struct Permit<'a> {
    pub(super) breaker: &'a CircuitBreaker,
    pub(super) raw: RawPermit,
}

impl Permit<'_> {
    /// Records `outcome`; the call's duration is measured from when the permit was issued.
    #[inline]
    pub fn record(self, outcome: Outcome) {
        // Recorded here, so the drop (which would record `Ignored`) must not run.
        let this = std::mem::ManuallyDrop::new(self);
        this.breaker.record_raw(this.raw, outcome);
    }

    /// Records `outcome`; if it trips the breaker, `cause` is asked for the error to keep as
    /// the rejections' [`cause`](super::Rejected::cause).
    #[inline]
    pub(crate) fn record_with(self, outcome: Outcome, cause: impl FnOnce() -> Option<Cause>) {
        let this = std::mem::ManuallyDrop::new(self);
        this.breaker.record_with(this.raw, outcome, cause);
    }

    /// Records a failure caused by `cause`; if it trips the breaker, the rejections that
    /// follow carry it as their [`cause`](super::Rejected::cause).
    pub fn failure_with(self, cause: Cause) {
        self.record_with(Outcome::Failure, || Some(cause))
    }

    /// Records a success.
    #[inline]
    pub fn success(self) {
        self.record(Outcome::Success)
    }

    /// Records a failure.
    #[inline]
    pub fn failure(self) {
        self.record(Outcome::Failure)
    }

    /// Records nothing; a half-open probe slot is handed back.
    pub fn ignore(self) {
        self.record(Outcome::Ignored)
    }

    /// Whether this permit is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.raw.probe
    }
}

impl Drop for Permit<'_> {
    #[inline]
    fn drop(&mut self) {
        self.breaker.record_raw(self.raw, Outcome::Ignored);
    }
}

impl fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.breaker.name())
            .field("probe", &self.raw.probe)
            .finish()
    }
}
