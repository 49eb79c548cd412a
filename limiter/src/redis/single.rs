//! One decision sent alone: by the native command where the server has it, else by the
//! script, following a redirect the script met inside.

use floodwall_core::redis::StorePath;

use super::LIMIT_SCRIPT;
use super::native::Native;
use super::units::{Unit, segments};
use super::verdict::Verdict;

/// Whether a decision's reply inside a batch is a Cluster redirect (`ASK`, `MOVED`,
/// `TRYAGAIN`): a key of the slot being resharded was not where the batch ran.
pub(super) fn is_redirect(v: &::redis::Value) -> bool {
    use ::redis::ServerErrorKind as K;
    matches!(v, ::redis::Value::ServerError(e)
        if matches!(e.kind(), Some(K::Ask | K::Moved | K::TryAgain)))
}

/// One decision alone: its verdict comes back bare (see `limit.lua`). A redirect the script
/// met inside (a key of a slot being resharded, which it left untouched) is sent again, up
/// to four times, 5, 10, 20 and 40 ms apart, while the slot moves on. The resends share the
/// first call's bound: the whole decision ends by `deadline` (the decision's own, at most
/// one `call_timeout` from its start).
///
/// Boxed: the call's future (the connection's and the bound's state, about 2 KiB) lives on
/// the heap only while a call is made, so every future that may make one — a decision
/// that waits in a batch among them — stays a few hundred bytes, instead of carrying (and
/// copying) room for it.
pub(super) fn send_single<'a>(
    path: &'a StorePath,
    native: &'a Native,
    item: &'a Unit,
    deadline: tokio::time::Instant,
) -> futures::future::BoxFuture<'a, Verdict> {
    Box::pin(async move {
        if native.worth_trying()
            && let Some(segments) = segments(std::slice::from_ref(item))
            && let Some(verdicts) = native.decide(path, &segments, deadline).await
        {
            return verdicts.map(|mut v| v.pop().unwrap_or_default());
        }
        send_script(path, item, deadline, false).await
    })
}

/// A give-back of what a decision consumed, sent alone like
/// [`send_single`](send_single): finishing what the caller holds, it bypasses the node's gate
/// and is not counted against the node's health.
pub(super) async fn send_held(
    path: &StorePath,
    item: &Unit,
    deadline: tokio::time::Instant,
) -> Verdict {
    send_script(path, item, deadline, true).await
}

/// One decision alone, by the script (see [`send_single`]).
pub(super) async fn send_script(
    path: &StorePath,
    item: &Unit,
    deadline: tokio::time::Instant,
    held: bool,
) -> Verdict {
    let mut tries = 0;
    loop {
        // The first try has the whole bound; a resend has what is left of it.
        let call = item.append(LIMIT_SCRIPT.call());
        let verdict = match held {
            true => path.invoke_held_until(call, deadline).await,
            false => path.invoke_until(call, deadline).await,
        };
        tries += 1;
        match &verdict {
            Ok(v) if is_redirect(v) && tries < 5 => {
                let pause = std::time::Duration::from_millis(5 << (tries - 1));
                if tokio::time::Instant::now() + pause >= deadline {
                    return verdict;
                }
                tokio::time::sleep(pause).await;
            }
            _ => return verdict,
        }
    }
}
