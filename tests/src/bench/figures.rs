//! What the benchmark measures, named once: the table, the JSON file, the plot and the check that
//! a run is complete all list figures from [`Plan::figures`], so none can be measured but not
//! reported, or expected but never measured.

use std::collections::BTreeMap;

use serde::Serialize;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// One run's values, by figure.
pub type Figures = BTreeMap<Figure, f64>;

/// What a hot-remove is timed until.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Until {
    /// The VMM says the DIMM is gone (Tidal: `vm.memory.remove` returned; QEMU: the
    /// `DEVICE_DELETED` event).
    Gone,
    /// The guest's `MemTotal` has dropped by the DIMM.
    MemTotal,
}

/// What the DIMM held when it was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Contents {
    /// Nothing: removed right after it came online.
    Empty,
    /// The guest had written half the DIMM's size to its tmpfs, which lands in the DIMM first
    /// (ZONE_MOVABLE comes first for movable allocations) and has to be migrated out.
    Filled,
}

/// When the VMM's resident memory is read, around the filled removal of a DIMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RssPoint {
    /// Before the DIMM that gets filled is added.
    BeforeAdd,
    /// After the guest filled it.
    AfterFill,
    /// After it was removed.
    AfterRemove,
    /// Resident in the DIMM's own addresses just before the removal: the guest's data and
    /// whatever else it had touched there.
    DimmResident,
    /// The share of [`RssPoint::DimmResident`] the host got back by the removal: no longer
    /// resident in those addresses after it. The VMM's whole RSS says little here, because the
    /// guest moves the data into its boot RAM, where it becomes resident instead.
    DimmReturned,
}

impl RssPoint {
    const ALL: [RssPoint; 5] = [
        RssPoint::BeforeAdd,
        RssPoint::AfterFill,
        RssPoint::AfterRemove,
        RssPoint::DimmResident,
        RssPoint::DimmReturned,
    ];
}

/// How a figure is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Ms,
    Mib,
    Percent,
}

impl Unit {
    /// The suffix of JSON keys and the unit shown in the table.
    pub fn symbol(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::Mib => "MiB",
            Unit::Percent => "%",
        }
    }
}

/// One measured value of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Figure {
    /// VMM process started → the guest's first userspace line.
    Boot,
    /// The VMM's resident memory outside guest RAM, right after boot: its own overhead.
    VmmOverhead,
    /// Hot-add of a DIMM of this many bytes: request → the guest's `MemTotal` shows it.
    HotAdd(u64),
    /// The VMM's own share of a hot-add: request → the guest's hotplug interrupt raised
    /// (Tidal: the DIMM's `inserting` event; QEMU: `device_add` answered, which it does after
    /// raising the ACPI event).
    HotAddVmmShare(u64),
    /// Hot-remove of a DIMM: request → `until`.
    HotRemove {
        size: u64,
        contents: Contents,
        until: Until,
    },
    /// The VMM's whole resident memory around the filled removal of a DIMM of `size` bytes.
    Rss { size: u64, point: RssPoint },
    /// A shrink by `size` bytes with two DIMMs of that size plugged, the older empty and the
    /// newer filled: request → the DIMM is gone. Tidal chooses by itself (`vm.resize`, which
    /// takes the least resident); QEMU has no resize and is told the empty one. Newest-first
    /// would remove the filled one: the filled hot-remove beside it.
    ShrinkCheapest(u64),
}

impl Figure {
    pub fn unit(self) -> Unit {
        match self {
            Figure::Boot
            | Figure::HotAdd(_)
            | Figure::HotAddVmmShare(_)
            | Figure::HotRemove { .. }
            | Figure::ShrinkCheapest(_) => Unit::Ms,
            Figure::Rss {
                point: RssPoint::DimmReturned,
                ..
            } => Unit::Percent,
            Figure::VmmOverhead | Figure::Rss { .. } => Unit::Mib,
        }
    }

    /// A stable name for the JSON file, e.g. `hot_remove_1g_filled_gone_ms`.
    pub fn key(self) -> String {
        let name = match self {
            Figure::Boot => "boot".to_owned(),
            Figure::VmmOverhead => "vmm_overhead".to_owned(),
            Figure::HotAdd(size) => format!("hot_add_{}", short_size(size).to_lowercase()),
            Figure::HotAddVmmShare(size) => {
                format!("hot_add_{}_vmm_share", short_size(size).to_lowercase())
            }
            Figure::HotRemove {
                size,
                contents,
                until,
            } => format!(
                "hot_remove_{}_{}_{}",
                short_size(size).to_lowercase(),
                match contents {
                    Contents::Empty => "empty",
                    Contents::Filled => "filled",
                },
                match until {
                    Until::Gone => "gone",
                    Until::MemTotal => "memtotal",
                }
            ),
            Figure::Rss { size, point } => format!(
                "rss_{}_{}",
                short_size(size).to_lowercase(),
                match point {
                    RssPoint::BeforeAdd => "before_add",
                    RssPoint::AfterFill => "after_fill",
                    RssPoint::AfterRemove => "after_remove",
                    RssPoint::DimmResident => "dimm_resident",
                    RssPoint::DimmReturned => "dimm_returned",
                }
            ),
            Figure::ShrinkCheapest(size) => {
                format!("shrink_{}_cheapest_gone", short_size(size).to_lowercase())
            }
        };
        let unit = match self.unit() {
            Unit::Percent => "pct",
            unit => unit.symbol(),
        };
        format!("{name}_{}", unit.to_lowercase())
    }

    /// What the table calls it, with its unit.
    pub fn label(self) -> String {
        let text = match self {
            Figure::Boot => "boot: VMM start → first userspace line".to_owned(),
            Figure::VmmOverhead => "VMM RSS beside guest RAM".to_owned(),
            Figure::HotAdd(size) => format!("hot-add {}: request → MemTotal", long_size(size)),
            Figure::HotAddVmmShare(size) => format!(
                "hot-add {}: request → interrupt (VMM's share)",
                long_size(size)
            ),
            Figure::HotRemove {
                size,
                contents,
                until,
            } => format!(
                "hot-remove {} {}: request → {}",
                long_size(size),
                match contents {
                    Contents::Empty => "empty",
                    Contents::Filled => "filled",
                },
                match until {
                    Until::Gone => "DIMM gone",
                    Until::MemTotal => "MemTotal",
                }
            ),
            Figure::Rss { size, point } => format!(
                "{} {}",
                long_size(size),
                match point {
                    RssPoint::BeforeAdd => "filled: VMM RSS before hot-add",
                    RssPoint::AfterFill => "filled: VMM RSS after the guest's fill",
                    RssPoint::AfterRemove => "filled: VMM RSS after hot-remove",
                    RssPoint::DimmResident => "filled: resident in the DIMM at hot-remove",
                    RssPoint::DimmReturned => "filled: of that, returned to the host",
                }
            ),
            Figure::ShrinkCheapest(size) => format!(
                "shrink by {} of an empty and a filled DIMM: request → DIMM gone",
                long_size(size)
            ),
        };
        format!("{text} ({})", self.unit().symbol())
    }

    /// Whether measuring it needs a VMM that removes memory: the removals, the shrink and the
    /// memory read around the filled removal.
    pub fn needs_removal(self) -> bool {
        matches!(
            self,
            Figure::HotRemove { .. } | Figure::ShrinkCheapest(_) | Figure::Rss { .. }
        )
    }

    /// The plot's name for a latency it shows (hot-add, and hot-remove until the DIMM is gone);
    /// `None` for the figures it leaves to the table.
    pub fn plot_label(self) -> Option<String> {
        match self {
            Figure::HotAdd(size) => Some(format!("add {}", short_size(size))),
            Figure::HotRemove {
                size,
                contents,
                until: Until::Gone,
            } => Some(format!(
                "remove {} {}",
                short_size(size),
                match contents {
                    Contents::Empty => "empty",
                    Contents::Filled => "filled",
                }
            )),
            _ => None,
        }
    }
}

/// `1G`, `128M`.
fn short_size(bytes: u64) -> String {
    if bytes.is_multiple_of(GIB) {
        format!("{}G", bytes / GIB)
    } else {
        format!("{}M", bytes / MIB)
    }
}

/// `1 GiB`, `128 MiB`.
fn long_size(bytes: u64) -> String {
    if bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

/// The guest and the DIMMs of one benchmark: the same for every VMM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// vCPUs of the guest.
    pub cpus: u32,
    /// Boot RAM, bytes.
    pub boot_memory: u64,
    /// The hotplug region, bytes: Tidal's `hotplug_size`, QEMU's `maxmem` beyond boot RAM.
    pub hotplug_region: u64,
    /// DIMM slots.
    pub slots: u32,
    /// DIMM sizes that are each hot-added and removed empty, then added, half filled by the
    /// guest and removed again.
    pub removed: Vec<u64>,
    /// More DIMM sizes, only hot-added, at the end of a run (nothing after them can be
    /// disturbed by them; removing them would add little but time).
    pub added_only: Vec<u64>,
}

impl Plan {
    /// The benchmark proper: a 1 GiB DIMM added and removed empty and half full, then a 4 GiB
    /// one and a 128 MiB one (a single memory block) added. (A 4 GiB removal, `--removed
    /// 1G,4G`, needs a 2 GiB fill: an hour more per run under emulation.) Two vCPUs: in the test host QEMU's guest
    /// with one vCPU does not boot in useful time.
    pub fn full() -> Self {
        Plan {
            cpus: 2,
            boot_memory: GIB,
            hotplug_region: 12 * GIB,
            slots: 8,
            removed: vec![GIB],
            added_only: vec![4 * GIB, 128 * MIB],
        }
    }

    /// The smallest plan that still measures every kind of figure: one 128 MiB DIMM (one memory
    /// block of the guest), filled with 64 MiB.
    pub fn quick() -> Self {
        Plan {
            cpus: 2,
            boot_memory: GIB,
            hotplug_region: GIB,
            slots: 8,
            removed: vec![128 * MIB],
            added_only: Vec::new(),
        }
    }

    /// Bytes the guest writes into its tmpfs before the filled removal of a DIMM of `size`
    /// bytes: half of it.
    pub fn fill(size: u64) -> u64 {
        size / 2
    }

    /// Every DIMM size that is hot-added, smallest first.
    fn added(&self) -> Vec<u64> {
        let mut sizes: Vec<u64> = self
            .removed
            .iter()
            .chain(&self.added_only)
            .copied()
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    /// Every figure a run of this plan measures, in the order the table shows them.
    pub fn figures(&self) -> Vec<Figure> {
        let mut figures = vec![Figure::Boot, Figure::VmmOverhead];
        for size in self.added() {
            figures.extend([Figure::HotAdd(size), Figure::HotAddVmmShare(size)]);
        }
        for &size in &self.removed {
            for contents in [Contents::Empty, Contents::Filled] {
                for until in [Until::Gone, Until::MemTotal] {
                    figures.push(Figure::HotRemove {
                        size,
                        contents,
                        until,
                    });
                }
            }
            figures.push(Figure::ShrinkCheapest(size));
        }
        for &size in &self.removed {
            figures.extend(RssPoint::ALL.map(|point| Figure::Rss { size, point }));
        }
        figures
    }

    /// The `--memory` option every VMM gets (in MiB, which tidal and the wrappers
    /// `ci/*-as-tidal.sh` read).
    pub fn memory_option(&self) -> String {
        format!(
            "size={}M,hotplug_size={}M,slots={}",
            self.boot_memory / MIB,
            self.hotplug_region / MIB,
            self.slots
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_figures_by_size_contents_and_end() {
        let figure = Figure::HotRemove {
            size: GIB,
            contents: Contents::Filled,
            until: Until::Gone,
        };
        assert_eq!(figure.key(), "hot_remove_1g_filled_gone_ms");
        assert_eq!(
            figure.label(),
            "hot-remove 1 GiB filled: request → DIMM gone (ms)"
        );
        assert_eq!(figure.plot_label().as_deref(), Some("remove 1G filled"));
        assert_eq!(Figure::HotAdd(128 * MIB).key(), "hot_add_128m_ms");
        assert_eq!(
            Figure::HotAdd(128 * MIB).label(),
            "hot-add 128 MiB: request → MemTotal (ms)"
        );
        let returned = Figure::Rss {
            size: GIB,
            point: RssPoint::DimmReturned,
        };
        assert_eq!(returned.key(), "rss_1g_dimm_returned_pct");
        assert_eq!(
            returned.label(),
            "1 GiB filled: of that, returned to the host (%)"
        );
        assert_eq!(
            Figure::HotAddVmmShare(4 * GIB).key(),
            "hot_add_4g_vmm_share_ms"
        );
        assert_eq!(Figure::VmmOverhead.key(), "vmm_overhead_mib");
        assert_eq!(Figure::Boot.plot_label(), None);
    }

    #[test]
    fn plans_list_distinct_figures() {
        for plan in [Plan::full(), Plan::quick()] {
            let figures = plan.figures();
            let keys: std::collections::BTreeSet<String> =
                figures.iter().map(|f| f.key()).collect();
            assert_eq!(keys.len(), figures.len(), "{keys:?}");
        }
        // Boot, overhead; add and share of 128M, 1G, 4G; 4 removals, a shrink and 5 RSS points
        // of 1G.
        assert_eq!(Plan::full().figures().len(), 2 + 3 * 2 + (4 + 1 + 5));
        assert_eq!(
            Figure::ShrinkCheapest(GIB).key(),
            "shrink_1g_cheapest_gone_ms"
        );
        assert_eq!(
            Plan::full().memory_option(),
            "size=1024M,hotplug_size=12288M,slots=8"
        );
        // Every DIMM fits the region and is whole memory blocks of the guest.
        for plan in [Plan::full(), Plan::quick()] {
            for size in plan.added() {
                assert!(size <= plan.hotplug_region && size.is_multiple_of(128 * MIB));
            }
        }
    }
}
