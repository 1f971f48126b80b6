//! A serial port (COM1, COM2): a 16550 UART (vm-superio) on the port bus. Output goes to any
//! writer (stdout, a file, nowhere); input is pushed in by the VMM's console loop.

use std::io::Write;

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};

use crate::repeats::Repeats;
use crate::EventFdTrigger;

/// Standard COM1 and COM2 ports and ISA interrupts.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const COM2_PORT: u16 = 0x2f8;
pub const COM2_IRQ: u32 = 3;
/// The 16550 decodes eight registers.
pub const SERIAL_PORT_SIZE: u16 = 8;

/// Register offsets and bits read by [`SerialConsole::repeat_receive_interrupt`].
const IER: u8 = 1;
const IER_RECEIVED_DATA: u8 = 0x01;
const LCR: u8 = 3;
const LCR_DIVISOR_LATCH: u8 = 0x80;

pub struct SerialConsole {
    uart: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
    /// The receive FIFO's size (vm-superio keeps it private): its capacity when empty.
    fifo_size: usize,
    /// Failed output writes: once the output fails (a closed pipe, a full disk) every byte the
    /// guest writes fails again.
    write_failures: Repeats,
}

impl SerialConsole {
    pub fn new(interrupt: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        let uart = Serial::new(interrupt, out);
        let fifo_size = uart.fifo_capacity();
        Self {
            uart,
            fifo_size,
            write_failures: Repeats::new(),
        }
    }

    /// How many received bytes the guest has not read yet.
    pub fn unread(&self) -> usize {
        self.fifo_size - self.uart.fifo_capacity()
    }

    /// Raises the receive interrupt again when the guest left received bytes unread with that
    /// interrupt enabled; says whether it did. The console input thread calls it after a while
    /// without progress, as a 16550's character timeout interrupt would come. vm-superio raises
    /// the interrupt only when the pending condition is new, so a single lost edge (the line is
    /// edge-triggered at the IOAPIC) would otherwise leave the guest deaf for good.
    pub fn repeat_receive_interrupt(&mut self) -> bool {
        // Register reads other than the data and IIR registers have no side effects.
        let enabled = self.uart.read(LCR) & LCR_DIVISOR_LATCH == 0
            && self.uart.read(IER) & IER_RECEIVED_DATA != 0;
        if self.unread() == 0 || !enabled {
            return false;
        }
        if let Err(e) = self.uart.interrupt_evt().trigger() {
            log::warn!("cannot raise the serial interrupt: {e}");
            return false;
        }
        true
    }

    /// The interrupt line, for the VMM to register as an irqfd.
    pub fn interrupt(&self) -> &EventFdTrigger {
        self.uart.interrupt_evt()
    }

    /// Queues bytes for the guest to read; returns how many were taken (fewer than offered
    /// when the receive FIFO is full: the rest must wait, not be dropped).
    pub fn push_input(&mut self, bytes: &[u8]) -> usize {
        if self.uart.fifo_capacity() == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial input dropped: {e:?}");
                0
            }
        }
    }
}

impl MutDevicePio for SerialConsole {
    fn pio_read(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        if let ([byte], Ok(offset)) = (data, u8::try_from(offset)) {
            *byte = self.uart.read(offset);
        }
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        if let ([byte], Ok(offset)) = (data, u8::try_from(offset)) {
            if let Err(e) = self.uart.write(offset, *byte) {
                if let Some(times) = self.write_failures.count() {
                    log::warn!("serial output failed: {e:?} ({times})");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_and_receives() {
        let sink = Sink::default();
        let mut serial = SerialConsole::new(EventFdTrigger::new().unwrap(), Box::new(sink.clone()));
        let base = PioAddress(COM1_PORT);
        serial.pio_write(base, 0, b"A");
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"A");

        assert_eq!(serial.push_input(b"xy"), 2);
        let mut byte = [0u8];
        serial.pio_read(base, 0, &mut byte);
        assert_eq!(&byte, b"x");
    }

    #[test]
    fn full_fifo_takes_nothing() {
        let mut serial =
            SerialConsole::new(EventFdTrigger::new().unwrap(), Box::new(Sink::default()));
        let taken = serial.push_input(&[b'a'; 100]);
        assert!(taken > 0 && taken < 100);
        assert_eq!(serial.push_input(b"b"), 0);
    }

    #[test]
    fn repeats_the_receive_interrupt_only_for_unread_input_it_may_raise() {
        let interrupt = EventFdTrigger::new().unwrap();
        let line = interrupt.event_fd().try_clone().unwrap();
        let mut serial = SerialConsole::new(interrupt, Box::new(Sink::default()));
        let base = PioAddress(COM1_PORT);
        let raised = |line: &vmm_sys_util::eventfd::EventFd| line.read().is_ok();
        assert_eq!(serial.unread(), 0);
        serial.pio_write(base, IER.into(), &[IER_RECEIVED_DATA]);
        assert!(!serial.repeat_receive_interrupt(), "nothing unread");

        serial.push_input(b"ls\n");
        assert!(raised(&line), "the first edge");
        assert_eq!(serial.unread(), 3);
        assert!(serial.repeat_receive_interrupt());
        assert!(raised(&line), "the repeated edge");

        serial.pio_write(base, IER.into(), &[0]);
        assert!(!serial.repeat_receive_interrupt(), "the guest masked it");
        assert!(!raised(&line));
        serial.pio_write(base, IER.into(), &[IER_RECEIVED_DATA]);
        let mut byte = [0u8];
        for _ in 0..3 {
            serial.pio_read(base, 0, &mut byte);
        }
        assert_eq!(serial.unread(), 0);
        assert!(!serial.repeat_receive_interrupt(), "all read");
    }

    #[test]
    fn ignores_wide_accesses() {
        let mut serial =
            SerialConsole::new(EventFdTrigger::new().unwrap(), Box::new(Sink::default()));
        let mut wide = [0xAAu8; 2];
        serial.pio_read(PioAddress(COM1_PORT), 0, &mut wide);
        assert_eq!(wide, [0xAA; 2]);
        serial.pio_write(PioAddress(COM1_PORT), 0xFFFF, &[1]);
    }
}
