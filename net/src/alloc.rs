//! A global allocator that survives the array counts a client claims.
//!
//! kafka-protocol decodes an array by reserving room for the count written in front of it
//! (`Vec::with_capacity(n)`) before it reads a single element. A 40-byte request can claim two
//! billion partitions; at ~100 bytes an element that reservation is ~200 GiB, which the
//! system allocator refuses, and Rust aborts the process on a failed allocation. Checking every
//! count of every API by hand before decoding is a parser of its own for each request.
//!
//! Instead, allocations of 1 GiB and more are served by an anonymous `MAP_NORESERVE` mapping:
//! the kernel hands out address space without committing memory (untouched pages cost nothing,
//! and the default overcommit policy does not count `MAP_NORESERVE` mappings), so the
//! reservation succeeds, the decoder then finds the body too short for the elements it claims,
//! fails, and the mapping is returned. Nothing legitimate in the broker allocates 1 GiB from the
//! heap (frames are capped by `socket.request.max.bytes`, registered I/O memory is mapped by
//! glommio itself), so this path is only ever taken by such claims. With the kernel's strict
//! overcommit (`vm.overcommit_memory = 2`) the mapping can still fail and the process aborts as
//! before; the broker logs a warning about that setting at start.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;

/// Allocations of this size and above are mapped lazily instead of taken from the heap.
pub const LAZY_THRESHOLD_BYTES: usize = 1 << 30;
/// Page size assumed for alignment; larger alignments go to the system allocator.
const PAGE_BYTES: usize = 4096;

/// The system allocator, with huge allocations mapped lazily. Install it with
/// `#[global_allocator] static ALLOC: ringlog_net::alloc::ClaimTolerantAlloc = ClaimTolerantAlloc;`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClaimTolerantAlloc;

fn is_lazy(layout: Layout) -> bool {
    layout.size() >= LAZY_THRESHOLD_BYTES && layout.align() <= PAGE_BYTES
}

/// Maps `size` bytes of zeroed, uncommitted memory, or null.
fn map_lazily(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping at an address the kernel chooses touches no
    // existing memory.
    let address = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if address == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        address.cast()
    }
}

// SAFETY: every block is either from `System` (small or over-aligned layouts) or from
// `map_lazily` (the rest), decided by the layout alone, which the caller passes back unchanged
// to `dealloc`, so each block is returned to where it came from. Mapped blocks are page
// aligned, which satisfies every alignment routed to them.
unsafe impl GlobalAlloc for ClaimTolerantAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_lazy(layout) {
            map_lazily(layout.size())
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_lazy(layout) {
            // Anonymous mappings are zero-filled.
            map_lazily(layout.size())
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if is_lazy(layout) {
            // SAFETY: the block was mapped by `map_lazily` with this size.
            unsafe { libc::munmap(block.cast(), layout.size()) };
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.dealloc(block, layout) }
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` is valid for `layout.align()`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_lazy(layout) && !is_lazy(new_layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.realloc(block, layout, new_size) };
        }
        // SAFETY: `new_layout` has a non-zero size (the caller's guarantee).
        let moved = unsafe { self.alloc(new_layout) };
        if !moved.is_null() {
            // SAFETY: both blocks are valid for the smaller size and do not overlap.
            unsafe {
                ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                self.dealloc(block, layout);
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_of_hundreds_of_gigabytes_is_reserved_and_returned() {
        // 2^31 elements of 100 bytes: what a hostile array count asks for.
        let claimed: Vec<[u8; 100]> = Vec::with_capacity(i32::MAX as usize);
        assert!(claimed.capacity() >= i32::MAX as usize);
        drop(claimed);
        let mut grown: Vec<u8> = Vec::with_capacity(LAZY_THRESHOLD_BYTES - 1);
        grown.push(7);
        grown.reserve(LAZY_THRESHOLD_BYTES + 1);
        assert_eq!(grown[0], 7);
    }
}
