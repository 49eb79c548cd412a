//! # floodwall-redis-module
//!
//! A Redis / Valkey module with one command, `FLOODWALL.GCRA`, that decides a batch of
//! floodwall-limiter's GCRA decisions on one shard hash natively: the same states, the same
//! verdicts, bit for bit, as the short path of the limiter's Lua script, without the Lua
//! interpreter's cost per decision. A limiter uses the command when the server has it, and
//! the script otherwise, on its own: load the module and nothing else changes.
//!
//! ```text
//! cargo build --release -p floodwall-redis-module
//! redis-server --loadmodule target/release/libfloodwall_redis_module.so
//! ```
//!
//! ## The command
//!
//! ```text
//! FLOODWALL.GCRA route 1 hash T b cost n field [field ...] [hash T b cost n field ...] ...
//! ```
//!
//! `1` is the protocol version. Then one segment per shard hash: the hash, `T` the emission
//! interval in nanoseconds, `b` the burst, `cost` each decision's cost, `n` and the `n`
//! fields, one decision each. The command decides every segment in order on one reading of
//! Redis's clock, and replies an array with one element per decision, segment by segment:
//! `ceil(level)` when allowed, `−ceil(level) − 1` when denied, or a string (that decision's
//! error). The formula and the hash's layout are in [`gcra`].
//!
//! `route` is the command's one declared key, the first segment's hash: a Cluster routes
//! and redirects the command by it, like any other. The other segments' hashes may be in
//! other slots of the same node (a node's batch); a hash this node does not serve (its slot
//! moved) is left untouched and each of its decisions replies [`ELSEWHERE`], for the client
//! to send again on its own. What the command writes is replicated as the `HSET`, `HDEL`
//! and `PEXPIRE` it ran, so replicas and the AOF need no module.
//!
//! The decision logic is a plain Rust function over a [`gcra::Shard`]; this runs it on an
//! in-memory hash:
//!
//! ```
//! use floodwall_redis_module::gcra::{decide, MemoryShard, Quota, Reply};
//!
//! let mut shard = MemoryShard::default();
//! // 1 per second, burst 1: the first is admitted, the second waits a second.
//! let quota = Quota::new(1_000_000_000, 1, 1);
//! let r = decide(&mut shard, 5_000_000.0, quota, &[b"k", b"k"]).unwrap();
//! assert_eq!(r, vec![Reply::Int(1_000_000), Reply::Int(-1_000_001)]);
//! assert_eq!(shard.ttl_ms, Some(2_001)); // the hash expires 1 s past its latest TAT
//! ```
//!
//! ## Safety
//!
//! The crate's `unsafe` is in `api.rs` (the module API's function pointers) and the command
//! entry below: each block states why it holds. A panic never crosses into Redis: the
//! command catches it and replies an error.

pub mod gcra;

mod api;

use std::ffi::{CString, c_int};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use api::{CallReply, Ctx, RString, api, bytes, reply_bytes};
use gcra::{Quota, Reading, Reply, Scan, Shard, Value};

/// The command's name.
pub const COMMAND: &str = "floodwall.gcra";
/// The protocol version the command speaks (its second argument).
pub const PROTOCOL: &[u8] = b"1";
/// The reply of a decision whose hash this Cluster node does not serve: it wrote nothing.
pub const ELSEWHERE: &[u8] = b"floodwall:elsewhere";

/// Redis calls this when it loads the module: registers `FLOODWALL.GCRA`.
///
/// # Safety
/// Called by Redis only, with its load context.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn RedisModule_OnLoad(
    ctx: *mut std::ffi::c_void,
    _argv: *mut *mut std::ffi::c_void,
    _argc: c_int,
) -> c_int {
    let ctx = ctx.cast::<Ctx>();
    // SAFETY: `ctx` is the load context Redis passed.
    if unsafe { api::load(ctx, c"floodwall", 1) }.is_err() {
        return api::ERR;
    }
    // SAFETY: the API is loaded; the strings are C strings; `gcra_command` has the command
    // signature. Key positions: the route only (first 1, last 1, step 1).
    let rc = unsafe {
        (api().create_command)(
            ctx,
            c"floodwall.gcra".as_ptr(),
            gcra_command,
            c"write deny-oom".as_ptr(),
            1,
            1,
            1,
        )
    };
    make_own_fields();
    api::status(rc == api::OK)
}

/// `FLOODWALL.GCRA route 1 hash T b cost n field… …`.
unsafe extern "C" fn gcra_command(ctx: *mut Ctx, argv: *mut *mut RString, argc: c_int) -> c_int {
    let argc = usize::try_from(argc).unwrap_or(0);
    if argc < 9 {
        // SAFETY: `ctx` is the command's context.
        return unsafe { (api().wrong_arity)(ctx) };
    }
    // SAFETY: Redis hands `argc` live argument strings, alive for the whole command.
    let argv = unsafe { std::slice::from_raw_parts(argv, argc) };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(ctx, argv)));
    match outcome {
        Ok(Ok(replies)) => {
            // SAFETY: `ctx` is the command's context; each reply's bytes live through the call.
            unsafe {
                (api().reply_with_array)(ctx, replies.len() as std::ffi::c_long);
                for r in &replies {
                    match r {
                        Reply::Int(n) => (api().reply_with_long_long)(ctx, *n),
                        Reply::Text(t) => {
                            (api().reply_with_string_buffer)(ctx, t.as_ptr().cast(), t.len())
                        }
                    };
                }
            }
            api::OK
        }
        Ok(Err(e)) => reply_error(ctx, &e),
        Err(_) => reply_error(ctx, b"ERR floodwall: the module failed deciding this batch"),
    }
}

/// Replies `message` as an error (its first word the error code).
fn reply_error(ctx: *mut Ctx, message: &[u8]) -> c_int {
    let clean: Vec<u8> = message
        .iter()
        .map(|&b| {
            if b == 0 || b == b'\r' || b == b'\n' {
                b' '
            } else {
                b
            }
        })
        .collect();
    let text = CString::new(clean).unwrap_or_default();
    // SAFETY: `ctx` is the command's context; `text` is a C string alive through the call.
    unsafe { (api().reply_with_error)(ctx, text.as_ptr()) }
}

/// The command's work: its arguments checked, the batch decided on the hash.
fn run(ctx: *mut Ctx, argv: &[*mut RString]) -> Result<Vec<Reply>, Vec<u8>> {
    // SAFETY: every argument string lives for the whole command, longer than `args`.
    let args: Vec<&[u8]> = argv.iter().map(|&s| unsafe { bytes(s) }).collect();
    if args[2] != PROTOCOL {
        let mut e = b"ERR floodwall: protocol version ".to_vec();
        e.extend_from_slice(args[2]);
        e.extend_from_slice(b" is not this module's (1)");
        return Err(e);
    }
    let number = |i: usize, what: &str| -> Result<u64, Vec<u8>> {
        std::str::from_utf8(args[i])
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| format!("ERR floodwall: {what} is not a whole number").into_bytes())
    };
    let small = |v: u64, what: &str| {
        u32::try_from(v).map_err(|_| format!("ERR floodwall: {what} is too large").into_bytes())
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_micros() as f64);
    let mut out = Vec::new();
    let mut i = 3;
    while i < args.len() {
        if i + 5 > args.len() {
            return Err(b"ERR floodwall: a segment is cut short".to_vec());
        }
        let t_nanos = number(i + 1, "T")?;
        let burst = small(number(i + 2, "b")?, "b")?;
        let cost = small(number(i + 3, "cost")?, "cost")?;
        let n = usize::try_from(number(i + 4, "n")?).unwrap_or(usize::MAX);
        let fields = args
            .get(i + 5..)
            .and_then(|rest| rest.get(..n))
            .filter(|f| !f.is_empty())
            .ok_or_else(|| b"ERR floodwall: a segment's fields are not its n".to_vec())?;
        let mut shard = RedisShard {
            ctx,
            key: argv[i],
            fields: &argv[i + 5..i + 5 + n],
        };
        let quota = Quota::new(t_nanos, burst, cost);
        out.extend(gcra::decide_on(&mut shard, args[i], now, quota, fields)?);
        i += 5 + n;
    }
    Ok(out)
}

/// The command's hash, worked on through `RedisModule_Call`: each write is replicated as
/// the command it is (the `!` flag).
struct RedisShard<'a> {
    ctx: *mut Ctx,
    key: *mut RString,
    /// The segment's fields as the command's own argument strings: handed to `HMGET` and
    /// `HSET` as they are, never copied.
    fields: &'a [*mut RString],
}

/// `:c`, `:d`, `:x` as module strings, made once when the module loads and kept for its
/// lifetime (addresses, for a `static`).
static OWN_FIELDS: OnceLock<[usize; 3]> = OnceLock::new();

/// Makes [`OWN_FIELDS`].
fn make_own_fields() {
    let make = |f: &[u8]| {
        // SAFETY: a string with no context: never freed automatically, kept for good.
        unsafe { (api().create_string)(std::ptr::null_mut(), f.as_ptr().cast(), f.len()) as usize }
    };
    let _ = OWN_FIELDS.set([make(b":c"), make(b":d"), make(b":x")]);
}

/// One of [`OWN_FIELDS`] by name.
fn own_field(name: &[u8]) -> *mut RString {
    let own = OWN_FIELDS.get().expect("made when the module loads");
    let i = match name {
        b":c" => 0,
        b":d" => 1,
        _ => 2,
    };
    own[i] as *mut RString
}

/// Module strings created for one call, freed when it is done.
struct Strings {
    ctx: *mut Ctx,
    list: Vec<*mut RString>,
}

impl Strings {
    fn new<'a>(ctx: *mut Ctx, items: impl IntoIterator<Item = &'a [u8]>) -> Strings {
        let list = items
            .into_iter()
            // SAFETY: `ctx` is the command's context; CreateString copies the bytes.
            .map(|b| unsafe { (api().create_string)(ctx, b.as_ptr().cast(), b.len()) })
            .collect();
        Strings { ctx, list }
    }
}

impl Drop for Strings {
    fn drop(&mut self) {
        for &s in &self.list {
            // SAFETY: each string was created in this context and is freed once.
            unsafe { (api().free_string)(self.ctx, s) };
        }
    }
}

/// `EPERM` (Linux, the BSDs and macOS alike).
const EPERM: i32 = 1;

/// A call reply, freed when dropped.
struct Owned(*mut CallReply);

impl Drop for Owned {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: a top-level reply of RedisModule_Call, freed once.
            unsafe { (api().free_call_reply)(self.0) };
        }
    }
}

impl Owned {
    /// The reply, or its error's message: [`ELSEWHERE`] when the hash is not this Cluster
    /// node's (`RedisModule_Call` refuses a key of another node, or of a slot being moved
    /// away that no longer holds it, with `EPERM`).
    fn checked(self, command: &str) -> Result<Owned, Vec<u8>> {
        if self.0.is_null() {
            // Read before anything else can set it.
            let errno = std::io::Error::last_os_error().raw_os_error();
            if errno == Some(EPERM) {
                return Err(ELSEWHERE.to_vec());
            }
            return Err(format!("ERR floodwall: {command} could not run").into_bytes());
        }
        // SAFETY: a live reply.
        if unsafe { (api().call_reply_type)(self.0) } == api::REPLY_ERROR {
            // SAFETY: a live reply, read before it is freed.
            return Err(unsafe { reply_bytes(self.0) }.to_vec());
        }
        Ok(self)
    }
}

/// An array reply's elements: each a string's bytes, or `None` (a nil, or anything else).
///
/// # Safety
/// `r` is a live array reply.
unsafe fn elements(r: *mut CallReply) -> Vec<Value> {
    // SAFETY: `r` is live; its elements live as long as it does.
    unsafe {
        let n = (api().call_reply_length)(r);
        (0..n)
            .map(|i| {
                let e = (api().call_reply_array_element)(r, i);
                match !e.is_null() && (api().call_reply_type)(e) == api::REPLY_STRING {
                    true => Some(reply_bytes(e).to_vec()),
                    false => None,
                }
            })
            .collect()
    }
}

impl Shard for RedisShard<'_> {
    fn read(&mut self, fields: &[&[u8]]) -> Result<Reading, Vec<u8>> {
        debug_assert_eq!(fields.len(), self.fields.len());
        let mut args: Vec<*mut RString> = Vec::with_capacity(3 + self.fields.len());
        args.extend([b":c", b":d", b":x"].map(|f| own_field(f)));
        args.extend_from_slice(self.fields);
        // SAFETY: the format's arguments: the hash (a live string), then a vector of live
        // strings and its length.
        let r = Owned(unsafe {
            (api().call)(
                self.ctx,
                c"HMGET".as_ptr(),
                c"sv".as_ptr(),
                self.key,
                args.as_ptr(),
                args.len(),
            )
        })
        .checked("HMGET")?;
        // SAFETY: HMGET's array reply, live until `r` drops; each element a string or nil.
        unsafe {
            let n = (api().call_reply_length)(r.0);
            if n != args.len() {
                return Err(b"ERR floodwall: HMGET answered a different count".to_vec());
            }
            let value = |i: usize| -> Option<&[u8]> {
                let e = (api().call_reply_array_element)(r.0, i);
                (!e.is_null() && (api().call_reply_type)(e) == api::REPLY_STRING)
                    .then(|| reply_bytes(e))
            };
            let own = [0, 1, 2].map(|i| value(i).map(<[u8]>::to_vec));
            let tats = (3..n).map(|i| gcra::tat_of(value(i))).collect();
            Ok(Reading { own, tats })
        }
    }

    fn scan(&mut self, cursor: &[u8], count: u32) -> Result<Scan, Vec<u8>> {
        let count = CString::new(count.to_string()).unwrap_or_default();
        // SAFETY: the format's arguments: the hash, the cursor's buffer and length, then two
        // C strings.
        let r = Owned(unsafe {
            (api().call)(
                self.ctx,
                c"HSCAN".as_ptr(),
                c"sbcc".as_ptr(),
                self.key,
                cursor.as_ptr(),
                cursor.len(),
                c"COUNT".as_ptr(),
                count.as_ptr(),
            )
        })
        .checked("HSCAN")?;
        // SAFETY: HSCAN's reply, an array of the cursor and an array of pairs, live until
        // `r` drops.
        unsafe {
            if (api().call_reply_type)(r.0) != api::REPLY_ARRAY
                || (api().call_reply_length)(r.0) != 2
            {
                return Err(b"ERR floodwall: HSCAN answered an unexpected reply".to_vec());
            }
            let next = reply_bytes((api().call_reply_array_element)(r.0, 0)).to_vec();
            let flat = elements((api().call_reply_array_element)(r.0, 1));
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(f), Some(v)) = (it.next(), it.next()) {
                pairs.push((f.unwrap_or_default(), v));
            }
            Ok((next, pairs))
        }
    }

    fn delete(&mut self, fields: &[&[u8]]) -> Result<(), Vec<u8>> {
        let args = Strings::new(self.ctx, fields.iter().copied());
        // SAFETY: as in `read`; `!` replicates the command.
        let r = Owned(unsafe {
            (api().call)(
                self.ctx,
                c"HDEL".as_ptr(),
                c"!sv".as_ptr(),
                self.key,
                args.list.as_ptr(),
                args.list.len(),
            )
        });
        r.checked("HDEL").map(drop)
    }

    fn write(
        &mut self,
        _fields: &[&[u8]],
        decided: &[(usize, [u8; 8])],
        own: &[(&'static [u8], Vec<u8>)],
    ) -> Result<(), Vec<u8>> {
        let values = Strings::new(
            self.ctx,
            decided
                .iter()
                .map(|(_, v)| v.as_slice())
                .chain(own.iter().map(|(_, v)| v.as_slice())),
        );
        let names = decided
            .iter()
            .map(|&(j, _)| self.fields[j])
            .chain(own.iter().map(|(f, _)| own_field(f)));
        let args: Vec<*mut RString> = names.zip(&values.list).flat_map(|(f, &v)| [f, v]).collect();
        // SAFETY: as in `read`; `!` replicates the command.
        let r = Owned(unsafe {
            (api().call)(
                self.ctx,
                c"HSET".as_ptr(),
                c"!sv".as_ptr(),
                self.key,
                args.as_ptr(),
                args.len(),
            )
        });
        r.checked("HSET").map(drop)
    }

    fn expire(&mut self, ms: i64) -> Result<(), Vec<u8>> {
        // SAFETY: the format's arguments: the hash, then a long long; `!` replicates.
        let r = Owned(unsafe {
            (api().call)(
                self.ctx,
                c"PEXPIRE".as_ptr(),
                c"!sl".as_ptr(),
                self.key,
                ms as std::ffi::c_longlong,
            )
        });
        r.checked("PEXPIRE").map(drop)
    }
}
