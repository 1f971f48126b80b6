//! The shrink planner (`plan_shrink`) against random sequences of resizes of a model VM: every
//! total of boot RAM plus whole blocks within the region is reached exactly, a grow refused only
//! when every slot is in use, never more DIMMs than slots; and every plan is as cheap as the
//! best set an exhaustive search finds.

use proptest::prelude::*;
use tidal_vmm::layout::MEMORY_BLOCK_SIZE;
use tidal_vmm::resize_plan::{plan_shrink, Removable, Shrink};

const BLOCK: u64 = MEMORY_BLOCK_SIZE;
/// The model VM's hotplug region, in blocks.
const REGION: u64 = 48;

/// A model VM's DIMMs, oldest first.
#[derive(Debug, Default)]
struct Model {
    dimms: Vec<Removable>,
    next_slot: u32,
}

impl Model {
    fn total(&self) -> u64 {
        self.dimms.iter().map(|d| d.size).sum()
    }

    fn plug(&mut self, size: u64, resident: u64) {
        self.dimms.push(Removable {
            slot: self.next_slot,
            size,
            resident: resident.min(size),
        });
        self.next_slot += 1;
    }

    fn newest_first(&self) -> Vec<Removable> {
        self.dimms.iter().rev().copied().collect()
    }

    /// Removes `slots`, which must all be plugged; their total.
    fn remove(&mut self, slots: &[u32]) -> u64 {
        let mut removed = 0;
        for slot in slots {
            let at = self.dimms.iter().position(|d| d.slot == *slot);
            let at = at.unwrap_or_else(|| panic!("slot {slot} is not plugged"));
            removed += self.dimms.remove(at).size;
        }
        removed
    }
}

/// The cheapest cost (resident bytes, DIMM count) of a set of `dimms` adding up to `amount`,
/// by trying every set.
fn cheapest_exact(dimms: &[Removable], amount: u64) -> Option<(u64, u32)> {
    (0u32..1 << dimms.len())
        .filter_map(|set| {
            let chosen = dimms
                .iter()
                .enumerate()
                .filter(|(i, _)| set & (1 << i) != 0);
            let (size, resident) = chosen
                .map(|(_, d)| (d.size, d.resident))
                .fold((0, 0), |(s, r), (size, res)| (s + size, r + res));
            (size == amount).then_some((resident, set.count_ones()))
        })
        .min()
}

fn cost(dimms: &[Removable], slots: &[u32]) -> (u64, u32) {
    let resident = slots
        .iter()
        .map(|s| {
            dimms
                .iter()
                .find(|d| d.slot == *s)
                .map_or(0, |d| d.resident)
        })
        .sum();
    (resident, u32::try_from(slots.len()).unwrap_or(u32::MAX))
}

proptest! {
    #[test]
    fn every_aligned_total_is_reached_exactly_and_cheapest(
        steps in prop::collection::vec((0..=REGION, 0u64..=64), 1..40),
        slots in 2usize..10,
    ) {
        let mut vm = Model::default();
        for (target_blocks, resident_percent) in steps {
            let target = target_blocks * BLOCK;
            let current = vm.total();
            if target > current {
                if vm.dimms.len() == slots {
                    continue; // refused: every slot in use
                }
                let size = target - current;
                vm.plug(size, size / 64 * resident_percent);
            } else if target < current {
                let dimms = vm.newest_first();
                let plan = plan_shrink(&dimms, current - target, BLOCK);
                match plan {
                    Some(Shrink::Exact(remove)) => {
                        if dimms.len() <= 12 {
                            prop_assert_eq!(
                                Some(cost(&dimms, &remove)),
                                cheapest_exact(&dimms, current - target)
                            );
                        }
                        prop_assert_eq!(vm.remove(&remove), current - target);
                    }
                    Some(Shrink::Replace { remove, plug }) => {
                        if dimms.len() <= 12 {
                            prop_assert_eq!(cheapest_exact(&dimms, current - target), None);
                        }
                        prop_assert!(plug > 0 && plug % BLOCK == 0);
                        prop_assert_eq!(vm.remove(&remove), current - target + plug);
                        vm.plug(plug, 0);
                    }
                    None => prop_assert!(false, "no plan from {} to {}", current, target),
                }
            }
            prop_assert_eq!(vm.total(), target);
            prop_assert!(vm.dimms.len() <= slots);
        }
    }
}
