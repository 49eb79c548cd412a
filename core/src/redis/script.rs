//! Lua scripts and their invocations.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use ::redis::{Arg, Cmd, ToRedisArgs};

/// A Lua script, identified on the server by the SHA-1 of its source.
///
/// `const`-constructible so scripts can live in `static`s; the SHA-1 is computed once, on first
/// use. Run it with [`RedisConnection::invoke`](super::RedisConnection::invoke).
pub struct Script {
    source: Cow<'static, str>,
    sha: OnceLock<String>,
}

impl Script {
    /// A script from its Lua source.
    pub const fn new(source: &'static str) -> Self {
        Script {
            source: Cow::Borrowed(source),
            sha: OnceLock::new(),
        }
    }

    /// A script from Lua source built at run time.
    pub fn from_source(source: String) -> Self {
        Script {
            source: Cow::Owned(source),
            sha: OnceLock::new(),
        }
    }

    /// The Lua source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The lower-case hex SHA-1 of the source, as `EVALSHA` expects it.
    pub fn sha1(&self) -> &str {
        self.sha
            .get_or_init(|| ::redis::Script::new(&self.source).get_hash().to_owned())
    }

    /// Starts an invocation: add keys with [`ScriptCall::key`], then arguments with
    /// [`ScriptCall::arg`].
    pub fn call(&self) -> ScriptCall<'_> {
        ScriptCall {
            script: self,
            keys: Cmd::new(),
            num_keys: 0,
            args: Cmd::new(),
        }
    }
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Script")
            .field("sha1", &self.sha1())
            .finish()
    }
}

/// One invocation of a [`Script`]: its `KEYS` and `ARGV`.
///
/// All keys must share one hash tag when the connection is a Cluster.
#[must_use = "a ScriptCall does nothing until passed to RedisConnection::invoke"]
pub struct ScriptCall<'a> {
    pub(super) script: &'a Script,
    keys: Cmd,
    num_keys: usize,
    args: Cmd,
}

impl ScriptCall<'_> {
    /// Appends a key (`KEYS[n]`).
    pub fn key(mut self, key: impl ToRedisArgs) -> Self {
        self.num_keys += key.num_of_args();
        self.keys.arg(key);
        self
    }

    /// Appends an argument (`ARGV[n]`).
    pub fn arg(mut self, arg: impl ToRedisArgs) -> Self {
        self.args.arg(arg);
        self
    }

    /// The first key's bytes: what a Cluster routes the call by.
    pub fn first_key(&self) -> Option<&[u8]> {
        match self.keys.args_iter().next() {
            Some(Arg::Simple(b)) => Some(b),
            _ => None,
        }
    }

    /// Number of keys added so far.
    pub fn num_keys(&self) -> usize {
        self.num_keys
    }

    /// The command: `EVALSHA sha n keys… args…` or, with `by_source`, `EVAL source n …`.
    pub(super) fn command(&self, by_source: bool) -> Cmd {
        let mut cmd = if by_source {
            let mut c = ::redis::cmd("EVAL");
            c.arg(self.script.source());
            c
        } else {
            let mut c = ::redis::cmd("EVALSHA");
            c.arg(self.script.sha1());
            c
        };
        cmd.arg(self.num_keys);
        for a in self.keys.args_iter().chain(self.args.args_iter()) {
            if let Arg::Simple(bytes) = a {
                cmd.arg(bytes);
            }
        }
        cmd
    }
}

impl fmt::Debug for ScriptCall<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptCall")
            .field("script", &self.script)
            .field("num_keys", &self.num_keys)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static S: Script = Script::new("return 1");

    #[test]
    fn sha_and_command_layout() {
        // SHA-1 of "return 1", as redis-cli SCRIPT LOAD prints it.
        assert_eq!(S.sha1(), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
        let call = S.call().key("k1").key("k2").arg(5).arg("x");
        assert_eq!(call.num_keys(), 2);
        let packed = call.command(false).get_packed_command();
        let text = String::from_utf8_lossy(&packed);
        assert!(text.contains("EVALSHA"));
        let order: Vec<&str> = ["e0e1f9", "\r\n2\r\n", "k1", "k2", "\r\n5\r\n", "x"]
            .into_iter()
            .collect();
        let mut at = 0;
        for piece in order {
            let found = text[at..]
                .find(piece)
                .unwrap_or_else(|| panic!("{piece} after {at} in {text:?}"));
            at += found + piece.len();
        }
        let by_source =
            String::from_utf8_lossy(&call.command(true).get_packed_command()).into_owned();
        assert!(by_source.contains("EVAL") && by_source.contains("return 1"));
    }
}
