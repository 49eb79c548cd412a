//! Errors shared by every floodwall crate.

use std::error::Error as StdError;
use std::time::Duration;

/// A boxed error, used as the source of [`StoreError::Unavailable`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// A [`Keyspace`](crate::key::Keyspace) could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The namespace is empty, too long or holds a character outside `[A-Za-z0-9_.-]`.
    #[error("invalid key namespace {namespace:?}: {reason}")]
    InvalidNamespace {
        /// The rejected namespace (cut to 48 characters).
        namespace: String,
        /// Why it was rejected.
        reason: &'static str,
    },
}

/// A call to a shared store (Redis, Redis Cluster) failed.
///
/// The variants are few on purpose: callers decide their failure policy on them.
/// [`StoreError::is_transient`] tells whether trying again later may succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No answer within the per-call bound.
    #[error("store call timed out after {after:?}")]
    Timeout {
        /// The bound that was exceeded.
        after: Duration,
    },
    /// The store cannot be reached or cannot serve now (connection refused or dropped,
    /// cluster down, loading, failing over).
    #[error("store unavailable: {message}")]
    Unavailable {
        /// What happened.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// The store answered something the client did not expect (wrong reply type or shape).
    #[error("store protocol error: {0}")]
    Protocol(String),
    /// Stored bytes could not be encoded or decoded (unknown format version, corrupt data).
    #[error("stored value could not be encoded or decoded: {0}")]
    Codec(String),
    /// A server-side script raised an error.
    #[error("store script failed: {0}")]
    Script(String),
    /// The store is misconfigured (bad URL, authentication refused, empty node list).
    #[error("invalid store configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// Builds an [`StoreError::Unavailable`] from a message.
    pub fn unavailable(message: impl Into<String>) -> Self {
        StoreError::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// Whether the same call may succeed later without any change on the caller's side:
    /// `true` for [`Timeout`](StoreError::Timeout) and [`Unavailable`](StoreError::Unavailable).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Timeout { .. } | StoreError::Unavailable { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_kinds() {
        assert!(
            StoreError::Timeout {
                after: Duration::from_millis(5)
            }
            .is_transient()
        );
        assert!(StoreError::unavailable("down").is_transient());
        assert!(!StoreError::Protocol("x".into()).is_transient());
        assert!(!StoreError::Codec("x".into()).is_transient());
        assert!(!StoreError::Script("x".into()).is_transient());
        assert!(!StoreError::Config("x".into()).is_transient());
        assert_eq!(
            StoreError::Timeout {
                after: Duration::from_millis(5)
            }
            .to_string(),
            "store call timed out after 5ms"
        );
    }
}
