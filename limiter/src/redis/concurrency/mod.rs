//! The holders on Redis: one sorted set per key (member: permit id, score: lease end), taken
//! by `acquire.lua`, renewed by `renew.lua` while the request runs, freed by `release.lua`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use floodwall_core::redis::{Script, StoreOptions, StorePath};
use floodwall_core::{Key, Keyspace, StoreError};

static ACQUIRE: Script = Script::new(include_str!("acquire.lua"));
static RENEW: Script = Script::new(include_str!("renew.lua"));
static RELEASE: Script = Script::new(include_str!("release.lua"));

/// The keyspace namespace unless the [`StoreOptions`] name another.
pub(crate) const DEFAULT_NAMESPACE: &str = "fw-conc";

pub(crate) struct Holders {
    path: StorePath,
    /// This instance's part of every permit id (random per process and limit).
    instance: u64,
    next: AtomicU64,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Holders {
    pub(crate) fn new(options: StoreOptions) -> Holders {
        use std::hash::BuildHasher;
        Holders {
            path: options.open(Keyspace::new(DEFAULT_NAMESPACE, 1).expect("a valid namespace")),
            instance: std::collections::hash_map::RandomState::new().hash_one(0u8),
            next: AtomicU64::new(0),
        }
    }

    /// One slot of `limit` for `key`: `Ok(Ok(held))`, `Ok(Err(in flight))` when full, `Err`
    /// when the store failed (within its call bound).
    pub(crate) async fn acquire(
        &self,
        key: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<Result<Held, u32>, StoreError> {
        let k = self.path.keyspace().key(key).build();
        let id = format!(
            "{:016x}:{}",
            self.instance,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let call = ACQUIRE
            .call()
            .key(&k)
            .arg(&id)
            .arg(limit)
            .arg(millis(lease));
        let (taken, holders): (i64, i64) = self.path.invoke(call).await?;
        if taken != 1 {
            return Ok(Err(u32::try_from(holders).unwrap_or(u32::MAX)));
        }
        Ok(Ok(Held::start(self.path.clone(), k, id, lease)))
    }
}

/// A slot held in Redis, its lease renewed every third of it until released.
pub(crate) struct Held {
    path: StorePath,
    key: Key,
    id: String,
    heartbeat: Option<tokio::task::AbortHandle>,
}

impl Held {
    fn start(path: StorePath, key: Key, id: String, lease: Duration) -> Held {
        let heartbeat = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let (path, key, id) = (path.clone(), key.clone(), id.clone());
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    let renew = RENEW.call().key(&key).arg(&id).arg(millis(lease));
                    match path.invoke_held::<i64>(renew).await {
                        Ok(1) => {}
                        Ok(_) => {
                            tracing::warn!(key = key.as_str(), "concurrency slot lost: its lease ended before a renewal landed");
                            return;
                        }
                        Err(e) => {
                            tracing::debug!(key = key.as_str(), error = %e, "concurrency lease renewal failed");
                        }
                    }
                }
            })
            .abort_handle()
        });
        Held {
            path,
            key,
            id,
            heartbeat,
        }
    }

    /// Stops the heartbeat and frees the slot (in the background; if it cannot, the lease
    /// frees it).
    pub(crate) fn release(mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let Held { path, key, id, .. } = self;
            rt.spawn(async move {
                let call = RELEASE.call().key(&key).arg(&id);
                if let Err(e) = path.invoke_held::<i64>(call).await {
                    tracing::debug!(key = key.as_str(), error = %e, "concurrency slot not released; its lease will free it");
                }
            });
        }
    }
}
