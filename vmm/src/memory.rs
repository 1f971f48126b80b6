//! Guest RAM: where boot memory goes around the 32-bit device hole, the e820 map the kernel is
//! given, and the host mappings behind it, registered with KVM. The map lives in a
//! `GuestMemoryAtomic` so that regions can be added and removed while vCPUs run.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use thiserror::Error;
use tidal_api::size::format_size;
use vm_memory::{
    GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryRegion,
};

use crate::backend::MemoryBackend;
use crate::layout::{EBDA_START, HIMEM_START, HOTPLUG_ALIGNMENT, MMIO_HOLE_END, MMIO_HOLE_START};
use crate::ram::{GuestMemory, RamRegion};

#[derive(Debug, Error)]
pub enum MemoryError {
    #[error("cannot allocate {} of guest memory at {base:#x}: {reason}", format_size(*.size))]
    Allocate {
        base: u64,
        size: u64,
        reason: String,
    },
    #[error("cannot register guest memory at {base:#x} with KVM: {source}")]
    KvmSlot {
        base: u64,
        source: kvm_ioctls::Error,
    },
}

/// e820 entry types the kernel understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Kind {
    Ram = 1,
    Reserved = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Kind,
}

/// Where boot RAM lives in guest physical space: below the hole, and the rest above 4 GiB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestMemoryLayout {
    ranges: Vec<(u64, u64)>,
}

impl GuestMemoryLayout {
    pub fn new(boot_ram: u64) -> Self {
        let low = boot_ram.min(MMIO_HOLE_START);
        let mut ranges = vec![(0, low)];
        if boot_ram > low {
            ranges.push((MMIO_HOLE_END, boot_ram - low));
        }
        Self { ranges }
    }

    /// (base, size) of each boot RAM range, in address order.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// End of the RAM below 4 GiB: the initramfs goes just under it.
    pub fn low_ram_end(&self) -> u64 {
        self.ranges[0].0 + self.ranges[0].1
    }

    /// First address past all boot RAM: the hotplug region starts above this.
    pub fn end(&self) -> u64 {
        self.ranges.last().map_or(0, |(base, size)| base + size)
    }

    /// Where the hotplug region starts: the next GiB boundary above boot RAM, never below 4 GiB.
    pub fn hotplug_region_base(&self) -> u64 {
        self.end()
            .div_ceil(HOTPLUG_ALIGNMENT)
            .saturating_mul(HOTPLUG_ALIGNMENT)
            .max(MMIO_HOLE_END)
    }

    /// The map the guest kernel sees. Low memory from the EBDA to 1 MiB (where our ACPI tables
    /// sit) is reserved, the rest RAM.
    pub fn e820(&self) -> Vec<E820Entry> {
        let entry = |addr, end: u64, kind| E820Entry {
            addr,
            size: end - addr,
            kind,
        };
        let mut map = vec![
            entry(0, EBDA_START, E820Kind::Ram),
            entry(EBDA_START, HIMEM_START, E820Kind::Reserved),
            entry(HIMEM_START, self.low_ram_end(), E820Kind::Ram),
        ];
        map.extend(
            self.ranges[1..]
                .iter()
                .map(|&(base, size)| entry(base, base + size, E820Kind::Ram)),
        );
        map
    }
}

/// A range of boot RAM and the host memory to map behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    pub base: u64,
    pub size: u64,
    pub backend: MemoryBackend,
}

/// The guest's boot memory map.
pub struct GuestRam {
    memory: GuestMemoryAtomic<GuestMemory>,
}

impl GuestRam {
    /// Maps host memory for each of `ranges`: boot RAM that stays.
    pub fn new(ranges: &[RamRange]) -> Result<Self, MemoryError> {
        let mut regions = Vec::new();
        for &RamRange {
            base,
            size,
            backend,
        } in ranges
        {
            let region = usize::try_from(size)
                .map_err(|e| e.to_string())
                .and_then(|len| {
                    RamRegion::new(GuestAddress(base), len, &backend).map_err(|e| e.to_string())
                })
                .map_err(|reason| MemoryError::Allocate { base, size, reason })?;
            regions.push(region);
        }
        let map = GuestMemory::from_regions(regions).map_err(|e| MemoryError::Allocate {
            base: 0,
            size: ranges.iter().map(|range| range.size).sum(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            memory: GuestMemoryAtomic::new(map),
        })
    }

    /// A handle that always sees the current map.
    pub fn atomic(&self) -> GuestMemoryAtomic<GuestMemory> {
        self.memory.clone()
    }

    /// Registers every region of the map with KVM, one slot each; returns how many it used.
    pub fn register_with_kvm(&self, vm: &VmFd) -> Result<u32, MemoryError> {
        let map = self.memory.memory();
        let mut slot = 0;
        for region in map.iter() {
            set_kvm_slot(vm, slot, region)?;
            slot += 1;
        }
        Ok(slot)
    }
}

/// Maps `region` into the guest through KVM memory slot `slot`.
pub fn set_kvm_slot(vm: &VmFd, slot: u32, region: &RamRegion) -> Result<(), MemoryError> {
    let base = region.start_addr().0;
    let host = region.host_address();
    let entry = kvm_userspace_memory_region {
        slot,
        flags: 0,
        guest_phys_addr: base,
        memory_size: region.len(),
        userspace_addr: host as u64,
    };
    // SAFETY: the host range [host, host + len) is a live mapping owned by `region`, which the
    // guest memory map keeps alive until the slot is deleted (`delete_kvm_slot`).
    unsafe { vm.set_user_memory_region(entry) }
        .map_err(|source| MemoryError::KvmSlot { base, source })
}

/// Takes KVM memory slot `slot` away from the guest. After this returns no vCPU can reach the
/// memory it mapped, so the host may unmap it.
pub fn delete_kvm_slot(vm: &VmFd, slot: u32, base: u64) -> Result<(), MemoryError> {
    let entry = kvm_userspace_memory_region {
        slot,
        flags: 0,
        guest_phys_addr: base,
        memory_size: 0,
        userspace_addr: 0,
    };
    // SAFETY: a zero-sized region deletes the slot; KVM touches no host memory for it.
    unsafe { vm.set_user_memory_region(entry) }
        .map_err(|source| MemoryError::KvmSlot { base, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_range() {
        let layout = GuestMemoryLayout::new(512 << 20);
        assert_eq!(layout.ranges(), &[(0, 512 << 20)]);
        assert_eq!(layout.end(), 512 << 20);
        let e820 = layout.e820();
        assert_eq!(e820.len(), 3);
        assert_eq!(e820[2].addr, HIMEM_START);
        assert_eq!(e820[2].size, (512 << 20) - HIMEM_START);
    }

    #[test]
    fn large_guest_skips_the_hole() {
        let layout = GuestMemoryLayout::new(5 << 30);
        assert_eq!(
            layout.ranges(),
            &[
                (0, MMIO_HOLE_START),
                (MMIO_HOLE_END, (5 << 30) - MMIO_HOLE_START)
            ]
        );
        assert_eq!(layout.end(), MMIO_HOLE_END + (2 << 30));
        let ram: u64 = layout
            .e820()
            .iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (5 << 30) - (HIMEM_START - EBDA_START));
        assert!(layout
            .e820()
            .iter()
            .all(|e| e.addr + e.size <= MMIO_HOLE_START || e.addr >= MMIO_HOLE_END));
    }

    #[test]
    fn hotplug_region_is_above_the_hole_and_aligned() {
        let base = |size| GuestMemoryLayout::new(size).hotplug_region_base();
        assert_eq!(base(512 << 20), 4 << 30);
        assert_eq!(base(3 << 30), 4 << 30);
        assert_eq!(base(5 << 30), 6 << 30);
        assert_eq!(base((5 << 30) + 4096), 7 << 30);
    }

    #[test]
    fn exactly_three_gib_has_no_high_range() {
        let layout = GuestMemoryLayout::new(MMIO_HOLE_START);
        assert_eq!(layout.ranges().len(), 1);
    }

    #[test]
    fn maps_ranges() {
        let ranges: Vec<RamRange> = GuestMemoryLayout::new(64 << 20)
            .ranges()
            .iter()
            .map(|&(base, size)| RamRange {
                base,
                size,
                backend: MemoryBackend::default(),
            })
            .collect();
        let ram = GuestRam::new(&ranges).unwrap();
        assert_eq!(ram.atomic().memory().num_regions(), 1);
    }
}
