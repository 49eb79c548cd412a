//! The fleet on Redis (standalone, Sentinel or Cluster, through the one store path): one hash
//! per fleet breaker, changed only by `sync.lua` on Redis `TIME`.

use std::time::Duration;

use floodwall_core::redis::{Script, StoreOptions, StorePath};
use floodwall_core::{Keyspace, StoreError};
use futures::future::BoxFuture;

use super::store::{FleetRules, FleetStore, FleetView, MemberReport, Quorum};

static SYNC: Script = Script::new(include_str!("sync.lua"));
/// `leave`: KEYS[1] the fleet's hash, ARGV[1] the instance that leaves.
static LEAVE: Script =
    Script::new("return redis.call('HDEL', KEYS[1], 'm:' .. ARGV[1], 'p:' .. ARGV[1])");

/// The keyspace namespace unless the [`StoreOptions`] name another.
const DEFAULT_NAMESPACE: &str = "fw-fleet";

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The fleet of instances that share a Redis deployment: each fleet breaker is one hash
/// (`fw-fleet:v1:{<name>}`) and a sorted set of its members' lease ends
/// (`fw-fleet:v1:{<name>}:leases`), their TTL two leases past the fleet's open wait, changed
/// by one script per report that keeps running sums: a report costs O(1) plus the members
/// whose lease ended, not O(members). Every call is bounded by the store's call timeout.
#[derive(Clone)]
pub struct RedisFleet {
    path: StorePath,
}

impl RedisFleet {
    /// The fleet on the store `options` describe (keyspace `fw-fleet` unless they name one).
    pub fn new(options: StoreOptions) -> RedisFleet {
        RedisFleet {
            path: options.open(Keyspace::new(DEFAULT_NAMESPACE, 1).expect("a valid namespace")),
        }
    }
}

impl RedisFleet {
    /// The fleet's hash and its members' lease ends, under one hash tag.
    fn keys(&self, name: &str) -> (floodwall_core::Key, floodwall_core::Key) {
        let ks = self.path.keyspace();
        (ks.key(name).build(), ks.key(name).part("leases").build())
    }
}

impl std::fmt::Debug for RedisFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisFleet")
            .field("keyspace", self.path.keyspace())
            .finish()
    }
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn small(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

impl FleetStore for RedisFleet {
    fn sync<'a>(
        &'a self,
        name: &'a str,
        report: &'a MemberReport,
        rules: &'a FleetRules,
    ) -> BoxFuture<'a, Result<FleetView, StoreError>> {
        Box::pin(async move {
            let (key, ends) = self.keys(name);
            let (quorum_count, quorum_share) = match rules.quorum {
                Quorum::Count(n) => (n.max(1), 0.0),
                Quorum::Share(s) => (0, s),
            };
            let call = SYNC
                .call()
                .key(&key)
                .key(&ends)
                .arg(&report.instance)
                .arg(report.state.code())
                .arg(report.calls)
                .arg(report.failures)
                .arg(report.slow)
                .arg(millis(rules.lease))
                .arg(quorum_count)
                .arg(quorum_share)
                .arg(rules.minimum_calls)
                .arg(rules.failure_rate_threshold)
                .arg(rules.slow_call_rate_threshold)
                .arg(millis(rules.wait_initial))
                .arg(rules.wait_multiplier)
                .arg(millis(rules.wait_max))
                .arg(rules.probers)
                .arg(millis(rules.probe_timeout));
            let r: Vec<i64> = self.path.invoke(call).await?;
            if r.len() != 10 {
                return Err(StoreError::Protocol(format!(
                    "fleet sync replied {} values, not 10",
                    r.len()
                )));
            }
            Ok(FleetView {
                open: r[0] == 1,
                remaining: Duration::from_millis(count(r[1])),
                granted: r[2] == 1,
                live: small(r[3]),
                open_members: small(r[4]),
                pooled_calls: count(r[5]),
                pooled_failures: count(r[6]),
                witnesses: small(r[7]),
                opening: small(r[8]),
                quorum: small(r[9]),
            })
        })
    }

    fn leave<'a>(
        &'a self,
        name: &'a str,
        instance: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let (key, ends) = self.keys(name);
            let call = LEAVE.call().key(&key).key(&ends).arg(instance);
            self.path.invoke::<i64>(call).await.map(|_| ())
        })
    }
}
