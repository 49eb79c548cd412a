//! The decision: a batch of GCRA decisions that consume, on one shard hash, decided in
//! order — the Rust twin of the short path of floodwall-limiter's `limit.lua`.
//!
//! # Formula and invariant
//!
//! Times are microseconds of Redis's clock, as `f64` (exact below 2^53 µs). For a key whose
//! stored theoretical arrival time is `TAT` (absent: 0), a decision of cost `c` with emission
//! interval `T` and burst `b`:
//!
//! ```text
//! base    = max(TAT, now)
//! new_TAT = base + c·T
//! allowed ⇔ new_TAT − now ≤ b·T + 0.0005      (the 0.5 ns slack the script has)
//! reply   = ceil(new_TAT − now)                when allowed (and TAT := new_TAT)
//!         = −ceil(base − now) − 1              when denied  (TAT unchanged)
//! ```
//!
//! Invariant: within any window the admitted cost never exceeds what `b` and `T` allow, and
//! decisions of one batch see exactly the state the decisions before them left — a batch
//! decides as the same decisions sent one by one, and as the script decides them: both take
//! the same steps in IEEE 754 doubles (the tests compare the verdicts, in memory against a
//! model and on Redis against the script).
//!
//! # What a hash holds
//!
//! Field: a key's encoded form; value: its TAT packed as 8 bytes, a little-endian IEEE 754
//! double. A hash's own fields, which no key's field can be named (an encoded key holds no
//! `:`): `:c` the sweep's `HSCAN` cursor, `:d` when the next sweep step may start (µs),
//! `:x` when the hash expires (µs), and `:v`, written when the hash is made, [`MARK`] (which
//! keeps the hash a hash table). A state whose TAT has passed equals an absent one; the
//! sweep removes such fields [`SWEEP_COUNT`] at a time, in steps that come with the hash's
//! writes. After a step, the next waits
//!
//! ```text
//! spacing = max(S · SWEEP_STEP_US, SWEEP_PASS_US / ⌈N / SWEEP_COUNT⌉)
//! ```
//!
//! (`S` the limit's shard count, read from the hash's tag by [`shards_of`]; `N` the hash's
//! field count at the step). So a pass over the hash takes
//! `max(SWEEP_PASS_US, ⌈N / SWEEP_COUNT⌉ · S · SWEEP_STEP_US)`: a small hash is swept once a
//! second, not scanned again and again, and a limit's sweep work does not grow with its
//! shards. While the hash is written at least once per spacing, a stale state is gone within
//! two passes (the rest of the pass under way, and the next). The hash's TTL follows its
//! latest TAT: when a TAT goes past `:x`, the hash expires at that TAT plus its remaining
//! time (at least 1 s).
//!
//! ```
//! use floodwall_redis_module::gcra::{decide, MemoryShard, Quota, Reply};
//!
//! // 10 per second (T = 100 ms), burst 2, each decision costs 1.
//! let quota = Quota::new(100_000_000, 2, 1);
//! let mut shard = MemoryShard::default();
//! let now = 1_000_000_000.0;
//! let replies = decide(&mut shard, now, quota, &[b"alice", b"alice", b"alice"]).unwrap();
//! // Admitted with 100 ms, then 200 ms of the burst used; the third waits 200 ms - 100 ms.
//! assert_eq!(replies, vec![Reply::Int(100_000), Reply::Int(200_000), Reply::Int(-200_001)]);
//! ```

use std::collections::HashMap;

/// The value of a hash's own field `:v`, written when the hash is made: what the hash is,
/// for whoever reads it, and longer than a listpack value may be (Redis's
/// `hash-max-listpack-value`, 64 bytes by default), so Redis keeps the hash as a hash table
/// from its first write. A listpack hash is one array scanned end to end on every lookup: up
/// to `hash-max-listpack-entries` states (512 on the Redis 7.0.15 the tests run), each read and write
/// of a batch paid a scan of them (`benches/limiter_redis.rs`, 3-master Cluster, 16 shards,
/// rounds whose hashes were made afresh at about 300 states each: 4-5x the Redis CPU per
/// decision of rounds on hash tables).
pub const MARK: &[u8] = b"floodwall-limiter rate-limit shard, layout 2: every field not \
    starting with ':' is a key's GCRA TAT (us, 8-byte little-endian IEEE 754 double)";

/// Fields one sweep step reads.
pub const SWEEP_COUNT: u32 = 128;
/// The least time between two sweep steps of one hash (µs), times the limit's shard count.
pub const SWEEP_STEP_US: f64 = 2_000.0;
/// The least time a sweep pass over a hash's fields takes (µs): its steps are spread over
/// it. A lone decision on a hash of 10,000 states paid a step every 2 ms before (one in 16
/// decisions of one caller); now one every 12.7 ms (1 s / 79 steps).
pub const SWEEP_PASS_US: f64 = 1_000_000.0;

/// The time from one sweep step of a hash to the next (µs): `S` the limit's shard count,
/// `fields` the hash's field count (see the module docs).
pub fn sweep_spacing(shards: u32, fields: u64) -> f64 {
    let steps = fields.div_ceil(u64::from(SWEEP_COUNT)).max(1);
    (SWEEP_STEP_US * f64::from(shards)).max(SWEEP_PASS_US / steps as f64)
}

/// A batch's quota: emission interval, burst and cost, as the script derives them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    /// `b·T + 0.0005` (µs): the most `new_TAT − now` may be.
    cap: f64,
    /// `c·T` (µs): what one decision adds to the TAT.
    step: f64,
}

impl Quota {
    /// The quota of emission interval `t_nanos` (ns), burst `burst` and cost `cost`.
    pub fn new(t_nanos: u64, burst: u32, cost: u32) -> Quota {
        let t = t_nanos as f64 / 1000.0;
        Quota {
            cap: t * f64::from(burst) + 0.0005,
            step: f64::from(cost) * t,
        }
    }
}

/// One decision's reply, as the script gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The verdict: `ceil(level)` when allowed, `−ceil(level) − 1` when denied (see the
    /// module docs).
    Int(i64),
    /// This decision's error, for it alone (a value that is not a TAT, a key of the wrong
    /// type).
    Text(Vec<u8>),
}

/// A stored value as `HMGET` or `HSCAN` answer it.
pub type Value = Option<Vec<u8>>;

/// What one `HSCAN` step answers: the next cursor, and the pairs it found.
pub type Scan = (Vec<u8>, Vec<(Vec<u8>, Value)>);

/// What `HMGET hash :c :d :x fields…` read: the hash's own three fields, and each field's
/// TAT as [`tat_of`] reads it (0 when absent, `None` when the value is not a TAT).
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// `:c`, `:d`, `:x`.
    pub own: [Value; 3],
    /// One per field read, in order.
    pub tats: Vec<Option<f64>>,
}

/// The commands a decision runs on its shard's hash (one hash per batch).
pub trait Shard {
    /// `HMGET hash :c :d :x fields…`.
    fn read(&mut self, fields: &[&[u8]]) -> Result<Reading, Vec<u8>>;
    /// `HSCAN hash cursor COUNT count`: the next cursor and the pairs found.
    fn scan(&mut self, cursor: &[u8], count: u32) -> Result<Scan, Vec<u8>>;
    /// `HLEN hash`: the hash's field count.
    fn field_count(&mut self) -> Result<u64, Vec<u8>>;
    /// `HDEL hash fields…`.
    fn delete(&mut self, fields: &[&[u8]]) -> Result<(), Vec<u8>>;
    /// `HSET hash field value …`: each decided field (its index in `fields`, the batch's
    /// fields as [`read`](Self::read) was handed them) with its packed TAT, then the hash's
    /// own fields.
    fn write(
        &mut self,
        fields: &[&[u8]],
        decided: &[(usize, [u8; 8])],
        own: &[(&'static [u8], Vec<u8>)],
    ) -> Result<(), Vec<u8>>;
    /// `PEXPIRE hash ms`.
    fn expire(&mut self, ms: i64) -> Result<(), Vec<u8>>;
}

/// The Fx hash (rustc's): a batch's fields are looked up once each, and SipHash's
/// resistance to chosen keys buys nothing against a hash map that lives for one command.
#[derive(Default, Clone, Copy)]
struct Fx(u64);

impl std::hash::Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.mix(u64::from_le_bytes(c.try_into().unwrap_or_default()));
        }
        for &b in chunks.remainder() {
            self.mix(u64::from(b));
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Fx {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type FxMap<'f> = HashMap<&'f [u8], usize, std::hash::BuildHasherDefault<Fx>>;

/// The shard count `S` of a limit's hash, from its tag `{#2.<S>.…}` (the limiter's layout 2);
/// 1 for any other name.
pub fn shards_of(hash: &[u8]) -> u32 {
    const TAG: &[u8] = b"{#2.";
    let Some(at) = hash.windows(TAG.len()).position(|w| w == TAG) else {
        return 1;
    };
    let digits = &hash[at + TAG.len()..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    match (
        std::str::from_utf8(&digits[..end])
            .ok()
            .and_then(|d| d.parse().ok()),
        digits.get(end),
    ) {
        (Some(s), Some(b'.')) if s >= 1 => s,
        _ => 1,
    }
}

/// A stored value's TAT: 0 when absent, `None` when the value is not one of ours.
pub fn tat_of(v: Option<&[u8]>) -> Option<f64> {
    let Some(v) = v else { return Some(0.0) };
    let bytes: [u8; 8] = v.try_into().ok()?;
    let tat = f64::from_le_bytes(bytes);
    (!tat.is_nan()).then_some(tat)
}

/// A TAT as stored.
pub fn pack(tat: f64) -> [u8; 8] {
    tat.to_le_bytes()
}

/// A number field (`:d`, `:x`) as the script reads it: 0 when absent or not a number.
fn number(v: Option<&[u8]>) -> f64 {
    v.and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|n| !n.is_nan())
        .unwrap_or(0.0)
}

/// A number as the script writes one: its shortest exact decimal form.
fn format(n: f64) -> Vec<u8> {
    format!("{n}").into_bytes()
}

/// The error a decision gets when its field holds something that is not a TAT.
fn not_a_tat(field: &[u8], hash: &[u8]) -> Vec<u8> {
    let mut m = b"floodwall: the state of ".to_vec();
    m.extend_from_slice(field);
    m.extend_from_slice(b" in ");
    m.extend_from_slice(hash);
    m.extend_from_slice(b" is not a TAT");
    m
}

/// Decides `fields` (one decision each, in order) on `shard` at `now` (µs), writes what they
/// consumed (with a sweep step and a longer TTL when due), and returns one reply per
/// decision. `Err` is an error of the whole call (a write that failed): nothing it decided
/// may be reported. `hash` names the shard in error replies.
pub fn decide_on<S: Shard>(
    shard: &mut S,
    hash: &[u8],
    now: f64,
    quota: Quota,
    fields: &[&[u8]],
) -> Result<Vec<Reply>, Vec<u8>> {
    let reading = match shard.read(fields) {
        Ok(r) if r.tats.len() == fields.len() => r,
        Ok(_) => return Err(b"floodwall: HMGET answered a different count".to_vec()),
        Err(e) => return Ok(fields.iter().map(|_| Reply::Text(e.clone())).collect()),
    };
    // Each distinct field's place in `states`: its TAT as read or as the batch left it, and
    // whether the batch wrote it; `written` lists the written ones in first-write order
    // (their index in `fields`, and their place).
    let mut place: FxMap<'_> = HashMap::with_capacity_and_hasher(fields.len(), Default::default());
    let mut states: Vec<(Option<f64>, bool)> = Vec::with_capacity(fields.len());
    let mut written: Vec<(usize, usize)> = Vec::new();
    let mut out = Vec::with_capacity(fields.len());
    let mut top = 0.0f64;
    for (j, &f) in fields.iter().enumerate() {
        let at = *place.entry(f).or_insert_with(|| {
            states.push((reading.tats[j], false));
            states.len() - 1
        });
        let (known, was_written) = states[at];
        let Some(mut tat) = known else {
            out.push(Reply::Text(not_a_tat(f, hash)));
            continue;
        };
        if tat < now {
            tat = now;
        }
        let new_tat = tat + quota.step;
        if new_tat - now > quota.cap {
            states[at].0 = Some(tat);
            out.push(Reply::Int(-((tat - now).ceil() as i64) - 1));
        } else {
            states[at] = (Some(new_tat), true);
            if !was_written {
                written.push((j, at));
            }
            top = top.max(new_tat);
            out.push(Reply::Int((new_tat - now).ceil() as i64));
        }
    }
    if !written.is_empty() {
        let decided: Vec<(usize, [u8; 8])> = written
            .iter()
            .map(|&(j, at)| (j, pack(states[at].0.unwrap_or_default())))
            .collect();
        let ours = |f: &[u8]| place.get(f).is_some_and(|&at| states[at].1);
        let batch = Batch {
            hash,
            fields,
            decided: &decided,
            ours: &ours,
        };
        store(shard, now, batch, top, &reading.own)?;
    }
    Ok(out)
}

/// What a batch writes: its fields, the decided ones (index, packed TAT), and which fields
/// it wrote (the sweep leaves those alone).
struct Batch<'a> {
    hash: &'a [u8],
    fields: &'a [&'a [u8]],
    decided: &'a [(usize, [u8; 8])],
    ours: &'a dyn Fn(&[u8]) -> bool,
}

/// [`decide_on`] for a shard whose name errors need not carry (tests, docs).
pub fn decide<S: Shard>(
    shard: &mut S,
    now: f64,
    quota: Quota,
    fields: &[&[u8]],
) -> Result<Vec<Reply>, Vec<u8>> {
    decide_on(shard, b"", now, quota, fields)
}

/// Writes the batch's decided states (each TAT in the future), with a sweep step first when
/// one is due (`:d` passed), and the TTL past the latest TAT `top` (see the module docs).
/// `own`: `:c`, `:d`, `:x` as read.
fn store<S: Shard>(
    shard: &mut S,
    now: f64,
    batch: Batch<'_>,
    top: f64,
    own: &[Value; 3],
) -> Result<(), Vec<u8>> {
    let d = number(own[1].as_deref());
    let mut x = number(own[2].as_deref());
    let mut own_sets: Vec<(&'static [u8], Vec<u8>)> = Vec::new();
    if now >= d {
        let cursor = own[0].as_deref().unwrap_or(b"0");
        let (next, found) = shard.scan(cursor, SWEEP_COUNT)?;
        // The field count the step found, as the script reads it (before its deletions).
        let fields = shard.field_count()?;
        let mut dels: Vec<&[u8]> = Vec::new();
        for (f, v) in &found {
            if f.first() == Some(&b':') || (batch.ours)(f) || dels.contains(&f.as_slice()) {
                continue;
            }
            if tat_of(v.as_deref()).is_some_and(|tat| tat <= now) {
                dels.push(f);
            }
        }
        if !dels.is_empty() {
            shard.delete(&dels)?;
        }
        let next_d = now + sweep_spacing(shards_of(batch.hash), fields);
        own_sets.push((b":c", next));
        own_sets.push((b":d", format(next_d)));
    }
    let expire = top > x || x == 0.0;
    if x == 0.0 {
        // A hash made now (or one that lost its own fields) gets its mark, which turns it
        // into a hash table as it is written.
        own_sets.push((b":v", MARK.to_vec()));
    }
    if expire {
        let last = top.max(now);
        x = last + (last - now).max(1_000_000.0);
        own_sets.push((b":x", format(x)));
    }
    shard.write(batch.fields, batch.decided, &own_sets)?;
    if expire {
        shard.expire(((x - now) / 1000.0).ceil() as i64 + 1)?;
    }
    Ok(())
}

/// A shard hash in memory, with the commands' semantics (tests and docs): fields in
/// insertion order, `HSCAN` over them `count` at a time; a deleted field keeps its place, so
/// a scan under way misses no field that stays, as Redis's `HSCAN` promises.
#[derive(Debug, Default, Clone)]
pub struct MemoryShard {
    /// Fields and values in insertion order; `None`: deleted.
    entries: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// The TTL last set (ms).
    pub ttl_ms: Option<i64>,
}

impl MemoryShard {
    /// A field's value.
    pub fn get(&self, field: &[u8]) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(f, _)| f == field)
            .and_then(|(_, v)| v.as_deref())
    }

    /// Sets a field's value (`HSET`).
    pub fn insert(&mut self, field: &[u8], value: &[u8]) {
        match self.entries.iter_mut().find(|(f, _)| f == field) {
            Some((_, old)) => *old = Some(value.to_vec()),
            None => self.entries.push((field.to_vec(), Some(value.to_vec()))),
        }
    }

    /// The fields present (`HLEN`).
    pub fn len(&self) -> usize {
        self.entries.iter().filter(|(_, v)| v.is_some()).count()
    }

    /// Whether no field is present.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Shard for MemoryShard {
    fn read(&mut self, fields: &[&[u8]]) -> Result<Reading, Vec<u8>> {
        let own = [b":c", b":d", b":x"].map(|f: &[u8; 2]| self.get(f).map(<[u8]>::to_vec));
        let tats = fields.iter().map(|f| tat_of(self.get(f))).collect();
        Ok(Reading { own, tats })
    }

    fn scan(&mut self, cursor: &[u8], count: u32) -> Result<Scan, Vec<u8>> {
        let start: usize = std::str::from_utf8(cursor)
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let end = (start + count as usize).min(self.entries.len());
        let found = self.entries[start.min(end)..end]
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(f, v)| (f.clone(), v.clone()))
            .collect();
        let next = if end >= self.entries.len() { 0 } else { end };
        Ok((next.to_string().into_bytes(), found))
    }

    fn field_count(&mut self) -> Result<u64, Vec<u8>> {
        Ok(MemoryShard::len(self) as u64)
    }

    fn delete(&mut self, fields: &[&[u8]]) -> Result<(), Vec<u8>> {
        for (f, v) in &mut self.entries {
            if fields.contains(&f.as_slice()) {
                *v = None;
            }
        }
        Ok(())
    }

    fn write(
        &mut self,
        fields: &[&[u8]],
        decided: &[(usize, [u8; 8])],
        own: &[(&'static [u8], Vec<u8>)],
    ) -> Result<(), Vec<u8>> {
        for (j, v) in decided {
            self.insert(fields[*j], v);
        }
        for (f, v) in own {
            self.insert(f, v);
        }
        Ok(())
    }

    fn expire(&mut self, ms: i64) -> Result<(), Vec<u8>> {
        self.ttl_ms = Some(ms);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
