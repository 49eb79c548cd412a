//! Revalidating loads (`TieredCache::get_or_revalidate`) against a reference model on a
//! manual clock: what is served (fresh, stale while revalidating, stale on error, loaded),
//! what the loader sees, and what is stored; plus coalescing of concurrent loads, the single
//! background refresh per key, the `ttl` cap, and entries of plain loads being invisible.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use floodwall_cache::{Lifetimes, ManualClock, Revalidated, Revalidation, Served, TieredCache};
use proptest::prelude::*;

/// What the test's loader answers.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// A new value with these lifetimes (ms).
    Store(u64, u64, u64),
    /// The previous value still holds (a new one when there is none), with these lifetimes.
    Unchanged(u64, u64, u64),
    Passed,
    Failed,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Advance(u64),
    Get {
        force: bool,
        in_background: bool,
        outcome: Outcome,
    },
}

fn life(fresh: u64, swr: u64, sie: u64) -> Lifetimes {
    Lifetimes {
        fresh: Duration::from_millis(fresh),
        stale_while_revalidate: Duration::from_millis(swr),
        stale_if_error: Duration::from_millis(sie),
    }
}

/// The model's entry: stored at `at` (ms) with `life` (ms), holding `value`.
#[derive(Debug, Clone, Copy)]
struct Stored {
    at: u64,
    fresh: u64,
    swr: u64,
    sie: u64,
    value: u32,
}

/// What the model says a get is answered with.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Fresh(u32),
    StaleWhileRevalidate(u32),
    StaleIfError(u32),
    Loaded,
}

fn outcome() -> impl Strategy<Value = Outcome> {
    let ms = || 0u64..3_000;
    prop_oneof![
        (ms(), ms(), ms()).prop_map(|(a, b, c)| Outcome::Store(a, b, c)),
        (ms(), ms(), ms()).prop_map(|(a, b, c)| Outcome::Unchanged(a, b, c)),
        Just(Outcome::Passed),
        Just(Outcome::Failed),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u64..4_000).prop_map(Op::Advance),
        (any::<bool>(), any::<bool>(), outcome()).prop_map(|(force, in_background, outcome)| {
            Op::Get {
                force,
                in_background,
                outcome,
            }
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Every get is answered as the model says, the loader sees the model's entry, and a
    /// `304`-style answer is counted as revalidated.
    #[test]
    fn revalidating_loads_agree_with_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let clock = ManualClock::new();
            let cache: TieredCache<u8, u32> = TieredCache::builder()
                .ttl(Duration::from_secs(3600))
                .clock(clock.clone())
                .build();
            let (mut model, mut now, mut next_value, mut revalidated) = (None::<Stored>, 0u64, 0u32, 0u64);
            for op in ops {
                let (force, in_background, outcome) = match op {
                    Op::Advance(ms) => {
                        clock.advance(Duration::from_millis(ms));
                        now += ms;
                        continue;
                    }
                    Op::Get { force, in_background, outcome } => (force, in_background, outcome),
                };
                let expected = match model {
                    Some(e) if !force && now < e.at + e.fresh => Answer::Fresh(e.value),
                    Some(e) if !force && in_background && now < e.at + e.fresh + e.swr => {
                        Answer::StaleWhileRevalidate(e.value)
                    }
                    _ => match (outcome, model) {
                        (Outcome::Failed, Some(e)) if now < e.at + e.fresh + e.sie => {
                            Answer::StaleIfError(e.value)
                        }
                        _ => Answer::Loaded,
                    },
                };
                next_value += 1;
                let fresh_value = next_value;
                let seen = Arc::new(std::sync::Mutex::new(None::<Option<u32>>));
                let seen_by_loader = seen.clone();
                let served = cache
                    .get_or_revalidate(1, |_| true, Revalidation { force, in_background }, |old| async move {
                        *seen_by_loader.lock().unwrap() = Some(old);
                        match (outcome, old) {
                            (Outcome::Store(a, b, c), _) | (Outcome::Unchanged(a, b, c), None) => {
                                Revalidated::Stored(fresh_value, life(a, b, c), ())
                            }
                            (Outcome::Unchanged(a, b, c), Some(v)) => {
                                Revalidated::Unchanged(v, life(a, b, c), ())
                            }
                            (Outcome::Passed, _) => Revalidated::Passed(()),
                            (Outcome::Failed, _) => Revalidated::Failed(()),
                        }
                    })
                    .await;
                let got = match served {
                    Served::Fresh(v) => Answer::Fresh(v),
                    Served::StaleWhileRevalidate(v, refresh) => {
                        prop_assert!(refresh.is_some(), "nothing else refreshes the key");
                        Answer::StaleWhileRevalidate(v)
                    }
                    Served::StaleIfError(v, ()) => Answer::StaleIfError(v),
                    Served::Loaded(()) => Answer::Loaded,
                    Served::Coalesced(_) => return Err(TestCaseError::fail("no load to wait for")),
                };
                prop_assert_eq!(&got, &expected, "at {} ms, {:?}", now, op);
                let seen = seen.lock().unwrap().take();
                if got == Answer::Loaded || matches!(got, Answer::StaleIfError(_)) {
                    prop_assert_eq!(seen, Some(model.map(|e| e.value)), "the loader sees the entry");
                    match (outcome, model) {
                        (Outcome::Store(a, b, c), _) | (Outcome::Unchanged(a, b, c), None) => {
                            model = Some(Stored { at: now, fresh: a, swr: b, sie: c, value: fresh_value });
                        }
                        (Outcome::Unchanged(a, b, c), Some(e)) => {
                            revalidated += 1;
                            model = Some(Stored { at: now, fresh: a, swr: b, sie: c, value: e.value });
                        }
                        _ => {}
                    }
                } else {
                    prop_assert_eq!(seen, None, "no load for a fresh or background-refreshed entry");
                }
            }
            prop_assert_eq!(cache.stats().revalidated, revalidated);
            Ok(())
        })?;
    }
}

/// Twenty concurrent callers of one key run the loader once; the others are answered the
/// value it stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_of_one_key_run_one_load() {
    let cache: TieredCache<&str, u32> = TieredCache::builder().ttl(Duration::from_secs(60)).build();
    let calls = Arc::new(AtomicU32::new(0));
    let gate = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (cache, calls, gate) = (cache.clone(), calls.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let served = cache
                .get_or_revalidate(
                    "k",
                    |_| true,
                    Revalidation::default(),
                    |_| async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        gate.notified().await;
                        Revalidated::Stored(7, life(60_000, 0, 0), 7)
                    },
                )
                .await;
            match served {
                Served::Loaded(v) | Served::Coalesced(v) | Served::Fresh(v) => v,
                other => panic!("unexpected {other:?}"),
            }
        }));
    }
    // Let every caller reach the cache, then let the one load end.
    while cache.stats().coalesced + cache.stats().loads < 20 {
        tokio::task::yield_now().await;
    }
    gate.notify_waiters();
    gate.notify_one();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 7);
    }
    let stats = cache.stats();
    println!(
        "20 callers: {} loader call(s); {stats:?}",
        calls.load(Ordering::SeqCst)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(stats.coalesced, 19);
}

/// A caller that looked (and found the key stale) just before another caller's load stored a
/// fresh entry, and asks to lead just after that load ended, is answered the fresh entry: it
/// does not load again. The window is held open on purpose: the caller's `accept` (called
/// on the stale entry it found) waits until the other load has ended, each caller on a
/// runtime and thread of its own.
#[test]
fn a_load_that_ends_between_a_callers_look_and_its_lead_is_not_repeated() {
    let cache: TieredCache<&str, u32> = TieredCache::builder().ttl(Duration::from_secs(60)).build();
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    // A stale entry: fresh for 0 ms, so every get looks and then loads.
    let stale = rt().block_on(cache.get_or_revalidate(
        "k",
        |_| true,
        Revalidation::default(),
        |_| async { Revalidated::Stored(1, life(0, 0, 0), ()) },
    ));
    assert!(matches!(stale, Served::Loaded(())));
    let loads = Arc::new(AtomicU32::new(0));
    let (looked_tx, looked_rx) = std::sync::mpsc::channel::<()>();
    let (ended_tx, ended_rx) = std::sync::mpsc::channel::<()>();
    // The other caller: loads once this caller has looked, and stores a fresh 2.
    let other = {
        let (cache, loads) = (cache.clone(), loads.clone());
        std::thread::spawn(move || {
            looked_rx.recv().unwrap();
            let served = rt().block_on(cache.get_or_revalidate(
                "k",
                |_| true,
                Revalidation::default(),
                |_| async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Revalidated::Stored(2, life(60_000, 0, 0), ())
                },
            ));
            assert!(matches!(served, Served::Loaded(())));
            ended_tx.send(()).unwrap();
        })
    };
    let first_look = std::sync::atomic::AtomicBool::new(true);
    let served = rt().block_on(cache.get_or_revalidate(
        "k",
        |_| {
            if first_look.swap(false, Ordering::SeqCst) {
                looked_tx.send(()).unwrap();
                ended_rx.recv().unwrap();
            }
            true
        },
        Revalidation::default(),
        |_| {
            loads.fetch_add(1, Ordering::SeqCst);
            async { Revalidated::Stored(3, life(60_000, 0, 0), ()) }
        },
    ));
    other.join().unwrap();
    println!(
        "served {served:?} after {} load(s) besides the first",
        loads.load(Ordering::SeqCst)
    );
    assert!(matches!(served, Served::Coalesced(2)), "{served:?}");
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

/// Inside its stale-while-revalidate window, one refresh is handed out; callers meanwhile
/// are served the stale value without one; once it ran, the new value is fresh.
#[tokio::test]
async fn one_background_refresh_per_key_and_its_value_is_served_after() {
    let clock = ManualClock::new();
    let cache: TieredCache<&str, u32> = TieredCache::builder()
        .ttl(Duration::from_secs(60))
        .clock(clock.clone())
        .build();
    let want = Revalidation {
        force: false,
        in_background: true,
    };
    let first = cache
        .get_or_revalidate(
            "k",
            |_| true,
            want,
            |_| async { Revalidated::Stored(1, life(1_000, 5_000, 0), ()) },
        )
        .await;
    assert!(matches!(first, Served::Loaded(())));
    clock.advance(Duration::from_millis(2_000));
    fn never(_: Option<u32>) -> std::future::Ready<Revalidated<u32, ()>> {
        panic!("a stale entry inside its window is not loaded in line")
    }
    let Served::StaleWhileRevalidate(1, Some(refresh)) =
        cache.get_or_revalidate("k", |_| true, want, never).await
    else {
        panic!("the first stale get gets the refresh");
    };
    let again = cache.get_or_revalidate("k", |_| true, want, never).await;
    assert!(
        matches!(again, Served::StaleWhileRevalidate(1, None)),
        "one refresh per key: {again:?}"
    );
    let ran = refresh
        .run(|old| async move {
            assert_eq!(old, Some(1));
            Revalidated::Stored(2, life(1_000, 0, 0), ())
        })
        .await;
    assert!(matches!(ran, Served::Loaded(())));
    let after = cache.get_or_revalidate("k", |_| true, want, never).await;
    assert!(matches!(after, Served::Fresh(2)), "{after:?}");
}

/// Lifetimes are capped by the cache's `ttl`; values stored by `set` are not revalidating
/// entries (the loader does not see them); `accept` keeps an entry from answering.
#[tokio::test]
async fn ttl_caps_lifetimes_and_plain_entries_and_refused_ones_are_not_seen() {
    let clock = ManualClock::new();
    let cache: TieredCache<&str, u32> = TieredCache::builder()
        .ttl(Duration::from_secs(10))
        .clock(clock.clone())
        .build();
    let want = Revalidation::default();
    cache.set("plain", 5).await;
    let served = cache
        .get_or_revalidate(
            "plain",
            |_| true,
            want,
            |old| async move {
                assert_eq!(
                    old, None,
                    "a value set by `set` has no lifetimes of its own"
                );
                Revalidated::Stored(6, life(3_600_000, 0, 0), ())
            },
        )
        .await;
    assert!(matches!(served, Served::Loaded(())));
    clock.advance(Duration::from_millis(9_999));
    assert!(matches!(
        cache
            .get_or_revalidate(
                "plain",
                |_| true,
                want,
                |_| async { Revalidated::Passed(()) }
            )
            .await,
        Served::Fresh(6)
    ));
    clock.advance(Duration::from_millis(1));
    let loaded = cache
        .get_or_revalidate(
            "plain",
            |_| true,
            want,
            |old| async move {
                assert_eq!(old, Some(6));
                Revalidated::Passed(())
            },
        )
        .await;
    assert!(
        matches!(loaded, Served::Loaded(())),
        "an hour's freshness is capped at the ttl"
    );
    let refused = cache
        .get_or_revalidate(
            "plain",
            |v| *v != 6,
            want,
            |old| async move {
                assert_eq!(
                    old, None,
                    "an entry `accept` refuses is not the loader's either"
                );
                Revalidated::Passed(())
            },
        )
        .await;
    assert!(matches!(refused, Served::Loaded(())));
}
