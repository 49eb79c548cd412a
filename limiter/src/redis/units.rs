//! What one script call carries: each decision's keys and fields, alone or as a group of
//! one request's limits decided all or nothing, encoded as `limit.lua` reads them.

use floodwall_core::redis::ScriptCall;
use floodwall_core::redis::slot::key_slot;

/// One decision's part of a script call: its keys and fields (see `limit.lua`).
pub(super) struct Item {
    /// GCRA: the hash of the key's shard; others: the key's own state.
    pub(super) key: super::shards::StateKey,
    /// GCRA: the key's field in that hash (its encoded form).
    pub(super) field: Option<String>,
    pub(super) seq: Option<floodwall_core::Key>,
    pub(super) op: &'static str,
    pub(super) cost: u32,
    /// GCRA: emission interval (ns), burst. Others: limit, period (µs), receipt.
    pub(super) fields: Fields,
}

/// The fields after `op` and `cost`.
#[derive(Clone, Copy)]
pub(super) enum Fields {
    Gcra {
        t_nanos: u64,
        burst: u32,
    },
    Counter {
        limit: u32,
        period_us: u64,
        receipt: i64,
    },
}

/// The GCRA parameters of the call's previous top-level decision, if that was GCRA: a
/// decision with the same ones is sent without them (`limit.lua`'s `=` ops).
type Previous = Option<(u64, u32)>;

impl Item {
    /// Appends this decision, without its GCRA parameters when they are `previous`'s.
    pub(super) fn append_after<'s>(
        &self,
        call: ScriptCall<'s>,
        previous: &mut Previous,
    ) -> ScriptCall<'s> {
        let mut call = call.key(&*self.key);
        if let Some(seq) = &self.seq {
            call = call.key(seq);
        }
        self.append_fields(call, previous)
    }

    /// This decision's keys as arguments (a node's batch over several slots, see `limit.lua`).
    pub(super) fn append_keys_as_args<'s>(&self, call: ScriptCall<'s>) -> ScriptCall<'s> {
        let call = call.arg(self.key.as_str());
        match &self.seq {
            Some(seq) => call.arg(seq.as_str()),
            None => call,
        }
    }

    /// A GCRA decision's field in its shard's hash.
    fn field(&self) -> &str {
        self.field.as_deref().unwrap_or_default()
    }

    /// This decision's GCRA parameters and cost, when the short path can decide it: a GCRA
    /// decision that consumes.
    fn short(&self) -> Option<(u64, u32, u32)> {
        match self.fields {
            Fields::Gcra { t_nanos, burst } if self.op == "gc" => Some((t_nanos, burst, self.cost)),
            _ => None,
        }
    }

    pub(super) fn key_count(&self) -> usize {
        1 + usize::from(self.seq.is_some())
    }

    /// This decision's fields, without its GCRA parameters when they are `previous`'s.
    fn append_fields<'s>(&self, call: ScriptCall<'s>, previous: &mut Previous) -> ScriptCall<'s> {
        if let Fields::Gcra { t_nanos, burst } = self.fields {
            if *previous == Some((t_nanos, burst)) {
                return call
                    .arg(same_params(self.op))
                    .arg(self.cost)
                    .arg(self.field());
            }
            *previous = Some((t_nanos, burst));
        } else {
            *previous = None;
        }
        let call = call.arg(self.op).arg(self.cost);
        match self.fields {
            Fields::Gcra { t_nanos, burst } => call.arg(self.field()).arg(t_nanos).arg(burst),
            Fields::Counter {
                limit,
                period_us,
                receipt,
            } => call.arg(limit).arg(period_us).arg(receipt),
        }
    }
}

/// What one script-call element carries: one decision, or a group of one request's
/// decisions decided all or nothing (see `limit.lua`).
pub(super) enum Unit {
    One(Item),
    Group(Vec<Item>),
}

/// A GCRA op sent without its parameters (see `limit.lua`).
fn same_params(op: &'static str) -> &'static str {
    match op {
        "gc" => "=c",
        "gp" => "=p",
        _ => "=r",
    }
}

impl Unit {
    /// This unit alone: a lone GCRA decision that consumes goes as its hash, T, b, cost and
    /// field (`limit.lua`'s call of 4 arguments).
    pub(super) fn append<'s>(&self, call: ScriptCall<'s>) -> ScriptCall<'s> {
        match self {
            Unit::One(item) => match item.short() {
                Some((t_nanos, burst, cost)) => call
                    .key(&*item.key)
                    .arg(t_nanos)
                    .arg(burst)
                    .arg(cost)
                    .arg(item.field()),
                None => self.append_after(call, &mut None),
            },
            Unit::Group(_) => self.append_after(call, &mut None),
        }
    }

    /// Appends this unit after others: a decision alone may leave out the GCRA parameters it
    /// shares with the decision before it; a group's decisions always carry theirs, and the
    /// decision after a group carries its own.
    pub(super) fn append_after<'s>(
        &self,
        call: ScriptCall<'s>,
        previous: &mut Previous,
    ) -> ScriptCall<'s> {
        self.encode(call, previous, true)
    }

    /// Like [`append_after`](Self::append_after), the keys left out (a node's batch over
    /// several slots passes them first, as arguments).
    pub(super) fn append_fields_after<'s>(
        &self,
        call: ScriptCall<'s>,
        previous: &mut Previous,
    ) -> ScriptCall<'s> {
        self.encode(call, previous, false)
    }

    fn encode<'s>(
        &self,
        call: ScriptCall<'s>,
        previous: &mut Previous,
        keys: bool,
    ) -> ScriptCall<'s> {
        let item = |call, item: &Item, previous: &mut Previous| match keys {
            true => item.append_after(call, previous),
            false => item.append_fields(call, previous),
        };
        match self {
            Unit::One(one) => item(call, one, previous),
            Unit::Group(items) => {
                *previous = None;
                items
                    .iter()
                    .fold(call.arg("G").arg(items.len()), |call, one| {
                        item(call, one, &mut None)
                    })
            }
        }
    }

    pub(super) fn items(&self) -> &[Item] {
        match self {
            Unit::One(item) => std::slice::from_ref(item),
            Unit::Group(items) => items,
        }
    }

    pub(super) fn first_key(&self) -> &floodwall_core::Key {
        match self {
            Unit::One(item) => &item.key,
            Unit::Group(items) => &items[0].key,
        }
    }
}

/// Whether every key of `units` is in one slot.
pub(super) fn one_slot<U: std::borrow::Borrow<Unit>>(units: &[U]) -> bool {
    items_in_one_slot(units.iter().flat_map(|u| u.borrow().items()))
}

/// Whether every decision of `items` has its keys in one slot (a decision's keys share its
/// hash tag).
pub(super) fn items_in_one_slot<'a>(items: impl IntoIterator<Item = &'a Item>) -> bool {
    let mut slots = items
        .into_iter()
        .map(|i| key_slot(i.key.as_str().as_bytes()));
    let first = slots.next();
    slots.all(|s| Some(s) == first)
}

/// One hash's decisions on the short path: the hash, its decisions' quota (T in ns, burst)
/// and cost, which units they are, and their fields.
pub(super) struct Segment<'u> {
    pub(super) key: &'u floodwall_core::Key,
    pub(super) params: (u64, u32, u32),
    pub(super) units: Vec<usize>,
    pub(super) fields: Vec<&'u str>,
}

/// `units` as the short path groups them, when every one is a lone GCRA decision that
/// consumes and each hash's decisions share one quota and cost: one segment per hash, in
/// first-seen order, each with its decisions in arrival order.
pub(super) fn segments<U: std::borrow::Borrow<Unit>>(units: &[U]) -> Option<Vec<Segment<'_>>> {
    let mut segments: Vec<Segment<'_>> = Vec::new();
    for (i, unit) in units.iter().enumerate() {
        let Unit::One(item) = unit.borrow() else {
            return None;
        };
        let params = item.short()?;
        match segments
            .iter_mut()
            .find(|s| std::ptr::eq(s.key, &*item.key) || s.key == &*item.key)
        {
            Some(s) if s.params == params => {
                s.units.push(i);
                s.fields.push(item.field());
            }
            Some(_) => return None,
            None => segments.push(Segment {
                key: &item.key,
                params,
                units: vec![i],
                fields: vec![item.field()],
            }),
        }
    }
    Some(segments)
}

/// `units` encoded for the short path (`limit.lua`'s `F`), when they qualify (see
/// [`segments`]): each hash once (as a key, or as an argument when `keys_as_args`: a node's
/// batch over several slots), its quota once, then its decisions' fields. Also returns the
/// units in the order their verdicts come back (hash by hash; a hash's decisions, a key's
/// included, in arrival order). `Err` hands `call` back untouched when the batch does not
/// qualify.
pub(super) fn short_path<'s, U: std::borrow::Borrow<Unit>>(
    units: &[U],
    call: ScriptCall<'s>,
    keys_as_args: bool,
) -> Result<(ScriptCall<'s>, Vec<usize>), ScriptCall<'s>> {
    let Some(segments) = segments(units) else {
        return Err(call);
    };
    let mut call = if keys_as_args {
        let call = call.key(segments[0].key).arg("X").arg(segments.len());
        segments
            .iter()
            .fold(call, |call, s| call.arg(s.key.as_str()))
    } else {
        segments.iter().fold(call, |call, s| call.key(s.key))
    };
    call = call.arg("F");
    let mut order = Vec::with_capacity(units.len());
    for (at, s) in segments.iter().enumerate() {
        let (t_nanos, burst, cost) = s.params;
        call = call
            .arg(at + 1)
            .arg(t_nanos)
            .arg(burst)
            .arg(cost)
            .arg(s.units.len());
        call = s.fields.iter().fold(call, |call, field| call.arg(*field));
        order.extend_from_slice(&s.units);
    }
    Ok((call, order))
}
