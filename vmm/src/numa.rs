//! Guest NUMA nodes: what `--numa` gives each node (vCPUs, boot memory, a share of the hotplug
//! region, distances), checked as a whole, and where each node's memory lands in guest physical
//! space. Without `--numa` a VM has one node holding everything.

use std::collections::BTreeMap;

use thiserror::Error;
use tidal_api::size::format_size;

use crate::layout::MEMORY_BLOCK_SIZE;
use crate::memory::backend::{BackendError, MemoryBackend, BACKEND_KEYS};
use crate::memory::dimm_space::HotplugRegion;
use crate::memory::guest::{GuestMemoryLayout, RamRange};
use crate::options::{KeyValues, OptionError};

/// More nodes than this are refused (the SLIT and the tests stop here).
pub const MAX_NODES: usize = 8;
/// A node's distance to itself, and to other nodes unless `distance` says otherwise.
pub const LOCAL_DISTANCE: u8 = 10;
pub const REMOTE_DISTANCE: u8 = 20;

/// The keys `--numa` takes, beside a memory backend's ([`BACKEND_KEYS`]).
const NODE_KEYS: [&str; 6] = [
    "id",
    "cpus",
    "memory",
    "hotplug_size",
    "distance",
    "hotpluggable",
];

/// One node as the command line describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub id: u32,
    /// Its vCPUs (indices, which are also their APIC ids).
    pub cpus: Vec<u8>,
    /// Boot memory in bytes.
    pub memory: u64,
    /// Its share of the hotplug region in bytes (0: nothing can be hot-added to it).
    pub hotplug_size: u64,
    /// Distances to other nodes that differ from [`REMOTE_DISTANCE`].
    pub distances: BTreeMap<u32, u8>,
    /// Its boot memory can be removed: the SRAT marks it hotpluggable (with `movable_node` the
    /// guest keeps it in ZONE_MOVABLE) and it is a DIMM present from boot.
    pub hotpluggable: bool,
    /// The host memory behind its boot memory and its DIMMs.
    pub backend: MemoryBackend,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NumaError {
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("--numa: cpus: '{0}' is not a vCPU list such as 0-1 or [0-1,4]")]
    CpuList(String),
    #[error("--numa: distance: '{0}' is not a list of NODE@DISTANCE such as 1@20 or [1@20,2@30]")]
    DistanceList(String),
    #[error("--numa: at most {MAX_NODES} nodes are supported, not {0}")]
    TooManyNodes(usize),
    #[error("--numa: node ids must be 0, 1, 2, ... in order, without gaps; node {found} is given where node {expected} should be")]
    NodeOrder { expected: u32, found: u32 },
    #[error("--numa: node {node} holds vCPU {cpu}, but the VM has {cpus} vCPUs (--cpus)")]
    CpuOutOfRange { node: u32, cpu: u32, cpus: u8 },
    #[error("--numa: vCPU {cpu} is in both node {first} and node {second}")]
    CpuTwice { cpu: u8, first: u32, second: u32 },
    #[error("--numa: vCPU {0} is in no node: every vCPU needs one")]
    CpuMissing(u8),
    #[error("--numa: node {node}: {key} {} is not a multiple of the {} memory block size", format_size(*.size), format_size(MEMORY_BLOCK_SIZE))]
    Unaligned {
        node: u32,
        key: &'static str,
        size: u64,
    },
    #[error("--numa: node {0}: memory must be at least one memory block (128 MiB)")]
    NoMemory(u32),
    #[error(
        "--numa: node 0 cannot be hotpluggable: the guest kernel needs memory that never goes"
    )]
    HotpluggableNodeZero,
    #[error("--numa: node {node}: distance to node {to}: {problem}")]
    Distance { node: u32, to: u32, problem: String },
    #[error("--memory {key} {} disagrees with the --numa nodes, which add up to {}", format_size(*.memory), format_size(*.nodes))]
    Disagrees {
        key: &'static str,
        memory: u64,
        nodes: u64,
    },
}

/// One `--numa` value.
pub fn parse_node(text: &str) -> Result<NodeConfig, NumaError> {
    let kv = KeyValues::parse("numa", text, &[&NODE_KEYS[..], &BACKEND_KEYS].concat())?;
    let id = kv.number::<u32>("id")?.ok_or(OptionError::Missing {
        flag: "numa",
        key: "id",
    })?;
    let cpus = kv.list("cpus").ok_or(OptionError::Missing {
        flag: "numa",
        key: "cpus",
    })?;
    let cpus = parse_cpu_list(&cpus)
        .ok_or_else(|| NumaError::CpuList(kv.get("cpus").unwrap_or_default().to_owned()))?;
    let memory = kv.required_size("memory")?;
    let hotplug_size = kv.size("hotplug_size")?.unwrap_or(0);
    for (key, size) in [("memory", memory), ("hotplug_size", hotplug_size)] {
        if !size.is_multiple_of(MEMORY_BLOCK_SIZE) {
            return Err(NumaError::Unaligned {
                node: id,
                key,
                size,
            });
        }
    }
    if memory == 0 {
        return Err(NumaError::NoMemory(id));
    }
    let distances = match kv.list("distance") {
        None => BTreeMap::new(),
        Some(items) => parse_distances(&items).ok_or_else(|| {
            NumaError::DistanceList(kv.get("distance").unwrap_or_default().to_owned())
        })?,
    };
    let hotpluggable = kv.switch("hotpluggable")?;
    let backend = MemoryBackend::parse(&kv, &format!("--numa: node {id}"))?;
    backend.check_size(&format!("--numa: node {id}: memory"), memory)?;
    Ok(NodeConfig {
        id,
        cpus,
        memory,
        hotplug_size,
        distances,
        hotpluggable,
        backend,
    })
}

/// `0-1`, `4`: vCPU numbers and inclusive ranges, in any order; the vCPUs come back sorted,
/// each once.
fn parse_cpu_list(items: &[&str]) -> Option<Vec<u8>> {
    let mut cpus = Vec::new();
    for item in items {
        let (first, last) = match item.split_once('-') {
            Some((first, last)) => (first.parse::<u8>().ok()?, last.parse::<u8>().ok()?),
            None => {
                let cpu = item.parse::<u8>().ok()?;
                (cpu, cpu)
            }
        };
        if first > last {
            return None;
        }
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}

/// `1@20`: node 1 is at distance 20.
fn parse_distances(items: &[&str]) -> Option<BTreeMap<u32, u8>> {
    let mut distances = BTreeMap::new();
    for item in items {
        let (node, distance) = item.split_once('@')?;
        if distances
            .insert(node.parse().ok()?, distance.parse().ok()?)
            .is_some()
        {
            return None;
        }
    }
    Some(distances)
}

/// Checks the nodes together: ids 0, 1, ... in order, every one of the `cpus` vCPUs in exactly
/// one node, and distances to nodes that exist, 11 to 254 (the SLIT's range for remote nodes).
pub fn check_nodes(nodes: &[NodeConfig], cpus: u8) -> Result<(), NumaError> {
    if nodes.len() > MAX_NODES {
        return Err(NumaError::TooManyNodes(nodes.len()));
    }
    let mut owner: BTreeMap<u8, u32> = BTreeMap::new();
    for (expected, node) in (0u32..).zip(nodes) {
        if node.id != expected {
            return Err(NumaError::NodeOrder {
                expected,
                found: node.id,
            });
        }
        if node.id == 0 && node.hotpluggable {
            return Err(NumaError::HotpluggableNodeZero);
        }
        for &cpu in &node.cpus {
            if cpu >= cpus {
                return Err(NumaError::CpuOutOfRange {
                    node: node.id,
                    cpu: u32::from(cpu),
                    cpus,
                });
            }
            if let Some(first) = owner.insert(cpu, node.id) {
                return Err(NumaError::CpuTwice {
                    cpu,
                    first: first.min(node.id),
                    second: first.max(node.id),
                });
            }
        }
        for (&to, &distance) in &node.distances {
            let problem = if usize::try_from(to).map_or(true, |to| to >= nodes.len()) {
                Some(format!("there are {} nodes", nodes.len()))
            } else if to == node.id {
                Some(format!("a node is always {LOCAL_DISTANCE} from itself"))
            } else if !(11..=254).contains(&distance) {
                Some(format!("{distance} is not between 11 and 254"))
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(NumaError::Distance {
                    node: node.id,
                    to,
                    problem,
                });
            }
        }
    }
    match (0..cpus).find(|cpu| !owner.contains_key(cpu)) {
        Some(cpu) => Err(NumaError::CpuMissing(cpu)),
        None => Ok(()),
    }
}

/// The distance matrix for the SLIT: row `i` holds node `i`'s distances, as given on its own
/// `--numa` (a distance given one way only is not mirrored: a SLIT may be asymmetric).
pub fn distance_matrix(nodes: &[NodeConfig]) -> Vec<Vec<u8>> {
    nodes
        .iter()
        .map(|node| {
            (0u32..)
                .zip(nodes)
                .map(|(to, _)| match node.distances.get(&to) {
                    _ if to == node.id => LOCAL_DISTANCE,
                    Some(&distance) => distance,
                    None => REMOTE_DISTANCE,
                })
                .collect()
        })
        .collect()
}

/// Guest physical ranges of each node's boot memory: the nodes' memory laid end to end in id
/// order through boot RAM, which goes around the device hole (so a node may get two ranges).
pub fn boot_ranges(layout: &GuestMemoryLayout, nodes: &[NodeConfig]) -> Vec<Vec<(u64, u64)>> {
    let mut free = layout.ranges().iter().copied();
    let mut current = free.next();
    nodes
        .iter()
        .map(|node| {
            let mut ranges = Vec::new();
            let mut wanted = node.memory;
            while wanted > 0 {
                let Some((base, size)) = current else { break };
                let take = wanted.min(size);
                ranges.push((base, take));
                wanted -= take;
                current = if take == size {
                    free.next()
                } else {
                    Some((base + take, size - take))
                };
            }
            ranges
        })
        .collect()
}

/// Refuses a node whose boot memory the device hole cuts into pieces that are not whole pages
/// of its backend: with 1 GiB huge pages, a node that spans 3 GiB must be cut there on a GiB.
pub fn check_boot_pages(layout: &GuestMemoryLayout, nodes: &[NodeConfig]) -> Result<(), NumaError> {
    for (node, ranges) in nodes.iter().zip(boot_ranges(layout, nodes)) {
        for (base, size) in ranges
            .into_iter()
            .filter(|_| node.backend.huge_pages.is_some())
        {
            let what = format!(
                "--numa: node {}: the part of its boot memory at {base:#x} (the device hole \
                 from 3 GiB to 4 GiB cuts it)",
                node.id
            );
            node.backend.check_size(&what, size)?;
        }
    }
    Ok(())
}

/// A range of a hotpluggable node's boot memory: a DIMM present from boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootDimm {
    pub node: u32,
    pub base: u64,
    pub size: u64,
}

/// Boot RAM split by whether it can go: the ranges of nodes that are not hotpluggable, in
/// address order and merged where they touch and have the same backend (mapped once, for
/// good), and the ranges of hotpluggable nodes.
pub fn split_boot_ranges(
    layout: &GuestMemoryLayout,
    nodes: &[NodeConfig],
) -> (Vec<RamRange>, Vec<BootDimm>) {
    let mut fixed: Vec<RamRange> = Vec::new();
    let mut removable = Vec::new();
    for (node, ranges) in nodes.iter().zip(boot_ranges(layout, nodes)) {
        for (base, size) in ranges {
            if node.hotpluggable {
                removable.push(BootDimm {
                    node: node.id,
                    base,
                    size,
                });
            } else if let Some(last) = fixed
                .last_mut()
                .filter(|last| last.base + last.size == base && last.backend == node.backend)
            {
                last.size += size;
            } else {
                fixed.push(RamRange {
                    base,
                    size,
                    backend: node.backend,
                });
            }
        }
    }
    (fixed, removable)
}

/// Each node's share of the hotplug region, in id order from its base (`None` for a node
/// without one).
pub fn hotplug_shares(region_base: u64, nodes: &[NodeConfig]) -> Vec<Option<HotplugRegion>> {
    let mut base = region_base;
    nodes
        .iter()
        .map(|node| {
            let share = (node.hotplug_size > 0).then_some(HotplugRegion {
                base,
                size: node.hotplug_size,
            });
            base += node.hotplug_size;
            share
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    fn private(base: u64, size: u64) -> RamRange {
        RamRange {
            base,
            size,
            backend: MemoryBackend::default(),
        }
    }

    fn node(text: &str) -> NodeConfig {
        parse_node(text).unwrap()
    }

    #[test]
    fn parses_a_node() {
        let n = node("id=1,cpus=[6,2-3,3],memory=2G,hotplug_size=4G,distance=[0@30,2@40]");
        assert_eq!(n.id, 1);
        assert_eq!(n.cpus, vec![2, 3, 6]);
        assert_eq!((n.memory, n.hotplug_size), (2 * G, 4 * G));
        assert_eq!(n.distances, BTreeMap::from([(0, 30), (2, 40)]));
        let n = node("id=0,cpus=0,memory=512M");
        assert_eq!((n.cpus, n.hotplug_size), (vec![0], 0));
    }

    #[test]
    fn refuses_bad_nodes_with_clear_errors() {
        let err = |text| parse_node(text).unwrap_err().to_string();
        assert_eq!(err("cpus=0,memory=1G"), "--numa: missing required key 'id'");
        assert_eq!(
            err("id=0,cpus=1-0,memory=1G"),
            "--numa: cpus: '1-0' is not a vCPU list such as 0-1 or [0-1,4]"
        );
        assert_eq!(
            err("id=0,cpus=0,memory=100M"),
            "--numa: node 0: memory 100 MiB is not a multiple of the 128 MiB memory block size"
        );
        assert_eq!(
            err("id=0,cpus=0,memory=0"),
            "--numa: node 0: memory must be at least one memory block (128 MiB)"
        );
        assert!(err("id=0,cpus=0,memory=1G,distance=1:20").contains("NODE@DISTANCE"));
        assert!(err("id=0,cpus=0,memory=1G,distance=[1@20,1@30]").contains("NODE@DISTANCE"));
        assert!(err("id=0,cpus=0,memory=1G,colour=red").contains("unknown key"));
        assert_eq!(
            err("id=1,cpus=0,memory=1536M,hugepages=on,hugepage_size=1G"),
            "--numa: node 1: memory 1536 MiB is not a multiple of its 1 GiB huge pages"
        );
    }

    #[test]
    fn checks_the_nodes_together() {
        let two = [
            node("id=0,cpus=0-1,memory=1G"),
            node("id=1,cpus=[2-3],memory=1G"),
        ];
        assert_eq!(check_nodes(&two, 4), Ok(()));
        assert_eq!(check_nodes(&two, 5), Err(NumaError::CpuMissing(4)));
        assert_eq!(
            check_nodes(&two, 3),
            Err(NumaError::CpuOutOfRange {
                node: 1,
                cpu: 3,
                cpus: 3
            })
        );
        let overlap = [
            node("id=0,cpus=0-1,memory=1G"),
            node("id=1,cpus=1,memory=1G"),
        ];
        assert_eq!(
            check_nodes(&overlap, 2).unwrap_err().to_string(),
            "--numa: vCPU 1 is in both node 0 and node 1"
        );
        let skip = [node("id=0,cpus=0,memory=1G"), node("id=2,cpus=1,memory=1G")];
        assert_eq!(
            check_nodes(&skip, 2),
            Err(NumaError::NodeOrder {
                expected: 1,
                found: 2
            })
        );
        let far = [
            node("id=0,cpus=0,memory=1G,distance=1@255"),
            node("id=1,cpus=1,memory=1G"),
        ];
        assert!(check_nodes(&far, 2)
            .unwrap_err()
            .to_string()
            .contains("between 11 and 254"));
        let missing = [node("id=0,cpus=0,memory=1G,distance=3@20")];
        assert!(check_nodes(&missing, 1)
            .unwrap_err()
            .to_string()
            .contains("there are 1 nodes"));
        let nine: Vec<_> = (0..9u8)
            .map(|i| node(&format!("id={i},cpus={i},memory=128M")))
            .collect();
        assert_eq!(check_nodes(&nine, 9), Err(NumaError::TooManyNodes(9)));
    }

    #[test]
    fn distances_default_to_local_and_remote() {
        let nodes = [
            node("id=0,cpus=0,memory=1G,distance=1@30"),
            node("id=1,cpus=1,memory=1G"),
        ];
        assert_eq!(distance_matrix(&nodes), vec![vec![10, 30], vec![20, 10]]);
    }

    #[test]
    fn boot_memory_goes_around_the_hole() {
        // 2 GiB + 2 GiB: node 1 gets the last GiB below the hole and the first above it.
        let nodes = [node("id=0,cpus=0,memory=2G"), node("id=1,cpus=1,memory=2G")];
        let layout = GuestMemoryLayout::new(4 * G);
        assert_eq!(
            boot_ranges(&layout, &nodes),
            vec![vec![(0, 2 * G)], vec![(2 * G, G), (4 * G, G)]]
        );
        let small = [
            node("id=0,cpus=0,memory=512M"),
            node("id=1,cpus=1,memory=512M"),
        ];
        assert_eq!(
            boot_ranges(&GuestMemoryLayout::new(G), &small),
            vec![vec![(0, G / 2)], vec![(G / 2, G / 2)]]
        );
    }

    #[test]
    fn hotpluggable_boot_memory_is_set_apart() {
        let nodes = [
            node("id=0,cpus=0,memory=1G"),
            node("id=1,cpus=1,memory=3G,hotpluggable=on"),
            node("id=2,cpus=2,memory=1G"),
        ];
        assert_eq!(check_nodes(&nodes, 3), Ok(()));
        let (fixed, removable) = split_boot_ranges(&GuestMemoryLayout::new(5 * G), &nodes);
        assert_eq!(fixed, vec![private(0, G), private(5 * G, G)]);
        let dimm = |base, size| BootDimm {
            node: 1,
            base,
            size,
        };
        assert_eq!(removable, vec![dimm(G, 2 * G), dimm(4 * G, G)]);
        // Nodes that stay are merged where they touch.
        let both = [node("id=0,cpus=0,memory=1G"), node("id=1,cpus=1,memory=1G")];
        let (fixed, removable) = split_boot_ranges(&GuestMemoryLayout::new(2 * G), &both);
        assert_eq!((fixed, removable), (vec![private(0, 2 * G)], vec![]));
        // Unless their memory is of different kinds.
        let kinds = [
            node("id=0,cpus=0,memory=1G"),
            node("id=1,cpus=1,memory=1G,shared=on"),
        ];
        let (fixed, _) = split_boot_ranges(&GuestMemoryLayout::new(2 * G), &kinds);
        assert_eq!(fixed.len(), 2);
        assert!(fixed[1].backend.shared && !fixed[0].backend.shared);
        let zero = [node("id=0,cpus=0,memory=1G,hotpluggable=on")];
        assert_eq!(check_nodes(&zero, 1), Err(NumaError::HotpluggableNodeZero));
        assert!(parse_node("id=1,cpus=0,memory=1G,hotpluggable=yes")
            .unwrap_err()
            .to_string()
            .contains("'yes' is not on or off"));
    }

    #[test]
    fn huge_pages_must_survive_the_device_hole() {
        let across = [
            node("id=0,cpus=0,memory=1536M"),
            node("id=1,cpus=1,memory=2G,hugepages=on,hugepage_size=1G"),
        ];
        let layout = GuestMemoryLayout::new(3584 << 20);
        assert_eq!(
            check_boot_pages(&layout, &across).unwrap_err().to_string(),
            "--numa: node 1: the part of its boot memory at 0x60000000 (the device hole from \
             3 GiB to 4 GiB cuts it) 1536 MiB is not a multiple of its 1 GiB huge pages"
        );
        let aligned = [
            node("id=0,cpus=0,memory=1G"),
            node("id=1,cpus=1,memory=3G,hugepages=on,hugepage_size=1G"),
        ];
        assert_eq!(
            check_boot_pages(&GuestMemoryLayout::new(4 * G), &aligned),
            Ok(())
        );
    }

    #[test]
    fn hotplug_shares_follow_each_other() {
        let nodes = [
            node("id=0,cpus=0,memory=1G,hotplug_size=2G"),
            node("id=1,cpus=1,memory=1G"),
            node("id=2,cpus=2,memory=1G,hotplug_size=1G"),
        ];
        assert_eq!(
            hotplug_shares(4 * G, &nodes),
            vec![
                Some(HotplugRegion {
                    base: 4 * G,
                    size: 2 * G
                }),
                None,
                Some(HotplugRegion {
                    base: 6 * G,
                    size: G
                }),
            ]
        );
    }
}
