//! The holders on Redis when the `redis` feature is off: types with no values, so a limit can
//! never hold one and every path through them is unreachable — the module the concurrency
//! limit calls needs no gate of its own.

use std::time::Duration;

use floodwall_core::StoreError;

/// Never built without the `redis` feature.
pub(super) enum Holders {}

/// Never built without the `redis` feature.
pub(super) enum Held {}

impl Holders {
    pub(super) async fn acquire(
        &self,
        _key: &str,
        _limit: u32,
        _lease: Duration,
    ) -> Result<Result<Held, u32>, StoreError> {
        match *self {}
    }
}

impl Held {
    pub(super) fn release(self) {
        match self {}
    }
}
