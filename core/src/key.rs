//! Collision-free, length-bounded keys for Redis and in-memory maps.
//!
//! Every key floodwall stores has the shape
//!
//! ```text
//! <namespace>:v<version>:{<routing>}[:<part>]*
//! ```
//!
//! for example `user:v2:{42}:profile`. The `{routing}` part is a Redis Cluster **hash tag**:
//! Cluster places every key with the same routing part in one slot, so a Lua script may touch
//! several of them. Bumping a [`Keyspace`]'s version makes every key of the old version
//! unreachable at once (a deploy with a new value layout never reads old bytes).
//!
//! # Encoding
//!
//! The namespace is chosen by the developer and validated (`[A-Za-z0-9_.-]`, 1 to
//! [`MAX_NAMESPACE_LEN`] bytes). The routing part and the parts come from users and are
//! encoded so no input can forge structure:
//!
//! - every byte outside printable ASCII (`0x21..=0x7E`) and each of `% : { } #` is written as
//!   `%XX` (upper-case hex), so a part never contains the separator `:`, a brace that would move
//!   the hash tag, or a `#`;
//! - the empty part is written `%` (which no non-empty input produces, as a literal `%` is
//!   `%25`), so the hash tag is never `{}` (Redis would then hash the whole key);
//! - a part whose encoding is longer than [`MAX_PART_LEN`] bytes is replaced by `#` followed by
//!   32 hex digits of its SHA-256 (128 bits);
//! - if all parts after the routing part together encode to more than [`MAX_PARTS_LEN`]
//!   bytes, that whole section is replaced by `:##` followed by 32 hex digits of its SHA-256.
//!
//! # Invariants
//!
//! - **Injective**: decoding is unambiguous (each literal part decodes uniquely, hashed parts
//!   start with `#` and hashed sections with `##`, which no literal produces), so two distinct
//!   inputs give two distinct keys unless SHA-256 truncated to 128 bits collides.
//! - **Bounded**: every key is at most [`MAX_KEY_LEN`] bytes, whatever the input.
//! - **Hash tag intact**: the first `{` of the key opens the routing part and the first `}`
//!   closes it, so [`Key::hash_tag`] is exactly what Redis Cluster hashes.
//!
//! ```
//! use floodwall_core::key::Keyspace;
//!
//! let users = Keyspace::new("user", 2).unwrap();
//! let key = users.key("42").part("profile").build();
//! assert_eq!(key.as_str(), "user:v2:{42}:profile");
//! assert_eq!(key.hash_tag(), "42");
//!
//! // Hostile input cannot add separators or braces.
//! let key = users.key("a}b").part("x:y").build();
//! assert_eq!(key.as_str(), "user:v2:{a%7Db}:x%3Ay");
//!
//! // Long parts are hashed, so keys stay bounded.
//! let long = "x".repeat(10_000);
//! let key = users.key(&long).build();
//! assert!(key.as_str().len() <= floodwall_core::key::MAX_KEY_LEN);
//! assert!(key.hash_tag().starts_with('#'));
//! ```

use std::borrow::Borrow;
use std::fmt;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::error::KeyError;

/// Longest namespace accepted by [`Keyspace::new`], in bytes.
pub const MAX_NAMESPACE_LEN: usize = 48;
/// Longest encoded routing part or part; longer ones are replaced by a 33-byte hash.
pub const MAX_PART_LEN: usize = 96;
/// Longest encoded section of parts after the routing part (separators included); a longer
/// section is replaced by a 35-byte hash.
pub const MAX_PARTS_LEN: usize = 256;
/// Upper bound on the length of any [`Key`], in bytes.
pub const MAX_KEY_LEN: usize = MAX_NAMESPACE_LEN
    + ":v".len()
    + U32_DIGITS
    + ":{".len()
    + MAX_PART_LEN
    + "}".len()
    + MAX_PARTS_LEN;

const U32_DIGITS: usize = 10;
const HASH_HEX_LEN: usize = 32;
const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// A namespace plus a version: the fixed prefix of a family of keys (`user:v2:`).
///
/// Cheap to clone; build one per kind of stored thing and reuse it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Keyspace {
    namespace: Box<str>,
    version: u32,
    prefix: Box<str>,
}

impl Keyspace {
    /// Validates `namespace` (1 to [`MAX_NAMESPACE_LEN`] bytes of `[A-Za-z0-9_.-]`) and builds
    /// the keyspace `namespace:v<version>`.
    pub fn new(namespace: &str, version: u32) -> Result<Self, KeyError> {
        if namespace.is_empty() {
            return Err(KeyError::InvalidNamespace {
                namespace: namespace.into(),
                reason: "it is empty",
            });
        }
        if namespace.len() > MAX_NAMESPACE_LEN {
            return Err(KeyError::InvalidNamespace {
                namespace: namespace.chars().take(MAX_NAMESPACE_LEN).collect(),
                reason: "it is longer than 48 bytes",
            });
        }
        if !namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(KeyError::InvalidNamespace {
                namespace: namespace.into(),
                reason: "only ASCII letters, digits, '_', '.' and '-' are allowed",
            });
        }
        Ok(Keyspace {
            namespace: namespace.into(),
            version,
            prefix: format!("{namespace}:v{version}:").into(),
        })
    }

    /// The namespace, as given.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The same namespace at another version.
    pub fn with_version(&self, version: u32) -> Keyspace {
        Keyspace {
            namespace: self.namespace.clone(),
            version,
            prefix: format!("{}:v{version}:", self.namespace).into(),
        }
    }

    /// Starts a key whose hash tag is `routing`. All keys with the same keyspace and routing
    /// part land in the same Redis Cluster slot.
    pub fn key(&self, routing: impl AsRef<[u8]>) -> KeyBuilder {
        let mut buf = String::with_capacity(self.prefix.len() + 48);
        buf.push_str(&self.prefix);
        buf.push('{');
        push_part(&mut buf, routing.as_ref());
        buf.push('}');
        let parts_start = buf.len();
        KeyBuilder { buf, parts_start }
    }

    /// Starts a key whose hash tag is the store's own, not a user's: `#` followed by `tag`,
    /// for state a store spreads over slots itself (a shard of many users' states).
    ///
    /// No routing part passed to [`key`](Self::key) encodes to such a tag — a literal `#` is
    /// escaped, and a hashed part is `#` followed by exactly 32 hex digits — so these keys
    /// never meet a user-routed key, provided `tag` is not 32 hex digits.
    ///
    /// # Panics
    ///
    /// If `tag` is empty, longer than 32 bytes, 32 hex digits, or holds anything but ASCII
    /// letters, digits, `.` and `-` (a store's constant, never user input).
    pub fn store_key(&self, tag: &str) -> KeyBuilder {
        assert!(
            !tag.is_empty()
                && tag.len() <= 32
                && !(tag.len() == HASH_HEX_LEN && tag.bytes().all(|b| b.is_ascii_hexdigit()))
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')),
            "a store key's tag is 1 to 32 bytes of [A-Za-z0-9.-], not 32 hex digits: {tag:?}"
        );
        let mut buf = String::with_capacity(self.prefix.len() + tag.len() + 40);
        buf.push_str(&self.prefix);
        buf.push_str("{#");
        buf.push_str(tag);
        buf.push('}');
        let parts_start = buf.len();
        KeyBuilder { buf, parts_start }
    }
}

impl fmt::Debug for Keyspace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyspace")
            .field("namespace", &self.namespace)
            .field("version", &self.version)
            .finish()
    }
}

impl fmt::Display for Keyspace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:v{}", self.namespace, self.version)
    }
}

/// Builds a [`Key`] part by part. Made by [`Keyspace::key`].
#[derive(Debug, Clone)]
#[must_use = "a KeyBuilder does nothing until `build` is called"]
pub struct KeyBuilder {
    buf: String,
    parts_start: usize,
}

impl KeyBuilder {
    /// Appends an arbitrary (user-supplied) part; it is escaped or hashed as needed.
    pub fn part(mut self, part: impl AsRef<[u8]>) -> Self {
        self.buf.push(':');
        push_part(&mut self.buf, part.as_ref());
        self
    }

    /// Appends a number as a part. `part_u64(42)` and `part("42")` give the same key.
    pub fn part_u64(mut self, n: u64) -> Self {
        // Digits need no escaping; writing to a String cannot fail.
        let _ = write!(self.buf, ":{n}");
        self
    }

    /// Finishes the key, hashing the parts section if it grew past [`MAX_PARTS_LEN`].
    pub fn build(mut self) -> Key {
        let section_len = self.buf.len() - self.parts_start;
        if section_len > MAX_PARTS_LEN {
            let digest = Sha256::digest(&self.buf.as_bytes()[self.parts_start..]);
            self.buf.truncate(self.parts_start);
            self.buf.push_str(":##");
            push_hex(&mut self.buf, &digest[..HASH_HEX_LEN / 2]);
        }
        debug_assert!(self.buf.len() <= MAX_KEY_LEN);
        Key(self.buf)
    }
}

/// A finished key: `namespace:vN:{routing}:part…`. See the [module docs](self).
///
/// Compares, hashes and orders as its string, so it can key a `HashMap` directly.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    /// The key as text (always ASCII).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The content of the hash tag: what Redis Cluster hashes to pick the slot.
    pub fn hash_tag(&self) -> &str {
        // Invariant: a built key holds exactly one '{' before the first '}', both ASCII.
        let open = self.0.find('{').map_or(0, |i| i + 1);
        let close = self.0[open..].find('}').map_or(self.0.len(), |i| open + i);
        &self.0[open..close]
    }

    /// Consumes the key, returning its string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<Key> for String {
    fn from(key: Key) -> String {
        key.0
    }
}

#[cfg(feature = "redis")]
impl redis::ToRedisArgs for Key {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        out.write_arg(self.0.as_bytes());
    }
}

#[cfg(feature = "redis")]
impl redis::ToSingleRedisArg for Key {}

#[inline]
fn needs_escape(b: u8) -> bool {
    !(0x21..=0x7E).contains(&b) || matches!(b, b'%' | b':' | b'{' | b'}' | b'#')
}

/// Appends the encoding of one user-supplied part (see the module docs).
/// `part` encoded as a key's routing part or part is (see the [module docs](self)): escaped,
/// or hashed when its encoding is longer than [`MAX_PART_LEN`]. A store that keeps a user's
/// state as a field of a shared hash names the field so: no two inputs share an encoding, and
/// the encoding never holds `:`, `{`, `}` or a literal `#`.
///
/// ```
/// assert_eq!(floodwall_core::key::encode_part("user:42"), "user%3A42");
/// assert_eq!(floodwall_core::key::encode_part(""), "%");
/// ```
pub fn encode_part(part: impl AsRef<[u8]>) -> String {
    let part = part.as_ref();
    let mut buf = String::with_capacity(part.len().min(MAX_PART_LEN) + 2);
    push_part(&mut buf, part);
    buf
}

fn push_part(buf: &mut String, part: &[u8]) {
    if part.is_empty() {
        buf.push('%');
        return;
    }
    let escaped_len: usize = part
        .iter()
        .map(|&b| if needs_escape(b) { 3 } else { 1 })
        .sum();
    if escaped_len > MAX_PART_LEN {
        buf.push('#');
        let digest = Sha256::digest(part);
        push_hex(buf, &digest[..HASH_HEX_LEN / 2]);
        return;
    }
    for &b in part {
        if needs_escape(b) {
            buf.push('%');
            buf.push(HEX[usize::from(b >> 4)] as char);
            buf.push(HEX[usize::from(b & 0xF)] as char);
        } else {
            buf.push(b as char);
        }
    }
}

fn push_hex(buf: &mut String, bytes: &[u8]) {
    for &b in bytes {
        buf.push(HEX[usize::from(b >> 4)] as char);
        buf.push(HEX[usize::from(b & 0xF)] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "not 32 hex digits")]
    fn a_store_key_tag_that_a_hashed_part_could_be_is_refused() {
        let _ = Keyspace::new("n", 1)
            .unwrap()
            .store_key("0123456789abcdef0123456789ABCDEF");
    }

    #[test]
    #[should_panic(expected = "[A-Za-z0-9.-]")]
    fn a_store_key_tag_with_a_brace_is_refused() {
        let _ = Keyspace::new("n", 1).unwrap().store_key("a}b");
    }

    #[test]
    fn namespace_is_validated() {
        assert!(Keyspace::new("", 1).is_err());
        assert!(Keyspace::new("a:b", 1).is_err());
        assert!(Keyspace::new("a{b", 1).is_err());
        assert!(Keyspace::new(&"n".repeat(MAX_NAMESPACE_LEN + 1), 1).is_err());
        assert!(Keyspace::new(&"n".repeat(MAX_NAMESPACE_LEN), u32::MAX).is_ok());
        let err = Keyspace::new("bad ns", 1).unwrap_err().to_string();
        assert!(err.contains("bad ns"), "{err}");
    }

    #[test]
    fn layout_and_escapes() {
        let ks = Keyspace::new("rl", 3).unwrap();
        assert_eq!(ks.key("").build().as_str(), "rl:v3:{%}");
        assert_eq!(ks.key("%").build().as_str(), "rl:v3:{%25}");
        assert_eq!(
            ks.key("u").part("").part_u64(7).build().as_str(),
            "rl:v3:{u}:%:7"
        );
        assert_eq!(
            ks.key("u").part("7").build(),
            ks.key("u").part_u64(7).build()
        );
        assert_eq!(ks.key("a b\n").build().as_str(), "rl:v3:{a%20b%0A}");
        assert_eq!(ks.key([0xFFu8]).build().as_str(), "rl:v3:{%FF}");
        assert_eq!(ks.key("#").build().hash_tag(), "%23");
    }

    #[test]
    fn versions_and_namespaces_separate_keys() {
        let v1 = Keyspace::new("user", 1).unwrap();
        let v2 = v1.with_version(2);
        assert_ne!(v1.key("1").build(), v2.key("1").build());
        assert_eq!(v2.key("1").build().as_str(), "user:v2:{1}");
        assert_eq!(v2.to_string(), "user:v2");
    }

    #[test]
    fn long_parts_and_sections_are_hashed() {
        let ks = Keyspace::new("k", 0).unwrap();
        let exact = "a".repeat(MAX_PART_LEN);
        assert_eq!(ks.key(&exact).build().hash_tag(), exact);
        let over = "a".repeat(MAX_PART_LEN + 1);
        let tag = ks.key(&over).build().hash_tag().to_owned();
        assert_eq!(tag.len(), 1 + HASH_HEX_LEN);
        assert!(tag.starts_with('#'));

        let mut b = ks.key("r");
        for _ in 0..100 {
            b = b.part("0123456789");
        }
        let key = b.build();
        assert!(key.as_str().starts_with("k:v0:{r}:##"), "{key}");
        assert_eq!(key.as_str().len(), "k:v0:{r}:##".len() + HASH_HEX_LEN);
    }
}
