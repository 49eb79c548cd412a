//! [`LimitName`]: a limit's name, cheap to hand out with every verdict.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::{Arc, Mutex, OnceLock};

/// Names kept for the life of the process, at most.
const INTERNED_NAMES: usize = 4096;
/// Longest name kept for the life of the process, in bytes.
const INTERNED_LEN: usize = 64;

/// A limit's name, as a [`Verdict`](crate::Verdict) reports it. Derefs to `str`.
///
/// Every verdict carries the binding limit's name, so cloning one must cost nothing: the
/// first 4096 distinct names of at most 64 bytes are kept for the life of the process (their
/// bytes: at most 256 KB) and a clone copies a pointer; any other name is shared through an
/// `Arc` (a clone is a reference-count increment).
///
/// ```
/// use floodwall_limiter::LimitName;
///
/// let name = LimitName::from("per-user");
/// assert_eq!(&*name, "per-user");
/// assert_eq!(name, "per-user");
/// ```
#[derive(Clone)]
pub struct LimitName(Repr);

#[derive(Clone)]
enum Repr {
    Static(&'static str),
    Shared(Arc<str>),
}

fn interned(name: &str) -> Option<&'static str> {
    if name.len() > INTERNED_LEN {
        return None;
    }
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(&kept) = names.get(name) {
        return Some(kept);
    }
    if names.len() >= INTERNED_NAMES {
        return None;
    }
    let kept: &'static str = Box::leak(name.into());
    names.insert(kept);
    Some(kept)
}

impl From<&str> for LimitName {
    fn from(name: &str) -> Self {
        LimitName(match interned(name) {
            Some(kept) => Repr::Static(kept),
            None => Repr::Shared(name.into()),
        })
    }
}

impl Deref for LimitName {
    type Target = str;

    #[inline]
    fn deref(&self) -> &str {
        match &self.0 {
            Repr::Static(s) => s,
            Repr::Shared(s) => s,
        }
    }
}

impl AsRef<str> for LimitName {
    fn as_ref(&self) -> &str {
        self
    }
}

impl Borrow<str> for LimitName {
    fn borrow(&self) -> &str {
        self
    }
}

impl PartialEq for LimitName {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for LimitName {}

impl PartialEq<str> for LimitName {
    fn eq(&self, other: &str) -> bool {
        &**self == other
    }
}

impl PartialEq<&str> for LimitName {
    fn eq(&self, other: &&str) -> bool {
        &**self == *other
    }
}

impl Hash for LimitName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self).hash(state)
    }
}

impl fmt::Debug for LimitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl fmt::Display for LimitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_kept_long_ones_shared() {
        let a = LimitName::from("user");
        let b = LimitName::from("user");
        assert!(matches!((&a.0, &b.0), (Repr::Static(x), Repr::Static(y)) if std::ptr::eq(*x, *y)));
        let long = "x".repeat(INTERNED_LEN + 1);
        let c = LimitName::from(long.as_str());
        assert!(matches!(c.0, Repr::Shared(_)));
        assert_eq!(&*c, long);
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "user");
    }
}
