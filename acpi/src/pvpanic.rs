//! The pvpanic device (`QEMU0001`): one event register the guest kernel writes when it panics.
//! Linux's `pvpanic-mmio` driver binds to this id and takes the register from `_CRS`.

use acpi_tables::aml::{self, Device, Memory32Fixed, Name, ResourceTemplate};

use crate::aml::{AmlBytes, STA_PRESENT};
use crate::PvPanic;

/// The ACPI id QEMU gave the device, which Linux's driver matches.
pub const PVPANIC_HID: &str = "QEMU0001";
/// The register is one byte.
pub const PVPANIC_REGISTER_LEN: u32 = 1;

/// `Device (PEVT)` (QEMU's name for it) with its one-byte register as a fixed memory range.
pub(crate) fn device(pvpanic: &PvPanic) -> AmlBytes {
    let register = Memory32Fixed::new(true, pvpanic.mmio_base, PVPANIC_REGISTER_LEN);
    AmlBytes::of(&Device::new(
        "PEVT".into(),
        vec![
            &Name::new("_HID".into(), &PVPANIC_HID),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_STA".into(), &STA_PRESENT),
            &Name::new("_CRS".into(), &ResourceTemplate::new(vec![&register])),
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::bytes_of;
    use crate::table::checks::contains;

    #[test]
    fn pvpanic_has_its_id_and_register() {
        let aml = bytes_of(&device(&PvPanic {
            mmio_base: 0xfeb0_2000,
        }));
        assert!(contains(&aml, b"PEVT"));
        assert!(contains(&aml, b"QEMU0001\0"));
        // Memory32Fixed (ReadWrite, 0xFEB02000, 1)
        assert!(contains(
            &aml,
            &[0x86, 0x09, 0x00, 0x01, 0x00, 0x20, 0xb0, 0xfe, 0x01, 0x00, 0x00, 0x00]
        ));
    }
}
