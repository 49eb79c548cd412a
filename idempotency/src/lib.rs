//! # floodwall-idempotency
//!
//! floodwall-idempotency runs an operation at most once per idempotency key: the first call
//! runs and its result is stored, retries get the stored result, concurrent duplicates get a
//! conflict (or wait for the first), and a key reused with another payload is refused.
//!
//! ```
//! use std::time::Duration;
//! use floodwall_idempotency::{Fingerprint, Idempotency, MemoryStore, RunError};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let payments = Idempotency::builder(MemoryStore::new())
//!     .lease(Duration::from_secs(10))
//!     .build()
//!     .unwrap();
//! let body = br#"{"amount": 4200, "card": "tok_visa"}"#;
//! let fp = Fingerprint::of(body);
//!
//! let charge = || async { Ok::<_, String>("ch_1".to_string()) };
//! let first = payments.run("key-1", &fp, charge).await.unwrap();
//! assert!(!first.is_replayed());
//! // The client retries after a dropped response: the stored result, no second charge.
//! let retry = payments.run("key-1", &fp, charge).await.unwrap();
//! assert!(retry.is_replayed());
//! assert_eq!(retry.into_inner(), "ch_1");
//! // The same key with another body is a client error.
//! let other = Fingerprint::of(br#"{"amount": 9900}"#);
//! assert!(matches!(payments.run("key-1", &other, charge).await, Err(RunError::FingerprintMismatch)));
//! # }
//! ```
//!
//! # What is here
//!
//! - A [`Store`] protocol — `begin` claims a key with a lease and a fencing [`Token`] (or
//!   answers the completed record, "in progress", or a fingerprint mismatch); `complete`
//!   stores a result only while the token still holds the key; `abort` releases the claim or
//!   records a failure; `extend` renews the lease — with a bounded in-memory store
//!   ([`MemoryStore`]) and (feature `redis`) a Redis / Redis Cluster store, one Lua script per
//!   step.
//! - Short leases with a heartbeat: a claim is taken for [`DEFAULT_LEASE`] (5 s) and renewed
//!   every third of it while the operation runs, so a crashed holder — or a claim whose reply
//!   was lost — blocks its key for at most one lease, however long operations run. Storing
//!   the result, or releasing the claim, is retried until the lease ends; when it still
//!   fails the caller is told ([`Outcome::Unrecorded`], [`RunError::Unreleased`]), never
//!   handed a silent `Fresh`.
//! - [`Idempotency::run`]: the plain API, results as serde values (JSON) in a versioned
//!   envelope; [`Outcome`] tells fresh from replayed (and from unrecorded).
//! - [`Deduplicator`]: at-most-once processing of queue messages within a window.
//! - (feature `postgres`) `postgres::PostgresStore`: the same protocol on PostgreSQL
//!   (sqlx), one PL/pgSQL function per step on the database's clock, and
//!   `Idempotency::run_in_transaction`, where the business writes and the stored result
//!   commit in one transaction; `Idempotency::run_phased` resumes a multi-step operation
//!   (one that calls a payment API between its writes) from its last committed recovery
//!   point.
//! - (feature `http`) `http::IdempotencyLayer`: the IETF `Idempotency-Key` header draft —
//!   400 for a missing or malformed key when required, 409 while in progress, 422 for a
//!   reused key with another payload (problem+json), stored responses replayed with
//!   `Idempotent-Replayed: true`, keys scoped by a principal.
//! - (feature `metrics`) counters, listed in the metrics section below.
//!
//! # Metrics
//!
//! `floodwall_idempotency_executions_total`, `_replays_total`, `_conflicts_total`,
//! `_mismatches_total`, `_duplicates_total`, `_unrecorded_total` and `_unreleased_total`
//! (all prefixed `floodwall_idempotency_`).
//!
//! Time-dependent parts read time through [`Clock`], so tests drive them with
//! [`ManualClock`].
#![cfg_attr(docsrs, feature(doc_cfg))]

mod claim;
mod dedup;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
mod metrics;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
mod record;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod run;
mod store;

pub use dedup::{Deduplicator, Processed};
pub use floodwall_core::{Clock, ManualClock, StoreError, SystemClock};
pub use record::{Abort, Begin, FORMAT_VERSION, Fingerprint, Finish, Token};
pub use run::{
    ConfigError, DEFAULT_LEASE, Idempotency, IdempotencyBuilder, OnConflict, Outcome, RunError,
};
pub use store::{COMPLETION_GRACE, DEFAULT_MAX_RECORDS, MemoryStore, Store};

/// Registers the description and unit of every metric this crate emits with the installed
/// `metrics` recorder (so Prometheus shows `# HELP`). Building an `Idempotency` or a
/// `Deduplicator` does it; call it yourself after installing a recorder if they were built
/// before.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn describe_metrics() {
    use ::metrics::{Unit, describe_counter, describe_histogram};
    describe_histogram!(
        "floodwall_idempotency_store_call_duration_seconds",
        Unit::Seconds,
        "How long each idempotency store call took, by op (begin, complete, abort, extend)"
    );
    for (name, help) in [
        (
            "floodwall_idempotency_executions_total",
            "Operations run (claims won)",
        ),
        (
            "floodwall_idempotency_replays_total",
            "Stored results replayed",
        ),
        (
            "floodwall_idempotency_conflicts_total",
            "Duplicates answered \"in progress\"",
        ),
        (
            "floodwall_idempotency_mismatches_total",
            "Keys reused with another payload",
        ),
        (
            "floodwall_idempotency_duplicates_total",
            "Queue messages skipped as already processed",
        ),
        (
            "floodwall_idempotency_unrecorded_total",
            "Operations that ran but whose result could not be stored",
        ),
        (
            "floodwall_idempotency_unreleased_total",
            "Claims that could not be released",
        ),
    ] {
        describe_counter!(name, Unit::Count, help);
    }
}

/// The README's example, compiled and run as a doctest so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
