//! A segment's hash worked on through Redis's key API: opened once, each field read and
//! written in place, the writes replicated as the `HSET`, `HDEL` and `PEXPIRE` they are. No
//! command is dispatched for it, so it costs Redis less than [`RedisShard`]'s calls; used
//! where this node is known to serve the hash: on a server that is not a Cluster node; on a
//! Cluster, for a hash in its route's slot (which Redis checked before running the command),
//! and for any hash this node holds ([`KeyShard::open_held`]). A Cluster key lives on one
//! node at a time — a slot's keys leave their node as they migrate, one by one — so the node
//! that holds a key is the one that serves it, as Redis itself serves a key of a migrating
//! slot where the key still is.
//!
//! [`RedisShard`]: crate::called::RedisShard

use std::ffi::{CStr, c_void};

use crate::api::{self, Ctx, Key, RString, api, bytes};
use crate::called::{Strings, hscan, hset_args};
use crate::gcra::{self, Reading, Scan, Shard};

/// What Redis answers a command on a key of another type.
const WRONGTYPE: &[u8] = b"WRONGTYPE Operation against a key holding the wrong kind of value";

/// A segment's hash, open for reading and writing until dropped.
pub(crate) struct KeyShard<'a> {
    ctx: *mut Ctx,
    name: *mut RString,
    key: *mut Key,
    /// The segment's fields as the command's own argument strings.
    fields: &'a [*mut RString],
}

impl<'a> KeyShard<'a> {
    /// The hash `name` when this node holds it (any type: a key of the wrong type is this
    /// node's too, and is refused as such); `None` when it is absent here, for a called
    /// command to find its node.
    pub(crate) fn open_held(
        ctx: *mut Ctx,
        name: *mut RString,
        fields: &'a [*mut RString],
    ) -> Option<Self> {
        let shard = Self::open(ctx, name, fields);
        // SAFETY: an open key (or NULL, which `key_type` reads as empty).
        let held =
            !shard.key.is_null() && unsafe { (api().key_type)(shard.key) } != api::KEYTYPE_EMPTY;
        held.then_some(shard)
    }

    pub(crate) fn open(ctx: *mut Ctx, name: *mut RString, fields: &'a [*mut RString]) -> Self {
        // SAFETY: `ctx` is the command's context and `name` one of its arguments.
        let key = unsafe { (api().open_key)(ctx, name, api::READ_WRITE) };
        KeyShard {
            ctx,
            name,
            key,
            fields,
        }
    }

    /// What `read` makes of a field's value (`None`: absent), `name` a module string or (with
    /// `HASH_CFIELDS`) a C string. The value is read in place, then freed: nothing is copied.
    fn get<T>(
        &self,
        flags: std::ffi::c_int,
        name: *const c_void,
        read: impl FnOnce(Option<&[u8]>) -> T,
    ) -> T {
        let mut out: *mut RString = std::ptr::null_mut();
        // SAFETY: an open hash (or empty) key; one field and where its value goes, then the
        // NULL that ends the list. The value, a new string, is read while alive, then freed.
        unsafe {
            (api().hash_get)(
                self.key,
                flags,
                name,
                &raw mut out,
                std::ptr::null::<c_void>(),
            );
            if out.is_null() {
                return read(None);
            }
            let v = read(Some(bytes(out)));
            (api().free_string)(self.ctx, out);
            v
        }
    }

    /// Sets a field (`name` a module string) to `value` (or deletes it: `HASH_DELETE`).
    fn set(&self, name: *mut RString, value: *mut RString) {
        // SAFETY: an open key, one field and value, then the NULL that ends the list.
        unsafe {
            (api().hash_set)(
                self.key,
                api::HASH_NONE,
                name,
                value,
                std::ptr::null::<c_void>(),
            );
        }
    }

    /// Replicates `command` on the hash with `args` (module strings).
    fn replicate(&self, command: &CStr, args: &[*mut RString]) {
        // SAFETY: the format's arguments: the hash, then a vector of live strings and its
        // length.
        unsafe {
            (api().replicate)(
                self.ctx,
                command.as_ptr(),
                c"sv".as_ptr(),
                self.name,
                args.as_ptr(),
                args.len(),
            );
        }
    }
}

impl Drop for KeyShard<'_> {
    fn drop(&mut self) {
        if !self.key.is_null() {
            // SAFETY: the key this shard opened, closed once.
            unsafe { (api().close_key)(self.key) };
        }
    }
}

impl Shard for KeyShard<'_> {
    fn read(&mut self, fields: &[&[u8]]) -> Result<Reading, Vec<u8>> {
        debug_assert_eq!(fields.len(), self.fields.len());
        if self.key.is_null() {
            return Err(b"ERR floodwall: the hash could not be opened".to_vec());
        }
        // SAFETY: an open key.
        let kind = unsafe { (api().key_type)(self.key) };
        if kind != api::KEYTYPE_EMPTY && kind != api::KEYTYPE_HASH {
            return Err(WRONGTYPE.to_vec());
        }
        let own = [c":c", c":d", c":x"].map(|f| {
            self.get(api::HASH_CFIELDS, f.as_ptr().cast(), |v| {
                v.map(<[u8]>::to_vec)
            })
        });
        let tats = self
            .fields
            .iter()
            .map(|&f| self.get(api::HASH_NONE, f.cast(), gcra::tat_of))
            .collect();
        Ok(Reading { own, tats })
    }

    fn scan(&mut self, cursor: &[u8], count: u32) -> Result<Scan, Vec<u8>> {
        hscan(self.ctx, self.name, cursor, count)
    }

    fn field_count(&mut self) -> Result<u64, Vec<u8>> {
        // SAFETY: an open key (a hash, or empty: 0).
        Ok(unsafe { (api().value_length)(self.key) } as u64)
    }

    fn delete(&mut self, fields: &[&[u8]]) -> Result<(), Vec<u8>> {
        let names = Strings::new(self.ctx, fields.iter().copied());
        for &f in &names.list {
            self.set(f, api::HASH_DELETE);
        }
        self.replicate(c"HDEL", &names.list);
        Ok(())
    }

    fn write(
        &mut self,
        _fields: &[&[u8]],
        decided: &[(usize, [u8; 8])],
        own: &[(&'static [u8], Vec<u8>)],
    ) -> Result<(), Vec<u8>> {
        let (_values, args) = hset_args(self.ctx, self.fields, decided, own);
        for pair in args.chunks_exact(2) {
            self.set(pair[0], pair[1]);
        }
        self.replicate(c"HSET", &args);
        Ok(())
    }

    fn expire(&mut self, ms: i64) -> Result<(), Vec<u8>> {
        // SAFETY: an open key; then the format's arguments: the hash and a long long.
        unsafe {
            (api().set_expire)(self.key, ms);
            (api().replicate)(self.ctx, c"PEXPIRE".as_ptr(), c"sl".as_ptr(), self.name, ms);
        }
        Ok(())
    }
}
