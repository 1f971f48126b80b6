//! Host memory behind guest RAM, mapped at 2 MiB boundaries, from the backend a node chose.
//!
//! KVM backs a guest page with a 2 MiB host page (one nested page-table entry instead of 512)
//! only where the guest-physical and the host-virtual address are aligned alike. Guest RAM
//! ranges start on 2 MiB boundaries, but a plain anonymous `mmap` (what vm-memory's
//! `GuestRegionMmap::from_range` does) is only page-aligned on kernels before 6.7: then no guest
//! page gets a huge page, every first touch of guest memory costs a 4 KiB fault, and memory
//! that the guest migrates out of an ejected DIMM lands 4 KiB at a time. [`RamRegion`] reserves
//! a little more address space, maps the memory at a 2 MiB-aligned address inside it as its
//! [`MemoryBackend`] says (hugetlb memory the kernel places at its page size by itself), asks
//! for transparent huge pages, and owns the result; vm-memory sees it through a
//! `GuestRegionMmap` that does not own it. Dropping the region unmaps the memory, which gives
//! it back for every backend.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::null_mut;

use thiserror::Error;
use tidal_api::size::format_size;
use vm_memory::bitmap::BS;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    GuestAddress, GuestMemoryRegion, GuestMemoryRegionBytes, GuestRegionCollection,
    GuestRegionMmap, GuestUsize, MemoryRegionAddress, VolatileSlice,
};

use super::backend::{HugePageSize, MemoryBackend};

/// The size of an x86 huge page, and so the alignment guest RAM is mapped at.
pub const HUGE_PAGE_SIZE: usize = 2 << 20;

/// Tidal's guest memory map: [`RamRegion`]s.
pub type GuestMemory = GuestRegionCollection<RamRegion>;

const PROT: i32 = libc::PROT_READ | libc::PROT_WRITE;
/// What vm-memory uses for anonymous guest memory: private, and nothing reserved in swap for
/// memory the guest may never touch.
const ANONYMOUS: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
/// The name memfd-backed guest RAM shows in /proc/PID/maps (`/memfd:tidal-ram (deleted)`).
const MEMFD_NAME: &CStr = c"tidal-ram";

/// Why host memory for guest RAM could not be had.
#[derive(Debug, Error)]
pub enum RamError {
    #[error("cannot create a memfd: {0}")]
    Memfd(io::Error),
    #[error("cannot size the memfd: {0}")]
    Truncate(io::Error),
    #[error("mmap failed: {0}")]
    Map(io::Error),
    #[error(
        "the host's pool of {} huge pages has fewer than {pages} free (or a hugetlb cgroup \
         limit is reached): raise the pool's nr_hugepages under /sys/kernel/mm/hugepages",
        format_size(.page.bytes())
    )]
    HugePages { page: HugePageSize, pages: u64 },
    #[error("cannot bind it to host NUMA node {node}: {source}")]
    Bind { node: u32, source: io::Error },
    #[error("cannot allocate it in advance (prefault): {0}")]
    Prefault(io::Error),
}

impl RamError {
    /// The host lacks the memory, as opposed to refusing the request for another reason.
    pub fn is_host_shortage(&self) -> bool {
        match self {
            // Allocating in advance fails only for want of pages (hugetlb: EFAULT).
            Self::HugePages { .. } | Self::Prefault(_) => true,
            Self::Map(e) => e.raw_os_error() == Some(libc::ENOMEM),
            _ => false,
        }
    }
}

/// Host memory at an address aligned to its pages (2 MiB at least), unmapped when dropped.
#[derive(Debug)]
struct AlignedMapping {
    addr: *mut u8,
    len: usize,
    /// How it is mapped, which vm-memory is told.
    flags: i32,
}

// SAFETY: the mapping is plain memory owned by this value; the pointer is never dereferenced
// through it, only handed to vm-memory and KVM, which synchronize their own accesses.
unsafe impl Send for AlignedMapping {}
// SAFETY: as for Send: no method reads or writes through the pointer.
unsafe impl Sync for AlignedMapping {}

impl AlignedMapping {
    /// Maps `len` bytes as `backend` says. A memfd's descriptor is closed again at once: the
    /// mapping holds the file, so unmapping it gives the memory back.
    fn new(len: usize, backend: &MemoryBackend) -> Result<Self, RamError> {
        let memfd = backend
            .uses_memfd()
            .then(|| memfd(len, backend))
            .transpose()?;
        let flags = match (&memfd, backend.shared) {
            (None, _) => ANONYMOUS,
            (Some(_), true) => libc::MAP_SHARED,
            (Some(_), false) => libc::MAP_PRIVATE,
        };
        let fd: RawFd = memfd.as_ref().map_or(-1, AsRawFd::as_raw_fd);
        let start = match backend.huge_pages {
            // The kernel places a hugetlb mapping at a multiple of its page size by itself,
            // and reserves its pages as it maps: a pool too small fails here, leaving nothing.
            Some(page) => {
                // SAFETY: a fresh mapping where the kernel chooses; it overlaps nothing of ours.
                let addr = unsafe { libc::mmap(null_mut(), len, PROT, flags, fd, 0) };
                if addr == libc::MAP_FAILED {
                    let error = io::Error::last_os_error();
                    return Err(if error.raw_os_error() == Some(libc::ENOMEM) {
                        RamError::HugePages {
                            page,
                            pages: len as u64 / page.bytes(),
                        }
                    } else {
                        RamError::Map(error)
                    });
                }
                addr.cast()
            }
            None => {
                let start = reserve_aligned(len)?;
                // SAFETY: [start, start + len) is the reservation just made (ours alone);
                // MAP_FIXED replaces it with the memory.
                let addr =
                    unsafe { libc::mmap(start.cast(), len, PROT, flags | libc::MAP_FIXED, fd, 0) };
                if addr == libc::MAP_FAILED {
                    // The reservation may be gone already (the kernel unmaps it first), and
                    // another thread may have mapped something there since: leave the range
                    // alone. This fails only when the kernel is out of memory for itself.
                    return Err(RamError::Map(io::Error::last_os_error()));
                }
                start
            }
        };
        let mapping = Self {
            addr: start,
            len,
            flags,
        };
        if let Some(node) = backend.host_node {
            mapping.bind(node)?;
        }
        if backend.huge_pages.is_none() {
            // Huge pages where the host's THP mode is `madvise`; where THP is off this fails,
            // and the memory simply stays in 4 KiB pages.
            // SAFETY: advice on our own mapping; it changes no contents.
            unsafe { libc::madvise(start.cast(), len, libc::MADV_HUGEPAGE) };
        }
        // The pool reserves huge pages for the whole host, not per node: a node bound to one
        // host node takes its pages at once, so that a node short of them fails here rather
        // than at the guest's first touch.
        if backend.prefault || (backend.huge_pages.is_some() && backend.host_node.is_some()) {
            // SAFETY: as above; populating writes nothing the guest could have seen.
            let done = unsafe { libc::madvise(start.cast(), len, libc::MADV_POPULATE_WRITE) };
            if done != 0 {
                return Err(RamError::Prefault(io::Error::last_os_error()));
            }
        }
        Ok(mapping)
    }

    /// Takes this mapping's pages from host node `node` only; set before any page exists.
    fn bind(&self, node: u32) -> Result<(), RamError> {
        const MPOL_BIND: libc::c_long = 2;
        const NO_FLAGS: libc::c_ulong = 0;
        let mask: u64 = 1 << node;
        // The kernel reads one bit fewer than `maxnode` says.
        let maxnode: libc::c_ulong = 65;
        // SAFETY: mbind reads one word of node mask from `mask`, which lives across the call,
        // and changes only the policy of our own mapping.
        let done = unsafe {
            libc::syscall(
                libc::SYS_mbind,
                self.addr,
                self.len,
                MPOL_BIND,
                &mask as *const u64,
                maxnode,
                NO_FLAGS,
            )
        };
        if done == 0 {
            Ok(())
        } else {
            Err(RamError::Bind {
                node,
                source: io::Error::last_os_error(),
            })
        }
    }
}

/// A memfd of `len` bytes: hugetlb-backed when the backend wants huge pages.
fn memfd(len: usize, backend: &MemoryBackend) -> Result<OwnedFd, RamError> {
    let huge = match backend.huge_pages {
        None => 0,
        Some(HugePageSize::TwoMiB) => libc::MFD_HUGETLB | libc::MFD_HUGE_2MB,
        Some(HugePageSize::OneGiB) => libc::MFD_HUGETLB | libc::MFD_HUGE_1GB,
    };
    // SAFETY: a NUL-terminated name; the call creates a descriptor we then own.
    let fd = unsafe { libc::memfd_create(MEMFD_NAME.as_ptr(), libc::MFD_CLOEXEC | huge) };
    if fd < 0 {
        return Err(RamError::Memfd(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let size = libc::off_t::try_from(len)
        .map_err(|_| RamError::Truncate(io::Error::from_raw_os_error(libc::EFBIG)))?;
    // SAFETY: sizes the file we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
        return Err(RamError::Truncate(io::Error::last_os_error()));
    }
    Ok(fd)
}

/// Reserves `len` bytes of address space (no memory) at a 2 MiB-aligned address: a larger
/// reservation, trimmed.
fn reserve_aligned(len: usize) -> Result<*mut u8, RamError> {
    let reserved = len
        .checked_add(HUGE_PAGE_SIZE)
        .ok_or_else(|| RamError::Map(io::Error::from_raw_os_error(libc::ENOMEM)))?;
    // SAFETY: a fresh mapping where the kernel chooses; it overlaps nothing of ours.
    let base = unsafe { libc::mmap(null_mut(), reserved, libc::PROT_NONE, ANONYMOUS, -1, 0) };
    if base == libc::MAP_FAILED {
        return Err(RamError::Map(io::Error::last_os_error()));
    }
    let base = base as usize;
    let start = base.next_multiple_of(HUGE_PAGE_SIZE);
    let head = start - base;
    let tail = reserved - head - len;
    // SAFETY: both ranges lie inside the reservation just made, outside [start, start + len),
    // and nothing refers to them. munmap of a page-aligned range inside a mapping cannot fail
    // but for lack of memory to split it, which leaves a little address space reserved.
    unsafe {
        if head > 0 {
            libc::munmap(base as *mut libc::c_void, head);
        }
        if tail > 0 {
            libc::munmap((start + len) as *mut libc::c_void, tail);
        }
    }
    Ok(start as *mut u8)
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
    /// Maps `len` bytes of fresh host memory, as `backend` says, for guest RAM at `base`.
    pub fn new(base: GuestAddress, len: usize, backend: &MemoryBackend) -> Result<Self, RamError> {
        let mapping = AlignedMapping::new(len, backend)?;
        // SAFETY: `mapping` is a live, page-aligned mapping of `len` bytes with these
        // protection and flags, and `RamRegion` keeps it alive as long as the view.
        let view = unsafe { MmapRegionBuilder::new(len).with_raw_mmap_pointer(mapping.addr) }
            .with_mmap_prot(PROT)
            .with_mmap_flags(mapping.flags)
            .build()
            .map_err(|e| RamError::Map(io::Error::other(e)))?;
        let view = GuestRegionMmap::new(view, base).ok_or_else(|| {
            RamError::Map(io::Error::other(format!(
                "{len} bytes at {base:#x?} overflow the address space"
            )))
        })?;
        Ok(Self { view, mapping })
    }

    /// Where the region starts in the VMM's address space.
    pub fn host_address(&self) -> *mut u8 {
        self.mapping.addr
    }

    /// Bytes of the region's host memory that are resident now (`mincore`): what the guest
    /// has touched, and would have to migrate elsewhere before the region can go.
    pub fn resident(&self) -> io::Result<u64> {
        /// Pages asked about per call, so the answer vector stays small for any region.
        const PAGES_PER_CALL: usize = 16 << 10;
        // SAFETY: sysconf has no memory effects.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::last_os_error())?;
        let mut answers = vec![0u8; PAGES_PER_CALL];
        let mut resident = 0u64;
        let mut offset = 0;
        while offset < self.mapping.len {
            let len = (self.mapping.len - offset).min(PAGES_PER_CALL * page);
            // SAFETY: `offset..offset + len` lies inside the live mapping this region owns,
            // whose start is page-aligned; `answers` has room for one byte per page of it.
            let rc = unsafe {
                libc::mincore(
                    self.mapping.addr.add(offset).cast(),
                    len,
                    answers.as_mut_ptr(),
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            let pages = len.div_ceil(page);
            let touched = answers[..pages].iter().filter(|&&a| a & 1 != 0).count();
            resident += u64::try_from(touched * page).unwrap_or(u64::MAX);
            offset += len;
        }
        Ok(resident)
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
    use vm_memory::{Address, Bytes, GuestMemoryBackend};

    use super::*;
    use crate::memory::host::HostMemory;

    const BASE: GuestAddress = GuestAddress(1 << 32);

    /// Maps `len` bytes at 4 GiB as `backend` says, checks the alignment and that the memory
    /// reads back; returns the map (which owns the region) and the host address.
    fn map_and_use(len: usize, backend: &MemoryBackend) -> (GuestMemory, usize) {
        let region = RamRegion::new(BASE, len, backend).unwrap();
        let host = region.host_address() as usize;
        assert_eq!(host % HUGE_PAGE_SIZE, 0);
        assert_eq!(region.len(), len as u64);
        let memory = GuestMemory::from_regions(vec![region]).unwrap();
        let last = BASE.unchecked_add(len as u64 - 8);
        memory.write_obj(0x1234_5678_u64, last).unwrap();
        assert_eq!(memory.read_obj::<u64>(last).unwrap(), 0x1234_5678);
        assert!(memory.write_obj(0_u64, last.unchecked_add(8)).is_err());
        (memory, host)
    }

    /// The lines /proc/self/`file` has for the mapping that starts at `host`: its header and,
    /// in smaps, its fields (up to the next mapping's header: `START-END ...` in maps and
    /// smaps, `START policy ...` in numa_maps).
    fn mapping(file: &str, host: usize) -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/self/{file}")).unwrap();
        let start = |line: &str| {
            let first = line.split([' ', '-']).next().unwrap_or_default();
            let hex = !first.is_empty() && first.chars().all(|c| c.is_ascii_hexdigit());
            hex.then(|| first.to_owned())
        };
        let ours = format!("{host:x}");
        let mut lines = text
            .lines()
            .skip_while(|line| start(line).as_ref() != Some(&ours));
        let first = lines.next()?.to_owned();
        let fields = lines.take_while(|line| start(line).is_none());
        Some(fields.fold(first, |all, line| all + "\n" + line))
    }

    /// A smaps field of the mapping at `host`, in KiB.
    fn smaps_kib(host: usize, field: &str) -> u64 {
        let entry = mapping("smaps", host).unwrap();
        let line = entry.lines().find(|l| l.starts_with(field)).unwrap();
        line[field.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn maps_private_memory_at_huge_page_boundaries_and_reads_back() {
        for len in [HUGE_PAGE_SIZE, 3 * HUGE_PAGE_SIZE + 4096] {
            let (_memory, host) = map_and_use(len, &MemoryBackend::default());
            assert!(!mapping("maps", host).unwrap().contains("memfd"));
        }
    }

    #[test]
    fn resident_counts_the_pages_written() {
        let region = RamRegion::new(BASE, 8 * HUGE_PAGE_SIZE, &MemoryBackend::default()).unwrap();
        assert_eq!(region.resident().unwrap(), 0);
        let memory = GuestMemory::from_regions(vec![region]).unwrap();
        let written = 3 * HUGE_PAGE_SIZE;
        memory
            .write_slice(
                &vec![1u8; written],
                BASE.unchecked_add(HUGE_PAGE_SIZE as u64),
            )
            .unwrap();
        let resident = memory.iter().next().unwrap().resident().unwrap();
        // Transparent huge pages may round what is written up to whole 2 MiB pages.
        assert!(
            (written as u64..=(written + 2 * HUGE_PAGE_SIZE) as u64).contains(&resident),
            "{resident} bytes resident after writing {written}"
        );
    }

    #[test]
    fn shared_memory_is_a_memfd_that_goes_when_the_region_does() {
        let shared = MemoryBackend {
            shared: true,
            ..Default::default()
        };
        let len = 4 * HUGE_PAGE_SIZE;
        let (memory, host) = map_and_use(len, &shared);
        let entry = mapping("maps", host).unwrap();
        let range = format!("{host:x}-{:x} rw-s ", host + len);
        assert!(
            entry.starts_with(&range) && entry.contains("/memfd:tidal-ram"),
            "{entry}"
        );
        drop(memory);
        // Gone: whatever the address holds now (another test's mapping, say) is not it.
        assert!(mapping("maps", host).is_none_or(|entry| !entry.starts_with(&range)));
    }

    #[test]
    fn prefault_allocates_every_page_before_the_guest_touches_one() {
        let len = 4 * HUGE_PAGE_SIZE;
        for shared in [false, true] {
            let backend = MemoryBackend {
                shared,
                prefault: true,
                ..Default::default()
            };
            let region = RamRegion::new(BASE, len, &backend).unwrap();
            let host = region.host_address() as usize;
            assert_eq!(smaps_kib(host, "Rss:"), len as u64 >> 10, "shared={shared}");
        }
        let region = RamRegion::new(BASE, len, &MemoryBackend::default()).unwrap();
        assert_eq!(smaps_kib(region.host_address() as usize, "Rss:"), 0);
    }

    #[test]
    fn a_host_node_binds_the_memory_to_it() {
        let bound = MemoryBackend {
            host_node: Some(0),
            ..Default::default()
        };
        let (_memory, host) = map_and_use(HUGE_PAGE_SIZE, &bound);
        let policy = mapping("numa_maps", host).unwrap();
        assert!(policy.starts_with(&format!("{host:x} bind:0 ")), "{policy}");
    }

    #[test]
    fn too_few_free_huge_pages_is_a_host_shortage_that_says_so() {
        // One more page than the pool can give (free, unreserved, and surplus still allowed).
        let available = HostMemory::open()
            .free_huge_pages(HugePageSize::TwoMiB)
            .unwrap();
        let pages = usize::try_from(available).unwrap() + 1;
        let huge = MemoryBackend {
            huge_pages: Some(HugePageSize::TwoMiB),
            ..Default::default()
        };
        let error = RamRegion::new(BASE, pages * HUGE_PAGE_SIZE, &huge).unwrap_err();
        assert!(error.is_host_shortage());
        assert!(
            error.to_string().starts_with(&format!(
                "the host's pool of 2 MiB huge pages has fewer than {pages} free"
            )),
            "{error}"
        );
    }
}
