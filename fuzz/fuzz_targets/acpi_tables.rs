//! ACPI table generation (`tidal_acpi::build_tables`) from arbitrary valid configurations, two
//! ways:
//!
//! - the VMM's machines: a command line `tidal` accepts (any `--cpus`, any `--memory`, up to
//!   eight `--numa` nodes), through `VmConfig` into `tidal_vmm::vm::acpi_tables`, laid out in
//!   the VMM's ACPI area;
//! - any configuration `AcpiConfig` documents as valid (1 to 255 vCPUs, 1 to 256 slots, NUMA
//!   nodes with distinct proximity domains, each vCPU in at most one node, non-empty memory
//!   ranges, a SLIT with domains 0..n and distances 10 to itself and 11 to 254 to others; any
//!   addresses, ports and interrupts), laid out from any 16-byte aligned address.
//!
//! Either way the tables must build (an error for a valid configuration is a bug) and each must
//! be right: the length field is the table's length, the bytes sum to zero (the RSDP's first 20
//! bytes too), the tables are 16-byte aligned, in order, disjoint and inside the area, the RSDP,
//! XSDT and FADT point at the others, the MADT and SRAT subtables and the DSDT's top-level AML
//! objects fill their tables exactly, and the MADT and SRAT list every vCPU and range. An area
//! that ends at the last table still holds them all; one byte less is `DoesNotFit`.

#![no_main]

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;

use clap::Parser;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use tidal_acpi::{
    build_tables, AcpiConfig, AcpiError, AcpiTables, Ged, IoApic, LegacySerial, MemoryHotplug,
    MemoryRange, NumaConfig, NumaNode, PowerRegisters, PvPanic, Table, MAX_MEMORY_SLOTS,
};
use tidal_vmm::config::{Cli, VmConfig, MAX_VCPUS};
use tidal_vmm::layout::{ACPI_END, ACPI_START, MEMORY_BLOCK_SIZE};

fuzz_target!(|data: &[u8]| {
    let mut input = Unstructured::new(data);
    // Running out of input only makes the configuration smaller.
    let _ = match input.arbitrary::<bool>() {
        Ok(true) => vmm_machine(&mut input),
        _ => any_configuration(&mut input),
    };
});

/// The largest MADT vCPU count: 8-bit APIC ids, 255 being the broadcast id.
const MAX_CPUS: u32 = 255;
/// Room enough for any configuration made from a fuzz input.
const AREA: u64 = 16 << 20;

/// A machine the VMM accepts on its command line, in the VMM's ACPI area.
fn vmm_machine(input: &mut Unstructured) -> Result<()> {
    let cpus = input.int_in_range(1..=MAX_VCPUS)?;
    let mut memory = format!("size={}M", input.int_in_range(64..=(1_u32 << 20))?);
    if input.arbitrary()? {
        let blocks = input.int_in_range(1..=8192_u64)?;
        memory += &format!(",hotplug_size={}", blocks * MEMORY_BLOCK_SIZE);
        if input.arbitrary()? {
            memory += &format!(",slots={}", input.int_in_range(1..=MAX_MEMORY_SLOTS)?);
        }
    }
    let mut args = vec![
        "tidal".to_owned(),
        "--kernel".to_owned(),
        kernel(),
        "--cpus".to_owned(),
        cpus.to_string(),
    ];
    let nodes = numa_nodes(input, cpus)?;
    if nodes.is_empty() {
        args.extend(["--memory".to_owned(), memory]);
    } else {
        args.extend(
            nodes
                .iter()
                .flat_map(|node| ["--numa".to_owned(), node.clone()]),
        );
    }
    let cli = Cli::try_parse_from(&args).expect("a valid command line");
    // Some memory sizes are refused (too large for hotplug, say): not this target's business.
    let Ok(config) = VmConfig::try_from(&cli) else {
        return Ok(());
    };
    let tables = tidal_vmm::vm::acpi_tables(&config)
        .unwrap_or_else(|error| panic!("no ACPI tables for {args:?}: {error}"));
    check(&tables, ACPI_START, ACPI_END);
    let madt = table(&tables, b"APIC");
    assert_eq!(
        count(subtables(madt, 44), 0),
        usize::from(cpus),
        "MADT vCPUs"
    );
    let has = |signature: &[u8; 4]| tables.tables.iter().any(|t| &t.signature == signature);
    assert_eq!(
        has(b"SRAT"),
        config.memory.hotplug_size > 0 || config.nodes.len() > 1,
        "an SRAT exactly when there is a hotplug region or more than one node"
    );
    assert_eq!(
        has(b"SLIT"),
        config.nodes.len() > 1,
        "a SLIT exactly with nodes"
    );
    Ok(())
}

/// Up to eight `--numa` options (none: the machine has one node), each node with a share of
/// the vCPUs, boot memory and maybe a share of the hotplug region and distances.
fn numa_nodes(input: &mut Unstructured, cpus: u8) -> Result<Vec<String>> {
    let count = input.int_in_range(0..=cpus.min(8))?;
    let mut nodes = Vec::new();
    for id in 0..count {
        // Node `id` holds vCPUs id, id + count, id + 2 * count, ...
        let vcpus: Vec<String> = (id..cpus)
            .step_by(usize::from(count))
            .map(|c| c.to_string())
            .collect();
        let memory = input.int_in_range(1..=64_u64)? * MEMORY_BLOCK_SIZE;
        let hotplug = input.int_in_range(0..=64_u64)? * MEMORY_BLOCK_SIZE;
        let mut node = format!(
            "id={id},cpus=[{}],memory={memory},hotplug_size={hotplug}",
            vcpus.join(",")
        );
        if count > 1 && input.arbitrary()? {
            let to = (id + 1) % count;
            node += &format!(",distance={to}@{}", input.int_in_range(11..=254_u8)?);
        }
        if id > 0 && input.arbitrary()? {
            node += ",hotpluggable=on";
        }
        nodes.push(node);
    }
    Ok(nodes)
}

/// A kernel file `VmConfig` accepts: the bzImage magic where it belongs. Unnamed, so nothing
/// is left behind; the path is the descriptor's.
fn kernel() -> String {
    static KERNEL: OnceLock<File> = OnceLock::new();
    let file = KERNEL.get_or_init(|| {
        let mut file = tempfile::tempfile().expect("a temporary file");
        let mut image = vec![0; 0x202];
        image.extend_from_slice(b"HdrS");
        file.write_all(&image).expect("a kernel header");
        file
    });
    format!("/proc/self/fd/{}", file.as_raw_fd())
}

/// Any valid configuration, laid out anywhere.
fn any_configuration(input: &mut Unstructured) -> Result<()> {
    let config = configuration(input)?;
    if input.int_in_range(0..=15_u8)? == 0 {
        // At the top of the address space nothing fits, but that is an answer, not a panic.
        let start = (u64::MAX - input.int_in_range(0..=u64::from(u16::MAX))?) & !15;
        match build_tables(&config, start, u64::MAX) {
            Ok(tables) => check(&tables, start, u64::MAX),
            Err(AcpiError::DoesNotFit { .. }) => {}
            Err(error) => panic!("{config:#?} at {start:#x}: {error}"),
        }
        return Ok(());
    }
    let start = input.int_in_range(0..=(1_u64 << 48))? & !15;
    let tables = build_tables(&config, start, start + AREA)
        .unwrap_or_else(|error| panic!("no tables for {config:#?}: {error}"));
    check(&tables, start, start + AREA);
    let madt = table(&tables, b"APIC");
    assert_eq!(
        count(subtables(madt, 44), 0),
        config.cpus as usize,
        "MADT vCPUs"
    );
    if let Some(numa) = &config.numa {
        let srat = subtables(table(&tables, b"SRAT"), 48);
        let cpus: usize = numa.nodes.iter().map(|node| node.apic_ids.len()).sum();
        let ranges: usize = numa.nodes.iter().map(|node| node.memory.len()).sum();
        assert_eq!(count(srat.clone(), 0), cpus, "SRAT vCPUs");
        assert_eq!(count(srat, 1), ranges, "SRAT memory ranges");
    }

    // The tables again in areas just big enough and one byte short: now and then, as the
    // layout hardly depends on the configuration and each build costs as much as the first.
    if !input.ratio(1, 4)? {
        return Ok(());
    }
    let last = tables.tables.last().expect("tables");
    let end = last.address + len(last);
    assert_eq!(
        build_tables(&config, start, end).as_ref(),
        Ok(&tables),
        "an area ending at the last table"
    );
    let short = build_tables(&config, start, end - 1);
    assert!(
        matches!(short, Err(AcpiError::DoesNotFit { .. })),
        "an area one byte short: {short:?}"
    );
    Ok(())
}

fn configuration(input: &mut Unstructured) -> Result<AcpiConfig> {
    let cpus = input.int_in_range(1..=MAX_CPUS)?;
    // None, COM1, or COM1 and COM2, anywhere.
    let serials = (0..input.int_in_range(0..=2)?)
        .map(|_| {
            Ok(LegacySerial {
                io_port: input.arbitrary()?,
                irq: input.arbitrary()?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let power = PowerRegisters {
        sleep_control_port: input.arbitrary()?,
        sleep_status_port: input.arbitrary()?,
        reset_port: input.arbitrary()?,
        reset_value: input.arbitrary()?,
    };
    let ioapic = IoApic {
        id: input.arbitrary()?,
        address: input.arbitrary()?,
        gsi_base: input.arbitrary()?,
    };
    let lapic_address = input.arbitrary()?;
    let ged = match input.arbitrary()? {
        true => Some(Ged {
            mmio_base: input.arbitrary()?,
            irq: input.arbitrary()?,
        }),
        false => None,
    };
    let memory_hotplug = match input.arbitrary()? {
        true => Some(MemoryHotplug {
            mmio_base: input.arbitrary()?,
            slots: input.int_in_range(1..=MAX_MEMORY_SLOTS)?,
        }),
        false => None,
    };
    let numa = match input.arbitrary()? {
        true => Some(numa(input, cpus)?),
        false => None,
    };
    let pvpanic = match input.arbitrary()? {
        true => Some(PvPanic {
            mmio_base: input.arbitrary()?,
        }),
        false => None,
    };
    Ok(AcpiConfig {
        cpus,
        serials,
        power,
        ioapic,
        lapic_address,
        ged,
        memory_hotplug,
        numa,
        pvpanic,
    })
}

/// Valid NUMA nodes for `cpus` vCPUs, with or without distances.
fn numa(input: &mut Unstructured, cpus: u32) -> Result<NumaConfig> {
    let count: u32 = input.int_in_range(1..=16)?;
    let with_distances: bool = input.arbitrary()?;
    // Distinct domains; with distances exactly 0..count, in any order.
    let domains: Vec<u32> = if with_distances {
        let mut left: Vec<u32> = (0..count).collect();
        let mut domains = Vec::new();
        while !left.is_empty() {
            let index = input.choose_index(left.len()).unwrap_or(0);
            domains.push(left.remove(index));
        }
        domains
    } else {
        let mut seen = BTreeSet::new();
        let mut domains = Vec::new();
        while domains.len() < count as usize {
            let mut domain: u32 = input.arbitrary()?;
            while !seen.insert(domain) {
                domain = domain.wrapping_add(1);
            }
            domains.push(domain);
        }
        domains
    };
    let mut nodes: Vec<NumaNode> = domains
        .into_iter()
        .map(|proximity_domain| NumaNode {
            proximity_domain,
            apic_ids: Vec::new(),
            memory: Vec::new(),
        })
        .collect();
    // Each vCPU in one node or none: in runs of consecutive ids, or one by one.
    let one_by_one: bool = input.arbitrary()?;
    let mut owner = 0;
    for apic_id in 0..cpus {
        if one_by_one || input.ratio(1, 8)? {
            owner = input.int_in_range(0..=count)?;
        }
        if let Some(node) = nodes.get_mut(owner as usize) {
            node.apic_ids.push(apic_id);
        }
    }
    for node in &mut nodes {
        for _ in 0..input.int_in_range(0..=4)? {
            node.memory.push(MemoryRange {
                base: input.arbitrary()?,
                size: input.int_in_range(1..=u64::MAX)?,
                hotpluggable: input.arbitrary()?,
            });
        }
    }
    let distances = match with_distances {
        true => {
            let mut rows = Vec::new();
            for from in 0..count {
                let mut row = Vec::new();
                for to in 0..count {
                    row.push(match from == to {
                        true => 10,
                        false => input.int_in_range(11..=254)?,
                    });
                }
                rows.push(row);
            }
            Some(rows)
        }
        false => None,
    };
    Ok(NumaConfig { nodes, distances })
}

fn len(table: &Table) -> u64 {
    table.bytes.len() as u64
}

fn table<'a>(tables: &'a AcpiTables, signature: &[u8; 4]) -> &'a [u8] {
    &tables
        .tables
        .iter()
        .find(|t| &t.signature == signature)
        .unwrap_or_else(|| panic!("no {}", String::from_utf8_lossy(signature)))
        .bytes
}

fn sums_to_zero(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)) == 0
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}

/// Every check on a set of tables laid out in `[start, limit)`.
fn check(tables: &AcpiTables, start: u64, limit: u64) {
    let signatures: Vec<String> = tables
        .tables
        .iter()
        .map(|t| String::from_utf8_lossy(&t.signature).into_owned())
        .collect();
    assert_eq!(
        signatures[..4],
        ["RSDP", "XSDT", "FACP", "DSDT"],
        "the tables' order"
    );
    assert_eq!(tables.rsdp_address, start);
    assert_eq!(tables.tables[0].address, start);

    let mut free_from = start;
    for table in &tables.tables {
        let name = String::from_utf8_lossy(&table.signature);
        assert_eq!(table.address % 16, 0, "{name} is not 16-byte aligned");
        assert!(
            table.address >= free_from,
            "{name} overlaps the table before"
        );
        let end = table.address.checked_add(len(table));
        assert!(
            end.is_some_and(|end| end <= limit),
            "{name} ends past the area"
        );
        free_from = end.unwrap_or(u64::MAX);
    }

    let rsdp = &tables.tables[0].bytes;
    assert_eq!(rsdp.len(), 36, "RSDP length");
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert!(sums_to_zero(&rsdp[..20]), "RSDP checksum");
    assert!(sums_to_zero(rsdp), "RSDP extended checksum");
    assert_eq!(rsdp[15], 2, "RSDP revision");
    assert_eq!(u32_at(rsdp, 20), 36, "RSDP length field");
    assert_eq!(u64_at(rsdp, 24), tables.tables[1].address, "RSDP -> XSDT");

    for table in &tables.tables[1..] {
        let name = String::from_utf8_lossy(&table.signature);
        let bytes = &table.bytes;
        assert!(bytes.len() >= 36, "{name} is shorter than a header");
        assert_eq!(bytes[..4], table.signature, "{name}'s signature");
        assert_eq!(
            u32_at(bytes, 4) as usize,
            bytes.len(),
            "{name}'s length field"
        );
        assert!(sums_to_zero(bytes), "{name}'s checksum");
    }

    let xsdt = &tables.tables[1].bytes;
    let listed: Vec<u64> = xsdt[36..]
        .chunks(8)
        .map(|entry| u64::from_le_bytes(entry.try_into().expect("8-byte entries")))
        .collect();
    let expected: Vec<u64> = tables.tables[2..]
        .iter()
        .filter(|t| &t.signature != b"DSDT")
        .map(|t| t.address)
        .collect();
    assert_eq!(
        listed, expected,
        "the XSDT lists all but itself and the DSDT"
    );
    let fadt = &tables.tables[2].bytes;
    assert_eq!(u64_at(fadt, 140), tables.tables[3].address, "FADT -> DSDT");

    let madt = table(tables, b"APIC");
    subtables(madt, 44);
    if let Some(srat) = tables.tables.iter().find(|t| &t.signature == b"SRAT") {
        subtables(&srat.bytes, 48);
    }
    if let Some(slit) = tables.tables.iter().find(|t| &t.signature == b"SLIT") {
        let nodes = u64_at(&slit.bytes, 36);
        let nodes = usize::try_from(nodes).expect("a node count");
        assert_eq!(slit.bytes.len(), 44 + nodes * nodes, "SLIT size");
    }
    dsdt_objects(&tables.tables[3].bytes);
}

/// The (type, length) subtables after a table's fixed part, which they must fill exactly.
fn subtables(table: &[u8], fixed: usize) -> Vec<u8> {
    let mut types = Vec::new();
    let mut at = fixed;
    while at < table.len() {
        let len = table.get(at + 1).map_or(0, |&len| usize::from(len));
        assert!(
            len >= 2 && at + len <= table.len(),
            "a subtable of length {len} at {at} in a table of {}",
            table.len()
        );
        types.push(table[at]);
        at += len;
    }
    types
}

fn count(types: Vec<u8>, kind: u8) -> usize {
    types.into_iter().filter(|&t| t == kind).count()
}

/// An AML PkgLength at `at`: the package's length (its own bytes included).
fn pkg_length(aml: &[u8], at: usize) -> usize {
    let lead = aml[at];
    let follow = usize::from(lead >> 6);
    if follow == 0 {
        return usize::from(lead & 0x3f);
    }
    let mut length = usize::from(lead & 0x0f);
    for i in 0..follow {
        length |= usize::from(aml[at + 1 + i]) << (4 + 8 * i);
    }
    length
}

/// The DSDT's body: `Name (_S5_, Package ...)`, then `Scope (\_SB_)` to the end of the table,
/// holding only devices, each ending where the next begins.
fn dsdt_objects(dsdt: &[u8]) {
    let mut at = 36;
    assert_eq!(
        dsdt[at..at + 6],
        [0x08, b'_', b'S', b'5', b'_', 0x12],
        "_S5_"
    );
    at += 6 + pkg_length(dsdt, at + 6);
    assert_eq!(dsdt[at], 0x10, "a Scope after _S5_");
    let scope_end = at + 1 + pkg_length(dsdt, at + 1);
    assert_eq!(scope_end, dsdt.len(), "the Scope's length");
    at += 1 + usize::from(dsdt[at + 1] >> 6) + 1;
    assert_eq!(dsdt[at..at + 5], *b"\\_SB_", "the Scope's name");
    at += 5;
    while at < scope_end {
        assert_eq!(dsdt[at..at + 2], [0x5b, 0x82], "a Device at {at}");
        at += 2 + pkg_length(dsdt, at + 2);
        assert!(at <= scope_end, "a Device past the Scope's end");
    }
}
