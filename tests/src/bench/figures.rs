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
    /// The guest had written [`Plan::fill`] bytes to its tmpfs, which lands in the DIMM first
    /// (ZONE_MOVABLE comes first for movable allocations) and has to be migrated out.
    Filled,
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
    /// Hot-remove of a DIMM: request → `until`.
    HotRemove {
        size: u64,
        contents: Contents,
        until: Until,
    },
    /// The VMM's whole RSS before the DIMM that gets filled is added.
    RssBeforeAdd,
    /// ... after the guest filled it.
    RssAfterFill,
    /// ... after it was removed.
    RssAfterRemove,
    /// What the removal gave back to the host: after the fill − after the removal.
    RssReturned,
    /// [`Figure::RssReturned`] as a share of the DIMM's size.
    RssReturnedShare,
}

impl Figure {
    pub fn unit(self) -> Unit {
        match self {
            Figure::Boot | Figure::HotAdd(_) | Figure::HotRemove { .. } => Unit::Ms,
            Figure::RssReturnedShare => Unit::Percent,
            Figure::VmmOverhead
            | Figure::RssBeforeAdd
            | Figure::RssAfterFill
            | Figure::RssAfterRemove
            | Figure::RssReturned => Unit::Mib,
        }
    }

    /// A stable name for the JSON file, e.g. `hot_remove_1g_filled_gone_ms`.
    pub fn key(self) -> String {
        let name = match self {
            Figure::Boot => "boot".to_owned(),
            Figure::VmmOverhead => "vmm_overhead".to_owned(),
            Figure::HotAdd(size) => format!("hot_add_{}", short_size(size).to_lowercase()),
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
            Figure::RssBeforeAdd => "rss_before_add".to_owned(),
            Figure::RssAfterFill => "rss_after_fill".to_owned(),
            Figure::RssAfterRemove => "rss_after_remove".to_owned(),
            Figure::RssReturned => "rss_returned".to_owned(),
            Figure::RssReturnedShare => "rss_returned_share".to_owned(),
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
            Figure::RssBeforeAdd => "VMM RSS before hot-add".to_owned(),
            Figure::RssAfterFill => "VMM RSS after the guest's fill".to_owned(),
            Figure::RssAfterRemove => "VMM RSS after hot-remove".to_owned(),
            Figure::RssReturned => "RSS returned by hot-remove".to_owned(),
            Figure::RssReturnedShare => "RSS returned, share of the DIMM".to_owned(),
        };
        format!("{text} ({})", self.unit().symbol())
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

/// The guest and the DIMMs of one benchmark: the same for both VMMs.
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
    /// The DIMM that is hot-added, then removed empty, then added, filled and removed again.
    pub dimm: u64,
    /// More DIMM sizes, only hot-added, at the end of a run (nothing after them can be
    /// disturbed by them; removing them would add little but time).
    pub added_only: Vec<u64>,
    /// Bytes the guest writes into its tmpfs before the filled removal: half the DIMM.
    pub fill: u64,
}

impl Plan {
    /// The benchmark proper: a 1 GiB DIMM added and removed empty and half full, then a
    /// 128 MiB one (a single memory block) and a 4 GiB one added.
    pub fn full() -> Self {
        Plan {
            cpus: 2,
            boot_memory: GIB,
            hotplug_region: 12 * GIB,
            slots: 8,
            dimm: GIB,
            added_only: vec![128 * MIB, 4 * GIB],
            fill: GIB / 2,
        }
    }

    /// The smallest plan that still measures every kind of figure: one 128 MiB DIMM (one memory
    /// block of the guest), 64 MiB of fill.
    pub fn quick() -> Self {
        Plan {
            cpus: 2,
            boot_memory: GIB,
            hotplug_region: GIB,
            slots: 8,
            dimm: 128 * MIB,
            added_only: Vec::new(),
            fill: 64 * MIB,
        }
    }

    /// Every figure a run of this plan measures, in the order the table shows them.
    pub fn figures(&self) -> Vec<Figure> {
        let remove = |contents, until| Figure::HotRemove {
            size: self.dimm,
            contents,
            until,
        };
        let mut figures = vec![Figure::Boot, Figure::VmmOverhead, Figure::HotAdd(self.dimm)];
        figures.extend(self.added_only.iter().map(|&size| Figure::HotAdd(size)));
        figures.extend([
            remove(Contents::Empty, Until::Gone),
            remove(Contents::Empty, Until::MemTotal),
            remove(Contents::Filled, Until::Gone),
            remove(Contents::Filled, Until::MemTotal),
            Figure::RssBeforeAdd,
            Figure::RssAfterFill,
            Figure::RssAfterRemove,
            Figure::RssReturned,
            Figure::RssReturnedShare,
        ]);
        figures
    }

    /// The `--memory` option both VMMs get (in MiB, which tidal and `ci/qemu-as-tidal.sh`
    /// both read).
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
        assert_eq!(Figure::RssReturnedShare.key(), "rss_returned_share_pct");
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
        assert_eq!(Plan::full().figures().len(), 14);
        assert_eq!(
            Plan::full().memory_option(),
            "size=1024M,hotplug_size=12288M,slots=8"
        );
        // Every DIMM fits the region and is whole memory blocks of the guest.
        for plan in [Plan::full(), Plan::quick()] {
            for size in std::iter::once(plan.dimm).chain(plan.added_only.iter().copied()) {
                assert!(size <= plan.hotplug_region && size.is_multiple_of(128 * MIB));
            }
        }
    }
}
