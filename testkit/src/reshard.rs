//! Resharding a running Cluster: moving one slot, keys and all, from its master to another,
//! the way `redis-cli --cluster reshard` does, while clients keep sending.

use std::time::{Duration, Instant};

use crate::{RedisCluster, StartError};

/// What moving a slot did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotMove {
    /// The slot.
    pub slot: u16,
    /// The master it left.
    pub from: u16,
    /// The master that serves it now.
    pub to: u16,
    /// Keys `MIGRATE` carried over.
    pub keys: usize,
}

impl RedisCluster {
    /// Moves the slot of `key` from its master to the master on port `to`: marks it
    /// `IMPORTING` on the target and `MIGRATING` on the source (from then on the source
    /// answers `ASK` for keys it no longer holds), `MIGRATE`s its keys in batches of 10 with
    /// `pause` between batches (so clients run against a half-moved slot), then assigns the
    /// slot to the target on every master (clients get `MOVED`).
    pub fn migrate_slot_of(
        &self,
        key: &str,
        to: u16,
        pause: Duration,
    ) -> Result<SlotMove, StartError> {
        let source = self.node_for_key(key)?;
        let target = self
            .nodes()
            .iter()
            .find(|n| n.port() == to)
            .ok_or_else(|| StartError::Failed(format!("no node on port {to}")))?;
        let slot = source.command(&["CLUSTER", "KEYSLOT", key])?;
        let source_id = source.command(&["CLUSTER", "MYID"])?;
        let target_id = target.command(&["CLUSTER", "MYID"])?;
        target.command(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source_id])?;
        source.command(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target_id])?;
        let port = to.to_string();
        let mut keys = 0;
        loop {
            let batch = source.command(&["CLUSTER", "GETKEYSINSLOT", &slot, "10"])?;
            let batch: Vec<&str> = batch.lines().filter(|k| !k.is_empty()).collect();
            if batch.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(batch.iter().copied());
            source.command(&args)?;
            keys += batch.len();
            std::thread::sleep(pause);
        }
        for node in self.nodes().iter().filter(|n| n.is_running()) {
            // Replicas refuse SETSLOT; masters are what clients are redirected by.
            let _ = node.command(&["CLUSTER", "SETSLOT", &slot, "NODE", &target_id]);
        }
        self.wait_slot_served_by(key, to, Duration::from_secs(10))?;
        Ok(SlotMove {
            slot: slot
                .parse()
                .map_err(|e| StartError::Failed(format!("CLUSTER KEYSLOT: {e}")))?,
            from: source.port(),
            to,
            keys,
        })
    }

    fn wait_slot_served_by(&self, key: &str, to: u16, timeout: Duration) -> Result<(), StartError> {
        let started = Instant::now();
        while self.node_for_key(key).ok().map(|n| n.port()) != Some(to) {
            if started.elapsed() > timeout {
                return Err(StartError::Failed(format!(
                    "the slot of {key:?} is not served by :{to} after {timeout:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}
