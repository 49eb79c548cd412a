//! The part of Redis's module API the command uses, fetched by name when the module loads.
//!
//! Redis hands a module its API as function pointers, looked up by name through the
//! `GetApi` pointer it stores first in the load context (what `redismodule.h`'s
//! `RedisModule_Init` does). Each pointer is fetched once, checked, and kept in [`Api`];
//! the signatures are those of `redismodule.h`, stable since the API's version 1.

use std::ffi::{CStr, c_char, c_int, c_longlong, c_void};
use std::sync::OnceLock;

/// `RedisModuleCtx`: opaque.
#[repr(C)]
pub(crate) struct Ctx {
    _opaque: [u8; 0],
}

/// `RedisModuleString`: opaque.
#[repr(C)]
pub(crate) struct RString {
    _opaque: [u8; 0],
}

/// `RedisModuleKey`: opaque.
#[repr(C)]
pub(crate) struct Key {
    _opaque: [u8; 0],
}

/// `RedisModuleCallReply`: opaque.
#[repr(C)]
pub(crate) struct CallReply {
    _opaque: [u8; 0],
}

/// `REDISMODULE_OK`.
pub(crate) const OK: c_int = 0;
/// `REDISMODULE_ERR`.
pub(crate) const ERR: c_int = 1;
/// `REDISMODULE_APIVER_1`.
pub(crate) const APIVER_1: c_int = 1;
/// `REDISMODULE_REPLY_STRING`, `_ERROR`, `_INTEGER`, `_ARRAY`.
pub(crate) const REPLY_STRING: c_int = 0;
pub(crate) const REPLY_ERROR: c_int = 1;
pub(crate) const REPLY_INTEGER: c_int = 2;
pub(crate) const REPLY_ARRAY: c_int = 3;

/// `REDISMODULE_READ | REDISMODULE_WRITE`.
pub(crate) const READ_WRITE: c_int = 1 | 2;
/// `REDISMODULE_KEYTYPE_EMPTY`, `_HASH`.
pub(crate) const KEYTYPE_EMPTY: c_int = 0;
pub(crate) const KEYTYPE_HASH: c_int = 3;
/// `REDISMODULE_HASH_NONE`, `_CFIELDS` (field names as C strings).
pub(crate) const HASH_NONE: c_int = 0;
pub(crate) const HASH_CFIELDS: c_int = 1 << 2;
/// `REDISMODULE_HASH_DELETE`: the value that deletes a field.
pub(crate) const HASH_DELETE: *mut RString = std::ptr::without_provenance_mut(1);
/// `REDISMODULE_CTX_FLAGS_CLUSTER`.
pub(crate) const CTX_FLAGS_CLUSTER: c_int = 1 << 5;

/// A command's implementation.
pub(crate) type CmdFunc = unsafe extern "C" fn(*mut Ctx, *mut *mut RString, c_int) -> c_int;

type GetApi = unsafe extern "C" fn(*const c_char, *mut c_void) -> c_int;

/// The API functions the module calls.
pub(crate) struct Api {
    pub(crate) set_module_attribs: unsafe extern "C" fn(*mut Ctx, *const c_char, c_int, c_int),
    pub(crate) create_command: unsafe extern "C" fn(
        *mut Ctx,
        *const c_char,
        CmdFunc,
        *const c_char,
        c_int,
        c_int,
        c_int,
    ) -> c_int,
    /// `RedisModule_Call(ctx, command, format, ...)`.
    pub(crate) call:
        unsafe extern "C" fn(*mut Ctx, *const c_char, *const c_char, ...) -> *mut CallReply,
    pub(crate) call_reply_type: unsafe extern "C" fn(*mut CallReply) -> c_int,
    pub(crate) call_reply_length: unsafe extern "C" fn(*mut CallReply) -> usize,
    pub(crate) call_reply_integer: unsafe extern "C" fn(*mut CallReply) -> c_longlong,
    pub(crate) call_reply_array_element:
        unsafe extern "C" fn(*mut CallReply, usize) -> *mut CallReply,
    pub(crate) call_reply_string_ptr:
        unsafe extern "C" fn(*mut CallReply, *mut usize) -> *const c_char,
    pub(crate) free_call_reply: unsafe extern "C" fn(*mut CallReply),
    pub(crate) string_ptr_len: unsafe extern "C" fn(*const RString, *mut usize) -> *const c_char,
    pub(crate) create_string: unsafe extern "C" fn(*mut Ctx, *const c_char, usize) -> *mut RString,
    pub(crate) free_string: unsafe extern "C" fn(*mut Ctx, *mut RString),
    pub(crate) reply_with_array: unsafe extern "C" fn(*mut Ctx, std::ffi::c_long) -> c_int,
    pub(crate) reply_with_long_long: unsafe extern "C" fn(*mut Ctx, c_longlong) -> c_int,
    pub(crate) reply_with_string_buffer:
        unsafe extern "C" fn(*mut Ctx, *const c_char, usize) -> c_int,
    pub(crate) reply_with_error: unsafe extern "C" fn(*mut Ctx, *const c_char) -> c_int,
    pub(crate) wrong_arity: unsafe extern "C" fn(*mut Ctx) -> c_int,
    pub(crate) get_context_flags: unsafe extern "C" fn(*mut Ctx) -> c_int,
    pub(crate) open_key: unsafe extern "C" fn(*mut Ctx, *mut RString, c_int) -> *mut Key,
    pub(crate) close_key: unsafe extern "C" fn(*mut Key),
    pub(crate) key_type: unsafe extern "C" fn(*mut Key) -> c_int,
    /// `RedisModule_ValueLength(key)`: a hash's field count.
    pub(crate) value_length: unsafe extern "C" fn(*mut Key) -> usize,
    /// `RedisModule_HashGet(key, flags, field, &value, ..., NULL)`.
    pub(crate) hash_get: unsafe extern "C" fn(*mut Key, c_int, ...) -> c_int,
    /// `RedisModule_HashSet(key, flags, field, value, ..., NULL)`.
    pub(crate) hash_set: unsafe extern "C" fn(*mut Key, c_int, ...) -> c_int,
    pub(crate) set_expire: unsafe extern "C" fn(*mut Key, c_longlong) -> c_int,
    /// `RedisModule_Replicate(ctx, command, format, ...)`.
    pub(crate) replicate:
        unsafe extern "C" fn(*mut Ctx, *const c_char, *const c_char, ...) -> c_int,
}

static API: OnceLock<Api> = OnceLock::new();

/// The API, once [`load`] succeeded (it runs before any command is registered).
pub(crate) fn api() -> &'static Api {
    API.get()
        .expect("the module's API is loaded before its command is registered")
}

/// Fetches one function pointer by name; `None` when this server has no such function.
///
/// # Safety
/// `get_api` is the server's `GetApi`, and `F` the function's signature in `redismodule.h`.
unsafe fn fetch<F: Copy>(get_api: GetApi, name: &CStr) -> Option<F> {
    assert_eq!(
        size_of::<F>(),
        size_of::<*mut c_void>(),
        "a function pointer"
    );
    let mut ptr: *mut c_void = std::ptr::null_mut();
    // SAFETY: GetApi writes the named function's address into the pointer it is handed,
    // or leaves it untouched and returns ERR; `ptr` is a valid place for that address.
    let rc = unsafe { get_api(name.as_ptr(), (&raw mut ptr).cast()) };
    if rc != OK || ptr.is_null() {
        return None;
    }
    // SAFETY: the server's function of that name has the signature `F` (the caller's
    // promise), and a non-null function address converts to a function pointer.
    Some(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&ptr) })
}

/// Loads the API from the load context `ctx` and registers the module as `name`.
///
/// # Safety
/// `ctx` is the context Redis passed to `RedisModule_OnLoad`.
pub(crate) unsafe fn load(ctx: *mut Ctx, name: &CStr, version: c_int) -> Result<(), &'static str> {
    // SAFETY: Redis stores its GetApi function first in every context it hands a module
    // (`redismodule.h`'s RedisModule_Init reads it the same way).
    let get_api: GetApi = unsafe { *ctx.cast::<GetApi>() };
    macro_rules! get {
        ($name:literal) => {
            // SAFETY: `get_api` is the server's, and the field's type is the signature of
            // the function of this name in redismodule.h.
            unsafe { fetch(get_api, $name) }
                .ok_or(concat!("this server has no ", stringify!($name)))?
        };
    }
    let api = Api {
        set_module_attribs: get!(c"RedisModule_SetModuleAttribs"),
        create_command: get!(c"RedisModule_CreateCommand"),
        call: get!(c"RedisModule_Call"),
        call_reply_type: get!(c"RedisModule_CallReplyType"),
        call_reply_length: get!(c"RedisModule_CallReplyLength"),
        call_reply_integer: get!(c"RedisModule_CallReplyInteger"),
        call_reply_array_element: get!(c"RedisModule_CallReplyArrayElement"),
        call_reply_string_ptr: get!(c"RedisModule_CallReplyStringPtr"),
        free_call_reply: get!(c"RedisModule_FreeCallReply"),
        string_ptr_len: get!(c"RedisModule_StringPtrLen"),
        create_string: get!(c"RedisModule_CreateString"),
        free_string: get!(c"RedisModule_FreeString"),
        reply_with_array: get!(c"RedisModule_ReplyWithArray"),
        reply_with_long_long: get!(c"RedisModule_ReplyWithLongLong"),
        reply_with_string_buffer: get!(c"RedisModule_ReplyWithStringBuffer"),
        reply_with_error: get!(c"RedisModule_ReplyWithError"),
        wrong_arity: get!(c"RedisModule_WrongArity"),
        get_context_flags: get!(c"RedisModule_GetContextFlags"),
        open_key: get!(c"RedisModule_OpenKey"),
        close_key: get!(c"RedisModule_CloseKey"),
        key_type: get!(c"RedisModule_KeyType"),
        value_length: get!(c"RedisModule_ValueLength"),
        hash_get: get!(c"RedisModule_HashGet"),
        hash_set: get!(c"RedisModule_HashSet"),
        set_expire: get!(c"RedisModule_SetExpire"),
        replicate: get!(c"RedisModule_Replicate"),
    };
    // SAFETY: `ctx` is the load context; name is a C string that outlives the call.
    unsafe { (api.set_module_attribs)(ctx, name.as_ptr(), version, APIVER_1) };
    let _ = API.set(api);
    Ok(())
}

/// A module string's bytes, borrowed for as long as the string lives (a command's
/// arguments: the whole command).
///
/// # Safety
/// `s` is a live module string that outlives `'a`.
pub(crate) unsafe fn bytes<'a>(s: *const RString) -> &'a [u8] {
    let mut len = 0usize;
    // SAFETY: `s` is live (the caller's promise); StringPtrLen returns its buffer and length.
    let ptr = unsafe { (api().string_ptr_len)(s, &raw mut len) };
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: the buffer holds `len` bytes and lives as long as the string.
    unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) }
}

/// A call reply's string bytes (a bulk string, or an error's message).
///
/// # Safety
/// `r` is a live call reply that outlives `'a`.
pub(crate) unsafe fn reply_bytes<'a>(r: *mut CallReply) -> &'a [u8] {
    let mut len = 0usize;
    // SAFETY: `r` is live; CallReplyStringPtr returns its string and length (NULL when the
    // reply holds none).
    let ptr = unsafe { (api().call_reply_string_ptr)(r, &raw mut len) };
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: the reply's buffer holds `len` bytes and lives as long as the reply.
    unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) }
}

/// `ERR` as a `Result`.
pub(crate) fn status(ok: bool) -> c_int {
    if ok { OK } else { ERR }
}
