//! CPUID from KVM's supported set, patched per vCPU so the guest sees the right APIC id and a
//! topology of one socket with `cpus` single-thread cores.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// The shape of the guest's CPUs: one package of `cpus` cores, one thread each.
#[derive(Debug, Clone, Copy)]
pub struct Topology {
    pub cpus: u8,
}

impl Topology {
    /// Bits of the APIC id that number the cores: ceil(log2(cpus)).
    fn core_bits(self) -> u32 {
        u32::from(self.cpus).next_power_of_two().trailing_zeros()
    }
}

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_EXT_ADDRESS_SIZES: u32 = 0x8000_0008;
const LEAF_EXT_APIC_ID: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EBX_CLFLUSH_SIZE_8: u32 = 8 << 8;
/// Topology level types in leaves 0xb / 0x1f, ECX[15:8].
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;
/// AMD 0x80000001 ECX: CmpLegacy (multi-core, no HTT semantics).
const ECX_CMP_LEGACY: u32 = 1 << 1;

/// Patches `supported` (from KVM_GET_SUPPORTED_CPUID) for the vCPU with `apic_id`.
pub fn build_cpuid(supported: &CpuId, apic_id: u8, topology: Topology) -> CpuId {
    let mut cpuid = supported.clone();
    let apic = u32::from(apic_id);
    let cpus = u32::from(topology.cpus);
    for entry in cpuid.as_mut_slice() {
        patch_entry(entry, apic, cpus, topology.core_bits());
    }
    cpuid
}

fn patch_entry(entry: &mut kvm_cpuid_entry2, apic: u32, cpus: u32, core_bits: u32) {
    match entry.function {
        LEAF_FEATURES => {
            // EBX: APIC id, logical processor count, CLFLUSH line size in 8-byte units.
            entry.ebx = (apic << 24) | ((cpus & 0xff) << 16) | EBX_CLFLUSH_SIZE_8;
            entry.ecx |= ECX_HYPERVISOR;
        }
        LEAF_CACHE_PARAMS => {
            // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing this cache - 1.
            let cores = (cpus - 1).min(63);
            entry.eax = (entry.eax & 0x3fff) | (cores << 26);
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            entry.edx = apic;
            match entry.index {
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = (LEVEL_SMT << 8) | entry.index;
                }
                1 => {
                    entry.eax = core_bits;
                    entry.ebx = cpus;
                    entry.ecx = (LEVEL_CORE << 8) | entry.index;
                }
                _ => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = entry.index;
                }
            }
        }
        LEAF_EXT_FEATURES => entry.ecx |= ECX_CMP_LEGACY,
        LEAF_EXT_ADDRESS_SIZES => {
            // ECX[7:0]: cores - 1; ECX[15:12]: APIC id bits that number the cores.
            entry.ecx = (entry.ecx & !0xf0ff) | ((core_bits & 0xf) << 12) | (cpus - 1);
        }
        LEAF_EXT_APIC_ID => {
            entry.eax = apic;
            entry.ebx = apic & 0xff; // one thread per core: the core id is the APIC id
            entry.ecx = 0; // node 0
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn supported() -> CpuId {
        CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0),
            entry(LEAF_TOPOLOGY, 0),
            entry(LEAF_TOPOLOGY, 1),
            entry(LEAF_TOPOLOGY, 2),
            entry(LEAF_EXT_ADDRESS_SIZES, 0),
        ])
        .unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn apic_ids_and_counts() {
        let cpuid = build_cpuid(&supported(), 5, Topology { cpus: 6 });
        let leaf1 = find(&cpuid, LEAF_FEATURES, 0);
        assert_eq!(leaf1.ebx >> 24, 5);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 6);
        assert_ne!(leaf1.ecx & ECX_HYPERVISOR, 0);
        let core = find(&cpuid, LEAF_TOPOLOGY, 1);
        assert_eq!(core.eax, 3); // 6 cores need 3 bits
        assert_eq!(core.ebx, 6);
        assert_eq!(core.edx, 5);
        assert_eq!((core.ecx >> 8) & 0xff, LEVEL_CORE);
        let invalid = find(&cpuid, LEAF_TOPOLOGY, 2);
        assert_eq!((invalid.ecx >> 8) & 0xff, 0);
        assert_eq!(find(&cpuid, LEAF_EXT_ADDRESS_SIZES, 0).ecx & 0xff, 5);
    }

    #[test]
    fn single_cpu_topology() {
        let cpuid = build_cpuid(&supported(), 0, Topology { cpus: 1 });
        assert_eq!(find(&cpuid, LEAF_TOPOLOGY, 1).eax, 0);
        assert_eq!(find(&cpuid, LEAF_TOPOLOGY, 1).ebx, 1);
    }
}
