//! What a batch's call sends, and what its replies mean.

use floodwall_core::StoreError;

use crate::redis::units::{Item, Unit, short_path};
use crate::redis::{LIMIT_SCRIPT, LIMIT_SCRIPT_NODE};

/// One script call for `items` (several, all of one node): the short path when the batch
/// qualifies (see `units::short_path`), else each unit in turn. Keys of one slot are the
/// script's keys; keys of several (`cross`, a Cluster node's batch) are passed as arguments
/// to the script run with `allow-cross-slot-keys`, routed by the first key. Also returns the
/// order the verdicts come back in, when it is not `items`' own.
pub(super) fn encode<U: std::borrow::Borrow<Unit>>(
    items: &[U],
    cross: bool,
) -> (
    floodwall_core::redis::ScriptCall<'static>,
    Option<Vec<usize>>,
) {
    let script = if cross {
        &LIMIT_SCRIPT_NODE
    } else {
        &LIMIT_SCRIPT
    };
    let call = match short_path(items, script.call(), cross) {
        Ok((call, order)) => return (call, Some(order)),
        Err(call) => call,
    };
    let mut previous = None;
    let call = if !cross {
        items.iter().fold(call, |call, item| {
            item.borrow().append_after(call, &mut previous)
        })
    } else {
        let all = || items.iter().flat_map(|u| u.borrow().items());
        let call = call
            .key(items[0].borrow().first_key())
            .arg("X")
            .arg(all().map(Item::key_count).sum::<usize>());
        let call = all().fold(call, |call, item| item.append_keys_as_args(call));
        items.iter().fold(call, |call, item| {
            item.borrow().append_fields_after(call, &mut previous)
        })
    };
    (call, None)
}

/// A call's verdicts put back in its units' order (`order`: the unit each verdict is for).
pub(super) fn in_order(
    replies: Vec<::redis::Value>,
    order: Option<Vec<usize>>,
    n: usize,
) -> Result<Vec<::redis::Value>, StoreError> {
    if replies.len() != n {
        return Err(StoreError::Protocol(format!(
            "limit script replied {} verdicts for {n} decisions",
            replies.len()
        )));
    }
    let Some(order) = order else {
        return Ok(replies);
    };
    let mut out = vec![::redis::Value::Nil; n];
    for (&i, reply) in order.iter().zip(replies) {
        out[i] = reply;
    }
    Ok(out)
}

/// Whether `e` is Redis refusing to compile a script (a server before Redis 7 reads the
/// flags line as Lua).
pub(super) fn cannot_compile(e: &StoreError) -> bool {
    e.to_string().contains("Error compiling script")
}

/// Whether a decision's reply inside a node's batch over several slots says its key is not
/// on that node (its slot moved since the slot table was read): it wrote nothing.
pub(super) fn is_elsewhere(v: &::redis::Value) -> bool {
    matches!(v, ::redis::Value::BulkString(b) if b == b"floodwall:elsewhere")
}

/// The same failure for another decision of the batch (errors are not `Clone`; the cause is
/// kept in the message).
pub(super) fn replicate(e: &StoreError) -> StoreError {
    match e {
        StoreError::Timeout { after } => StoreError::Timeout { after: *after },
        StoreError::Unavailable { message, source } => StoreError::Unavailable {
            message: match source {
                Some(s) => format!("{message}: {s}"),
                None => message.clone(),
            },
            source: None,
        },
        StoreError::Protocol(m) => StoreError::Protocol(m.clone()),
        StoreError::Codec(m) => StoreError::Codec(m.clone()),
        StoreError::Script(m) => StoreError::Script(m.clone()),
        StoreError::Config(m) => StoreError::Config(m.clone()),
        other => StoreError::unavailable(other.to_string()),
    }
}
