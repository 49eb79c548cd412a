//! Model-based property test: random sequences of acquires, outcomes, durations, clock
//! advances and manual transitions drive the breaker and a plain reference model of the same
//! state machine; they must agree on every admit/reject, every state and every count.

use std::num::NonZeroU32;
use std::time::Duration;

use floodwall_core::{Clock, ManualClock};
use floodwall_resilience::circuit_breaker::{
    CircuitBreaker, OpenWait, Outcome, Permit, Rejected, SlidingWindow, State,
};
use proptest::prelude::*;

const SEC: u64 = 1_000_000_000;

#[derive(Debug, Clone)]
struct Cfg {
    time_window: bool,
    size: u32,
    minimum: u32,
    failure_pct: f32,
    slow_pct: f32,
    slow_ms: Option<u64>,
    backoff: bool,
    permitted: u32,
    max_half_open_ms: Option<u64>,
    /// Where an expired half-open goes: CLOSED instead of OPEN.
    close_after_half_open_wait: bool,
}

impl Cfg {
    fn after_half_open_wait(&self) -> State {
        if self.close_after_half_open_wait {
            State::Closed
        } else {
            State::Open
        }
    }

    fn wait(&self, k: u32) -> u64 {
        if self.backoff {
            // initial 1 s, x2, max 4 s
            (SEC << (k - 1).min(2)).min(4 * SEC)
        } else {
            SEC
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct ModelPermit {
    generation: u64,
    started: u64,
    probe: bool,
}

/// The reference: the documented state machine, written as plainly as possible.
struct Model {
    cfg: Cfg,
    state: State,
    generation: u64,
    window: Vec<(u64, bool, bool)>, // (second, failure, slow), in order
    probes: Vec<(bool, bool)>,
    issued: u32,
    open_until: u64,
    half_open_since: u64,
    opens: u32,
}

impl Model {
    fn totals(&self, now: u64) -> (u64, u64, u64) {
        let items: Vec<(bool, bool)> = if self.cfg.time_window {
            let cur = now / SEC;
            self.window
                .iter()
                .filter(|(s, _, _)| *s + u64::from(self.cfg.size) > cur)
                .map(|&(_, f, s)| (f, s))
                .collect()
        } else {
            let n = self.cfg.size as usize;
            self.window[self.window.len().saturating_sub(n)..]
                .iter()
                .map(|&(_, f, s)| (f, s))
                .collect()
        };
        Self::count(&items)
    }

    fn count(items: &[(bool, bool)]) -> (u64, u64, u64) {
        let f = items.iter().filter(|x| x.0).count() as u64;
        let s = items.iter().filter(|x| x.1).count() as u64;
        (items.len() as u64, f, s)
    }

    fn exceeds(&self, (calls, f, s): (u64, u64, u64), minimum: u64) -> bool {
        calls >= minimum
            && calls > 0
            && (100.0 * f as f64 / calls as f64 >= f64::from(self.cfg.failure_pct)
                || 100.0 * s as f64 / calls as f64 >= f64::from(self.cfg.slow_pct))
    }

    fn minimum(&self) -> u64 {
        if self.cfg.time_window {
            u64::from(self.cfg.minimum)
        } else {
            u64::from(self.cfg.minimum.min(self.cfg.size))
        }
    }

    fn go(&mut self, to: State, now: u64) {
        match to {
            State::Open => {
                self.opens += 1;
                self.open_until = now + self.cfg.wait(self.opens);
                self.window.clear();
            }
            State::HalfOpen => {
                self.probes.clear();
                self.half_open_since = now;
            }
            // A forced opening counts as the next consecutive opening (resilience4j's
            // attempts); closed, disabled and metrics-only end the run.
            State::ForcedOpen => {
                self.opens += 1;
                self.window.clear();
            }
            _ => {
                self.opens = 0;
                self.window.clear();
            }
        }
        self.state = to;
        self.generation += 1;
        self.issued = 0;
    }

    fn expired(&self, now: u64) -> bool {
        self.cfg
            .max_half_open_ms
            .is_some_and(|ms| now - self.half_open_since >= ms * 1_000_000)
    }

    fn settle(&mut self, now: u64) -> State {
        loop {
            match self.state {
                State::Open if now >= self.open_until => self.go(State::HalfOpen, now),
                State::HalfOpen if self.expired(now) => {
                    self.go(self.cfg.after_half_open_wait(), now)
                }
                s => return s,
            }
        }
    }

    fn acquire(&mut self, now: u64) -> Result<ModelPermit, Rejected> {
        loop {
            match self.state {
                State::Closed | State::MetricsOnly | State::Disabled => {
                    return Ok(ModelPermit {
                        generation: self.generation,
                        started: now,
                        probe: false,
                    });
                }
                State::ForcedOpen => {
                    return Err(Rejected {
                        state: State::ForcedOpen,
                        retry_after: None,
                        cause: None,
                    });
                }
                State::Open => {
                    if now < self.open_until {
                        return Err(Rejected {
                            state: State::Open,
                            retry_after: Some(Duration::from_nanos(self.open_until - now)),
                            cause: None,
                        });
                    }
                    self.go(State::HalfOpen, now);
                }
                State::HalfOpen => {
                    if self.expired(now) {
                        self.go(self.cfg.after_half_open_wait(), now);
                        continue;
                    }
                    if self.issued >= self.cfg.permitted {
                        return Err(Rejected {
                            state: State::HalfOpen,
                            retry_after: None,
                            cause: None,
                        });
                    }
                    self.issued += 1;
                    return Ok(ModelPermit {
                        generation: self.generation,
                        started: now,
                        probe: true,
                    });
                }
            }
        }
    }

    fn record(&mut self, p: ModelPermit, outcome: Outcome, now: u64) {
        if p.generation != self.generation {
            return;
        }
        let failure = match outcome {
            Outcome::Ignored => {
                if p.probe && self.state == State::HalfOpen && self.issued > 0 {
                    self.issued -= 1;
                }
                return;
            }
            o => o == Outcome::Failure,
        };
        let slow = self
            .cfg
            .slow_ms
            .is_some_and(|ms| now - p.started >= ms * 1_000_000);
        match self.state {
            State::Closed | State::MetricsOnly => {
                self.window.push((now / SEC, failure, slow));
                if self.state == State::Closed && self.exceeds(self.totals(now), self.minimum()) {
                    self.go(State::Open, now);
                }
            }
            State::HalfOpen if p.probe => {
                self.probes.push((failure, slow));
                if self.probes.len() as u32 >= self.cfg.permitted {
                    let t = Self::count(&self.probes);
                    let to = if self.exceeds(t, u64::from(self.cfg.permitted)) {
                        State::Open
                    } else {
                        State::Closed
                    };
                    self.go(to, now);
                }
            }
            _ => {}
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    Complete { pick: usize, outcome: Outcome },
    Advance { ms: u64 },
    State,
    Snapshot,
    Manual(State),
    OpenFor { ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let outcome = prop_oneof![
        3 => Just(Outcome::Success),
        3 => Just(Outcome::Failure),
        1 => Just(Outcome::Ignored),
    ];
    prop_oneof![
        6 => Just(Op::Acquire),
        6 => (any::<usize>(), outcome).prop_map(|(pick, outcome)| Op::Complete { pick, outcome }),
        // Round steps land exactly on open-wait, half-open and slow-call boundaries.
        4 => prop_oneof![
            prop::sample::select(vec![0u64, 100, 250, 300, 400, 500, 700, 1000, 2000]),
            0u64..2500
        ]
        .prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::State),
        2 => Just(Op::Snapshot),
        1 => prop::sample::select(vec![
            State::Closed,
            State::Open,
            State::HalfOpen,
            State::Disabled,
            State::ForcedOpen,
            State::MetricsOnly
        ])
        .prop_map(Op::Manual),
        1 => prop::sample::select(vec![0u64, 300, 1000, 2500]).prop_map(|ms| Op::OpenFor { ms }),
    ]
}

fn cfg() -> impl Strategy<Value = Cfg> {
    (
        any::<bool>(),
        1u32..6,
        1u32..6,
        prop::sample::select(vec![20.0f32, 50.0, 100.0]),
        prop::sample::select(vec![50.0f32, 100.0]),
        prop::sample::select(vec![Some(100u64), Some(400), None]),
        any::<bool>(),
        1u32..4,
        prop::option::of(prop::sample::select(vec![700u64, 2000])),
        any::<bool>(),
    )
        .prop_map(
            |(
                time_window,
                size,
                minimum,
                failure_pct,
                slow_pct,
                slow_ms,
                backoff,
                permitted,
                max_half_open_ms,
                close_after_half_open_wait,
            )| Cfg {
                time_window,
                size,
                minimum,
                failure_pct,
                slow_pct,
                slow_ms,
                backoff,
                permitted,
                max_half_open_ms,
                close_after_half_open_wait,
            },
        )
}

fn build(cfg: &Cfg, clock: &ManualClock) -> CircuitBreaker {
    let n = NonZeroU32::new(cfg.size).unwrap();
    CircuitBreaker::builder()
        .sliding_window(if cfg.time_window {
            SlidingWindow::Time(n)
        } else {
            SlidingWindow::Count(n)
        })
        .minimum_calls(cfg.minimum)
        .failure_rate_threshold(cfg.failure_pct)
        .slow_call_rate_threshold(cfg.slow_pct)
        .slow_call_duration(cfg.slow_ms.map(Duration::from_millis))
        .open_wait(if cfg.backoff {
            OpenWait::Backoff {
                initial: Duration::from_secs(1),
                multiplier: 2.0,
                max: Duration::from_secs(4),
            }
        } else {
            OpenWait::Fixed(Duration::from_secs(1))
        })
        .permitted_calls_in_half_open(NonZeroU32::new(cfg.permitted).unwrap())
        .max_wait_in_half_open(cfg.max_half_open_ms.map(Duration::from_millis))
        .state_after_half_open_wait(cfg.after_half_open_wait())
        .clock(clock.clone())
        .build()
        .unwrap()
}

fn manual(b: &CircuitBreaker, s: State) {
    match s {
        State::Closed => b.reset(),
        State::Open => b.open(),
        State::HalfOpen => {
            let _ = b.half_open();
        }
        State::Disabled => b.disable(),
        State::ForcedOpen => b.force_open(),
        State::MetricsOnly => b.metrics_only(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn breaker_agrees_with_reference_model(cfg in cfg(), ops in prop::collection::vec(op(), 1..150)) {
        let clock = ManualClock::new();
        let breaker = build(&cfg, &clock);
        let mut model = Model {
            cfg: cfg.clone(),
            state: State::Closed,
            generation: 0,
            window: Vec::new(),
            probes: Vec::new(),
            issued: 0,
            open_until: 0,
            half_open_since: 0,
            opens: 0,
        };
        let mut held: Vec<(Permit<'_>, ModelPermit)> = Vec::new();
        for (step, op) in ops.into_iter().enumerate() {
            let now = clock.now_nanos();
            match op {
                Op::Acquire => {
                    let real = breaker.try_acquire();
                    let expect = model.acquire(now);
                    match (real, expect) {
                        (Ok(p), Ok(m)) => {
                            prop_assert_eq!(p.is_probe(), m.probe, "step {}", step);
                            held.push((p, m));
                        }
                        (Err(r), Err(m)) => prop_assert_eq!(r, m, "step {}", step),
                        (real, expect) => prop_assert!(
                            false,
                            "step {}: breaker {:?}, model {:?}",
                            step,
                            real.map(|p| p.is_probe()),
                            expect
                        ),
                    }
                }
                Op::Complete { pick, outcome } => {
                    if !held.is_empty() {
                        let (p, m) = held.swap_remove(pick % held.len());
                        p.record(outcome);
                        model.record(m, outcome, now);
                    }
                }
                Op::Advance { ms } => clock.advance(Duration::from_millis(ms)),
                Op::State => prop_assert_eq!(breaker.state(), model.settle(now), "step {}", step),
                Op::Manual(s) => {
                    manual(&breaker, s);
                    // A transition to the current state is a no-op, but a reset always starts a
                    // fresh CLOSED state; only OPEN half-opens.
                    let current = model.settle(now);
                    if (current != s || s == State::Closed)
                        && (s != State::HalfOpen || current == State::Open)
                    {
                        model.go(s, now);
                    }
                }
                Op::OpenFor { ms } => {
                    breaker.open_for(Duration::from_millis(ms));
                    // An opening with its own wait; on an open breaker only the end moves.
                    if model.settle(now) != State::Open {
                        model.go(State::Open, now);
                    }
                    model.open_until = now + ms * 1_000_000;
                }
                Op::Snapshot => check_snapshot(&breaker, &mut model, now, step)?,
            }
        }
        check_snapshot(&breaker, &mut model, clock.now_nanos(), usize::MAX)?;
    }
}

fn check_snapshot(
    breaker: &CircuitBreaker,
    model: &mut Model,
    now: u64,
    step: usize,
) -> Result<(), TestCaseError> {
    let snap = breaker.snapshot();
    let want_state = model.settle(now);
    prop_assert_eq!(snap.state, want_state, "step {}", step);
    let want = if want_state == State::HalfOpen {
        Model::count(&model.probes)
    } else {
        model.totals(now)
    };
    prop_assert_eq!(
        (snap.calls, snap.failures, snap.slow_calls),
        want,
        "step {}",
        step
    );
    Ok(())
}
