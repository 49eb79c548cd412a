//! The PostgreSQL transactional mode ([`InTransaction`]): the handler writes in a
//! transaction the layer opened, and its stored response commits in that same transaction —
//! the handler's writes stand exactly when its response is stored.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use http_body::Body;
use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tower::Service;

use super::claimed::{Failed, HttpClaim, Mode, body_failed, handle, record_of};
use super::{BoxError, IdempotencyLayer, Stored, problem, whole_seconds};
use crate::postgres::PostgresStore;
use crate::record::Finish;

/// The layer's PostgreSQL mode, from [`IdempotencyLayer::in_transaction`]: the handler's
/// writes and its stored response commit in one transaction.
#[derive(Debug, Clone, Copy, Default)]
pub struct InTransaction;

/// The transaction a request's handler writes in, in the extensions of every request an
/// [`InTransaction`] layer passes on. Its writes commit with the stored response, or roll
/// back with the claim (see [`IdempotencyLayer::in_transaction`]).
///
/// ```no_run
/// # async fn demo(req: http::Request<()>) -> Result<(), sqlx::Error> {
/// use floodwall_idempotency::http::RequestTransaction;
///
/// let tx = req.extensions().get::<RequestTransaction>().expect("the layer is in place");
/// let mut conn = tx.lock().await.expect("the handler has not answered yet");
/// sqlx::query("INSERT INTO charges (order_key) VALUES ($1)")
///     .bind("order-1")
///     .execute(&mut *conn)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RequestTransaction(Arc<Mutex<Option<Transaction<'static, Postgres>>>>);

impl RequestTransaction {
    /// The transaction's connection, for the handler's queries; `None` once the handler has
    /// answered (the layer has taken the transaction back to commit or roll it back).
    pub async fn lock(&self) -> Option<MappedMutexGuard<'_, PgConnection>> {
        let guard = self.0.lock().await;
        MutexGuard::try_map(guard, |tx| tx.as_mut().map(|tx| &mut **tx)).ok()
    }
}

impl std::fmt::Debug for RequestTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestTransaction").finish_non_exhaustive()
    }
}

impl IdempotencyLayer<PostgresStore, Stored> {
    /// Runs each claimed request's handler inside a PostgreSQL transaction it finds as a
    /// [`RequestTransaction`] in the request's extensions, and stores the response in that
    /// transaction before committing: the handler's writes and the stored response commit
    /// together or not at all ([`Idempotency::run_in_transaction`](crate::Idempotency) for
    /// HTTP). The answers are the [module's](super), with these for the transaction:
    ///
    /// | situation | answer |
    /// |---|---|
    /// | storable response, committed | the response; a retry replays it |
    /// | response not stored (`5xx`, `408`, `409`, `425`, `429`), handler error, failed body | rolled back, claim released: the answer as in the default mode, and a retry runs again against a database without this run's writes |
    /// | the claim was lost (its lease ran out and another request took the key) | rolled back; `503` with `Retry-After: 1` — the other request's result stands |
    /// | the database failed before the commit landed | rolled back, claim released; `503` with `Retry-After` |
    /// | the commit's reply was lost | the row is read back: the response if it committed, else the `503` |
    ///
    /// Unlike the default mode, a run never answers `Idempotent-Unrecorded`: whatever the
    /// handler wrote in the transaction stands exactly when its response is stored. Writes
    /// the handler makes elsewhere (an upstream API) are not rolled back: send them with a key
    /// derived from the [`RequestKey`](super::RequestKey). Each running request holds one
    /// pooled connection for its transaction and borrows another for lease renewals.
    pub fn in_transaction(self) -> IdempotencyLayer<PostgresStore, InTransaction> {
        IdempotencyLayer {
            idem: self.idem,
            config: self.config,
            mode: std::marker::PhantomData,
        }
    }
}

impl Mode<PostgresStore> for InTransaction {
    fn run<Svc, ReqBody, ResBody>(
        claim: HttpClaim<PostgresStore>,
        inner: Svc,
        request: Request<ReqBody>,
    ) -> impl Future<Output = Result<Response<ResBody>, Svc::Error>> + Send
    where
        Svc: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
        Svc::Future: Send,
        Svc::Error: Send,
        ReqBody: Send + 'static,
        ResBody: Body + From<Bytes> + Send + 'static,
        ResBody::Data: Send,
        ResBody::Error: Into<BoxError>,
    {
        claim.run_in_transaction(inner, request)
    }
}

/// `503`: the run's writes were rolled back; a retry with the same key gets the result that
/// stands, or runs again.
fn rolled_back<B: From<Bytes>>(retry_after: std::time::Duration) -> Response<B> {
    let mut r = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "not-committed",
        "Request rolled back",
        "The request's writes were rolled back and nothing was stored; retry with the same key.",
    );
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(whole_seconds(retry_after)));
    r
}

impl HttpClaim<PostgresStore> {
    async fn run_in_transaction<Svc, ReqBody, ResBody>(
        self,
        inner: Svc,
        mut request: Request<ReqBody>,
    ) -> Result<Response<ResBody>, Svc::Error>
    where
        Svc: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: Body + From<Bytes>,
    {
        let store = self.idem.store();
        let lease = self.idem.lease_duration();
        let claim = crate::claim::Claim {
            store,
            metrics: self.idem.counters(),
            key: &self.key,
            token: self.token,
            lease,
            retention: self.idem.retention_duration(),
        };
        let tx = match store.bounded(store.pool().begin()).await {
            Ok(tx) => tx,
            Err(e) => {
                tracing::warn!(error = %e, "could not open the request's transaction; answering 503");
                claim
                    .release(floodwall_core::clock::deadline_after(lease))
                    .await;
                return Ok(rolled_back(lease));
            }
        };
        let shared = RequestTransaction(Arc::new(Mutex::new(Some(tx))));
        request.extensions_mut().insert(shared.clone());
        let (handled, lease_end) = claim.heartbeat_while(handle(inner, request)).await;
        // A task the handler left behind may still hold the connection: then the transaction
        // rolls back when it lets go, and nothing is stored.
        let taken = shared.0.try_lock().ok().and_then(|mut tx| tx.take());
        let record = match &handled {
            Ok(response) => record_of(&self.config, response),
            Err(_) => None,
        };
        let (record, tx) = match (record, taken) {
            (Some(record), Some(tx)) => (record, tx),
            (_, taken) => {
                if let Some(tx) = taken {
                    let _ = store.bounded(tx.rollback()).await;
                }
                claim.release(lease_end).await;
                return match handled {
                    Ok((parts, bytes)) => Ok(Response::from_parts(parts, ResBody::from(bytes))),
                    Err(Failed::Service(e)) => Err(e),
                    Err(Failed::Body) => Ok(body_failed()),
                };
            }
        };
        let Ok((parts, bytes)) = handled else {
            unreachable!("only a response has a record");
        };
        let committed = match self.commit(tx, &record).await {
            Committed::Yes => true,
            Committed::No => false,
            Committed::Fenced => return Ok(rolled_back(std::time::Duration::from_secs(1))),
        };
        if committed {
            return Ok(Response::from_parts(parts, ResBody::from(bytes)));
        }
        claim.release(lease_end).await;
        Ok(rolled_back(lease))
    }
}

/// What became of the request's transaction.
enum Committed {
    Yes,
    /// Rolled back: the database failed.
    No,
    /// Rolled back: the claim was lost to another request.
    Fenced,
}

impl HttpClaim<PostgresStore> {
    /// Stores `record` under the claim in `tx` and commits.
    async fn commit(&self, mut tx: Transaction<'static, Postgres>, record: &[u8]) -> Committed {
        let store = self.idem.store();
        let retention = self.idem.retention_duration();
        let done = store
            .complete_in(&mut tx, &self.key, self.token, record, retention)
            .await;
        match done {
            Ok(Finish::Done) => match store.bounded(tx.commit()).await {
                Ok(()) => Committed::Yes,
                // The commit's reply was lost: it may have landed. The row tells.
                Err(_) => {
                    let stored_key = PostgresStore::stored_key(&self.key);
                    match store.completed_by(&stored_key, self.token).await {
                        Ok(true) => Committed::Yes,
                        _ => Committed::No,
                    }
                }
            },
            Ok(Finish::Fenced) => {
                tracing::warn!(key = %self.key, "idempotency claim lost before the commit; rolled back");
                let _ = store.bounded(tx.rollback()).await;
                self.idem.counters().unrecorded();
                Committed::Fenced
            }
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "could not store the response; rolled back");
                let _ = store.bounded(tx.rollback()).await;
                Committed::No
            }
        }
    }
}
