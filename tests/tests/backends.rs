//! Memory backends (`shared=on`, `hugepages=on`, `prefault=on`, `host_node=N`): a guest whose
//! nodes are backed differently grows and shrinks each node, and the host sees each backend's
//! memory arrive and leave: memfd mappings and their resident pages, huge pages taken from and
//! given back to the pool.

use std::time::Duration;

use tidal_api::{MemoryBackendInfo, RemoveMemoryRequest};
use tidal_tests::elastic::{ElasticVm, MIB};
use tidal_tests::{in_testhost, require_kvm_for_linux_guests, Guest};

/// The pool of 2 MiB huge pages on the host (where tidal runs).
const POOL: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

fn pool_count(file: &str) -> u64 {
    let path = format!("{POOL}/{file}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    text.trim().parse().expect("a page count")
}

/// Huge pages a new mapping could still reserve.
fn pool_available() -> u64 {
    pool_count("free_hugepages") - pool_count("resv_hugepages")
}

/// Sets the pool to `pages` huge pages for the test and puts the old size back afterwards.
struct HugePagePool {
    before: u64,
}

impl HugePagePool {
    /// `None` (with a loud message) when the host cannot give that many, outside the test host;
    /// inside it (CI) that is a failure: the test host is ours to set up.
    fn reserve(pages: u64) -> Option<Self> {
        let before = pool_count("nr_hugepages");
        let set = std::fs::write(format!("{POOL}/nr_hugepages"), pages.to_string());
        let pool = Self { before };
        let got = pool_count("nr_hugepages");
        if set.is_ok() && got == pages && pool_available() == pages {
            return Some(pool);
        }
        let message = format!(
            "this host cannot give {pages} free 2 MiB huge pages (writing {POOL}/nr_hugepages: \
             {set:?}; the pool has {got}, {} of them free and unreserved)",
            pool_available()
        );
        assert!(!in_testhost(), "{message}");
        eprintln!("\n\n*** SKIPPED: {message} ***\n\n");
        None
    }
}

impl Drop for HugePagePool {
    fn drop(&mut self) {
        let _ = std::fs::write(format!("{POOL}/nr_hugepages"), self.before.to_string());
    }
}

/// How far /proc/PID/status's RSS counters may lag: Linux 6.1 counts pages per thread and adds
/// them to the process's figure every 64 changes.
const SLACK_KIB: u64 = 2 * 1024;

/// Tidal's mappings of memfd-backed guest RAM that are shared (`rw-s`).
fn shared_memfd_mappings(vm: &ElasticVm) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", vm.guest.pid()))
        .expect("read tidal's /proc maps");
    maps.lines()
        .filter(|line| line.contains(" rw-s ") && line.contains("/memfd:tidal-ram"))
        .count()
}

/// `MemTotal` of one guest node, in KiB.
fn node_memtotal_kib(vm: &mut ElasticVm, node: u32) -> u64 {
    vm.guest.run_number(&format!(
        "awk '/MemTotal/ {{ print $4 }}' /sys/devices/system/node/node{node}/meminfo"
    ))
}

fn remove(vm: &mut ElasticVm, id: &str) {
    let request = RemoveMemoryRequest {
        id: id.to_owned(),
        timeout_secs: Some(600),
    };
    if let Err(e) = vm.api.remove_memory(&request) {
        vm.guest.fail(&format!("removing {id}: {e}"));
    }
}

#[test]
fn shared_and_huge_page_nodes_grow_and_shrink_and_the_host_gets_each_backend_back() {
    let guest = Guest::new()
        .cpus(2)
        .arg("--numa")
        .arg("id=0,cpus=0,memory=512M,hotplug_size=512M,shared=on,prefault=on,host_node=0")
        .arg("--numa")
        .arg("id=1,cpus=1,memory=256M,hotplug_size=512M,hugepages=on");
    // Node 1 boots on 128 huge pages and grows by 128 more; 64 are left over, too few for a
    // second 256 MiB DIMM. (The host's pool is only touched where a guest can boot.)
    require_kvm_for_linux_guests();
    let Some(_pool) = HugePagePool::reserve(320) else {
        return;
    };
    let mut vm = ElasticVm::boot(guest, "slots=4");

    // vm.info and tidalctl say what backs each node.
    let backends: Vec<_> = vm
        .api
        .info()
        .expect("vm.info")
        .memory
        .nodes
        .iter()
        .map(|node| node.backend)
        .collect();
    let node0 = MemoryBackendInfo {
        shared: true,
        prefault: true,
        host_node: Some(0),
        hugepage_size: None,
    };
    let node1 = MemoryBackendInfo {
        hugepage_size: Some(2 * MIB),
        ..Default::default()
    };
    assert_eq!(backends, [node0, node1]);
    let info = vm.tidalctl(&["info"]);
    assert!(
        info.contains("; shared, prefault, host node 0\n") && info.contains("; 2 MiB huge pages\n"),
        "{info}"
    );

    // At boot: node 0 is one shared memfd, every page allocated already (prefault), bound to
    // host node 0; node 1's 256 MiB are reserved from the pool.
    assert_eq!(shared_memfd_mappings(&vm), 1);
    let shmem_boot = vm.host_status_kib("RssShmem");
    assert!(
        shmem_boot + SLACK_KIB >= 512 * 1024,
        "tidal has {shmem_boot} KiB of shared memory resident after boot, not node 0's 512 MiB"
    );
    let numa_maps = std::fs::read_to_string(format!("/proc/{}/numa_maps", vm.guest.pid()))
        .expect("read tidal's numa_maps");
    assert!(
        numa_maps
            .lines()
            .any(|line| line.contains(" bind:0 ") && line.contains("memfd:tidal-ram")),
        "no guest RAM bound to host node 0 in\n{numa_maps}"
    );
    assert_eq!(pool_available(), 320 - 128);
    let node0_boot = node_memtotal_kib(&mut vm, 0);
    let node1_boot = node_memtotal_kib(&mut vm, 1);

    // Node 0 grows by a shared, prefaulted DIMM: resident on the host before the guest uses it.
    let shared = vm
        .add(256 * MIB, 0)
        .unwrap_or_else(|e| vm.guest.fail(&format!("adding to node 0: {e}")));
    assert_eq!(shared_memfd_mappings(&vm), 2);
    let shmem_added = vm.host_status_kib("RssShmem");
    assert!(
        shmem_added + SLACK_KIB >= shmem_boot + 256 * 1024,
        "RssShmem went from {shmem_boot} to {shmem_added} KiB: the DIMM was not prefaulted"
    );
    assert_eq!(node_memtotal_kib(&mut vm, 0) - node0_boot, 256 * 1024);

    // Node 1 grows by 128 huge pages, which the guest then fills from node 1's vCPU.
    let huge = vm
        .add(256 * MIB, 1)
        .unwrap_or_else(|e| vm.guest.fail(&format!("adding to node 1: {e}")));
    assert_eq!(pool_available(), 320 - 256);
    assert_eq!(node_memtotal_kib(&mut vm, 1) - node1_boot, 256 * 1024);
    let free_before = pool_count("free_hugepages");
    vm.guest.run_ok("taskset -p -c 1 $$");
    let written = vm
        .guest
        .write_pattern("/tmp/node1", 192 * MIB, Duration::from_secs(900));
    vm.guest.run_ok("taskset -p -c 0-1 $$");
    let free_filled = pool_count("free_hugepages");
    assert!(
        free_filled + 48 <= free_before,
        "the guest wrote 192 MiB on node 1, but the pool's free pages only went from \
         {free_before} to {free_filled}"
    );

    // The 64 pages left cannot back another 256 MiB: refused up front, nothing plugged.
    let r = vm.add(256 * MIB, 1);
    let message = vm.expect_api_error(r, 507);
    assert!(
        message.contains("2 MiB huge pages has 64 free, fewer than the 128"),
        "{message}"
    );
    assert_eq!(vm.api.memory().expect("vm.memory").len(), 2);

    // Out again, node 0's DIMM first: Linux moves the pages of memory it offlines to other
    // nodes only (mm/memory_hotplug.c). Removing node 1's DIMM first would move its data into
    // node 0's DIMM, which could then only be emptied into node 1's 256 MiB: too little.
    // Node 0's memfd goes, with its resident pages ...
    remove(&mut vm, &shared.id);
    assert_eq!(shared_memfd_mappings(&vm), 1);
    let shmem_removed = vm.host_status_kib("RssShmem");
    assert!(
        shmem_removed + 256 * 1024 <= shmem_added + SLACK_KIB,
        "RssShmem went from {shmem_added} to only {shmem_removed} KiB after the removal"
    );
    assert_eq!(node_memtotal_kib(&mut vm, 0), node0_boot);
    // ... and node 1's DIMM (its data migrated to node 0, intact) gives every huge page back.
    remove(&mut vm, &huge.id);
    assert_eq!(pool_available(), 320 - 128);
    assert_eq!(node_memtotal_kib(&mut vm, 1), node1_boot);
    assert_eq!(
        vm.guest.checksum("/tmp/node1", Duration::from_secs(600)),
        written
    );

    assert_eq!(vm.guest.poweroff().code(), Some(0));
    // With tidal gone, the pool is whole again.
    assert_eq!(pool_available(), 320);
    assert_eq!(pool_count("free_hugepages"), 320);
}
