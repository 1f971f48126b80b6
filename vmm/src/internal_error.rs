//! What a bug in Tidal does: a panic in any thread stops the whole VM, with one line on stderr,
//! instead of ending only its thread. A VMM that went on with a dead vCPU thread, or a device
//! lock poisoned by a panic that every later guest access trips over, would look alive to its
//! API and its user while the guest is stuck.
//!
//! A panic in a thread other than `main` asks the VM to stop ([`ExitReason::InternalError`]):
//! the main thread then tears down as for any other exit (calls in flight answered, the API
//! socket removed) within its bounded waits, and Tidal exits with
//! [`INTERNAL_ERROR_EXIT_CODE`]. A panic in `main`, or before the VM runs, aborts at once.

use std::backtrace::{Backtrace, BacktraceStatus};
use std::panic::PanicHookInfo;
use std::sync::{Arc, OnceLock};

use tidal_devices::{ExitReason, ExitSignal};

/// The exit code after an internal error (`EX_SOFTWARE` of sysexits.h).
pub const INTERNAL_ERROR_EXIT_CODE: u8 = 70;

/// The running VM's exit signal, once there is one to stop.
static RUNNING_VM: OnceLock<Arc<ExitSignal>> = OnceLock::new();

/// Makes every later panic print [`internal_error_line`] (and a backtrace when
/// `RUST_BACKTRACE` asks for one, which needs `--seccomp off`: reading debug info opens files)
/// and stop the VM, or, with no VM running or in the main thread, abort the process.
pub fn stop_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        eprintln!("{}", internal_error_line(name, info));
        let backtrace = Backtrace::capture();
        if backtrace.status() == BacktraceStatus::Captured {
            eprintln!("{backtrace}");
        }
        match RUNNING_VM.get() {
            Some(exit) if name != "main" => exit.request(ExitReason::InternalError),
            _ => std::process::abort(),
        }
    }));
}

/// From now on a panic stops the VM that `exit` ends.
pub fn stop_on_panic_through(exit: Arc<ExitSignal>) {
    // Set once: one VM per process.
    let _ = RUNNING_VM.set(exit);
}

/// `tidal: error: internal error in thread 'NAME' at FILE:LINE: MESSAGE; ...`.
fn internal_error_line(thread: &str, info: &PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    let location = info
        .location()
        .map_or_else(|| "an unknown place".to_owned(), ToString::to_string);
    format!(
        "tidal: error: internal error in thread '{thread}' at {location}: {message}; stopping \
         the VM (a bug: please report this line)"
    )
}
