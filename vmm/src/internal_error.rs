//! What a bug in Tidal does: a panic in any thread ends the process at once, with one line on
//! stderr, instead of ending only its thread. A VMM that went on with a dead vCPU thread, or a
//! device lock poisoned by a panic that every later guest access trips over, would look alive
//! to its API and its user while the guest is stuck.

use std::backtrace::{Backtrace, BacktraceStatus};
use std::panic::PanicHookInfo;

/// Makes every later panic print [`internal_error_line`] (and a backtrace when
/// `RUST_BACKTRACE` asks for one, which needs `--seccomp off`: reading debug info opens files)
/// and abort the process: it ends by SIGABRT, exit status 134 in a shell.
pub fn abort_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        eprintln!(
            "{}",
            internal_error_line(thread.name().unwrap_or("unnamed"), info)
        );
        let backtrace = Backtrace::capture();
        if backtrace.status() == BacktraceStatus::Captured {
            eprintln!("{backtrace}");
        }
        std::process::abort();
    }));
}

/// `tidal: error: internal error in thread 'NAME' at FILE:LINE: MESSAGE; Tidal stops`.
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
        "tidal: error: internal error in thread '{thread}' at {location}: {message}; Tidal stops \
         (a bug: please report this line)"
    )
}
