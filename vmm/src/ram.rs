//! Host memory behind guest RAM, mapped at 2 MiB boundaries.
//!
//! KVM backs a guest page with a 2 MiB host page (one nested page-table entry instead of 512)
//! only where the guest-physical and the host-virtual address are aligned alike. Guest RAM
//! ranges start on 2 MiB boundaries, but a plain anonymous `mmap` (what vm-memory's
//! `GuestRegionMmap::from_range` does) is only page-aligned on kernels before 6.7: then no guest
//! page gets a huge page, every first touch of guest memory costs a 4 KiB fault, and memory
//! that the guest migrates out of an ejected DIMM lands 4 KiB at a time. [`RamRegion`] maps a
//! little more, trims it to a 2 MiB-aligned range, asks for transparent huge pages, and owns the
//! result; vm-memory sees it through a `GuestRegionMmap` that does not own it.

use std::io;
use std::ptr::null_mut;

use vm_memory::bitmap::BS;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    GuestAddress, GuestMemoryRegion, GuestMemoryRegionBytes, GuestRegionCollection,
    GuestRegionMmap, GuestUsize, MemoryRegionAddress, VolatileSlice,
};

/// The size of an x86 huge page, and so the alignment guest RAM is mapped at.
pub const HUGE_PAGE_SIZE: usize = 2 << 20;

/// Tidal's guest memory map: [`RamRegion`]s.
pub type GuestMemory = GuestRegionCollection<RamRegion>;

const PROT: i32 = libc::PROT_READ | libc::PROT_WRITE;
/// What vm-memory uses for anonymous guest memory: private, and nothing reserved in swap for
/// memory the guest may never touch.
const FLAGS: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

/// Anonymous host memory at a 2 MiB-aligned address, unmapped when dropped.
#[derive(Debug)]
struct AlignedMapping {
    addr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; the pointer is never dereferenced
// through it, only handed to vm-memory and KVM, which synchronize their own accesses.
unsafe impl Send for AlignedMapping {}
// SAFETY: as for Send: no method reads or writes through the pointer.
unsafe impl Sync for AlignedMapping {}

impl AlignedMapping {
    fn new(len: usize) -> io::Result<Self> {
        let reserved = len
            .checked_add(HUGE_PAGE_SIZE)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: a fresh mapping where the kernel chooses; it overlaps nothing of ours.
        let base = unsafe { libc::mmap(null_mut(), reserved, PROT, FLAGS, -1, 0) };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = base as usize;
        let start = base.next_multiple_of(HUGE_PAGE_SIZE);
        let head = start - base;
        let tail = reserved - head - len;
        // SAFETY: both ranges lie inside the mapping just made, outside [start, start + len),
        // and nothing refers to them. munmap of a page-aligned range inside a mapping cannot
        // fail but for lack of memory to split it, which leaves a little address space mapped.
        unsafe {
            if head > 0 {
                libc::munmap(base as *mut libc::c_void, head);
            }
            if tail > 0 {
                libc::munmap((start + len) as *mut libc::c_void, tail);
            }
        }
        // Huge pages where the host's THP mode is `madvise`; where THP is off this fails, and
        // the memory simply stays in 4 KiB pages.
        // SAFETY: advice on our own mapping; it changes no contents.
        unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
        Ok(Self {
            addr: start as *mut u8,
            len,
        })
    }
}

impl Drop for AlignedMapping {
    fn drop(&mut self) {
        // SAFETY: the range is ours (made in `new`), and the `GuestRegionMmap` that pointed into
        // it is dropped before this (see `RamRegion`'s field order).
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

/// One range of guest RAM and the host memory behind it.
#[derive(Debug)]
pub struct RamRegion {
    /// vm-memory's view of `mapping`, which does not own it. Declared first, so it is dropped
    /// before the mapping goes.
    view: GuestRegionMmap,
    mapping: AlignedMapping,
}

impl RamRegion {
    /// Maps `len` bytes of fresh host memory for guest RAM at `base`.
    pub fn new(base: GuestAddress, len: usize) -> io::Result<Self> {
        let mapping = AlignedMapping::new(len)?;
        // SAFETY: `mapping` is a live, page-aligned mapping of `len` bytes with these
        // protection and flags, and `RamRegion` keeps it alive as long as the view.
        let view = unsafe { MmapRegionBuilder::new(len).with_raw_mmap_pointer(mapping.addr) }
            .with_mmap_prot(PROT)
            .with_mmap_flags(FLAGS)
            .build()
            .map_err(io::Error::other)?;
        let view = GuestRegionMmap::new(view, base).ok_or_else(|| {
            io::Error::other(format!(
                "{len} bytes at {base:#x?} overflow the address space"
            ))
        })?;
        Ok(Self { view, mapping })
    }

    /// Where the region starts in the VMM's address space.
    pub fn host_address(&self) -> *mut u8 {
        self.mapping.addr
    }
}

impl GuestMemoryRegion for RamRegion {
    type B = ();

    fn len(&self) -> GuestUsize {
        self.view.len()
    }

    fn start_addr(&self) -> GuestAddress {
        self.view.start_addr()
    }

    fn bitmap(&self) -> BS<'_, ()> {
        self.view.bitmap()
    }

    fn get_host_address(
        &self,
        addr: MemoryRegionAddress,
    ) -> vm_memory::guest_memory::Result<*mut u8> {
        self.view.get_host_address(addr)
    }

    fn get_slice(
        &self,
        offset: MemoryRegionAddress,
        count: usize,
    ) -> vm_memory::guest_memory::Result<VolatileSlice<'_, BS<'_, ()>>> {
        self.view.get_slice(offset, count)
    }
}

impl GuestMemoryRegionBytes for RamRegion {}

#[cfg(test)]
mod tests {
    use vm_memory::{Address, Bytes};

    use super::*;

    #[test]
    fn maps_at_huge_page_boundaries_and_reads_back() {
        for len in [HUGE_PAGE_SIZE, 3 * HUGE_PAGE_SIZE + 4096] {
            let region = RamRegion::new(GuestAddress(1 << 32), len).unwrap();
            assert_eq!(region.host_address() as usize % HUGE_PAGE_SIZE, 0);
            assert_eq!(region.len(), len as u64);
            let memory = GuestMemory::from_regions(vec![region]).unwrap();
            let last = GuestAddress((1 << 32) + len as u64 - 8);
            memory.write_obj(0x1234_5678_u64, last).unwrap();
            assert_eq!(memory.read_obj::<u64>(last).unwrap(), 0x1234_5678);
            assert!(memory.write_obj(0_u64, last.unchecked_add(8)).is_err());
        }
    }
}
