//! The memory-hotplug controller: a register block the guest's AML drives (docs/design.md,
//! "Memory-hotplug registers") and the state of every DIMM slot. The host plugs DIMMs and asks
//! for their removal; the guest reports `_OST` results and ejects. Every register access is
//! guest input: wrong widths, bad selectors and out-of-order commands are ignored, never trusted.

use std::sync::{Arc, Condvar};

use tidal_acpi::memory_hotplug_layout::{
    self as reg, control, status, REGISTERS_LEN, REGISTER_WIDTH,
};
use vm_device::bus::{MmioAddress, MmioAddressOffset};
use vm_device::MutDeviceMmio;

use crate::repeats::Repeats;

/// The status (read) and control (write) bits as masks.
const STATUS_ENABLED: u32 = 1 << status::ENABLED;
const STATUS_INSERT_PENDING: u32 = 1 << status::INSERT_PENDING;
const STATUS_REMOVE_PENDING: u32 = 1 << status::REMOVE_PENDING;
const CONTROL_CLEAR_INSERT: u32 = 1 << control::CLEAR_INSERT;
const CONTROL_CLEAR_REMOVE: u32 = 1 << control::CLEAR_REMOVE;
const CONTROL_EJECT: u32 = 1 << control::EJECT;

/// ACPI notification types `_OST` reports on.
pub const OST_EVENT_DEVICE_CHECK: u32 = 1;
pub const OST_EVENT_EJECT_REQUEST: u32 = 3;
/// `_OST` status codes (ACPI spec 6.3.5).
pub const OST_SUCCESS: u32 = 0;
pub const OST_EJECT_IN_PROGRESS: u32 = 0x84;

/// A DIMM as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dimm {
    pub base: u64,
    pub size: u64,
    pub node: u32,
}

/// Where a slot is in a DIMM's life (docs/design.md, "A DIMM's life").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    Empty,
    /// Plugged and announced; waiting for the guest's `_OST`.
    Inserting,
    /// The guest accepted it.
    Added,
    /// The guest reported a failure for the insertion.
    Failed,
    /// The guest was asked to eject it.
    Removing,
}

/// One `_OST` report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ost {
    pub event: u32,
    pub status: u32,
}

/// A slot as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotView {
    pub dimm: Option<Dimm>,
    pub state: SlotState,
    pub last_ost: Option<Ost>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    dimm: Option<Dimm>,
    state: SlotState,
    insert_pending: bool,
    remove_pending: bool,
    last_ost: Option<Ost>,
}

impl Slot {
    const EMPTY: Slot = Slot {
        dimm: None,
        state: SlotState::Empty,
        insert_pending: false,
        remove_pending: false,
        last_ost: None,
    };
}

/// What the host must do when the guest ejects a DIMM: take the memory away. Called on the
/// vCPU thread before the guest's `_EJ0` returns, so the slot reads empty afterwards.
pub trait EjectHandler: Send {
    /// Removes the DIMM's memory. An error keeps the DIMM plugged.
    fn eject(&mut self, slot: u32, dimm: Dimm) -> Result<(), EjectError>;
}

/// Why an [`EjectHandler`] could not take a DIMM's memory away: the host side's own error,
/// which the controller only logs.
pub type EjectError = Box<dyn std::error::Error + Send + Sync>;

/// A slot's state change, for whoever follows hotplug events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotEvent {
    pub slot: u32,
    pub dimm: Option<Dimm>,
    pub old: SlotState,
    pub new: SlotState,
    /// The `_OST` report that caused the change, if one did.
    pub ost: Option<Ost>,
}

/// Told of every state change (and every `_OST`), on the thread that made it.
pub trait SlotListener: Send {
    fn slot_changed(&self, event: SlotEvent);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HotplugError {
    #[error("slot {0} does not exist")]
    NoSuchSlot(u32),
    #[error("slot {0} is not empty")]
    SlotInUse(u32),
    #[error("slot {slot} is {state:?}, not added")]
    NotRemovable { slot: u32, state: SlotState },
}

pub struct MemoryHotplugController {
    slots: Vec<Slot>,
    selected: u32,
    ost_event: u32,
    eject_handler: Option<Box<dyn EjectHandler>>,
    listener: Option<Box<dyn SlotListener>>,
    /// Woken on every change the host may be waiting for (`_OST`, eject).
    changed: Arc<Condvar>,
    /// What a guest can do in a loop and the host logs: logged as their counts double, so that
    /// the guest cannot flood the host's log.
    bad_accesses: Repeats,
    bad_ejects: Repeats,
    failed_ejects: Repeats,
    /// Guest register accesses since the host last plugged a DIMM or asked for one's removal:
    /// each is an exit to the VMM, so this is what the guest's scans cost (logged at debug
    /// level with each answer of the guest, for profiling).
    accesses: u64,
}

impl MemoryHotplugController {
    pub fn new(slots: u32, changed: Arc<Condvar>) -> Self {
        Self {
            slots: vec![Slot::EMPTY; usize::try_from(slots).unwrap_or(0)],
            selected: 0,
            ost_event: 0,
            eject_handler: None,
            listener: None,
            changed,
            bad_accesses: Repeats::new(),
            bad_ejects: Repeats::new(),
            failed_ejects: Repeats::new(),
            accesses: 0,
        }
    }

    pub fn set_eject_handler(&mut self, handler: Box<dyn EjectHandler>) {
        self.eject_handler = Some(handler);
    }

    pub fn set_listener(&mut self, listener: Box<dyn SlotListener>) {
        self.listener = Some(listener);
    }

    pub fn slot_count(&self) -> u32 {
        u32::try_from(self.slots.len()).unwrap_or(u32::MAX)
    }

    pub fn slot(&self, slot: u32) -> Option<SlotView> {
        self.get(slot).map(|s| SlotView {
            dimm: s.dimm,
            state: s.state,
            last_ost: s.last_ost,
        })
    }

    /// The lowest empty slot.
    pub fn free_slot(&self) -> Option<u32> {
        (0..self.slot_count()).find(|&i| self.get(i).is_some_and(|s| s.state == SlotState::Empty))
    }

    /// How many slots are empty.
    pub fn free_slots(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.state == SlotState::Empty)
            .count()
    }

    /// Puts `dimm` in an empty slot and marks it for the guest's next scan.
    pub fn plug(&mut self, slot: u32, dimm: Dimm) -> Result<(), HotplugError> {
        self.place(slot, dimm, SlotState::Inserting)
    }

    /// Puts `dimm` in an empty slot as memory the guest has from boot (its e820 map lists it):
    /// added at once, never announced, removable like any DIMM.
    pub fn plug_at_boot(&mut self, slot: u32, dimm: Dimm) -> Result<(), HotplugError> {
        self.place(slot, dimm, SlotState::Added)
    }

    fn place(&mut self, slot: u32, dimm: Dimm, state: SlotState) -> Result<(), HotplugError> {
        let entry = self.get_mut(slot).ok_or(HotplugError::NoSuchSlot(slot))?;
        if entry.state != SlotState::Empty {
            return Err(HotplugError::SlotInUse(slot));
        }
        *entry = Slot {
            dimm: Some(dimm),
            state,
            insert_pending: state == SlotState::Inserting,
            ..Slot::EMPTY
        };
        self.accesses = 0;
        self.report(slot, SlotState::Empty, None);
        Ok(())
    }

    /// Announces a DIMM still `Inserting` again at the guest's next scan: its notification may
    /// have been lost, or the guest was not ready for it. Other states are left as they are.
    pub fn announce_again(&mut self, slot: u32) {
        if let Some(entry) = self
            .get_mut(slot)
            .filter(|s| s.state == SlotState::Inserting)
        {
            entry.insert_pending = true;
            self.accesses = 0;
        }
    }

    /// Marks a DIMM for ejection at the guest's next scan. Asking again for a DIMM already
    /// being removed (one the guest never answered for) asks the guest again. A DIMM still
    /// `Inserting` can be removed too: its `_OST` may have been lost (or never come) while the
    /// guest uses the memory; its insertion is no longer announced.
    pub fn request_removal(&mut self, slot: u32) -> Result<(), HotplugError> {
        let entry = self.get_mut(slot).ok_or(HotplugError::NoSuchSlot(slot))?;
        if entry.dimm.is_none() {
            return Err(HotplugError::NotRemovable {
                slot,
                state: entry.state,
            });
        }
        let old = entry.state;
        entry.state = SlotState::Removing;
        entry.insert_pending = false;
        entry.remove_pending = true;
        self.accesses = 0;
        self.report(slot, old, None);
        Ok(())
    }

    /// Logs a state change (an `_OST` that left the state as it was only at debug level: a guest
    /// can write those in a loop), tells the listener and wakes whoever waits for the guest.
    fn report(&self, slot: u32, old: SlotState, ost: Option<Ost>) {
        let Some(entry) = self.get(slot) else {
            return;
        };
        let event = SlotEvent {
            slot,
            dimm: entry.dimm,
            old,
            new: entry.state,
            ost,
        };
        let level = if old == entry.state {
            log::Level::Debug
        } else {
            log::Level::Info
        };
        match ost {
            Some(o) => log::log!(
                level,
                "memory slot {slot}: _OST(event {:#x}, status {:#x}); {old:?} -> {:?}",
                o.event,
                o.status,
                entry.state
            ),
            None => log::info!("memory slot {slot}: {old:?} -> {:?}", entry.state),
        }
        if ost.is_some() {
            self.log_accesses(slot);
        }
        if let Some(listener) = &self.listener {
            listener.slot_changed(event);
        }
        self.changed.notify_all();
    }

    fn get(&self, slot: u32) -> Option<&Slot> {
        self.slots.get(usize::try_from(slot).ok()?)
    }

    fn get_mut(&mut self, slot: u32) -> Option<&mut Slot> {
        self.slots.get_mut(usize::try_from(slot).ok()?)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let Some(slot) = self.get(self.selected) else {
            return u32::MAX;
        };
        let dimm = slot.dimm.unwrap_or(Dimm {
            base: 0,
            size: 0,
            node: 0,
        });
        let lo = |v: u64| u32::try_from(v & 0xffff_ffff).unwrap_or(0);
        match offset {
            reg::BASE_LO => lo(dimm.base),
            reg::BASE_HI => lo(dimm.base >> 32),
            reg::LEN_LO => lo(dimm.size),
            reg::LEN_HI => lo(dimm.size >> 32),
            reg::NODE => dimm.node,
            reg::STATUS => {
                let mut status = 0;
                if slot.dimm.is_some() {
                    status |= STATUS_ENABLED;
                }
                if slot.insert_pending {
                    status |= STATUS_INSERT_PENDING;
                }
                if slot.remove_pending {
                    status |= STATUS_REMOVE_PENDING;
                }
                status
            }
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::SELECTOR => self.selected = value,
            reg::OST_EVENT => self.ost_event = value,
            reg::OST_STATUS => self.record_ost(value),
            reg::CONTROL => self.control(value),
            _ => self.warn_bad_access(offset, 4),
        }
    }

    fn record_ost(&mut self, status: u32) {
        let (selected, event) = (self.selected, self.ost_event);
        let Some(slot) = self.get_mut(selected) else {
            return;
        };
        if slot.dimm.is_none() {
            return;
        }
        let ost = Ost { event, status };
        let repeated = slot.last_ost == Some(ost);
        slot.last_ost = Some(ost);
        let old = slot.state;
        slot.state = match (slot.state, event, status) {
            (SlotState::Inserting, OST_EVENT_DEVICE_CHECK, OST_SUCCESS) => SlotState::Added,
            (SlotState::Inserting, OST_EVENT_DEVICE_CHECK, _) => SlotState::Failed,
            (SlotState::Removing, OST_EVENT_EJECT_REQUEST, OST_EJECT_IN_PROGRESS) => {
                SlotState::Removing
            }
            (SlotState::Removing, OST_EVENT_EJECT_REQUEST, s) if s != OST_SUCCESS => {
                slot.remove_pending = false;
                SlotState::Added
            }
            (state, _, _) => state,
        };
        // The same report again changes nothing: no log line, no event (a guest looping on the
        // register would otherwise make one of each per write).
        if repeated && old == slot.state {
            return;
        }
        self.report(selected, old, Some(ost));
    }

    fn control(&mut self, value: u32) {
        let selected = self.selected;
        let Some(slot) = self.get_mut(selected) else {
            return;
        };
        if value & CONTROL_CLEAR_INSERT != 0 {
            slot.insert_pending = false;
        }
        if value & CONTROL_CLEAR_REMOVE != 0 {
            slot.remove_pending = false;
        }
        if value & CONTROL_EJECT != 0 {
            self.eject(selected);
        }
    }

    /// The guest's `_EJ0`: honoured only for a DIMM the host asked to remove.
    fn eject(&mut self, slot_index: u32) {
        let Some(slot) = self.get(slot_index).copied() else {
            return;
        };
        let (Some(dimm), SlotState::Removing) = (slot.dimm, slot.state) else {
            if let Some(times) = self.bad_ejects.count() {
                log::warn!(
                    "memory slot {slot_index}: guest ejected a DIMM in state {:?}; ignored \
                     ({times})",
                    slot.state
                );
            }
            return;
        };
        let result = match self.eject_handler.as_mut() {
            Some(handler) => handler.eject(slot_index, dimm),
            None => Err("no eject handler".into()),
        };
        match result {
            Ok(()) => {
                if let Some(entry) = self.get_mut(slot_index) {
                    *entry = Slot {
                        last_ost: slot.last_ost,
                        ..Slot::EMPTY
                    };
                }
                self.report_eject(slot_index, dimm);
            }
            Err(e) => {
                if let Some(times) = self.failed_ejects.count() {
                    log::error!(
                        "memory slot {slot_index}: eject failed, DIMM kept: {e} (failed ejects: \
                         {times})"
                    );
                }
                self.changed.notify_all();
            }
        }
    }

    /// The slot is empty now, but the event still names the DIMM that left.
    fn report_eject(&self, slot: u32, dimm: Dimm) {
        log::info!("memory slot {slot}: Removing -> Empty (ejected)");
        self.log_accesses(slot);
        if let Some(listener) = &self.listener {
            listener.slot_changed(SlotEvent {
                slot,
                dimm: Some(dimm),
                old: SlotState::Removing,
                new: SlotState::Empty,
                ost: None,
            });
        }
        self.changed.notify_all();
    }

    fn log_accesses(&self, slot: u32) {
        log::debug!(
            "memory slot {slot}: {} guest register accesses since the host's last plug or \
             removal request",
            self.accesses
        );
    }

    fn warn_bad_access(&mut self, offset: u64, len: usize) {
        if let Some(times) = self.bad_accesses.count() {
            log::warn!(
                "memory-hotplug registers: ignored {len}-byte access at offset {offset:#x} \
                 (only aligned 4-byte accesses are valid; {times})"
            );
        }
    }

    fn decode(&mut self, offset: u64, len: usize) -> bool {
        self.accesses = self.accesses.saturating_add(1);
        let valid = u64::try_from(len) == Ok(REGISTER_WIDTH)
            && offset.is_multiple_of(REGISTER_WIDTH)
            && offset < REGISTERS_LEN;
        if !valid {
            self.warn_bad_access(offset, len);
        }
        valid
    }
}

impl MutDeviceMmio for MemoryHotplugController {
    fn mmio_read(&mut self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        if self.decode(offset, data.len()) {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            data.fill(0xff);
        }
    }

    fn mmio_write(&mut self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        if let (true, Ok(bytes)) = (self.decode(offset, data.len()), <[u8; 4]>::try_from(data)) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const DIMM: Dimm = Dimm {
        base: 0x1_0000_0000,
        size: 0x4000_0000,
        node: 1,
    };

    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<(u32, Dimm)>>>, bool);
    impl EjectHandler for Recorder {
        fn eject(&mut self, slot: u32, dimm: Dimm) -> Result<(), EjectError> {
            if self.1 {
                return Err("refused".into());
            }
            self.0.lock().unwrap().push((slot, dimm));
            Ok(())
        }
    }

    fn controller(slots: u32) -> (MemoryHotplugController, Recorder) {
        let mut c = MemoryHotplugController::new(slots, Arc::new(Condvar::new()));
        let recorder = Recorder::default();
        c.set_eject_handler(Box::new(recorder.clone()));
        (c, recorder)
    }

    fn write(c: &mut MemoryHotplugController, offset: u64, value: u32) {
        c.mmio_write(MmioAddress(0), offset, &value.to_le_bytes());
    }

    fn read(c: &mut MemoryHotplugController, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        c.mmio_read(MmioAddress(0), offset, &mut data);
        u32::from_le_bytes(data)
    }

    /// What the guest's scan and `_OST` do: clear the pending bit, then report.
    fn ost(c: &mut MemoryHotplugController, slot: u32, event: u32, status: u32) {
        write(c, reg::SELECTOR, slot);
        let clear = if event == OST_EVENT_DEVICE_CHECK {
            CONTROL_CLEAR_INSERT
        } else {
            CONTROL_CLEAR_REMOVE
        };
        write(c, reg::CONTROL, clear);
        write(c, reg::OST_EVENT, event);
        write(c, reg::OST_STATUS, status);
    }

    #[test]
    fn guest_reads_a_plugged_dimm() {
        let (mut c, _) = controller(4);
        assert_eq!(c.free_slots(), 4);
        c.plug(2, DIMM).unwrap();
        assert_eq!((c.free_slot(), c.free_slots()), (Some(0), 3));
        write(&mut c, reg::SELECTOR, 2);
        assert_eq!(read(&mut c, reg::BASE_LO), 0);
        assert_eq!(read(&mut c, reg::BASE_HI), 1);
        assert_eq!(read(&mut c, reg::LEN_LO), 0x4000_0000);
        assert_eq!(read(&mut c, reg::LEN_HI), 0);
        assert_eq!(read(&mut c, reg::NODE), 1);
        assert_eq!(
            read(&mut c, reg::STATUS),
            STATUS_ENABLED | STATUS_INSERT_PENDING
        );
        write(&mut c, reg::CONTROL, CONTROL_CLEAR_INSERT);
        assert_eq!(read(&mut c, reg::STATUS), STATUS_ENABLED);
        write(&mut c, reg::SELECTOR, 1);
        assert_eq!(read(&mut c, reg::STATUS), 0);
    }

    #[test]
    fn an_unanswered_insertion_is_announced_again() {
        let (mut c, _) = controller(2);
        c.plug(0, DIMM).unwrap();
        write(&mut c, reg::SELECTOR, 0);
        write(&mut c, reg::CONTROL, CONTROL_CLEAR_INSERT);
        assert_eq!(read(&mut c, reg::STATUS), STATUS_ENABLED);
        c.announce_again(0);
        assert_eq!(
            read(&mut c, reg::STATUS),
            STATUS_ENABLED | STATUS_INSERT_PENDING
        );
        // Only an insertion is announced again: not an added DIMM, not an empty slot.
        ost(&mut c, 0, OST_EVENT_DEVICE_CHECK, OST_SUCCESS);
        c.announce_again(0);
        c.announce_again(1);
        assert_eq!(read(&mut c, reg::STATUS), STATUS_ENABLED);
        write(&mut c, reg::SELECTOR, 1);
        assert_eq!(read(&mut c, reg::STATUS), 0);
    }

    #[test]
    fn insert_ost_success_and_failure() {
        let (mut c, _) = controller(2);
        c.plug(0, DIMM).unwrap();
        c.plug(1, DIMM).unwrap();
        ost(&mut c, 0, OST_EVENT_DEVICE_CHECK, OST_SUCCESS);
        ost(&mut c, 1, OST_EVENT_DEVICE_CHECK, 0x80);
        assert_eq!(c.slot(0).unwrap().state, SlotState::Added);
        assert_eq!(c.slot(1).unwrap().state, SlotState::Failed);
        assert_eq!(
            c.slot(1).unwrap().last_ost,
            Some(Ost {
                event: OST_EVENT_DEVICE_CHECK,
                status: 0x80
            })
        );
        assert_eq!(c.free_slot(), None);
        assert_eq!(c.plug(0, DIMM), Err(HotplugError::SlotInUse(0)));
    }

    #[test]
    fn boot_memory_is_present_added_and_removable() {
        let (mut c, recorder) = controller(2);
        c.plug_at_boot(1, DIMM).unwrap();
        assert_eq!(c.slot(1).unwrap().state, SlotState::Added);
        write(&mut c, reg::SELECTOR, 1);
        // Present for the guest's first scan, with nothing to announce.
        assert_eq!(read(&mut c, reg::STATUS), STATUS_ENABLED);
        assert_eq!(c.plug_at_boot(1, DIMM), Err(HotplugError::SlotInUse(1)));
        c.request_removal(1).unwrap();
        ost(&mut c, 1, OST_EVENT_EJECT_REQUEST, OST_EJECT_IN_PROGRESS);
        write(&mut c, reg::CONTROL, CONTROL_EJECT);
        assert_eq!(recorder.0.lock().unwrap().as_slice(), &[(1, DIMM)]);
        assert_eq!(c.free_slot(), Some(0));
        assert_eq!(c.slot(1).unwrap().state, SlotState::Empty);
    }

    #[test]
    fn removal_through_eject() {
        let (mut c, recorder) = controller(1);
        c.plug(0, DIMM).unwrap();
        ost(&mut c, 0, OST_EVENT_DEVICE_CHECK, OST_SUCCESS);
        c.request_removal(0).unwrap();
        assert_eq!(
            read(&mut c, reg::STATUS) & STATUS_REMOVE_PENDING,
            STATUS_REMOVE_PENDING
        );
        ost(&mut c, 0, OST_EVENT_EJECT_REQUEST, OST_EJECT_IN_PROGRESS);
        assert_eq!(c.slot(0).unwrap().state, SlotState::Removing);
        write(&mut c, reg::CONTROL, CONTROL_EJECT);
        assert_eq!(recorder.0.lock().unwrap().as_slice(), &[(0, DIMM)]);
        assert_eq!(c.slot(0).unwrap().state, SlotState::Empty);
        assert_eq!(read(&mut c, reg::STATUS), 0);
        assert_eq!(c.free_slot(), Some(0));
    }

    #[test]
    fn refused_eject_keeps_the_dimm() {
        let (mut c, _) = controller(1);
        c.plug(0, DIMM).unwrap();
        ost(&mut c, 0, OST_EVENT_DEVICE_CHECK, OST_SUCCESS);
        c.request_removal(0).unwrap();
        ost(&mut c, 0, OST_EVENT_EJECT_REQUEST, 0x82);
        let view = c.slot(0).unwrap();
        assert_eq!(view.state, SlotState::Added);
        assert_eq!(view.last_ost.unwrap().status, 0x82);
        assert_eq!(read(&mut c, reg::STATUS), STATUS_ENABLED);
    }

    #[test]
    fn failing_eject_handler_keeps_the_dimm() {
        let mut c = MemoryHotplugController::new(1, Arc::new(Condvar::new()));
        c.set_eject_handler(Box::new(Recorder(Arc::default(), true)));
        c.plug(0, DIMM).unwrap();
        ost(&mut c, 0, OST_EVENT_DEVICE_CHECK, OST_SUCCESS);
        c.request_removal(0).unwrap();
        write(&mut c, reg::CONTROL, CONTROL_EJECT);
        assert_eq!(c.slot(0).unwrap().state, SlotState::Removing);
        assert_eq!(c.slot(0).unwrap().dimm, Some(DIMM));
    }

    #[test]
    fn unrequested_eject_is_ignored() {
        let (mut c, recorder) = controller(2);
        c.plug(0, DIMM).unwrap();
        write(&mut c, reg::SELECTOR, 0);
        write(&mut c, reg::CONTROL, CONTROL_EJECT);
        ost(&mut c, 0, OST_EVENT_DEVICE_CHECK, OST_SUCCESS);
        write(&mut c, reg::CONTROL, CONTROL_EJECT);
        write(&mut c, reg::SELECTOR, 1);
        write(&mut c, reg::CONTROL, CONTROL_EJECT);
        assert!(recorder.0.lock().unwrap().is_empty());
        assert_eq!(c.slot(0).unwrap().state, SlotState::Added);
    }

    #[test]
    fn hostile_accesses_are_ignored() {
        let (mut c, _) = controller(2);
        c.plug(0, DIMM).unwrap();
        write(&mut c, reg::SELECTOR, 99);
        assert_eq!(read(&mut c, reg::STATUS), u32::MAX);
        write(&mut c, reg::CONTROL, u32::MAX);
        ost(&mut c, 99, 1, 0);
        ost(&mut c, 1, 1, 0);
        write(&mut c, REGISTERS_LEN, 1);
        write(&mut c, 0x2, 1);
        c.mmio_write(MmioAddress(0), reg::SELECTOR, &[1]);
        c.mmio_write(MmioAddress(0), reg::SELECTOR, &[1; 8]);
        let mut wide = [0u8; 8];
        c.mmio_read(MmioAddress(0), 0, &mut wide);
        assert_eq!(wide, [0xff; 8]);
        assert_eq!(c.slot(0).unwrap().state, SlotState::Inserting);
        assert_eq!(c.slot(1).unwrap().state, SlotState::Empty);
        assert_eq!(c.slot(99), None);
    }

    #[test]
    fn removal_needs_a_dimm() {
        let (mut c, _) = controller(1);
        assert!(matches!(
            c.request_removal(0),
            Err(HotplugError::NotRemovable { .. })
        ));
        assert_eq!(c.request_removal(5), Err(HotplugError::NoSuchSlot(5)));
        c.plug(0, DIMM).unwrap();
        // Never answered: removable, and no longer announced as an insertion.
        c.request_removal(0).unwrap();
        assert_eq!(
            read(&mut c, reg::STATUS),
            STATUS_ENABLED | STATUS_REMOVE_PENDING
        );
        ost(&mut c, 0, OST_EVENT_EJECT_REQUEST, 1);
        assert_eq!(c.slot(0).unwrap().state, SlotState::Added);
        c.request_removal(0).unwrap();
        // The guest saw the request (and cleared it) but never answered: ask again.
        write(&mut c, reg::CONTROL, CONTROL_CLEAR_REMOVE);
        c.request_removal(0).unwrap();
        assert_eq!(c.slot(0).unwrap().state, SlotState::Removing);
        assert_eq!(
            read(&mut c, reg::STATUS),
            STATUS_ENABLED | STATUS_REMOVE_PENDING
        );
    }

    #[derive(Clone, Default)]
    struct Events(Arc<Mutex<Vec<SlotEvent>>>);
    impl SlotListener for Events {
        fn slot_changed(&self, event: SlotEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    #[test]
    fn listener_follows_a_dimms_life() {
        let (mut c, _) = controller(1);
        let events = Events::default();
        c.set_listener(Box::new(events.clone()));
        c.plug(0, DIMM).unwrap();
        ost(&mut c, 0, OST_EVENT_DEVICE_CHECK, OST_SUCCESS);
        c.request_removal(0).unwrap();
        ost(&mut c, 0, OST_EVENT_EJECT_REQUEST, OST_EJECT_IN_PROGRESS);
        write(&mut c, reg::CONTROL, CONTROL_EJECT);
        let seen: Vec<_> = events
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|e| (e.old, e.new, e.ost.map(|o| o.status), e.dimm))
            .collect();
        use SlotState::*;
        assert_eq!(
            seen,
            vec![
                (Empty, Inserting, None, Some(DIMM)),
                (Inserting, Added, Some(0), Some(DIMM)),
                (Added, Removing, None, Some(DIMM)),
                (Removing, Removing, Some(0x84), Some(DIMM)),
                (Removing, Empty, None, Some(DIMM)),
            ]
        );
    }
}
