//! NUMA guests (`--numa`): the nodes as the guest sees them (vCPUs, memory, distances from the
//! SLIT), memory hot-added to one node and removed again, and one node resized at a time.

use tidal_api::{DimmState, RemoveMemoryRequest, ResizeZoneRequest, ZoneId};
use tidal_tests::elastic::{ElasticVm, BLOCK, GIB, MIB};
use tidal_tests::Guest;

/// `MemTotal` of one guest node, in KiB, from its sysfs meminfo ("Node 1 MemTotal: N kB").
fn node_memtotal_kib(vm: &mut ElasticVm, node: u32) -> u64 {
    vm.guest.run_number(&format!(
        "awk '/MemTotal/ {{ print $4 }}' /sys/devices/system/node/node{node}/meminfo"
    ))
}

#[test]
fn two_nodes_show_their_vcpus_memory_and_distances_and_resize_one_at_a_time() {
    // Node 1 holds the hotplug region; 30 rather than the default 20 shows the SLIT is read.
    let guest = Guest::new()
        .cpus(4)
        .arg("--numa")
        .arg("id=0,cpus=0-1,memory=1G,distance=1@30")
        .arg("--numa")
        .arg("id=1,cpus=[2-3],memory=1G,hotplug_size=2G,distance=0@30");
    let mut vm = ElasticVm::boot(guest, "slots=4");

    assert_eq!(
        vm.guest
            .run_ok("ls -d /sys/devices/system/node/node* | xargs -n1 basename"),
        "node0\nnode1"
    );
    for (node, cpus, distance) in [(0, "0-1", "10 30"), (1, "2-3", "30 10")] {
        let dir = format!("/sys/devices/system/node/node{node}");
        assert_eq!(vm.guest.run_ok(&format!("cat {dir}/cpulist")), cpus);
        assert_eq!(vm.guest.run_ok(&format!("cat {dir}/distance")), distance);
    }
    // Each node has most of its GiB (the kernel keeps some for itself, more on node 0).
    let node1_before = node_memtotal_kib(&mut vm, 1);
    for node in [0, 1] {
        let kib = node_memtotal_kib(&mut vm, node);
        assert!(
            (GIB / 1024 / 2..=GIB / 1024).contains(&kib),
            "node {node} has {kib} KiB"
        );
    }

    // Node 0 has no share of the hotplug region, and there is no node 2.
    let r = vm.add(GIB, 0);
    let message = vm.expect_api_error(r, 400);
    assert!(
        message.contains("node 0 has no hotplug memory"),
        "{message}"
    );
    let r = vm.add(GIB, 2);
    let message = vm.expect_api_error(r, 404);
    assert!(message.contains("node 2 does not exist"), "{message}");

    let dimm = vm
        .add(GIB, 1)
        .unwrap_or_else(|e| vm.guest.fail(&format!("adding to node 1: {e}")));
    assert_eq!((dimm.node, dimm.state), (1, DimmState::Added));
    assert_eq!(node_memtotal_kib(&mut vm, 1) - node1_before, GIB / 1024);
    // Every block of the DIMM belongs to node 1, in ZONE_MOVABLE.
    for index in dimm.base / BLOCK..(dimm.base + dimm.size) / BLOCK {
        assert!(vm
            .guest
            .path_exists(&format!("/sys/devices/system/node/node1/memory{index}")));
    }
    assert!(vm
        .guest
        .run_ok("grep -A8 'Node 1, zone  Movable' /proc/zoneinfo")
        .contains("present"));

    vm.api
        .remove_memory(&RemoveMemoryRequest {
            id: dimm.id.clone(),
            timeout_secs: Some(600),
        })
        .unwrap_or_else(|e| vm.guest.fail(&format!("removing {}: {e}", dimm.id)));
    assert_eq!(node_memtotal_kib(&mut vm, 1), node1_before);
    assert!(vm.api.memory().expect("vm.memory").is_empty());

    // One node at a time (vm.resize-zone): node 1 to 3 GiB and back, each node in vm.info.
    vm.tidalctl(&[
        "resize",
        "--node",
        "1",
        "--memory",
        "3G",
        "--timeout",
        "600",
    ]);
    assert_eq!(node_memtotal_kib(&mut vm, 1) - node1_before, 2 * GIB / 1024);
    let nodes = vm.api.info().expect("vm.info").memory.nodes;
    let shown: Vec<_> = nodes
        .iter()
        .map(|n| (n.id, n.boot, n.hotplugged, n.hotplug_size))
        .collect();
    assert_eq!(shown, [(0, GIB, 0, 0), (1, GIB, 2 * GIB, 2 * GIB)]);
    assert!(vm.tidalctl(&["info"]).contains("node 1:     3 GiB"));
    vm.tidalctl(&[
        "resize",
        "--node",
        "1",
        "--memory",
        "1G",
        "--timeout",
        "600",
    ]);
    assert_eq!(node_memtotal_kib(&mut vm, 1), node1_before);
    let r = vm.api.resize_zone(&ResizeZoneRequest {
        id: ZoneId::Node(0),
        desired_ram: 2 * GIB,
        timeout_secs: None,
        force: false,
        wait: false,
    });
    let message = vm.expect_api_error(r, 400);
    assert!(
        message.contains("node 0 has no hotplug memory"),
        "{message}"
    );
    let r = vm.api.resize_zone(&ResizeZoneRequest {
        id: ZoneId::Node(1),
        desired_ram: GIB / 2,
        timeout_secs: None,
        force: false,
        wait: false,
    });
    let message = vm.expect_api_error(r, 400);
    assert!(message.contains("below node 1's boot memory"), "{message}");
    assert_eq!(vm.guest.poweroff().code(), Some(0));
}

#[test]
fn a_hotpluggable_node_gives_all_its_memory_back_with_its_data_kept_and_grows_again() {
    // Node 1's boot memory can go (`hotpluggable=on`: Tidal adds `movable_node`), and it has a
    // share of the hotplug region to grow back into.
    let guest = Guest::new()
        .cpus(2)
        .arg("--numa")
        .arg("id=0,cpus=0,memory=1G")
        .arg("--numa")
        .arg("id=1,cpus=1,memory=512M,hotplug_size=512M,hotpluggable=on");
    let mut vm = ElasticVm::boot(guest, "slots=4");
    assert!(vm
        .guest
        .run_ok("cat /proc/cmdline")
        .contains("movable_node"));

    // From boot, node 1's memory is one DIMM, added, and the guest keeps it in ZONE_MOVABLE.
    let dimms = vm.api.memory().expect("vm.memory");
    let shown: Vec<_> = dimms
        .iter()
        .map(|d| (d.node, d.base, d.size, d.state))
        .collect();
    assert_eq!(shown, [(1, GIB, GIB / 2, DimmState::Added)]);
    let node1 = node_memtotal_kib(&mut vm, 1);
    assert!(node1 > GIB / 1024 / 4, "node 1 has {node1} KiB");
    // (The zone's first lines may be the node's own statistics: look for its `present` line.)
    let movable_pages: u64 = vm.guest.run_number(
        "awk '/^Node 1, zone +Movable/ { zone = 1 } zone && /present/ { print $2; exit }' \
         /proc/zoneinfo",
    );
    assert_eq!(movable_pages * 4, GIB / 2 / 1024, "node 1's Movable pages");

    // Data written from node 1's vCPU lands in node 1's memory.
    vm.guest.run_ok("taskset -p -c 1 $$");
    let written =
        vm.guest
            .write_pattern("/tmp/node1", 256 * MIB, std::time::Duration::from_secs(900));
    vm.guest.run_ok("taskset -p -c 0-1 $$");
    let node1_shmem: u64 = vm
        .guest
        .run_number("awk '/Shmem:/ { print $4 }' /sys/devices/system/node/node1/meminfo");
    assert!(
        node1_shmem >= 200 * 1024,
        "node 1 holds {node1_shmem} KiB of tmpfs"
    );
    let rss_before = vm.host_rss_kib();
    let mapped_before = vm.host_ram_mapped_kib();

    // Node 1 to zero: the guest migrates the data to node 0 and ejects its boot memory.
    let zero = ResizeZoneRequest {
        id: ZoneId::Node(1),
        desired_ram: 0,
        timeout_secs: Some(900),
        force: false,
        wait: true,
    };
    if let Err(e) = vm.api.resize_zone(&zero) {
        vm.guest.fail(&format!("shrinking node 1 to zero: {e}"));
    }
    assert_eq!(node_memtotal_kib(&mut vm, 1), 0);
    assert!(vm.api.memory().expect("vm.memory").is_empty());
    assert_eq!(
        vm.guest
            .checksum("/tmp/node1", std::time::Duration::from_secs(600)),
        written
    );
    // The host got node 1's memory back: all 512 MiB unmapped. RSS cannot fall by as much:
    // the data moved into node 0 memory the guest had not touched before, which the host backs
    // now (see the same check in hotplug.rs).
    let mapped_after = vm.host_ram_mapped_kib();
    assert_eq!(
        mapped_before - mapped_after,
        GIB / 2 / 1024,
        "tidal's guest RAM mappings went from {mapped_before} KiB to {mapped_after} KiB"
    );
    let rss_after = vm.host_rss_kib();
    assert!(
        rss_after <= rss_before + 16 * 1024,
        "tidal's RSS grew from {rss_before} KiB to {rss_after} KiB across the removal"
    );

    // And back: 512 MiB from node 1's share of the hotplug region.
    vm.tidalctl(&[
        "resize",
        "--node",
        "1",
        "--memory",
        "512M",
        "--timeout",
        "600",
    ]);
    assert_eq!(node_memtotal_kib(&mut vm, 1), GIB / 2 / 1024);
    assert_eq!(vm.guest.poweroff().code(), Some(0));
}
