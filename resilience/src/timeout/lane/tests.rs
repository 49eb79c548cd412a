//! The lane against a model, and its locking on the poll path.

use std::sync::atomic::AtomicUsize;
use std::task::Wake;

use proptest::prelude::*;

use super::*;

/// Counts its wakes.
#[derive(Default)]
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A call starts waiting, `ms` after the last step.
    Push(u64),
    /// The `n`-th live call polls, with a new waker if `new`.
    Poll(usize, bool),
    /// The `n`-th live call ends.
    End(usize),
    /// The driver wakes `ms` after the last step.
    Fire(u64),
    /// The driver's runtime shuts down.
    DriverGone,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..40).prop_map(Op::Push),
        (0usize..8, any::<bool>()).prop_map(|(n, new)| Op::Poll(n, new)),
        (0usize..8).prop_map(Op::End),
        (0u64..60).prop_map(Op::Fire),
        Just(Op::DriverGone),
    ]
}

/// The model's view of one call.
struct Call {
    seq: u64,
    deadline: Instant,
    live: bool,
    fired: bool,
    waker: Arc<Count>,
    /// Wakes its current waker is owed.
    owed: usize,
}

/// The lane under test and what the model expects of it.
struct Model {
    after: Duration,
    state: State,
    now: Instant,
    calls: Vec<Call>,
    running: bool,
    armed: Option<Instant>,
}

impl Model {
    fn push(&mut self, ms: u64) -> Result<(), TestCaseError> {
        self.now += Duration::from_millis(ms);
        let waker = Arc::new(Count::default());
        let (seq, start) = self.state.push(self.now, Waker::from(Arc::clone(&waker)));
        let earliest = self.now + self.after;
        let deadline = self
            .calls
            .last()
            .map_or(earliest, |c| c.deadline.max(earliest));
        prop_assert_eq!(seq, self.calls.len() as u64);
        prop_assert_eq!(
            start.is_some(),
            !self.running,
            "a driver starts iff none runs"
        );
        let call = Call {
            seq,
            deadline,
            live: true,
            fired: false,
            waker,
            owed: 0,
        };
        self.calls.push(call);
        if let Some((_, at)) = start {
            let waiting = self.calls.iter().filter(|c| c.live && !c.fired);
            for c in waiting {
                prop_assert!(at <= c.deadline, "a new driver armed after a waiting call");
            }
            self.running = true;
            self.armed = Some(at);
        }
        Ok(())
    }

    fn poll(&mut self, n: usize, new: bool) -> Result<(), TestCaseError> {
        let Some(call) = self.calls.iter_mut().filter(|c| c.live).nth(n) else {
            return Ok(());
        };
        let waker = match new {
            true => Arc::new(Count::default()),
            false => Arc::clone(&call.waker),
        };
        let (poll, _old) = self.state.poll(call.seq, &Waker::from(Arc::clone(&waker)));
        prop_assert_eq!(poll.is_ready(), call.fired);
        if !call.fired {
            call.waker = waker;
        }
        Ok(())
    }

    fn end(&mut self, n: usize) {
        if let Some(call) = self.calls.iter_mut().filter(|c| c.live).nth(n) {
            call.live = false;
            drop(self.state.end(call.seq));
        }
    }

    fn fire(&mut self, ms: u64) -> Result<(), TestCaseError> {
        self.now += Duration::from_millis(ms);
        let now = self.now;
        if !self.running || self.armed.is_some_and(|at| at > now) {
            return Ok(()); // the driver's timer has not gone off
        }
        let mut due = Vec::new();
        let next = self.state.fire(now, &mut due);
        for c in self
            .calls
            .iter_mut()
            .filter(|c| !c.fired && c.deadline <= now)
        {
            c.fired = true;
            c.owed += usize::from(c.live);
        }
        due.into_iter().for_each(Waker::wake);
        let waiting = self.calls.iter().find(|c| c.live && !c.fired);
        match next {
            Some(at) => {
                prop_assert!(at > now);
                if let Some(c) = waiting {
                    prop_assert!(at <= c.deadline, "armed after a waiting call's deadline");
                }
                self.armed = Some(at);
            }
            None => {
                prop_assert!(waiting.is_none(), "the driver ended with a call waiting");
                self.running = false;
                self.armed = None;
            }
        }
        Ok(())
    }

    fn driver_gone(&mut self) {
        if self.running {
            self.state.driver_gone(self.state.drivers);
            self.running = false;
            self.armed = None;
        }
    }

    fn check(&self) -> Result<(), TestCaseError> {
        for c in &self.calls {
            let woken = c.waker.0.load(Ordering::SeqCst);
            prop_assert_eq!(woken, c.owed, "wakes of call {}", c.seq);
        }
        let oldest_waiting = self.calls.iter().position(|c| c.live && !c.fired);
        let held = self.calls.len() - oldest_waiting.unwrap_or(self.calls.len());
        prop_assert_eq!(self.state.held(), held);
        prop_assert!(
            self.calls
                .windows(2)
                .all(|w| w[0].deadline <= w[1].deadline)
        );
        Ok(())
    }
}

/// A task polled again with the waker it was first polled with takes no lock. In an
/// optimized build, the waker of Tokio's `block_on` clones into one with another vtable
/// address, so a ticket that kept its clone's id took the lock at its second poll (1 of 5
/// here); `.ci/run` runs this test with `--release` for that reason — in a debug build
/// both addresses are alike.
#[test]
fn a_task_polled_again_with_its_own_waker_takes_no_lock() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    // A bound no other test uses: a lane of its own.
    let after = Duration::from_millis(3_517_003);
    let (locked, polls) = rt.block_on(async {
        let mut ticket = None;
        let mut polls = 0;
        std::future::poll_fn(|cx| {
            let t = ticket.get_or_insert_with(|| Ticket::new(after, cx.waker()));
            assert!(t.poll(cx.waker()).is_pending());
            polls += 1;
            if polls == 5 {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await;
        let lane = lane_for(Handle::current().id(), after);
        let locked = lane.lock().locked_polls;
        (locked, polls)
    });
    println!("{polls} polls of one task's ticket, {locked} of them under the lane's lock");
    assert_eq!(locked, 0);
}

proptest! {
    /// The lane against a model: each call fires once its deadline is reached and not
    /// before, on the waker it last polled with; deadlines never decrease; a driver is
    /// started only when none runs, and is armed at or before every unfired deadline; the
    /// lane holds only the calls from the oldest waiting one on.
    #[test]
    fn a_lane_fires_each_call_once_at_its_deadline(
        after_ms in 1u64..50,
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let after = Duration::from_millis(after_ms);
        let mut m = Model {
            after,
            state: State::new(after),
            now: Instant::now(),
            calls: Vec::new(),
            running: false,
            armed: None,
        };
        for op in ops {
            match op {
                Op::Push(ms) => m.push(ms)?,
                Op::Poll(n, new) => m.poll(n, new)?,
                Op::End(n) => m.end(n),
                Op::Fire(ms) => m.fire(ms)?,
                Op::DriverGone => m.driver_gone(),
            }
            m.check()?;
        }
    }
}
