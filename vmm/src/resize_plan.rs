//! Which DIMMs a shrink removes. Pure arithmetic on sizes, apart from the VM, so that it can be
//! checked against long sequences of resizes (the tests below and vmm/tests/resize_plan.rs).
//!
//! A grow plugs one DIMM for the whole difference (one per free piece of the hotplug region when
//! no piece holds it all: the VM's `grow`). A shrink removes a set of DIMMs that adds
//! up to exactly the amount when one exists; otherwise it removes the set that overshoots the
//! least and plugs the excess back as one new DIMM. So every total of boot RAM plus whole
//! memory blocks is reachable, and a resize adds one DIMM (more only for a grow into a region
//! in pieces): the slots needed are about one per grow since the VM was last at its boot RAM.

/// A DIMM a shrink may take: one the guest holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removable {
    pub slot: u32,
    pub size: u64,
    /// Bytes of its host memory that are resident: what the guest may have to migrate.
    pub resident: u64,
}

/// What a shrink removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shrink {
    /// These slots' DIMMs add up to the amount.
    Exact(Vec<u32>),
    /// No set adds up to the amount: these add up to `plug` bytes more, which go back in as a
    /// new DIMM.
    Replace { remove: Vec<u32>, plug: u64 },
}

/// What a set of DIMMs costs to remove, compared in this order: resident bytes (what the guest
/// migrates), then how many DIMMs, then how old they are (the sum of their places in the
/// newest-first list: newer ones go first).
type Cost = (u64, u32, u64);

/// The DIMMs to remove so that `amount` bytes go (see the module's doc), cheapest first among
/// sets that remove as much. `removable` is newest first; every size and `amount` are multiples
/// of `unit`. `None` when all of them together hold less than `amount`.
pub fn plan_shrink(removable: &[Removable], amount: u64, unit: u64) -> Option<Shrink> {
    let units = |bytes: u64| usize::try_from(bytes / unit).ok();
    let goal = units(amount)?;
    let total = removable
        .iter()
        .try_fold(0usize, |sum, dimm| sum.checked_add(units(dimm.size)?))?;
    if total < goal {
        return None;
    }
    // best[sum]: the cheapest set found so far adding up to `sum` units; took[i][sum]: whether
    // DIMM i is in it once DIMMs 0..=i were looked at (0/1 knapsack, one row per DIMM).
    let mut best: Vec<Option<Cost>> = vec![None; total + 1];
    best[0] = Some((0, 0, 0));
    let mut took = vec![vec![false; total + 1]; removable.len()];
    for (i, dimm) in removable.iter().enumerate() {
        let step = units(dimm.size)?;
        let age = u64::try_from(i).ok()?;
        for sum in (step..=total).rev() {
            let Some((resident, count, ages)) = best[sum - step] else {
                continue;
            };
            let with = (resident + dimm.resident, count + 1, ages + age);
            if best[sum].is_none_or(|without| with < without) {
                best[sum] = Some(with);
                took[i][sum] = true;
            }
        }
    }
    let reached = (goal..=total).find(|&sum| best[sum].is_some())?;
    let mut picked = Vec::new();
    let mut sum = reached;
    for i in (0..removable.len()).rev() {
        if took[i][sum] {
            picked.push(removable[i].slot);
            sum -= units(removable[i].size)?;
        }
    }
    picked.reverse();
    let excess = u64::try_from(reached - goal).ok()? * unit;
    Some(if excess == 0 {
        Shrink::Exact(picked)
    } else {
        Shrink::Replace {
            remove: picked,
            plug: excess,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;
    const B: u64 = 128 << 20;

    fn dimms(sizes: &[(u64, u64)]) -> Vec<Removable> {
        (0u32..)
            .zip(sizes)
            .map(|(slot, &(size, resident))| Removable {
                slot,
                size,
                resident,
            })
            .collect()
    }

    #[test]
    fn an_exact_set_is_taken_newest_first_when_all_are_empty() {
        let empty = dimms(&[(G, 0), (2 * G, 0), (G, 0)]);
        assert_eq!(plan_shrink(&empty, G, B), Some(Shrink::Exact(vec![0])));
        assert_eq!(
            plan_shrink(&empty, 3 * G, B),
            Some(Shrink::Exact(vec![0, 1]))
        );
        assert_eq!(
            plan_shrink(&empty, 4 * G, B),
            Some(Shrink::Exact(vec![0, 1, 2]))
        );
    }

    #[test]
    fn the_least_resident_set_goes_first() {
        // The newest 1 GiB DIMM is full, the older one empty: the older one goes.
        let used = dimms(&[(G, G), (2 * G, G / 2), (G, 0)]);
        assert_eq!(plan_shrink(&used, G, B), Some(Shrink::Exact(vec![2])));
        // 2 GiB: the 2 GiB DIMM (half resident) beats both 1 GiB ones (one full).
        assert_eq!(plan_shrink(&used, 2 * G, B), Some(Shrink::Exact(vec![1])));
    }

    #[test]
    fn an_exact_set_beats_a_cheaper_overshoot() {
        let used = dimms(&[(3 * G, 0), (2 * G, G), (2 * G, G)]);
        assert_eq!(
            plan_shrink(&used, 4 * G, B),
            Some(Shrink::Exact(vec![1, 2]))
        );
    }

    #[test]
    fn without_an_exact_set_the_least_overshoot_is_plugged_back() {
        let one = dimms(&[(4 * G, 0)]);
        assert_eq!(
            plan_shrink(&one, 2 * G, B),
            Some(Shrink::Replace {
                remove: vec![0],
                plug: 2 * G
            })
        );
        let two = dimms(&[(4 * G, 0), (G, 0)]);
        assert_eq!(
            plan_shrink(&two, 3 * G + B, B),
            Some(Shrink::Replace {
                remove: vec![0],
                plug: G - B
            })
        );
    }

    #[test]
    fn more_than_the_dimms_hold_has_no_plan() {
        assert_eq!(plan_shrink(&dimms(&[(G, 0)]), 2 * G, B), None);
        assert_eq!(plan_shrink(&[], B, B), None);
        assert_eq!(plan_shrink(&[], 0, B), Some(Shrink::Exact(vec![])));
    }
}
