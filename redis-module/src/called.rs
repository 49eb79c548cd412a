//! A segment's hash worked on through `RedisModule_Call`, as a script would: what the
//! command does for a hash in another slot than its route on a Cluster, where only a called
//! command learns whether this node serves the key.

use std::ffi::CString;
use std::sync::OnceLock;

use crate::ELSEWHERE;
use crate::api::{self, CallReply, Ctx, RString, api, reply_bytes};
use crate::gcra::{self, Reading, Scan, Shard, Value};

/// The command's hash, worked on through `RedisModule_Call`: each write is replicated as
/// the command it is (the `!` flag).
pub(crate) struct RedisShard<'a> {
    pub(crate) ctx: *mut Ctx,
    pub(crate) key: *mut RString,
    /// The segment's fields as the command's own argument strings: handed to `HMGET` and
    /// `HSET` as they are, never copied.
    pub(crate) fields: &'a [*mut RString],
}

/// `:c`, `:d`, `:x`, `:v` as module strings, made once when the module loads and kept for
/// its lifetime (addresses, for a `static`).
static OWN_FIELDS: OnceLock<[usize; 4]> = OnceLock::new();

/// Makes [`OWN_FIELDS`].
pub(crate) fn make_own_fields() {
    let make = |f: &[u8]| {
        // SAFETY: a string with no context: never freed automatically, kept for good.
        unsafe { (api().create_string)(std::ptr::null_mut(), f.as_ptr().cast(), f.len()) as usize }
    };
    let _ = OWN_FIELDS.set([make(b":c"), make(b":d"), make(b":x"), make(b":v")]);
}

/// One of [`OWN_FIELDS`] by name.
pub(crate) fn own_field(name: &[u8]) -> *mut RString {
    let own = OWN_FIELDS.get().expect("made when the module loads");
    let i = match name {
        b":c" => 0,
        b":d" => 1,
        b":x" => 2,
        _ => 3,
    };
    own[i] as *mut RString
}

/// Module strings created for one call, freed when it is done.
pub(crate) struct Strings {
    ctx: *mut Ctx,
    pub(crate) list: Vec<*mut RString>,
}

impl Strings {
    pub(crate) fn new<'a>(ctx: *mut Ctx, items: impl IntoIterator<Item = &'a [u8]>) -> Strings {
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
pub(crate) struct Owned(pub(crate) *mut CallReply);

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
    pub(crate) fn checked(self, command: &str) -> Result<Owned, Vec<u8>> {
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
pub(crate) unsafe fn elements(r: *mut CallReply) -> Vec<Value> {
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
        hscan(self.ctx, self.key, cursor, count)
    }

    fn field_count(&mut self) -> Result<u64, Vec<u8>> {
        // SAFETY: the format's argument: the hash, a live string.
        let r = Owned(unsafe { (api().call)(self.ctx, c"HLEN".as_ptr(), c"s".as_ptr(), self.key) })
            .checked("HLEN")?;
        // SAFETY: HLEN's reply, live until `r` drops.
        unsafe {
            match (api().call_reply_type)(r.0) {
                api::REPLY_INTEGER => Ok((api().call_reply_integer)(r.0).max(0) as u64),
                _ => Err(b"ERR floodwall: HLEN answered an unexpected reply".to_vec()),
            }
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
        let (_values, args) = hset_args(self.ctx, self.fields, decided, own);
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

/// `HSCAN key cursor COUNT count`, called.
pub(crate) fn hscan(
    ctx: *mut Ctx,
    key: *mut RString,
    cursor: &[u8],
    count: u32,
) -> Result<Scan, Vec<u8>> {
    let count = CString::new(count.to_string()).unwrap_or_default();
    // SAFETY: the format's arguments: the hash, the cursor's buffer and length, then two
    // C strings.
    let r = Owned(unsafe {
        (api().call)(
            ctx,
            c"HSCAN".as_ptr(),
            c"sbcc".as_ptr(),
            key,
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
        if (api().call_reply_type)(r.0) != api::REPLY_ARRAY || (api().call_reply_length)(r.0) != 2 {
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

/// `HSET`'s arguments for a batch's writes: each decided field (the command's own argument
/// string `fields[j]`) with its packed TAT, then the hash's own fields, name and value
/// interleaved. The values are strings made here, freed when the returned `Strings` drops.
pub(crate) fn hset_args(
    ctx: *mut Ctx,
    fields: &[*mut RString],
    decided: &[(usize, [u8; 8])],
    own: &[(&'static [u8], Vec<u8>)],
) -> (Strings, Vec<*mut RString>) {
    let values = Strings::new(
        ctx,
        decided
            .iter()
            .map(|(_, v)| v.as_slice())
            .chain(own.iter().map(|(_, v)| v.as_slice())),
    );
    let names = decided
        .iter()
        .map(|&(j, _)| fields[j])
        .chain(own.iter().map(|(f, _)| own_field(f)));
    let args = names.zip(&values.list).flat_map(|(f, &v)| [f, v]).collect();
    (values, args)
}
