//! The pvpanic device, as QEMU defines it (`docs/specs/pvpanic.rst` in QEMU): one byte the guest
//! kernel writes when it panics. Reading it gives the events the host understands; writing it
//! reports events. Linux drives it with `pvpanic-mmio` (ACPI id `QEMU0001`), which takes an I/O
//! port or a memory resource: Tidal gives it a memory one.

use std::sync::Arc;

use vm_device::bus::{MmioAddress, MmioAddressOffset};
use vm_device::DeviceMmio;

use crate::repeats::Repeats;
use crate::{ExitReason, ExitSignal};

/// The register block is the one event register.
pub const PVPANIC_REGISTER_LEN: u64 = 1;
/// Event bit: the guest kernel panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// Event bit: the guest kernel loaded a crash kernel (kdump) and is about to run it.
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;
/// What reads return: the events Tidal handles. Linux masks its own list with this byte, so it
/// never sends the ones left out (newer kernels know a third, `PVPANIC_SHUTDOWN`).
pub const PVPANIC_SUPPORTED: u8 = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;

/// The device: a panic ends the VM with [`ExitReason::GuestPanicked`].
pub struct PvPanic {
    exit: Arc<ExitSignal>,
    /// Crash-kernel reports: one is news, a guest writing the register in a loop is not.
    crash_loaded: Repeats,
}

impl PvPanic {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self {
            exit,
            crash_loaded: Repeats::new(),
        }
    }
}

impl DeviceMmio for PvPanic {
    fn mmio_read(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        match (offset, data) {
            (0, [byte]) => *byte = PVPANIC_SUPPORTED,
            // Not the register: no events, so a confused guest reports nothing.
            (_, data) => data.fill(0),
        }
    }

    fn mmio_write(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        let (0, [events]) = (offset, data) else {
            return;
        };
        if events & PVPANIC_PANICKED != 0 {
            // The VMM says so when it stops; this is the moment it happened.
            log::debug!("pvpanic: the guest reported a panic");
            self.exit.request(ExitReason::GuestPanicked);
        } else if events & PVPANIC_CRASH_LOADED != 0 {
            // QEMU reports it and lets the guest go on into its crash kernel; so does Tidal.
            if let Some(times) = self.crash_loaded.count() {
                log::warn!(
                    "the guest kernel crashed and is starting its crash kernel (kdump; {times})"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (PvPanic, Arc<ExitSignal>) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        (PvPanic::new(exit.clone()), exit)
    }

    fn read(dev: &PvPanic, offset: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0xAA; len];
        dev.mmio_read(MmioAddress(0), offset, &mut data);
        data
    }

    #[test]
    fn reads_give_the_supported_events() {
        let (dev, _) = device();
        assert_eq!(read(&dev, 0, 1), [PVPANIC_PANICKED | PVPANIC_CRASH_LOADED]);
        assert_eq!(read(&dev, 0, 1), [0b11], "reading has no side effect");
    }

    #[test]
    fn other_accesses_read_no_events() {
        let (dev, _) = device();
        assert_eq!(read(&dev, 0, 2), [0, 0]);
        assert_eq!(read(&dev, 0, 4), [0; 4]);
        assert_eq!(read(&dev, 1, 1), [0]);
    }

    #[test]
    fn a_panic_write_ends_the_vm() {
        let (dev, exit) = device();
        dev.mmio_write(MmioAddress(0), 0, &[PVPANIC_PANICKED]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestPanicked));
        assert_eq!(exit.event_fd().read().unwrap(), 1);
    }

    #[test]
    fn panic_wins_when_sent_with_crash_loaded() {
        let (dev, exit) = device();
        dev.mmio_write(
            MmioAddress(0),
            0,
            &[PVPANIC_PANICKED | PVPANIC_CRASH_LOADED],
        );
        assert_eq!(exit.reason(), Some(ExitReason::GuestPanicked));
    }

    #[test]
    fn crash_loaded_and_stray_writes_do_not_end_the_vm() {
        let (dev, exit) = device();
        dev.mmio_write(MmioAddress(0), 0, &[PVPANIC_CRASH_LOADED]);
        dev.mmio_write(MmioAddress(0), 0, &[0]);
        dev.mmio_write(MmioAddress(0), 0, &[1 << 2]);
        dev.mmio_write(MmioAddress(0), 0, &[PVPANIC_PANICKED, 0]);
        dev.mmio_write(MmioAddress(0), 1, &[PVPANIC_PANICKED]);
        assert_eq!(exit.reason(), None);
        assert!(exit.event_fd().read().is_err(), "no wake-up either");
    }

    #[test]
    fn the_first_reason_stays_when_the_guest_reboots_after_panicking() {
        let (dev, exit) = device();
        dev.mmio_write(MmioAddress(0), 0, &[PVPANIC_PANICKED]);
        // panic=1: the kernel resets a second later.
        exit.request(ExitReason::Reset);
        assert_eq!(exit.reason(), Some(ExitReason::GuestPanicked));
    }
}
