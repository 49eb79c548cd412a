//! # floodwall-redis-module
//!
//! A Redis / Valkey module with one command, `FLOODWALL.GCRA`, that decides a batch of
//! floodwall-limiter's GCRA decisions on one shard hash natively: the same states and the
//! same verdicts as the short path of the limiter's Lua script (the limiter's tests compare
//! them batch by batch, and a fleet of instances with and without the module stays exact),
//! without the Lua interpreter's cost per decision. A limiter uses the command when the server has it, and
//! the script otherwise, on its own: load the module and nothing else changes.
//!
//! The decision logic is a plain Rust function over a [`gcra::Shard`]; this runs it on an
//! in-memory hash, as the command runs it on a Redis hash:
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
//! Built and loaded:
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
//! and `PEXPIRE` it ran, so a replica needs no module (the limiter's
//! `a_replica_without_the_module_holds_the_same_states`).
//!
//! A hash this node is known to serve — on a server that is not a Cluster node, in the
//! route's slot, or any hash this node holds (a Cluster key is on one node at a time: its
//! slot's keys leave a node one by one as the slot migrates) — is worked on through Redis's
//! key API (no command dispatched per read or write); a hash this node does not hold through
//! called commands, which is how a Cluster node says it does not serve a key (the limiter's
//! `a_node_works_every_hash_it_holds_through_the_key_api`).
//!
//! ## Safety
//!
//! The crate's `unsafe` is in `api.rs` (the module API's function pointers), the two shards
//! (`keyed.rs`, `called.rs`) and the command entry below: each block states why it holds. A panic never crosses into Redis: the
//! command catches it and replies an error.

pub mod gcra;

mod api;
mod called;
mod keyed;

use std::ffi::{CString, c_int};
use std::time::{SystemTime, UNIX_EPOCH};

use api::{Ctx, RString, api, bytes};
use called::{RedisShard, make_own_fields};
use floodwall_core::slot::key_slot;
use gcra::{Quota, Reply};
use keyed::KeyShard;

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
    // SAFETY: the command's context.
    let cluster = unsafe { (api().get_context_flags)(ctx) } & api::CTX_FLAGS_CLUSTER != 0;
    let route_slot = key_slot(args[1]);
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
        let quota = Quota::new(t_nanos, burst, cost);
        let own = &argv[i + 5..i + 5 + n];
        // This node serves the hash: no Cluster, the route's slot (Redis checked the route),
        // or a hash this node holds. Else only a called command can tell, and answers
        // ELSEWHERE if not.
        let keyed = if !cluster || key_slot(args[i]) == route_slot {
            Some(KeyShard::open(ctx, argv[i], own))
        } else {
            KeyShard::open_held(ctx, argv[i], own)
        };
        let replies = if let Some(mut shard) = keyed {
            gcra::decide_on(&mut shard, args[i], now, quota, fields)?
        } else {
            let mut shard = RedisShard {
                ctx,
                key: argv[i],
                fields: own,
            };
            gcra::decide_on(&mut shard, args[i], now, quota, fields)?
        };
        out.extend(replies);
        i += 5 + n;
    }
    Ok(out)
}
