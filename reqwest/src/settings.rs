//! [`RequestSettings`]: one request's own bounds, retries and idempotency key.

use std::num::NonZeroU32;
use std::time::Duration;

use http::Extensions;

/// One request's own settings, read by floodwall's middleware from the request's extensions
/// (`reqwest_middleware::RequestBuilder::with_extension`). Each one left unset keeps the
/// stack's. One client serves requests with different needs:
///
/// ```no_run
/// use std::num::NonZeroU32;
/// use std::time::Duration;
/// use floodwall_reqwest::RequestSettings;
///
/// # async fn demo(client: floodwall_reqwest::reqwest_middleware::ClientWithMiddleware)
/// # -> Result<(), Box<dyn std::error::Error>> {
/// // A quick read: 400 ms per attempt.
/// let profile = client
///     .get("https://api.example.com/profile")
///     .with_extension(RequestSettings::new().attempt_timeout(Duration::from_millis(400)))
///     .send()
///     .await?;
/// // A charge: 1.5 s per attempt, the caller's own key on every attempt (and on the
/// // caller's own retry after a 504: the server charges once).
/// let charge = client
///     .post("https://api.example.com/charges")
///     .body("{}")
///     .with_extension(
///         RequestSettings::new()
///             .attempt_timeout(Duration::from_millis(1500))
///             .idempotency_key("order-42-charge"),
///     )
///     .send()
///     .await?;
/// # let _ = (profile, charge); Ok(()) }
/// ```
///
/// Who reads what:
///
/// | setting | read by |
/// |---|---|
/// | [`attempt_timeout`](Self::attempt_timeout) | [`TimeoutMiddleware`](crate::TimeoutMiddleware) (in place of its bound), [`HostPipeline`](crate::HostPipeline) (in place of the host's attempt timeout) |
/// | [`timeout`](Self::timeout) | [`RetryMiddleware`](crate::RetryMiddleware) and [`HostPipeline`](crate::HostPipeline): a bound on the whole call, retries included |
/// | [`max_attempts`](Self::max_attempts), [`no_retry`](Self::no_retry) | [`RetryMiddleware`](crate::RetryMiddleware), [`HostPipeline`](crate::HostPipeline): at most this many attempts (never more than the retry's own) |
/// | [`idempotency_key`](Self::idempotency_key) | [`IdempotencyKey`](crate::IdempotencyKey): this key rather than a generated one |
///
/// reqwest's own per-request timeout (`RequestBuilder::timeout`) is honoured too: a
/// [`TimeoutMiddleware`](crate::TimeoutMiddleware) bounds such a request by it when no `attempt_timeout` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "settings do nothing until put in a request's extensions"]
pub struct RequestSettings {
    attempt_timeout: Option<Duration>,
    timeout: Option<Duration>,
    max_attempts: Option<NonZeroU32>,
    idempotency_key: Option<String>,
}

impl RequestSettings {
    /// No setting of its own: the stack's apply.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bound on each attempt of this request.
    pub fn attempt_timeout(mut self, after: Duration) -> Self {
        self.attempt_timeout = Some(after);
        self
    }

    /// The bound on the whole call, retries and backoff included.
    pub fn timeout(mut self, after: Duration) -> Self {
        self.timeout = Some(after);
        self
    }

    /// At most `n` attempts (the retry's own limit still applies).
    pub fn max_attempts(mut self, n: NonZeroU32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// One attempt: this request is not retried.
    pub fn no_retry(self) -> Self {
        self.max_attempts(NonZeroU32::MIN)
    }

    /// The `Idempotency-Key` this request carries: the caller's own, so a caller that sends
    /// the same logical request again (after a `504`, a crash, a redeploy) is recognised by a
    /// server that honours the header. A `POST` or `PATCH` with a key is retried by
    /// [`RetryMiddleware`](crate::RetryMiddleware). Sent as an RFC 8941 string (`"…"`) unless already quoted.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// The settings in `extensions`, if a request carries some.
    pub fn of(extensions: &Extensions) -> Option<&RequestSettings> {
        extensions.get::<RequestSettings>()
    }

    /// The attempt bound set, if any.
    pub fn attempt_timeout_value(&self) -> Option<Duration> {
        self.attempt_timeout
    }

    /// The whole-call bound set, if any.
    pub fn timeout_value(&self) -> Option<Duration> {
        self.timeout
    }

    /// The attempt limit set, if any.
    pub fn max_attempts_value(&self) -> Option<NonZeroU32> {
        self.max_attempts
    }

    /// The idempotency key set, if any.
    pub fn idempotency_key_value(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }
}
