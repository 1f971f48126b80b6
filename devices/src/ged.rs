//! The Generic Event Device (ACPI0013): one interrupt and a 32-bit read-to-clear event
//! register. The host sets event bits and raises the interrupt; the guest's `_EVT` reads the
//! register and runs the matching AML (memory-hotplug scan, power button).

use std::sync::atomic::{AtomicU32, Ordering};

use vm_device::bus::{MmioAddress, MmioAddressOffset};
use vm_device::DeviceMmio;
use vm_superio::Trigger;

use crate::EventFdTrigger;

/// The register block is one 32-bit register.
pub const GED_REGISTER_LEN: u64 = 4;

pub struct Ged {
    pending: AtomicU32,
    interrupt: EventFdTrigger,
}

impl Ged {
    pub fn new(interrupt: EventFdTrigger) -> Self {
        Self {
            pending: AtomicU32::new(0),
            interrupt,
        }
    }

    /// The interrupt line, for the VMM to register as an irqfd.
    pub fn interrupt(&self) -> &EventFdTrigger {
        &self.interrupt
    }

    /// Marks `events` pending and interrupts the guest. The bits' meaning is the DSDT's
    /// business (`tidal_acpi::GED_*`), not this register's.
    pub fn notify(&self, events: u32) -> std::io::Result<()> {
        self.pending.fetch_or(events, Ordering::SeqCst);
        self.interrupt.trigger()
    }
}

impl DeviceMmio for Ged {
    fn mmio_read(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => {
                let events = self.pending.swap(0, Ordering::SeqCst);
                data.copy_from_slice(&events.to_le_bytes());
            }
            _ => data.fill(0),
        }
    }

    fn mmio_write(&self, _base: MmioAddress, _offset: MmioAddressOffset, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(ged: &Ged, offset: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0xAA; len];
        ged.mmio_read(MmioAddress(0), offset, &mut data);
        data
    }

    #[test]
    fn events_are_read_once() {
        let ged = Ged::new(EventFdTrigger::new().unwrap());
        ged.notify(1).unwrap();
        ged.notify(2).unwrap();
        assert_eq!(ged.interrupt().event_fd().read().unwrap(), 2);
        assert_eq!(read(&ged, 0, 4), 3u32.to_le_bytes());
        assert_eq!(read(&ged, 0, 4), 0u32.to_le_bytes());
    }

    #[test]
    fn odd_accesses_read_zero_and_keep_events() {
        let ged = Ged::new(EventFdTrigger::new().unwrap());
        ged.notify(1).unwrap();
        assert_eq!(read(&ged, 0, 1), vec![0]);
        assert_eq!(read(&ged, 2, 4), vec![0; 4]);
        ged.mmio_write(MmioAddress(0), 0, &[0; 4]);
        assert_eq!(read(&ged, 0, 4), 1u32.to_le_bytes());
    }
}
