//! ACPI tables for Tidal guests.
//!
//! [`build_tables`] turns an [`AcpiConfig`] into the RSDP, XSDT, FADT, MADT and DSDT (plus the
//! SRAT and SLIT for NUMA), laid out one after another in a guest memory area, with every
//! pointer, length and checksum filled in. The VMM copies each [`Table`] to its address and
//! hands the guest [`AcpiTables::rsdp_address`].

#[cfg(test)]
mod acpica_tests;
mod aml;
mod config;
mod dsdt;
mod fadt;
mod ged;
mod layout;
mod madt;
mod memory_hotplug;
pub mod memory_hotplug_layout;
mod numa;
mod pvpanic;
mod root;
mod table;

pub use config::{
    AcpiConfig, Ged, IoApic, LegacySerial, MemoryHotplug, MemoryRange, NumaConfig, NumaNode,
    PowerRegisters, PvPanic,
};

pub use ged::{GED_MEMORY_HOTPLUG, GED_POWER_BUTTON};
pub use memory_hotplug::MAX_MEMORY_SLOTS;
pub use pvpanic::{PVPANIC_HID, PVPANIC_REGISTER_LEN};

use layout::TableArea;

/// The SLP_TYP value of the DSDT's `_S5_` package: power-off is a write of
/// `(S5_SLEEP_TYPE << 2) | 0x20` to the sleep control register.
pub const S5_SLEEP_TYPE: u8 = 5;

/// Why the tables could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    /// The MADT describes vCPUs with 8-bit local APIC ids.
    #[error("{0} vCPUs: the ACPI tables describe 1 to 255 vCPUs (8-bit local APIC ids)")]
    CpuCount(u32),
    /// The RSDP must be 16-byte aligned.
    #[error("the ACPI table area starts at {0:#x}, which is not 16-byte aligned")]
    UnalignedBase(u64),
    /// The area between base and limit is too small.
    #[error(
        "the {signature} table ({len} bytes at {address:#x}) does not fit below the end of \
         the ACPI table area at {limit:#x}"
    )]
    DoesNotFit {
        /// The table that did not fit.
        signature: String,
        /// Where it would have started.
        address: u64,
        /// Its length.
        len: usize,
        /// The end of the area.
        limit: u64,
    },
    /// The DIMM slot devices are named `ME00` to `MEFF`.
    #[error("{0} memory slots: the memory-hotplug controller has 1 to 256")]
    MemorySlotCount(u32),
    /// Two NUMA nodes with one proximity domain.
    #[error("proximity domain {0} is given to more than one NUMA node")]
    DuplicateProximityDomain(u32),
    /// A NUMA node names a vCPU the VM does not have.
    #[error("a NUMA node holds the vCPU with APIC id {apic_id}, but the VM has {cpus} vCPUs")]
    UnknownApicId {
        /// The APIC id.
        apic_id: u32,
        /// The number of vCPUs (APIC ids `0..cpus`).
        cpus: u32,
    },
    /// A vCPU in two NUMA nodes.
    #[error("the vCPU with APIC id {0} is in more than one NUMA node")]
    DuplicateApicId(u32),
    /// A zero-length memory range.
    #[error("NUMA node {proximity_domain}: the memory range at {base:#x} is empty")]
    EmptyMemoryRange {
        /// Its node.
        proximity_domain: u32,
        /// Its base.
        base: u64,
    },
    /// The SLIT distances are not one row and one column per node.
    #[error("the NUMA distance matrix must be {nodes}x{nodes}, one row and column per node")]
    DistanceMatrixShape {
        /// The number of nodes.
        nodes: usize,
    },
    /// The SLIT is indexed by proximity domain.
    #[error("NUMA distances need the nodes' proximity domains to be 0, 1, ... without gaps")]
    SlitDomains,
    /// A distance Linux would reject (and then ignore the whole SLIT).
    #[error(
        "NUMA distance from {from} to {to} is {distance}: a node is 10 from itself and 11 to \
         254 from others"
    )]
    Distance {
        /// Source proximity domain.
        from: usize,
        /// Target proximity domain.
        to: usize,
        /// The rejected distance.
        distance: u8,
    },
}

/// One table and where it goes in guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// Its signature (`*b"RSDP"` labels the RSDP, whose real signature is `"RSD PTR "`).
    pub signature: [u8; 4],
    /// Guest physical address of its first byte.
    pub address: u64,
    /// Its contents, checksummed.
    pub bytes: Vec<u8>,
}

/// All tables, ready to be copied into guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiTables {
    /// Address of the RSDP, for `boot_params.acpi_rsdp_addr`.
    pub rsdp_address: u64,
    /// The RSDP first, then the XSDT, FADT, DSDT, MADT and any others, in address order.
    pub tables: Vec<Table>,
}

/// Builds the tables for `config` and lays them out from `base` (the RSDP's address, 16-byte
/// aligned) upwards, each 16-byte aligned, all ending at or below `limit`.
pub fn build_tables(config: &AcpiConfig, base: u64, limit: u64) -> Result<AcpiTables, AcpiError> {
    let dsdt = dsdt::dsdt(config)?;
    // The tables the XSDT lists after the FADT (the DSDT is reached through the FADT only).
    let mut listed = vec![(*b"APIC", madt::madt(config)?)];
    if let Some(numa) = &config.numa {
        listed.push((*b"SRAT", numa::srat(numa, config.cpus)?));
        if let Some(slit) = numa::slit(numa)? {
            listed.push((*b"SLIT", slit));
        }
    }

    let mut area = TableArea::new(base, limit)?;
    let rsdp_address = area.place(*b"RSDP", root::rsdp_len())?;
    let xsdt_address = area.place(*b"XSDT", root::xsdt_len(1 + listed.len()))?;
    let fadt_address = area.place(*b"FACP", fadt::len())?;
    let dsdt_address = area.place(*b"DSDT", dsdt.len())?;
    let mut placed = Vec::with_capacity(listed.len());
    for (signature, bytes) in listed {
        let address = area.place(signature, bytes.len())?;
        placed.push(Table {
            signature,
            address,
            bytes,
        });
    }

    let xsdt_entries: Vec<u64> = std::iter::once(fadt_address)
        .chain(placed.iter().map(|table| table.address))
        .collect();
    let mut tables = vec![
        Table {
            signature: *b"RSDP",
            address: rsdp_address,
            bytes: root::rsdp(xsdt_address),
        },
        Table {
            signature: *b"XSDT",
            address: xsdt_address,
            bytes: root::xsdt(&xsdt_entries),
        },
        Table {
            signature: *b"FACP",
            address: fadt_address,
            bytes: fadt::fadt(&config.power, dsdt_address),
        },
        Table {
            signature: *b"DSDT",
            address: dsdt_address,
            bytes: dsdt,
        },
    ];
    tables.extend(placed);
    Ok(AcpiTables {
        rsdp_address,
        tables,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::checks::{assert_valid_table, u64_at};

    /// The configuration Tidal's VMM uses, with `cpus` vCPUs.
    pub(crate) fn config(cpus: u32) -> AcpiConfig {
        AcpiConfig {
            cpus,
            serials: vec![LegacySerial {
                io_port: 0x3f8,
                irq: 4,
            }],
            power: PowerRegisters {
                sleep_control_port: 0x600,
                sleep_status_port: 0x601,
                reset_port: 0x602,
                reset_value: 1,
            },
            ioapic: IoApic {
                id: 0,
                address: 0xfec0_0000,
                gsi_base: 0,
            },
            lapic_address: 0xfee0_0000,
            ged: None,
            memory_hotplug: None,
            numa: None,
            pvpanic: None,
        }
    }

    pub(crate) const BASE: u64 = 0xe_0000;
    pub(crate) const LIMIT: u64 = 0x10_0000;

    fn table<'a>(tables: &'a AcpiTables, signature: &[u8; 4]) -> &'a Table {
        tables
            .tables
            .iter()
            .find(|table| &table.signature == signature)
            .unwrap()
    }

    /// Asserts the tables sit in order, 16-byte aligned, disjoint and inside the area, each
    /// with a valid length and checksum, and that the RSDP, XSDT and FADT point at them.
    fn assert_consistent(tables: &AcpiTables) {
        assert_eq!(tables.rsdp_address, BASE);
        assert_eq!(tables.tables[0].address, BASE);
        for pair in tables.tables.windows(2) {
            let end = pair[0].address + pair[0].bytes.len() as u64;
            assert!(pair[1].address >= end);
        }
        for table in &tables.tables {
            assert_eq!(table.address % 16, 0);
        }
        let last = tables.tables.last().unwrap();
        assert!(last.address + last.bytes.len() as u64 <= LIMIT);

        for table in &tables.tables[1..] {
            assert_valid_table(&table.bytes, &table.signature);
        }
        let rsdp = &tables.tables[0].bytes;
        let xsdt = table(tables, b"XSDT");
        assert_eq!(u64_at(rsdp, 24), xsdt.address);
        let listed: Vec<u64> = xsdt.bytes[36..]
            .chunks(8)
            .map(|entry| u64::from_le_bytes(entry.try_into().unwrap()))
            .collect();
        let expected: Vec<u64> = tables.tables[2..]
            .iter()
            .filter(|t| &t.signature != b"DSDT")
            .map(|t| t.address)
            .collect();
        assert_eq!(
            listed, expected,
            "the XSDT lists every table but itself and the DSDT"
        );
        let fadt = table(tables, b"FACP");
        assert_eq!(u64_at(&fadt.bytes, 140), table(tables, b"DSDT").address);
    }

    fn signatures(tables: &AcpiTables) -> Vec<&[u8; 4]> {
        tables.tables.iter().map(|table| &table.signature).collect()
    }

    #[test]
    fn base_tables_are_laid_out_and_linked() {
        for cpus in [1, 16] {
            let tables = build_tables(&config(cpus), BASE, LIMIT).unwrap();
            assert_eq!(
                signatures(&tables),
                [b"RSDP", b"XSDT", b"FACP", b"DSDT", b"APIC"]
            );
            assert_consistent(&tables);
        }
    }

    /// `config(cpus)` with every optional part: GED, `slots` DIMM slots, two NUMA nodes, pvpanic.
    pub(crate) fn full_config(cpus: u32, slots: u32) -> AcpiConfig {
        let mut config = config(cpus);
        config.ged = Some(Ged {
            mmio_base: 0xfeb0_0000,
            irq: 5,
        });
        config.memory_hotplug = Some(MemoryHotplug {
            mmio_base: 0xfeb0_1000,
            slots,
        });
        config.numa = Some(crate::numa::tests::two_nodes());
        config.pvpanic = Some(PvPanic {
            mmio_base: 0xfeb0_2000,
        });
        config
    }

    #[test]
    fn numa_tables_follow_the_dsdt_and_are_linked() {
        let tables = build_tables(&full_config(4, 8), BASE, LIMIT).unwrap();
        assert_eq!(
            signatures(&tables),
            [b"RSDP", b"XSDT", b"FACP", b"DSDT", b"APIC", b"SRAT", b"SLIT"]
        );
        assert_consistent(&tables);
    }

    #[test]
    fn the_largest_configuration_fits_the_legacy_area() {
        let mut largest = full_config(255, MAX_MEMORY_SLOTS);
        largest.numa = Some(NumaConfig::single_node(255, Vec::new()));
        assert_consistent(&build_tables(&largest, BASE, LIMIT).unwrap());
    }

    #[test]
    fn errors_in_optional_parts_are_reported() {
        let mut config = full_config(4, 0);
        assert_eq!(
            build_tables(&config, BASE, LIMIT),
            Err(AcpiError::MemorySlotCount(0))
        );
        config.memory_hotplug = None;
        config.cpus = 3;
        assert_eq!(
            build_tables(&config, BASE, LIMIT),
            Err(AcpiError::UnknownApicId {
                apic_id: 3,
                cpus: 3
            })
        );
    }

    #[test]
    fn too_small_an_area_is_an_error() {
        let error = build_tables(&config(1), BASE, BASE + 0x100).unwrap_err();
        assert!(matches!(error, AcpiError::DoesNotFit { .. }), "{error}");
        assert!(build_tables(&config(255), BASE, BASE + 0x400).is_err());
    }
}
