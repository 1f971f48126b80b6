//! How a device (or the VMM's API) tells the VMM that the VM must end: the guest powered off,
//! reset or panicked, a vCPU failed, or the VMM's user asked for a shutdown.

use std::sync::atomic::{AtomicU8, Ordering};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VM must stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// ACPI S5 through the sleep control register.
    PowerOff,
    /// The ACPI reset register or the i8042 reset line.
    Reset,
    /// A vCPU could not go on (KVM error, failed entry): the VMM exits with an error.
    Failed,
    /// The guest kernel reported a panic through the pvpanic device.
    GuestPanicked,
    /// The VMM's user asked it to shut down (`vmm.shutdown`): the guest is stopped where it is.
    Shutdown,
    /// A thread of the VMM panicked: a bug.
    InternalError,
}

impl ExitReason {
    fn to_raw(self) -> u8 {
        match self {
            ExitReason::PowerOff => 1,
            ExitReason::Reset => 2,
            ExitReason::Failed => 3,
            ExitReason::GuestPanicked => 4,
            ExitReason::Shutdown => 5,
            ExitReason::InternalError => 6,
        }
    }

    fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            1 => Some(ExitReason::PowerOff),
            2 => Some(ExitReason::Reset),
            3 => Some(ExitReason::Failed),
            4 => Some(ExitReason::GuestPanicked),
            5 => Some(ExitReason::Shutdown),
            6 => Some(ExitReason::InternalError),
            _ => None,
        }
    }
}

/// An eventfd the VMM's main loop waits on, plus the first reason given.
/// The first request wins: a reset that follows a power-off does not change why we stopped.
pub struct ExitSignal {
    evt: EventFd,
    reason: AtomicU8,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK)?,
            reason: AtomicU8::new(0),
        })
    }

    /// Records `reason` (unless one is already recorded) and wakes the main loop.
    pub fn request(&self, reason: ExitReason) {
        let _ =
            self.reason
                .compare_exchange(0, reason.to_raw(), Ordering::SeqCst, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            log::error!("cannot signal VM exit: {e}");
        }
    }

    /// The reason recorded by the first request, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        ExitReason::from_raw(self.reason.load(Ordering::SeqCst))
    }

    /// The eventfd that becomes readable on a request.
    pub fn event_fd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let signal = ExitSignal::new().unwrap();
        assert_eq!(signal.reason(), None);
        signal.request(ExitReason::PowerOff);
        signal.request(ExitReason::Reset);
        assert_eq!(signal.reason(), Some(ExitReason::PowerOff));
        assert_eq!(signal.event_fd().read().unwrap(), 2);
    }

    #[test]
    fn every_reason_is_recorded() {
        for reason in [
            ExitReason::PowerOff,
            ExitReason::Reset,
            ExitReason::Failed,
            ExitReason::GuestPanicked,
            ExitReason::Shutdown,
            ExitReason::InternalError,
        ] {
            let signal = ExitSignal::new().unwrap();
            signal.request(reason);
            assert_eq!(signal.reason(), Some(reason));
        }
    }
}
