//! Checks the tables with ACPICA's own tools: `iasl -d` must decode every table without an
//! error or warning, the disassembled DSDT must compile again cleanly, and the memory-hotplug
//! methods must run in ACPICA's interpreter (`acpiexec`). Both tools come from Debian's
//! acpica-tools; without them these tests fail rather than pass unchecked.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tests::{config, full_config, BASE, LIMIT};
use crate::{build_tables, AcpiConfig, AcpiTables};

/// A scratch directory removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tidal-acpi-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        ScratchDir(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the ACPICA `tool` with `args` in `dir`; returns its stdout and stderr together.
fn acpica(tool: &str, dir: &Path, args: &[&str]) -> String {
    let output = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "\n\n*** cannot run `{tool}` ({error}). These tests check the ACPI tables with \
                 ACPICA's tools: install them (Debian/Ubuntu: apt-get install \
                 acpica-tools). ***\n\n"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{tool} {args:?} failed:\n{text}");
    text
}

/// Lines that report a problem.
fn complaints(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|line| {
            let lower = line.to_ascii_lowercase();
            ["error", "warning", "invalid", "unknown", "****"]
                .iter()
                .any(|word| lower.contains(word))
        })
        .filter(|line| !line.contains("0 Errors, 0 Warnings"))
        .collect()
}

/// Disassembles `signatures` of `tables` and returns each table's `.dsl` text.
fn disassemble(dir: &Path, tables: &AcpiTables, signatures: &[&[u8; 4]]) -> Vec<String> {
    signatures
        .iter()
        .map(|signature| {
            let table = tables
                .tables
                .iter()
                .find(|table| &table.signature == *signature)
                .unwrap_or_else(|| panic!("no {} table", String::from_utf8_lossy(*signature)));
            let name = String::from_utf8_lossy(*signature).to_ascii_lowercase();
            std::fs::write(dir.join(format!("{name}.dat")), &table.bytes).unwrap();
            let log = acpica("iasl", dir, &["-d", &format!("{name}.dat")]);
            let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap();
            let problems: Vec<_> = complaints(&log)
                .into_iter()
                .chain(complaints(&dsl))
                .collect();
            assert!(
                problems.is_empty(),
                "iasl -d {name}: {problems:#?}\n{log}\n{dsl}"
            );
            dsl
        })
        .collect()
}

/// Builds the tables for `config`, checks them with iasl, and returns the `.dsl` texts.
fn check_with_iasl(name: &str, config: &AcpiConfig, signatures: &[&[u8; 4]]) -> Vec<String> {
    let dir = ScratchDir::new(name);
    let tables = build_tables(config, BASE, LIMIT).unwrap();
    let dsls = disassemble(&dir.0, &tables, signatures);
    if signatures.contains(&b"DSDT") {
        let log = acpica("iasl", &dir.0, &["-p", "recompiled", "dsdt.dsl"]);
        let problems = complaints(&log);
        assert!(
            problems.is_empty(),
            "recompiling the DSDT: {problems:#?}\n{log}"
        );
    }
    dsls
}

#[test]
fn base_tables_disassemble_cleanly() {
    let dsls = check_with_iasl("base", &config(4), &[b"DSDT", b"FACP", b"APIC", b"XSDT"]);
    assert!(dsls[0].contains("Name (_S5, Package (0x02)"), "{}", dsls[0]);
    assert!(dsls[0].contains("EisaId (\"PNP0501\")"), "{}", dsls[0]);
}

#[test]
fn hotplug_dsdt_disassembles_and_recompiles_cleanly() {
    for slots in [8, 32] {
        let dsls = check_with_iasl(
            &format!("hotplug-{slots}"),
            &full_config(4, slots),
            &[b"DSDT"],
        );
        let dsl = &dsls[0];
        assert_eq!(
            dsl.matches("EisaId (\"PNP0C80\")").count(),
            slots as usize,
            "{dsl}"
        );
        for expected in [
            "Device (MHPC)",
            "Device (GED)",
            "\"ACPI0013\"",
            "EisaId (\"PNP0C0C\")",
        ] {
            assert!(dsl.contains(expected), "no {expected} in\n{dsl}");
        }
    }
}

/// The pvpanic device, as iasl reads it back: QEMU's id and the one-byte register.
#[test]
fn pvpanic_device_disassembles_cleanly() {
    let mut config = config(1);
    config.pvpanic = Some(crate::PvPanic {
        mmio_base: 0xfeb0_2000,
    });
    let dsls = check_with_iasl("pvpanic", &config, &[b"DSDT"]);
    let dsl = &dsls[0];
    let device = dsl
        .find("Device (PEVT)")
        .map(|start| &dsl[start..])
        .unwrap_or_else(|| panic!("no Device (PEVT) in\n{dsl}"));
    for expected in [
        "Name (_HID, \"QEMU0001\")",
        "Memory32Fixed (ReadWrite,",
        "0xFEB02000,         // Address Base",
        "0x00000001,         // Address Length",
    ] {
        assert!(device.contains(expected), "no {expected} in\n{dsl}");
    }
}

#[test]
fn srat_and_slit_disassemble_cleanly() {
    let dsls = check_with_iasl("numa", &full_config(4, 8), &[b"SRAT", b"SLIT"]);
    let srat = &dsls[0];
    assert_eq!(
        srat.matches("[Processor Local APIC/SAPIC Affinity]")
            .count(),
        4,
        "{srat}"
    );
    assert_eq!(srat.matches("[Memory Affinity]").count(), 4, "{srat}");
    assert_eq!(srat.matches("Hot Pluggable : 1").count(), 2, "{srat}");
    assert!(
        dsls[1].contains("Localities : 0000000000000002"),
        "{}",
        dsls[1]
    );
}

/// The bytes of the buffer acpiexec printed as the result of evaluating `method`.
fn returned_buffer(log: &str, method: &str) -> Vec<u8> {
    let start = log
        .find(&format!("Evaluation of {method} returned"))
        .unwrap_or_else(|| panic!("{method} returned nothing:\n{log}"));
    log[start..]
        .lines()
        .skip(2) // "Evaluation of ...", "[Buffer] Length ..."
        .map_while(|line| line.trim().split_once(": "))
        .flat_map(|(_, dump)| {
            let hex = dump.split("//").next().unwrap_or_default();
            hex.split_whitespace()
                .map(|byte| u8::from_str_radix(byte, 16).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Runs the memory-hotplug methods in ACPICA's interpreter. acpiexec backs operation regions
/// with plain memory, so the selector, `_OST` event and status written by `_OST` (offsets 0, 4
/// and 8) read back as the slot's base (0x10_0000_0002) and length (0x20): that checks that the
/// 64-bit fields combine two dwords low half first and that `_CRS` fills the descriptor right.
/// The pvpanic device's `_STA` and `_CRS` run too.
#[test]
fn hotplug_methods_run_in_acpica() {
    let dir = ScratchDir::new("acpiexec");
    let tables = build_tables(&full_config(4, 8), BASE, LIMIT).unwrap();
    let dsdt = tables
        .tables
        .iter()
        .find(|t| &t.signature == b"DSDT")
        .unwrap();
    std::fs::write(dir.0.join("dsdt.dat"), &dsdt.bytes).unwrap();
    let commands = [
        "execute \\_SB.ME02._OST 0x10 0x20 (00)",
        "execute \\_SB.ME02._CRS",
        "execute \\_SB.ME02._STA",
        "execute \\_SB.ME02._PXM",
        "execute \\_SB.ME02._EJ0 1",
        "execute \\_SB.MHPC.MSCN",
        "execute \\_SB.GED._EVT 5",
        "execute \\_SB.PEVT._STA",
        "execute \\_SB.PEVT._CRS",
    ];
    let log = acpica(
        "acpiexec",
        &dir.0,
        &["-b", &commands.join("; "), "dsdt.dat"],
    );
    let problems: Vec<_> = complaints(&log)
        .into_iter()
        .chain(log.lines().filter(|line| line.contains("Exception")))
        .collect();
    assert!(problems.is_empty(), "{problems:#?}\n{log}");

    let crs = returned_buffer(&log, "\\_SB.ME02._CRS");
    let qword = |offset: usize| u64::from_le_bytes(crs[offset..offset + 8].try_into().unwrap());
    assert_eq!(crs[0], 0x8a, "QWord address space descriptor:\n{log}");
    assert_eq!(qword(14), 0x10_0000_0002, "minimum");
    assert_eq!(qword(22), 0x10_0000_0021, "maximum");
    assert_eq!(qword(38), 0x20, "length");

    // Memory32Fixed (ReadWrite, 0xFEB02000, 1) and the end tag: the pvpanic register. A buffer
    // this short is printed on the line of its length.
    let pvpanic = &log[log
        .find("Evaluation of \\_SB.PEVT._CRS returned")
        .unwrap_or_else(|| panic!("PEVT._CRS returned nothing:\n{log}"))..];
    assert!(
        pvpanic
            .lines()
            .nth(1)
            .is_some_and(|line| line.contains("86 09 00 01 00 20 B0 FE 01 00 00 00 79 00")),
        "{log}"
    );
}
