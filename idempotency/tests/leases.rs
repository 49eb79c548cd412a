//! Short leases renewed by a heartbeat, and claims whose finishing fails — on Tokio's paused
//! clock (the memory store reads the same clock).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use floodwall_core::clock::TokioClock;
use floodwall_idempotency::http::{IDEMPOTENT_UNRECORDED, IdempotencyLayer};
use floodwall_idempotency::{
    Abort, Begin, Fingerprint, Finish, Idempotency, MemoryStore, Outcome, RunError, Store,
    StoreError, Token,
};
use http::{Method, Request, Response};
use http_body_util::Full;
use tokio::time::{Instant, sleep};
use tower::{Layer, ServiceExt, service_fn};

const LEASE: Duration = Duration::from_secs(1);

fn store() -> MemoryStore {
    MemoryStore::with_clock(TokioClock::new(), 1_000)
}

fn idem<S: Store>(store: S) -> Idempotency<S> {
    Idempotency::builder(store).lease(LEASE).build().unwrap()
}

/// A holder whose operation runs 5 leases keeps its key the whole time (its heartbeat renews
/// the lease); a crashed holder — a claim nobody renews, like one whose `begin` reply was
/// lost — frees its key one lease after it was taken.
#[tokio::test(start_paused = true)]
async fn a_live_holder_keeps_its_key_and_a_crashed_one_frees_it_within_one_lease() {
    let idem = idem(store());
    let fp = Fingerprint::of(b"charge 42");
    let runs = Arc::new(AtomicU32::new(0));
    let long = {
        let (idem, runs) = (idem.clone(), runs.clone());
        tokio::spawn(async move {
            idem.run("pay", &fp, || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                sleep(LEASE * 5).await;
                Ok::<_, Infallible>("ch_1".to_string())
            })
            .await
        })
    };
    for _ in 0..9 {
        sleep(LEASE / 2).await;
        let r = idem
            .run("pay", &fp, || async {
                Ok::<_, Infallible>("ch_2".to_string())
            })
            .await;
        match r {
            Err(RunError::InProgress { retry_after }) => assert!(retry_after <= LEASE),
            other => panic!("the live holder's key was taken: {other:?}"),
        }
    }
    assert_eq!(long.await.unwrap().unwrap(), Outcome::Fresh("ch_1".into()));
    let again = idem
        .run("pay", &fp, || async {
            Ok::<_, Infallible>("ch_2".to_string())
        })
        .await
        .unwrap();
    assert_eq!(again, Outcome::Replayed("ch_1".into()));
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // A claim that is never renewed.
    let store = idem.store();
    let taken = Instant::now();
    let Begin::Claimed(_) = store.begin("crashed", &fp, LEASE).await.unwrap() else {
        panic!("claimed")
    };
    let freed = loop {
        sleep(Duration::from_millis(50)).await;
        if let Begin::Claimed(_) = store.begin("crashed", &fp, LEASE).await.unwrap() {
            break taken.elapsed();
        }
    };
    println!(
        "a 5-lease operation kept its key (1 execution); an abandoned claim freed its key {freed:?} after it was taken (lease {LEASE:?})"
    );
    assert!(freed <= LEASE + Duration::from_millis(50), "{freed:?}");
}

/// A [`MemoryStore`] whose `complete` and release fail (`Timeout`) as often as told.
#[derive(Clone, Default)]
struct Flaky {
    inner: MemoryStore,
    complete_failures: Arc<AtomicU32>,
    release_failures: Arc<AtomicU32>,
    extend_failures: Arc<AtomicU32>,
    completes: Arc<AtomicU32>,
    releases: Arc<AtomicU32>,
}

fn fail(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

const TIMEOUT: StoreError = StoreError::Timeout {
    after: Duration::from_millis(100),
};

impl Store for Flaky {
    async fn begin(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        self.inner.begin(key, fingerprint, lease).await
    }

    async fn complete(
        &self,
        key: &str,
        token: Token,
        record: &[u8],
        retention: Duration,
    ) -> Result<Finish, StoreError> {
        self.completes.fetch_add(1, Ordering::SeqCst);
        if fail(&self.complete_failures) {
            return Err(TIMEOUT);
        }
        self.inner.complete(key, token, record, retention).await
    }

    async fn abort(&self, key: &str, token: Token, how: Abort<'_>) -> Result<Finish, StoreError> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        if fail(&self.release_failures) {
            return Err(TIMEOUT);
        }
        self.inner.abort(key, token, how).await
    }

    async fn extend(&self, key: &str, token: Token, lease: Duration) -> Result<Finish, StoreError> {
        if fail(&self.extend_failures) {
            return Err(TIMEOUT);
        }
        self.inner.extend(key, token, lease).await
    }
}

fn flaky() -> Flaky {
    Flaky {
        inner: store(),
        ..Flaky::default()
    }
}

/// A completion that fails twice is retried and stored; one that fails until the lease ends
/// is reported as `Outcome::Unrecorded`, never as `Fresh`; a release that fails is reported as
/// `RunError::Unreleased`, and the key is free again one lease later.
#[tokio::test(start_paused = true)]
async fn failed_finishing_is_retried_within_the_lease_then_reported() {
    let fp = Fingerprint::of(b"x");
    let ok = || async { Ok::<_, String>(7u32) };

    let store = flaky();
    store.complete_failures.store(2, Ordering::SeqCst);
    let idem = idem(store.clone());
    assert_eq!(idem.run("a", &fp, ok).await.unwrap(), Outcome::Fresh(7));
    assert_eq!(store.completes.load(Ordering::SeqCst), 3);
    assert_eq!(idem.run("a", &fp, ok).await.unwrap(), Outcome::Replayed(7));

    store.complete_failures.store(u32::MAX, Ordering::SeqCst);
    store.completes.store(0, Ordering::SeqCst);
    let started = Instant::now();
    assert_eq!(
        idem.run("b", &fp, ok).await.unwrap(),
        Outcome::Unrecorded(7)
    );
    let gave_up = started.elapsed();
    let tries = store.completes.load(Ordering::SeqCst);
    assert!(
        tries > 3 && gave_up <= LEASE,
        "{tries} tries in {gave_up:?}"
    );

    store.complete_failures.store(0, Ordering::SeqCst);
    store.release_failures.store(u32::MAX, Ordering::SeqCst);
    let failing = || async { Err::<u32, _>("declined".to_string()) };
    match idem.run("c", &fp, failing).await {
        Err(RunError::Unreleased { error, store: e }) => {
            assert_eq!(error, "declined");
            assert!(e.is_transient());
        }
        other => panic!("expected Unreleased, got {other:?}"),
    }
    assert!(matches!(
        idem.run("c", &fp, ok).await,
        Err(RunError::InProgress { .. })
    ));
    sleep(LEASE).await;
    store.release_failures.store(0, Ordering::SeqCst);
    assert_eq!(idem.run("c", &fp, ok).await.unwrap(), Outcome::Fresh(7));
    println!(
        "completion failing until the lease ends: Unrecorded after {tries} tries in {gave_up:?}; a failed release: Unreleased, key free one lease later"
    );
}

/// Over HTTP, a response whose completion could not be stored carries
/// `Idempotent-Unrecorded: true`.
#[tokio::test(start_paused = true)]
async fn an_unrecorded_response_is_marked() {
    let store = flaky();
    store.complete_failures.store(u32::MAX, Ordering::SeqCst);
    let handler = service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"charged"))))
    });
    let svc = IdempotencyLayer::new(idem(store), |_| Some("u".into())).layer(handler);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/pay")
        .header("idempotency-key", "k1")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let r = svc.oneshot(req).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers().get(&IDEMPOTENT_UNRECORDED).unwrap(),
        "true",
        "the client is told its retry may run again"
    );
}

/// A renewal that fails (a Redis blip) does not lose a live holder's key: the next one, a
/// third of a lease later, lands within the lease. The operation runs 3 leases; duplicates
/// meanwhile are told "in progress", and it runs once.
#[tokio::test(start_paused = true)]
async fn one_failed_renewal_does_not_lose_the_key() {
    let store = flaky();
    store.extend_failures.store(1, Ordering::SeqCst);
    let idem = idem(store);
    let fp = Fingerprint::of(b"x");
    let runs = Arc::new(AtomicU32::new(0));
    let long = {
        let (idem, runs) = (idem.clone(), runs.clone());
        tokio::spawn(async move {
            idem.run("k", &fp, || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                sleep(LEASE * 3).await;
                Ok::<_, Infallible>(1u32)
            })
            .await
        })
    };
    for _ in 0..5 {
        sleep(LEASE / 2).await;
        let r = idem
            .run("k", &fp, || async { Ok::<_, Infallible>(2u32) })
            .await;
        assert!(
            matches!(r, Err(RunError::InProgress { .. })),
            "the holder's key was taken: {r:?}"
        );
    }
    assert_eq!(long.await.unwrap().unwrap(), Outcome::Fresh(1));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
