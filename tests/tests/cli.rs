//! The command line and the process: bad command lines must be refused with a non-zero exit
//! and one clear line on stderr, before any KVM work; and SIGTERM, SIGINT and SIGHUP must end a
//! running tidal cleanly, with its exit code and without its API socket file. The signal tests
//! start the real guest and stop tidal while it boots, so they need a `/dev/kvm` but not a fast
//! one: they run on KVM-PVM build machines as well as in the test host.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use tidal_api::{AddMemoryRequest, ApiClient, ClientError, DimmState, ResizeRequest};
use tidal_tests::{kvm_kind, run_tidal, Guest, GuestImages, KvmKind, RunningGuest};

/// Runs tidal with `args`, expects a refusal, and returns its one-line error message.
fn refused(args: &[&str]) -> String {
    let out = run_tidal(args, Duration::from_secs(30));
    assert!(
        !out.status.success(),
        "tidal {args:?} succeeded; it should have refused\nstderr:\n{}",
        out.stderr
    );
    assert!(
        out.status.code().is_some(),
        "tidal {args:?} died of a signal ({}) instead of exiting with an error\nstderr:\n{}",
        out.status,
        out.stderr
    );
    assert!(
        !out.stderr.contains("panicked"),
        "tidal {args:?} panicked:\n{}",
        out.stderr
    );
    // One line, besides clap's own "For more information, try '--help'." hint.
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information, try"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "tidal {args:?} should print exactly one error line, it printed:\n{}",
        out.stderr
    );
    lines[0].to_owned()
}

/// Asserts that `message` mentions at least one of `words` (case-insensitive).
fn assert_mentions(message: &str, words: &[&str]) {
    let lower = message.to_lowercase();
    assert!(
        words.iter().any(|w| lower.contains(&w.to_lowercase())),
        "the error {message:?} should mention one of {words:?}"
    );
}

fn kernel() -> String {
    GuestImages::find().kernel.to_string_lossy().into_owned()
}

#[test]
fn missing_kernel_file_is_refused() {
    let message = refused(&["--kernel", "/nonexistent/vmlinuz"]);
    assert_mentions(&message, &["/nonexistent/vmlinuz"]);
}

#[test]
fn a_file_that_is_not_a_kernel_is_refused() {
    let message = refused(&["--kernel", "/etc/hostname"]);
    assert_mentions(&message, &["/etc/hostname", "kernel", "bzimage"]);
}

#[test]
fn zero_memory_is_refused() {
    let message = refused(&["--kernel", &kernel(), "--memory", "size=0"]);
    assert_mentions(&message, &["size", "memory"]);
}

#[test]
fn memory_with_an_unknown_unit_is_refused() {
    let message = refused(&["--kernel", &kernel(), "--memory", "size=12Q"]);
    assert_mentions(&message, &["size", "memory", "12Q"]);
}

#[test]
fn zero_cpus_are_refused() {
    let message = refused(&["--kernel", &kernel(), "--cpus", "0"]);
    assert_mentions(&message, &["cpu"]);
}

#[test]
fn a_thousand_cpus_are_refused() {
    let message = refused(&["--kernel", &kernel(), "--cpus", "1000"]);
    assert_mentions(&message, &["cpu"]);
}

#[test]
fn two_serial_ports_on_stdio_are_refused() {
    let message = refused(&["--kernel", &kernel(), "--serial2", "stdio"]);
    assert_eq!(
        message,
        "tidal: error: --serial and --serial2 cannot both be stdio: Tidal has one stdin and one stdout"
    );
}

// ------------------------------------------------------------------------------------------------
// Stop signals

/// How long tidal may take to stop after a signal: it stops its vCPUs (2 s at most) and gives
/// API requests in flight a second.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts tidal with the test guest (1 GiB and a hotplug region, so a resize can be in flight)
/// and an API socket in `dir`, and waits until the socket answers. The guest is left to boot.
fn start_with_api(dir: &Path, cmdline_extra: &str) -> (RunningGuest, ApiClient) {
    start_with_memory_and_api(dir, "size=1G,hotplug_size=1G", cmdline_extra, &[])
}

/// [`start_with_api`] with `memory` as tidal's `--memory`, and `args` on its command line.
fn start_with_memory_and_api(
    dir: &Path,
    memory: &str,
    cmdline_extra: &str,
    args: &[&str],
) -> (RunningGuest, ApiClient) {
    assert!(
        kvm_kind() != KvmKind::None,
        "this test runs tidal, which needs /dev/kvm (hardware or KVM-PVM); there is none here"
    );
    let socket = dir.join("api.sock");
    let mut guest = Guest::new()
        .memory(memory)
        .cmdline_extra(cmdline_extra)
        .arg("--api-socket")
        .arg(&socket)
        .arg("--log-level")
        .arg("info");
    for arg in args {
        guest = guest.arg(arg);
    }
    let mut tidal = guest.spawn_unchecked();
    let api = ApiClient::new(&socket).with_timeout(Duration::from_secs(120));
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.ping().is_err() {
        if let Some(status) = tidal.wait_exit(Duration::ZERO) {
            tidal.fail(&format!(
                "tidal exited ({status}) before its API socket answered"
            ));
        }
        if Instant::now() > deadline {
            tidal.fail("the API socket did not answer within 60 s");
        }
        thread::sleep(Duration::from_millis(20));
    }
    (tidal, api)
}

/// Sends `signal` to a running tidal and checks that it exits with `code`, says why on stderr
/// and removes its API socket file.
fn stop_with(tidal: &mut RunningGuest, socket: &Path, signal: i32, name: &str, code: i32) {
    tidal.signal(signal);
    let exit_code = tidal.expect_exit_code(STOP_TIMEOUT);
    if exit_code != code {
        tidal.fail(&format!(
            "tidal exited with {exit_code} after {name}, expected {code}"
        ));
    }
    let said = format!("received {name}; stopping the VM");
    if !tidal.stderr().contains(&said) {
        tidal.fail(&format!("tidal's stderr does not say {said:?}"));
    }
    if socket.exists() {
        tidal.fail(&format!("{} is still there after {name}", socket.display()));
    }
}

fn stop_while_booting(signal: i32, name: &str, code: i32) {
    let dir = tempfile::tempdir().expect("create the socket directory");
    let (mut tidal, api) = start_with_api(dir.path(), "");
    stop_with(&mut tidal, api.socket(), signal, name, code);
}

#[test]
fn sigterm_ends_tidal_with_143_and_removes_the_socket() {
    stop_while_booting(libc::SIGTERM, "SIGTERM", 143);
}

#[test]
fn sigint_ends_tidal_with_130_and_removes_the_socket() {
    stop_while_booting(libc::SIGINT, "SIGINT", 130);
}

#[test]
fn sighup_ends_tidal_with_129_and_removes_the_socket() {
    stop_while_booting(libc::SIGHUP, "SIGHUP", 129);
}

/// `vmm.shutdown` (as `tidalctl shutdown` and `ch-remote shutdown-vmm` send it) is answered,
/// then Tidal stops with exit code 0, says why, and removes its socket.
#[test]
fn vmm_shutdown_ends_tidal_with_0_and_removes_the_socket() {
    let dir = tempfile::tempdir().expect("create the socket directory");
    let (mut tidal, api) = start_with_api(dir.path(), "");
    if let Err(e) = api.shutdown() {
        tidal.fail(&format!("vmm.shutdown failed: {e}"));
    }
    let exit_code = tidal.expect_exit_code(STOP_TIMEOUT);
    if exit_code != 0 {
        tidal.fail(&format!(
            "tidal exited with {exit_code} after vmm.shutdown, expected 0"
        ));
    }
    let said = "shutdown requested through the API; stopping the VM";
    if !tidal.stderr().contains(said) {
        tidal.fail(&format!("tidal's stderr does not say {said:?}"));
    }
    if api.socket().exists() {
        tidal.fail(&format!(
            "{} is still there after vmm.shutdown",
            api.socket().display()
        ));
    }
}

/// `--user`: run by root, Tidal becomes that user with no groups, in an empty root of its own
/// mount namespace, without core files and with a cap on open files; its socket is the user's,
/// its API answers, and it still removes the socket at the end (the directory is sticky and
/// world-writable, as /tmp is). Run by anyone else, it refuses with one clear line.
#[test]
fn with_user_tidal_runs_unprivileged_in_an_empty_root() {
    const NOBODY: u32 = 65534;
    let dir = tempfile::tempdir().expect("create the socket directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777))
        .expect("make the socket directory world-writable");
    let user = format!("{NOBODY}:{NOBODY}");
    // SAFETY: geteuid only reads this process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        let message = refused(&["--kernel", &kernel(), "--serial", "off", "--user", &user]);
        assert!(message.contains("needs root"), "{message}");
        return;
    }
    let (mut tidal, api) = start_with_memory_and_api(
        dir.path(),
        "size=1G,hotplug_size=1G",
        "",
        &["--user", &user],
    );
    let proc = |file: &str| {
        std::fs::read_to_string(format!("/proc/{}/{file}", tidal.pid()))
            .unwrap_or_else(|e| panic!("read tidal's /proc {file}: {e}"))
    };
    let status = proc("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    let ids = format!("{NOBODY} {NOBODY} {NOBODY} {NOBODY}");
    assert_eq!(field("Uid:"), ids);
    assert_eq!(field("Gid:"), ids);
    assert_eq!(field("Groups:"), "");
    let limits = proc("limits");
    let limit = |name: &str| {
        limits
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|v| v.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert_eq!(limit("Max core file size"), "0 0");
    assert_eq!(limit("Max open files"), "4096 4096");
    let ns = |pid: String| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    assert_ne!(ns(tidal.pid().to_string()), ns("self".to_owned()));
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{}/root", tidal.pid()))
        .expect("list tidal's root")
        .collect();
    assert!(root.is_empty(), "tidal's root is not empty: {root:?}");
    let socket = std::fs::symlink_metadata(api.socket()).expect("stat the socket");
    assert_eq!((socket.uid(), socket.gid()), (NOBODY, NOBODY));
    if let Err(e) = api.info() {
        tidal.fail(&format!("vm.info failed after the drop: {e}"));
    }
    stop_with(&mut tidal, api.socket(), libc::SIGTERM, "SIGTERM", 143);
}

/// A hotplug call's `timeout_secs` is capped (an hour): beyond it, or 0, the call is refused
/// with 400 before anything is plugged, so no client can hold an operation for longer.
#[test]
fn a_timeout_beyond_the_cap_is_refused() {
    let dir = tempfile::tempdir().expect("create the socket directory");
    let (mut tidal, api) = start_with_api(dir.path(), "acpi=off");
    for secs in [tidal_api::MAX_TIMEOUT_SECS + 1, 0] {
        let answer = api.resize(&ResizeRequest {
            desired_ram: Some(2 << 30),
            timeout_secs: Some(secs),
            ..ResizeRequest::default()
        });
        match answer {
            Err(ClientError::Api { status, message }) if status == 400 => assert!(
                message.contains("timeout_secs must be from 1 to 3600"),
                "{message}"
            ),
            other => tidal.fail(&format!("timeout_secs {secs}: {other:?}, expected a 400")),
        }
    }
    let memory = api.memory().expect("vm.memory");
    assert!(memory.is_empty(), "a refused call plugged {memory:?}");
    stop_with(&mut tidal, api.socket(), libc::SIGTERM, "SIGTERM", 143);
}

/// A resize waiting for the guest when SIGTERM arrives gets an error answer at once, not a hang
/// and not a dropped connection. The guest boots with `acpi=off`, so it never answers the
/// hot-add, however fast it boots: the resize is certainly still waiting.
#[test]
fn sigterm_fails_a_resize_in_flight_with_an_error() {
    let dir = tempfile::tempdir().expect("create the socket directory");
    let (mut tidal, api) = start_with_api(dir.path(), "acpi=off");
    let resize = thread::spawn({
        let api = api.clone();
        move || {
            api.resize(&ResizeRequest {
                desired_ram: Some(2 << 30),
                timeout_secs: Some(600),
                force: false,
                wait: true,
                ..ResizeRequest::default()
            })
        }
    });
    // In flight once its DIMM is plugged and waits for the guest.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let dimms = api.memory().unwrap_or_default();
        if dimms.iter().any(|dimm| dimm.state == DimmState::Inserting) {
            break;
        }
        if Instant::now() > deadline || resize.is_finished() {
            tidal.fail(&format!(
                "the hot-add never waited for the guest: {dimms:?}"
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
    stop_with(&mut tidal, api.socket(), libc::SIGTERM, "SIGTERM", 143);
    match resize.join().expect("the resize thread") {
        Err(ClientError::Api { status, message })
            if status.as_u16() == 500 && message.contains("the VM is stopping") =>
        {
            assert!(message.contains("SIGTERM"), "{message}");
        }
        other => tidal.fail(&format!(
            "the resize in flight should have failed with the VM stopping, got {other:?}"
        )),
    }
}

/// A hot-add of more than the host has available is refused at once, saying what the host has
/// and how to force it, and nothing is plugged. (The guest, booted with `acpi=off`, plays no
/// part: the check comes before any memory is mapped.)
#[test]
fn a_hot_add_beyond_what_the_host_has_available_is_refused() {
    let dir = tempfile::tempdir().expect("create the socket directory");
    let (mut tidal, api) =
        start_with_memory_and_api(dir.path(), "size=512M,hotplug_size=1T", "acpi=off", &[]);
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
    let available_kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("MemAvailable in /proc/meminfo");
    let too_much = (2 * available_kib * 1024).next_multiple_of(128 << 20);
    assert!(
        too_much <= 1 << 40,
        "this host has {available_kib} KiB available: more than the test's 1 TiB region can outgrow"
    );
    let request = AddMemoryRequest {
        size: too_much,
        node: 0,
        force: false,
    };
    match api.add_memory(&request) {
        Err(ClientError::Api { status, message }) if status.as_u16() == 507 => {
            assert!(
                message.contains("of memory available, less than the") && message.contains("force"),
                "{message}"
            );
        }
        other => tidal.fail(&format!(
            "adding {too_much} bytes should have been refused with a 507, got {other:?}"
        )),
    }
    assert_eq!(api.memory().expect("vm.memory"), []);
    stop_with(&mut tidal, api.socket(), libc::SIGTERM, "SIGTERM", 143);
}
