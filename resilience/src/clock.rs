//! A [`Clock`] on Tokio's time.

use floodwall_core::Clock;
use floodwall_core::clock::duration_to_nanos;
use tokio::time::Instant;

/// A [`Clock`] reading Tokio's time, so primitives that take a clock follow
/// `#[tokio::test(start_paused = true)]` and `tokio::time::advance` together with the
/// timers floodwall sleeps on.
///
/// Its origin is its creation; clones share it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// use std::time::Duration;
/// use floodwall_core::Clock;
/// use floodwall_resilience::TokioClock;
///
/// let clock = TokioClock::new();
/// tokio::time::sleep(Duration::from_secs(3)).await; // instant: time is paused
/// assert_eq!(clock.now_nanos(), 3_000_000_000);
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: Instant,
}

impl TokioClock {
    /// A clock whose zero is now.
    pub fn new() -> Self {
        TokioClock {
            origin: Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    #[inline]
    fn now_nanos(&self) -> u64 {
        duration_to_nanos(Instant::now().saturating_duration_since(self.origin))
    }
}
