//! A reference model of the store protocol, and a random-interleaving driver shared by the
//! memory and Redis tests.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::time::Duration;

use floodwall_idempotency::{Begin, Fingerprint, Finish};
use proptest::prelude::*;

pub const GRACE: u64 = 60_000_000_000; // COMPLETION_GRACE in ns

#[derive(Debug, Clone)]
pub enum MState {
    InProgress {
        claim: usize,
        fp: u8,
        lease_until: u64,
    },
    Completed {
        claim: usize,
        fp: u8,
        record: Vec<u8>,
    },
    /// Released by `claim`; kept for the grace so a repeated release is recognized.
    Released { claim: usize },
}

#[derive(Debug, Clone)]
pub struct MEntry {
    pub state: MState,
    pub expires: u64,
}

/// The model's answer to `begin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MBegin {
    Claimed(usize),
    Completed(Vec<u8>),
    InProgress(u64),
    Mismatch,
}

#[derive(Debug, Default)]
pub struct Model {
    pub now: u64,
    pub keys: HashMap<usize, MEntry>,
    /// Claim id -> key.
    pub claims: Vec<usize>,
}

impl Model {
    pub fn begin(&mut self, key: usize, fp: u8, lease: u64) -> MBegin {
        if let Some(e) = self.keys.get(&key)
            && e.expires > self.now
        {
            match &e.state {
                MState::Completed { fp: f, record, .. } => {
                    return if *f == fp {
                        MBegin::Completed(record.clone())
                    } else {
                        MBegin::Mismatch
                    };
                }
                MState::InProgress {
                    fp: f, lease_until, ..
                } if *lease_until > self.now => {
                    return if *f == fp {
                        MBegin::InProgress(lease_until - self.now)
                    } else {
                        MBegin::Mismatch
                    };
                }
                MState::InProgress { .. } | MState::Released { .. } => {}
            }
        }
        let claim = self.claims.len();
        self.claims.push(key);
        self.keys.insert(
            key,
            MEntry {
                state: MState::InProgress {
                    claim,
                    fp,
                    lease_until: self.now + lease,
                },
                expires: self.now + lease + GRACE,
            },
        );
        MBegin::Claimed(claim)
    }

    fn holds(&self, claim: usize) -> bool {
        let key = self.claims[claim];
        matches!(
            self.keys.get(&key),
            Some(MEntry { state: MState::InProgress { claim: c, .. }, expires }) if *c == claim && *expires > self.now
        )
    }

    /// `Some(record)`: complete / record; `None`: release. Repeating what the same claim
    /// already did answers `Done` again (finishing is idempotent for the holder).
    pub fn finish(&mut self, claim: usize, outcome: Option<(Vec<u8>, u64)>) -> Finish {
        let key = self.claims[claim];
        let repeated = match self.keys.get(&key) {
            Some(MEntry {
                state: MState::Completed { claim: c, .. },
                expires,
            }) => outcome.is_some() && *c == claim && *expires > self.now,
            Some(MEntry {
                state: MState::Released { claim: c },
                expires,
            }) => outcome.is_none() && *c == claim && *expires > self.now,
            _ => false,
        };
        if repeated {
            return Finish::Done;
        }
        if !self.holds(claim) {
            return Finish::Fenced;
        }
        let e = self.keys.get_mut(&key).unwrap();
        let MState::InProgress { fp, .. } = e.state else {
            unreachable!()
        };
        match outcome {
            None => {
                e.state = MState::Released { claim };
                e.expires = self.now + GRACE;
            }
            Some((record, retention)) => {
                e.state = MState::Completed { claim, fp, record };
                e.expires = self.now + retention;
            }
        }
        Finish::Done
    }
}

#[derive(Debug, Clone)]
pub enum Op {
    Begin {
        key: usize,
        fp: u8,
        lease_ms: u64,
    },
    Complete {
        claim: usize,
        record: u8,
        retention_ms: u64,
    },
    Release {
        claim: usize,
    },
    RecordFailure {
        claim: usize,
        record: u8,
    },
    Advance(u64),
}

pub fn ops(with_time: bool) -> impl Strategy<Value = Vec<Op>> {
    let lease = if with_time {
        prop_oneof![Just(100u64), Just(1_000), 1u64..5_000].boxed()
    } else {
        Just(600_000u64).boxed()
    };
    let retention = if with_time {
        prop_oneof![Just(500u64), 1u64..200_000].boxed()
    } else {
        Just(600_000u64).boxed()
    };
    let advance = if with_time {
        prop_oneof![Just(100u64), Just(1_000), Just(60_000), 1u64..120_000]
            .prop_map(Op::Advance)
            .boxed()
    } else {
        Just(Op::Advance(0)).boxed()
    };
    prop::collection::vec(
        prop_oneof![
            5 => (0usize..3, 0u8..2, lease).prop_map(|(key, fp, lease_ms)| Op::Begin { key, fp, lease_ms }),
            3 => (0usize..12, any::<u8>(), retention).prop_map(|(claim, record, retention_ms)| Op::Complete { claim, record, retention_ms }),
            2 => (0usize..12).prop_map(|claim| Op::Release { claim }),
            1 => (0usize..12, any::<u8>()).prop_map(|(claim, record)| Op::RecordFailure { claim, record }),
            2 => advance,
        ],
        1..60,
    )
}

pub fn fingerprint(fp: u8) -> Fingerprint {
    Fingerprint::of([fp])
}

/// Compares a store's `begin` answer with the model's; `slack` is how far an in-progress
/// wait may differ (Redis time moves meanwhile).
pub fn same_begin(got: &Begin, want: &MBegin, slack: Duration) -> bool {
    match (got, want) {
        (Begin::Claimed(_), MBegin::Claimed(_)) => true,
        (Begin::Completed(a), MBegin::Completed(b)) => a == b,
        (Begin::InProgress { retry_after }, MBegin::InProgress(ns)) => {
            retry_after.abs_diff(Duration::from_nanos(*ns)) <= slack
        }
        (Begin::Mismatch, MBegin::Mismatch) => true,
        _ => false,
    }
}

/// Runs `ops` against `store` and the model side by side; `key(k)` names model key `k` in
/// the store, `advance(ms)` moves the store's clock (the model's moves with it), and an
/// in-progress wait may differ from the model's by `slack`.
pub async fn drive<S: floodwall_idempotency::Store>(
    store: &S,
    ops: Vec<Op>,
    key: impl Fn(usize) -> String,
    advance: impl Fn(u64),
    slack: Duration,
) -> Result<(), TestCaseError> {
    use floodwall_idempotency::{Abort, Token};
    let mut model = Model::default();
    let mut tokens: Vec<Token> = Vec::new();
    for op in ops {
        match op {
            Op::Advance(ms) => {
                advance(ms);
                model.now += ms * 1_000_000;
            }
            Op::Begin {
                key: k,
                fp,
                lease_ms,
            } => {
                let got = store
                    .begin(&key(k), &fingerprint(fp), Duration::from_millis(lease_ms))
                    .await
                    .unwrap();
                let want = model.begin(k, fp, lease_ms * 1_000_000);
                prop_assert!(same_begin(&got, &want, slack), "{got:?} vs {want:?}");
                if let Begin::Claimed(t) = got {
                    prop_assert!(tokens.iter().all(|old| *old < t), "tokens grow");
                    tokens.push(t);
                }
            }
            Op::Complete {
                claim,
                record,
                retention_ms,
            } if claim < tokens.len() => {
                let got = store
                    .complete(
                        &key(model.claims[claim]),
                        tokens[claim],
                        &[record],
                        Duration::from_millis(retention_ms),
                    )
                    .await
                    .unwrap();
                prop_assert_eq!(
                    got,
                    model.finish(claim, Some((vec![record], retention_ms * 1_000_000)))
                );
            }
            Op::RecordFailure { claim, record } if claim < tokens.len() => {
                let how = Abort::Record {
                    record: &[record, 0xEE],
                    retention: Duration::from_secs(100),
                };
                let got = store
                    .abort(&key(model.claims[claim]), tokens[claim], how)
                    .await
                    .unwrap();
                prop_assert_eq!(
                    got,
                    model.finish(claim, Some((vec![record, 0xEE], 100_000_000_000)))
                );
            }
            Op::Release { claim } if claim < tokens.len() => {
                let got = store
                    .abort(&key(model.claims[claim]), tokens[claim], Abort::Release)
                    .await
                    .unwrap();
                prop_assert_eq!(got, model.finish(claim, None));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Runs `cases` random interleavings against `store` on `rt`, each case on keys of its own,
/// with leases and retentions of 10 minutes (a store whose clock the test cannot move).
pub fn agrees_with_the_model<S: floodwall_idempotency::Store>(
    rt: &tokio::runtime::Runtime,
    store: &S,
    cases: u32,
) {
    let case = std::sync::atomic::AtomicU32::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&ops(false), |ops| {
            let c = case.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            rt.block_on(drive(
                store,
                ops,
                |k| format!("c{c}-k{k}"),
                |_| {},
                Duration::from_secs(5),
            ))
        })
        .unwrap();
}
