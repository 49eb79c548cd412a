//! The `Idempotency-Key` HTTP layer (feature `http`), after the IETF draft
//! (draft-ietf-httpapi-idempotency-key-header).
//!
//! For requests with a configured method (default `POST` and `PATCH`):
//!
//! | situation | answer |
//! |---|---|
//! | no `Idempotency-Key`, key required | `400`, problem+json |
//! | malformed key (empty, too long, not visible ASCII) | `400` |
//! | request body over the cap | `413` |
//! | first request with this key | runs; the response is stored if storable (below) |
//! | same key, same payload, completed | the stored response, with `Idempotent-Replayed: true` |
//! | same key, still in progress | `409` with `Retry-After`: the seconds left on the holder's lease, when the key is free at the latest (or waits, per [`OnConflict`](crate::OnConflict)) |
//! | same key, different payload | `422`; the stored response is untouched |
//! | store unreachable | `503` with `Retry-After`: the lease, in seconds — a claim whose reply was lost holds the key that long at most (fail closed, the default), or run unprotected ([`IdempotencyLayer::fail_open`]) |
//! | ran, but the store could not take the response until the lease ended | the response, with `Idempotent-Unrecorded: true`: a retry may run the handler again |
//!
//! The key accepts the draft's structured-field string (`"a1b2"`) or a bare value. The
//! fingerprint covers method, path with query, and body. Keys are scoped by a *principal*
//! (user, tenant, API client) the layer is given, so one client can neither replay nor block
//! another's request with the same key.
//!
//! **What is stored:** responses with status `2xx`, `3xx` and `4xx`, except `408`, `409`,
//! `425` and `429` — the status, the allow-listed headers (default `Content-Type`,
//! `Location`) and the body, if it is at most the stored-body cap (default 1 MiB). A larger
//! body is not kept, but the completion is: a retry gets the stored status and headers with an
//! empty body and `Idempotent-Body-Omitted: true` — never a second run. `5xx` responses,
//! those four and inner-service errors release the claim, so a retry runs again. The layer's own 400/409/413/422/503 answers store nothing.
//!
//! Once a request has claimed its key, its handler and the storing of its response run to
//! completion on a Tokio task of their own, even if the client disconnects: the retry that
//! follows a dropped response then gets the replay.
//!
//! The handler finds the key the client sent as a [`RequestKey`] in the request's
//! extensions, to hand on: a call the handler makes to an upstream API on the client's
//! behalf should carry a key derived from it (`{key}:charge`), so that when the client's
//! retry runs the handler again (its first attempt's response was lost, or another instance
//! with another store took the retry) the upstream recognises the call and does not charge
//! twice. With floodwall-reqwest: `RequestSettings::new().idempotency_key(format!("{}:charge",
//! key.as_str()))`.
//!
//! Over PostgreSQL (feature `postgres`), [`IdempotencyLayer::in_transaction`] runs the
//! handler in a transaction it finds as a [`RequestTransaction`] extension and stores the
//! response in that transaction: the handler's writes commit exactly when its response is
//! stored, with the answers above.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, LOCATION, RETRY_AFTER};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use tower::{Layer, Service};

mod claimed;
mod key;
mod stored;
#[cfg(feature = "postgres")]
mod transaction;

use claimed::{HttpClaim, Mode};
use key::read_key;
use stored::decode_response;
#[cfg(feature = "postgres")]
pub use transaction::{InTransaction, RequestTransaction};

use crate::metrics::Counters;
use crate::record::{Begin, Fingerprint};
use crate::run::Idempotency;
use crate::store::Store;

/// `Idempotency-Key`.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// `Idempotent-Replayed`, set to `true` on replayed responses.
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// `Idempotent-Unrecorded: true` on a response whose handler ran but which could not be
/// stored (the store failed until the claim's lease ended): a retry with the same key may run
/// the handler again.
pub static IDEMPOTENT_UNRECORDED: HeaderName = HeaderName::from_static("idempotent-unrecorded");
/// `Idempotent-Body-Omitted: true` on a replay whose body was over the stored-body cap and
/// was not kept (the status and headers are the original's).
pub static IDEMPOTENT_BODY_OMITTED: HeaderName = HeaderName::from_static("idempotent-body-omitted");

use floodwall_core::BoxError;
type PrincipalFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

#[derive(Clone)]
struct Config {
    methods: Vec<Method>,
    require_key: bool,
    max_key_len: usize,
    max_request_body: usize,
    max_stored_body: usize,
    stored_headers: Vec<HeaderName>,
    fail_open: bool,
    principal: PrincipalFn,
}

/// Makes `POST` / `PATCH` handlers idempotent by `Idempotency-Key`. See the
/// [module docs](self).
///
/// ```
/// use floodwall_idempotency::{Idempotency, MemoryStore};
/// use floodwall_idempotency::http::IdempotencyLayer;
///
/// // Scope keys by the authenticated user (here: a header the auth layer set).
/// let layer = IdempotencyLayer::new(Idempotency::new(MemoryStore::new()), |parts| {
///     parts.headers.get("x-user-id")?.to_str().ok().map(str::to_owned)
/// })
/// .require_key(true);
/// # let _ = layer;
/// ```
pub struct IdempotencyLayer<S, M = Stored> {
    idem: Idempotency<S>,
    config: Arc<Config>,
    mode: PhantomData<fn() -> M>,
}

/// The layer's default mode: the handler runs, then its response is stored in the store (any
/// store); see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stored;

impl<S: Clone, M> Clone for IdempotencyLayer<S, M> {
    fn clone(&self) -> Self {
        IdempotencyLayer {
            idem: self.idem.clone(),
            config: self.config.clone(),
            mode: PhantomData,
        }
    }
}

impl<S: fmt::Debug, M> fmt::Debug for IdempotencyLayer<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("idem", &self.idem)
            .field("methods", &self.config.methods)
            .field("require_key", &self.config.require_key)
            .finish_non_exhaustive()
    }
}

impl<S> IdempotencyLayer<S> {
    /// Over `idem`'s store, lease, retention and conflict policy, with keys scoped by
    /// `principal` (a request without one shares the anonymous scope). Responses are stored
    /// in the store ([`Stored`]); over PostgreSQL,
    /// [`in_transaction`](IdempotencyLayer::in_transaction) commits them with the handler's
    /// own writes.
    pub fn new(
        idem: Idempotency<S>,
        principal: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        IdempotencyLayer {
            idem,
            config: Arc::new(Config {
                methods: vec![Method::POST, Method::PATCH],
                require_key: false,
                max_key_len: 255,
                max_request_body: 1 << 20,
                max_stored_body: 1 << 20,
                stored_headers: vec![CONTENT_TYPE, LOCATION],
                fail_open: false,
                principal: Arc::new(principal),
            }),
            mode: PhantomData,
        }
    }
}

impl<S, M> IdempotencyLayer<S, M> {
    /// This layer's own configuration: a clone configured afterwards gets a copy of its own,
    /// so configuring a clone never panics and never changes the original.
    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// The methods the layer applies to (default `POST`, `PATCH`).
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.config_mut().methods = methods.into_iter().collect();
        self
    }

    /// Whether a request without a key is refused with 400 (default: passed through).
    pub fn require_key(mut self, on: bool) -> Self {
        self.config_mut().require_key = on;
        self
    }

    /// The longest key accepted (default 255).
    pub fn max_key_len(mut self, n: usize) -> Self {
        self.config_mut().max_key_len = n;
        self
    }

    /// The largest request body read (default 1 MiB; larger: 413).
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.config_mut().max_request_body = bytes;
        self
    }

    /// The largest response body stored (default 1 MiB; larger responses are passed on and
    /// not stored).
    pub fn max_stored_body(mut self, bytes: usize) -> Self {
        self.config_mut().max_stored_body = bytes;
        self
    }

    /// The response headers stored and replayed (default `Content-Type`, `Location`).
    pub fn stored_headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.config_mut().stored_headers = headers.into_iter().collect();
        self
    }

    /// When the store is unreachable, run the request without idempotency instead of
    /// answering 503.
    pub fn fail_open(mut self, on: bool) -> Self {
        self.config_mut().fail_open = on;
        self
    }
}

impl<S: Clone, M, Svc> Layer<Svc> for IdempotencyLayer<S, M> {
    type Service = IdempotencyService<S, Svc, M>;

    fn layer(&self, inner: Svc) -> Self::Service {
        IdempotencyService {
            inner,
            idem: self.idem.clone(),
            config: self.config.clone(),
            mode: PhantomData,
        }
    }
}

/// The service [`IdempotencyLayer`] makes.
pub struct IdempotencyService<S, Svc, M = Stored> {
    inner: Svc,
    idem: Idempotency<S>,
    config: Arc<Config>,
    mode: PhantomData<fn() -> M>,
}

impl<S, Svc, M> IdempotencyService<S, Svc, M> {
    /// The inner service.
    pub fn get_ref(&self) -> &Svc {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut Svc {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> Svc {
        self.inner
    }
}

impl<S: Clone, Svc: Clone, M> Clone for IdempotencyService<S, Svc, M> {
    fn clone(&self) -> Self {
        IdempotencyService {
            inner: self.inner.clone(),
            idem: self.idem.clone(),
            config: self.config.clone(),
            mode: PhantomData,
        }
    }
}

impl<S, Svc: fmt::Debug, M> fmt::Debug for IdempotencyService<S, Svc, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// A problem+json (RFC 9457) response.
fn problem<B: From<Bytes>>(
    status: StatusCode,
    kind: &str,
    title: &str,
    detail: &str,
) -> Response<B> {
    let kind = format!("idempotency:{kind}");
    let body = floodwall_core::problem::body(&kind, title, status.as_u16(), detail, "");
    let mut r = Response::new(B::from(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(floodwall_core::problem::CONTENT_TYPE),
    );
    r
}

/// Whether a response with this status is stored (see the module docs).
fn is_storable(status: StatusCode) -> bool {
    let code = status.as_u16();
    (200..500).contains(&code) && !matches!(code, 408 | 409 | 425 | 429)
}

impl<S, Svc, M, ReqBody, ResBody> Service<Request<ReqBody>> for IdempotencyService<S, Svc, M>
where
    S: Store + Clone,
    M: Mode<S>,
    Svc: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Send + 'static,
    ReqBody: Body + From<Bytes> + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body + From<Bytes> + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = Svc::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<ResBody>, Svc::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        let idem = self.idem.clone();
        Box::pin(async move {
            if !config.methods.contains(req.method()) {
                return inner.call(req).await;
            }
            let key = match read_key(req.headers(), &config) {
                Ok(Some(key)) => key,
                Ok(None) => return inner.call(req).await,
                Err(problem) => return Ok(problem),
            };
            let (mut parts, body) = req.into_parts();
            parts.extensions.insert(RequestKey(Arc::from(key.as_str())));
            let Ok(body) = Limited::new(body, config.max_request_body).collect().await else {
                return Ok(problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body-too-large",
                    "Request body too large",
                    &format!("At most {} bytes are accepted.", config.max_request_body),
                ));
            };
            let body = body.to_bytes();
            let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let fingerprint =
                Fingerprint::of_parts([parts.method.as_str().as_bytes(), target.as_bytes(), &body]);
            let principal = (config.principal)(&parts).unwrap_or_default();
            // Length-prefixed so that no principal/key pair can imitate another.
            let scoped = format!("{}:{principal}:{key}", principal.len());
            let request = Request::from_parts(parts, ReqBody::from(body));
            let token = match idem.begin_waiting(&scoped, &fingerprint).await {
                Ok(Begin::Claimed(token)) => token,
                Ok(other) => return Ok(answer_unclaimed(other, idem.counters())),
                Err(e) if config.fail_open => {
                    tracing::warn!(error = %e, "idempotency store unavailable; running unprotected");
                    return inner.call(request).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "idempotency store unavailable; answering 503");
                    let mut r = problem(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store-unavailable",
                        "Idempotency unavailable",
                        "The request was not run; retry later with the same key.",
                    );
                    // A claim whose reply was lost holds the key one lease at most.
                    r.headers_mut().insert(
                        RETRY_AFTER,
                        HeaderValue::from(whole_seconds(idem.lease_duration())),
                    );
                    return Ok(r);
                }
            };
            idem.counters().executed();
            // Once claimed, the handler and the storing of its response run to completion on
            // their own task, even if the client goes away and this future is dropped: a
            // retry then replays instead of finding the key stuck until the lease ends.
            let claim = HttpClaim {
                idem,
                config,
                key: scoped,
                token,
            };
            match tokio::spawn(M::run(claim, inner, request)).await {
                Ok(result) => result,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => Ok(problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting-down",
                    "Service shutting down",
                    "The request was cancelled; retry with the same key.",
                )),
            }
        })
    }
}

/// The `Idempotency-Key` a client sent, as the layer read it (unquoted; not scoped by the
/// principal), in the extensions of every request the layer passes to its handler. Hand it
/// on (derived per upstream call) to the APIs the handler calls on the client's behalf: see
/// the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestKey(Arc<str>);

impl RequestKey {
    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The answer to a request whose key was not claimed: the replay, a 409 or a 422.
fn answer_unclaimed<B: From<Bytes>>(begin: Begin, counters: &Counters) -> Response<B> {
    match begin {
        Begin::Completed(record) => {
            let Some((status, headers, body, omitted)) = decode_response(&record) else {
                tracing::warn!("an idempotency record did not decode; answering 500");
                return problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "record-unreadable",
                    "Stored response unreadable",
                    "The stored response for this key could not be read.",
                );
            };
            counters.replayed();
            let mut r = Response::new(B::from(body));
            *r.status_mut() = status;
            for (n, v) in headers {
                r.headers_mut().append(n, v);
            }
            r.headers_mut().insert(
                IDEMPOTENT_REPLAYED.clone(),
                HeaderValue::from_static("true"),
            );
            if omitted {
                r.headers_mut().insert(
                    IDEMPOTENT_BODY_OMITTED.clone(),
                    HeaderValue::from_static("true"),
                );
            }
            r
        }
        Begin::InProgress { retry_after } => {
            counters.conflict();
            let mut r = problem(
                StatusCode::CONFLICT,
                "in-progress",
                "A request with this Idempotency-Key is being processed",
                "Retry after the first request has finished.",
            );
            // The lease left: the key is free by then at the latest (a live holder renews it
            // and usually finishes sooner; a crashed one does not).
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(whole_seconds(retry_after)));
            r
        }
        Begin::Mismatch | Begin::Claimed(_) => {
            counters.mismatch();
            problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "key-reused",
                "Idempotency-Key is already used",
                "This key was used with a different request payload.",
            )
        }
    }
}

/// `d` in whole seconds, rounded up, at least 1 (the unit of `Retry-After`).
fn whole_seconds(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::stored::encode_response;
    use super::*;

    #[test]
    fn stored_responses_round_trip() {
        let headers = vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
        let rec = encode_response(StatusCode::CREATED, &headers, Some(b"{\"id\":1}"));
        let (status, h, body, omitted) = decode_response(&rec).unwrap();
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(h, headers);
        assert_eq!(&body[..], b"{\"id\":1}");
        assert!(!omitted);
        let rec = encode_response(StatusCode::CREATED, &headers, None);
        let (status, h, body, omitted) = decode_response(&rec).unwrap();
        assert_eq!(
            (status, h, body.len(), omitted),
            (StatusCode::CREATED, headers, 0, true)
        );
        assert!(decode_response(&rec[..rec.len() - 9]).is_none() || rec.len() < 9);
        assert!(decode_response(b"FWI\x01\x03\x00").is_none());
    }

    #[test]
    fn storable_statuses() {
        assert!(is_storable(StatusCode::OK));
        assert!(is_storable(StatusCode::BAD_REQUEST));
        assert!(!is_storable(StatusCode::CONFLICT));
        assert!(!is_storable(StatusCode::TOO_MANY_REQUESTS));
        assert!(!is_storable(StatusCode::INTERNAL_SERVER_ERROR));
    }
}
