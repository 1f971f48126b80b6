//! A panic in any of Tidal's threads stops the VM, with one line saying where. Each test runs
//! itself again as a child process that installs the hook and panics, so that the abort of the
//! second case ends the child, not the test.

#![allow(clippy::unwrap_used)]

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use tidal_devices::{ExitReason, ExitSignal};
use tidal_vmm::internal_error;

const CHILD: &str = "TIDAL_TEST_PANIC_CHILD";

/// Runs `test` of this file again in a child with [`CHILD`] set.
fn child(test: &str) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(CHILD, "1")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

fn in_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// The one `tidal:` line of `stderr`, which must say that thread `thread` panicked.
fn said(stderr: &str, thread: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("tidal:")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let start = format!(
        "tidal: error: internal error in thread '{thread}' at vmm/tests/internal_error.rs:"
    );
    assert!(lines[0].starts_with(&start), "{stderr}");
    assert!(
        lines[0].ends_with(
            ": the device model is confused; stopping the VM (a bug: please report this line)"
        ),
        "{stderr}"
    );
}

fn panic_in_thread(name: &str) {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(|| panic!("the device model is confused"))
        .unwrap()
        .join()
        .unwrap_err();
}

#[test]
fn a_panic_in_a_vcpu_thread_stops_the_vm_as_an_internal_error() {
    if in_child() {
        internal_error::stop_on_panic();
        let exit = Arc::new(ExitSignal::new().unwrap());
        internal_error::stop_on_panic_through(exit.clone());
        panic_in_thread("vcpu0");
        // The main loop would wake on the signal's eventfd and tear the VM down.
        assert_eq!(exit.event_fd().read().unwrap(), 1);
        println!("exit reason: {:?}", exit.reason());
        return;
    }
    let output = child("a_panic_in_a_vcpu_thread_stops_the_vm_as_an_internal_error");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "exit reason: {:?}",
            Some(ExitReason::InternalError)
        )),
        "{stdout}"
    );
    said(&stderr, "vcpu0");
}

#[test]
fn a_panic_in_the_main_thread_or_before_the_vm_runs_aborts() {
    if in_child() {
        internal_error::stop_on_panic();
        // No VM yet: nobody could tear it down.
        panic_in_thread("api");
        // Had the hook not aborted, the child would get here and pass.
        std::thread::sleep(Duration::from_secs(5));
        return;
    }
    let output = child("a_panic_in_the_main_thread_or_before_the_vm_runs_aborts");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.signal(), Some(libc::SIGABRT), "{stderr}");
    said(&stderr, "api");
}
