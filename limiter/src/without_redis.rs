//! The Redis store when the `redis` feature is off: a type with no values, so no limiter holds
//! one and every Redis path is unreachable — the limiter's protocol names it without gates.

use std::time::Duration;

use floodwall_core::StoreError;

use crate::builder::ConfigError;
use crate::store::{Selected, SharedStore};
use crate::{Decision, Limit, Quota, RateLimiterBuilder};

/// The builder's Redis settings: none without the feature.
#[derive(Default, Clone, Copy)]
pub(crate) struct Settings {
    _none: (),
}

impl Settings {
    /// Never given a Redis store without the feature.
    pub(crate) fn configured(&self) -> bool {
        false
    }
}

/// Never built without the `redis` feature.
pub(crate) enum RedisStore {}

impl SharedStore for RedisStore {
    type Receipt = ();

    fn deadline(&self) -> tokio::time::Instant {
        match *self {}
    }

    fn call_timeout(&self) -> Duration {
        match *self {}
    }

    async fn decide_one(
        &self,
        _: &Limit,
        _: &str,
        _: Quota,
        _: u32,
        _: bool,
        _: tokio::time::Instant,
    ) -> Result<(Decision, ()), StoreError> {
        match *self {}
    }

    async fn decide(
        &self,
        _: &[Limit],
        _: &[Selected<'_>],
        _: u32,
        _: bool,
        _: tokio::time::Instant,
    ) -> Result<Vec<(Decision, ())>, StoreError> {
        match *self {}
    }

    async fn refund(
        &self,
        _: &[Limit],
        _: &[Selected<'_>],
        _: &[(Decision, ())],
        _: tokio::time::Instant,
    ) {
        match *self {}
    }

    async fn take(
        &self,
        _: &Limit,
        _: &str,
        _: Quota,
        _: u32,
        _: tokio::time::Instant,
    ) -> Result<Decision, StoreError> {
        match *self {}
    }

    async fn give_back(
        &self,
        _: &Limit,
        _: &str,
        _: Quota,
        _: u32,
        _: tokio::time::Instant,
    ) -> Result<(), StoreError> {
        match *self {}
    }
}

impl RateLimiterBuilder {
    /// No Redis store without the feature.
    pub(crate) fn redis_store(&mut self) -> Result<Option<RedisStore>, ConfigError> {
        let Settings { .. } = self.redis;
        Ok(None)
    }
}

/// The concurrency limit's holders on Redis: types with no values without the feature, so a
/// limit never holds one and every path through them is unreachable.
pub(crate) mod concurrency {
    use std::time::Duration;

    use floodwall_core::StoreError;

    /// Never built without the `redis` feature.
    pub(crate) enum Holders {}

    /// Never built without the `redis` feature.
    pub(crate) enum Held {}

    impl Holders {
        pub(crate) async fn acquire(
            &self,
            _key: &str,
            _limit: u32,
            _lease: Duration,
        ) -> Result<Result<Held, u32>, StoreError> {
            match *self {}
        }
    }

    impl Held {
        pub(crate) fn release(self) {
            match self {}
        }
    }
}
