//! Just enough of the i8042 keyboard controller for the guest's "reset through the keyboard
//! controller" path (command 0xFE on port 0x64). There is no keyboard behind it.

use std::sync::Arc;

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;

use crate::{ExitReason, ExitSignal};

/// Data port 0x60 through command port 0x64.
pub const I8042_PORT: u16 = 0x60;
pub const I8042_PORT_SIZE: u16 = 5;
const COMMAND_OFFSET: PioAddressOffset = 4;
const CMD_PULSE_RESET: u8 = 0xFE;

pub struct I8042 {
    exit: Arc<ExitSignal>,
}

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl MutDevicePio for I8042 {
    fn pio_read(&mut self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        // Status 0: no output waiting, input buffer empty, so the guest never blocks on us.
        data.fill(0);
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        if offset == COMMAND_OFFSET && data == [CMD_PULSE_RESET] {
            log::info!("guest reset through the i8042");
            self.exit.request(ExitReason::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulse_reset_requests_reset() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut dev = I8042::new(exit.clone());
        dev.pio_write(PioAddress(I8042_PORT), 0, &[CMD_PULSE_RESET]);
        assert_eq!(exit.reason(), None);
        dev.pio_write(PioAddress(I8042_PORT), COMMAND_OFFSET, &[0xAB]);
        assert_eq!(exit.reason(), None);
        dev.pio_write(PioAddress(I8042_PORT), COMMAND_OFFSET, &[CMD_PULSE_RESET]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }
}
