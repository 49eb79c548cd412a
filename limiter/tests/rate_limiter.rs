//! The keyed memory store and `RateLimiter`: the same decisions as the single-key limiters,
//! several limits all-or-nothing against a model, tiers changed at run time, shadow mode,
//! and bounded keys with lossless idle eviction.

use std::num::NonZeroU32;
use std::time::Duration;

use floodwall_core::ManualClock;
use floodwall_limiter::gcra::Gcra;
use floodwall_limiter::keyed::KeyedGcra;
use floodwall_limiter::sliding_log::SlidingLog;
use floodwall_limiter::window::{WindowKind, WindowLimiter};
use floodwall_limiter::{Algorithm, Decision, Limit, Quota, RateLimiter, Tiers};
use proptest::prelude::*;

fn n(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

/// A single-key limiter of any algorithm, as the reference for one (limit, key).
enum One {
    Gcra(Gcra<ManualClock>),
    Window(WindowLimiter<ManualClock>),
    Log(SlidingLog<ManualClock>),
}

impl One {
    fn new(a: Algorithm, q: Quota, clock: &ManualClock) -> One {
        match a {
            Algorithm::Gcra => One::Gcra(Gcra::with_clock(q, clock.clone())),
            Algorithm::FixedWindow => One::Window(WindowLimiter::with_clock(
                WindowKind::Fixed,
                q,
                clock.clone(),
            )),
            Algorithm::SlidingCounter => One::Window(WindowLimiter::with_clock(
                WindowKind::SlidingCounter,
                q,
                clock.clone(),
            )),
            Algorithm::SlidingLog => One::Log(SlidingLog::with_clock(q, clock.clone())),
        }
    }
    fn check_n(&self, c: NonZeroU32) -> Decision {
        match self {
            One::Gcra(l) => l.check_n(c).unwrap(),
            One::Window(l) => l.check_n(c).unwrap(),
            One::Log(l) => l.check_n(c).unwrap(),
        }
    }
    fn peek(&self) -> Decision {
        match self {
            One::Gcra(l) => l.peek(),
            One::Window(l) => l.peek(),
            One::Log(l) => l.peek(),
        }
    }
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop_oneof![
        Just(Algorithm::Gcra),
        Just(Algorithm::FixedWindow),
        Just(Algorithm::SlidingCounter),
        Just(Algorithm::SlidingLog),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    /// (key index, cost)
    Check(usize, u32),
    Peek(usize),
    Advance(u64),
}

fn ops(keys: usize) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            6 => (0..keys, 1u32..3).prop_map(|(k, c)| Op::Check(k, c)),
            1 => (0..keys).prop_map(Op::Peek),
            3 => prop_oneof![0u64..10, 1u64..300_000_000, Just(100_000_000u64)].prop_map(Op::Advance),
        ],
        1..150,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// The keyed store gives each key exactly the decisions of its own single-key limiter
    /// (which the per-algorithm proptests check against plain reference models).
    #[test]
    fn keyed_store_decides_like_one_limiter_per_key(
        alg in algorithm(),
        limit in 1u32..8,
        period_ms in 1u64..2000,
        ops in ops(3),
    ) {
        let q = Quota::new(n(limit), Duration::from_millis(period_ms));
        let clock = ManualClock::new();
        let limiter = RateLimiter::builder()
            .limit(Limit::new("l", alg, q).keyed_by("k"))
            .clock(clock.clone())
            .build()
            .unwrap();
        let refs: Vec<One> = (0..3).map(|_| One::new(alg, q, &clock)).collect();
        let names = ["a", "b", "c"];
        block_on(async {
            for op in ops {
                match op {
                    Op::Advance(ns) => clock.advance(Duration::from_nanos(ns)),
                    Op::Peek(k) => {
                        let v = limiter.peek(&[("k", names[k])]).await.unwrap();
                        prop_assert_eq!(v.binding.unwrap().decision, refs[k].peek());
                    }
                    Op::Check(k, c) => {
                        let got = limiter.check_n(&[("k", names[k])], n(c)).await;
                        if c > limit {
                            prop_assert!(got.is_err());
                            continue;
                        }
                        let v = got.unwrap();
                        let want = refs[k].check_n(n(c));
                        prop_assert_eq!(v.allowed, want.allowed);
                        prop_assert_eq!(v.binding.unwrap().decision, want);
                    }
                }
            }
            Ok(())
        })?;
    }

    /// Three limits (per user, per IP, global) against a model that admits a request only
    /// if every limit would, and then consumes from all: a denied request consumes nothing.
    #[test]
    fn several_limits_are_all_or_nothing(
        algs in (algorithm(), algorithm(), algorithm()),
        limits in (1u32..6, 1u32..6, 1u32..10),
        period_ms in 10u64..2000,
        ops in ops(4),
    ) {
        let clock = ManualClock::new();
        let p = Duration::from_millis(period_ms);
        let qs = [Quota::new(n(limits.0), p), Quota::new(n(limits.1), p), Quota::new(n(limits.2), p)];
        let limiter = RateLimiter::builder()
            .limit(Limit::new("user", algs.0, qs[0]).keyed_by("user"))
            .limit(Limit::new("ip", algs.1, qs[1]).keyed_by("ip"))
            .limit(Limit::new("global", algs.2, qs[2]))
            .clock(clock.clone())
            .build()
            .unwrap();
        // Four clients: users u0..u3, two per IP.
        let users: Vec<One> = (0..4).map(|_| One::new(algs.0, qs[0], &clock)).collect();
        let ips: Vec<One> = (0..2).map(|_| One::new(algs.1, qs[1], &clock)).collect();
        let global = One::new(algs.2, qs[2], &clock);
        let user_names = ["u0", "u1", "u2", "u3"];
        let ip_names = ["ip0", "ip1"];
        block_on(async {
            for op in ops {
                match op {
                    Op::Advance(ns) => clock.advance(Duration::from_nanos(ns)),
                    Op::Peek(_) => {}
                    Op::Check(k, _) => {
                        let desc = [("user", user_names[k]), ("ip", ip_names[k / 2])];
                        let v = limiter.check(&desc).await.unwrap();
                        let parts = [&users[k], &ips[k / 2], &global];
                        let all = parts.iter().all(|l| l.peek().allowed);
                        if all {
                            for l in parts {
                                prop_assert!(l.check_n(n(1)).allowed);
                            }
                        }
                        prop_assert_eq!(v.allowed, all);
                        if !v.allowed {
                            let name = v.binding.unwrap().name;
                            let i = ["user", "ip", "global"].iter().position(|x| *x == &*name).unwrap();
                            prop_assert!(!parts[i].peek().allowed, "the binding limit denies");
                        }
                    }
                }
            }
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn a_denied_request_consumes_from_no_limit() {
    let clock = ManualClock::new();
    let limiter = RateLimiter::builder()
        .limit(Limit::new("user", Algorithm::Gcra, Quota::per_minute(n(2))).keyed_by("user"))
        .limit(Limit::new(
            "global",
            Algorithm::FixedWindow,
            Quota::per_minute(n(3)),
        ))
        .clock(clock)
        .build()
        .unwrap();
    for _ in 0..2 {
        assert!(limiter.check(&[("user", "a")]).await.unwrap().allowed);
    }
    // Denied by the per-user limit: the global count stays at 2.
    let denied = limiter.check(&[("user", "a")]).await.unwrap();
    assert!(!denied.allowed);
    assert_eq!(denied.binding.unwrap().name.as_ref(), "user");
    let global = limiter.peek(&[]).await.unwrap().binding.unwrap();
    // A peek answers as a check would: one more fits (and would leave 0).
    assert!(global.decision.allowed, "the denied request took nothing");
    assert_eq!(global.decision.remaining, 0);
    assert!(limiter.check(&[("user", "b")]).await.unwrap().allowed);
    let full = limiter.check(&[("user", "c")]).await.unwrap();
    assert!(!full.allowed);
    assert_eq!(full.binding.unwrap().name.as_ref(), "global");
    // ... and that denial gave back user c's unit.
    let c = limiter.peek(&[("user", "c")]).await.unwrap();
    let c_user = c.binding.unwrap();
    assert_eq!(
        c_user.name.as_ref(),
        "global",
        "global binds: it is out of room"
    );
    assert_eq!(c_user.decision.remaining, 0);
}

#[tokio::test]
async fn tiers_and_their_quotas_change_at_run_time() {
    let clock = ManualClock::new();
    let tiers =
        Tiers::new("free", Quota::per_minute(n(2))).with_tier("premium", Quota::per_minute(n(5)));
    let limiter = RateLimiter::builder()
        .limit(Limit::new("user", Algorithm::FixedWindow, tiers.clone()).keyed_by("user"))
        .clock(clock.clone())
        .build()
        .unwrap();
    let admitted = |user: &'static str| {
        let limiter = limiter.clone();
        async move {
            let mut k = 0;
            for _ in 0..20 {
                if limiter.check(&[("user", user)]).await.unwrap().allowed {
                    k += 1;
                }
            }
            k
        }
    };
    tiers.assign("pat", "premium");
    assert_eq!(admitted("fred").await, 2);
    assert_eq!(admitted("pat").await, 5);
    // Upgrade fred and raise premium, without rebuilding anything.
    tiers.assign("fred", "premium");
    tiers.set_quota("premium", Some(Quota::per_minute(n(8))));
    assert_eq!(
        admitted("fred").await,
        6,
        "8 per minute, 2 already used this window"
    );
    assert_eq!(admitted("pat").await, 3);
    // An unlimited tier.
    tiers.set_quota("premium", None);
    assert_eq!(admitted("pat").await, 20);
    let v = limiter.check(&[("user", "pat")]).await.unwrap();
    assert!(
        v.allowed && v.binding.is_none(),
        "no limit applies to an unlimited tier"
    );
}

#[tokio::test]
async fn shadow_limits_report_but_never_reject() {
    let clock = ManualClock::new();
    let limiter = RateLimiter::builder()
        .limit(Limit::new("enforced", Algorithm::Gcra, Quota::per_second(n(5))).keyed_by("user"))
        .limit(
            Limit::new("candidate", Algorithm::SlidingLog, Quota::per_second(n(2)))
                .keyed_by("user")
                .shadow(true),
        )
        .clock(clock)
        .build()
        .unwrap();
    let mut shadow_denials = 0;
    let mut admitted = 0;
    for _ in 0..8 {
        let v = limiter.check(&[("user", "u")]).await.unwrap();
        if v.allowed {
            admitted += 1;
        }
        if let Some(name) = v.shadow_denied {
            assert_eq!(name.as_ref(), "candidate");
            shadow_denials += 1;
        }
    }
    assert_eq!(admitted, 5, "only the enforced limit rejects");
    assert_eq!(
        shadow_denials, 3,
        "the shadow limit would have denied the 3rd to 5th"
    );

    let all_shadow = RateLimiter::builder()
        .limit(Limit::new(
            "l",
            Algorithm::FixedWindow,
            Quota::per_second(n(1)),
        ))
        .shadow(true)
        .build()
        .unwrap();
    for _ in 0..3 {
        assert!(all_shadow.check(&[]).await.unwrap().allowed);
    }
    assert!(all_shadow.check(&[]).await.unwrap().shadow_denied.is_some());
}

#[test]
fn keyed_store_stays_within_max_keys_and_drops_idle_keys_losslessly() {
    let clock = ManualClock::new();
    let limiter = KeyedGcra::builder(Quota::per_second(n(10)))
        .max_keys(1_000)
        .clock(clock.clone())
        .build();
    let max = limiter.max_keys();
    assert!((1_000..1_000 + 256).contains(&max), "{max}");
    // A key that used its whole burst.
    for _ in 0..10 {
        assert!(limiter.check(&0u64).allowed);
    }
    assert!(!limiter.check(&0u64).allowed);
    // A flood of distinct keys, while key 0 is still limited: the store stays bounded...
    for k in 1..20_000u64 {
        limiter.check(&k);
        assert!(limiter.len() <= max);
    }
    // ... and key 0, if evicted, was evicted only as the nearest to idle. Once idle (refilled),
    // forgetting a key changes nothing: after a second, every key answers like a fresh one.
    clock.advance(Duration::from_secs(1));
    limiter.retain_recent();
    assert_eq!(limiter.len(), 0, "every bucket has refilled: all idle");
    let fresh = KeyedGcra::builder(Quota::per_second(n(10)))
        .clock(clock.clone())
        .build();
    assert_eq!(limiter.check(&0u64), fresh.check(&0u64));
}

#[test]
fn eviction_spares_active_keys_while_idle_ones_exist() {
    let clock = ManualClock::new();
    let limiter = KeyedGcra::builder(Quota::per_minute(n(3)))
        .max_keys(64)
        .clock(clock.clone())
        .build();
    let max = limiter.max_keys() as u64;
    // Fill the store with keys that each made one request long ago (idle by now).
    for k in 1000..1000 + max {
        limiter.check(&k);
    }
    clock.advance(Duration::from_secs(60));
    // An active key drains its bucket.
    for _ in 0..3 {
        assert!(limiter.check(&1u64).allowed);
    }
    // New keys arrive: the idle ones make room; key 1 keeps its state.
    for k in 2000..2000 + max / 2 {
        limiter.check(&k);
    }
    assert!(
        !limiter.check(&1u64).allowed,
        "the active key was not forgotten"
    );
}

/// Keys over 46 bytes are kept as their SHA-256: two long keys that differ only in their last
/// byte still have buckets of their own, and a long key keeps its bucket across checks; the
/// keys on either side of the 46-byte line are kept apart.
#[tokio::test]
async fn long_keys_keep_buckets_of_their_own() {
    let limiter = RateLimiter::builder()
        .limit(
            Limit::new(
                "api",
                Algorithm::Gcra,
                Quota::per_hour(NonZeroU32::new(2).unwrap()),
            )
            .keyed_by("key"),
        )
        .build()
        .unwrap();
    let a = format!("{}a", "x".repeat(4096));
    let b = format!("{}b", "x".repeat(4096));
    for _ in 0..2 {
        assert!(limiter.check(&[("key", &a)]).await.unwrap().allowed);
    }
    assert!(
        !limiter.check(&[("key", &a)]).await.unwrap().allowed,
        "a's bucket is spent"
    );
    assert!(
        limiter.check(&[("key", &b)]).await.unwrap().allowed,
        "b has its own"
    );
    let plain = "y".repeat(46);
    let hashed = "y".repeat(47);
    for _ in 0..2 {
        assert!(limiter.check(&[("key", &plain)]).await.unwrap().allowed);
    }
    assert!(!limiter.check(&[("key", &plain)]).await.unwrap().allowed);
    assert!(
        limiter.check(&[("key", &hashed)]).await.unwrap().allowed,
        "the 47-byte key has its own bucket"
    );
    assert_eq!(limiter.memory_keys(), 4);
}

/// A refused builder names the setting, as the family's other config errors do.
#[test]
fn a_refused_configuration_names_its_field() {
    let q = floodwall_limiter::Quota::per_second(std::num::NonZeroU32::new(5).unwrap());
    let twice = floodwall_limiter::RateLimiter::builder()
        .limit(floodwall_limiter::Limit::new(
            "user",
            floodwall_limiter::Algorithm::Gcra,
            q,
        ))
        .limit(floodwall_limiter::Limit::new(
            "user",
            floodwall_limiter::Algorithm::Gcra,
            q,
        ))
        .build()
        .unwrap_err();
    println!("{twice}");
    assert_eq!(twice.field, "limit.name");
    assert_eq!(
        twice.to_string(),
        "invalid rate limiter `limit.name`: two limits are named \"user\""
    );
    let many = (0..=floodwall_limiter::MAX_LIMITS)
        .fold(floodwall_limiter::RateLimiter::builder(), |b, i| {
            b.limit(floodwall_limiter::Limit::new(
                &format!("l{i}"),
                floodwall_limiter::Algorithm::Gcra,
                q,
            ))
        })
        .build()
        .unwrap_err();
    assert_eq!(many.field, "limits");
}
