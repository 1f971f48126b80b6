//! The Generic Event Device (`ACPI0013`). A hardware-reduced platform has no GPE blocks, so
//! this device's interrupt and `_EVT` method are how the VMM tells the guest that DIMM slots
//! changed or that the power button was pressed. Also the power button device it notifies.

use acpi_tables::aml::{
    self, And, Device, EISAName, Field, FieldAccessType, FieldEntry, FieldLockRule,
    FieldUpdateRule, If, Interrupt, Local, Method, Name, Notify, OpRegion, OpRegionSpace, Path,
    ResourceTemplate, Store,
};
use acpi_tables::Aml;

use crate::aml::AmlBytes;
use crate::{memory_hotplug, Ged};

/// GED event bit: a DIMM slot has an insert or remove pending; the guest scans the slots.
pub const GED_MEMORY_HOTPLUG: u32 = 1 << 0;
/// GED event bit: the power button was pressed; the guest gets a power-button event.
pub const GED_POWER_BUTTON: u32 = 1 << 1;

/// Absolute path of the power button device.
const POWER_BUTTON: &str = "\\_SB_.PWRB";
/// Notify value of a power button press ("S0 power button pressed").
const BUTTON_PRESSED: u8 = 0x80;
/// Length of the event register.
const EVENT_REGISTER_LEN: u8 = 4;

/// The GED and the power button, as `\_SB` children. `_EVT` scans the memory-hotplug
/// controller only when there is one.
pub(crate) fn devices(ged: &Ged, has_memory_hotplug: bool) -> Vec<AmlBytes> {
    vec![
        generic_event_device(ged, has_memory_hotplug),
        power_button(),
    ]
}

/// `Device (GED_)`: its interrupt, its event register, and `_EVT`, which reads the register
/// once (reading clears it) and acts on each set bit.
fn generic_event_device(ged: &Ged, has_memory_hotplug: bool) -> AmlBytes {
    let events = Local(0);
    let read_events = AmlBytes::of(&Store::new(&events, &Path::new("GDEV")));
    let on_memory_hotplug = AmlBytes::of(&If::new(
        &And::new(&aml::ZERO, &events, &GED_MEMORY_HOTPLUG),
        vec![&memory_hotplug::scan_call()],
    ));
    let on_power_button = AmlBytes::of(&If::new(
        &And::new(&aml::ZERO, &events, &GED_POWER_BUTTON),
        vec![&Notify::new(&Path::new(POWER_BUTTON), &BUTTON_PRESSED)],
    ));
    let mut evt: Vec<&dyn Aml> = vec![&read_events];
    if has_memory_hotplug {
        evt.push(&on_memory_hotplug);
    }
    evt.push(&on_power_button);

    let interrupt = Interrupt::new(true, true, false, false, ged.irq);
    AmlBytes::of(&Device::new(
        "GED_".into(),
        vec![
            &Name::new("_HID".into(), &"ACPI0013"),
            &Name::new("_UID".into(), &aml::ZERO),
            // Linux's GED driver wants nothing but interrupts in _CRS.
            &Name::new("_CRS".into(), &ResourceTemplate::new(vec![&interrupt])),
            &OpRegion::new(
                "GDRG".into(),
                OpRegionSpace::SystemMemory,
                &ged.mmio_base,
                &EVENT_REGISTER_LEN,
            ),
            &Field::new(
                "GDRG".into(),
                FieldAccessType::DWord,
                FieldLockRule::NoLock,
                FieldUpdateRule::WriteAsZeroes,
                vec![FieldEntry::Named(*b"GDEV", 32)],
            ),
            &Method::new("_EVT".into(), 1, false, evt),
        ],
    ))
}

/// `Device (PWRB)`: a control-method power button (`PNP0C0C`).
fn power_button() -> AmlBytes {
    AmlBytes::of(&Device::new(
        "PWRB".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0C0C")),
            &Name::new("_UID".into(), &aml::ZERO),
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::bytes_of;
    use crate::table::checks::contains;

    fn aml(has_memory_hotplug: bool) -> Vec<u8> {
        let ged = Ged {
            mmio_base: 0xfeb0_0000,
            irq: 5,
        };
        devices(&ged, has_memory_hotplug)
            .iter()
            .flat_map(|part| bytes_of(part))
            .collect()
    }

    #[test]
    fn ged_has_its_interrupt_register_and_power_button() {
        let aml = aml(true);
        assert!(contains(&aml, b"ACPI0013\0"));
        // Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { 5 }
        assert!(contains(
            &aml,
            &[0x89, 0x06, 0x00, 0x03, 0x01, 0x05, 0x00, 0x00, 0x00]
        ));
        // OperationRegion (GDRG, SystemMemory, 0xFEB00000, 4)
        assert!(contains(
            &aml,
            &[0x5b, 0x80, b'G', b'D', b'R', b'G', 0x00, 0x0c, 0x00, 0x00, 0xb0, 0xfe, 0x0a, 0x04]
        ));
        assert!(contains(&aml, b"MSCN"));
        assert!(contains(&aml, b"PWRB"));
    }

    #[test]
    fn without_memory_hotplug_evt_does_not_scan() {
        let aml = aml(false);
        assert!(!contains(&aml, b"MSCN"));
        assert!(contains(&aml, b"PWRB"));
    }
}
