//! A panic in any of Tidal's threads ends the whole process at once, with one line saying where.
//! The test runs itself again as a child that installs the hook and panics in a thread while
//! its main thread would go on and exit cleanly.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

const CHILD: &str = "TIDAL_TEST_PANIC_CHILD";

#[test]
fn a_panic_in_any_thread_aborts_the_process_with_one_line() {
    if std::env::var_os(CHILD).is_some() {
        tidal_vmm::internal_error::abort_on_panic();
        std::thread::Builder::new()
            .name("vcpu0".into())
            .spawn(|| panic!("the device model is confused"))
            .unwrap();
        // Had only the thread ended, the child would get here and pass.
        std::thread::sleep(Duration::from_secs(5));
        return;
    }
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_panic_in_any_thread_aborts_the_process_with_one_line",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.signal(), Some(libc::SIGABRT), "{stderr}");
    let line = "tidal: error: internal error in thread 'vcpu0' at vmm/tests/internal_error.rs:";
    let said: Vec<&str> = stderr.lines().filter(|l| l.starts_with("tidal:")).collect();
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(said[0].starts_with(line), "{stderr}");
    assert!(
        said[0].ends_with(
            ": the device model is confused; Tidal stops (a bug: please report this line)"
        ),
        "{stderr}"
    );
}
