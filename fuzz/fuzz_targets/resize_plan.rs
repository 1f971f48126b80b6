//! The shrink planner (`tidal_vmm::resize_plan::plan_shrink`) on any set of DIMMs and any
//! amount, as a guest's memory and a client's resizes could make them: it never panics; it
//! refuses only when the DIMMs together hold less than the amount; an exact plan adds up to the
//! amount; a plan with a replacement overshoots by what it plugs back, and only when no set adds
//! up exactly; and the plan costs no more (resident bytes, then DIMMs) than the best set an
//! exhaustive search finds among those that remove as little as it does.

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use tidal_vmm::layout::MEMORY_BLOCK_SIZE;
use tidal_vmm::resize_plan::{plan_shrink, Removable, Shrink};

/// Few enough DIMMs for the exhaustive search (2^12 sets).
const MAX_DIMMS: usize = 12;

fuzz_target!(|data: &[u8]| {
    let _ = check(&mut Unstructured::new(data));
});

fn check(input: &mut Unstructured) -> Result<()> {
    let count = input.int_in_range(0..=MAX_DIMMS)?;
    let mut dimms = Vec::with_capacity(count);
    for slot in 0..count {
        let blocks = input.int_in_range(1..=16u64)?;
        let size = blocks * MEMORY_BLOCK_SIZE;
        dimms.push(Removable {
            slot: u32::try_from(slot).unwrap_or(u32::MAX),
            size,
            resident: input.int_in_range(0..=size)?,
        });
    }
    let amount = input.int_in_range(0..=200u64)? * MEMORY_BLOCK_SIZE;
    let total: u64 = dimms.iter().map(|d| d.size).sum();
    let Some(plan) = plan_shrink(&dimms, amount, MEMORY_BLOCK_SIZE) else {
        assert!(total < amount, "refused {amount} with {total} removable");
        return Ok(());
    };
    let (slots, plug) = match &plan {
        Shrink::Exact(slots) => (slots, 0),
        Shrink::Replace { remove, plug } => (remove, *plug),
    };
    let picked: Vec<&Removable> = slots
        .iter()
        .map(|slot| {
            dimms
                .iter()
                .find(|d| d.slot == *slot)
                .unwrap_or_else(|| panic!("plan names slot {slot}, which is not removable"))
        })
        .collect();
    let mut unique = slots.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), slots.len(), "a slot twice in {plan:?}");
    let removed: u64 = picked.iter().map(|d| d.size).sum();
    assert_eq!(removed, amount + plug, "{plan:?} for {amount}");
    assert_eq!(plug % MEMORY_BLOCK_SIZE, 0);

    let best = best_set(&dimms, amount);
    assert_eq!(removed, best.0, "{plan:?}: a set overshooting less exists");
    let cost = (picked.iter().map(|d| d.resident).sum::<u64>(), picked.len());
    assert!(cost <= best.1, "{plan:?} costs {cost:?}, a set costs {:?}", best.1);
    assert_eq!(matches!(plan, Shrink::Exact(_)), removed == amount);
    Ok(())
}

/// The least that any set removes at or above `amount`, and the cheapest set's cost
/// (resident bytes, DIMMs) among those removing exactly that.
fn best_set(dimms: &[Removable], amount: u64) -> (u64, (u64, usize)) {
    let mut best: Option<(u64, (u64, usize))> = None;
    for mask in 0u32..(1 << dimms.len()) {
        let set: Vec<&Removable> = dimms
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, d)| d)
            .collect();
        let removed: u64 = set.iter().map(|d| d.size).sum();
        if removed < amount {
            continue;
        }
        let cost = (set.iter().map(|d| d.resident).sum(), set.len());
        if best.is_none_or(|b| (removed, cost) < b) {
            best = Some((removed, cost));
        }
    }
    best.unwrap_or((0, (0, 0)))
}
