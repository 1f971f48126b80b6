//! COM1: a 16550 UART (vm-superio) on the port bus. Output goes to any writer (stdout, a file,
//! nowhere); input is pushed in by the VMM's console loop.

use std::io::Write;

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;
use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use crate::EventFdTrigger;

/// Standard COM1 port and ISA interrupt.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
/// The 16550 decodes eight registers.
pub const SERIAL_PORT_SIZE: u16 = 8;

pub struct SerialConsole {
    uart: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl SerialConsole {
    pub fn new(interrupt: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Serial::new(interrupt, out),
        }
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
                log::warn!("serial write failed: {e:?}");
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
    fn ignores_wide_accesses() {
        let mut serial =
            SerialConsole::new(EventFdTrigger::new().unwrap(), Box::new(Sink::default()));
        let mut wide = [0xAAu8; 2];
        serial.pio_read(PioAddress(COM1_PORT), 0, &mut wide);
        assert_eq!(wide, [0xAA; 2]);
        serial.pio_write(PioAddress(COM1_PORT), 0xFFFF, &[1]);
    }
}
