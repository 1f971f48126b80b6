//! Boots the Debian guest kernel with the busybox initramfs under Tidal and checks what the guest
//! sees. These need hardware-backed KVM: run them with `ci/test.sh`, which starts them inside the
//! test host on machines whose /dev/kvm is KVM-PVM.

use std::time::Duration;

use tidal_tests::{Guest, GuestImages};

const MIB: u64 = 1024 * 1024;

/// MemTotal (KiB) must never exceed the configured size, and may fall short of it only by what
/// the kernel keeps for itself: its image and early reservations (a fixed 64 MiB allowance), its
/// page structures (64 bytes per 4 KiB page, 1.6 %) and, once memory reaches above 4 GiB, 64 MiB
/// of swiotlb bounce buffers (5 % allowed for these two). Debian's kernel under QEMU shows
/// 466396 KiB of 512 MiB (89 %) and 5033424 KiB of 5 GiB (96 %).
fn assert_memtotal_close_to(guest: &mut tidal_tests::RunningGuest, configured_bytes: u64) {
    let configured_kib = configured_bytes / 1024;
    let lowest_kib = configured_kib / 100 * 95 - 64 * 1024;
    let memtotal_kib = guest.meminfo_kib("MemTotal");
    println!("MemTotal {memtotal_kib} KiB of {configured_kib} KiB configured");
    if memtotal_kib > configured_kib || memtotal_kib < lowest_kib {
        guest.fail(&format!(
            "MemTotal is {memtotal_kib} KiB, but the guest was given {configured_kib} KiB: \
             expected between {lowest_kib} KiB and {configured_kib} KiB"
        ));
    }
}

/// What tidal says it booted (its `info` line "VM ready: ..."), with the kernel's format.
fn vm_ready_line(guest: &tidal_tests::RunningGuest) -> String {
    let stderr = guest.stderr();
    match stderr.lines().find(|l| l.contains("VM ready:")) {
        Some(line) => line.to_owned(),
        None => guest.fail("tidal logged no \"VM ready\" line"),
    }
}

/// Guests boot the uncompressed vmlinux through PVH, as every other test does.
#[test]
fn one_vcpu_is_seen_by_the_guest() {
    let mut guest = Guest::new()
        .cpus(1)
        .cmdline_extra("tidal_test=one_vcpu")
        .arg("--log-level")
        .arg("info")
        .boot();
    let ready = vm_ready_line(&guest);
    assert!(ready.contains("(ELF vmlinux, PVH)"), "{ready}");
    assert_eq!(guest.nproc(), 1);
    assert_eq!(guest.cpuinfo_processors(), 1);
    // The command line the test passed reached the kernel.
    assert!(guest
        .run_ok("cat /proc/cmdline")
        .contains("tidal_test=one_vcpu"));
}

/// The bzImage the vmlinux came in boots too, through the 64-bit boot protocol, with the
/// command line and the initramfs.
#[test]
fn the_bzimage_boots_through_the_64_bit_boot_protocol() {
    let mut guest = Guest::new()
        .kernel(GuestImages::find().bzimage)
        .cmdline_extra("tidal_test=bzimage")
        .arg("--log-level")
        .arg("info")
        .boot();
    let ready = vm_ready_line(&guest);
    assert!(ready.contains("(bzImage, 64-bit boot protocol)"), "{ready}");
    assert!(guest
        .run_ok("cat /proc/cmdline")
        .contains("tidal_test=bzimage"));
    assert_eq!(guest.poweroff().code(), Some(0));
}

#[test]
fn four_vcpus_are_seen_by_the_guest() {
    let mut guest = Guest::new().cpus(4).boot();
    assert_eq!(guest.nproc(), 4);
    assert_eq!(guest.cpuinfo_processors(), 4);
}

#[test]
fn memtotal_matches_512_mib() {
    let mut guest = Guest::new().memory("512M").boot();
    assert_memtotal_close_to(&mut guest, 512 * MIB);
}

#[test]
fn memtotal_matches_5_gib() {
    // Above 3 GiB the memory is split around the 32-bit device hole; all of it must show.
    let mut guest = Guest::new().memory("5G").boot();
    assert_memtotal_close_to(&mut guest, 5 * 1024 * MIB);
}

#[test]
fn acpi_tables_are_present_and_error_free() {
    let mut guest = Guest::new().cpus(2).boot();
    let tables = guest.run_ok("ls /sys/firmware/acpi/tables");
    for table in ["DSDT", "FACP", "APIC"] {
        if !tables.split_whitespace().any(|t| t == table) {
            guest.fail(&format!(
                "no {table} in /sys/firmware/acpi/tables (found: {tables})"
            ));
        }
    }
    let errors = guest.run("dmesg | grep -E 'ACPI (BIOS )?Error'");
    if errors.status == 0 {
        guest.fail(&format!(
            "the guest kernel reported ACPI errors:\n{}",
            errors.output
        ));
    }
}

#[test]
fn poweroff_ends_tidal_with_exit_code_0() {
    let mut guest = Guest::new().boot();
    let status = guest.poweroff();
    if status.code() != Some(0) {
        guest.fail(&format!(
            "tidal exited with {status} after `poweroff -f`, expected 0"
        ));
    }
}

#[test]
fn reboot_ends_tidal_with_exit_code_0() {
    let mut guest = Guest::new().boot();
    let status = guest.reboot();
    if status.code() != Some(0) {
        guest.fail(&format!(
            "tidal exited with {status} after `reboot -f`, expected 0"
        ));
    }
}

/// With `--serial file=PATH,max=4K` the guest's console goes to the file, not to stdout, and the
/// file keeps only the newest 4 KiB: a kernel that logs its whole boot (no `quiet`) writes far
/// more, so what is left starts with tidal's line counting what was dropped, and the kernel's
/// first lines are gone while its last, the guest's ready line, are there.
#[test]
fn a_serial_output_file_keeps_the_newest_output_within_its_cap() {
    const CAP: u64 = 4096;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("console.log");
    let mut guest = Guest::new()
        .cmdline(tidal_tests::DEFAULT_CMDLINE.replace(" quiet", ""))
        .serial(format!("file={},max=4K", path.display()))
        .spawn();
    let deadline = std::time::Instant::now() + 2 * tidal_tests::DEFAULT_BOOT_TIMEOUT;
    let text = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains(tidal_tests::READY_LINE) {
            break text;
        }
        if let Some(status) = guest.wait_exit(Duration::from_millis(500)) {
            guest.fail(&format!(
                "tidal exited ({status}) before the guest was ready"
            ));
        }
        if std::time::Instant::now() > deadline {
            guest.fail(&format!(
                "the guest's ready line never reached {}; its last lines:\n{}",
                path.display(),
                text.lines()
                    .skip(text.lines().count().saturating_sub(10))
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
    };
    let size = std::fs::metadata(&path).expect("the output file").len();
    let first = text.lines().next().unwrap_or_default();
    println!(
        "{} holds {size} bytes; its first line: {first}",
        path.display()
    );
    assert!(size <= CAP, "{size} bytes in a file capped at {CAP}");
    let dropped: u64 = first
        .strip_prefix("[tidal: ")
        .and_then(|rest| rest.split_once(" bytes of earlier guest output dropped; "))
        .filter(|(_, rest)| *rest == format!("this file keeps at most {CAP} bytes]"))
        .and_then(|(count, _)| count.parse().ok())
        .unwrap_or_else(|| guest.fail(&format!("the file starts with {first:?}")));
    assert!(
        dropped > CAP,
        "only {dropped} bytes dropped of a verbose boot"
    );
    assert!(
        !text.contains("Linux version"),
        "the kernel's first line is still in the file:\n{text}"
    );
    assert!(
        guest.console().is_empty(),
        "guest output reached stdout: {}",
        guest.console_tail(5)
    );
}

/// `--serial2 file=PATH` gives the guest a second port, COM2 (`ttyS1`, in the DSDT beside
/// COM1): what the guest writes there reaches the file and not the console, and the other way
/// round.
#[test]
fn a_second_serial_port_carries_its_own_output() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("com2.log");
    let mut guest = Guest::new()
        .arg("--serial2")
        .arg(format!("file={}", path.display()))
        .boot();
    assert!(guest.path_exists("/sys/bus/acpi/devices/PNP0501:01"));
    guest.run_ok("stty -F /dev/ttyS1 raw -echo && echo only-on-com2 > /dev/ttyS1");
    let console_before = guest.console();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let written = loop {
        let written = std::fs::read_to_string(&path).unwrap_or_default();
        if written.contains("only-on-com2") || std::time::Instant::now() > deadline {
            break written;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(written, "only-on-com2\n", "COM2's file");
    // The harness's shell does not echo its input: the words can only be output.
    assert!(
        !console_before.contains("only-on-com2"),
        "COM2's output reached the console"
    );
}
