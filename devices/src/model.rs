//! Executable models of the memory-hotplug controller and the GED, as docs/design.md specifies
//! them ("Memory-hotplug registers", "A DIMM's life", "ACPI"), and a [`Harness`] that runs the
//! real devices and the models side by side, one [`Op`] at a time, and says where they first
//! disagree.
//!
//! Only for tests: the property test `devices/tests/controller_model.rs` and the fuzz target
//! `fuzz/fuzz_targets/hotplug_registers.rs` both drive the devices through it (behind the
//! `model` feature, off in the VMM's build). The models are written as plainly as possible and
//! never call the code they check: a model that asked the controller what to expect would
//! check nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use tidal_acpi::memory_hotplug_layout::REGISTERS_LEN;
use vm_device::bus::MmioAddress;
use vm_device::{DeviceMmio, MutDeviceMmio};

use crate::ged::Ged;
use crate::memory_hotplug::{
    Dimm, EjectError, EjectHandler, HotplugError, MemoryHotplugController, Ost, SlotEvent,
    SlotListener, SlotState, SlotView, OST_EJECT_IN_PROGRESS, OST_EVENT_DEVICE_CHECK,
    OST_EVENT_EJECT_REQUEST, OST_SUCCESS,
};
use crate::EventFdTrigger;

/// Register offsets and control bits as docs/design.md gives them, written out here rather than
/// taken from [`tidal_acpi::memory_hotplug_layout`] (which the controller and the AML share), so
/// that a layout that moved a register disagrees with the model.
pub mod reg {
    /// Write: the slot selector. Read: the selected DIMM's base, low half.
    pub const SELECTOR: u64 = 0x00;
    /// Write: the `_OST` event. Read: the base, high half.
    pub const OST_EVENT: u64 = 0x04;
    /// Write: the `_OST` status, which completes the `_OST`. Read: the length, low half.
    pub const OST_STATUS: u64 = 0x08;
    /// Read: the selected slot's status bits.
    pub const STATUS: u64 = 0x14;
    /// Status: the slot holds a DIMM.
    pub const ENABLED: u32 = 1 << 0;
    /// Status: the guest has not been told of the DIMM's insertion yet.
    pub const INSERT_PENDING: u32 = 1 << 1;
    /// Status: the guest has not been told of the host's removal request yet.
    pub const REMOVE_PENDING: u32 = 1 << 2;
    /// Write: control bits for the selected slot.
    pub const CONTROL: u64 = STATUS;
    /// Control: clear the insert-pending bit.
    pub const CLEAR_INSERT: u32 = 1 << 1;
    /// Control: clear the remove-pending bit.
    pub const CLEAR_REMOVE: u32 = 1 << 2;
    /// Control: the guest's `_EJ0`.
    pub const EJECT: u32 = 1 << 3;
}

/// Where the VMM puts the register blocks; the devices are told but must not care.
const CONTROLLER_BASE: MmioAddress = MmioAddress(0xfeb0_1000);
const GED_BASE: MmioAddress = MmioAddress(0xfeb0_0000);

/// One operation: a vCPU's MMIO access or something the host does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A guest read of `width` bytes at `offset` from the start of the controller's block.
    Read { offset: u64, width: usize },
    /// A guest write of the low `width` bytes of `value` (little-endian, as on x86) to the
    /// controller's block. Widths above 8 write zeros past the value's eight bytes.
    Write {
        offset: u64,
        width: usize,
        value: u64,
    },
    /// The host plugs a DIMM (the API's add, after it mapped the memory).
    Plug { slot: u32, dimm: Dimm },
    /// The host asks the guest to give a DIMM back (the API's remove).
    RequestRemoval { slot: u32 },
    /// From now on the host's unmap fails (or works again): the DIMM must stay.
    EjectFails(bool),
    /// A guest read of `width` bytes at `offset` from the GED's register.
    GedRead { offset: u64, width: usize },
    /// A guest write to the GED's register, which ignores it.
    GedWrite {
        offset: u64,
        width: usize,
        value: u64,
    },
    /// The host sets GED event bits and interrupts the guest.
    GedNotify(u32),
}

/// The bytes of a `width`-byte write of `value`.
fn write_bytes(width: usize, value: u64) -> Vec<u8> {
    let mut bytes = value.to_le_bytes().to_vec();
    bytes.resize(width, 0);
    bytes
}

/// A slot as the design describes it, guest-visible pending bits included.
#[derive(Debug, Clone, Copy)]
struct ModelSlot {
    dimm: Option<Dimm>,
    state: SlotState,
    insert_pending: bool,
    remove_pending: bool,
    last_ost: Option<Ost>,
}

const EMPTY: ModelSlot = ModelSlot {
    dimm: None,
    state: SlotState::Empty,
    insert_pending: false,
    remove_pending: false,
    last_ost: None,
};

/// What one operation must make the controller tell the host, besides the slots' new states.
#[derive(Debug, Default)]
struct Expected {
    events: Vec<SlotEvent>,
    ejects: Vec<(u32, Dimm)>,
}

impl Expected {
    fn event(
        &mut self,
        slot: u32,
        dimm: Option<Dimm>,
        old: SlotState,
        new: SlotState,
        ost: Option<Ost>,
    ) {
        self.events.push(SlotEvent {
            slot,
            dimm,
            old,
            new,
            ost,
        });
    }
}

/// The memory-hotplug controller as docs/design.md specifies it.
struct ControllerModel {
    slots: Vec<ModelSlot>,
    selected: u32,
    ost_event: u32,
    eject_fails: bool,
}

impl ControllerModel {
    fn new(slots: u32) -> Self {
        Self {
            slots: (0..slots).map(|_| EMPTY).collect(),
            selected: 0,
            ost_event: 0,
            eject_fails: false,
        }
    }

    fn slot(&self, slot: u32) -> Option<&ModelSlot> {
        self.slots.get(usize::try_from(slot).ok()?)
    }

    fn slot_mut(&mut self, slot: u32) -> Option<&mut ModelSlot> {
        self.slots.get_mut(usize::try_from(slot).ok()?)
    }

    fn view(&self, slot: u32) -> Option<SlotView> {
        self.slot(slot).map(|s| SlotView {
            dimm: s.dimm,
            state: s.state,
            last_ost: s.last_ost,
        })
    }

    fn free_slot(&self) -> Option<u32> {
        let index = self
            .slots
            .iter()
            .position(|s| s.state == SlotState::Empty)?;
        u32::try_from(index).ok()
    }

    /// Only aligned 4-byte accesses inside the block are registers.
    fn is_register(offset: u64, width: usize) -> bool {
        width == 4 && offset.is_multiple_of(4) && offset < REGISTERS_LEN
    }

    fn plug(&mut self, slot: u32, dimm: Dimm, expected: &mut Expected) -> Result<(), HotplugError> {
        let entry = self.slot_mut(slot).ok_or(HotplugError::NoSuchSlot(slot))?;
        if entry.state != SlotState::Empty {
            return Err(HotplugError::SlotInUse(slot));
        }
        *entry = ModelSlot {
            dimm: Some(dimm),
            state: SlotState::Inserting,
            insert_pending: true,
            ..EMPTY
        };
        expected.event(
            slot,
            Some(dimm),
            SlotState::Empty,
            SlotState::Inserting,
            None,
        );
        Ok(())
    }

    /// Removable: any plugged DIMM, whatever the guest said of it (or did not: a lost insertion
    /// `_OST`). The insertion is no longer announced.
    fn request_removal(&mut self, slot: u32, expected: &mut Expected) -> Result<(), HotplugError> {
        let entry = self.slot_mut(slot).ok_or(HotplugError::NoSuchSlot(slot))?;
        let old = entry.state;
        if old == SlotState::Empty {
            return Err(HotplugError::NotRemovable { slot, state: old });
        }
        entry.state = SlotState::Removing;
        entry.insert_pending = false;
        entry.remove_pending = true;
        let dimm = entry.dimm;
        expected.event(slot, dimm, old, SlotState::Removing, None);
        Ok(())
    }

    /// The bytes a read returns: all ones for anything but a register of an existing slot.
    fn read(&self, offset: u64, width: usize) -> Vec<u8> {
        let Some(slot) = self
            .slot(self.selected)
            .filter(|_| Self::is_register(offset, width))
        else {
            return vec![0xff; width];
        };
        let no_dimm = Dimm {
            base: 0,
            size: 0,
            node: 0,
        };
        let dimm = slot.dimm.unwrap_or(no_dimm);
        let (base, size) = (dimm.base.to_le_bytes(), dimm.size.to_le_bytes());
        let bit = |set: bool, bit: u32| if set { bit } else { 0 };
        let status = bit(slot.dimm.is_some(), reg::ENABLED)
            | bit(slot.insert_pending, reg::INSERT_PENDING)
            | bit(slot.remove_pending, reg::REMOVE_PENDING);
        // Offsets as in the design's table; 0x14, the status, is the only one left.
        match offset {
            0x00 => base[..4].to_vec(),
            0x04 => base[4..].to_vec(),
            0x08 => size[..4].to_vec(),
            0x0c => size[4..].to_vec(),
            0x10 => dimm.node.to_le_bytes().to_vec(),
            _ => status.to_le_bytes().to_vec(),
        }
    }

    fn write(&mut self, offset: u64, bytes: &[u8], expected: &mut Expected) {
        if !Self::is_register(offset, bytes.len()) {
            return;
        }
        let Ok(value) = <[u8; 4]>::try_from(bytes).map(u32::from_le_bytes) else {
            return;
        };
        match offset {
            reg::SELECTOR => self.selected = value,
            reg::OST_EVENT => self.ost_event = value,
            reg::OST_STATUS => self.ost(value, expected),
            reg::CONTROL => self.control(value, expected),
            _ => {}
        }
    }

    /// An `_OST` moves a slot along the diagram; one for an empty or missing slot has nothing to
    /// report on. Any other is recorded without changing the state, and reported unless it
    /// repeats the slot's last report and leaves the state as it was.
    fn ost(&mut self, status: u32, expected: &mut Expected) {
        let (selected, event) = (self.selected, self.ost_event);
        let Some(entry) = self.slot_mut(selected).filter(|s| s.dimm.is_some()) else {
            return;
        };
        let old = entry.state;
        let refused = event == OST_EVENT_EJECT_REQUEST
            && status != OST_SUCCESS
            && status != OST_EJECT_IN_PROGRESS;
        entry.state = match old {
            SlotState::Inserting if event == OST_EVENT_DEVICE_CHECK && status == OST_SUCCESS => {
                SlotState::Added
            }
            SlotState::Inserting if event == OST_EVENT_DEVICE_CHECK => SlotState::Failed,
            SlotState::Removing if refused => {
                entry.remove_pending = false;
                SlotState::Added
            }
            unchanged => unchanged,
        };
        let ost = Ost { event, status };
        let repeated = entry.last_ost == Some(ost);
        entry.last_ost = Some(ost);
        let (dimm, new) = (entry.dimm, entry.state);
        if !(repeated && old == new) {
            expected.event(selected, dimm, old, new, Some(ost));
        }
    }

    /// Clears come before the eject; an eject is passed to the host only for a DIMM being
    /// removed, and empties the slot (keeping its last `_OST`) only if the host's unmap worked.
    fn control(&mut self, value: u32, expected: &mut Expected) {
        let (selected, eject_fails) = (self.selected, self.eject_fails);
        let Some(entry) = self.slot_mut(selected) else {
            return;
        };
        if value & reg::CLEAR_INSERT != 0 {
            entry.insert_pending = false;
        }
        if value & reg::CLEAR_REMOVE != 0 {
            entry.remove_pending = false;
        }
        if value & reg::EJECT == 0 || entry.state != SlotState::Removing {
            return;
        }
        let Some(dimm) = entry.dimm else {
            return;
        };
        expected.ejects.push((selected, dimm));
        if !eject_fails {
            *entry = ModelSlot {
                last_ost: entry.last_ost,
                ..EMPTY
            };
            let (old, new) = (SlotState::Removing, SlotState::Empty);
            expected.event(selected, Some(dimm), old, new, None);
        }
    }
}

/// The GED as docs/design.md specifies it: event bits the host sets and the guest's one aligned
/// 4-byte read takes (and clears); any other read sees zeros and takes nothing, and writes are
/// ignored.
#[derive(Debug, Default)]
struct GedModel {
    pending: u32,
}

impl GedModel {
    fn read(&mut self, offset: u64, width: usize) -> Vec<u8> {
        if (offset, width) != (0, 4) {
            return vec![0; width];
        }
        std::mem::take(&mut self.pending).to_le_bytes().to_vec()
    }
}

/// The host's unmap: logs every call, and fails while told to.
struct Unmapper {
    calls: Arc<Mutex<Vec<(u32, Dimm)>>>,
    fail: Arc<AtomicBool>,
}

impl EjectHandler for Unmapper {
    fn eject(&mut self, slot: u32, dimm: Dimm) -> Result<(), EjectError> {
        lock(&self.calls).push((slot, dimm));
        if self.fail.load(Ordering::Relaxed) {
            return Err("unmap failed".into());
        }
        Ok(())
    }
}

/// The API's event stream.
struct EventLog(Arc<Mutex<Vec<SlotEvent>>>);

impl SlotListener for EventLog {
    fn slot_changed(&self, event: SlotEvent) {
        lock(&self.0).push(event);
    }
}

/// A log's contents. Nothing panics while holding a log's lock but a failing check, so a
/// poisoned lock is just used.
fn lock<T>(log: &Mutex<Vec<T>>) -> MutexGuard<'_, Vec<T>> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Empties a log, returning what it held: what happened in the last operation.
fn take<T>(log: &Mutex<Vec<T>>) -> Vec<T> {
    std::mem::take(&mut *lock(log))
}

/// Where a device and its model first disagreed: the operation, if one, and what differed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Mismatch(pub String);

/// What an operation did, for whoever plays the guest or the host around the devices.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// What a read returned (the device and the model agreed on it); empty for other operations.
    pub read: Vec<u8>,
    /// DIMMs the host unmapped for the guest's `_EJ0`, which left their slots.
    pub unmapped: Vec<(u32, Dimm)>,
    /// What `plug` or `request_removal` answered, for a host operation.
    pub result: Option<Result<(), HotplugError>>,
}

/// The real controller and GED, their models, and the host's side of both. After every
/// operation they are compared on each read, each event the controller reports, each eject it
/// asks the host for, the slots the operation could reach (the selected one before and after, a
/// host operation's slot, and slots that do not exist), the free slot, and the GED's events and
/// interrupt; [`Harness::check_all`] compares every slot, for callers to run after each step
/// of a few operations (doing it after every access would make a scan of 256 slots quadratic).
pub struct Harness {
    controller: MemoryHotplugController,
    model: ControllerModel,
    ged: Ged,
    ged_model: GedModel,
    ejects: Arc<Mutex<Vec<(u32, Dimm)>>>,
    eject_fails: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<SlotEvent>>>,
    /// Every slot, two that do not exist, and the last possible one.
    probed: Vec<u32>,
}

impl Harness {
    /// A controller with `slots` slots, a GED, and their models.
    pub fn new(slots: u32) -> std::io::Result<Self> {
        let mut controller = MemoryHotplugController::new(slots, Arc::new(Condvar::new()));
        let ejects = Arc::new(Mutex::new(Vec::new()));
        let eject_fails = Arc::new(AtomicBool::new(false));
        controller.set_eject_handler(Box::new(Unmapper {
            calls: ejects.clone(),
            fail: eject_fails.clone(),
        }));
        let events = Arc::new(Mutex::new(Vec::new()));
        controller.set_listener(Box::new(EventLog(events.clone())));
        Ok(Self {
            controller,
            model: ControllerModel::new(slots),
            ged: Ged::new(EventFdTrigger::new()?),
            ged_model: GedModel::default(),
            ejects,
            eject_fails,
            events,
            probed: (0..slots.saturating_add(2)).chain([u32::MAX]).collect(),
        })
    }

    /// The controller under test, for checks of the host's own.
    pub fn controller(&self) -> &MemoryHotplugController {
        &self.controller
    }

    /// Every slot (and some that do not exist) and the slot count, device against model.
    pub fn check_all(&self) -> Result<(), Mismatch> {
        let slots = self.model.slots.len();
        if usize::try_from(self.controller.slot_count()).ok() != Some(slots) {
            return Err(Mismatch(format!(
                "{} slots, model {slots}",
                self.controller.slot_count()
            )));
        }
        self.compare_slots(self.probed.iter().copied())
            .map_err(Mismatch)
    }

    fn compare_slots(&self, slots: impl IntoIterator<Item = u32>) -> Result<(), String> {
        for i in slots {
            let (view, model) = (self.controller.slot(i), self.model.view(i));
            if view != model {
                return Err(format!("slot {i}: {view:?}, model {model:?}"));
            }
        }
        Ok(())
    }

    /// Applies `op` to the devices and the models and compares them.
    pub fn apply(&mut self, op: &Op) -> Result<Applied, Mismatch> {
        let mismatch = |what: String| Mismatch(format!("{op:?}: {what}"));
        // What the host saw before, of the slots the operation can reach.
        let reached = match *op {
            Op::Read { .. } | Op::Write { .. } => Some(self.model.selected),
            Op::Plug { slot, .. } | Op::RequestRemoval { slot } => Some(slot),
            _ => None,
        };
        let before = reached.map(|slot| (slot, self.controller.slot(slot)));
        let mut expected = Expected::default();
        let mut applied = Applied::default();
        match *op {
            Op::Read { offset, width } => {
                let mut data = vec![0; width];
                self.controller
                    .mmio_read(CONTROLLER_BASE, offset, &mut data);
                let model = self.model.read(offset, width);
                if data != model {
                    return Err(mismatch(format!("read {data:x?}, model {model:x?}")));
                }
                applied.read = data;
            }
            Op::Write {
                offset,
                width,
                value,
            } => {
                let bytes = write_bytes(width, value);
                self.controller.mmio_write(CONTROLLER_BASE, offset, &bytes);
                self.model.write(offset, &bytes, &mut expected);
            }
            Op::Plug { slot, dimm } => {
                let result = self.controller.plug(slot, dimm);
                let model = self.model.plug(slot, dimm, &mut expected);
                if result != model {
                    return Err(mismatch(format!("plug: {result:?}, model {model:?}")));
                }
                applied.result = Some(result);
            }
            Op::RequestRemoval { slot } => {
                let result = self.controller.request_removal(slot);
                let model = self.model.request_removal(slot, &mut expected);
                if result != model {
                    return Err(mismatch(format!("removal: {result:?}, model {model:?}")));
                }
                applied.result = Some(result);
            }
            Op::EjectFails(fails) => {
                self.eject_fails.store(fails, Ordering::Relaxed);
                self.model.eject_fails = fails;
            }
            Op::GedRead { offset, width } => {
                let mut data = vec![0; width];
                self.ged.mmio_read(GED_BASE, offset, &mut data);
                let model = self.ged_model.read(offset, width);
                if data != model {
                    return Err(mismatch(format!("GED read {data:x?}, model {model:x?}")));
                }
                applied.read = data;
            }
            Op::GedWrite {
                offset,
                width,
                value,
            } => self
                .ged
                .mmio_write(GED_BASE, offset, &write_bytes(width, value)),
            Op::GedNotify(events) => {
                self.ged
                    .notify(events)
                    .map_err(|e| mismatch(format!("GED notify failed: {e}")))?;
                self.ged_model.pending |= events;
                // Exactly one interrupt per notification.
                let raised = self.ged.interrupt().event_fd().read();
                if !matches!(raised, Ok(1)) {
                    return Err(mismatch(format!("GED interrupt: {raised:?}, expected 1")));
                }
            }
        }

        let ejected = take(&self.ejects);
        // The safety property, from what the host saw before the operation rather than from
        // the model: only a DIMM the host asked to remove (and still in its slot) is unmapped.
        for &(slot, dimm) in &ejected {
            let was = before
                .filter(|&(reached, _)| reached == slot)
                .and_then(|(_, view)| view);
            if !was.is_some_and(|v| v.state == SlotState::Removing && v.dimm == Some(dimm)) {
                return Err(mismatch(format!(
                    "the host was made to unmap slot {slot} ({dimm:?}), which was {was:?}"
                )));
            }
        }
        if ejected != expected.ejects {
            return Err(mismatch(format!(
                "ejects {ejected:?}, model {:?}",
                expected.ejects
            )));
        }
        let events = take(&self.events);
        if events != expected.events {
            return Err(mismatch(format!(
                "events {events:?}, model {:?}",
                expected.events
            )));
        }
        // The reached slot, the one selected now, and some that do not exist.
        let nonexistent = self.probed.iter().rev().take(3).copied();
        let now_selected = self.model.selected;
        self.compare_slots(reached.into_iter().chain([now_selected]).chain(nonexistent))
            .map_err(mismatch)?;
        let (free, model) = (self.controller.free_slot(), self.model.free_slot());
        if free != model {
            return Err(mismatch(format!("free slot {free:?}, model {model:?}")));
        }
        if let Ok(raised) = self.ged.interrupt().event_fd().read() {
            return Err(mismatch(format!(
                "{raised} GED interrupts nobody asked for"
            )));
        }
        applied.unmapped = ejected
            .into_iter()
            .filter(|&(slot, _)| self.controller.slot(slot).is_some_and(|v| v.dimm.is_none()))
            .collect();
        Ok(applied)
    }
}
