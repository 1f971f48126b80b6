//! The containerd runtime (`io.containerd.tidal.v2`, the `shim` crate) under Debian's real
//! containerd, driven by `ctr`: a container is a Tidal VM of the container's memory limit,
//! resized in place by an update of its limit (sent to the shim as containerd forwards it).
//! These need hardware-backed KVM (the test host).

use std::path::Path;
use std::time::{Duration, Instant};

use tidal_api::ApiClient;
use tidal_tests::containerd::{tidal_processes_naming, Containerd, BUSYBOX_IMAGE, RUNTIME};
use tidal_tests::elastic::guest_ram_mappings;
use tidal_tests::require_kvm_for_linux_guests;

const MIB: u64 = 1 << 20;

/// A VM's boot and a resize under nested emulation take seconds; this is far more.
const CTR_TIMEOUT: Duration = Duration::from_secs(300);

/// The MemTotal values (KiB) a container's log shows, in order.
fn memtotals(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|line| line.strip_prefix("MemTotal:"))
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

/// Waits until the container's log shows MemTotal `kib`: its guest sees the whole change.
fn wait_for_memtotal(containerd: &Containerd, log: &Path, kib: u64) {
    wait_for_line(
        containerd,
        "elastic",
        log,
        &format!("MemTotal {kib} kB"),
        |line| memtotals(line).first() == Some(&kib),
    );
}

/// The first MemTotal (KiB) the container's log shows.
fn first_memtotal(containerd: &Containerd, log: &Path) -> u64 {
    let line = wait_for_line(containerd, "elastic", log, "a MemTotal", |line| {
        !memtotals(line).is_empty()
    });
    memtotals(&line)[0]
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

#[test]
fn an_update_grows_and_shrinks_a_running_container_in_place() {
    require_kvm_for_linux_guests();
    let containerd = Containerd::start();
    let log = containerd.file("elastic.log");
    let log_uri = format!("file://{}", log.display());
    let limit = (512 * MIB).to_string();
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
    let api = ApiClient::new(bundle.join("tidal.sock"));
    let first = first_memtotal(&containerd, &log);
    let pid = containerd
        .ctr_ok(&["task", "ls"], CTR_TIMEOUT)
        .lines()
        .find(|line| line.starts_with("elastic "))
        .and_then(|line| line.split_whitespace().nth(1)?.parse::<u32>().ok())
        .expect("ctr task ls names the task's pid");
    let mapped = |pid| guest_ram_mappings(pid).iter().sum::<u64>();
    assert_eq!(api.info().expect("vm.info").memory_actual_size, 512 * MIB);
    assert_eq!(
        mapped(pid),
        512 * MIB,
        "tidal's guest RAM mappings at 512 MiB"
    );

    // The guest sees exactly what the VM gains or gives back, over the 512 MiB it started at.
    for mib in [1536, 768] {
        containerd
            .update_memory("elastic", mib * MIB)
            .unwrap_or_else(|e| panic!("the update to {mib} MiB: {e}"));
        wait_for_memtotal(&containerd, &log, first + (mib - 512) * 1024);
        assert_eq!(api.info().expect("vm.info").memory_actual_size, mib * MIB);
        assert_eq!(
            mapped(pid),
            mib * MIB,
            "tidal's guest RAM mappings at {mib} MiB"
        );
    }
    // The kubelet repeats its updates: the same limit again changes nothing.
    containerd
        .update_memory("elastic", 768 * MIB)
        .unwrap_or_else(|e| panic!("the same update again: {e}"));
    assert_eq!(api.info().expect("vm.info").memory_actual_size, 768 * MIB);

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
    assert!(
        !bundle.join("tidal.sock").exists(),
        "the API socket was left behind"
    );
}
