//! Allocation counts for the load harness (`--features alloc-count`, which the bench build
//! turns on): the system allocator, wrapped to count allocations, bytes allocated and bytes
//! live, shown on `/metrics` as `acpd_alloc_*`. Without the feature the daemon keeps the plain
//! system allocator and `/metrics` shows none of it.
//!
//! The counters are sharded by thread: each of the first threads owns a slot on its own cache
//! line and updates it with plain loads and stores (a single writer needs no locked
//! instruction), and later threads share one slot with atomic adds. A reading sums the slots.
//! The bench build's figures are the daemon's with this counting in it: with a locked add per
//! counter it took 6-7 % of the daemon's CPU samples on the prompt path, 1.3-1.5 % without
//! (`perf`, BENCHMARKS.md "Round fourteen").

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

/// Allocations made so far by this thread, when it has a counter slot of its own: the
/// `path-marks` build counts each step's allocations with it. `None` without the feature, and
/// on a thread that shares the last slot.
pub fn this_thread() -> Option<u64> {
    #[cfg(feature = "alloc-count")]
    {
        imp::this_thread()
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

// Compiled for the unit tests too, where it is not the global allocator: they drive its
// counters directly.
#[cfg(any(feature = "alloc-count", test))]
#[cfg_attr(not(feature = "alloc-count"), allow(dead_code))]
mod imp {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

    const SLOTS: usize = 64;
    /// The slot shared by threads without one of their own, updated with atomic adds.
    const SHARED: usize = 0;

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
    /// Slots handed out so far; a slot is never handed out twice, so its thread is its only
    /// writer (threads that end keep theirs: their counts stay in the totals).
    static NEXT: AtomicUsize = AtomicUsize::new(SHARED + 1);

    thread_local! {
        // Const-initialised with no destructor: reading it never allocates.
        static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
    }

    /// This thread's slot: its own, or [`SHARED`] once every slot is taken (or while the
    /// thread's locals are being torn down).
    fn slot() -> usize {
        SLOT.try_with(|s| {
            let mut i = s.get();
            if i == usize::MAX {
                i = NEXT.fetch_add(1, Relaxed);
                if i >= SLOTS {
                    i = SHARED;
                }
                s.set(i);
            }
            i
        })
        .unwrap_or(SHARED)
    }

    /// Adds `n` (wrapping) to a counter of slot `i`: a load and a store where the slot has one
    /// writer, an atomic add where threads share it.
    fn add(i: usize, counter: impl Fn(&Slot) -> &AtomicU64, n: u64) {
        let c = counter(&COUNTS[i]);
        if i == SHARED {
            c.fetch_add(n, Relaxed);
        } else {
            c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
        }
    }

    pub(super) fn on_alloc(size: usize) {
        let i = slot();
        add(i, |s| &s.allocs, 1);
        add(i, |s| &s.bytes, size as u64);
        add(i, |s| &s.live, size as u64);
    }

    pub(super) fn on_free(size: usize) {
        add(slot(), |s| &s.live, (size as u64).wrapping_neg());
    }

    pub fn this_thread() -> Option<u64> {
        let i = slot();
        (i != SHARED).then(|| COUNTS[i].allocs.load(Relaxed))
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

#[cfg(test)]
mod tests {
    use super::imp;

    /// More threads than slots count allocations, bytes and live bytes exactly: the owned
    /// slots' plain stores lose nothing, and the threads beyond them share the atomic slot.
    #[test]
    fn counts_from_more_threads_than_slots_add_up_exactly() {
        let (a0, b0, l0) = imp::totals();
        let threads: Vec<_> = (0..100)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..1000 {
                        imp::on_alloc(8);
                    }
                    for _ in 0..500 {
                        imp::on_free(8);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (a1, b1, l1) = imp::totals();
        assert_eq!(a1 - a0, 100_000);
        assert_eq!(b1 - b0, 800_000);
        assert_eq!(l1.wrapping_sub(l0), 400_000);
    }
}
