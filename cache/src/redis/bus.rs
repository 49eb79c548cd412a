//! The invalidation bus: a subscriber task per cache instance that drops L1 entries other
//! instances changed, and distrusts L1 while its subscription is down: no hits from it, but
//! its last known values still stand in for a failing load (fail-safe) — they are dropped
//! when the subscription comes back, since anything may have been missed meanwhile.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use floodwall_core::task::{Exit, Task, supervised};

use super::Adapter;

/// What an invalidation message asks of an instance's L1.
#[derive(Debug)]
pub(crate) enum Drop<K> {
    /// One key.
    Key(K),
    /// Everything (namespace bumped, or the subscription back after a loss).
    All,
    /// A cache tag's new version.
    Tag(String, u64),
    /// The subscription is lost: L1 is distrusted until it is back (then `All`).
    Down,
}

impl<K, V, C> Adapter<K, V, C>
where
    K: std::str::FromStr + Send + 'static,
{
    /// Starts the subscriber task (if pub/sub is on and a runtime is running): `on_drop` is
    /// called for every invalidation received from another instance, with `Down` when the
    /// subscription goes down and with `All` when it is (back) up. Both the subscriber and
    /// the heartbeat run supervised ([`floodwall_core::task`]): a subscriber that dies leaves
    /// L1 distrusted (`Down`) until its restart subscribes again.
    pub(crate) fn subscribe(&self, on_drop: Box<dyn Fn(Drop<K>) + Send + Sync>) {
        if !self.store.pubsub {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no Tokio runtime: cache invalidation messages are not received");
            return;
        };
        let store = Arc::downgrade(&self.store);
        let beat = store.clone();
        handle.spawn(supervised(Task::CacheHeartbeat, move || {
            beat.upgrade()?;
            Some(heartbeat(beat.clone()))
        }));
        let on_drop: OnDrop<K> = Arc::from(on_drop);
        handle.spawn(supervised(Task::CacheBus, move || {
            store.upgrade()?;
            Some(subscriber(store.clone(), on_drop.clone()))
        }));
    }
}

type OnDrop<K> = Arc<dyn Fn(Drop<K>) + Send + Sync>;

/// Takes L1 for down when a subscriber run is dropped while its store lives (it panicked or
/// was killed): nothing is trusted that its subscription might have missed.
struct DownOnDrop<K> {
    store: std::sync::Weak<super::RedisStoreInner>,
    on_drop: OnDrop<K>,
}

impl<K> std::ops::Drop for DownOnDrop<K> {
    fn drop(&mut self) {
        if let Some(s) = self.store.upgrade() {
            s.unsubscribed.store(true, Ordering::Release);
            (self.on_drop)(Drop::Down);
        }
    }
}

/// Subscribes, passes on what it hears, and subscribes again after a loss (backing off), until
/// the store is gone.
async fn subscriber<K>(store: std::sync::Weak<super::RedisStoreInner>, on_drop: OnDrop<K>) -> Exit
where
    K: std::str::FromStr + Send + 'static,
{
    use futures::StreamExt;
    let _down = DownOnDrop {
        store: store.clone(),
        on_drop: on_drop.clone(),
    };
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(s) = store.upgrade() else {
            return Exit::Done;
        };
        let channel = s.channel.clone();
        let conn = s.pubsub_conn.clone();
        let silence = s.heartbeat.saturating_mul(3);
        let bound = conn.call_timeout().min(silence);
        drop(s);
        if let Ok(mut pubsub) = conn.pubsub().await
            && let Ok(Ok(())) = tokio::time::timeout(bound, pubsub.subscribe(&channel)).await
        {
            backoff = Duration::from_millis(50);
            let Some(s) = store.upgrade() else {
                return Exit::Done;
            };
            // Anything may have been missed while down: re-read the generation and
            // start L1 afresh, then use it again.
            let _ = s.refresh_generation(true).await;
            on_drop(Drop::All);
            s.unsubscribed.store(false, Ordering::Release);
            let owner = s.owner.clone();
            drop(s);
            let mut messages = pubsub.on_message();
            // Silent for 3 heartbeats: down, even if the connection never closed.
            while let Ok(Some(msg)) = tokio::time::timeout(silence, messages.next()).await {
                let Ok(text) = msg.get_payload::<String>() else {
                    continue;
                };
                let mut parts = text.splitn(3, ' ');
                let (Some(from), Some(kind)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let rest = parts.next().unwrap_or("");
                match kind {
                    "g" => {
                        if let (Some(s), Ok(g)) = (store.upgrade(), rest.parse::<u64>())
                            && s.set_generation(g)
                        {
                            on_drop(Drop::All);
                        }
                    }
                    "t" => {
                        if let Some((v, tag)) = rest.split_once(' ')
                            && let Ok(v) = v.parse::<u64>()
                        {
                            on_drop(Drop::Tag(tag.to_owned(), v));
                        }
                    }
                    "k" if from != owner => {
                        if let Ok(k) = rest.parse::<K>() {
                            on_drop(Drop::Key(k));
                        }
                    }
                    _ => {}
                }
            }
        }
        // Down: no L1 hits until the subscription is back.
        let Some(s) = store.upgrade() else {
            return Exit::Done;
        };
        s.unsubscribed.store(true, Ordering::Release);
        drop(s);
        on_drop(Drop::Down);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// The heartbeat: a message on the channel every interval, so a subscription that hears
/// nothing for 3 of them is known to be down even if its connection never closes. Ends with
/// the store.
async fn heartbeat(store: std::sync::Weak<super::RedisStoreInner>) -> Exit {
    loop {
        let Some(s) = store.upgrade() else {
            return Exit::Done;
        };
        let every = s.heartbeat;
        s.publish_heartbeat().await;
        drop(s);
        tokio::time::sleep(every).await;
    }
}
