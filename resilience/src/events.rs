//! Event subscriptions: what a primitive did, call by call, for whoever listens.
//!
//! Each primitive that publishes events ([`CircuitBreaker`](crate::circuit_breaker::CircuitBreaker)
//! and [`Bulkhead`](crate::bulkhead::Bulkhead)) owns an [`Events`] registry, reached through
//! its `events()` method — resilience4j's `getEventPublisher()`. Register a callback with
//! [`Events::on_event`], or take a [`tokio::sync::broadcast`] receiver with
//! [`Events::subscribe`] to consume events from a task.
//!
//! # Cost
//!
//! With no listener, publishing is one relaxed atomic load and a branch: the event is not
//! even built. With listeners, each event takes a shared read lock and calls every listener
//! in registration order on the thread that caused it, so a listener must be quick and must
//! not block (hand heavy work to a task through [`subscribe`](Events::subscribe)).
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use floodwall_resilience::bulkhead::{Bulkhead, BulkheadEvent};
//!
//! let bulkhead = Bulkhead::builder().build();
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let log = seen.clone();
//! bulkhead.events().on_event(move |e: &BulkheadEvent| log.lock().unwrap().push(*e));
//! drop(bulkhead.try_acquire().unwrap());
//! assert_eq!(*seen.lock().unwrap(), [BulkheadEvent::Permitted, BulkheadEvent::Finished]);
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

type Listener<E> = Arc<dyn Fn(&E) + Send + Sync>;

/// A registry of listeners for one primitive's events of type `E`.
pub struct Events<E> {
    any: AtomicBool,
    listeners: RwLock<Vec<Listener<E>>>,
}

impl<E> Default for Events<E> {
    fn default() -> Self {
        Events {
            any: AtomicBool::new(false),
            listeners: RwLock::new(Vec::new()),
        }
    }
}

impl<E> Events<E> {
    /// Calls `listener` with every event from now on, on the thread that caused it.
    pub fn on_event(&self, listener: impl Fn(&E) + Send + Sync + 'static) {
        let mut all = self.listeners.write().unwrap_or_else(|e| e.into_inner());
        all.push(Arc::new(listener));
        self.any.store(true, Ordering::Release);
    }

    /// Whether anyone listens.
    #[inline(always)]
    pub fn has_listeners(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// Publishes the event `make` builds, if anyone listens.
    #[inline(always)]
    pub(crate) fn emit(&self, make: impl FnOnce() -> E) {
        if self.has_listeners() {
            self.emit_slow(make());
        }
    }

    #[cold]
    #[inline(never)]
    fn emit_slow(&self, event: E) {
        let all = self.listeners.read().unwrap_or_else(|e| e.into_inner());
        for listener in all.iter() {
            listener(&event);
        }
    }
}

impl<E: Clone + Send + 'static> Events<E> {
    /// A receiver of every event from now on, through a broadcast channel holding up to
    /// `capacity` unread events (a receiver that falls further behind sees
    /// [`RecvError::Lagged`](tokio::sync::broadcast::error::RecvError::Lagged) and skips
    /// ahead). Events published while no receiver is alive are dropped.
    pub fn subscribe(&self, capacity: usize) -> tokio::sync::broadcast::Receiver<E> {
        let (tx, rx) = tokio::sync::broadcast::channel(capacity.max(1));
        self.on_event(move |e: &E| {
            let _ = tx.send(e.clone()); // no receiver left: nothing to do
        });
        rx
    }
}

impl<E> fmt::Debug for Events<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.listeners.read().map_or(0, |l| l.len());
        f.debug_struct("Events").field("listeners", &n).finish()
    }
}
