//! Memory for the brotli encoder's tables at admission: the large integer
//! tables (hash buckets and chains, 16–34 MiB at the store levels 5–9,
//! whatever the body's size) in anonymous mappings of their own, given back
//! to the kernel (`munmap`) when the encoder frees them; and
//! `crate::heap::release_freed`, which hands back what the encoding
//! thread's heap holds freed after a large encoding.
//!
//! Why not the heap: brotli asks for its tables zeroed and touches only a
//! few MiB of them for a body of up to a few MiB. A fresh mapping is zero
//! pages that cost memory only where they are written; memory the
//! allocator (mimalloc) hands out again must be cleared in full, so every
//! encoder thread kept its whole tables resident and the process held
//! 15–35 MiB per blocking thread that had ever encoded — 340 MiB of RSS
//! after 100 MiB of 64 KiB text misses through a 32 MiB memory tier, far
//! past SPEC §10's bound of 1.25 × `memory_capacity` + 64 MiB. The cost is
//! two system calls and the page faults of what is written, per table per
//! admission, nothing per hit. No crate on this machine offers a brotli
//! allocator backed by fresh mappings; the mappings are `cache/large.rs`'s.

use std::any::TypeId;
use std::ptr::NonNull;

use brotli::enc::{Allocator, BrotliAlloc, SliceWrapper, SliceWrapperMut};

/// Tables of at least this many bytes get a mapping of their own; smaller
/// ones come from the heap as before.
const MIN_MAPPED: usize = 256 << 10;

/// The allocator passed to the one-shot brotli encoder.
#[derive(Default)]
pub struct TableAlloc;

/// One allocation of the encoder: a heap slice, or a mapping of `bytes`
/// bytes holding `len` zero-initialised `T`s.
pub enum Block<T> {
    Heap(Box<[T]>),
    Mapped {
        base: NonNull<T>,
        len: usize,
        bytes: usize,
    },
}

impl<T> Default for Block<T> {
    fn default() -> Self {
        Block::Heap(Box::new([]))
    }
}

impl<T> SliceWrapper<T> for Block<T> {
    fn slice(&self) -> &[T] {
        match self {
            Block::Heap(b) => b,
            // SAFETY: the mapping holds `len` initialised (zero) `T`s, is
            // page-aligned and lives as long as `self`.
            Block::Mapped { base, len, .. } => unsafe {
                std::slice::from_raw_parts(base.as_ptr(), *len)
            },
        }
    }
}

impl<T> SliceWrapperMut<T> for Block<T> {
    fn slice_mut(&mut self) -> &mut [T] {
        match self {
            Block::Heap(b) => b,
            // SAFETY: as in `slice`; `&mut self` makes the access exclusive.
            Block::Mapped { base, len, .. } => unsafe {
                std::slice::from_raw_parts_mut(base.as_ptr(), *len)
            },
        }
    }
}

impl<T> Drop for Block<T> {
    fn drop(&mut self) {
        if let Block::Mapped { base, bytes, .. } = self {
            // SAFETY: the mapping made in `mapped`, unmapped once; no
            // reference to it outlives `self`.
            unsafe { crate::cache::large::unmap(base.cast(), *bytes) }
        }
    }
}

/// Whether all-zero bytes are a valid `T` equal to `T::default()`: the
/// integer element types of the encoder's tables. Every other type (its
/// structs of histograms and commands) stays on the heap.
fn zero_is_default<T: 'static>() -> bool {
    let t = TypeId::of::<T>();
    [
        TypeId::of::<u8>(),
        TypeId::of::<u16>(),
        TypeId::of::<u32>(),
        TypeId::of::<i32>(),
        TypeId::of::<u64>(),
    ]
    .contains(&t)
}

/// `len` zeroed `T`s in a fresh mapping; `None` when the kernel refuses one.
fn mapped<T>(len: usize, bytes: usize) -> Option<Block<T>> {
    Some(Block::Mapped {
        base: crate::cache::large::map_anonymous(bytes)?.cast(),
        len,
        bytes,
    })
}

impl<T: Clone + Default + 'static> Allocator<T> for TableAlloc {
    type AllocatedMemory = Block<T>;

    fn alloc_cell(&mut self, len: usize) -> Block<T> {
        let bytes = len.saturating_mul(std::mem::size_of::<T>());
        if bytes >= MIN_MAPPED && zero_is_default::<T>() {
            if let Some(block) = mapped(len, bytes) {
                return block;
            }
        }
        Block::Heap(vec![T::default(); len].into_boxed_slice())
    }

    fn free_cell(&mut self, _data: Block<T>) {}
}

impl BrotliAlloc for TableAlloc {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_integer_tables_are_mapped_and_zeroed() {
        let mut a = TableAlloc;
        let mut t: Block<u32> = a.alloc_cell(1 << 20);
        assert!(matches!(t, Block::Mapped { .. }));
        assert!(t.slice().iter().all(|&v| v == 0));
        t.slice_mut()[12345] = 7;
        assert_eq!(t.slice()[12345], 7);
        let small: Block<u32> = a.alloc_cell(16);
        assert!(matches!(small, Block::Heap(_)));
        // Not an integer: heap, whatever its size.
        let other: Block<(u32, u32)> = a.alloc_cell(1 << 20);
        assert!(matches!(other, Block::Heap(_)));
    }
}
