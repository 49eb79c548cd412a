//! A batch decides exactly as the same decisions sent one by one in the batch's order, and as
//! the memory store does: random sequences of decisions (every algorithm, a few keys, costs 1
//! to 3, consumes and peeks) go to Redis as one script call and, on fresh keys, one call per
//! decision; their verdicts (allowed, remaining) and the memory model's must agree.
//!
//! The quota's period is 10^8 s, so nothing refills while a case runs and no window boundary
//! falls inside one (the next is in 2027, on Redis time).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use floodwall_core::ManualClock;
use floodwall_core::health::{HealthGate, ManualGate};
use floodwall_core::redis::StoreOptions;
use floodwall_limiter::{Algorithm, Degraded, FailurePolicy, Limit, Quota, RateLimiter};
use floodwall_testkit::{FaultProxy, RedisServer};
use proptest::prelude::*;

mod common;
use common::{assert_on_redis, runtime_and_connection, standalone};

const SCRIPT: &str = include_str!("../src/redis/limit.lua");
const LIMIT: u32 = 5;
const PERIOD: Duration = Duration::from_secs(100_000_000);

const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::Gcra,
    Algorithm::FixedWindow,
    Algorithm::SlidingCounter,
    Algorithm::SlidingLog,
];

fn quota() -> Quota {
    Quota::new(NonZeroU32::new(LIMIT).unwrap(), PERIOD)
}

#[derive(Debug, Clone, Copy)]
struct Op {
    alg: usize,
    user: u8,
    cost: u32,
    peek: bool,
}

fn op() -> impl Strategy<Value = Op> {
    (0..4usize, 0..3u8, 1..=3u32, any::<bool>()).prop_map(|(alg, user, cost, peek)| Op {
        alg,
        user,
        // The limiter peeks at a cost of 1.
        cost: if peek { 1 } else { cost },
        peek,
    })
}

/// Appends `op`'s keys and fields, as the limiter sends them (see `limit.lua`'s header): a
/// GCRA decision right after another (`after_gcra`, updated here) leaves out the parameters
/// they share.
fn append(inv: &mut redis::ScriptInvocation<'_>, op: Op, prefix: &str, after_gcra: &mut bool) {
    // GCRA states are fields of one hash (a shard); the others' keys are their own.
    let key = match ALGORITHMS[op.alg] {
        Algorithm::Gcra => format!("{prefix}:{{s}}:{}", op.alg),
        _ => format!("{prefix}:{{s}}:{}:u{}", op.alg, op.user),
    };
    inv.key(&key);
    let field = format!("u{}", op.user);
    let q = quota();
    let mode = if op.peek { "p" } else { "c" };
    let gcra = ALGORITHMS[op.alg] == Algorithm::Gcra;
    let shared = std::mem::replace(after_gcra, gcra);
    match ALGORITHMS[op.alg] {
        Algorithm::Gcra if shared => {
            inv.arg(format!("={mode}")).arg(op.cost).arg(field);
        }
        Algorithm::Gcra => {
            let t_nanos = q.emission_interval().as_nanos() as u64;
            inv.arg(format!("g{mode}"))
                .arg(op.cost)
                .arg(field)
                .arg(t_nanos)
                .arg(q.burst().get());
        }
        alg => {
            let letter = match alg {
                Algorithm::FixedWindow => "f",
                Algorithm::SlidingCounter => "s",
                _ => "l",
            };
            if letter == "l" {
                inv.key(format!("{key}:seq"));
            }
            inv.arg(format!("{letter}{mode}"))
                .arg(op.cost)
                .arg(LIMIT)
                .arg(PERIOD.as_micros() as u64)
                .arg(0);
        }
    }
}

/// (allowed, remaining) from one decision's reply element.
fn verdict(op: Op, v: &redis::Value) -> (bool, u32) {
    match (ALGORITHMS[op.alg], v) {
        (Algorithm::Gcra, redis::Value::Int(v)) => common::gcra_verdict(*v, quota()),
        (_, redis::Value::Array(items)) => match (&items[0], &items[1]) {
            (redis::Value::Int(a), redis::Value::Int(r)) => (*a == 1, *r as u32),
            other => panic!("unexpected verdict {other:?}"),
        },
        other => panic!("unexpected verdict {other:?}"),
    }
}

async fn model(ops: &[Op]) -> Vec<(bool, u32)> {
    let limiters: Vec<RateLimiter> = ALGORITHMS
        .iter()
        .map(|&alg| {
            RateLimiter::builder()
                .limit(Limit::new("api", alg, quota()).keyed_by("user"))
                .clock(ManualClock::starting_at(Duration::from_secs(3600)))
                .build()
                .unwrap()
        })
        .collect();
    let mut out = Vec::new();
    for op in ops {
        let user = format!("u{}", op.user);
        let d = [("user", user.as_str())];
        let limiter = &limiters[op.alg];
        let v = if op.peek {
            limiter.peek(&d).await
        } else {
            limiter.check_n(&d, NonZeroU32::new(op.cost).unwrap()).await
        }
        .unwrap();
        let decision = v.binding.expect("one limit applies").decision;
        out.push((decision.allowed, decision.remaining));
    }
    out
}

#[test]
fn a_batch_decides_as_one_by_one_and_as_the_memory_model() {
    let Some(server) = RedisServer::start_or_skip("a_batch_decides_as_one_by_one") else {
        return;
    };
    let (rt, conn) = runtime_and_connection(&server);
    let script = redis::Script::new(SCRIPT);
    let case = AtomicU64::new(0);
    let decisions = AtomicU64::new(0);
    proptest!(ProptestConfig::with_cases(64), |(ops in prop::collection::vec(op(), 1..40))| {
        let c = case.fetch_add(1, Ordering::Relaxed);
        let (batch, single, expected) = rt.block_on(async {
            let mut inv = script.prepare_invoke();
            let mut after_gcra = false;
            for op in &ops {
                append(&mut inv, *op, &format!("b{c}"), &mut after_gcra);
            }
            let mut conn = conn.clone();
            let reply: redis::Value = inv.invoke_async(&mut conn).await.unwrap();
            let batch: Vec<(bool, u32)> = match (&reply, ops.len()) {
                (redis::Value::Array(items), n) if n > 1 => {
                    ops.iter().zip(items).map(|(op, v)| verdict(*op, v)).collect()
                }
                (v, 1) => vec![verdict(ops[0], v)],
                other => panic!("unexpected batch reply {other:?}"),
            };
            let mut single = Vec::new();
            for op in &ops {
                let mut inv = script.prepare_invoke();
                append(&mut inv, *op, &format!("s{c}"), &mut false);
                let v: redis::Value = inv.invoke_async(&mut conn).await.unwrap();
                single.push(verdict(*op, &v));
            }
            (batch, single, model(&ops).await)
        });
        decisions.fetch_add(ops.len() as u64, Ordering::Relaxed);
        prop_assert_eq!(&batch, &single, "batch vs one by one for {:?}", ops);
        prop_assert_eq!(&batch, &expected, "batch vs the memory model for {:?}", ops);
    });
    println!(
        "{} cases, {} decisions: every batch decided as one by one and as the memory model",
        case.load(Ordering::Relaxed),
        decisions.load(Ordering::Relaxed)
    );
}

/// The short path (`limit.lua`'s `F`: GCRA decisions that consume, each hash named once with
/// its quota and cost, then a field per decision; verdicts hash by hash) decides as the same
/// decisions sent one by one, each alone (the 4-argument call), in arrival order, and as the
/// memory model: random sequences over two hashes (two limits) of three keys each, each hash
/// with a cost of its own.
#[test]
fn a_short_path_batch_decides_as_one_by_one_and_as_the_memory_model() {
    let Some(server) = RedisServer::start_or_skip("a_short_path_batch_decides_as_one_by_one")
    else {
        return;
    };
    let (rt, conn) = runtime_and_connection(&server);
    let script = redis::Script::new(SCRIPT);
    let q = quota();
    let t_nanos = q.emission_interval().as_nanos() as u64;
    let case = AtomicU64::new(0);
    let decisions = AtomicU64::new(0);
    let strategy = (
        prop::collection::vec((0..2u8, 0..3u8), 1..40),
        1..=3u32,
        1..=3u32,
    );
    proptest!(ProptestConfig::with_cases(64), |((picks, cost0, cost1) in strategy)| {
        let c = case.fetch_add(1, Ordering::Relaxed);
        let cost = |hash: u8| if hash == 0 { cost0 } else { cost1 };
        let hash_key = |prefix: &str, hash: u8| format!("{prefix}:{{s}}:h{hash}");
        // Each hash's decisions, in order of first appearance, and where each one's verdict
        // goes.
        let hashes = common::by_hash(&picks);
        let (batch, single, expected) = rt.block_on(async {
            let mut inv = script.prepare_invoke();
            for (hash, _) in &hashes {
                inv.key(hash_key(&format!("b{c}"), *hash));
            }
            inv.arg("F");
            for (at, (hash, idx)) in hashes.iter().enumerate() {
                inv.arg(at + 1).arg(t_nanos).arg(q.burst().get()).arg(cost(*hash)).arg(idx.len());
                for &i in idx {
                    inv.arg(format!("u{}", picks[i].1));
                }
            }
            let mut conn = conn.clone();
            let reply: redis::Value = inv.invoke_async(&mut conn).await.unwrap();
            let items = match reply {
                redis::Value::Array(items) => items,
                one => vec![one],
            };
            let order = hashes.iter().flat_map(|(_, idx)| idx.iter().copied());
            let mut batch = vec![(false, 0); picks.len()];
            for (i, v) in order.zip(&items) {
                let op = Op { alg: 0, user: 0, cost: cost(picks[i].0), peek: false };
                batch[i] = verdict(op, v);
            }
            let mut single = Vec::new();
            for (hash, user) in &picks {
                let mut inv = script.prepare_invoke();
                inv.key(hash_key(&format!("s{c}"), *hash))
                    .arg(t_nanos)
                    .arg(q.burst().get())
                    .arg(cost(*hash))
                    .arg(format!("u{user}"));
                let v: redis::Value = inv.invoke_async(&mut conn).await.unwrap();
                let op = Op { alg: 0, user: 0, cost: cost(*hash), peek: false };
                single.push(verdict(op, &v));
            }
            // The model: a key of its own per (hash, user), each hash's cost.
            let ops: Vec<Op> = picks
                .iter()
                .map(|(hash, user)| Op { alg: 0, user: hash * 3 + user, cost: cost(*hash), peek: false })
                .collect();
            (batch, single, model(&ops).await)
        });
        decisions.fetch_add(picks.len() as u64, Ordering::Relaxed);
        prop_assert_eq!(&batch, &single, "batch vs one by one for {:?}", picks);
        prop_assert_eq!(&batch, &expected, "batch vs the memory model for {:?}", picks);
    });
    println!(
        "{} cases, {} decisions: every short-path batch decided as one by one and as the memory model",
        case.load(Ordering::Relaxed),
        decisions.load(Ordering::Relaxed)
    );
}

/// A batch reads each GCRA hash's fields together (one `HMGET`): a hash of another type and
/// a field whose value is not a number are each the error of the decisions on them alone,
/// left untouched, and every other decision of the batch — the same key twice included — is
/// decided.
#[test]
fn a_batch_with_a_wrong_type_and_a_corrupt_key_decides_the_others() {
    let Some(server) = RedisServer::start_or_skip("a_batch_with_a_wrong_type_and_a_corrupt_key")
    else {
        return;
    };
    server.command(&["LPUSH", "w:{u}:list", "x"]).unwrap();
    server.command(&["HSET", "w:{u}:h", "text", "abc"]).unwrap();
    // (hash, field): a, the list, b, the corrupt field, a again.
    let decisions = [
        ("w:{u}:h", "a"),
        ("w:{u}:list", "a"),
        ("w:{u}:h", "b"),
        ("w:{u}:h", "text"),
        ("w:{u}:h", "a"),
    ];
    let script = redis::Script::new(SCRIPT);
    let mut inv = script.prepare_invoke();
    let mut after_gcra = false;
    let q = quota();
    for (hash, field) in decisions {
        inv.key(hash);
        if std::mem::replace(&mut after_gcra, true) {
            inv.arg("=c").arg(1).arg(field);
        } else {
            inv.arg("gc")
                .arg(1)
                .arg(field)
                .arg(q.emission_interval().as_nanos() as u64)
                .arg(q.burst().get());
        }
    }
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let reply: Vec<redis::Value> = inv.invoke(&mut conn).unwrap();
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        other => panic!("expected an error text, got {other:?}"),
    };
    println!("replies: {reply:?}");
    assert_eq!(reply.len(), 5);
    let level = |v: &redis::Value| match v {
        redis::Value::Int(i) => *i,
        other => panic!("expected a verdict, got {other:?}"),
    };
    let t = q.emission_interval().as_micros() as i64;
    // Admitted, one and two emission intervals of level on the key read twice.
    assert!((level(&reply[0]) - t).abs() <= 1, "{reply:?}");
    assert!(text(&reply[1]).contains("WRONGTYPE"), "{reply:?}");
    assert!((level(&reply[2]) - t).abs() <= 1, "{reply:?}");
    assert!(text(&reply[3]).contains("not a TAT"), "{reply:?}");
    assert!((level(&reply[4]) - 2 * t).abs() <= 2, "{reply:?}");
    // The bad values are as they were; the good ones were written, and the hash expires.
    assert_eq!(server.command(&["TYPE", "w:{u}:list"]).unwrap(), "list");
    assert_eq!(server.command(&["HGET", "w:{u}:h", "text"]).unwrap(), "abc");
    assert_eq!(server.command(&["HEXISTS", "w:{u}:h", "a"]).unwrap(), "1");
    assert_eq!(server.command(&["HEXISTS", "w:{u}:h", "b"]).unwrap(), "1");
    let ttl: i64 = server
        .command(&["PTTL", "w:{u}:h"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 0, "the hash has a TTL: {ttl}");
}

/// Redis blackholed, and one batch holding decisions that came 100 ms apart: each is answered
/// by its own call bound — the early ones by the batch's timer, not held until the latest
/// one's bound, and the late ones not cut short by the early ones' bound. (The health gate is
/// kept shut by hand, so the batch is sent rather than refused.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_decision_by_its_own_bound() {
    let Some(server) = RedisServer::start_or_skip("a_batch_answers_each_decision_by_its_own_bound")
    else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let bound = Duration::from_millis(200);
    let conn = standalone(proxy.redis_url()).await;
    let gate: Arc<dyn HealthGate> = Arc::new(ManualGate::default());
    let limiter = RateLimiter::builder()
        .limit(
            Limit::new(
                "api",
                Algorithm::Gcra,
                Quota::per_second(NonZeroU32::new(1000).unwrap()),
            )
            .keyed_by("user"),
        )
        .redis(
            StoreOptions::new(conn)
                .call_timeout(bound)
                .health_gate(move |_: &str| gate.clone()),
        )
        .failure_policy(FailurePolicy::FailOpen)
        .build()
        .unwrap();
    assert_on_redis(&limiter, "warm").await;

    proxy.blackhole();
    let spawn = |group: &'static str, count: usize| {
        (0..count)
            .map(|i| {
                let limiter = limiter.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let v = limiter
                        .check(&[("user", &format!("{group}-{i}"))])
                        .await
                        .unwrap();
                    assert_eq!(v.degraded, Some(Degraded::FailedOpen));
                    started.elapsed()
                })
            })
            .collect::<Vec<_>>()
    };
    // The first decision goes alone and the next queue behind it; 16 more at +50 ms and 16
    // at +150 ms fill batches that go while it is in flight, mixing decisions that came up
    // to 100 ms apart. Every call hangs until the decisions' bounds.
    let mut tasks = spawn("alone", 4);
    tokio::time::sleep(Duration::from_millis(50)).await;
    tasks.extend(spawn("early", 16));
    tokio::time::sleep(Duration::from_millis(100)).await;
    tasks.extend(spawn("late", 16));
    let mut took = Vec::new();
    for t in tasks {
        took.push(t.await.unwrap());
    }
    let (fastest, slowest) = (took.iter().min().unwrap(), took.iter().max().unwrap());
    println!(
        "36 decisions over 150 ms on a blackholed Redis, bound {bound:?}: each answered after {fastest:?} to {slowest:?}"
    );
    assert!(*fastest >= bound - Duration::from_millis(2), "{fastest:?}");
    assert!(*slowest <= bound + Duration::from_millis(50), "{slowest:?}");
}
