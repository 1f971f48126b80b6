//! The hotplug region and where DIMMs go in it: block-aligned ranges handed out lowest first and taken
//! back when a DIMM is ejected. Kept apart from KVM and the memory map so that it can be checked
//! against a model (vmm/tests/dimm_space.rs).

use vm_allocator::{AddressAllocator, AllocPolicy, RangeInclusive};

use crate::layout::MEMORY_BLOCK_SIZE;

/// A part of guest physical space DIMMs are carved from: the hotplug region, or one NUMA node's
/// share of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotplugRegion {
    pub base: u64,
    pub size: u64,
}

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

    /// The sizes of the DIMMs that `size` bytes would need, each in the largest free piece
    /// left (largest first, whole blocks); they add up to less when the free space does.
    /// Nothing stays reserved.
    pub fn pieces(&mut self, size: u64) -> Vec<u64> {
        let mut taken = Vec::new();
        let mut left = size / MEMORY_BLOCK_SIZE;
        while left > 0 {
            // The largest number of blocks up to `left` that fits: fitting is monotone.
            let (mut fits, mut fails) = (0, left + 1);
            while fails - fits > 1 {
                let mid = fits + (fails - fits) / 2;
                match self.allocate(mid * MEMORY_BLOCK_SIZE) {
                    Some(base) => {
                        let _ = self.free(base, mid * MEMORY_BLOCK_SIZE);
                        fits = mid;
                    }
                    None => fails = mid,
                }
            }
            let Some(base) = (fits > 0)
                .then(|| self.allocate(fits * MEMORY_BLOCK_SIZE))
                .flatten()
            else {
                break;
            };
            taken.push((base, fits * MEMORY_BLOCK_SIZE));
            left -= fits;
        }
        for &(base, len) in &taken {
            let _ = self.free(base, len);
        }
        taken.into_iter().map(|(_, len)| len).collect()
    }

    /// Gives back what [`DimmSpace::allocate`] reserved at `base`.
    pub fn free(&mut self, base: u64, size: u64) -> Result<(), vm_allocator::Error> {
        let range = RangeInclusive::new(base, base + size - 1)?;
        self.allocator.free(&range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: u64 = MEMORY_BLOCK_SIZE;

    #[test]
    fn pieces_fill_the_largest_gaps_first_and_reserve_nothing() {
        let mut space = DimmSpace::new(0, 48 * BLOCK).unwrap();
        assert_eq!(space.pieces(10 * BLOCK), [10 * BLOCK]);
        // Free: 12 blocks, a used one, 35 blocks.
        let low = space.allocate(12 * BLOCK).unwrap();
        space.allocate(BLOCK).unwrap();
        space.free(low, 12 * BLOCK).unwrap();
        assert_eq!(space.pieces(40 * BLOCK), [35 * BLOCK, 5 * BLOCK]);
        assert_eq!(space.pieces(50 * BLOCK), [35 * BLOCK, 12 * BLOCK]);
        assert_eq!(space.allocate(35 * BLOCK), Some(13 * BLOCK));
        assert_eq!(space.pieces(12 * BLOCK), [12 * BLOCK]);
        assert!(space.pieces(0).is_empty());
    }
}
