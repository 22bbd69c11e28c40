//! Large stored bodies (at least [`MIN_LARGE`] bytes, at most
//! [`MAX_MAPPED`] at once) in anonymous mappings of their own, given back
//! to the kernel (`munmap`) the moment their last reference goes.
//!
//! Why not the heap: the allocator (mimalloc) keeps freed memory
//! committed for its purge delay (1 s) and purges only when the process
//! allocates again. A burst of multi-MiB misses — each body collected from
//! hyper's read buffers, copied into one allocation, and sooner or later
//! evicted — therefore held RSS far above SPEC §10's bound of
//! 1.25 × `memory_capacity` + 64 MiB (150 MiB at 32 MiB of capacity with
//! 8 MiB objects) and kept it there while idle. Here a body being
//! admitted is copied into its mapping chunk by chunk as it arrives (see
//! [`Collector`]), so hyper's buffers are reused at once instead of
//! piling up until the end, and an evicted body's pages leave with it.
//! What is written is shared as it goes ([`Mapped::written`]): the client
//! the body is fetched for is sent the mapping's bytes, not a copy.
//!
//! The price is two system calls and the page faults of a fresh mapping
//! per admission of such a body, nothing per hit (a hit clones the
//! `Bytes`). No crate on this machine wraps an anonymous mapping as a
//! `Bytes` owner; `rustix::mm` makes the calls.

use std::ptr::NonNull;

use bytes::Bytes;

/// Bodies of at least this many bytes get a mapping of their own: above
/// mimalloc's small and medium sizes, whose pages are reused at once.
/// With 1 MiB here, 16 clients' misses of unique 200–300 KiB objects
/// through a 64 MiB tier peaked at 141–152 MiB of RSS (SPEC §10's bound:
/// 144) and held 113–121 after; with 128 KiB, 130–134 and 95–99 (release
/// binary, three runs each). A mapping's fixed costs (two system calls,
/// the page faults of fresh memory: a few µs) are small next to a miss
/// of this size.
pub const MIN_LARGE: usize = 128 << 10;

/// Bodies in mappings at once, at most: every mapping of the process
/// (mimalloc's and the threads' stacks too) counts against the kernel's
/// `vm.max_map_count` (65,530 by default), so past this many a body stays
/// on the heap. A tier of many GiB of mid-size objects would otherwise
/// reach the limit, and an allocation then fails.
const MAX_MAPPED: usize = 16_384;

/// Bodies in mappings now.
static MAPPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One body's anonymous mapping, unmapped when the writer and every
/// `Bytes` of it are gone.
struct Mapping {
    base: NonNull<u8>,
    /// Bytes mapped (a whole number of pages).
    mapped: usize,
}

// SAFETY: the memory is reached only through `Mapped` (the one writer,
// which writes past every byte it has shared) and `Written` (bytes
// already written, never written again), see their docs.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `Mapped::with_capacity`, unmapped
        // once; this is its last reference, so nothing refers to its bytes.
        unsafe { unmap(self.base, self.mapped) }
        MAPPED.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A body being written into its mapping by its one writer (this value,
/// not `Clone`), appending only. What it has written can be shared at any
/// time ([`Mapped::written`]) without a copy: a shared byte is never
/// written again, the writer only writes past `len`.
pub struct Mapped {
    map: std::sync::Arc<Mapping>,
    /// Bytes written.
    len: usize,
}

/// The first `len` bytes of a mapping, written before this value was made
/// and never written again: the owner of the `Bytes` shared from it.
struct Written {
    map: std::sync::Arc<Mapping>,
    len: usize,
}

impl AsRef<[u8]> for Written {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len` bytes from `base` lie inside the mapping, which lives
        // as long as `self`; they were written before `self` was made (by
        // the writer, whose later writes go past them).
        unsafe { std::slice::from_raw_parts(self.map.base.as_ptr(), self.len) }
    }
}

impl Mapped {
    /// A mapping for `capacity` bytes; `None` when the kernel refuses one
    /// or [`MAX_MAPPED`] bodies are mapped already (the caller keeps the
    /// heap).
    pub fn with_capacity(capacity: usize) -> Option<Mapped> {
        use std::sync::atomic::Ordering;
        let mapped = capacity.max(1).div_ceil(4096) * 4096;
        if MAPPED.fetch_add(1, Ordering::Relaxed) >= MAX_MAPPED {
            MAPPED.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let Some(base) = map_anonymous(mapped) else {
            MAPPED.fetch_sub(1, Ordering::Relaxed);
            return None;
        };
        Some(Mapped {
            map: std::sync::Arc::new(Mapping { base, mapped }),
            len: 0,
        })
    }

    /// Appends `data`; `false` (and nothing written) when it does not fit.
    pub fn push(&mut self, data: &[u8]) -> bool {
        if data.len() > self.map.mapped - self.len {
            return false;
        }
        // SAFETY: the destination lies inside the mapping (checked above)
        // and past every byte shared so far (`Written` covers at most
        // `len`), and only this value writes; the source is a different
        // allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.map.base.as_ptr().add(self.len),
                data.len(),
            );
        }
        self.len += data.len();
        true
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes written from `from` on, shared (no copy; one small
    /// allocation for the owner). `from` is at most [`Mapped::len`].
    pub fn written(&self, from: usize) -> Bytes {
        Bytes::from_owner(Written {
            map: self.map.clone(),
            len: self.len,
        })
        .slice(from.min(self.len)..)
    }

    /// The body, shared from here on.
    pub fn freeze(self) -> Bytes {
        self.written(0)
    }
}

/// A new private anonymous mapping of `bytes` bytes (page-aligned,
/// zero-filled, resident only where written); `None` when the kernel
/// refuses one or on a platform without `mmap`.
pub(crate) fn map_anonymous(bytes: usize) -> Option<NonNull<u8>> {
    #[cfg(unix)]
    {
        use rustix::mm::{mmap_anonymous, MapFlags, ProtFlags};
        // SAFETY: a new private anonymous mapping at an address the kernel
        // picks; nothing else refers to it.
        let base = unsafe {
            mmap_anonymous(
                std::ptr::null_mut(),
                bytes,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }
        .ok()?;
        NonNull::new(base.cast::<u8>())
    }
    #[cfg(not(unix))]
    {
        let _ = bytes;
        None
    }
}

/// Gives back a mapping made by [`map_anonymous`].
///
/// # Safety
/// `base` and `bytes` are those of one live mapping from
/// [`map_anonymous`], unmapped once, and nothing refers to its memory
/// any more.
pub(crate) unsafe fn unmap(base: NonNull<u8>, bytes: usize) {
    #[cfg(unix)]
    // SAFETY: as the caller promises.
    unsafe {
        let _ = rustix::mm::munmap(base.as_ptr().cast(), bytes);
    }
    #[cfg(not(unix))]
    let _ = (base, bytes);
}

/// `chunks` (`total` bytes together) copied into a mapping of their own,
/// when the body is large enough for one and the kernel grants it.
pub fn collect(chunks: &[Bytes], total: usize) -> Option<Bytes> {
    if total < MIN_LARGE {
        return None;
    }
    let mut m = Mapped::with_capacity(total)?;
    for c in chunks {
        if !m.push(c) {
            return None;
        }
    }
    Some(m.freeze())
}

/// A body being admitted, collected as it arrives: into a mapping as soon
/// as its declared length says it is large (each chunk copied at once, so
/// hyper's read buffer is free to be reused), else as a list of chunks
/// copied into one allocation at the end.
pub enum Collector {
    Chunks(Vec<Bytes>),
    Mapped(Mapped),
}

impl Collector {
    /// For a body of `declared` length (if known).
    pub fn new(declared: Option<u64>) -> Collector {
        declared
            .and_then(|d| usize::try_from(d).ok())
            .filter(|&d| d >= MIN_LARGE)
            .and_then(Mapped::with_capacity)
            .map_or_else(|| Collector::Chunks(Vec::new()), Collector::Mapped)
    }

    /// Adds a chunk. A mapped body that would overflow its declared length
    /// (the upstream's framing guarantees it will not) goes back to a
    /// chunk list.
    pub fn push(&mut self, data: &Bytes) {
        match self {
            Collector::Chunks(chunks) => chunks.push(data.clone()),
            Collector::Mapped(m) => {
                if !m.push(data) {
                    let read = m.written(0);
                    *self = Collector::Chunks(vec![read, data.clone()]);
                }
            }
        }
    }

    /// [`Collector::push`], returning the chunk as collected, shared (no
    /// copy): in the mapping when the body has one, so that what is passed
    /// on to a client holds no read buffer of the upstream's.
    pub fn push_shared(&mut self, data: &Bytes) -> Bytes {
        self.push(data);
        match self {
            Collector::Mapped(m) => m.written(m.len() - data.len()),
            Collector::Chunks(_) => data.clone(),
        }
    }

    /// What was read so far, as chunks (for a request that sends the body
    /// itself once it is known not to be stored).
    pub fn into_chunks(self) -> Vec<Bytes> {
        match self {
            Collector::Chunks(chunks) => chunks,
            Collector::Mapped(m) if m.is_empty() => Vec::new(),
            Collector::Mapped(m) => vec![m.freeze()],
        }
    }

    /// The whole body (`total` bytes) in one allocation of its own.
    pub fn finish(self, total: usize) -> Bytes {
        match self {
            Collector::Chunks(chunks) => super::arena::collect(&chunks, total),
            Collector::Mapped(m) => m.freeze(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_body_is_collected_into_a_mapping_of_its_own() {
        let chunk = Bytes::from(vec![7u8; MIN_LARGE / 3]);
        let mut c = Collector::new(Some(MIN_LARGE as u64 + 10));
        assert!(matches!(c, Collector::Mapped(_)));
        let mut total = 0;
        while total + chunk.len() <= MIN_LARGE {
            c.push(&chunk);
            total += chunk.len();
        }
        let tail = Bytes::from(vec![9u8; MIN_LARGE + 10 - total]);
        c.push(&tail);
        let body = c.finish(MIN_LARGE + 10);
        assert_eq!(body.len(), MIN_LARGE + 10);
        assert!(body[..total].iter().all(|&b| b == 7));
        assert!(body[total..].iter().all(|&b| b == 9));
        // A clone shares the mapping; the last one unmaps it.
        let clone = body.slice(10..20);
        drop(body);
        assert_eq!(&clone[..], &[7u8; 10]);
    }

    #[test]
    fn an_overflowing_or_small_body_stays_a_chunk_list() {
        assert!(matches!(Collector::new(Some(1000)), Collector::Chunks(_)));
        assert!(matches!(Collector::new(None), Collector::Chunks(_)));
        let mut c = Collector::new(Some(MIN_LARGE as u64));
        let big = Bytes::from(vec![1u8; MIN_LARGE]);
        c.push(&big);
        c.push(&Bytes::from_static(b"more"));
        assert!(matches!(c, Collector::Chunks(_)));
        let body = c.finish(MIN_LARGE + 4);
        assert_eq!(body.len(), MIN_LARGE + 4);
        assert_eq!(&body[MIN_LARGE..], b"more");
    }

    #[test]
    fn collect_maps_only_large_bodies() {
        let small = [Bytes::from_static(b"abc")];
        assert!(collect(&small, 3).is_none());
        let big = [Bytes::from(vec![5u8; MIN_LARGE])];
        assert_eq!(collect(&big, MIN_LARGE).unwrap().len(), MIN_LARGE);
    }
}
