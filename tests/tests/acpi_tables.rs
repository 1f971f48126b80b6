//! `tidal --dump-acpi DIR` writes the ACPI tables it would give the guest, without booting (and
//! without /dev/kvm); ACPICA's disassembler must read every one of them without complaint.
//! Needs `iasl` (Debian package acpica-tools; ci/test.sh installs it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tidal_tests::{run_tidal, GuestImages};

/// A fresh, empty directory, removed when dropped.
fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create a temporary directory")
}

/// Dumps the tables of a VM with `cpus` vCPUs and 1 GiB into `dir`; returns the .dat files.
fn dump_tables(dir: &Path, cpus: u32) -> Vec<PathBuf> {
    dump_tables_with_memory(dir, cpus, "size=1G")
}

/// Dumps the tables of a VM with `cpus` vCPUs and this `--memory` into `dir`.
fn dump_tables_with_memory(dir: &Path, cpus: u32, memory: &str) -> Vec<PathBuf> {
    let kernel = GuestImages::find().kernel;
    let out = run_tidal(
        [
            "--kernel".as_ref(),
            kernel.as_os_str(),
            "--cpus".as_ref(),
            cpus.to_string().as_ref(),
            "--memory".as_ref(),
            memory.as_ref(),
            "--dump-acpi".as_ref(),
            dir.as_os_str(),
        ],
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "tidal --dump-acpi failed ({}):\n{}",
        out.status,
        out.stderr
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read the dump directory")
        .map(|entry| entry.expect("read a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "dat"))
        .collect();
    files.sort();
    files
}

/// The RSDP: signature, the ACPI 1.0 checksum over 20 bytes, and for revision 2 and later the
/// length and the extended checksum over the whole structure.
fn check_rsdp(bytes: &[u8]) {
    assert!(bytes.len() >= 20, "RSDP.dat is only {} bytes", bytes.len());
    assert_eq!(
        &bytes[0..8],
        b"RSD PTR ",
        "RSDP.dat has the wrong signature"
    );
    let sum = |b: &[u8]| b.iter().fold(0u8, |acc, x| acc.wrapping_add(*x));
    assert_eq!(
        sum(&bytes[0..20]),
        0,
        "RSDP: the 20-byte checksum does not sum to zero"
    );
    if bytes[15] >= 2 {
        assert_eq!(
            bytes.len(),
            36,
            "RSDP revision {} should be 36 bytes",
            bytes[15]
        );
        let length = u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
        assert_eq!(length, 36, "RSDP: the length field says {length}");
        assert_eq!(
            sum(bytes),
            0,
            "RSDP: the extended checksum does not sum to zero"
        );
    }
}

fn name_of(path: &Path) -> String {
    path.file_stem()
        .expect("a file name")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn dump_acpi_writes_valid_tables() {
    let dir = temp_dir();
    let files = dump_tables(dir.path(), 2);
    let names: Vec<String> = files.iter().map(|f| name_of(f)).collect();
    for required in ["DSDT", "FACP", "APIC"] {
        assert!(
            names.iter().any(|n| n == required),
            "no {required}.dat among the dumped tables {names:?}"
        );
    }

    for file in &files {
        let name = name_of(file);
        let bytes = std::fs::read(file).expect("read a table");
        if name == "RSDP" {
            check_rsdp(&bytes);
        } else {
            // Every other table has the standard 36-byte header.
            assert!(
                bytes.len() >= 36,
                "{name}.dat is only {} bytes",
                bytes.len()
            );
            assert_eq!(
                &bytes[0..4],
                name.as_bytes(),
                "{name}.dat does not start with its signature"
            );
            let length = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
            assert_eq!(
                usize::try_from(length).expect("u32 fits usize"),
                bytes.len(),
                "{name}.dat: header length differs from the file size"
            );
            if name != "FACS" {
                let sum = bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
                assert_eq!(sum, 0, "{name}.dat: checksum does not sum to zero");
            }
        }
    }
}

#[test]
fn iasl_disassembles_every_dumped_table() {
    let dir = temp_dir();
    let files = dump_tables(dir.path(), 2);
    assert_every_table_disassembles(dir.path(), &files);
}

/// With a hotplug region: 32 memory devices in the DSDT, the GED, and an SRAT whose hotplug
/// range is enabled and hot-pluggable.
#[test]
fn hotplug_tables_disassemble_and_the_srat_marks_the_region() {
    let dir = temp_dir();
    let files = dump_tables_with_memory(dir.path(), 4, "size=1G,hotplug_size=8G,slots=32");
    assert_every_table_disassembles(dir.path(), &files);
    let dsdt = std::fs::read_to_string(dir.path().join("DSDT.dsl")).expect("read DSDT.dsl");
    assert_eq!(
        dsdt.matches("PNP0C80").count(),
        32,
        "one memory device per slot"
    );
    assert!(dsdt.contains("ACPI0013"), "no GED in the DSDT");
    let srat = std::fs::read_to_string(dir.path().join("SRAT.dsl")).expect("read SRAT.dsl");
    assert_eq!(
        srat.matches("Processor Local APIC/SAPIC Affinity").count(),
        4
    );
    assert!(
        srat.contains("Base Address : 0000000100000000") && srat.contains("Hot Pluggable : 1"),
        "the SRAT does not describe the hotplug region at 4 GiB:\n{srat}"
    );
}

/// `iasl -d` reads every table but the RSDP without an error and writes its .dsl.
fn assert_every_table_disassembles(dir: &Path, files: &[PathBuf]) {
    assert!(!files.is_empty(), "tidal --dump-acpi wrote no tables");
    for file in files {
        let name = name_of(file);
        // iasl takes no RSDP on its own ("does not contain a valid ACPI table"); the test above
        // checks it.
        if name == "RSDP" {
            continue;
        }
        let out = Command::new("iasl")
            .arg("-d")
            .arg(file)
            .current_dir(dir)
            .output()
            .expect("cannot run iasl: install the Debian package acpica-tools");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "iasl -d {name}.dat failed:\n{text}");
        assert!(
            !text.contains("Error"),
            "iasl -d {name}.dat reported errors:\n{text}"
        );
        assert!(
            file.with_extension("dsl").is_file(),
            "iasl -d {name}.dat wrote no {name}.dsl:\n{text}"
        );
    }
}

#[test]
fn madt_has_one_local_apic_per_vcpu() {
    let dir = temp_dir();
    dump_tables(dir.path(), 4);
    let out = Command::new("iasl")
        .arg("-d")
        .arg("APIC.dat")
        .current_dir(dir.path())
        .output()
        .expect("cannot run iasl: install the Debian package acpica-tools");
    assert!(out.status.success(), "iasl -d APIC.dat failed");
    let dsl = std::fs::read_to_string(dir.path().join("APIC.dsl")).expect("read APIC.dsl");
    let local_apics = dsl
        .lines()
        .filter(|l| l.contains("[Processor Local APIC]") || l.contains("[Processor Local x2APIC]"))
        .count();
    assert_eq!(local_apics, 4, "the MADT of a 4-vCPU VM:\n{dsl}");
}
