//! The allocator's freed memory: [`release_freed`] hands back to the kernel
//! what the calling thread's mimalloc heap holds freed. mimalloc purges
//! such pages only after a delay, and only when the thread that owns them
//! allocates again, so a thread that freed much and then sat idle kept its
//! high-water mark resident. Callers: an encoding thread after a large
//! encoding (`compression`), a runtime worker going idle after keep-alive
//! connections gave their buffers back (`server::keepalive`).
//!
//! A purge on every free (`purge_delay = 0`) was measured instead: on the
//! pass path it cost 0.06 `madvise` calls and 0.8 page faults per request.

// mimalloc's own entry point (the library Strata links as its global
// allocator); the `mimalloc` crate does not wrap it. Named here so that
// every binary linking this library links mimalloc's C library too (the
// tests, whose global allocator is the system's: there the call finds an
// empty heap).
extern crate mimalloc as _;
extern "C" {
    fn mi_collect(force: bool);
}

/// Gives back to the kernel what the calling thread's allocator heap holds
/// freed (see the module doc). It walks that thread's heap only: call it
/// on the thread that freed, and not per request.
pub fn release_freed() {
    // SAFETY: `mi_collect` takes no pointers; it may be called on any
    // thread at any time.
    unsafe { mi_collect(true) }
}
