//! Slots counted in this instance's memory: the whole limit without Redis, or the insurance
//! share while Redis fails. A key's entry lives only while it has a request in flight.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub(super) struct Slots(Mutex<HashMap<String, u32>>);

impl Slots {
    /// Takes one of `limit` slots for `key`; `Err` with the count in flight when none is free.
    pub(super) fn try_take(&self, key: &str, limit: u32) -> Result<(), u32> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = match map.get_mut(key) {
            Some(n) => n,
            None => map.entry(key.to_owned()).or_insert(0),
        };
        if *n >= limit {
            return Err(*n);
        }
        *n += 1;
        Ok(())
    }

    /// Gives back one slot of `key`.
    pub(super) fn release(&self, key: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(key);
            }
        }
    }
}
