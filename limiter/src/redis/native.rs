//! The native decision command, `FLOODWALL.GCRA`, where the server has it.
//!
//! A server that loaded floodwall-redis-module decides a batch of GCRA decisions that consume
//! with one command instead of the script's short path — the batch's shard hashes as
//! segments, the first one routing the command, as the script's node batches do — with the
//! same states and verdicts (the module's `gcra` docs state the formula; the limiter's tests
//! compare both on one server), for a fraction of the server's CPU per decision. On a
//! Cluster, a decision whose hash has moved to another node replies `floodwall:elsewhere`
//! (it wrote nothing) and is sent again alone, as with the script. A limiter tries the command
//! first; a server that does not know it (`unknown command`, or another protocol version)
//! is remembered, and from then on decisions go to the script, until [`REPROBE`] later a call
//! tries the command again — so a module loaded into a running fleet, or a failover to a
//! server with or without it, is followed without a restart. A refused command decided
//! nothing: its decisions go to the script at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use floodwall_core::StoreError;
use floodwall_core::redis::StorePath;

use super::units::Segment;

/// How long a refusal of the command is remembered before a call tries it again.
pub(super) const REPROBE: Duration = Duration::from_secs(30);

/// The command, and the protocol version it is sent with.
const COMMAND: &str = "FLOODWALL.GCRA";
const PROTOCOL: &str = "1";

/// Whether a store sends the native command, and when a server last refused it.
pub(super) struct Native {
    /// Off: the builder said so.
    enabled: bool,
    /// When the command was last refused, in ms after `since` (+1); 0: never.
    refused_at: AtomicU64,
    since: Instant,
}

impl Native {
    pub(super) fn new(enabled: bool) -> Native {
        Native {
            enabled,
            refused_at: AtomicU64::new(0),
            since: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
    }

    /// Whether a call should try the command: enabled, and not refused within [`REPROBE`].
    pub(super) fn worth_trying(&self) -> bool {
        if !self.enabled {
            return false;
        }
        let at = self.refused_at.load(Ordering::Relaxed);
        at == 0 || self.now_ms().saturating_sub(at) >= REPROBE.as_millis() as u64
    }

    /// Remembers that a server refused the command.
    fn refused(&self, e: &StoreError) {
        let before = self.refused_at.swap(self.now_ms(), Ordering::Relaxed);
        if before == 0 {
            tracing::info!(
                error = %e,
                "Redis has no FLOODWALL.GCRA (floodwall-redis-module): rate-limit decisions go \
                 to the Lua script, and the command is tried again every {} s",
                REPROBE.as_secs()
            );
        }
    }

    /// Decides `segments` with one command: their verdicts, segment by segment, or `None`
    /// when the server refused the command (nothing was decided; the caller sends the
    /// decisions to the script).
    pub(super) async fn decide(
        &self,
        path: &StorePath,
        segments: &[Segment<'_>],
        deadline: tokio::time::Instant,
    ) -> Option<Result<Vec<::redis::Value>, StoreError>> {
        let cmd = command(segments);
        let decisions: usize = segments.iter().map(|s| s.fields.len()).sum();
        let reply = path
            .query_until::<Vec<::redis::Value>>(&cmd, deadline)
            .await;
        match reply {
            Err(e) if refuses(&e) => {
                self.refused(&e);
                None
            }
            Ok(verdicts) if verdicts.len() != decisions => {
                Some(Err(StoreError::Protocol(format!(
                    "{COMMAND} replied {} verdicts for {decisions} decisions",
                    verdicts.len()
                ))))
            }
            other => Some(other),
        }
    }
}

/// `FLOODWALL.GCRA route 1 [hash T b cost n field…]…`: the first segment's hash routes it.
fn command(segments: &[Segment<'_>]) -> ::redis::Cmd {
    let args: usize = segments.iter().map(|s| 5 + s.fields.len()).sum();
    let bytes: usize = segments
        .iter()
        .map(|s| s.key.as_str().len() + s.fields.iter().map(|f| f.len()).sum::<usize>() + 40)
        .sum();
    let mut cmd = ::redis::Cmd::with_capacity(args + 3, bytes + segments[0].key.as_str().len());
    cmd.arg(COMMAND).arg(segments[0].key.as_str()).arg(PROTOCOL);
    for s in segments {
        let (t_nanos, burst, cost) = s.params;
        cmd.arg(s.key.as_str())
            .arg(t_nanos)
            .arg(burst)
            .arg(cost)
            .arg(s.fields.len());
        for field in &s.fields {
            cmd.arg(*field);
        }
    }
    cmd
}

/// Whether `e` is a server refusing the command: it does not know it, or speaks another
/// protocol version. Either way it ran nothing.
fn refuses(e: &StoreError) -> bool {
    let m = e.to_string();
    (m.contains("unknown command") && m.to_ascii_lowercase().contains("floodwall.gcra"))
        || m.contains("floodwall: protocol version")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::{Native, REPROBE};

    /// A refusal keeps the command untried for [`REPROBE`], then it is tried again; a store
    /// built with the command off never tries it.
    #[test]
    fn a_refusal_is_remembered_until_the_reprobe() {
        let mut native = Native::new(true);
        // Its clock started a minute ago, so a refusal can be set back REPROBE and more.
        native.since -= std::time::Duration::from_secs(60);
        assert!(native.worth_trying(), "never refused");
        let reprobe = REPROBE.as_millis() as u64;
        let e = floodwall_core::StoreError::Script("ERR unknown command 'FLOODWALL.GCRA'".into());
        native.refused(&e);
        assert!(!native.worth_trying(), "just refused");
        // Refused a little less than REPROBE ago: still remembered; a little more: tried.
        let now = native.now_ms();
        native
            .refused_at
            .store(now + 1000 - reprobe, Ordering::Relaxed);
        assert!(!native.worth_trying());
        native
            .refused_at
            .store(now.saturating_sub(reprobe + 1), Ordering::Relaxed);
        assert!(native.worth_trying());
        assert!(!Native::new(false).worth_trying());
    }

    /// What a server without the module, or with another version of it, answers is a
    /// refusal; any other error is not.
    #[test]
    fn refusals_are_told_from_other_errors() {
        use floodwall_core::StoreError;
        let refusal = |m: &str| super::refuses(&StoreError::Script(m.into()));
        assert!(refusal(
            "ERR unknown command 'FLOODWALL.GCRA', with args beginning with: 'k' '1'"
        ));
        assert!(refusal(
            "ERR floodwall: protocol version 1 is not this module's (2)"
        ));
        assert!(!refusal("ERR unknown command 'FOO'"));
        assert!(!refusal(
            "WRONGTYPE Operation against a key holding the wrong kind of value"
        ));
    }
}
