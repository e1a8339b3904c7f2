//! Allocation counts for the load harness (`--features alloc-count`, which the bench build
//! turns on): the system allocator, wrapped to count allocations, bytes allocated and bytes
//! live, shown on `/metrics` as `acpd_alloc_*`. Without the feature the daemon keeps the plain
//! system allocator and `/metrics` shows none of it.
//!
//! The counters are sharded by thread (a slot per thread, relaxed atomics on its own cache
//! line), so counting costs a few nanoseconds per allocation and no cross-core traffic; a
//! reading sums the slots.

use std::fmt::Write as _;

/// Totals since start: (allocations, bytes allocated, bytes live). `None` without the feature.
pub fn totals() -> Option<(u64, u64, u64)> {
    #[cfg(feature = "alloc-count")]
    {
        Some(imp::totals())
    }
    #[cfg(not(feature = "alloc-count"))]
    {
        None
    }
}

/// Appends the counters to a Prometheus text body (nothing without the feature).
pub fn append_prometheus(body: &mut String) {
    let Some((allocs, bytes, live)) = totals() else {
        return;
    };
    let _ = write!(
        body,
        "# HELP acpd_alloc_count_total Heap allocations since start (alloc-count build)\n\
         # TYPE acpd_alloc_count_total counter\n\
         acpd_alloc_count_total {allocs}\n\
         # HELP acpd_alloc_bytes_total Bytes allocated since start (alloc-count build)\n\
         # TYPE acpd_alloc_bytes_total counter\n\
         acpd_alloc_bytes_total {bytes}\n\
         # HELP acpd_alloc_live_bytes Bytes allocated and not yet freed (alloc-count build)\n\
         # TYPE acpd_alloc_live_bytes gauge\n\
         acpd_alloc_live_bytes {live}\n"
    );
}

#[cfg(feature = "alloc-count")]
pub use imp::Counting;

#[cfg(feature = "alloc-count")]
mod imp {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

    const SLOTS: usize = 64;

    #[repr(align(64))]
    struct Slot {
        allocs: AtomicU64,
        bytes: AtomicU64,
        /// Allocated minus freed on this slot's threads; wraps, and only the sum means anything.
        live: AtomicU64,
    }

    #[allow(clippy::declare_interior_mutable_const)]
    const EMPTY: Slot = Slot {
        allocs: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        live: AtomicU64::new(0),
    };
    static COUNTS: [Slot; SLOTS] = [EMPTY; SLOTS];
    static NEXT: AtomicUsize = AtomicUsize::new(0);

    thread_local! {
        // Const-initialised with no destructor: reading it never allocates.
        static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
    }

    fn slot() -> &'static Slot {
        let i = SLOT
            .try_with(|s| {
                let mut i = s.get();
                if i == usize::MAX {
                    i = NEXT.fetch_add(1, Relaxed) % SLOTS;
                    s.set(i);
                }
                i
            })
            .unwrap_or(0);
        &COUNTS[i]
    }

    fn on_alloc(size: usize) {
        let s = slot();
        s.allocs.fetch_add(1, Relaxed);
        s.bytes.fetch_add(size as u64, Relaxed);
        s.live.fetch_add(size as u64, Relaxed);
    }

    fn on_free(size: usize) {
        slot().live.fetch_sub(size as u64, Relaxed);
    }

    pub fn totals() -> (u64, u64, u64) {
        COUNTS.iter().fold((0, 0, 0), |(a, b, l), s| {
            (
                a + s.allocs.load(Relaxed),
                b + s.bytes.load(Relaxed),
                l.wrapping_add(s.live.load(Relaxed)),
            )
        })
    }

    /// The system allocator, counted.
    pub struct Counting;

    // SAFETY: every call is forwarded to `System` unchanged; the counting touches only atomics.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded with the caller's layout.
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                on_alloc(layout.size());
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded with the caller's layout.
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                on_alloc(layout.size());
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded with the caller's pointer and layout.
            unsafe { System.dealloc(ptr, layout) };
            on_free(layout.size());
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: forwarded with the caller's pointer, layout and size.
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                // A reallocation counts as one allocation of the new size.
                on_free(layout.size());
                on_alloc(new_size);
            }
            p
        }
    }
}
