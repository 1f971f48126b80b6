//! AML for the memory-hotplug controller (docs/design.md, "Memory-hotplug registers"):
//! `\_SB.MHPC` holds the register block and the methods that drive it, and one `PNP0C80` memory
//! device per DIMM slot forwards its `_STA`, `_CRS`, `_PXM`, `_OST` and `_EJ0` to them. Linux's
//! acpi_memhotplug driver does the rest.
//!
//! Every register access the AML makes is a 4-byte access (fields are `DWordAcc`; the 64-bit
//! base and length are read as two 4-byte reads, low half first). Control writes are
//! `WriteAsZeros`: writing one control bit writes a dword with only that bit set.

use acpi_tables::aml::{
    self, Acquire, Add, AddressSpace, AddressSpaceCacheable, Arg, CreateQWordField, Device,
    EISAName, Equal, Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, If,
    LessThan, Local, Method, MethodCall, Mutex, Name, Notify, OpRegion, OpRegionSpace, Path,
    Release, ResourceTemplate, Return, Store, Subtract, While,
};
use acpi_tables::{Aml, AmlSink};

use crate::aml::{AmlBytes, STA_PRESENT};
use crate::memory_hotplug_layout::{
    control, status, BASE_HI, BASE_LO, CONTROL, LEN_HI, LEN_LO, NODE, OST_EVENT, OST_STATUS,
    REGISTERS_LEN, REGISTER_WIDTH, SELECTOR, STATUS,
};
use crate::{AcpiError, MemoryHotplug};

/// Most DIMM slots: their devices are named `ME00` to `MEFF`.
pub const MAX_MEMORY_SLOTS: u32 = 256;

/// Notify value: device check (a DIMM was inserted).
const DEVICE_CHECK: u8 = 1;
/// Notify value: eject request (the VMM wants a DIMM back).
const EJECT_REQUEST: u8 = 3;
/// Acquire timeout meaning "wait forever".
const WAIT_FOREVER: u16 = 0xffff;

/// Absolute path of a controller method.
fn controller_method(name: &str) -> Path {
    Path::new(&format!("\\_SB_.MHPC.{name}"))
}

/// A call of the controller's method that scans every slot for pending events (for the GED).
pub(crate) fn scan_call() -> MethodCall<'static> {
    MethodCall::new(controller_method("MSCN"), vec![])
}

/// Name of a slot's memory device.
fn slot_name(slot: u32) -> String {
    format!("ME{slot:02X}")
}

/// Absolute path of a slot's memory device.
fn slot_device(slot: u32) -> Path {
    Path::new(&format!("\\_SB_.{}", slot_name(slot)))
}

/// The controller and the slot devices, as `\_SB` children.
pub(crate) fn devices(hotplug: &MemoryHotplug) -> Result<Vec<AmlBytes>, AcpiError> {
    if hotplug.slots == 0 || hotplug.slots > MAX_MEMORY_SLOTS {
        return Err(AcpiError::MemorySlotCount(hotplug.slots));
    }
    let mut devices = vec![controller(hotplug)];
    devices.extend((0..hotplug.slots).map(memory_device));
    Ok(devices)
}

/// `Device (MHPC)`: the register block, its lock, and the methods the slot devices call.
fn controller(hotplug: &MemoryHotplug) -> AmlBytes {
    // Read side: what the selected slot holds.
    let slot_info = register_field(&[
        RegisterField::registers(*b"MBAS", BASE_LO, BASE_HI),
        RegisterField::registers(*b"MLEN", LEN_LO, LEN_HI),
        RegisterField::registers(*b"MPXD", NODE, NODE),
        RegisterField::bit(*b"MSEN", STATUS, status::ENABLED),
        RegisterField::bit(*b"MSIP", STATUS, status::INSERT_PENDING),
        RegisterField::bit(*b"MSRP", STATUS, status::REMOVE_PENDING),
    ]);
    // Write side of the same registers: selector, _OST, control.
    let slot_control = register_field(&[
        RegisterField::registers(*b"MSEL", SELECTOR, SELECTOR),
        RegisterField::registers(*b"MOEV", OST_EVENT, OST_EVENT),
        RegisterField::registers(*b"MOSC", OST_STATUS, OST_STATUS),
        RegisterField::bit(*b"MCIN", CONTROL, control::CLEAR_INSERT),
        RegisterField::bit(*b"MCRM", CONTROL, control::CLEAR_REMOVE),
        RegisterField::bit(*b"MEJT", CONTROL, control::EJECT),
    ]);
    let methods = [
        notify_method(hotplug.slots),
        scan_method(hotplug.slots),
        status_method(),
        resources_method(),
        proximity_method(),
        ost_method(),
        eject_method(),
    ];
    let region = OpRegion::new(
        "MHPR".into(),
        OpRegionSpace::SystemMemory,
        &hotplug.mmio_base,
        &REGISTERS_LEN,
    );
    let lock = Mutex::new("MLCK".into(), 0);
    let hid = Name::new("_HID".into(), &"PNP0A06");
    let uid = Name::new("_UID".into(), &"Memory hotplug controller");
    let mut children: Vec<&dyn Aml> = vec![&hid, &uid, &region, &slot_info, &slot_control, &lock];
    children.extend(methods.iter().map(|method| method as &dyn Aml));
    AmlBytes::of(&Device::new("MHPC".into(), children))
}

/// A named field of the register block: bits `start..end`, counted from the block's start.
struct RegisterField {
    name: [u8; 4],
    start: u64,
    end: u64,
}

impl RegisterField {
    /// The registers from `first` to `last` as one field (the 64-bit base and length: two
    /// registers, low half first).
    fn registers(name: [u8; 4], first: u64, last: u64) -> Self {
        Self {
            name,
            start: first * 8,
            end: (last + REGISTER_WIDTH) * 8,
        }
    }

    /// Bit `bit` of the register at `offset`.
    fn bit(name: [u8; 4], offset: u64, bit: u32) -> Self {
        let start = offset * 8 + u64::from(bit);
        Self {
            name,
            start,
            end: start + 1,
        }
    }
}

/// `Field (MHPR, DWordAcc, NoLock, WriteAsZeros)` holding `fields` (in ascending order), with
/// reserved bits in the gaps between them.
fn register_field(fields: &[RegisterField]) -> Field {
    let bits = |n: u64| usize::try_from(n).expect("the register block is a few bytes long");
    let mut entries = Vec::new();
    let mut next = 0;
    for field in fields {
        assert!(
            field.start >= next,
            "register fields overlap or are out of order"
        );
        if field.start > next {
            entries.push(FieldEntry::Reserved(bits(field.start - next)));
        }
        entries.push(FieldEntry::Named(field.name, bits(field.end - field.start)));
        next = field.end;
    }
    Field::new(
        "MHPR".into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        entries,
    )
}

/// A method body that runs with the controller lock held, after selecting the slot in Arg0:
/// `Acquire (MLCK)`, `MSEL = Arg0`, the body, `Release (MLCK)`.
struct LockedOnSlot<'a>(Vec<&'a dyn Aml>);

impl Aml for LockedOnSlot<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        Acquire::new("MLCK".into(), WAIT_FOREVER).to_aml_bytes(sink);
        Store::new(&Path::new("MSEL"), &Arg(0)).to_aml_bytes(sink);
        for part in &self.0 {
            part.to_aml_bytes(sink);
        }
        Release::new("MLCK".into()).to_aml_bytes(sink);
    }
}

/// `MTFY (slot, value)`: Notify the slot's device (a name must be static, hence one `If`
/// per slot).
fn notify_method(slots: u32) -> AmlBytes {
    let per_slot: Vec<AmlBytes> = (0..slots)
        .map(|slot| {
            AmlBytes::of(&If::new(
                &Equal::new(&Arg(0), &slot),
                vec![&Notify::new(&slot_device(slot), &Arg(1))],
            ))
        })
        .collect();
    AmlBytes::of(&Method::new(
        "MTFY".into(),
        2,
        false,
        per_slot.iter().map(|part| part as &dyn Aml).collect(),
    ))
}

/// `MSCN ()`: for every slot, an insert pending becomes a device check and a remove pending an
/// eject request; each pending bit is cleared once notified.
fn scan_method(slots: u32) -> AmlBytes {
    let slot = Local(0);
    AmlBytes::of(&Method::new(
        "MSCN".into(),
        0,
        false,
        vec![
            &Acquire::new("MLCK".into(), WAIT_FOREVER),
            &Store::new(&slot, &aml::ZERO),
            &While::new(
                &LessThan::new(&slot, &slots),
                vec![
                    &Store::new(&Path::new("MSEL"), &slot),
                    &If::new(
                        &Equal::new(&Path::new("MSIP"), &aml::ONE),
                        vec![
                            &MethodCall::new("MTFY".into(), vec![&slot, &DEVICE_CHECK]),
                            &Store::new(&Path::new("MCIN"), &aml::ONE),
                        ],
                    ),
                    &If::new(
                        &Equal::new(&Path::new("MSRP"), &aml::ONE),
                        vec![
                            &MethodCall::new("MTFY".into(), vec![&slot, &EJECT_REQUEST]),
                            &Store::new(&Path::new("MCRM"), &aml::ONE),
                        ],
                    ),
                    &Add::new(&slot, &slot, &aml::ONE),
                ],
            ),
            &Release::new("MLCK".into()),
        ],
    ))
}

/// `MSTA (slot)`: 0xF when the slot holds an enabled DIMM, else 0.
fn status_method() -> AmlBytes {
    let status = Local(0);
    AmlBytes::of(&Method::new(
        "MSTA".into(),
        1,
        false,
        vec![
            &Store::new(&status, &aml::ZERO),
            &LockedOnSlot(vec![&If::new(
                &Equal::new(&Path::new("MSEN"), &aml::ONE),
                vec![&Store::new(&status, &STA_PRESENT)],
            )]),
            &Return::new(&status),
        ],
    ))
}

/// `MCRS (slot)`: a QWordMemory resource template filled with the slot's base and length.
/// Serialized because it creates a named buffer.
fn resources_method() -> AmlBytes {
    // Byte offsets of the fields in a QWord address space descriptor.
    const MINIMUM: u8 = 14;
    const MAXIMUM: u8 = 22;
    const LENGTH: u8 = 38;
    let template =
        AddressSpace::<u64>::new_memory(AddressSpaceCacheable::Cacheable, true, 0, 0, None);
    let (minimum, maximum, length) = (Path::new("MINV"), Path::new("MAXV"), Path::new("LENV"));
    let buffer = Path::new("MR64");
    AmlBytes::of(&Method::new(
        "MCRS".into(),
        1,
        true,
        vec![
            &Name::new("MR64".into(), &ResourceTemplate::new(vec![&template])),
            &CreateQWordField::new(&minimum, &buffer, &MINIMUM),
            &CreateQWordField::new(&maximum, &buffer, &MAXIMUM),
            &CreateQWordField::new(&length, &buffer, &LENGTH),
            &LockedOnSlot(vec![
                &Store::new(&minimum, &Path::new("MBAS")),
                &Store::new(&length, &Path::new("MLEN")),
            ]),
            &Add::new(&maximum, &minimum, &length),
            &Subtract::new(&maximum, &maximum, &aml::ONE),
            &Return::new(&buffer),
        ],
    ))
}

/// `MPXM (slot)`: the slot's proximity domain.
fn proximity_method() -> AmlBytes {
    let proximity = Local(0);
    AmlBytes::of(&Method::new(
        "MPXM".into(),
        1,
        false,
        vec![
            &LockedOnSlot(vec![&Store::new(&proximity, &Path::new("MPXD"))]),
            &Return::new(&proximity),
        ],
    ))
}

/// `MOST (slot, event, status)`: reports `_OST` to the VMM; the status write completes it.
fn ost_method() -> AmlBytes {
    AmlBytes::of(&Method::new(
        "MOST".into(),
        3,
        false,
        vec![&LockedOnSlot(vec![
            &Store::new(&Path::new("MOEV"), &Arg(1)),
            &Store::new(&Path::new("MOSC"), &Arg(2)),
        ])],
    ))
}

/// `MEJ0 (slot)`: ejects the slot's DIMM.
fn eject_method() -> AmlBytes {
    AmlBytes::of(&Method::new(
        "MEJ0".into(),
        1,
        false,
        vec![&LockedOnSlot(vec![&Store::new(
            &Path::new("MEJT"),
            &aml::ONE,
        )])],
    ))
}

/// `Device (MEnn)`: the `PNP0C80` memory device of one slot.
fn memory_device(slot: u32) -> AmlBytes {
    let call = |method: &str, args: Vec<&dyn Aml>| -> AmlBytes {
        AmlBytes::of(&MethodCall::new(controller_method(method), args))
    };
    let (sta, crs, pxm) = (
        call("MSTA", vec![&slot]),
        call("MCRS", vec![&slot]),
        call("MPXM", vec![&slot]),
    );
    let ost = call("MOST", vec![&slot, &Arg(0), &Arg(1)]);
    let eject = call("MEJ0", vec![&slot]);
    AmlBytes::of(&Device::new(
        slot_name(slot).as_str().into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0C80")),
            &Name::new("_UID".into(), &slot),
            &Method::new("_STA".into(), 0, false, vec![&Return::new(&sta)]),
            &Method::new("_CRS".into(), 0, false, vec![&Return::new(&crs)]),
            &Method::new("_PXM".into(), 0, false, vec![&Return::new(&pxm)]),
            &Method::new("_OST".into(), 3, false, vec![&ost]),
            &Method::new("_EJ0".into(), 1, false, vec![&eject]),
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::bytes_of;
    use crate::table::checks::contains;

    fn hotplug(slots: u32) -> MemoryHotplug {
        MemoryHotplug {
            mmio_base: 0xfeb0_1000,
            slots,
        }
    }

    fn aml(parts: &[AmlBytes]) -> Vec<u8> {
        parts.iter().flat_map(|part| bytes_of(part)).collect()
    }

    #[test]
    fn one_memory_device_per_slot() {
        let aml = aml(&devices(&hotplug(256)).unwrap());
        assert!(contains(&aml, b"MHPC"));
        for slot in 0..256 {
            assert!(contains(&aml, slot_name(slot).as_bytes()), "slot {slot}");
        }
        assert_eq!(slot_name(255), "MEFF");
    }

    #[test]
    fn register_block_is_a_dword_region_at_mmio_base() {
        let aml = aml(&devices(&hotplug(1)).unwrap());
        // OperationRegion (MHPR, SystemMemory, 0xFEB01000, 0x18)
        let region = [
            0x5b, 0x80, b'M', b'H', b'P', b'R', 0x00, 0x0c, 0x00, 0x10, 0xb0, 0xfe, 0x0a, 0x18,
        ];
        assert!(contains(&aml, &region));
        // Field (MHPR, DWordAcc, NoLock, WriteAsZeros): flags 0x43
        assert!(contains(
            &aml,
            &[b'M', b'H', b'P', b'R', 0x43, b'M', b'B', b'A', b'S']
        ));
        assert!(contains(
            &aml,
            &[b'M', b'H', b'P', b'R', 0x43, b'M', b'S', b'E', b'L']
        ));
    }

    #[test]
    fn slot_count_is_checked() {
        assert!(matches!(
            devices(&hotplug(0)),
            Err(AcpiError::MemorySlotCount(0))
        ));
        assert!(matches!(
            devices(&hotplug(257)),
            Err(AcpiError::MemorySlotCount(257))
        ));
    }
}
