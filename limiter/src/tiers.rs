//! Quotas per key: fixed, or by tier (free, premium, ...), changeable at run time.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use crate::Quota;

/// Maps a key to the quota that applies to it; `None` means no limit applies to that key
/// (an unlimited tier, an allow-listed client).
///
/// Called on every decision: keep it cheap. [`Quota`] itself is a resolver that gives every
/// key the same quota; [`Tiers`] maps keys to named tiers.
pub trait QuotaResolver: Send + Sync + 'static {
    /// The quota for `key`.
    fn quota(&self, key: &str) -> Option<Quota>;

    /// The one quota every key gets, if this resolver never varies it (a [`Quota`] does);
    /// lets a limit prepare its arithmetic once. Default: `None`.
    fn fixed(&self) -> Option<Quota> {
        None
    }
}

impl QuotaResolver for Quota {
    #[inline]
    fn quota(&self, _key: &str) -> Option<Quota> {
        Some(*self)
    }

    fn fixed(&self) -> Option<Quota> {
        Some(*self)
    }
}

impl<F> QuotaResolver for F
where
    F: Fn(&str) -> Option<Quota> + Send + Sync + 'static,
{
    fn quota(&self, key: &str) -> Option<Quota> {
        self(key)
    }
}

/// Named tiers, each with a quota, and the keys assigned to them; everything can change at
/// run time (from an admin endpoint, a config watcher, a billing webhook), and the next
/// decision uses the new quota. Cheap to clone; clones share the tiers.
///
/// A tier set to `None` is unlimited. Keys not assigned to a tier get the default tier.
///
/// What a key has used carries over a quota change: window counts stay counted, and GCRA,
/// whose state is a time, keeps what the key owes as time (a key that emptied its bucket under
/// the old quota waits at most what it owed there before the new burst applies).
///
/// ```
/// use std::num::NonZeroU32;
/// use floodwall_limiter::{Quota, QuotaResolver, Tiers};
///
/// let n = |v| NonZeroU32::new(v).unwrap();
/// let tiers = Tiers::new("free", Quota::per_minute(n(60)))
///     .with_tier("premium", Quota::per_minute(n(600)));
/// tiers.assign("user-7", "premium");
/// assert_eq!(tiers.quota("user-7"), Some(Quota::per_minute(n(600))));
/// assert_eq!(tiers.quota("user-8"), Some(Quota::per_minute(n(60))));
///
/// // A price change, live:
/// tiers.set_quota("premium", Some(Quota::per_minute(n(1200))));
/// assert_eq!(tiers.quota("user-7"), Some(Quota::per_minute(n(1200))));
/// ```
#[derive(Clone)]
pub struct Tiers {
    inner: Arc<RwLock<TiersInner>>,
}

struct TiersInner {
    default_tier: Arc<str>,
    quotas: HashMap<Arc<str>, Option<Quota>>,
    members: HashMap<Box<str>, Arc<str>>,
}

impl Tiers {
    /// Tiers with one tier, `default_tier`, given to every key not assigned elsewhere.
    pub fn new(default_tier: &str, quota: Quota) -> Tiers {
        let default_tier: Arc<str> = default_tier.into();
        let mut quotas = HashMap::new();
        quotas.insert(default_tier.clone(), Some(quota));
        Tiers {
            inner: Arc::new(RwLock::new(TiersInner {
                default_tier,
                quotas,
                members: HashMap::new(),
            })),
        }
    }

    /// Adds (or replaces) a tier.
    pub fn with_tier(self, tier: &str, quota: impl Into<Option<Quota>>) -> Tiers {
        self.set_quota(tier, quota.into());
        self
    }

    /// Sets a tier's quota (`None`: unlimited), creating the tier if needed.
    pub fn set_quota(&self, tier: &str, quota: Option<Quota>) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.quotas.insert(tier.into(), quota);
    }

    /// Puts `key` in `tier` (which need not exist yet: until it does, the key gets the
    /// default tier).
    pub fn assign(&self, key: &str, tier: &str) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let tier = match inner.quotas.get_key_value(tier) {
            Some((t, _)) => t.clone(),
            None => tier.into(),
        };
        inner.members.insert(key.into(), tier);
    }

    /// Returns `key` to the default tier.
    pub fn unassign(&self, key: &str) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.members.remove(key);
    }

    /// The tier `key` is in.
    pub fn tier_of(&self, key: &str) -> Arc<str> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        match inner.members.get(key) {
            Some(t) if inner.quotas.contains_key(t) => t.clone(),
            _ => inner.default_tier.clone(),
        }
    }
}

impl QuotaResolver for Tiers {
    fn quota(&self, key: &str) -> Option<Quota> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if let Some(tier) = inner.members.get(key)
            && let Some(q) = inner.quotas.get(tier)
        {
            return *q;
        }
        inner.quotas.get(&inner.default_tier).copied().flatten()
    }
}

impl fmt::Debug for Tiers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("Tiers")
            .field("default_tier", &inner.default_tier)
            .field("quotas", &inner.quotas)
            .field("assigned_keys", &inner.members.len())
            .finish()
    }
}
