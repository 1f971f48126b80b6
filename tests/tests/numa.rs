//! NUMA guests (`--numa`): the nodes as the guest sees them (vCPUs, memory, distances from the
//! SLIT), and memory hot-added to one node and removed again.

use tidal_api::{AddMemoryRequest, DimmState, RemoveMemoryRequest};
use tidal_tests::elastic::{ElasticVm, BLOCK, GIB};
use tidal_tests::Guest;

/// `MemTotal` of one guest node, in KiB, from its sysfs meminfo ("Node 1 MemTotal: N kB").
fn node_memtotal_kib(vm: &mut ElasticVm, node: u32) -> u64 {
    vm.guest.run_number(&format!(
        "awk '/MemTotal/ {{ print $4 }}' /sys/devices/system/node/node{node}/meminfo"
    ))
}

#[test]
fn two_nodes_show_their_vcpus_memory_and_distances_and_take_a_dimm_each_way() {
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
    let r = vm.api.add_memory(&AddMemoryRequest { size: GIB, node: 0 });
    let message = vm.expect_api_error(r, 400);
    assert!(
        message.contains("node 0 has no hotplug memory"),
        "{message}"
    );
    let r = vm.api.add_memory(&AddMemoryRequest { size: GIB, node: 2 });
    let message = vm.expect_api_error(r, 400);
    assert!(message.contains("node 2 does not exist"), "{message}");

    let dimm = vm
        .api
        .add_memory(&AddMemoryRequest { size: GIB, node: 1 })
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
    assert_eq!(vm.guest.poweroff().code(), Some(0));
}
