//! The host signals that stop Tidal cleanly: SIGTERM, SIGINT and SIGHUP.
//!
//! Their default action would kill the process on the spot, leaving the API socket file behind
//! and API callers without an answer. Instead `main` blocks them before any thread exists, so
//! every thread inherits the mask and none of them is ever interrupted by one, and the main
//! thread's event loop reads them from a signalfd ([`StopSignals`]). The vCPU kick signal
//! ([`kick_signal`], a real-time signal) is not in the set and stays deliverable.
//!
//! SIGHUP is handled like SIGTERM: Tidal has no configuration to reload, and a hang-up (the
//! terminal or SSH session that ran it went away) is a request to go.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use libc::c_int;
use thiserror::Error;

/// The signals that stop the VM.
pub const STOP_SIGNALS: [c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

#[derive(Debug, Error)]
pub enum SignalError {
    #[error("cannot build the set of stop signals: {0}")]
    SignalSet(vmm_sys_util::errno::Error),
    #[error("cannot block or unblock SIGTERM, SIGINT and SIGHUP: {0}")]
    Block(std::io::Error),
    #[error("cannot create the signalfd for SIGTERM, SIGINT and SIGHUP: {0}")]
    SignalFd(std::io::Error),
}

/// A signal that asked Tidal to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopSignal(c_int);

impl StopSignal {
    /// `signo` if it is one of [`STOP_SIGNALS`].
    pub fn from_number(signo: c_int) -> Option<Self> {
        STOP_SIGNALS.contains(&signo).then_some(Self(signo))
    }

    pub fn number(self) -> c_int {
        self.0
    }

    /// Its name, `SIGTERM` say.
    pub fn name(self) -> &'static str {
        match self.0 {
            libc::SIGTERM => "SIGTERM",
            libc::SIGINT => "SIGINT",
            libc::SIGHUP => "SIGHUP",
            _ => "a stop signal",
        }
    }

    /// The shell's convention for a process ended by signal N: 128 + N (143 for SIGTERM, 130
    /// for SIGINT, 129 for SIGHUP).
    pub fn exit_code(self) -> u8 {
        u8::try_from(128 + self.0).unwrap_or(u8::MAX)
    }
}

/// The signal that interrupts KVM_RUN so a vCPU thread notices it must stop: the only signal
/// the main thread's seccomp filter lets it send.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

fn stop_signal_set() -> Result<libc::sigset_t, SignalError> {
    vmm_sys_util::signal::create_sigset(&STOP_SIGNALS).map_err(SignalError::SignalSet)
}

/// Blocks the stop signals in the calling thread. Call it in `main` before any thread starts:
/// threads inherit the mask, and a stop signal must find no thread that would take it.
pub fn block_stop_signals() -> Result<(), SignalError> {
    change_mask(libc::SIG_BLOCK)
}

/// Unblocks the stop signals in the calling thread, so that their default action (ending the
/// process) applies again: the fallback when they cannot be watched.
pub fn unblock_stop_signals() -> Result<(), SignalError> {
    change_mask(libc::SIG_UNBLOCK)
}

/// Adds the stop signals to this thread's mask (`SIG_BLOCK`) or takes them out (`SIG_UNBLOCK`).
fn change_mask(how: c_int) -> Result<(), SignalError> {
    let set = stop_signal_set()?;
    // SAFETY: `set` is an initialized signal set and the old mask is not asked for (null);
    // pthread_sigmask only changes this thread's mask.
    let ret = unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(SignalError::Block(std::io::Error::from_raw_os_error(ret)));
    }
    Ok(())
}

/// A non-blocking signalfd for the stop signals: readable while one is pending. It only sees
/// them while they are blocked ([`block_stop_signals`]); otherwise they kill the process first.
pub struct StopSignals {
    fd: File,
}

impl StopSignals {
    pub fn new() -> Result<Self, SignalError> {
        let set = stop_signal_set()?;
        // SAFETY: `set` is an initialized signal set; -1 asks for a new descriptor, whose result
        // is checked before use.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(SignalError::SignalFd(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { File::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Takes one pending stop signal, if there is one.
    pub fn take(&mut self) -> Option<StopSignal> {
        let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        loop {
            match self.fd.read(&mut info) {
                Ok(n) if n == info.len() => {
                    // ssi_signo is the first field, a u32 in host byte order.
                    let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
                    return c_int::try_from(signo)
                        .ok()
                        .and_then(StopSignal::from_number);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // Nothing pending (EAGAIN), or a short read a signalfd never gives.
                _ => return None,
            }
        }
    }
}

impl AsRawFd for StopSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        let code = |signo| StopSignal::from_number(signo).map(StopSignal::exit_code);
        assert_eq!(code(libc::SIGTERM), Some(143));
        assert_eq!(code(libc::SIGINT), Some(130));
        assert_eq!(code(libc::SIGHUP), Some(129));
        assert_eq!(code(libc::SIGUSR1), None);
        assert_eq!(
            StopSignal::from_number(libc::SIGTERM).map(StopSignal::name),
            Some("SIGTERM")
        );
    }

    /// A blocked SIGHUP sent to this thread shows up on the signalfd instead of ending the test
    /// process. The signals are unblocked again afterwards: with `--test-threads=1` this is the
    /// test runner's main thread.
    #[test]
    fn a_blocked_signal_is_read_from_the_signalfd() {
        block_stop_signals().unwrap();
        let mut signals = StopSignals::new().unwrap();
        let before = signals.take();
        // SAFETY: sends SIGHUP to this thread, which blocks it: it only becomes pending.
        let sent = unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGHUP) };
        let taken = [signals.take(), signals.take()];
        unblock_stop_signals().unwrap();
        assert_eq!(before, None);
        assert_eq!(sent, 0);
        assert_eq!(taken, [StopSignal::from_number(libc::SIGHUP), None]);
    }
}
