//! Tidal VMs in a host memory pool (`tidal --pool`, docs/pool.md), in the test host: three VMs
//! whose maxima add up to more than the pool's budget race to grow, and what the pool grants,
//! the VMs' own answers and the host's mappings all stay within the budget.

use std::time::{Duration, Instant};

use tidal_api::ClientError;
use tidal_tests::elastic::{guest_ram_mappings, ElasticVm};
use tidal_tests::pool::PoolDaemon;
use tidal_tests::Guest;

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

#[test]
fn vms_in_a_pool_never_hold_more_than_its_budget_and_a_race_has_one_winner() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let pool = PoolDaemon::start(dir.path(), &format!("{}M", BUDGET >> 20));
    let socket = pool.socket();
    let mut vms: Vec<ElasticVm> = ["a", "b", "c"]
        .into_iter()
        .map(|name| {
            let guest = Guest::new()
                .arg("--pool")
                .arg(format!("socket={},name={name}", socket.display()));
            ElasticVm::boot(guest, "size=512M,hotplug_size=2G")
        })
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
        match answer {
            Err(ClientError::Api { status, message }) => {
                assert_eq!(status.as_u16(), 507, "{message}");
                assert!(
                    message.contains("the host memory pool refused")
                        && message.contains("has 0 MiB free of its budget of 2560 MiB"),
                    "VM {i}: {message}"
                );
            }
            other => panic!("VM {i} should hear the pool's 507: {other:?}"),
        }
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
