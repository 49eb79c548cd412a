//! A verdict as the script (or the native command) replies it, made a `Decision`.

use std::time::Duration;

use floodwall_core::StoreError;

use super::RemoteReceipt;
use super::units::Fields;
use crate::{Algorithm, Decision, Limit, Quota};

/// A decision's verdict as the script replied it: GCRA's integer, or the others' five (for a
/// group, the array of its decisions' verdicts).
pub(super) type Verdict = Result<::redis::Value, StoreError>;

pub(super) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// GCRA's one-integer reply (see the script) as `{allowed, remaining, reset, retry, 0}`.
fn gcra_reply(v: i64, t: f64, cap: f64, cost: u32, burst: u32) -> [i64; 5] {
    let allowed = v >= 0;
    let level = if allowed { v } else { -(v + 1) } as f64;
    let remaining = ((cap - level) / t + 1e-9)
        .floor()
        .clamp(0.0, f64::from(burst)) as i64;
    let retry = if allowed {
        -1
    } else {
        (level + f64::from(cost) * t - cap).ceil().max(0.0) as i64
    };
    [i64::from(allowed), remaining, level as i64, retry, 0]
}

/// The decision (and what it consumed) from a verdict's five integers.
pub(super) fn remote_decision(
    limit: &Limit,
    quota: Quota,
    r: &[i64; 5],
    consumed: bool,
    cost: u32,
) -> (Decision, RemoteReceipt) {
    let capacity = match limit.algorithm() {
        Algorithm::Gcra => quota.burst().get(),
        _ => quota.limit().get(),
    };
    let allowed = r[0] == 1;
    let us = |v: i64| Duration::from_micros(v.max(0) as u64);
    (
        Decision {
            allowed,
            limit: capacity,
            remaining: r[1].clamp(0, i64::from(capacity)) as u32,
            reset_after: us(r[2]),
            retry_after: (!allowed).then(|| us(r[3])),
        },
        RemoteReceipt {
            consumed,
            cost,
            receipt: r[4],
        },
    )
}

/// One decision's verdict from the script's reply element (see `limit.lua`): GCRA's integer,
/// the others' five integers, or that decision's error as a string.
pub(super) fn parse_verdict(
    v: ::redis::Value,
    fields: Fields,
    cost: u32,
) -> Result<[i64; 5], StoreError> {
    use ::redis::Value;
    match (v, fields) {
        (Value::Int(level), Fields::Gcra { t_nanos, burst }) => {
            let t = t_nanos as f64 / 1_000.0;
            Ok(gcra_reply(level, t, t * f64::from(burst), cost, burst))
        }
        (Value::Array(items), Fields::Counter { .. }) if items.len() == 5 => {
            let mut out = [0i64; 5];
            for (o, item) in out.iter_mut().zip(items) {
                *o = match item {
                    Value::Int(i) => i,
                    other => {
                        return Err(StoreError::Protocol(format!(
                            "limit script replied {other:?} in a verdict"
                        )));
                    }
                };
            }
            Ok(out)
        }
        (Value::BulkString(b), _) => Err(StoreError::Script(String::from_utf8_lossy(&b).into())),
        (Value::SimpleString(s), _) => Err(StoreError::Script(s)),
        (other, _) => Err(StoreError::Protocol(format!(
            "limit script replied {other:?} as a verdict"
        ))),
    }
}
