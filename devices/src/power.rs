//! The hardware-reduced ACPI power registers the FADT points at: the sleep control and status
//! registers (S5 = power-off) and the reset register. One byte each, in a small port block.

use std::sync::Arc;

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;

use crate::repeats::Repeats;
use crate::{ExitReason, ExitSignal};

pub const POWER_PORT: u16 = 0x600;
pub const POWER_PORT_SIZE: u16 = 3;
pub const SLEEP_CONTROL_PORT: u16 = POWER_PORT;
pub const SLEEP_STATUS_PORT: u16 = POWER_PORT + 1;
pub const RESET_PORT: u16 = POWER_PORT + 2;
/// What the guest writes to the reset register (the FADT's RESET_VALUE).
pub const RESET_VALUE: u8 = 0x1;
/// The SLP_TYP value the DSDT's `_S5_` package gives for soft-off.
pub const S5_SLEEP_TYPE: u8 = 5;

const SLEEP_CONTROL: PioAddressOffset = 0;
const RESET: PioAddressOffset = 2;
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;

pub struct AcpiPower {
    exit: Arc<ExitSignal>,
    /// Requests for a sleep state Tidal does not offer.
    unoffered_sleep: Repeats,
}

impl AcpiPower {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self {
            exit,
            unoffered_sleep: Repeats::new(),
        }
    }
}

impl MutDevicePio for AcpiPower {
    fn pio_read(&mut self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        // Sleep status reads 0: wake status never set, the guest has nothing to wait for.
        data.fill(0);
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let [value] = data else {
            return;
        };
        match offset {
            SLEEP_CONTROL if value & SLP_EN != 0 => {
                let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if sleep_type == S5_SLEEP_TYPE {
                    log::info!("guest powered off (ACPI S5)");
                    self.exit.request(ExitReason::PowerOff);
                } else if let Some(times) = self.unoffered_sleep.count() {
                    log::warn!(
                        "guest asked for sleep type {sleep_type}, which Tidal does not offer; \
                         ignored ({times})"
                    );
                }
            }
            RESET if *value == RESET_VALUE => {
                log::info!("guest reset through the ACPI reset register");
                self.exit.request(ExitReason::Reset);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (AcpiPower, Arc<ExitSignal>) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        (AcpiPower::new(exit.clone()), exit)
    }

    #[test]
    fn s5_powers_off() {
        let (mut dev, exit) = device();
        dev.pio_write(
            PioAddress(POWER_PORT),
            SLEEP_CONTROL,
            &[(S5_SLEEP_TYPE << 2) | SLP_EN],
        );
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
    }

    #[test]
    fn other_sleep_states_and_bad_writes_are_ignored() {
        let (mut dev, exit) = device();
        dev.pio_write(PioAddress(POWER_PORT), SLEEP_CONTROL, &[(3 << 2) | SLP_EN]);
        dev.pio_write(PioAddress(POWER_PORT), SLEEP_CONTROL, &[S5_SLEEP_TYPE << 2]);
        dev.pio_write(PioAddress(POWER_PORT), RESET, &[RESET_VALUE, 0]);
        dev.pio_write(PioAddress(POWER_PORT), RESET, &[0x55]);
        assert_eq!(exit.reason(), None);
    }

    #[test]
    fn reset_register_resets() {
        let (mut dev, exit) = device();
        dev.pio_write(PioAddress(POWER_PORT), RESET, &[RESET_VALUE]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }
}
