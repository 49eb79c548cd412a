//! The Redis store when the `redis` feature is off: types with no values, so no limiter holds
//! one and every Redis path is unreachable — the limiter's protocol names them without gates.

use crate::builder::ConfigError;
use crate::limiter::Descriptor;
use crate::{LimitError, Quota, RateLimiter, RateLimiterBuilder, Verdict};

/// The builder's Redis settings: none without the feature.
#[derive(Default, Clone, Copy)]
pub(crate) struct Settings {
    _none: (),
}

/// Never built without the `redis` feature.
pub(crate) enum RedisStore {}

/// Never built without the `redis` feature.
pub(crate) enum Leases {}

/// Never built without the `redis` feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lease {}

impl Lease {
    pub(crate) fn quota(&self, _: Quota) -> Option<Quota> {
        match *self {}
    }
}

impl RateLimiter {
    pub(crate) async fn decide_on_redis(
        &self,
        redis: &RedisStore,
        _: Descriptor<'_, '_>,
        _: u32,
        _: bool,
    ) -> Result<Verdict, LimitError> {
        match *redis {}
    }
}

impl RateLimiterBuilder {
    /// No Redis store without the feature; no limit has a lease.
    pub(crate) fn redis_store(
        &mut self,
    ) -> Result<(Option<RedisStore>, Vec<Option<Leases>>), ConfigError> {
        let Settings { .. } = self.redis;
        Ok((None, self.limits.iter().map(|_| None).collect()))
    }
}
