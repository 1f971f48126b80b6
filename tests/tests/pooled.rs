//! Tidal VMs in a host memory pool (`tidal --pool`, docs/pool.md), in the test host: three VMs
//! whose maxima add up to more than the pool's budget race to grow, and what the pool grants,
//! the VMs' own answers and the host's mappings all stay within the budget.

use std::path::Path;
use std::time::{Duration, Instant};

use tidal_api::pool::{DesiredRam, MoveRequest, Taken};
use tidal_api::{ClientError, ResizeRequest};
use tidal_tests::elastic::{api_error, guest_ram_mappings, ElasticVm};
use tidal_tests::pool::{self, PoolDaemon};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Boot RAM of each VM, and the pool's budget: the three of them and one GiB more.
const BOOT: u64 = 512 * MIB;
const BUDGET: u64 = 3 * BOOT + GIB;

/// Waits until the pool shows `free` bytes free.
fn wait_for_free(pool: &PoolDaemon, free: u64, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while pool.show().free != free {
        assert!(
            Instant::now() < deadline,
            "{why}: the pool never had {} MiB free: {:?}",
            free >> 20,
            pool.show()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A VM of [`BOOT`] RAM and a 2 GiB hotplug region in the pool on `socket`, as `name`.
fn pooled_vm(socket: &Path, name: &str) -> ElasticVm {
    pool::pooled_vm(socket, name, 0)
}

#[test]
fn vms_in_a_pool_never_hold_more_than_its_budget_and_a_race_has_one_winner() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let pool = PoolDaemon::start(dir.path(), &format!("{}M", BUDGET >> 20));
    let socket = pool.socket();
    let mut vms: Vec<ElasticVm> = ["a", "b", "c"]
        .into_iter()
        .map(|name| pooled_vm(&socket, name))
        .collect();
    let shown = pool.show();
    assert_eq!(shown.held, 3 * BOOT, "{shown:?}");
    let names: Vec<&str> = shown.vms.iter().map(|vm| vm.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);

    // All three grow by a GiB at once: the pool has one GiB to give.
    let before: Vec<u64> = vms.iter_mut().map(ElasticVm::memtotal_kib).collect();
    let racers: Vec<_> = vms
        .iter()
        .map(|vm| vm.resize_in_background(BOOT + GIB))
        .collect();
    let answers: Vec<Result<(), ClientError>> = racers
        .into_iter()
        .map(|r| r.join().expect("a resize thread"))
        .collect();
    let winners: Vec<usize> = (0..3).filter(|&i| answers[i].is_ok()).collect();
    assert_eq!(winners.len(), 1, "one VM gets the GiB: {answers:?}");
    let winner = winners[0];
    for (i, answer) in answers.iter().enumerate().filter(|&(i, _)| i != winner) {
        let message = api_error(answer, 507).unwrap_or_else(|e| panic!("VM {i}: {e}"));
        assert!(
            message.contains("the host memory pool refused")
                && message.contains("has 0 MiB free of its budget of 2560 MiB"),
            "VM {i}: {message}"
        );
    }
    // What the guests see, what the pool says and what the host maps agree, within the budget.
    for (i, vm) in vms.iter_mut().enumerate() {
        let grown = if i == winner { GIB / 1024 } else { 0 };
        assert_eq!(vm.memtotal_kib() - before[i], grown, "VM {i}'s MemTotal");
    }
    let mapped: u64 = vms
        .iter()
        .map(|vm| guest_ram_mappings(vm.guest.pid()).iter().sum::<u64>())
        .sum();
    assert_eq!(mapped, BUDGET, "the VMs' guest RAM mappings on the host");
    let shown = pool.show();
    assert_eq!((shown.held, shown.free), (BUDGET, 0), "{shown:?}");
    assert_eq!(shown.vms[winner].plugged, GIB, "{shown:?}");

    // The winner gives its GiB back; once the host has it, another VM's retry lands.
    vms[winner].resize(BOOT);
    wait_for_free(&pool, GIB, "after the winner shrank");
    let next = (winner + 1) % 3;
    vms[next].resize(BOOT + GIB);
    assert_eq!(vms[next].memtotal_kib() - before[next], GIB / 1024);

    // A VM that is killed gives back everything it held.
    vms[next].guest.kill();
    wait_for_free(&pool, BOOT + GIB, "after a VM was killed");
    assert_eq!(pool.show().vms.len(), 2);
    for (i, vm) in vms.iter_mut().enumerate().filter(|&(i, _)| i != next) {
        assert_eq!(vm.guest.poweroff().code(), Some(0), "VM {i}");
    }
    // Those that powered off are gone from it too.
    wait_for_free(&pool, BUDGET, "after the VMs powered off");
    assert!(pool.show().vms.is_empty());
}

/// A move of 1 GiB from a VM holding data to another, with the pool's budget spent: the donor's
/// guest loses exactly the GiB and keeps its data, the receiver's gains it, and no other VM
/// could have taken it meanwhile. A move whose donor's guest refuses the eject changes nothing
/// for either VM, and one that would take a VM below its min is refused before it starts.
#[test]
fn a_move_shifts_a_gib_between_guests_and_a_refused_one_changes_nothing() {
    const BUDGET: u64 = 2 * BOOT + GIB;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let pool = PoolDaemon::start(dir.path(), &format!("{}M", BUDGET >> 20));
    let socket = pool.socket();
    let mut a = pooled_vm(&socket, "a");
    let mut b = pooled_vm(&socket, "b");
    a.resize(BOOT + GIB);
    assert_eq!(pool.show().free, 0);
    let written = a.fill(256);
    let (a_total, b_total) = (a.memtotal_kib(), b.memtotal_kib());

    let request = |from: &str, to: &str| MoveRequest {
        from: from.to_owned(),
        to: to.to_owned(),
        size: GIB,
        timeout_secs: Some(600),
    };
    let report = pool
        .move_memory(&request("a", "b"))
        .unwrap_or_else(|e| panic!("the move failed: {e}\n{}", pool.log()));
    println!("moved 1 GiB from a to b in {} ms", report.millis);
    assert_eq!((report.from_ram, report.to_ram), (BOOT, BOOT + GIB));
    assert_eq!(a_total - a.memtotal_kib(), GIB / 1024, "a's MemTotal");
    assert_eq!(b.memtotal_kib() - b_total, GIB / 1024, "b's MemTotal");
    assert_eq!(a.fill_checksum(), written, "a's data after the move");
    let shown = pool.show();
    let plugged: Vec<(u64, u64)> = shown.vms.iter().map(|v| (v.plugged, v.promised)).collect();
    assert_eq!(plugged, [(0, 0), (GIB, 0)], "{shown:?}");
    assert_eq!(shown.free, 0, "{shown:?}");
    let mapped: u64 = [&a, &b]
        .iter()
        .map(|vm| guest_ram_mappings(vm.guest.pid()).iter().sum::<u64>())
        .sum();
    assert_eq!(mapped, BUDGET, "the VMs' guest RAM mappings on the host");

    // b's guest refuses every eject: moving its GiB back fails and changes nothing.
    b.guest
        .run_ok("echo 0 > /sys/firmware/acpi/hotplug/memory/enabled");
    let (a_total, b_total) = (a.memtotal_kib(), b.memtotal_kib());
    let refused = pool.move_memory(&request("b", "a"));
    let message = api_error(&refused, 409).unwrap_or_else(|e| panic!("a donor refusing: {e}"));
    assert!(
        message.starts_with("b did not shrink by 1024 MiB: ")
            && message.ends_with("; nothing moved"),
        "{message}"
    );
    assert_eq!((a.memtotal_kib(), b.memtotal_kib()), (a_total, b_total));
    assert_eq!(pool.show(), shown, "the pool after the refused move");

    // a is at its min (its boot RAM): it has nothing to give.
    let (status, message) = pool.call(
        "PUT",
        "/pool/move",
        Some(serde_json::json!({"from": "a", "to": "b", "size": GIB})),
    );
    assert_eq!(status, 409, "{message}");
    assert!(message.contains("a has 0 MiB plugged"), "{message}");
    assert_eq!(pool.show(), shown);

    // The pool is killed; meanwhile b gives its GiB back (its release cannot reach the pool)
    // and a hot-add is refused. Restarted, the pool takes the VMs' word, and moves work again.
    pool.kill();
    b.guest
        .run_ok("echo 1 > /sys/firmware/acpi/hotplug/memory/enabled");
    b.resize(BOOT);
    let refused = a.api.resize(&ResizeRequest {
        desired_ram: Some(BOOT + GIB),
        ..ResizeRequest::default()
    });
    let message = a.expect_api_error(refused, 503);
    assert!(message.contains("the host memory pool"), "{message}");
    let pool = PoolDaemon::start(dir.path(), &format!("{}M", BUDGET >> 20));
    let shown = pool.show();
    let plugged: Vec<u64> = shown.vms.iter().map(|v| v.plugged).collect();
    assert_eq!((plugged, shown.free), (vec![0, 0], GIB), "{shown:?}");
    a.resize(BOOT + GIB);
    let report = pool
        .move_memory(&request("a", "b"))
        .unwrap_or_else(|e| panic!("the move after the restart failed: {e}\n{}", pool.log()));
    assert_eq!((report.from_ram, report.to_ram), (BOOT, BOOT + GIB));
    assert_eq!(a.fill_checksum(), written, "a's data at the end");
}

/// Priorities: with the budget spent, the VM of highest priority grows by taking from the VM
/// of lowest priority above its min (not from the one of middle priority); a grow that would
/// need a VM below its min is refused with 507 and nobody shrunk. The lowest gives half of
/// its one DIMM: it gives the whole DIMM and takes the other half back, the budget spent. The
/// same holds for the VM's own `vm.resize`: its hot-add's reservation takes from the lowest.
#[test]
fn a_vm_of_higher_priority_grows_at_the_expense_of_the_lowest_above_its_min() {
    const BUDGET: u64 = 3 * BOOT + 3 * GIB / 2;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let pool = PoolDaemon::start(dir.path(), &format!("{}M", BUDGET >> 20));
    let socket = pool.socket();
    let mut lo = pool::pooled_vm(&socket, "lo", 0);
    let mut mid = pool::pooled_vm(&socket, "mid", 1);
    let mut hi = pool::pooled_vm(&socket, "hi", 2);
    lo.resize(BOOT + GIB);
    mid.resize(BOOT + GIB / 2);
    assert_eq!(pool.show().free, 0);
    let totals = |vms: [&mut ElasticVm; 3]| vms.map(|vm| vm.memtotal_kib());
    let before = totals([&mut lo, &mut mid, &mut hi]);

    let grow = |ram| DesiredRam {
        desired_ram: ram,
        timeout_secs: Some(600),
    };
    let resized = pool
        .set_ram("hi", &grow(BOOT + GIB / 2))
        .unwrap_or_else(|e| panic!("hi did not grow: {e}\n{}", pool.log()));
    assert_eq!(
        resized.taken,
        [Taken {
            from: "lo".to_owned(),
            size: GIB / 2
        }]
    );
    let after = totals([&mut lo, &mut mid, &mut hi]);
    let half = GIB / 2 / 1024;
    assert_eq!(
        after,
        [before[0] - half, before[1], before[2] + half],
        "lo, mid and hi's MemTotal"
    );
    let shown = pool.show();
    assert_eq!(shown.free, 0, "{shown:?}");
    let plugged: Vec<u64> = shown.vms.iter().map(|vm| vm.plugged).collect();
    assert_eq!(
        plugged,
        [GIB / 2, GIB / 2, GIB / 2],
        "hi, lo, mid: {shown:?}"
    );

    // 1.5 GiB more for hi: lo and mid have only half a GiB each above their min.
    let refused = pool.set_ram("hi", &grow(BOOT + 2 * GIB));
    assert_eq!(
        api_error(&refused, 507),
        Ok(
            "hi needs 1536 MiB more than the pool has free, and VMs of lower priority can give \
            only 1024 MiB above their min; nobody was shrunk"
        )
    );
    assert_eq!(totals([&mut lo, &mut mid, &mut hi]), after);
    assert_eq!(pool.show(), shown);

    // hi's own vm.resize by half a GiB: its hot-add's reservation takes it from lo.
    hi.resize(BOOT + GIB);
    let grown = totals([&mut lo, &mut mid, &mut hi]);
    assert_eq!(
        grown,
        [after[0] - half, after[1], after[2] + half],
        "lo, mid and hi's MemTotal after hi's own resize"
    );
    let shown = pool.show();
    let plugged: Vec<u64> = shown.vms.iter().map(|vm| vm.plugged).collect();
    assert_eq!(plugged, [GIB, 0, GIB / 2], "hi, lo, mid: {shown:?}");
    assert_eq!(shown.free, 0, "{shown:?}");
    // A GiB more through its own API: mid alone has half a GiB to give, so nobody shrinks.
    let refused = hi.api.resize(&ResizeRequest {
        desired_ram: Some(BOOT + 2 * GIB),
        ..ResizeRequest::default()
    });
    let message = hi.expect_api_error(refused, 507);
    assert!(
        message.contains(
            "hi needs 1024 MiB more than the pool has free, and VMs of lower priority can give \
             only 512 MiB above their min; nobody was shrunk"
        ),
        "{message}"
    );
    assert_eq!(totals([&mut lo, &mut mid, &mut hi]), grown);
    assert_eq!(pool.show(), shown);
}
