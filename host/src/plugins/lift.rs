//! What comes back from a guest, lifted from its memory in one pass: the edits of the hooks
//! and the ranges of a kernel `scan`.
//!
//! wasmtime lifts a `list<variant>` element by element, each through its generic variant,
//! tuple and string code: about 730 instructions per edit, 1.1 M of a 512-span export batch,
//! and 55 per range of the kernel's `scan` (BENCHMARKS.md, "Round seven"). Here each list is
//! read straight from the guest's memory with the same checks (bounds, alignment, the
//! discriminants, UTF-8, hostcall fuel) and the same errors as wasmtime's own code.
//!
//! Like `lower.rs` this implements wasmtime's hidden lifting items, here for list types. The
//! wasmtime version is pinned exactly, the layout is asserted at compile time, and a guest built
//! from source sends every kind of edit and value back in `every_value_kind_reaches_a_plugin_as_sent`
//! (tests/tests/plugin_contract.rs). Every read is inside a chunk of the checked list, so a
//! guest's bad list is an error (a trap of that call), never a panic.

use wasmtime::component::__internal::wasmtime_environ::component::StringEncoding;
use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext};
use wasmtime::component::{ComponentType, Lift};
use wasmtime::{Result, bail};

use super::bindings::acpd::plugin::types::{AttrEdit, AttrValue};
use super::bindings::exports::acpd::plugin::{log_hooks, span_hooks};

/// `attr-edit`: a one-byte case at 0, its payload at 8. `replace`: index at 8, value at 16.
/// `remove`: index at 8. `upsert`: record at 8, key (pointer, length) at 12, value at 24.
const EDIT: usize = 40;
/// `attr-value`: a one-byte case at 0, its payload at 8.
const VALUE: usize = 16;
const _: () = {
    assert!(<AttrEdit as ComponentType>::SIZE32 == EDIT);
    assert!(<AttrEdit as ComponentType>::ALIGN32 == 8);
    assert!(<AttrValue as ComponentType>::SIZE32 == VALUE);
    assert!(<(u32, u32) as ComponentType>::SIZE32 == 8);
};

/// The guest memory a list occupies, checked as wasmtime checks it (and charged to the
/// hostcall fuel it charges).
fn list_bytes<'a>(
    cx: &mut LiftContext<'a>,
    ptr: usize,
    len: usize,
    size: usize,
    align: usize,
) -> Result<&'a [u8]> {
    let memory = cx.memory();
    let Some(bytes) = len
        .checked_mul(size)
        .and_then(|n| memory.get(ptr..ptr.checked_add(n)?))
    else {
        bail!("list pointer/length out of bounds of memory")
    };
    cx.consume_fuel_array(len, size)?;
    if !ptr.is_multiple_of(align) {
        bail!("list pointer is not aligned")
    }
    Ok(bytes)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// A `string` whose pointer and length are the 8 bytes at `b[at..]`.
/// `utf8`: the guest's strings are UTF-8 (its canonical options say so; the rest transcode).
fn string(cx: &mut LiftContext<'_>, utf8: bool, b: &[u8], at: usize) -> Result<String> {
    if !utf8 {
        // UTF-16 and Latin-1 guests: wasmtime's own transcoding.
        return String::linear_lift_from_memory(cx, InterfaceType::String, &b[at..at + 8]);
    }
    let (ptr, len) = (u32_at(b, at) as usize, u32_at(b, at + 4) as usize);
    let Some(bytes) = cx.memory().get(ptr..ptr.saturating_add(len)) else {
        bail!("string pointer/length out of bounds of memory")
    };
    cx.consume_fuel(len)?;
    Ok(std::str::from_utf8(bytes)?.to_owned())
}

fn value(cx: &mut LiftContext<'_>, utf8: bool, b: &[u8]) -> Result<AttrValue> {
    Ok(match b[0] {
        0 => AttrValue::Str(string(cx, utf8, b, 8)?),
        // As wasmtime reads a `bool`: any byte but 0 is true.
        1 => AttrValue::Boolean(b[8] != 0),
        2 => AttrValue::Int(u64_at(b, 8) as i64),
        3 => AttrValue::Double(f64::from_bits(u64_at(b, 8))),
        n => bail!("unexpected discriminant: {n}"),
    })
}

fn edit(cx: &mut LiftContext<'_>, utf8: bool, b: &[u8]) -> Result<AttrEdit> {
    Ok(match b[0] {
        0 => AttrEdit::Replace((u32_at(b, 8), value(cx, utf8, &b[16..16 + VALUE])?)),
        1 => AttrEdit::Remove(u32_at(b, 8)),
        2 => AttrEdit::Upsert((
            u32_at(b, 8),
            string(cx, utf8, b, 12)?,
            value(cx, utf8, &b[24..24 + VALUE])?,
        )),
        n => bail!("unexpected discriminant: {n}"),
    })
}

/// `ComponentType` and `Lift` for `$name`, a list type with a one-pass `lift(cx, ptr, len)`:
/// its shape and flat form are `$list`'s (a pointer and a length, wherever the list is).
macro_rules! lifted_list {
    ($name:ident, $list:ty) => {
        // SAFETY: the shape and flat form are exactly `$list`'s, as it declares them.
        unsafe impl ComponentType for $name {
            type Lower = <$list as ComponentType>::Lower;
            const ABI: CanonicalAbiInfo = <$list as ComponentType>::ABI;

            fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> Result<()> {
                <$list as ComponentType>::typecheck(ty, types)
            }
        }

        // SAFETY: `lift` reads only the bytes `list_bytes` checked, as wasmtime's lists do.
        unsafe impl Lift for $name {
            fn linear_lift_from_flat(
                cx: &mut LiftContext<'_>,
                _ty: InterfaceType,
                src: &Self::Lower,
            ) -> Result<Self> {
                Self::lift(cx, src[0].get_u32() as usize, src[1].get_u32() as usize)
            }

            fn linear_lift_from_memory(
                cx: &mut LiftContext<'_>,
                _ty: InterfaceType,
                bytes: &[u8],
            ) -> Result<Self> {
                Self::lift(cx, u32_at(bytes, 0) as usize, u32_at(bytes, 4) as usize)
            }
        }
    };
}

/// A `list<attr-edit>`, lifted in one pass.
#[derive(Debug, Default)]
pub struct Edits(pub Vec<AttrEdit>);

impl Edits {
    fn lift(cx: &mut LiftContext<'_>, ptr: usize, len: usize) -> Result<Self> {
        let bytes = list_bytes(cx, ptr, len, EDIT, 8)?;
        let utf8 = cx.options().string_encoding == StringEncoding::Utf8;
        let mut out = Vec::with_capacity(len);
        for b in bytes.chunks_exact(EDIT) {
            out.push(edit(cx, utf8, b)?);
        }
        Ok(Edits(out))
    }
}

lifted_list!(Edits, Vec<AttrEdit>);

/// The `ranges` of a kernel `scan` (`list<tuple<u32, u32>>`), lifted in one pass.
#[derive(Debug, Default)]
pub struct Ranges(pub Vec<(u32, u32)>);

impl Ranges {
    fn lift(cx: &mut LiftContext<'_>, ptr: usize, len: usize) -> Result<Self> {
        let bytes = list_bytes(cx, ptr, len, 8, 4)?;
        Ok(Ranges(
            bytes
                .chunks_exact(8)
                .map(|b| (u32_at(b, 0), u32_at(b, 4)))
                .collect(),
        ))
    }
}

lifted_list!(Ranges, Vec<(u32, u32)>);

/// `span-edits` as `on-spans` returns it.
#[derive(ComponentType, Lift, Debug)]
#[component(record)]
pub struct SpanEdits {
    #[component(name = "attrs")]
    pub attrs: Edits,
    #[component(name = "renames")]
    pub renames: Vec<(u32, String)>,
}

/// `log-edits` as `on-logs` returns it.
#[derive(ComponentType, Lift, Debug)]
#[component(record)]
pub struct LogEdits {
    #[component(name = "attrs")]
    pub attrs: Edits,
    #[component(name = "bodies")]
    pub bodies: Vec<(u32, String)>,
    #[component(name = "drops")]
    pub drops: Vec<u32>,
}

impl From<SpanEdits> for span_hooks::SpanEdits {
    fn from(e: SpanEdits) -> Self {
        span_hooks::SpanEdits {
            attrs: e.attrs.0,
            renames: e.renames,
        }
    }
}

impl From<LogEdits> for log_hooks::LogEdits {
    fn from(e: LogEdits) -> Self {
        log_hooks::LogEdits {
            attrs: e.attrs.0,
            bodies: e.bodies,
            drops: e.drops,
        }
    }
}
