//! Elastic memory end to end: a Linux guest under Tidal gets DIMMs plugged and ejected through
//! the REST API (and tidalctl), and the tests check what the guest itself sees, what the API
//! reports, and what the host gets back. Like boot.rs, these need hardware-backed KVM and run in
//! the test host through `ci/test.sh` elsewhere.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tidal_api::{
    AddMemoryRequest, ApiClient, ClientError, DimmState, Endpoint, RemoveMemoryRequest,
    ResizeRequest,
};
use tidal_tests::{tidal_binary, Guest, RunningGuest, GROW_TMPFS};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const BLOCK: u64 = 128 * MIB;
/// The longest any API call may take: longer than every operation timeout the tests ask for, so
/// only a server that stopped answering hits it (and fails the test rather than hanging it).
const API_TIMEOUT: Duration = Duration::from_secs(900);

// SMP_UNDER_EMULATION: the tests that move a lot of data in and out of DIMMs boot one vCPU.
// In the test host (QEMU TCG emulating SVM, with kvm_amd inside) guests die of a triple fault at
// random, and most often with 2 or 4 vCPUs under heavy memory traffic (see docs/testing.md);
// SMP hotplug itself is covered by `bad_hotplug_requests_get_clear_errors_from_the_real_vmm`
// (4 vCPUs).

/// A booted guest with a hotplug region and the API client for it.
struct ElasticVm {
    guest: RunningGuest,
    api: ApiClient,
    socket: PathBuf,
    /// Holds the API socket; removed with the VM.
    _dir: tempfile::TempDir,
}

impl ElasticVm {
    /// Boots `guest` with `memory` (a `--memory` option) and an API socket.
    fn boot(guest: Guest, memory: &str) -> Self {
        let dir = tempfile::tempdir().expect("create the socket directory");
        let socket = dir.path().join("api.sock");
        let guest = guest
            .memory(memory)
            .arg("--api-socket")
            .arg(&socket)
            .arg("--log-level")
            .arg("info")
            .boot();
        Self {
            api: ApiClient::new(&socket).with_timeout(API_TIMEOUT),
            socket,
            guest,
            _dir: dir,
        }
    }

    /// The default elastic VM: 1 GiB of boot RAM and an 8 GiB hotplug region.
    fn default_boot(guest: Guest) -> Self {
        Self::boot(guest, "size=1G,hotplug_size=8G")
    }

    /// Resizes through the API, giving the guest up to 10 minutes: under emulation (the test
    /// host) migrating a GiB of data out of a DIMM takes close to a minute.
    fn resize(&mut self, bytes: u64) {
        if let Err(e) = self.api.resize(&ResizeRequest {
            desired_ram: bytes,
            timeout_secs: Some(600),
        }) {
            self.guest.fail(&format!("resize to {bytes} failed: {e}"));
        }
    }

    /// Runs tidalctl against this VM; returns its stdout, or fails with its stderr.
    fn tidalctl(&mut self, args: &[&str]) -> String {
        let output = Command::new(tidal_binary().with_file_name("tidalctl"))
            .arg("--api-socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tidalctl");
        if !output.status.success() {
            self.guest.fail(&format!(
                "tidalctl {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn memtotal_kib(&mut self) -> u64 {
        self.guest.meminfo_kib("MemTotal")
    }

    /// The guest's memory block indices in [base, base + size) that exist in sysfs.
    fn blocks_present(&mut self, base: u64, size: u64) -> Vec<u64> {
        (base / BLOCK..(base + size) / BLOCK)
            .filter(|index| {
                self.guest
                    .path_exists(&format!("/sys/devices/system/memory/memory{index}"))
            })
            .collect()
    }

    /// Fills `mib` MiB of tmpfs with a non-zero pattern and returns its checksum. The tmpfs is
    /// first resized to 95 % of the guest's memory now (it was sized at boot).
    fn fill(&mut self, mib: u64) -> String {
        self.guest.run_ok(GROW_TMPFS);
        self.guest
            .write_pattern("/tmp/fill", mib * MIB, Duration::from_secs(1200))
    }

    /// The checksum of what [`ElasticVm::fill`] wrote, read back.
    fn fill_checksum(&mut self) -> String {
        self.guest.checksum("/tmp/fill", Duration::from_secs(600))
    }

    /// tidal's resident set size, in KiB.
    fn host_rss_kib(&mut self) -> u64 {
        self.host_status_kib("VmRSS")
    }

    /// A KiB figure of tidal's /proc/PID/status, e.g. `VmSize` (everything it has mapped).
    fn host_status_kib(&mut self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.guest.pid()))
            .expect("read tidal's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in /proc/PID/status"))
    }

    /// How many file descriptors tidal has open.
    fn host_fd_count(&mut self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.guest.pid()))
            .expect("list tidal's /proc fd directory")
            .count()
    }

    fn expect_api_error(
        &mut self,
        result: Result<impl std::fmt::Debug, ClientError>,
        status: u16,
    ) -> String {
        match result {
            Err(ClientError::Api {
                status: got,
                message,
            }) if got.as_u16() == status => message,
            other => self.guest.fail(&format!(
                "expected an API error with status {status}, got {other:?}"
            )),
        }
    }
}

#[test]
fn hot_add_grows_the_guest_through_api_and_tidalctl() {
    // One vCPU: see SMP_UNDER_EMULATION.
    let mut vm = ElasticVm::default_boot(Guest::new());
    let devices = vm.guest.run_ok("ls /sys/bus/acpi/devices");
    assert!(devices.contains("PNP0C80"), "no memory devices: {devices}");
    assert!(vm
        .guest
        .run_ok("cat /proc/cmdline")
        .contains("memhp_default_state=online_movable"));
    let before = vm.memtotal_kib();

    vm.resize(2 * GIB);
    assert_eq!(vm.memtotal_kib() - before, GIB / 1024);
    let dimms = vm.api.memory().expect("vm.memory");
    assert_eq!(dimms.len(), 1);
    let dimm = &dimms[0];
    assert_eq!(
        (dimm.size, dimm.state, dimm.node),
        (GIB, DimmState::Added, 0)
    );
    let ost = dimm.last_ost.expect("the guest answered _OST");
    assert_eq!((ost.event, ost.status), (1, 0));
    // Every block of the DIMM is online, in ZONE_MOVABLE.
    for index in dimm.base / BLOCK..(dimm.base + dimm.size) / BLOCK {
        let block = format!("/sys/devices/system/memory/memory{index}");
        assert_eq!(vm.guest.run_ok(&format!("cat {block}/online")), "1");
        assert_eq!(
            vm.guest.run_ok(&format!("cat {block}/valid_zones")),
            "Movable"
        );
    }
    assert!(vm
        .guest
        .run_ok("grep -A8 'zone  Movable' /proc/zoneinfo")
        .contains("present"));

    vm.tidalctl(&["resize", "--memory", "4G", "--timeout", "600"]);
    assert_eq!(vm.memtotal_kib() - before, 3 * GIB / 1024);
    let info = vm.api.info().expect("vm.info");
    assert_eq!(info.memory_actual_size, 4 * GIB);
    assert_eq!((info.memory.boot, info.memory.hotplugged), (GIB, 3 * GIB));
    assert_eq!(info.memory.hotplug_size, 8 * GIB);
    let listed = vm.tidalctl(&["memory"]);
    assert!(
        listed.contains("dimm0") && listed.contains("dimm1"),
        "{listed}"
    );

    // The guest can use the new memory: fill more than boot memory holds and read it back.
    // (Under emulation first touches of hot-added memory run at a few MB/s: a fill of most of
    // the 3 GiB would take far too long in the test host.)
    let written = vm.fill(1100);
    assert_eq!(vm.fill_checksum(), written);
    assert_eq!(vm.guest.poweroff().code(), Some(0));
}

#[test]
fn bad_hotplug_requests_get_clear_errors_from_the_real_vmm() {
    // Four vCPUs: plugging and ejecting work on an SMP guest too.
    let mut vm = ElasticVm::boot(Guest::new().cpus(4), "size=1G,hotplug_size=2G,slots=2");
    let add = |vm: &mut ElasticVm, size| vm.api.add_memory(&AddMemoryRequest { size, node: 0 });
    let r = add(&mut vm, 100 * MIB);
    let message = vm.expect_api_error(r, 400);
    assert!(message.contains("multiple of the 128M"), "{message}");
    let r = add(&mut vm, 4 * GIB);
    let message = vm.expect_api_error(r, 400);
    assert!(message.contains("free"), "{message}");
    let r = vm.api.add_memory(&AddMemoryRequest { size: GIB, node: 3 });
    vm.expect_api_error(r, 400);
    let r = vm.api.send(
        Endpoint::VmResize.method(),
        Endpoint::VmResize.path(),
        Some(br#"{"desired_ram": 1, "colour": "red"}"#.to_vec()),
    );
    let status = r.expect("the server answers").status;
    assert_eq!(status.as_u16(), 400);
    let r = vm.api.remove_memory(&RemoveMemoryRequest {
        id: "dimm7".into(),
        timeout_secs: None,
    });
    vm.expect_api_error(r, 404);

    // Two slots: the third DIMM has nowhere to go.
    add(&mut vm, 512 * MIB).expect("first DIMM");
    add(&mut vm, 512 * MIB).expect("second DIMM");
    let r = add(&mut vm, 512 * MIB);
    let message = vm.expect_api_error(r, 400);
    assert!(message.contains("slot"), "{message}");

    // A request while another is in flight gets 409: start a shrink, wait until the guest has
    // been asked to eject, then ask for something else.
    let api = ApiClient::new(&vm.socket).with_timeout(API_TIMEOUT);
    let shrink = std::thread::spawn(move || {
        api.resize(&ResizeRequest {
            desired_ram: GIB,
            timeout_secs: None,
        })
    });
    let mut removing = false;
    for _ in 0..2000 {
        let dimms = vm.api.memory().expect("vm.memory");
        if dimms.iter().any(|d| d.state == DimmState::Removing) {
            removing = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let second = vm.api.add_memory(&AddMemoryRequest {
        size: 128 * MIB,
        node: 0,
    });
    shrink
        .join()
        .expect("resize thread")
        .expect("shrink to boot memory");
    if !removing {
        vm.guest
            .fail("never saw a DIMM being removed during the shrink");
    }
    let conflict = vm.expect_api_error(second, 409);
    assert!(conflict.contains("in progress"), "{conflict}");
    // Below boot memory is refused.
    let r = vm.api.resize(&ResizeRequest {
        desired_ram: 512 * MIB,
        timeout_secs: None,
    });
    vm.expect_api_error(r, 400);
    assert_eq!(vm.guest.poweroff().code(), Some(0));
}

#[test]
fn a_vm_without_a_hotplug_region_refuses_resize() {
    let mut vm = ElasticVm::boot(Guest::new(), "size=512M");
    let r = vm.api.resize(&ResizeRequest {
        desired_ram: GIB,
        timeout_secs: None,
    });
    let message = vm.expect_api_error(r, 400);
    assert!(message.contains("no hotplug region"), "{message}");
    assert_eq!(vm.api.info().expect("info").memory.hotplug_size, 0);
}

#[test]
fn hot_remove_migrates_data_and_returns_memory_to_the_host() {
    // One vCPU: see SMP_UNDER_EMULATION.
    let mut vm = ElasticVm::default_boot(Guest::new());
    // Two DIMMs of 1 GiB: dimm0, then dimm1.
    vm.resize(2 * GIB);
    vm.resize(3 * GIB);
    let full = vm.memtotal_kib();
    let dimms = vm.api.memory().expect("vm.memory");
    assert_eq!(dimms.len(), 2);
    let newest = dimms
        .iter()
        .find(|d| d.id == "dimm1")
        .expect("dimm1")
        .clone();
    let oldest = dimms
        .iter()
        .find(|d| d.id == "dimm0")
        .expect("dimm0")
        .clone();
    // Data across most of the guest's memory: after removing a GiB it must still fit.
    let written = vm.fill(800);
    let rss_full = vm.host_rss_kib();
    let mapped_full = vm.host_status_kib("VmSize");

    let mut events = vm.api.events().expect("subscribe to events");
    vm.resize(2 * GIB);
    assert_eq!(full - vm.memtotal_kib(), GIB / 1024);
    assert_eq!(
        vm.fill_checksum(),
        written,
        "data changed while its pages moved"
    );
    let remaining = vm.api.memory().expect("vm.memory");
    assert_eq!(
        remaining.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["dimm0"],
        "shrinking removes the newest DIMM"
    );
    assert_eq!(vm.api.info().expect("info").memory_actual_size, 2 * GIB);
    assert!(vm.blocks_present(newest.base, newest.size).is_empty());
    assert_eq!(
        vm.blocks_present(oldest.base, oldest.size).len() as u64,
        oldest.size / BLOCK
    );
    // The host got the DIMM back: its whole GiB is unmapped (less a few MiB that tidal's own
    // heap and thread stacks may have grown meanwhile). tidal's RSS alone cannot show that: the
    // guest migrated the DIMM's data into memory it had not touched before, which the host now
    // backs instead, so RSS falls only by what the DIMM held beyond that.
    let mapped_after = vm.host_status_kib("VmSize");
    assert!(
        mapped_full.saturating_sub(mapped_after) + 16 * 1024 >= GIB / 1024,
        "tidal's mappings went from {mapped_full} KiB to {mapped_after} KiB: the DIMM's GiB \
         is still mapped"
    );
    let rss_after = vm.host_rss_kib();
    assert!(
        rss_after <= rss_full + 16 * 1024,
        "tidal's RSS grew from {rss_full} KiB to {rss_after} KiB across the removal"
    );
    // The events stream saw the removal through to the eject.
    let saw_eject = events
        .by_ref()
        .take(8)
        .filter_map(Result::ok)
        .any(|event| event.id == "dimm1" && event.new_state == DimmState::Empty);
    assert!(saw_eject, "no event for the ejected DIMM");

    // Down to boot memory (the data would not fit there), then grow again: the freed slot is
    // reused.
    vm.guest.run_ok("rm /tmp/fill");
    vm.tidalctl(&["resize", "--memory", "1G", "--timeout", "600"]);
    assert!(vm.api.memory().expect("vm.memory").is_empty());
    vm.resize(2 * GIB);
    let again = vm.api.memory().expect("vm.memory");
    assert_eq!(again[0].slot, 0);
    assert_eq!(vm.guest.poweroff().code(), Some(0));
}

#[test]
fn a_refused_eject_keeps_the_memory_and_a_retry_succeeds() {
    let mut vm = ElasticVm::boot(Guest::new(), "size=512M,hotplug_size=2G");
    vm.resize(GIB);
    let grown = vm.memtotal_kib();
    vm.guest
        .run_ok("echo 0 > /sys/firmware/acpi/hotplug/memory/enabled");
    let r = vm.api.resize(&ResizeRequest {
        desired_ram: 512 * MIB,
        timeout_secs: None,
    });
    let message = vm.expect_api_error(r, 422);
    assert!(
        message.contains("dimm0") && message.contains("_OST status"),
        "{message}"
    );
    assert_eq!(vm.memtotal_kib(), grown);
    let dimm = &vm.api.memory().expect("vm.memory")[0];
    assert_eq!(dimm.state, DimmState::Added);
    assert_ne!(dimm.last_ost.expect("_OST recorded").status, 0);
    // Still usable: fill more than boot memory holds.
    let written = vm.fill(600);
    assert_eq!(vm.fill_checksum(), written);
    vm.guest.run_ok("rm /tmp/fill");

    vm.guest
        .run_ok("echo 1 > /sys/firmware/acpi/hotplug/memory/enabled");
    vm.tidalctl(&["remove", "dimm0", "--timeout", "600"]);
    assert_eq!(grown - vm.memtotal_kib(), 512 * MIB / 1024);
    assert!(vm.api.memory().expect("vm.memory").is_empty());
    assert_eq!(vm.guest.poweroff().code(), Some(0));
}

#[test]
fn an_unanswered_eject_times_out_and_can_be_retried() {
    let mut vm = ElasticVm::default_boot(Guest::new());
    vm.resize(2 * GIB);
    // Without its driver the GED's interrupt goes unhandled: the guest never hears of requests.
    vm.guest
        .run_ok("echo ACPI0013:00 > /sys/bus/platform/drivers/acpi-ged/unbind");
    let r = vm.api.remove_memory(&RemoveMemoryRequest {
        id: "dimm0".into(),
        timeout_secs: Some(3),
    });
    let message = vm.expect_api_error(r, 504);
    assert!(message.contains("dimm0"), "{message}");
    let dimm = &vm.api.memory().expect("vm.memory")[0];
    assert_eq!(dimm.state, DimmState::Removing);
    let total = vm.memtotal_kib();
    assert!(
        total > GIB / 1024,
        "the guest lost the DIMM: MemTotal {total} KiB"
    );

    vm.guest
        .run_ok("echo ACPI0013:00 > /sys/bus/platform/drivers/acpi-ged/bind");
    vm.api
        .remove_memory(&RemoveMemoryRequest {
            id: "dimm0".into(),
            timeout_secs: None,
        })
        .unwrap_or_else(|e| vm.guest.fail(&format!("retried removal failed: {e}")));
    assert!(vm.api.memory().expect("vm.memory").is_empty());
    assert_eq!(vm.guest.poweroff().code(), Some(0));
}

#[test]
fn zone_normal_memory_removal_is_answered_either_way() {
    // Onlined into ZONE_NORMAL, kernel allocations may pin the DIMM: the guest may refuse.
    let mut vm = ElasticVm::default_boot(Guest::new().cmdline_extra("memhp_default_state=online"));
    vm.resize(2 * GIB);
    // Kernel allocations: page cache and dentries across the new memory.
    vm.guest
        .run_ok("for i in $(seq 2000); do mkdir -p /tmp/d/$i; done; cat /proc/meminfo > /dev/null");
    let result = vm.api.resize(&ResizeRequest {
        desired_ram: GIB,
        timeout_secs: Some(120),
    });
    let dimms = vm.api.memory().expect("vm.memory");
    let total = vm.memtotal_kib();
    match result {
        Ok(()) => {
            assert!(dimms.is_empty());
            assert!(total < GIB / 1024);
        }
        Err(ClientError::Api { status, message }) if status.as_u16() == 422 => {
            assert!(message.contains("_OST status"), "{message}");
            assert_eq!(dimms[0].state, DimmState::Added);
            assert!(total > GIB / 1024);
        }
        Err(other) => vm.guest.fail(&format!("unexpected answer: {other}")),
    }
    assert_eq!(vm.guest.poweroff().code(), Some(0));
}

#[test]
fn twenty_add_remove_cycles_keep_data_and_give_back_all_memory() {
    const CYCLES: usize = 20;
    const DIMM: u64 = 512 * MIB;
    // One vCPU: see SMP_UNDER_EMULATION.
    let mut vm = ElasticVm::boot(Guest::new(), "size=1G,hotplug_size=2G");
    // A warm-up cycle, which also writes the data that must outlive every cycle: written while
    // the DIMM is there, it lands mostly in it (ZONE_MOVABLE comes first for tmpfs pages) and
    // moves to boot memory when the DIMM goes.
    vm.resize(GIB + DIMM);
    let kept = vm
        .guest
        .write_pattern("/tmp/kept", 128 * MIB, Duration::from_secs(600));
    vm.resize(GIB);
    let rss_start = vm.host_rss_kib();
    let fds_start = vm.host_fd_count();

    for cycle in 1..=CYCLES {
        vm.resize(GIB + DIMM);
        // Fresh data in the new DIMM: the eject below must migrate it, not lose it.
        let fresh = vm
            .guest
            .write_pattern("/tmp/cycle", 48 * MIB, Duration::from_secs(300));
        vm.resize(GIB);
        let after = vm.guest.checksum("/tmp/cycle", Duration::from_secs(300));
        if after != fresh {
            vm.guest.fail(&format!(
                "cycle {cycle}: data changed while leaving the DIMM: {fresh} then {after}"
            ));
        }
        vm.guest.run_ok("rm /tmp/cycle");
    }

    assert_eq!(
        vm.guest.checksum("/tmp/kept", Duration::from_secs(600)),
        kept
    );
    assert!(vm.api.memory().expect("vm.memory").is_empty());
    assert_eq!(vm.api.info().expect("vm.info").memory_actual_size, GIB);
    let total = vm.memtotal_kib();
    assert!(
        total < GIB / 1024,
        "MemTotal {total} KiB: more than boot memory"
    );
    let rss_end = vm.host_rss_kib();
    assert!(
        rss_end < rss_start + 64 * 1024,
        "tidal's RSS grew from {rss_start} KiB to {rss_end} KiB over {CYCLES} cycles"
    );
    assert_eq!(vm.host_fd_count(), fds_start, "file descriptors leaked");
    assert_eq!(vm.guest.poweroff().code(), Some(0));
}
