//! One instance's side of the fleet: what it reports, how it applies the fleet's answer to its
//! breaker, and the sync task.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use floodwall_core::StoreError;
use tokio::sync::Notify;

use super::super::{CircuitBreaker, State};
use super::metrics::FleetMetrics;
use super::store::{FleetRules, FleetStore, FleetView, MemberReport, MemberState};

/// How a breaker takes part in a fleet: the notification its failures and transitions wake.
impl CircuitBreaker {
    /// Joins a fleet: the notification woken on every failure and transition, or `None` when
    /// a fleet member already syncs this breaker.
    pub(super) fn attach_nudge(&self) -> Option<Arc<tokio::sync::Notify>> {
        let inner = &*self.inner;
        inner
            .in_fleet
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        Some(
            inner
                .fleet_nudge
                .get_or_init(|| Arc::new(tokio::sync::Notify::new()))
                .clone(),
        )
    }

    /// Leaves the fleet (its member was dropped).
    pub(super) fn detach_nudge(&self) {
        self.inner.in_fleet.store(false, Ordering::Release);
    }

    /// The sync task starts the sync a nudge asked for: the next failure nudges again.
    pub(super) fn nudge_taken(&self) {
        self.inner.nudged.store(false, Ordering::Release);
    }
}

/// A random id for this process and breaker.
pub(super) fn random_id() -> String {
    use std::hash::BuildHasher;
    let r = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    format!("{:x}-{r:016x}", std::process::id())
}

/// What this instance did on the fleet's word.
#[derive(Debug, Default)]
struct Local {
    /// The fleet holds this breaker open.
    held: bool,
    /// This instance holds a probe slot and its breaker was half-opened for it.
    probing: bool,
}

pub(super) struct Core {
    pub(super) breaker: CircuitBreaker,
    store: Arc<dyn FleetStore>,
    pub(super) instance: String,
    pub(super) rules: FleetRules,
    sync_interval: Duration,
    /// Woken by the breaker on a failure or a transition.
    nudge: Arc<Notify>,
    /// Held across a sync, so the task and `sync_now` never interleave.
    local: tokio::sync::Mutex<Local>,
    view: Mutex<Option<FleetView>>,
    connected: AtomicBool,
    metrics: FleetMetrics,
    task: OnceLock<tokio::task::AbortHandle>,
}

impl Core {
    /// `None` when the breaker is already in a fleet.
    pub(super) fn new(
        breaker: CircuitBreaker,
        store: Arc<dyn FleetStore>,
        instance: String,
        rules: FleetRules,
        sync_interval: Duration,
    ) -> Option<Arc<Core>> {
        let nudge = breaker.attach_nudge()?;
        Some(Arc::new(Core {
            metrics: FleetMetrics::new(breaker.name()),
            breaker,
            store,
            instance,
            rules,
            sync_interval,
            nudge,
            local: tokio::sync::Mutex::new(Local::default()),
            view: Mutex::new(None),
            connected: AtomicBool::new(false),
            task: OnceLock::new(),
        }))
    }

    pub(super) fn view(&self) -> Option<FleetView> {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// How long past the fleet's wait a held breaker stays open: three sync intervals, so it
    /// never half-opens on its own while syncs are answered, and does within that once they
    /// are not.
    fn hold(&self) -> Duration {
        self.sync_interval * 3
    }

    fn report(&self, local: &Local) -> MemberReport {
        let snap = self.breaker.snapshot();
        let state = match (local.probing, snap.state) {
            (true, State::Closed) => MemberState::ProbePassed,
            (true, State::Open) => MemberState::ProbeFailed,
            (true, State::HalfOpen) => MemberState::Probing,
            (false, State::Closed) => MemberState::Closed,
            (false, State::Open | State::HalfOpen) if local.held => MemberState::Held,
            (false, State::Open | State::HalfOpen) => MemberState::Open,
            _ => MemberState::Manual,
        };
        MemberReport {
            instance: self.instance.clone(),
            state,
            calls: snap.calls,
            failures: snap.failures,
            slow: snap.slow_calls,
        }
    }

    /// Applies the fleet's answer to the breaker (see the module's rules).
    fn apply(&self, local: &mut Local, view: &FleetView) {
        let state = self.breaker.state();
        if matches!(
            state,
            State::ForcedOpen | State::Disabled | State::MetricsOnly
        ) {
            *local = Local::default(); // a manual state is the operator's, not the fleet's
            return;
        }
        if !view.open {
            if (local.held || local.probing) && state != State::Closed {
                self.breaker.reset();
            }
            *local = Local::default();
        } else if view.granted {
            if !local.probing {
                *local = Local {
                    held: false,
                    probing: true,
                };
                if state == State::Open {
                    let _ = self.breaker.half_open();
                }
            }
        } else {
            *local = Local {
                held: true,
                probing: false,
            };
            self.breaker.open_for(view.remaining + self.hold());
        }
    }

    /// One report and the fleet's answer, applied; on a failure the breaker is left to
    /// decide alone.
    pub(super) async fn sync_once(&self) -> Result<FleetView, StoreError> {
        let mut local = self.local.lock().await;
        self.breaker.nudge_taken();
        let report = self.report(&local);
        let bound = self.rules.lease;
        let answer = match tokio::time::timeout(
            bound,
            self.store.sync(self.breaker.name(), &report, &self.rules),
        )
        .await
        {
            Ok(answer) => answer,
            Err(_) => Err(StoreError::Timeout { after: bound }),
        };
        match answer {
            Ok(view) => {
                self.apply(&mut local, &view);
                self.connected.store(true, Ordering::Release);
                self.metrics.synced(view.open, view.live);
                *self.view.lock().unwrap_or_else(|e| e.into_inner()) = Some(view.clone());
                Ok(view)
            }
            Err(e) => {
                // A held breaker's hold runs out by itself; a probing one probes alone.
                *local = Local::default();
                if self.connected.swap(false, Ordering::AcqRel) {
                    tracing::warn!(breaker = self.breaker.name(), error = %e, "fleet breaker store unreachable; deciding alone");
                }
                self.metrics.unreachable();
                Err(e)
            }
        }
    }

    /// Starts the sync task: every sync interval, and after a nudge no sooner than `gap`
    /// after the last sync.
    pub(super) fn start(self: &Arc<Core>, gap: Duration) {
        let me: Weak<Core> = Arc::downgrade(self);
        let (nudge, every) = (self.nudge.clone(), self.sync_interval);
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = nudge.notified() => {}
                }
                let Some(core) = me.upgrade() else { return };
                let _ = core.sync_once().await;
                drop(core);
                tokio::time::sleep(gap).await;
            }
        });
        let _ = self.task.set(task.abort_handle());
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
        self.breaker.detach_nudge();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (store, name, instance) = (
                self.store.clone(),
                self.breaker.name().to_owned(),
                self.instance.clone(),
            );
            rt.spawn(async move {
                let _ = store.leave(&name, &instance).await;
            });
        }
    }
}
