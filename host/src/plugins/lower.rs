//! The lists the daemon sends a guest (a batch's attributes, spans and logs; the kernel's
//! matches), lowered in one pass.
//!
//! wasmtime lowers a `list<record>` element by element and field by field, and looks the guest's
//! memory up again for every primitive it stores: about 600 instructions per `attr-ref`, 6.3 M of
//! the 46 M instructions a 512-span export batch cost (BENCHMARKS.md, "Round five"). Native
//! code pays nothing like it, and it was the largest part of the WASM/native gap. `Attr` is an
//! `attr-ref` whose list is written as canonical-ABI bytes straight into the memory wasmtime
//! allocated for it: the same bytes, in one pass; `one_pass_list!` makes each such type.
//!
//! This overrides `Lower::linear_store_list_to_memory`, a hidden item of wasmtime's lowering traits
//! (the way wasmtime's own integer lists are lowered). The wasmtime version is pinned exactly, the
//! layout is asserted at compile time, and a guest built from source echoes every kind of value
//! back in `every_value_kind_reaches_a_plugin_as_sent` (tests/tests/plugin_contract.rs).

use wasmtime::Result;
use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType};
use wasmtime::component::{ComponentType, Lower};

use super::bindings::acpd::plugin::host::RangeMatch;
use super::bindings::acpd::plugin::types::{AttrRef, ValueRef};
use super::bindings::exports::acpd::plugin::{log_hooks, span_hooks};

/// A record type whose lists are lowered in one pass: `$name` wraps `$inner` (the same value),
/// and a list of it is written as the `$size` canonical-ABI bytes per record that `$write`
/// puts in `b` for `v`, straight into the memory wasmtime allocated for the list. One value
/// alone is lowered by the inner type's own code.
macro_rules! one_pass_list {
    ($(#[$doc:meta])* $name:ident($inner:ty), $size:expr, |$v:ident, $b:ident| $write:block) => {
        $(#[$doc])*
        #[repr(transparent)]
        #[derive(Clone, Copy, Debug)]
        pub struct $name(pub $inner);

        impl $name {
            /// The records as the list type the calls take (no copy).
            #[allow(dead_code, reason = "lists built as this type are not borrowed")]
            pub fn slice(items: &[$inner]) -> &[$name] {
                // SAFETY: `repr(transparent)`: same size, alignment and validity.
                unsafe { std::slice::from_raw_parts(items.as_ptr().cast::<$name>(), items.len()) }
            }
        }

        const _: () = assert!(<$inner as ComponentType>::SIZE32 == $size);

        // SAFETY: every item is the inner type's, so the shape and flat form are exactly its.
        unsafe impl ComponentType for $name {
            type Lower = <$inner as ComponentType>::Lower;
            const ABI: CanonicalAbiInfo = <$inner as ComponentType>::ABI;

            fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> Result<()> {
                <$inner as ComponentType>::typecheck(ty, types)
            }
        }

        // SAFETY: one value is lowered by the inner type's own code; a list writes the bytes
        // it would write, into the `items.len() * SIZE` bytes wasmtime allocated at `offset`.
        unsafe impl Lower for $name {
            fn linear_lower_to_flat<T>(
                &self,
                cx: &mut wasmtime::component::__internal::LowerContext<'_, T>,
                ty: InterfaceType,
                dst: &mut std::mem::MaybeUninit<Self::Lower>,
            ) -> Result<()> {
                self.0.linear_lower_to_flat(cx, ty, dst)
            }

            fn linear_lower_to_memory<T>(
                &self,
                cx: &mut wasmtime::component::__internal::LowerContext<'_, T>,
                ty: InterfaceType,
                offset: usize,
            ) -> Result<()> {
                self.0.linear_lower_to_memory(cx, ty, offset)
            }

            fn linear_store_list_to_memory<T>(
                cx: &mut wasmtime::component::__internal::LowerContext<'_, T>,
                _ty: InterfaceType,
                offset: usize,
                items: &[Self],
            ) -> Result<()> {
                let dst = &mut cx.as_slice_mut()[offset..][..items.len() * $size];
                for ($b, item) in dst.chunks_exact_mut($size).zip(items) {
                    let $v = &item.0;
                    $write
                }
                Ok(())
            }
        }
    };
}

one_pass_list!(
    /// An `attr-ref`: `record` at 0, `key` at 4 (offset, length), `value` at 16 (a one-byte
    /// case, then its payload at 24).
    Attr(AttrRef),
    32,
    |a, b| {
        b[0..4].copy_from_slice(&a.record.to_le_bytes());
        b[4..12].copy_from_slice(&pair(a.key.offset, a.key.len));
        // The cases in WIT order (typechecking the call checked names and order).
        let (case, payload): (u8, [u8; 8]) = match a.value {
            ValueRef::Str(r) => (0, pair(r.offset, r.len)),
            ValueRef::Boolean(v) => (1, [v as u8, 0, 0, 0, 0, 0, 0, 0]),
            ValueRef::Int(v) => (2, v.to_le_bytes()),
            ValueRef::Double(v) => (3, v.to_bits().to_le_bytes()),
            ValueRef::Array(r) => (4, pair(r.offset, r.len)),
        };
        b[12..16].fill(0);
        b[16] = case;
        b[17..24].fill(0);
        b[24..32].copy_from_slice(&payload);
    }
);

const _: () = {
    assert!(<AttrRef as ComponentType>::ALIGN32 == 8);
    assert!(<ValueRef as ComponentType>::SIZE32 == 16);
};

fn pair(a: u32, b: u32) -> [u8; 8] {
    let mut p = [0u8; 8];
    p[..4].copy_from_slice(&a.to_le_bytes());
    p[4..].copy_from_slice(&b.to_le_bytes());
    p
}

one_pass_list!(
    /// A `span-ref`: `name` at 0 (offset, length), `kind` at 8, `is-error` at 9.
    Span(span_hooks::SpanRef),
    12,
    |s, b| {
        b[0..8].copy_from_slice(&pair(s.name.offset, s.name.len));
        b[8] = span_kind(s.kind);
        b[9] = s.is_error as u8;
        b[10..12].fill(0);
    }
);

one_pass_list!(
    /// A `log-ref`: `body` at 0 (offset, length), `severity` at 8, `event-name` at 12.
    Log(log_hooks::LogRef),
    20,
    |l, b| {
        b[0..8].copy_from_slice(&pair(l.body.offset, l.body.len));
        b[8] = l.severity;
        b[9..12].fill(0);
        b[12..20].copy_from_slice(&pair(l.event_name.offset, l.event_name.len));
    }
);

one_pass_list!(
    /// A `range-match`, the kernel's answer to `scan`: `range`, `pattern`, `start`, `end`, four
    /// u32 in WIT order.
    Hit(RangeMatch),
    16,
    |m, b| {
        b[0..4].copy_from_slice(&m.range.to_le_bytes());
        b[4..8].copy_from_slice(&m.pattern.to_le_bytes());
        b[8..12].copy_from_slice(&m.start.to_le_bytes());
        b[12..16].copy_from_slice(&m.end.to_le_bytes());
    }
);

/// The enum's cases in WIT order.
fn span_kind(k: span_hooks::SpanKind) -> u8 {
    use span_hooks::SpanKind as K;
    match k {
        K::Internal => 0,
        K::Server => 1,
        K::Client => 2,
        K::Producer => 3,
        K::Consumer => 4,
    }
}

/// `span-batch` as `on-spans` takes it, borrowed.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct SpanBatch<'a> {
    #[component(name = "arena")]
    pub arena: &'a str,
    #[component(name = "spans")]
    pub spans: &'a [Span],
    #[component(name = "attrs")]
    pub attrs: &'a [Attr],
}

/// `log-batch` as `on-logs` takes it, borrowed.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct LogBatch<'a> {
    #[component(name = "arena")]
    pub arena: &'a str,
    #[component(name = "logs")]
    pub logs: &'a [Log],
    #[component(name = "attrs")]
    pub attrs: &'a [Attr],
}

impl<'a> From<&'a span_hooks::SpanBatch> for SpanBatch<'a> {
    fn from(b: &'a span_hooks::SpanBatch) -> Self {
        SpanBatch {
            arena: &b.arena,
            spans: Span::slice(&b.spans),
            attrs: Attr::slice(&b.attrs),
        }
    }
}

impl<'a> From<&'a log_hooks::LogBatch> for LogBatch<'a> {
    fn from(b: &'a log_hooks::LogBatch) -> Self {
        LogBatch {
            arena: &b.arena,
            logs: Log::slice(&b.logs),
            attrs: Attr::slice(&b.attrs),
        }
    }
}
