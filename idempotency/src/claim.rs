//! The claim protocol, written once: `begin` claimed the key; the operation runs; its result
//! is stored under the claim's fencing token (`complete`), or the claim is released so a
//! retry can run (`abort`). `Idempotency::run`, the `Deduplicator` and the HTTP layer all
//! finish their claims here.

use std::future::Future;
use std::time::Duration;

use crate::record::{Abort, Finish, Token};
use crate::store::Store;

/// A key this caller holds, with the token that fences it.
#[derive(Debug)]
pub(crate) struct Claim<'a, S> {
    pub(crate) store: &'a S,
    pub(crate) key: &'a str,
    pub(crate) token: Token,
    pub(crate) retention: Duration,
}

impl<S: Store> Claim<'_, S> {
    /// Runs `op`. On `Ok`, stores `record(&value)` for the retention — or releases the claim
    /// when `record` gives `None` (a result not to be kept); on `Err`, releases the claim.
    /// Store failures are logged: the caller still gets the operation's own result.
    pub(crate) async fn run<T, E>(
        self,
        op: impl Future<Output = Result<T, E>>,
        record: impl FnOnce(&T) -> Option<Vec<u8>>,
    ) -> Result<T, E> {
        match op.await {
            Ok(value) => {
                match record(&value) {
                    Some(bytes) => self.complete(&bytes).await,
                    None => self.release().await,
                }
                Ok(value)
            }
            Err(e) => {
                self.release().await;
                Err(e)
            }
        }
    }

    async fn complete(&self, record: &[u8]) {
        match self
            .store
            .complete(self.key, self.token, record, self.retention)
            .await
        {
            Ok(Finish::Done) => {}
            Ok(Finish::Fenced) => tracing::warn!(
                key = self.key,
                "idempotency claim was lost before completion; result not stored"
            ),
            Err(e) => {
                tracing::warn!(key = self.key, error = %e, "could not store an idempotent result")
            }
        }
    }

    async fn release(&self) {
        if let Err(e) = self.store.abort(self.key, self.token, Abort::Release).await {
            tracing::warn!(key = self.key, error = %e, "could not release an idempotency claim");
        }
    }
}
