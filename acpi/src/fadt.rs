//! The FADT: declares a hardware-reduced ACPI platform (no PM1 blocks, no SCI, no 8259, no
//! PM timer) and points Linux at Tidal's sleep and reset registers and at the DSDT.

use acpi_tables::fadt::{FADTBuilder, Flags, PmProfile, FADT};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};

use crate::table::{bytes_of, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::PowerRegisters;

/// IA-PC boot architecture flag: no VGA, so Linux does not probe for one.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// IA-PC boot architecture flag: no CMOS RTC, so Linux registers no rtc_cmos device.
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// Length of the FADT (revision 6.5).
pub(crate) fn len() -> usize {
    FADT::len()
}

/// The FADT for `power`'s registers and the DSDT at `dsdt_address`.
///
/// The 8042 boot flag stays clear: Linux then leaves the keyboard controller alone (it still
/// writes 0xFE to port 0x64 if the reset register fails). The power and sleep buttons are
/// flagged as absent fixed features; the GED's `PNP0C0C` device is the power button. The PM
/// profile stays "unspecified": a VM has none, and Linux uses it only for hardware quirks.
pub(crate) fn fadt(power: &PowerRegisters, dsdt_address: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_address)
        .preferred_pm_profile(PmProfile::Unspecified)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch = (IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT).into();
    fadt.reset_reg = io_byte_register(power.reset_port);
    fadt.reset_value = power.reset_value;
    fadt.sleep_control_reg = io_byte_register(power.sleep_control_port);
    fadt.sleep_status_reg = io_byte_register(power.sleep_status_port);
    bytes_of(&fadt.finalize())
}

/// An 8-bit register at an I/O port, accessed a byte at a time.
fn io_byte_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::checks::{assert_valid_table, u32_at, u64_at};

    // Offsets of FADT fields (ACPI 6.5, table 5.9).
    const FLAGS: usize = 112;
    const RESET_REG: usize = 116;
    const RESET_VALUE: usize = 128;
    const X_DSDT: usize = 140;
    const SLEEP_CONTROL_REG: usize = 244;
    const SLEEP_STATUS_REG: usize = 256;

    fn power() -> PowerRegisters {
        PowerRegisters {
            sleep_control_port: 0x600,
            sleep_status_port: 0x601,
            reset_port: 0x602,
            reset_value: 1,
        }
    }

    /// GAS bytes: space id, bit width, bit offset, access size, then the 64-bit address.
    fn assert_io_byte_register(fadt: &[u8], offset: usize, port: u64) {
        assert_eq!(&fadt[offset..offset + 4], &[1, 8, 0, 1]);
        assert_eq!(u64_at(fadt, offset + 4), port);
    }

    #[test]
    fn fadt_is_hardware_reduced_with_power_registers() {
        let fadt = fadt(&power(), 0xe_1234);
        assert_valid_table(&fadt, b"FACP");
        assert_eq!(fadt.len(), 276);
        assert_eq!(fadt[8], 6, "major revision");
        let flags = u32_at(&fadt, FLAGS);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_io_byte_register(&fadt, RESET_REG, 0x602);
        assert_eq!(fadt[RESET_VALUE], 1);
        assert_io_byte_register(&fadt, SLEEP_CONTROL_REG, 0x600);
        assert_io_byte_register(&fadt, SLEEP_STATUS_REG, 0x601);
        assert_eq!(u64_at(&fadt, X_DSDT), 0xe_1234);
        assert_eq!(u32_at(&fadt, 40), 0, "no 32-bit DSDT pointer");
    }
}
