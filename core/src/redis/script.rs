//! Lua scripts and their invocations.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use ::redis::{Cmd, ToRedisArgs};

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
            data: Vec::with_capacity(128),
            pieces: Vec::with_capacity(8),
            num_keys: 0,
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
/// All keys must share one hash tag when the connection is a Cluster. Keys and arguments are
/// written into one buffer as they are added, so building the `EVALSHA` command copies them
/// once.
#[must_use = "a ScriptCall does nothing until passed to RedisConnection::invoke"]
pub struct ScriptCall<'a> {
    pub(super) script: &'a Script,
    /// Every key's and argument's bytes, back to back.
    data: Vec<u8>,
    /// Where each piece ends in `data`, and whether it is a key.
    pieces: Vec<(usize, bool)>,
    num_keys: usize,
}

/// Appends `ToRedisArgs` output to a [`ScriptCall`]'s buffer.
struct Writer<'c> {
    data: &'c mut Vec<u8>,
    pieces: &'c mut Vec<(usize, bool)>,
    key: bool,
    count: usize,
}

impl ::redis::RedisWrite for Writer<'_> {
    fn write_arg(&mut self, arg: &[u8]) {
        self.data.extend_from_slice(arg);
        self.pieces.push((self.data.len(), self.key));
        self.count += 1;
    }

    fn writer_for_next_arg(&mut self) -> impl std::io::Write + '_ {
        // Close the piece first: bytes written through the writer extend it.
        self.pieces.push((self.data.len(), self.key));
        self.count += 1;
        PieceWriter {
            data: &mut *self.data,
            end: self.pieces.last_mut().map(|p| &mut p.0),
        }
    }
}

/// Writes one piece's bytes and keeps its end offset current.
struct PieceWriter<'w> {
    data: &'w mut Vec<u8>,
    end: Option<&'w mut usize>,
}

impl std::io::Write for PieceWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.data.extend_from_slice(buf);
        if let Some(end) = self.end.as_deref_mut() {
            *end = self.data.len();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ScriptCall<'_> {
    fn push(&mut self, value: impl ToRedisArgs, key: bool) -> usize {
        let mut w = Writer {
            data: &mut self.data,
            pieces: &mut self.pieces,
            key,
            count: 0,
        };
        value.write_redis_args(&mut w);
        w.count
    }

    /// Appends a key (`KEYS[n]`).
    pub fn key(mut self, key: impl ToRedisArgs) -> Self {
        self.num_keys += self.push(key, true);
        self
    }

    /// Appends an argument (`ARGV[n]`).
    pub fn arg(mut self, arg: impl ToRedisArgs) -> Self {
        self.push(arg, false);
        self
    }

    /// Each piece's bytes, in order, with whether it is a key.
    fn pieces(&self) -> impl Iterator<Item = (&[u8], bool)> {
        let mut start = 0;
        self.pieces.iter().map(move |&(end, key)| {
            let piece = &self.data[start..end];
            start = end;
            (piece, key)
        })
    }

    /// The first key's bytes: what a Cluster routes the call by.
    pub fn first_key(&self) -> Option<&[u8]> {
        self.pieces().find(|(_, key)| *key).map(|(b, _)| b)
    }

    /// Number of keys added so far.
    pub fn num_keys(&self) -> usize {
        self.num_keys
    }

    /// The command: `EVALSHA sha n keys… args…` or, with `by_source`, `EVAL source n …`.
    pub(super) fn command(&self, by_source: bool) -> Cmd {
        let head = if by_source {
            self.script.source()
        } else {
            self.script.sha1()
        };
        let mut cmd = Cmd::with_capacity(self.pieces.len() + 3, self.data.len() + head.len() + 16);
        cmd.arg(if by_source { "EVAL" } else { "EVALSHA" })
            .arg(head)
            .arg(self.num_keys);
        for (piece, _) in self.pieces().filter(|(_, key)| *key) {
            cmd.arg(piece);
        }
        for (piece, _) in self.pieces().filter(|(_, key)| !*key) {
            cmd.arg(piece);
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
