//! Guest RAM: where boot memory goes around the 32-bit device hole, the e820 map the kernel is
//! given, and the host mappings behind it, registered with KVM. The map lives in a
//! `GuestMemoryAtomic` so that regions can be added and removed while vCPUs run.

use std::sync::Arc;

use kvm_ioctls::VmFd;
use thiserror::Error;
use tidal_api::size::format_size;
use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestRegionCollectionError};

use super::backend::MemoryBackend;
use super::kvm_slot::{KvmSlot, KvmSlotError};
use super::ram::{GuestMemory, RamError, RamRegion};
use crate::layout::{EBDA_START, HIMEM_START, HOTPLUG_ALIGNMENT, MMIO_HOLE_END, MMIO_HOLE_START};

#[derive(Debug, Error)]
pub enum MemoryError {
    #[error("cannot allocate {} of guest memory at {base:#x}: {source}", format_size(*.size))]
    Allocate {
        base: u64,
        size: u64,
        source: RamError,
    },
    #[error("{} of guest memory at {base:#x} does not fit this host's address space", format_size(*.size))]
    TooLarge { base: u64, size: u64 },
    #[error("cannot build the guest memory map: {0}")]
    Map(#[from] GuestRegionCollectionError),
    #[error(transparent)]
    KvmSlot(#[from] KvmSlotError),
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
    /// The map's regions, in its order, for their KVM slots.
    regions: Vec<Arc<RamRegion>>,
    kvm_slots: Vec<KvmSlot>,
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
            let len = usize::try_from(size).map_err(|_| MemoryError::TooLarge { base, size })?;
            let region = RamRegion::new(GuestAddress(base), len, &backend)
                .map_err(|source| MemoryError::Allocate { base, size, source })?;
            regions.push(Arc::new(region));
        }
        let map = GuestMemory::from_arc_regions(regions.clone())?;
        Ok(Self {
            memory: GuestMemoryAtomic::new(map),
            regions,
            kvm_slots: Vec::new(),
        })
    }

    /// A handle that always sees the current map.
    pub fn atomic(&self) -> GuestMemoryAtomic<GuestMemory> {
        self.memory.clone()
    }

    /// Registers every region of the map with KVM, one slot each from slot 0, for as long as
    /// this lives; returns how many slots it used.
    pub fn register_with_kvm(&mut self, vm: &Arc<VmFd>) -> Result<u32, MemoryError> {
        for (slot, region) in (0u32..).zip(&self.regions) {
            let kvm_slot = KvmSlot::new(vm.clone(), slot, region.clone())?;
            self.kvm_slots.push(kvm_slot);
        }
        Ok(u32::try_from(self.kvm_slots.len()).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{GuestAddressSpace, GuestMemoryBackend};

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
