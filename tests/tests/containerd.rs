//! The containerd runtime (`io.containerd.tidal.v2`, the `shim` crate) under Debian's real
//! containerd, driven by `ctr` and, as the kubelet drives it, through the CRI: a container is a
//! Tidal VM of the container's memory limit, resized in place by an update of its limit.
//! These need hardware-backed KVM (the test host).

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1::ContainerState;
use tidal_api::{ApiClient, DimmState};
use tidal_tests::containerd::{
    processes_naming, tidal_processes_naming, Containerd, BUSYBOX_IMAGE, CONFIGURED_HOTPLUG_SIZE,
    CRI_HANDLER, CRI_NAMESPACE, RUNTIME,
};
use tidal_tests::cri::Cri;
use tidal_tests::elastic::guest_ram_mappings;
use tidal_tests::pool::PoolDaemon;
use tidal_tests::require_kvm_for_linux_guests;

const MIB: u64 = 1 << 20;

/// A VM's boot and a resize under nested emulation take seconds; this is far more.
const CTR_TIMEOUT: Duration = Duration::from_secs(300);

/// The MemTotal values (KiB) a container's log shows, in order (its lines as the process wrote
/// them, or with the CRI log format's time, stream and tag before them).
fn memtotals(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|line| line.split_once("MemTotal:").map(|(_, rest)| rest))
        .filter_map(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .collect()
}

/// Waits until `file`, container `id`'s log, shows a line that `wanted` accepts; returns that
/// line.
fn wait_for_line(
    containerd: &Containerd,
    id: &str,
    file: &Path,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + CTR_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if let Some(line) = text.lines().rev().find(|line| wanted(line)) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "{} never showed {what}; it holds:\n{text}\n{}",
            file.display(),
            containerd.vm_logs(id)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `log`, container `id`'s, shows MemTotal `kib`: its guest sees the whole change.
fn wait_for_memtotal(containerd: &Containerd, id: &str, log: &Path, kib: u64) {
    wait_for_line(containerd, id, log, &format!("MemTotal {kib} kB"), |line| {
        memtotals(line).first() == Some(&kib)
    });
}

/// The first MemTotal (KiB) container `id`'s log shows.
fn first_memtotal(containerd: &Containerd, id: &str, log: &Path) -> u64 {
    let line = wait_for_line(containerd, id, log, "a MemTotal", |line| {
        !memtotals(line).is_empty()
    });
    memtotals(&line)[0]
}

/// The memory limit `ctr task metrics` shows for task `id` (the runtime's `Stats`, in the
/// cgroup v1 shape).
fn metrics_memory_limit(containerd: &Containerd, id: &str) -> u64 {
    let metrics = containerd.ctr_ok(&["task", "metrics", id], CTR_TIMEOUT);
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("memory.limit_in_bytes"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("ctr task metrics shows no memory limit:\n{metrics}"))
}

/// The resident memory (bytes) of process `pid`.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

#[test]
fn ctr_run_shows_the_output_and_exit_status_of_a_vm_of_the_containers_limit() {
    require_kvm_for_linux_guests();
    let containerd = Containerd::start();
    let limit = (512 * MIB).to_string();
    let out = containerd.ctr(
        &[
            "run",
            "--snapshotter",
            "native",
            "--rm",
            "--runtime",
            RUNTIME,
            "--memory-limit",
            &limit,
            BUSYBOX_IMAGE,
            "one-shot",
            "sh",
            "-c",
            "grep MemTotal /proc/meminfo; echo the container ran; exit 3",
        ],
        CTR_TIMEOUT,
    );
    println!("ctr run: {}\n{}{}", out.status, out.stdout, out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "ctr run should exit with the container's status 3\nstdout: {}\nstderr: {}\n\
         containerd's log:\n{}",
        out.stdout,
        out.stderr,
        containerd.log()
    );
    assert!(out.stdout.contains("the container ran"), "{}", out.stdout);
    // The VM boots with 256 MiB and gets the rest of the limit before the process starts.
    let memtotal = memtotals(&out.stdout);
    assert!(
        memtotal.len() == 1 && memtotal[0] * 1024 > 384 * MIB && memtotal[0] * 1024 <= 512 * MIB,
        "MemTotal {memtotal:?} KiB for a 512 MiB container"
    );
    assert!(
        tidal_processes_naming(&containerd.bundle("one-shot")).is_empty(),
        "a tidal process outlived its container"
    );
}

/// The container's VM is in a host memory pool of 2 GiB (the runtime's `pool`): the pool
/// counts what it holds, refuses an update past its budget, and is empty once it is gone.
#[test]
fn an_update_grows_and_shrinks_a_running_container_in_place() {
    require_kvm_for_linux_guests();
    let containerd = Containerd::start();
    let pool_dir = tempfile::tempdir().expect("a directory for the pool");
    let pool = PoolDaemon::start(pool_dir.path(), "2G");
    // Each VM in the pool, and its boot RAM and DIMMs.
    let held = || -> Vec<(String, u64)> {
        let shown = pool.show();
        shown
            .vms
            .iter()
            .map(|vm| (vm.name.clone(), vm.boot + vm.plugged))
            .collect()
    };
    let log = containerd.file("elastic.log");
    let log_uri = format!("file://{}", log.display());
    let limit = (512 * MIB).to_string();
    let config = containerd.file("pooled.toml");
    let runtime = std::fs::read_to_string(containerd.runtime_config()).expect("its configuration");
    std::fs::write(
        &config,
        format!("{runtime}pool = \"{}\"\n", pool.socket().display()),
    )
    .expect("the runtime's configuration with the pool");
    let config = config.display().to_string();
    // 100 MiB of checksummed data in the container's tmpfs, MemTotal every second, and on
    // SIGTERM the data checked and status 7.
    let script = "head -c 104857600 /dev/urandom > /tmp/data && md5sum /tmp/data > /tmp/sum && \
                  trap 'md5sum -c /tmp/sum; exit 7' TERM; \
                  while true; do grep MemTotal /proc/meminfo; sleep 1; done";
    containerd.ctr_ok(
        &[
            "run",
            "--snapshotter",
            "native",
            "-d",
            "--log-uri",
            &log_uri,
            "--runtime",
            RUNTIME,
            "--runtime-config-path",
            &config,
            "--memory-limit",
            &limit,
            BUSYBOX_IMAGE,
            "elastic",
            "sh",
            "-c",
            script,
        ],
        CTR_TIMEOUT,
    );
    let bundle = containerd.bundle("elastic");
    let socket = containerd.api_socket("default", "elastic");
    let api = ApiClient::new(&socket);
    let first = first_memtotal(&containerd, "elastic", &log);
    let pid = containerd
        .ctr_ok(&["task", "ls"], CTR_TIMEOUT)
        .lines()
        .find(|line| line.starts_with("elastic "))
        .and_then(|line| line.split_whitespace().nth(1)?.parse::<u32>().ok())
        .expect("ctr task ls names the task's pid");
    let mapped = |pid| guest_ram_mappings(pid).iter().sum::<u64>();
    let info = api.info().expect("vm.info");
    assert_eq!(info.memory_actual_size, 512 * MIB);
    // The runtime's configuration file, named by ctr, sized the hotplug region.
    assert_eq!(info.memory.hotplug_size, CONFIGURED_HOTPLUG_SIZE);
    assert_eq!(
        mapped(pid),
        512 * MIB,
        "tidal's guest RAM mappings at 512 MiB"
    );
    assert_eq!(held(), [("elastic".to_owned(), 512 * MIB)], "the pool");

    // The guest sees exactly what the VM gains or gives back, over the 512 MiB it started at.
    for mib in [1536, 768] {
        containerd
            .update_memory("elastic", mib * MIB)
            .unwrap_or_else(|e| panic!("the update to {mib} MiB: {e}"));
        wait_for_memtotal(&containerd, "elastic", &log, first + (mib - 512) * 1024);
        assert_eq!(api.info().expect("vm.info").memory_actual_size, mib * MIB);
        assert_eq!(metrics_memory_limit(&containerd, "elastic"), mib * MIB);
        assert_eq!(
            mapped(pid),
            mib * MIB,
            "tidal's guest RAM mappings at {mib} MiB"
        );
        assert_eq!(held(), [("elastic".to_owned(), mib * MIB)], "the pool");
    }
    // The kubelet repeats its updates: the same limit again changes nothing.
    containerd
        .update_memory("elastic", 768 * MIB)
        .unwrap_or_else(|e| panic!("the same update again: {e}"));
    assert_eq!(api.info().expect("vm.info").memory_actual_size, 768 * MIB);
    // Past the pool's budget: refused with the pool's word, the VM unchanged.
    let refused = containerd
        .update_memory("elastic", 2304 * MIB)
        .expect_err("an update past the pool's budget");
    assert!(
        refused.contains("the host memory pool refused")
            && refused.contains("free of its budget of 2048 MiB"),
        "{refused}"
    );
    assert_eq!(api.info().expect("vm.info").memory_actual_size, 768 * MIB);
    assert_eq!(held(), [("elastic".to_owned(), 768 * MIB)], "the pool");

    containerd.ctr_ok(&["task", "kill", "elastic"], CTR_TIMEOUT);
    wait_for_line(&containerd, "elastic", &log, "the data checked", |line| {
        line == "/tmp/data: OK"
    });
    let deadline = Instant::now() + CTR_TIMEOUT;
    while !containerd
        .ctr_ok(&["task", "ls"], CTR_TIMEOUT)
        .lines()
        .any(|line| line.starts_with("elastic ") && line.contains("STOPPED"))
    {
        assert!(
            Instant::now() < deadline,
            "the task never stopped after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let deleted = containerd.ctr_ok(&["task", "delete", "elastic"], CTR_TIMEOUT);
    println!("ctr task delete: {deleted}");
    containerd.ctr_ok(&["container", "delete", "elastic"], CTR_TIMEOUT);
    assert!(
        tidal_processes_naming(&bundle).is_empty(),
        "tidal outlived its container"
    );
    assert!(!socket.exists(), "the API socket was left behind");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !held().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the pool still holds {:?}",
            held()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pids of the `containerd-shim-tidal-v2` processes serving `containerd`.
fn shims_of(containerd: &Containerd) -> Vec<u32> {
    processes_naming("containerd-shim-tidal-v2", &containerd.socket())
}

#[test]
fn a_pods_container_is_resized_in_place_through_cri_and_a_decrease_it_cannot_take_is_refused() {
    require_kvm_for_linux_guests();
    let containerd = Containerd::start_with_cri();
    let mut cri = Cri::connect(&containerd.socket());
    let logs = containerd.file("pod-logs");
    std::fs::create_dir_all(&logs).expect("the pod's log directory");

    let pod = cri.run_pod("elastic-pod", CRI_HANDLER, &logs);
    // The sandbox is a placeholder: no VM.
    assert!(
        tidal_processes_naming(&containerd.bundle_in(CRI_NAMESPACE, &pod.id)).is_empty(),
        "the pod's sandbox got a VM"
    );
    // 200 MiB of checksummed data in the container's tmpfs (let grow past half the memory),
    // MemTotal every second; SIGUSR1 makes the guest refuse ejects; SIGTERM checks the data
    // and ends with status 7.
    let script = "mount -o remount,size=90% /tmp && \
                  head -c 209715200 /dev/urandom > /tmp/data && md5sum /tmp/data > /tmp/sum && \
                  trap 'echo 0 > /sys/firmware/acpi/hotplug/memory/enabled && \
                  echo ejects refused' USR1; trap 'md5sum -c /tmp/sum; exit 7' TERM; \
                  while true; do grep MemTotal /proc/meminfo; sleep 1; done";
    let id = cri.create_container(&pod, "app", BUSYBOX_IMAGE, &["sh", "-c", script], 512 * MIB);
    cri.start_container(&id).unwrap_or_else(|e| {
        panic!("StartContainer: {e}\n{}", containerd.vm_logs(&id));
    });
    let log = Cri::log_path(&pod, "app");
    let first = first_memtotal(&containerd, &id, &log);
    let bundle = containerd.bundle_in(CRI_NAMESPACE, &id);
    let socket = containerd.api_socket(CRI_NAMESPACE, &id);
    let api = ApiClient::new(&socket);
    let info = api.info().expect("vm.info");
    assert_eq!(info.memory_actual_size, 512 * MIB);
    // The runtime's configuration file, named by the CRI configuration, sized the region.
    assert_eq!(info.memory.hotplug_size, CONFIGURED_HOTPLUG_SIZE);
    let boot = info.memory.boot;
    let status = cri.container_status(&id);
    assert_eq!(
        status.state(),
        ContainerState::ContainerRunning,
        "{status:?}"
    );
    let tidal = tidal_processes_naming(&bundle);
    assert_eq!(tidal.len(), 1, "one tidal process for the container");
    let memory = || api.info().expect("vm.info").memory_actual_size;
    let plugged = || -> u64 {
        let dimms = api.memory().expect("vm.memory");
        dimms
            .iter()
            .filter(|d| d.state == DimmState::Added)
            .map(|d| d.size)
            .sum()
    };

    // An in-place pod resize, up, down, and down again to the same size (the kubelet repeats
    // itself): the guest sees exactly each change, the DIMMs add up, and the host has what
    // the VM has, no more.
    for mib in [1536, 768, 768] {
        cri.update_memory(&id, mib * MIB).unwrap_or_else(|e| {
            let logs = containerd.vm_logs(&id);
            panic!("UpdateContainerResources to {mib} MiB: {e}\n{logs}")
        });
        wait_for_memtotal(&containerd, &id, &log, first + (mib - 512) * 1024);
        assert_eq!(memory(), mib * MIB);
        assert_eq!(
            boot + plugged(),
            mib * MIB,
            "vm.memory's DIMMs at {mib} MiB"
        );
        assert_eq!(
            guest_ram_mappings(tidal[0]).iter().sum::<u64>(),
            mib * MIB,
            "tidal's guest RAM mappings at {mib} MiB"
        );
    }

    // The kubelet's container stats: the working set is what the VM holds on the host.
    let before = resident_bytes(tidal[0]);
    let stats = cri.container_stats(&id);
    let after = resident_bytes(tidal[0]);
    let working_set = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|w| w.value)
        .expect("ContainerStats has a working set");
    assert!(
        working_set >= before.min(after) * 9 / 10 && working_set <= before.max(after) * 11 / 10,
        "working set {working_set} B, tidal's RSS {before} then {after} B"
    );

    // Down to the boot memory would leave the guest less than its 200 MiB of data: refused
    // at once, the VM unchanged.
    let refused = cri
        .update_memory(&id, boot)
        .expect_err("a decrease below what the container uses fails");
    println!("the decrease below the container's use: {refused}");
    assert!(
        refused.message().contains("cannot give back"),
        "the error should say the guest cannot give the memory back: {refused}"
    );
    assert_eq!((memory(), boot + plugged()), (768 * MIB, 768 * MIB));

    // A decrease the guest itself refuses fails too, and changes nothing either.
    containerd.ctr_ok(
        &[
            "--namespace",
            CRI_NAMESPACE,
            "task",
            "kill",
            "--signal",
            "SIGUSR1",
            &id,
        ],
        CTR_TIMEOUT,
    );
    wait_for_line(&containerd, &id, &log, "ejects refused", |line| {
        line.ends_with("ejects refused")
    });
    let refused = cri
        .update_memory(&id, 512 * MIB)
        .expect_err("a decrease the guest refuses fails");
    println!("the decrease the guest refused: {refused}");
    assert!(
        refused.message().contains("refused"),
        "the error should say the guest refused: {refused}"
    );
    assert_eq!((memory(), boot + plugged()), (768 * MIB, 768 * MIB));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let newest = memtotals(&text).last().copied();
    assert_eq!(
        newest,
        Some(first + 256 * 1024),
        "the guest's MemTotal changed"
    );
    let status = cri.container_status(&id);
    assert_eq!(
        status.state(),
        ContainerState::ContainerRunning,
        "{status:?}"
    );

    // The stop signal reaches the process, whose data is intact.
    cri.stop_container(&id, Duration::from_secs(60));
    wait_for_line(&containerd, &id, &log, "the data checked", |line| {
        line.ends_with("/tmp/data: OK")
    });
    let status = cri.container_status(&id);
    assert_eq!(
        (status.state(), status.exit_code),
        (ContainerState::ContainerExited, 7),
        "{status:?}"
    );
    cri.remove_container(&id);
    cri.stop_pod(&pod);
    cri.remove_pod(&pod);
    assert!(
        tidal_processes_naming(&bundle).is_empty(),
        "tidal outlived its container"
    );
    assert!(!socket.exists(), "the API socket was left behind");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !shims_of(&containerd).is_empty() || bundle.exists() {
        assert!(
            Instant::now() < deadline,
            "after the pod was removed, shims {:?} still run, or its bundle is there: {}",
            shims_of(&containerd),
            bundle.exists()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
