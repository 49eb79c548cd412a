//! What runs once a request has claimed its key: the [`Mode`] of the layer, and the
//! store path ([`Stored`](super::Stored)) — the handler runs, then its response is stored
//! under the claim or the claim is released (the shared [`Claim`](crate::claim::Claim)
//! protocol).

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tower::Service;

use super::stored::encode_response;
use super::{BoxError, Config, IDEMPOTENT_UNRECORDED, is_storable, problem};
use crate::record::Token;
use crate::run::Idempotency;
use crate::store::Store;

/// A claimed key: what a [`Mode`] needs to run the handler and finish the claim.
pub struct HttpClaim<S> {
    pub(super) idem: Idempotency<S>,
    pub(super) config: Arc<Config>,
    /// The key as scoped by the principal.
    pub(super) key: String,
    pub(super) token: Token,
}

impl<S> std::fmt::Debug for HttpClaim<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClaim")
            .field("key", &self.key)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// Why a claimed request produced no response to store.
pub(super) enum Failed<E> {
    Service(E),
    Body,
}

/// How a claimed request runs and what finishes its claim: [`Stored`](super::Stored) (any
/// store) or `InTransaction` (PostgreSQL). Sealed: the layer's own modes only.
pub trait Mode<S>: Send + Sync + 'static {
    /// Runs the handler for the claimed `request` and finishes the claim; the client's
    /// answer comes back.
    fn run<Svc, ReqBody, ResBody>(
        claim: HttpClaim<S>,
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
        ResBody::Error: Into<BoxError>;
}

impl<S: Store> Mode<S> for super::Stored {
    fn run<Svc, ReqBody, ResBody>(
        claim: HttpClaim<S>,
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
        claim.run_stored(inner, request)
    }
}

/// The response's parts and body, as far as they are to be stored: `None` for a status that
/// is not kept (see the module docs); a body over the cap is left out.
pub(super) fn record_of(
    config: &Config,
    (parts, bytes): &(http::response::Parts, Bytes),
) -> Option<Vec<u8>> {
    if !is_storable(parts.status) {
        return None;
    }
    let headers: Vec<_> = config
        .stored_headers
        .iter()
        .flat_map(|n| {
            parts
                .headers
                .get_all(n)
                .iter()
                .map(move |v| (n.clone(), v.clone()))
        })
        .collect();
    // Over the cap, the completion is still recorded — status and headers — so a retry
    // replays it (without the body) instead of running the operation again.
    let body = (bytes.len() <= config.max_stored_body).then_some(&bytes[..]);
    Some(encode_response(parts.status, &headers, body))
}

/// Calls the handler and reads its whole response.
pub(super) async fn handle<Svc, ReqBody, ResBody>(
    mut inner: Svc,
    request: Request<ReqBody>,
) -> Result<(http::response::Parts, Bytes), Failed<Svc::Error>>
where
    Svc: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    let response = inner.call(request).await.map_err(Failed::Service)?;
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.map_err(|_| Failed::Body)?.to_bytes();
    Ok((parts, bytes))
}

/// The answer when the handler's response body failed.
pub(super) fn body_failed<B: From<Bytes>>() -> Response<B> {
    problem(
        StatusCode::BAD_GATEWAY,
        "response-failed",
        "Response body failed",
        "The handler's response body failed while being read.",
    )
}

impl<S: Store> HttpClaim<S> {
    /// Runs the handler, then stores its response or releases the claim.
    async fn run_stored<Svc, ReqBody, ResBody>(
        self,
        inner: Svc,
        request: Request<ReqBody>,
    ) -> Result<Response<ResBody>, Svc::Error>
    where
        Svc: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: Body + From<Bytes>,
    {
        let claim = crate::claim::Claim {
            store: self.idem.store(),
            metrics: self.idem.counters(),
            key: &self.key,
            token: self.token,
            lease: self.idem.lease_duration(),
            retention: self.idem.retention_duration(),
        };
        let config = &self.config;
        let record = |response: &_| record_of(config, response);
        let handled = handle(inner, request);
        let (result, fate) = claim.run(handled, record).await;
        match result {
            Ok((mut parts, bytes)) => {
                if let crate::claim::Fate::Unrecorded = fate {
                    // The handler ran, its response could not be stored: a retry with this
                    // key may run it again. The client gets the real response, marked.
                    parts.headers.insert(
                        IDEMPOTENT_UNRECORDED.clone(),
                        HeaderValue::from_static("true"),
                    );
                }
                Ok(Response::from_parts(parts, ResBody::from(bytes)))
            }
            Err(Failed::Service(e)) => Err(e),
            Err(Failed::Body) => Ok(body_failed()),
        }
    }
}
