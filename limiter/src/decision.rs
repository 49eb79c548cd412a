//! What a limiter answers.

use std::time::Duration;

/// The answer to one request (or one [`check_n`](crate::gcra::Gcra::check_n) of several).
///
/// All durations are exact; HTTP headers round them **up** to whole seconds
/// ([`Decision::retry_after_secs`], [`Decision::reset_after_secs`]), so a client that waits
/// what it was told is never early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go ahead.
    pub allowed: bool,
    /// The most requests that may be made at once (the burst, or the window's limit).
    pub limit: u32,
    /// Requests that could still be made now, after this decision.
    pub remaining: u32,
    /// Time until the limiter is back to full capacity (`remaining == limit`).
    pub reset_after: Duration,
    /// When denied: the time until this same request would be allowed.
    pub retry_after: Option<Duration>,
}

impl Decision {
    /// `retry_after` in whole seconds, rounded up (`Retry-After`).
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(ceil_secs)
    }

    /// `reset_after` in whole seconds, rounded up (`RateLimit` `t=`).
    pub fn reset_after_secs(&self) -> u64 {
        ceil_secs(self.reset_after)
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A request costs more than the limiter could ever allow at once: it would be denied forever,
/// so it is an error, not a "limited" answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a request costing {cost} can never fit a limit of {capacity}")]
pub struct InsufficientCapacity {
    /// The request's cost.
    pub cost: u32,
    /// The most the limiter allows at once.
    pub capacity: u32,
}

impl InsufficientCapacity {
    /// `Ok(cost)` when a request of `cost` can ever fit `capacity`, this error otherwise.
    pub(crate) fn check(cost: std::num::NonZeroU32, capacity: u32) -> Result<u32, Self> {
        if cost.get() <= capacity {
            Ok(cost.get())
        } else {
            Err(InsufficientCapacity {
                cost: cost.get(),
                capacity,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_seconds_round_up() {
        let d = Decision {
            allowed: false,
            limit: 5,
            remaining: 0,
            reset_after: Duration::from_millis(1001),
            retry_after: Some(Duration::from_nanos(1)),
        };
        assert_eq!(d.retry_after_secs(), Some(1));
        assert_eq!(d.reset_after_secs(), 2);
        let exact = Decision {
            retry_after: Some(Duration::from_secs(3)),
            ..d
        };
        assert_eq!(exact.retry_after_secs(), Some(3));
    }
}
