//! Where DIMMs go in the hotplug region: block-aligned ranges handed out lowest first and taken
//! back when a DIMM is ejected. Kept apart from KVM and the memory map so that it can be checked
//! against a model (vmm/tests/dimm_space.rs).

use vm_allocator::{AddressAllocator, AllocPolicy, RangeInclusive};

use crate::layout::MEMORY_BLOCK_SIZE;

/// The hotplug region's free and used address space.
#[derive(Debug)]
pub struct DimmSpace {
    allocator: AddressAllocator,
    base: u64,
    size: u64,
}

impl DimmSpace {
    /// The region `[base, base + size)`.
    pub fn new(base: u64, size: u64) -> Result<Self, vm_allocator::Error> {
        Ok(Self {
            allocator: AddressAllocator::new(base, size)?,
            base,
            size,
        })
    }

    /// Whether `address` is in the region.
    pub fn holds(&self, address: u64) -> bool {
        (self.base..self.base + self.size).contains(&address)
    }

    /// Reserves `size` bytes, block aligned, at the lowest address where they fit.
    pub fn allocate(&mut self, size: u64) -> Option<u64> {
        self.allocator
            .allocate(size, MEMORY_BLOCK_SIZE, AllocPolicy::FirstMatch)
            .ok()
            .map(|range| range.start())
    }

    /// Gives back what [`DimmSpace::allocate`] reserved at `base`.
    pub fn free(&mut self, base: u64, size: u64) -> Result<(), vm_allocator::Error> {
        let range = RangeInclusive::new(base, base + size - 1)?;
        self.allocator.free(&range)
    }
}
