//! The hotplug region's allocator (`DimmSpace`) against a model: a sorted list of the DIMMs'
//! ranges. Any sequence of allocations and frees: each allocation lands at the lowest
//! block-aligned gap that fits (and fails only when none does), never overlaps another DIMM or
//! leaves the region, and once everything is freed the whole region is one piece again.

use proptest::prelude::*;
use tidal_vmm::layout::MEMORY_BLOCK_SIZE;
use tidal_vmm::memory::dimm_space::DimmSpace;

const BLOCK: u64 = MEMORY_BLOCK_SIZE;
/// Where the region starts: above 4 GiB, like a real hotplug region.
const BASE: u64 = 5 << 30;

#[derive(Debug, Clone)]
enum Op {
    /// Allocate this many blocks.
    Allocate(u64),
    /// Free the DIMM at this index (modulo how many there are).
    Free(usize),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        3 => (1u64..12).prop_map(Op::Allocate),
        2 => any::<usize>().prop_map(Op::Free),
    ];
    prop::collection::vec(op, 0..80)
}

/// The lowest address in `[BASE, BASE + region)` where `size` bytes fit between `used`
/// (sorted by base).
fn first_fit(used: &[(u64, u64)], region: u64, size: u64) -> Option<u64> {
    let mut at = BASE;
    for &(base, len) in used {
        if base - at >= size {
            return Some(at);
        }
        at = base + len;
    }
    (BASE + region - at >= size).then_some(at)
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn dimm_space_matches_its_model(blocks in 1u64..40, ops in ops()) {
        let region = blocks * BLOCK;
        let mut space = DimmSpace::new(BASE, region).expect("a region");
        let mut used: Vec<(u64, u64)> = Vec::new();
        for op in ops {
            match op {
                Op::Allocate(n) => {
                    let size = n * BLOCK;
                    let got = space.allocate(size);
                    prop_assert_eq!(got, first_fit(&used, region, size), "allocating {} blocks", n);
                    if let Some(base) = got {
                        prop_assert_eq!(base % BLOCK, 0);
                        used.push((base, size));
                        used.sort_unstable();
                    }
                }
                Op::Free(i) if !used.is_empty() => {
                    let (base, size) = used.remove(i % used.len());
                    prop_assert!(space.free(base, size).is_ok(), "freeing {:#x}", base);
                }
                Op::Free(_) => {}
            }
        }
        for (base, size) in used.drain(..) {
            prop_assert!(space.free(base, size).is_ok(), "freeing {:#x}", base);
        }
        prop_assert_eq!(space.allocate(region), Some(BASE), "the whole region, once all is free");
    }
}
