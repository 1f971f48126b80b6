//! Faults while memory is in motion: tidal stopped by SIGTERM during a hot-add and during a
//! hot-remove, and the guest kernel panicking or triple-faulting during a hot-remove. Each time
//! tidal must end cleanly: its documented exit code (143 for SIGTERM, 3 for a guest panic, 0 for
//! a reset), one line on stderr saying why, its API socket file removed, and the API call in
//! flight answered with an error instead of being left hanging. Like hotplug.rs, these boot
//! Linux and need hardware-backed KVM: `ci/test.sh` runs them in the test host elsewhere.

use std::thread::JoinHandle;
use std::time::Duration;

use tidal_api::{ClientError, DimmState, EventStream};
use tidal_tests::elastic::{ElasticVm, GIB};
use tidal_tests::Guest;

/// tidal's exit code after SIGTERM (128 + 15).
const EXIT_SIGTERM: i32 = 143;
/// tidal's exit code when the guest reset, a triple fault included (Tidal restarts no guest).
const EXIT_RESET: i32 = 0;
/// tidal's exit code when the guest kernel panicked.
const EXIT_GUEST_PANICKED: i32 = 3;
/// How long tidal may take to exit once told to stop: it stops the vCPUs (2 s at most) and
/// gives API calls in flight a second.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits for the next event that puts a DIMM in `state`.
fn wait_for_event(vm: &mut ElasticVm, events: &mut EventStream, state: DimmState) {
    for event in events.by_ref() {
        match event {
            Ok(event) if event.new_state == state => return,
            Ok(_) => {}
            Err(e) => vm.guest.fail(&format!("the events stream failed: {e}")),
        }
    }
    vm.guest.fail(&format!(
        "the events stream ended before a DIMM became {state:?}"
    ));
}

/// Asserts that the pvpanic driver is bound to tidal's device, so a panic will be reported.
fn assert_pvpanic_bound(vm: &mut ElasticVm) {
    let bound = vm.guest.run("ls /sys/bus/platform/drivers/pvpanic-mmio");
    if !bound.success() || !bound.output.contains("QEMU0001:00") {
        let modules = vm.guest.run("lsmod; dmesg | grep -i pvpanic").output;
        vm.guest.fail(&format!(
            "the guest's pvpanic-mmio driver is not bound to QEMU0001:00 ({}); modules \
             and log:\n{modules}",
            bound.output
        ));
    }
}

/// Waits for tidal to exit and checks that it did so with `code`, said `why` on stderr and
/// removed its API socket file.
fn expect_clean_stop(vm: &mut ElasticVm, code: i32, why: &str) {
    let exit_code = vm.guest.expect_exit_code(STOP_TIMEOUT);
    if exit_code != code {
        vm.guest.fail(&format!(
            "tidal exited with {exit_code}, expected {code} ({why})"
        ));
    }
    if !vm.guest.stderr().contains(why) {
        vm.guest
            .fail(&format!("tidal's stderr does not say {why:?}"));
    }
    if vm.socket.exists() {
        vm.guest.fail(&format!(
            "the API socket {} is still there after tidal exited",
            vm.socket.display()
        ));
    }
}

/// Checks that the resize in flight was answered with the VM-stopping error naming `why`.
fn expect_stopping_error(vm: &ElasticVm, resize: JoinHandle<Result<(), ClientError>>, why: &str) {
    match resize.join().expect("the resize thread") {
        Err(ClientError::Api { status, message })
            if status.as_u16() == 500
                && message.contains("the VM is stopping")
                && message.contains(why) => {}
        Ok(()) => vm.guest.fail(
            "the resize succeeded: the guest finished it before tidal was stopped, so this \
             run did not test a stop during the operation (a lost race, not a tidal bug)",
        ),
        Err(other) => vm.guest.fail(&format!(
            "the resize in flight should have failed with \"the VM is stopping ({why}) \
             ...\", got: {other:?}"
        )),
    }
}

#[test]
fn the_pvpanic_driver_binds_to_tidals_device() {
    let mut vm = ElasticVm::default_boot(Guest::new());
    assert_pvpanic_bound(&mut vm);
    // What the driver kept of what the register offered (hex): PANICKED | CRASH_LOADED.
    assert_eq!(
        vm.guest
            .run_ok("cat /sys/bus/platform/devices/QEMU0001:00/capability"),
        "3"
    );
    assert!(vm.guest.poweroff().success());
}

#[test]
fn a_guest_panic_ends_tidal_with_exit_code_3() {
    let mut vm = ElasticVm::default_boot(Guest::new());
    assert_pvpanic_bound(&mut vm);
    vm.guest.send_line("echo c > /proc/sysrq-trigger");
    expect_clean_stop(&mut vm, EXIT_GUEST_PANICKED, "the guest kernel panicked");
}

/// SIGTERM as soon as tidal has plugged a 4 GiB DIMM: the guest takes a second or more to add
/// that much, and tidal reacts within milliseconds, so the resize is still waiting for it.
#[test]
fn sigterm_during_a_hot_add_ends_tidal_cleanly() {
    let mut vm = ElasticVm::default_boot(Guest::new());
    let mut events = vm.api.events().expect("subscribe to events");
    let resize = vm.resize_in_background(5 * GIB);
    wait_for_event(&mut vm, &mut events, DimmState::Inserting);
    vm.guest.signal(libc::SIGTERM);
    expect_clean_stop(&mut vm, EXIT_SIGTERM, "received SIGTERM; stopping the VM");
    expect_stopping_error(&vm, resize, "Tidal received SIGTERM");
}

/// SIGTERM while the guest migrates 128 MiB out of the DIMM being removed (seconds in the test
/// host: 64 MiB took 1.5 s in the benchmark; see docs/benchmarks.md), and tidal reacts within
/// milliseconds.
#[test]
fn sigterm_during_a_hot_remove_ends_tidal_cleanly() {
    let mut vm = ElasticVm::default_boot(Guest::new());
    let resize = remove_a_filled_dimm(&mut vm);
    vm.guest.signal(libc::SIGTERM);
    expect_clean_stop(&mut vm, EXIT_SIGTERM, "received SIGTERM; stopping the VM");
    expect_stopping_error(&vm, resize, "Tidal received SIGTERM");
}

/// The guest kernel panics (sysrq `c`) while it migrates data out of the DIMM being removed:
/// pvpanic tells tidal, which reports it, exits with 3 and fails the removal in flight.
#[test]
fn a_guest_panic_during_a_hot_remove_is_reported_and_ends_tidal_cleanly() {
    let mut vm = ElasticVm::default_boot(Guest::new());
    assert_pvpanic_bound(&mut vm);
    let resize = remove_a_filled_dimm(&mut vm);
    // The shell still runs beside the migration; its answer never comes.
    vm.guest.send_line("echo c > /proc/sysrq-trigger");
    expect_clean_stop(&mut vm, EXIT_GUEST_PANICKED, "the guest kernel panicked");
    expect_stopping_error(&vm, resize, "the guest kernel panicked");
    expect_dimm_removing(&vm);
}

/// The guest dies of a real triple fault (`reboot=t` makes sysrq `b` reboot through one) while
/// it migrates data out of the DIMM being removed: tidal logs the fault, the DIMMs' states with
/// the one being removed, treats it as a reset (exit 0) and fails the removal in flight.
#[test]
fn a_triple_fault_during_a_hot_remove_is_reported_with_the_dimms() {
    let mut vm = ElasticVm::default_boot(Guest::new().cmdline_extra("reboot=t"));
    let resize = remove_a_filled_dimm(&mut vm);
    vm.guest.send_line("echo b > /proc/sysrq-trigger");
    expect_clean_stop(&mut vm, EXIT_RESET, "triple fault");
    expect_stopping_error(&vm, resize, "the guest reset");
    expect_dimm_removing(&vm);
}

/// Plugs a 1 GiB DIMM, fills 128 MiB of the guest's memory and starts the removal of that DIMM
/// in the background; returns once the guest was asked to eject it (it is migrating the data).
fn remove_a_filled_dimm(vm: &mut ElasticVm) -> JoinHandle<Result<(), ClientError>> {
    vm.resize(2 * GIB);
    vm.fill(128);
    let mut events = vm.api.events().expect("subscribe to events");
    let resize = vm.resize_in_background(GIB);
    wait_for_event(vm, &mut events, DimmState::Removing);
    resize
}

/// Checks that tidal's last word on the DIMMs has the one the resize was removing.
fn expect_dimm_removing(vm: &ElasticVm) {
    let Some(dimms) = vm.guest.dimms_at_the_end() else {
        vm.guest
            .fail("tidal did not log the DIMMs' states when the VM ended");
    };
    if !dimms.contains("dimm") || !dimms.contains(") removing") {
        vm.guest.fail(&format!(
            "no DIMM was being removed in tidal's last word: {dimms}"
        ));
    }
}
