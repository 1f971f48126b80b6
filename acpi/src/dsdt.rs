//! The DSDT: the AML namespace Linux walks at boot. It holds the `_S5_` package that lets
//! Linux power off through the FADT's sleep control register, and under `\_SB` the devices
//! that are not self-describing: COM1, the Generic Event Device with its power button, the
//! memory-hotplug controller with its DIMM slots, and the pvpanic device.

use acpi_tables::aml::{Device, EISAName, Interrupt, Name, Package, ResourceTemplate, Scope, IO};
use acpi_tables::{aml, Aml};

use crate::aml::{AmlBytes, STA_PRESENT};
use crate::table;
use crate::{ged, memory_hotplug, pvpanic, AcpiConfig, AcpiError, LegacySerial, S5_SLEEP_TYPE};

/// DSDT revision 2: AML integers are 64 bits wide.
const DSDT_REVISION: u8 = 2;
/// Number of I/O ports of a 16550 UART.
const UART_PORTS: u8 = 8;

/// The DSDT for `config`.
pub(crate) fn dsdt(config: &AcpiConfig) -> Result<Vec<u8>, AcpiError> {
    let mut system_bus = Vec::new();
    for (number, serial) in (1u8..).zip(&config.serials) {
        system_bus.push(com_port(number, serial));
    }
    if let Some(hotplug) = &config.memory_hotplug {
        system_bus.extend(memory_hotplug::devices(hotplug)?);
    }
    if let Some(ged) = &config.ged {
        system_bus.extend(ged::devices(ged, config.memory_hotplug.is_some()));
    }
    if let Some(pvpanic) = &config.pvpanic {
        system_bus.push(pvpanic::device(pvpanic));
    }

    let mut body = Vec::new();
    // Package (SLP_TYPa, SLP_TYPb): hardware-reduced sleep uses SLP_TYPa only.
    Name::new(
        "_S5_".into(),
        &Package::new(vec![&S5_SLEEP_TYPE, &aml::ZERO]),
    )
    .to_aml_bytes(&mut body);
    Scope::new(
        "\\_SB_".into(),
        system_bus.iter().map(|part| part as &dyn Aml).collect(),
    )
    .to_aml_bytes(&mut body);
    Ok(table::with_header(*b"DSDT", DSDT_REVISION, &body))
}

/// COM`number`: a 16550 (`PNP0501`) at its 8 I/O ports with an edge-triggered, active-high
/// interrupt.
fn com_port(number: u8, serial: &LegacySerial) -> AmlBytes {
    let ports = IO::new(serial.io_port, serial.io_port, 0, UART_PORTS);
    let irq = Interrupt::new(true, true, false, false, serial.irq);
    AmlBytes::of(&Device::new(
        format!("COM{number}").as_str().into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0501")),
            &Name::new("_UID".into(), &(number - 1)),
            &Name::new("_STA".into(), &STA_PRESENT),
            &Name::new("_CRS".into(), &ResourceTemplate::new(vec![&ports, &irq])),
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::checks::{assert_valid_table, contains};
    use crate::tests::config;

    #[test]
    fn dsdt_has_s5_and_com1() {
        let dsdt = dsdt(&config(1)).unwrap();
        assert_valid_table(&dsdt, b"DSDT");
        assert_eq!(dsdt[8], DSDT_REVISION);
        // Name (_S5_, Package (2) { 5, Zero })
        assert!(contains(
            &dsdt,
            &[0x08, b'_', b'S', b'5', b'_', 0x12, 0x05, 0x02, 0x0a, 0x05, 0x00]
        ));
        assert!(contains(&dsdt, b"COM1"));
        // IO (Decode16, 0x3F8, 0x3F8, 0, 8)
        assert!(contains(
            &dsdt,
            &[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08]
        ));
        // Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { 4 }
        assert!(contains(
            &dsdt,
            &[0x89, 0x06, 0x00, 0x03, 0x01, 0x04, 0x00, 0x00, 0x00]
        ));
    }

    #[test]
    fn pvpanic_only_when_configured() {
        let mut config = config(1);
        assert!(!contains(&dsdt(&config).unwrap(), b"QEMU0001"));
        config.pvpanic = Some(crate::PvPanic {
            mmio_base: 0xfeb0_2000,
        });
        let dsdt = dsdt(&config).unwrap();
        assert_valid_table(&dsdt, b"DSDT");
        assert!(contains(&dsdt, b"QEMU0001\0"));
    }

    #[test]
    fn no_serial_no_com1() {
        let mut config = config(1);
        config.serials.clear();
        assert!(!contains(&dsdt(&config).unwrap(), b"COM1"));
    }

    #[test]
    fn a_second_serial_is_com2_with_its_port_and_interrupt() {
        let mut config = config(1);
        assert!(!contains(&dsdt(&config).unwrap(), b"COM2"));
        config.serials.push(LegacySerial {
            io_port: 0x2f8,
            irq: 3,
        });
        let dsdt = dsdt(&config).unwrap();
        assert_valid_table(&dsdt, b"DSDT");
        assert!(contains(&dsdt, b"COM1") && contains(&dsdt, b"COM2"));
        // IO (Decode16, 0x2F8, 0x2F8, 0, 8) and Interrupt (...) { 3 }
        assert!(contains(
            &dsdt,
            &[0x47, 0x01, 0xf8, 0x02, 0xf8, 0x02, 0x00, 0x08]
        ));
        assert!(contains(
            &dsdt,
            &[0x89, 0x06, 0x00, 0x03, 0x01, 0x03, 0x00, 0x00, 0x00]
        ));
    }
}
