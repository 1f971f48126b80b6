//! The NUMA tables. The SRAT puts each vCPU (by local APIC id) and each memory range,
//! including the hot-pluggable region, in a proximity domain; Linux sizes its possible memory
//! from the hot-pluggable ranges. The optional SLIT gives the distances between domains.

use std::collections::HashSet;

use acpi_tables::srat::MemoryAffinity;
use acpi_tables::{Aml, AmlSink};

use crate::table;
use crate::{AcpiError, NumaConfig};

/// SRAT revision 3: 32-bit proximity domains (revision 1 limits them to 8 bits in Linux).
const SRAT_REVISION: u8 = 3;
/// SLIT revision.
const SLIT_REVISION: u8 = 1;
/// SRAT structure type of a Processor Local APIC/SAPIC Affinity (missing from `acpi_tables`).
const PROCESSOR_LOCAL_APIC_AFFINITY: u8 = 0;
/// Affinity flag: the entry is in use.
const AFFINITY_ENABLED: u32 = 1;
/// SLIT distance of a domain to itself.
const LOCAL_DISTANCE: u8 = 10;
/// SLIT value meaning "unreachable"; real distances are below it.
const UNREACHABLE: u8 = 0xff;

/// A Processor Local APIC/SAPIC Affinity structure (ACPI 6.5, 5.2.16.1): the proximity domain
/// of the vCPU with an 8-bit local APIC id.
struct ProcessorLocalApicAffinity {
    proximity_domain: u32,
    apic_id: u8,
}

impl Aml for ProcessorLocalApicAffinity {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        const LENGTH: u8 = 16;
        let [domain_low, domain_high @ ..] = self.proximity_domain.to_le_bytes();
        sink.byte(PROCESSOR_LOCAL_APIC_AFFINITY);
        sink.byte(LENGTH);
        sink.byte(domain_low);
        sink.byte(self.apic_id);
        sink.dword(AFFINITY_ENABLED);
        sink.byte(0); // local SAPIC EID
        sink.vec(&domain_high);
        sink.dword(0); // clock domain
    }
}

/// The SRAT for `numa` on a VM with `cpus` vCPUs.
pub(crate) fn srat(numa: &NumaConfig, cpus: u32) -> Result<Vec<u8>, AcpiError> {
    let mut domains = HashSet::new();
    let mut placed_cpus = HashSet::new();
    let mut body = Vec::new();
    body.extend_from_slice(&1u32.to_le_bytes()); // reserved, 1 for backward compatibility
    body.extend_from_slice(&0u64.to_le_bytes()); // reserved
    for node in &numa.nodes {
        let domain = node.proximity_domain;
        if !domains.insert(domain) {
            return Err(AcpiError::DuplicateProximityDomain(domain));
        }
        for &apic_id in &node.apic_ids {
            let id = u8::try_from(apic_id)
                .ok()
                .filter(|_| apic_id < cpus)
                .ok_or(AcpiError::UnknownApicId { apic_id, cpus })?;
            if !placed_cpus.insert(apic_id) {
                return Err(AcpiError::DuplicateApicId(apic_id));
            }
            ProcessorLocalApicAffinity {
                proximity_domain: domain,
                apic_id: id,
            }
            .to_aml_bytes(&mut body);
        }
        for range in &node.memory {
            if range.size == 0 {
                return Err(AcpiError::EmptyMemoryRange {
                    proximity_domain: domain,
                    base: range.base,
                });
            }
            let affinity = MemoryAffinity::new(domain, range.base, range.size).enabled();
            if range.hotpluggable {
                affinity.hotpluggable().to_aml_bytes(&mut body);
            } else {
                affinity.to_aml_bytes(&mut body);
            }
        }
    }
    Ok(table::with_header(*b"SRAT", SRAT_REVISION, &body))
}

/// The SLIT for `numa`, if it has distances.
pub(crate) fn slit(numa: &NumaConfig) -> Result<Option<Vec<u8>>, AcpiError> {
    let Some(distances) = &numa.distances else {
        return Ok(None);
    };
    let nodes = numa.nodes.len();
    if distances.len() != nodes || distances.iter().any(|row| row.len() != nodes) {
        return Err(AcpiError::DistanceMatrixShape { nodes });
    }
    let mut domains: Vec<u32> = numa
        .nodes
        .iter()
        .map(|node| node.proximity_domain)
        .collect();
    domains.sort_unstable();
    if !domains.iter().copied().eq((0..).take(nodes)) {
        return Err(AcpiError::SlitDomains);
    }
    for (from, row) in distances.iter().enumerate() {
        for (to, &distance) in row.iter().enumerate() {
            let valid = if from == to {
                distance == LOCAL_DISTANCE
            } else {
                distance > LOCAL_DISTANCE && distance < UNREACHABLE
            };
            if !valid {
                return Err(AcpiError::Distance { from, to, distance });
            }
        }
    }
    let mut body = (nodes as u64).to_le_bytes().to_vec();
    body.extend(distances.iter().flatten());
    Ok(Some(table::with_header(*b"SLIT", SLIT_REVISION, &body)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::table::checks::{assert_valid_table, subtables, u32_at, u64_at};
    use crate::{MemoryRange, NumaNode};

    const GIB: u64 = 1 << 30;

    fn range(base: u64, size: u64, hotpluggable: bool) -> MemoryRange {
        MemoryRange {
            base,
            size,
            hotpluggable,
        }
    }

    /// Two nodes of two vCPUs, each with boot memory and a share of the hotplug region.
    pub(crate) fn two_nodes() -> NumaConfig {
        NumaConfig {
            nodes: vec![
                NumaNode {
                    proximity_domain: 0,
                    apic_ids: vec![0, 1],
                    memory: vec![range(0, 2 * GIB, false), range(4 * GIB, 4 * GIB, true)],
                },
                NumaNode {
                    proximity_domain: 1,
                    apic_ids: vec![2, 3],
                    memory: vec![range(2 * GIB, GIB, false), range(8 * GIB, 4 * GIB, true)],
                },
            ],
            distances: Some(vec![vec![10, 20], vec![20, 10]]),
        }
    }

    /// The SRAT's structures as (type, bytes) pairs.
    fn structures(srat: &[u8]) -> Vec<(u8, &[u8])> {
        subtables(srat, 48)
    }

    #[test]
    fn srat_places_every_cpu_and_range() {
        let srat = srat(&two_nodes(), 4).unwrap();
        assert_valid_table(&srat, b"SRAT");
        assert_eq!(srat[8], SRAT_REVISION);
        assert_eq!(u32_at(&srat, 36), 1, "reserved field is 1");
        let structures = structures(&srat);
        let cpus: Vec<(u8, u8, u32)> = structures
            .iter()
            .filter(|(kind, _)| *kind == 0)
            .map(|(_, entry)| (entry[2], entry[3], u32_at(entry, 4)))
            .collect();
        assert_eq!(cpus, [(0, 0, 1), (0, 1, 1), (1, 2, 1), (1, 3, 1)]);
        let memory: Vec<(u32, u64, u64, u32)> = structures
            .iter()
            .filter(|(kind, _)| *kind == 1)
            .map(|(_, entry)| {
                (
                    u32_at(entry, 2),
                    u64_at(entry, 8),
                    u64_at(entry, 16),
                    u32_at(entry, 28),
                )
            })
            .collect();
        assert_eq!(
            memory,
            [
                (0, 0, 2 * GIB, 1),
                (0, 4 * GIB, 4 * GIB, 3),
                (1, 2 * GIB, GIB, 1),
                (1, 8 * GIB, 4 * GIB, 3),
            ]
        );
    }

    #[test]
    fn large_proximity_domains_are_split_across_the_entry() {
        let mut numa = NumaConfig::single_node(1, vec![range(0, GIB, false)]);
        numa.nodes[0].proximity_domain = 0x0403_0201;
        let srat = srat(&numa, 1).unwrap();
        let (_, cpu) = structures(&srat)[0];
        assert_eq!(cpu[2], 0x01);
        assert_eq!(&cpu[9..12], &[0x02, 0x03, 0x04]);
    }

    #[test]
    fn single_node_holds_everything() {
        let numa = NumaConfig::single_node(3, vec![range(0, GIB, false), range(GIB, GIB, true)]);
        let srat = srat(&numa, 3).unwrap();
        let structures = structures(&srat);
        assert_eq!(structures.iter().filter(|(kind, _)| *kind == 0).count(), 3);
        assert_eq!(structures.iter().filter(|(kind, _)| *kind == 1).count(), 2);
        assert!(structures.iter().all(|(_, entry)| entry[2] == 0));
        assert_eq!(slit(&numa), Ok(None));
    }

    #[test]
    fn srat_rejects_inconsistent_nodes() {
        let mut numa = two_nodes();
        numa.nodes[1].apic_ids.push(4);
        assert_eq!(
            srat(&numa, 4),
            Err(AcpiError::UnknownApicId {
                apic_id: 4,
                cpus: 4
            })
        );
        let mut numa = two_nodes();
        numa.nodes[1].apic_ids.push(0);
        assert_eq!(srat(&numa, 4), Err(AcpiError::DuplicateApicId(0)));
        let mut numa = two_nodes();
        numa.nodes[1].proximity_domain = 0;
        assert_eq!(srat(&numa, 4), Err(AcpiError::DuplicateProximityDomain(0)));
        let mut numa = two_nodes();
        numa.nodes[0].memory[0].size = 0;
        assert_eq!(
            srat(&numa, 4),
            Err(AcpiError::EmptyMemoryRange {
                proximity_domain: 0,
                base: 0
            })
        );
    }

    #[test]
    fn slit_holds_the_distance_matrix() {
        let slit = slit(&two_nodes()).unwrap().unwrap();
        assert_valid_table(&slit, b"SLIT");
        assert_eq!(u64_at(&slit, 36), 2);
        assert_eq!(&slit[44..], &[10, 20, 20, 10]);
    }

    #[test]
    fn slit_rejects_what_linux_would_ignore() {
        let mut numa = two_nodes();
        numa.distances = Some(vec![vec![10, 20]]);
        assert_eq!(
            slit(&numa),
            Err(AcpiError::DistanceMatrixShape { nodes: 2 })
        );
        let mut numa = two_nodes();
        numa.distances = Some(vec![vec![10, 10], vec![20, 10]]);
        assert_eq!(
            slit(&numa),
            Err(AcpiError::Distance {
                from: 0,
                to: 1,
                distance: 10
            })
        );
        let mut numa = two_nodes();
        numa.nodes[1].proximity_domain = 7;
        assert_eq!(slit(&numa), Err(AcpiError::SlitDomains));
    }
}
