//! Elastic memory end to end: a Linux guest under Tidal gets DIMMs plugged and ejected through
//! the REST API (and tidalctl), and the tests check what the guest itself sees, what the API
//! reports, and what the host gets back. Like boot.rs, these need hardware-backed KVM and run in
//! the test host through `ci/test.sh` elsewhere.

use std::time::Duration;

use tidal_acpi::memory_hotplug_layout::{
    control as control_bits, CONTROL, OST_EVENT, OST_STATUS, REGISTERS_LEN, SELECTOR,
};
use tidal_api::{
    ApiClient, ClientError, DimmState, Endpoint, RemoveMemoryRequest, ResizeRequest,
    ResizeZoneRequest, ZoneId,
};
use tidal_tests::elastic::{ElasticVm, API_TIMEOUT, BLOCK, GIB, MIB};
use tidal_tests::{pattern_fill_command, Guest};

// SMP_UNDER_EMULATION: the tests here that move a lot of data in and out of DIMMs boot one
// vCPU. In the test host (QEMU TCG emulating SVM, with kvm_amd inside) guests die of a triple
// fault or fall silent at random, and most often with 2 or 4 vCPUs under heavy memory traffic
// (see docs/testing.md). Removals that migrate data with two vCPUs are tested in numa.rs and
// backends.rs (256 and 192 MiB); SMP hotplug without data by
// `bad_hotplug_requests_get_clear_errors_from_the_real_vmm` (4 vCPUs).

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
    let r = vm.add(100 * MIB, 0);
    let message = vm.expect_api_error(r, 400);
    assert!(message.contains("multiple of the 128 MiB"), "{message}");
    let r = vm.add(4 * GIB, 0);
    let message = vm.expect_api_error(r, 400);
    assert!(message.contains("free"), "{message}");
    let r = vm.add(GIB, 3);
    let message = vm.expect_api_error(r, 404);
    assert!(message.contains("node 3 does not exist"), "{message}");
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
    vm.add(512 * MIB, 0).expect("first DIMM");
    vm.add(512 * MIB, 0).expect("second DIMM");
    let r = vm.add(512 * MIB, 0);
    let message = vm.expect_api_error(r, 400);
    assert!(message.contains("slot"), "{message}");

    // Two identical shrinks at once: the second finds the first's removals in flight, asks
    // for them again and waits for them too; neither removes anything else.
    let shrink = || {
        let api = ApiClient::new(&vm.socket).with_timeout(API_TIMEOUT);
        std::thread::spawn(move || api.resize(&resize_to_boot()))
    };
    let first = shrink();
    let mut removing = false;
    for _ in 0..2000 {
        let dimms = vm.api.memory().expect("vm.memory");
        if dimms.iter().any(|d| d.state == DimmState::Removing) {
            removing = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let second = shrink();
    for (which, shrink) in [("first", first), ("second", second)] {
        if let Err(e) = shrink.join().expect("resize thread") {
            vm.guest
                .fail(&format!("{which} shrink to boot memory: {e}"));
        }
    }
    if !removing {
        vm.guest
            .fail("never saw a DIMM being removed during the shrink");
    }
    assert!(vm.api.memory().expect("vm.memory").is_empty());
    assert_eq!(vm.api.info().expect("vm.info").memory_actual_size, GIB);
    // Below boot memory is refused.
    let r = vm.api.resize(&ResizeRequest {
        desired_ram: Some(512 * MIB),
        timeout_secs: None,
        force: false,
        ..ResizeRequest::default()
    });
    vm.expect_api_error(r, 400);
    refuses_what_it_cannot_do_exactly(&mut vm);
    assert_eq!(vm.guest.poweroff().code(), Some(0));
}

/// A VM at its boot memory (1 GiB, no DIMMs, 4 vCPUs) refuses, with a 400 and no change, the
/// resizes it cannot make exactly, and takes Cloud Hypervisor's bodies that ask for what it has.
fn refuses_what_it_cannot_do_exactly(vm: &mut ElasticVm) {
    let memtotal = vm.memtotal_kib();
    let resize = |request: ResizeRequest| vm.api.resize(&request);
    let unaligned = resize(ResizeRequest {
        desired_ram: Some(GIB + 64 * MIB),
        ..ResizeRequest::default()
    });
    let vcpus = resize(ResizeRequest {
        desired_vcpus: Some(2),
        ..ResizeRequest::default()
    });
    let balloon = resize(ResizeRequest {
        desired_ram: Some(2 * GIB),
        desired_balloon: Some(GIB),
        ..ResizeRequest::default()
    });
    let unaligned = vm.expect_api_error(unaligned, 400);
    assert!(
        unaligned.contains("plus whole 128 MiB memory blocks") && unaligned.contains("1 GiB"),
        "{unaligned}"
    );
    let vcpus = vm.expect_api_error(vcpus, 400);
    assert!(vcpus.contains("vCPU hotplug is not supported"), "{vcpus}");
    vm.expect_api_error(balloon, 400);
    // What it has already: nothing to do.
    vm.api
        .resize(&ResizeRequest {
            desired_ram: Some(GIB),
            desired_vcpus: Some(4),
            desired_balloon: Some(0),
            ..ResizeRequest::default()
        })
        .expect("a resize to the size it has");
    let zone = |id: ZoneId| ResizeZoneRequest {
        id,
        desired_ram: GIB,
        timeout_secs: None,
        force: false,
        wait: false,
    };
    vm.api
        .resize_zone(&zone(ZoneId::Name("0".into())))
        .expect("zone '0' is node 0");
    let r = vm.api.resize_zone(&zone(ZoneId::Name("mem0".into())));
    vm.expect_api_error(r, 404);
    let info = vm.api.info().expect("vm.info");
    assert_eq!((info.memory_actual_size, info.desired_ram), (GIB, GIB));
    assert_eq!(info.config.memory.size, GIB);
    assert!(vm.api.memory().expect("vm.memory").is_empty());
    assert_eq!(vm.memtotal_kib(), memtotal);
}

/// A resize of the whole VM to its 1 GiB of boot memory that waits for the guest.
fn resize_to_boot() -> ResizeRequest {
    ResizeRequest {
        desired_ram: Some(GIB),
        wait: true,
        ..ResizeRequest::default()
    }
}

/// Tidal as an unprivileged user in an empty root (`--user`; tests/tests/cli.rs checks what that
/// means on the host): DIMMs still come and go after the drop, and the host gets the memory
/// back. Switching users needs root, as the test host's tests run.
#[test]
fn an_unprivileged_tidal_adds_and_removes_memory() {
    // SAFETY: geteuid only reads this process's credentials.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "--user needs the tests run as root");
    let guest = Guest::new().arg("--user").arg("65534:65534");
    let mut vm = ElasticVm::boot(guest, "size=1G,hotplug_size=1G");
    let before = vm.memtotal_kib();
    let mapped = vm.host_ram_mapped_kib();
    vm.resize(GIB + 256 * MIB);
    assert_eq!(vm.memtotal_kib() - before, 256 * MIB / 1024);
    assert_eq!(vm.host_ram_mapped_kib() - mapped, 256 * MIB / 1024);
    vm.resize(GIB);
    assert!(vm.api.memory().expect("vm.memory").is_empty());
    assert_eq!(vm.host_ram_mapped_kib(), mapped);
    let said = "running as user 65534, group 65534";
    assert!(
        vm.guest.stderr().contains(said),
        "tidal did not say {said:?}"
    );
}

#[test]
fn a_vm_without_a_hotplug_region_refuses_resize() {
    let mut vm = ElasticVm::boot(Guest::new(), "size=512M");
    let r = vm.api.resize(&ResizeRequest {
        desired_ram: Some(GIB),
        timeout_secs: None,
        force: false,
        ..ResizeRequest::default()
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
    // Data across most of the guest's memory: after removing a GiB it must still fit.
    let written = vm.fill(800);
    let rss_full = vm.host_rss_kib();
    let mapped_full = vm.host_ram_mapped_kib();

    let mut events = vm.api.events().expect("subscribe to events");
    vm.resize(2 * GIB);
    assert_eq!(full - vm.memtotal_kib(), GIB / 1024);
    assert_eq!(
        vm.fill_checksum(),
        written,
        "data changed while its pages moved"
    );
    // One of the two went (the one with less to migrate): its blocks with it.
    let remaining = vm.api.memory().expect("vm.memory");
    assert_eq!(remaining.len(), 1, "{remaining:?}");
    let (kept, removed) = match dimms.iter().position(|d| d.id == remaining[0].id) {
        Some(0) => (&dimms[0], &dimms[1]),
        Some(_) => (&dimms[1], &dimms[0]),
        None => vm.guest.fail(&format!("{remaining:?} was not plugged")),
    };
    assert_eq!(vm.api.info().expect("info").memory_actual_size, 2 * GIB);
    assert!(vm.blocks_present(removed.base, removed.size).is_empty());
    assert_eq!(
        vm.blocks_present(kept.base, kept.size).len() as u64,
        kept.size / BLOCK
    );
    // The host got the DIMM back: its whole GiB is unmapped. tidal's RSS alone cannot show
    // that: the guest migrated the DIMM's data into memory it had not touched before, which the
    // host now backs instead, so RSS falls only by what the DIMM held beyond that.
    let mapped_after = vm.host_ram_mapped_kib();
    assert_eq!(
        mapped_full - mapped_after,
        GIB / 1024,
        "tidal's guest RAM mappings went from {mapped_full} KiB to {mapped_after} KiB"
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
        .any(|event| event.id == removed.id && event.new_state == DimmState::Empty);
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

/// The resize contract: every total of boot RAM plus whole blocks lands exactly, whichever
/// DIMMs earlier resizes made (a shrink no set of DIMMs matches removes more and plugs the
/// excess back), data survives every step, and a total that is not reachable is refused with
/// nothing changed. One step answers without waiting, as Cloud Hypervisor does.
#[test]
fn every_aligned_total_is_reached_exactly() {
    // One vCPU: see SMP_UNDER_EMULATION.
    let mut vm = ElasticVm::boot(Guest::new(), "size=1G,hotplug_size=6G");
    let boot_kib = vm.memtotal_kib();
    let check = |vm: &mut ElasticVm, total: u64| {
        let info = vm.api.info().expect("vm.info");
        assert_eq!(
            (info.memory_actual_size, info.desired_ram),
            (total, total),
            "vm.info after the resize to {total}"
        );
        let plugged: u64 = vm
            .api
            .memory()
            .expect("vm.memory")
            .iter()
            .map(|d| d.size)
            .sum();
        assert_eq!(plugged, total - GIB);
        assert_eq!(vm.memtotal_kib() - boot_kib, (total - GIB) / 1024);
    };
    vm.resize(5 * GIB);
    check(&mut vm, 5 * GIB);
    let written = vm.fill(200);
    for total in [3 * GIB, 5 * GIB / 2] {
        vm.resize(total);
        check(&mut vm, total);
    }
    // Not boot RAM plus whole blocks: refused, and nothing changes.
    let r = vm.api.resize(&ResizeRequest {
        desired_ram: Some(5 * GIB / 2 - 64 * MIB),
        wait: true,
        ..ResizeRequest::default()
    });
    let message = vm.expect_api_error(r, 400);
    assert!(message.contains("nearest totals"), "{message}");
    check(&mut vm, 5 * GIB / 2);
    // Without wait the answer comes once the guest has been told; vm.info shows the target at
    // once and the guest gets there.
    let small = GIB + BLOCK;
    vm.api
        .resize(&ResizeRequest {
            desired_ram: Some(small),
            timeout_secs: Some(600),
            ..ResizeRequest::default()
        })
        .unwrap_or_else(|e| vm.guest.fail(&format!("resize without wait: {e}")));
    assert_eq!(vm.api.info().expect("vm.info").desired_ram, small);
    let deadline = std::time::Instant::now() + Duration::from_secs(900);
    while vm.api.info().expect("vm.info").memory_actual_size != small {
        if std::time::Instant::now() > deadline {
            vm.guest
                .fail("the guest never reached the size of a resize without wait");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    check(&mut vm, small);
    assert_eq!(
        vm.fill_checksum(),
        written,
        "data changed across the resizes"
    );
    vm.resize(6 * GIB);
    check(&mut vm, 6 * GIB);
    assert_eq!(vm.fill_checksum(), written);
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
        desired_ram: Some(512 * MIB),
        timeout_secs: None,
        force: false,
        wait: true,
        ..ResizeRequest::default()
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

    // A shrink that overshoots (dimm0 goes, 128 MiB come back as dimm1, plugged first): the
    // guest refuses dimm0, and the shrink takes dimm1 back, which this guest refuses too. The
    // answer says so; the VM keeps both.
    let r = vm.api.resize(&ResizeRequest {
        desired_ram: Some(640 * MIB),
        wait: true,
        ..ResizeRequest::default()
    });
    let message = vm.expect_api_error(r, 422);
    assert!(
        message.contains("the guest refused to eject dimm0")
            && message.contains("dimm1, plugged to keep what the removal overshot, stays")
            && message.contains("taking it back: the guest refused to eject dimm1"),
        "{message}"
    );
    assert_eq!(vm.memtotal_kib() - grown, 128 * MIB / 1024);

    // Once the guest ejects again, the same resize lands exactly, on dimm0 alone.
    vm.guest
        .run_ok("echo 1 > /sys/firmware/acpi/hotplug/memory/enabled");
    vm.tidalctl(&["resize", "--memory", "640M", "--timeout", "600"]);
    assert_eq!(grown - vm.memtotal_kib(), 384 * MIB / 1024);
    let dimms = vm.api.memory().expect("vm.memory");
    assert_eq!(
        dimms
            .iter()
            .map(|d| (d.id.as_str(), d.size))
            .collect::<Vec<_>>(),
        [("dimm1", 128 * MIB)]
    );
    assert_eq!(vm.guest.poweroff().code(), Some(0));
}

/// With the GED's driver unbound the guest hears of nothing: a grow and a shrink time out with
/// their DIMM in flight, and the same resize retried asks again instead of adding or choosing
/// another DIMM; once the guest listens again, the retry lands on the target.
#[test]
fn an_unanswered_resize_times_out_and_a_retry_lands_on_the_target() {
    let mut vm = ElasticVm::default_boot(Guest::new());
    vm.resize(2 * GIB);
    let unbind = "echo ACPI0013:00 > /sys/bus/platform/drivers/acpi-ged/unbind";
    let bind = "echo ACPI0013:00 > /sys/bus/platform/drivers/acpi-ged/bind";
    let briefly = |total: u64| ResizeRequest {
        desired_ram: Some(total),
        timeout_secs: Some(3),
        wait: true,
        ..ResizeRequest::default()
    };
    let states = |vm: &ElasticVm| -> Vec<(String, DimmState)> {
        let dimms = vm.api.memory().expect("vm.memory");
        dimms.into_iter().map(|d| (d.id, d.state)).collect()
    };

    // A grow: its DIMM stays inserting, and a retry adds no second one.
    let before = vm.memtotal_kib();
    vm.guest.run_ok(unbind);
    for _ in 0..2 {
        let r = vm.api.resize(&briefly(3 * GIB));
        let message = vm.expect_api_error(r, 504);
        assert!(message.contains("dimm1"), "{message}");
        assert_eq!(
            states(&vm),
            [
                ("dimm0".to_owned(), DimmState::Added),
                ("dimm1".to_owned(), DimmState::Inserting)
            ]
        );
    }
    vm.guest.run_ok(bind);
    vm.resize(3 * GIB);
    assert_eq!(vm.memtotal_kib() - before, GIB / 1024);

    // A shrink: the DIMM it chose stays removing and in use, and a retry asks for that one again.
    vm.guest.run_ok(unbind);
    let r = vm.api.resize(&briefly(2 * GIB));
    vm.expect_api_error(r, 504);
    let chosen = states(&vm);
    let removing: Vec<&String> = chosen
        .iter()
        .filter(|(_, state)| *state == DimmState::Removing)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(removing.len(), 1, "{chosen:?}");
    let r = vm.api.resize(&briefly(2 * GIB));
    let message = vm.expect_api_error(r, 504);
    assert!(message.contains(removing[0].as_str()), "{message}");
    assert_eq!(states(&vm), chosen);
    let total = vm.memtotal_kib();
    vm.guest.run_ok(bind);
    vm.resize(2 * GIB);
    assert_eq!(total - vm.memtotal_kib(), GIB / 1024);
    let left = states(&vm);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_ne!(&left[0].0, removing[0]);

    // The same through vm.memory.remove, Tidal's own call.
    vm.guest.run_ok(unbind);
    let id = left[0].0.clone();
    let remove = |timeout_secs| RemoveMemoryRequest {
        id: id.clone(),
        timeout_secs,
    };
    let r = vm.api.remove_memory(&remove(Some(3)));
    let message = vm.expect_api_error(r, 504);
    assert!(message.contains(&id), "{message}");
    assert_eq!(states(&vm), [(id.clone(), DimmState::Removing)]);
    vm.guest.run_ok(bind);
    vm.api
        .remove_memory(&remove(None))
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
        desired_ram: Some(GIB),
        timeout_secs: Some(120),
        force: false,
        wait: true,
        ..ResizeRequest::default()
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
    add_remove_cycles(20, 512 * MIB, 48 * MIB, None);
}

/// The long run (`ci/long-run.sh`; not part of `ci/test.sh`): `TIDAL_LONG_RUN_CYCLES` (default
/// 200) add/remove cycles of a 128 MiB DIMM while the guest copies and checks 16 MiB of data in
/// a loop, which keeps allocating pages in the DIMMs that the removals then migrate.
#[test]
#[ignore = "takes hours under emulation: run by ci/long-run.sh"]
fn long_run_of_add_remove_cycles_under_memory_stress() {
    let cycles = std::env::var("TIDAL_LONG_RUN_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    add_remove_cycles(cycles, 128 * MIB, 8 * MIB, Some(16 * MIB));
}

/// A guest loop that copies `bytes` of data over and over and checks each copy, until
/// /tmp/stress.stop appears: counts its rounds in /tmp/stress.rounds and logs every mismatch to
/// /tmp/stress.bad. It rests a second between rounds: the guest has one vCPU, which the cycles
/// need too.
fn stress_loop_command(bytes: u64) -> String {
    format!(
        "{} && (n=0; want=$(md5sum < /tmp/stress.src); while [ ! -e /tmp/stress.stop ]; do \
         cp /tmp/stress.src /tmp/stress.copy; got=$(md5sum < /tmp/stress.copy); \
         [ \"$got\" = \"$want\" ] || echo \"round $n: $got\" >> /tmp/stress.bad; \
         n=$((n+1)); echo $n > /tmp/stress.rounds; sleep 1; done; echo done > /tmp/stress.ended) \
         > /dev/null 2>&1 &",
        pattern_fill_command("/tmp/stress.src", bytes)
    )
}

/// `cycles` times: grow by a `dimm`, write `fresh` bytes of data (landing mostly in the DIMM),
/// shrink back and check the data; with `stress`, a [`stress_loop_command`] runs throughout.
/// At the end the data written first is intact, no DIMM is left, and tidal's RSS, file
/// descriptors and mappings are back where they were after the warm-up.
fn add_remove_cycles(cycles: usize, dimm: u64, fresh: u64, stress: Option<u64>) {
    // One vCPU: see SMP_UNDER_EMULATION.
    let mut vm = ElasticVm::boot(Guest::new(), "size=1G,hotplug_size=2G");
    if let Some(bytes) = stress {
        vm.guest.run_ok(&stress_loop_command(bytes));
    }
    // A warm-up cycle, which also writes the data that must outlive every cycle: written while
    // the DIMM is there, it lands mostly in it (ZONE_MOVABLE comes first for tmpfs pages) and
    // moves to boot memory when the DIMM goes.
    vm.resize(GIB + dimm);
    let kept = vm
        .guest
        .write_pattern("/tmp/kept", 128 * MIB, Duration::from_secs(600));
    vm.resize(GIB);
    let rss_start = vm.host_rss();
    let fds_start = vm.host_fd_count();
    let maps_start = vm.host_ram_mapping_count();

    let started = std::time::Instant::now();
    for cycle in 1..=cycles {
        vm.resize(GIB + dimm);
        // Fresh data in the new DIMM: the eject below must migrate it, not lose it.
        let written = vm
            .guest
            .write_pattern("/tmp/cycle", fresh, Duration::from_secs(300));
        vm.resize(GIB);
        let after = vm.guest.checksum("/tmp/cycle", Duration::from_secs(300));
        if after != written {
            vm.guest.fail(&format!(
                "cycle {cycle}: data changed while leaving the DIMM: {written} then {after}"
            ));
        }
        vm.guest.run_ok("rm /tmp/cycle");
        if cycle % 10 == 0 {
            eprintln!(
                "tidal-tests: {cycle} of {cycles} cycles done after {} s; tidal's RSS {}",
                started.elapsed().as_secs(),
                vm.host_rss()
            );
        }
    }

    if stress.is_some() {
        vm.guest
            .run_ok("touch /tmp/stress.stop; while [ ! -e /tmp/stress.ended ]; do sleep 1; done");
        let rounds: u64 = vm.guest.run_number("cat /tmp/stress.rounds");
        let bad = vm.guest.run("cat /tmp/stress.bad");
        assert!(
            !bad.success(),
            "the stress loop saw bad copies:\n{}",
            bad.output
        );
        assert!(rounds > 0, "the stress loop never finished a round");
        eprintln!("tidal-tests: the stress loop checked {rounds} copies");
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
    let rss_end = vm.host_rss();
    eprintln!(
        "tidal-tests: {cycles} cycles in {} s; tidal's RSS {rss_start} after the warm-up, \
         {rss_end} at the end",
        started.elapsed().as_secs()
    );
    // What tidal itself noticed on the way (a guest that stopped reading its console, say).
    for warning in vm.guest.stderr().lines().filter(|l| l.contains(" WARN ")) {
        eprintln!("tidal-tests: tidal warned: {warning}");
    }
    // Guest RAM resident grows as the guest touches more of its boot RAM (the data each
    // cycle moves out of the DIMM lands on pages it may not have used before), but never
    // beyond boot RAM: nothing of a DIMM stays. tidal's own memory stays flat.
    assert!(
        rss_end.guest_mib <= (GIB / MIB) as f64,
        "{} MiB of guest RAM resident after the last DIMM went: more than boot RAM",
        rss_end.guest_mib
    );
    assert!(
        rss_end.own_mib < rss_start.own_mib + 16.0,
        "tidal's own RSS grew from {} MiB to {} MiB over {cycles} cycles",
        rss_start.own_mib,
        rss_end.own_mib
    );
    assert_eq!(vm.host_fd_count(), fds_start, "file descriptors leaked");
    assert_eq!(
        vm.host_ram_mapping_count(),
        maps_start,
        "guest RAM mappings (one per DIMM, with its KVM slot) leaked"
    );
    assert_eq!(vm.guest.poweroff().code(), Some(0));
}

/// The guest-physical addresses of the memory-hotplug registers and the GED's (vmm/src/layout.rs;
/// the guest learns them from the DSDT).
const HOTPLUG_REGISTERS: u64 = 0xfeb0_1000;
const GED_REGISTERS: u64 = 0xfeb0_0000;

/// What must hold while a guest plays with the registers: both DIMMs still plugged, accepted,
/// mapped in the host and online in the guest.
fn assert_dimms_untouched(vm: &mut ElasticVm, total_kib: u64, mapped_kib: u64, after: &str) {
    let dimms = vm.api.memory().expect("vm.memory");
    let states: Vec<_> = dimms.iter().map(|d| (d.id.as_str(), d.state)).collect();
    assert_eq!(
        states,
        [("dimm0", DimmState::Added), ("dimm1", DimmState::Added)],
        "after {after}"
    );
    let mapped = vm.host_ram_mapped_kib();
    assert_eq!(
        mapped, mapped_kib,
        "after {after}: tidal's guest RAM mappings went from {mapped_kib} KiB to {mapped} KiB"
    );
    assert_eq!(vm.memtotal_kib(), total_kib, "after {after}");
    for dimm in &dimms {
        assert_eq!(
            vm.blocks_present(dimm.base, dimm.size).len() as u64,
            dimm.size / BLOCK,
            "after {after}: {} lost blocks in the guest",
            dimm.id
        );
    }
}

/// How many new _OST reports the hostile guest makes in a row.
const OST_REPORTS: u64 = 100_000;

/// A console nobody reads stops no vCPU. With tidal's stdout unread, the guest prints without
/// end: the pipe fills, then tidal's output queue, and tidal says it drops output; the guest
/// meanwhile answers a hot-add (only its vCPUs running its ACPI code can), and once the console
/// is read again the guest answers there too.
#[test]
fn a_stalled_console_reader_stops_no_vcpu() {
    let mut vm = ElasticVm::default_boot(Guest::new());
    let before = vm.memtotal_kib();
    vm.guest.stall_console();
    vm.guest
        .send_line("(while [ ! -e /tmp/quiet ]; do cat /proc/meminfo; done) &");
    vm.guest.wait_for_log(
        "guest serial output dropped: its reader is not keeping up",
        Duration::from_secs(600),
    );
    vm.resize(2 * GIB);
    let dimms = vm.api.memory().expect("vm.memory");
    assert!(
        dimms.len() == 1 && dimms[0].state == DimmState::Added,
        "the guest did not take the DIMM while its console was stalled: {dimms:?}"
    );
    vm.guest.resume_console();
    vm.guest.run_ok("touch /tmp/quiet; wait");
    assert_eq!(vm.memtotal_kib() - before, GIB / 1024);
}

/// A guest that writes the hotplug and GED registers itself (with `mmio`, from
/// resources/guest-tools/mmio.c) can confuse only itself: Tidal keeps running, never unmaps a
/// DIMM the host did not ask to remove, and afterwards adds and removes memory as before.
#[test]
fn a_hostile_guest_writing_the_hotplug_registers_cannot_take_memory_away() {
    let mut vm = ElasticVm::boot(Guest::new(), "size=1G,hotplug_size=2G,slots=4");
    vm.resize(GIB + 256 * MIB);
    vm.resize(GIB + 512 * MIB);
    let total = vm.memtotal_kib();
    let mapped = vm.host_ram_mapped_kib();
    let (h, g) = (HOTPLUG_REGISTERS, GED_REGISTERS);
    let (selector, ost_event, ost_status, control) =
        (h + SELECTOR, h + OST_EVENT, h + OST_STATUS, h + CONTROL);
    let eject = 1u32 << control_bits::EJECT;
    let every_control_bit =
        (1 << control_bits::CLEAR_INSERT) | (1 << control_bits::CLEAR_REMOVE) | eject;
    let attacks = [
        // Eject DIMMs the host never asked to remove, with every width.
        format!("mmio write {selector} 4 0; mmio write {control} 4 {eject}"),
        format!(
            "mmio write {selector} 4 1; mmio write {control} 1 {eject}; \
             mmio write {control} 2 {eject}; mmio write {control} 8 {eject}"
        ),
        // An empty slot, the slot past the last one, the largest selector.
        format!("mmio write {selector} 4 3; mmio write {control} 4 {every_control_bit}"),
        format!(
            "mmio write {selector} 4 4; mmio write {control} 4 {eject}; mmio read {control} 4"
        ),
        format!("mmio write {selector} 4 0xffffffff; mmio write {control} 4 0xffffffff; mmio read {h} 8"),
        // _OST: an eject the host never asked for reported done, a failed insertion of a DIMM
        // that was accepted long ago, and garbage.
        format!("mmio write {selector} 4 0; mmio write {ost_event} 4 3; mmio write {ost_status} 4 0"),
        format!("mmio write {selector} 4 1; mmio write {ost_event} 4 1; mmio write {ost_status} 4 1"),
        format!("mmio write {ost_event} 4 0xdeadbeef; mmio write {ost_status} 4 0x12345678"),
        // Misaligned, odd widths, past the block.
        format!(
            "mmio write {} 2 0xffff; mmio write {} 1 8; mmio write {} 2 8; mmio write {} 4 8",
            h + 1,
            h + 0x13,
            h + 0x16,
            h + REGISTERS_LEN
        ),
        // The GED's event register is the guest's to read, not to write.
        format!("mmio write {g} 4 0xffffffff; mmio read {g} 4; mmio write {} 1 1", g + 1),
    ];
    for attack in &attacks {
        vm.guest.run_ok(attack);
        assert_dimms_untouched(&mut vm, total, mapped, attack);
    }

    // Random accesses, any offset, width and value: 20000 on each block.
    vm.guest.run_ok(&format!(
        "mmio storm {h} {REGISTERS_LEN} 20000 1 && mmio storm {g} 8 20000 2"
    ));
    assert_dimms_untouched(&mut vm, total, mapped, "the register storm");

    // _OST reports for a plugged DIMM in a loop, each one new (so each is an event), while a
    // subscriber reads nothing: Tidal keeps a bounded ring of events for it, so its memory does
    // not grow with the guest's writes.
    let unread = vm.api.events().expect("subscribe to the events");
    let rss = vm.host_rss_kib();
    vm.guest.run_ok(&format!(
        "mmio write {selector} 4 0 && mmio write {ost_event} 4 0 && mmio count {ost_status} {OST_REPORTS}"
    ));
    let grown = vm.host_rss_kib().saturating_sub(rss);
    assert!(
        grown < 4 * 1024,
        "tidal's resident memory grew by {grown} KiB during {OST_REPORTS} _OST reports"
    );
    // They were events: a subscriber asking for all of them finds most past what is kept.
    let mut replay = vm.api.events_since(0).expect("subscribe since event 0");
    match replay.next() {
        Some(Err(ClientError::Lagged(missed))) => assert!(
            missed >= OST_REPORTS - 256,
            "only {missed} events before the kept history"
        ),
        other => panic!("expected a lagged record first, got {other:?}"),
    }
    drop(unread);

    // The same while the host adds and removes a DIMM, sparing the selector and the control
    // register: the guest's own AML needs them to answer (a guest that switches slots or
    // ejects under its AML only breaks its own hotplug). The _OST registers are fair game: the
    // host's calls may fail; Tidal must stay whole.
    vm.guest.run_ok(&format!(
        "(mmio storm {ost_event} {} 200000 3 > /tmp/storm.log 2>&1 &)",
        CONTROL - OST_EVENT
    ));
    let added = vm.add(256 * MIB, 0);
    let removed = vm.api.remove_memory(&RemoveMemoryRequest {
        id: "dimm2".into(),
        timeout_secs: Some(60),
    });
    eprintln!("during the storm: add {added:?}, remove {removed:?}");
    vm.guest
        .run_ok("while pidof mmio > /dev/null; do sleep 1; done; cat /tmp/storm.log");
    let dimms = vm.api.memory().expect("vm.memory");
    for id in ["dimm0", "dimm1"] {
        let dimm = dimms.iter().find(|d| d.id == id).expect("DIMM kept");
        assert_eq!(dimm.state, DimmState::Added, "{id} after the storm");
    }
    // The storm may have hidden the guest's answers about dimm2: it can still be removed.
    if dimms.iter().any(|d| d.id == "dimm2") {
        vm.api
            .remove_memory(&RemoveMemoryRequest {
                id: "dimm2".into(),
                timeout_secs: Some(600),
            })
            .unwrap_or_else(|e| {
                vm.guest
                    .fail(&format!("removing dimm2 after the storm: {e}"))
            });
    }

    // Afterwards, business as usual: down to boot memory, and every byte back with the host.
    vm.resize(GIB);
    assert!(vm.api.memory().expect("vm.memory").is_empty());
    let after = vm.host_ram_mapped_kib();
    assert_eq!(
        mapped - after,
        512 * MIB / 1024,
        "tidal's guest RAM mappings went from {mapped} KiB to {after} KiB"
    );
    assert!(vm.memtotal_kib() < total - 500 * 1024);
    // Hundreds of thousands of bad accesses and reports, a few dozen log lines.
    let lines = vm.guest.stderr().lines().count();
    assert!(
        lines < 200,
        "tidal logged {lines} lines:\n{}",
        vm.guest.stderr()
    );
    assert_eq!(vm.guest.poweroff().code(), Some(0));
}
