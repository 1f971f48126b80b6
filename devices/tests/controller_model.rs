//! The memory-hotplug controller against a model of docs/design.md ("Memory-hotplug registers"
//! and "A DIMM's life"), fed arbitrary sequences of guest register accesses interleaved with the
//! host's plugs, removal requests and failing unmaps.
//!
//! Every register access is guest input, so the unit tests' hand-picked hostile accesses are not
//! enough: here proptest makes up the sequences, and after every step the controller must agree
//! with the model on every slot, on the events it reports and on the ejects it asks the host for.
//! The property that matters most is checked on its own as well: a guest can never make the host
//! unmap a DIMM the host did not ask to remove.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tidal_devices::memory_hotplug::{
    Dimm, EjectHandler, HotplugError, MemoryHotplugController, Ost, SlotEvent, SlotListener,
    SlotState, SlotView, OST_EJECT_IN_PROGRESS, OST_EVENT_DEVICE_CHECK, OST_EVENT_EJECT_REQUEST,
    OST_SUCCESS, REGISTERS_LEN,
};
use vm_device::bus::MmioAddress;
use vm_device::MutDeviceMmio;

/// Register offsets and control bits as docs/design.md gives them (the crate keeps its own
/// private), so that a controller that moved a register would disagree with the model.
const SELECTOR: u64 = 0x00;
const OST_EVENT: u64 = 0x04;
const OST_STATUS: u64 = 0x08;
const STATUS: u64 = 0x14;
const CONTROL: u64 = STATUS;
const CLEAR_INSERT: u32 = 1 << 1;
const CLEAR_REMOVE: u32 = 1 << 2;
const EJECT: u32 = 1 << 3;

/// More slots would only make a plug and later accesses to the same slot rarer.
const MAX_SLOTS: u32 = 3;
/// Long enough for several DIMMs to go through a whole life, and for selectors and `_OST`
/// writes from one life to be left over into the next. A step is at most three accesses.
const MAX_STEPS: usize = 200;

/// Where the VMM puts the register block; the controller is told it but must not care.
const REGISTERS_BASE: MmioAddress = MmioAddress(0xfeb0_1000);

/// One operation: a vCPU's MMIO access or something the host does.
#[derive(Debug, Clone)]
enum Op {
    /// A guest read of `width` bytes at `offset` from the start of the block.
    Read { offset: u64, width: usize },
    /// A guest write of the low `width` bytes of `value` (little-endian, as on x86).
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
}

/// Offsets mostly of real registers, so that sequences reach deep into a DIMM's life, but also
/// misaligned ones, the ones just past the block and any at all (the bus only forwards accesses
/// inside the block, but the controller must not rely on that).
fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => (0..REGISTERS_LEN / 4).prop_map(|register| register * 4),
        2 => 0..REGISTERS_LEN + 8,
        1 => any::<u64>(),
    ]
}

/// Mostly 4 bytes, the only valid width, else any a vCPU can issue, and none.
fn width() -> impl Strategy<Value = usize> {
    prop_oneof![4 => Just(4), 1 => 0..=8_usize]
}

/// Register values that mean something somewhere: small selectors (some past the last slot),
/// `_OST` events, control bits, `_OST` status codes around the ACPI ones; and then anything.
fn value() -> impl Strategy<Value = u32> {
    prop_oneof![
        6 => 0..16_u32,
        2 => 0x80..0x86_u32,
        1 => any::<u32>(),
    ]
}

/// Slot numbers the controller may have, and at least one past its last.
fn slot() -> impl Strategy<Value = u32> {
    0..=MAX_SLOTS
}

/// The controller does not check a DIMM's range (the host placed it), so any will do; wide
/// values show whether the high and low register halves are the right ones.
fn dimm() -> impl Strategy<Value = Dimm> {
    (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(base, size, node)| Dimm {
        base,
        size,
        node,
    })
}

/// Data for a write of any width: mostly a register value, sometimes eight bytes of anything.
fn data() -> impl Strategy<Value = u64> {
    prop_oneof![3 => value().prop_map(u64::from), 1 => any::<u64>()]
}

/// Any single operation, host ones often enough for DIMMs to come and go in every sequence.
fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (offset(), width()).prop_map(|(offset, width)| Op::Read { offset, width }),
        6 => (offset(), width(), data())
            .prop_map(|(offset, width, value)| Op::Write { offset, width, value }),
        4 => (slot(), dimm()).prop_map(|(slot, dimm)| Op::Plug { slot, dimm }),
        4 => slot().prop_map(|slot| Op::RequestRemoval { slot }),
        1 => any::<bool>().prop_map(Op::EjectFails),
    ]
}

/// A valid write, as the guest's AML makes them.
fn write(offset: u64, value: u32) -> Op {
    Op::Write {
        offset,
        width: 4,
        value: u64::from(value),
    }
}

/// The accesses of the AML's `_OST`: select the slot, write the event, write the status.
fn ost(slot: u32, event: u32, status: u32) -> Vec<Op> {
    vec![
        write(SELECTOR, slot),
        write(OST_EVENT, event),
        write(OST_STATUS, status),
    ]
}

/// One step: a single operation, or the accesses one of the AML's methods makes for a slot:
/// an `_OST` (mostly the answers Linux gives, sometimes any), a write of control bits (the
/// scan's clears, `_EJ0`) or a register read. Single random accesses almost never line up a
/// selector, an `_OST` event and a status, so without these a DIMM would hardly ever get past
/// `inserting`; they are still only register accesses, checked one by one.
fn step() -> impl Strategy<Value = Vec<Op>> {
    let failure = || prop::sample::select(vec![0x01, 0x80, 0x81, 0x82, 0x83]);
    let insertion = prop_oneof![3 => Just(OST_SUCCESS), 1 => failure()];
    let eject_request = prop_oneof![
        2 => Just(OST_EJECT_IN_PROGRESS),
        1 => Just(OST_SUCCESS),
        1 => failure(),
    ];
    prop_oneof![
        4 => op().prop_map(|op| vec![op]),
        2 => (slot(), insertion)
            .prop_map(|(slot, status)| ost(slot, OST_EVENT_DEVICE_CHECK, status)),
        2 => (slot(), eject_request)
            .prop_map(|(slot, status)| ost(slot, OST_EVENT_EJECT_REQUEST, status)),
        1 => (slot(), value(), value()).prop_map(|(slot, event, status)| ost(slot, event, status)),
        3 => (slot(), 0..16_u32)
            .prop_map(|(slot, control)| vec![write(SELECTOR, slot), write(CONTROL, control)]),
        1 => (slot(), 0..REGISTERS_LEN / 4).prop_map(|(slot, register)| {
            vec![
                write(SELECTOR, slot),
                Op::Read {
                    offset: register * 4,
                    width: 4,
                },
            ]
        }),
    ]
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

/// What one step must make the controller tell the host, besides the slots' new states.
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

/// The controller as docs/design.md specifies it, written as plainly as possible.
struct Model {
    slots: Vec<ModelSlot>,
    selected: u32,
    ost_event: u32,
    eject_fails: bool,
}

impl Model {
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

    /// Removable: a DIMM the guest accepted or failed, or one whose removal it never answered.
    fn request_removal(&mut self, slot: u32, expected: &mut Expected) -> Result<(), HotplugError> {
        let entry = self.slot_mut(slot).ok_or(HotplugError::NoSuchSlot(slot))?;
        let old = entry.state;
        if !matches!(
            old,
            SlotState::Added | SlotState::Failed | SlotState::Removing
        ) {
            return Err(HotplugError::NotRemovable { slot, state: old });
        }
        entry.state = SlotState::Removing;
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
        let status = u32::from(slot.dimm.is_some())
            | u32::from(slot.insert_pending) << 1
            | u32::from(slot.remove_pending) << 2;
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
            SELECTOR => self.selected = value,
            OST_EVENT => self.ost_event = value,
            OST_STATUS => self.ost(value, expected),
            CONTROL => self.control(value, expected),
            _ => {}
        }
    }

    /// An `_OST` moves a slot along the diagram; one for an empty or missing slot has nothing to
    /// report on. Any other is recorded (and reported) without changing the state.
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
        entry.last_ost = Some(ost);
        let (dimm, new) = (entry.dimm, entry.state);
        expected.event(selected, dimm, old, new, Some(ost));
    }

    /// Clears come before the eject; an eject is passed to the host only for a DIMM being
    /// removed, and empties the slot (keeping its last `_OST`) only if the host's unmap worked.
    fn control(&mut self, value: u32, expected: &mut Expected) {
        let (selected, eject_fails) = (self.selected, self.eject_fails);
        let Some(entry) = self.slot_mut(selected) else {
            return;
        };
        if value & CLEAR_INSERT != 0 {
            entry.insert_pending = false;
        }
        if value & CLEAR_REMOVE != 0 {
            entry.remove_pending = false;
        }
        if value & EJECT == 0 || entry.state != SlotState::Removing {
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

/// The host's unmap: logs every call, and fails while told to.
struct Unmapper {
    calls: Arc<Mutex<Vec<(u32, Dimm)>>>,
    fail: Arc<AtomicBool>,
}

impl EjectHandler for Unmapper {
    fn eject(&mut self, slot: u32, dimm: Dimm) -> Result<(), String> {
        lock(&self.calls).push((slot, dimm));
        if self.fail.load(Ordering::Relaxed) {
            return Err("unmap failed".to_string());
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

/// A log's contents. A test that panicked while holding a log's lock has already failed, so a
/// poisoned lock is just used.
fn lock<T>(log: &Mutex<Vec<T>>) -> MutexGuard<'_, Vec<T>> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Empties a log, returning what it held: what happened in the last operation.
fn take<T>(log: &Mutex<Vec<T>>) -> Vec<T> {
    std::mem::take(&mut *lock(log))
}

/// Runs `steps` against a controller with `slots` slots and against the model, comparing them
/// after each operation.
fn check(slots: u32, steps: &[Vec<Op>]) -> Result<(), TestCaseError> {
    let mut controller = MemoryHotplugController::new(slots, Arc::new(Condvar::new()));
    let ejects = Arc::new(Mutex::new(Vec::new()));
    let fail = Arc::new(AtomicBool::new(false));
    controller.set_eject_handler(Box::new(Unmapper {
        calls: ejects.clone(),
        fail: fail.clone(),
    }));
    let events = Arc::new(Mutex::new(Vec::new()));
    controller.set_listener(Box::new(EventLog(events.clone())));
    let mut model = Model::new(slots);
    // Every slot, two that do not exist, and the last possible one.
    let probed: Vec<u32> = (0..slots + 2).chain([u32::MAX]).collect();

    for (index, op) in steps
        .iter()
        .enumerate()
        .flat_map(|(index, step)| step.iter().map(move |op| (index, op)))
    {
        let at = format!("step {index}: {op:?}");
        let before: Vec<SlotView> = (0..slots).filter_map(|i| controller.slot(i)).collect();
        let mut expected = Expected::default();
        match *op {
            Op::Read { offset, width } => {
                let mut data = vec![0; width];
                controller.mmio_read(REGISTERS_BASE, offset, &mut data);
                prop_assert_eq!(data, model.read(offset, width), "{}", at);
            }
            Op::Write {
                offset,
                width,
                value,
            } => {
                let bytes = &value.to_le_bytes()[..width];
                controller.mmio_write(REGISTERS_BASE, offset, bytes);
                model.write(offset, bytes, &mut expected);
            }
            Op::Plug { slot, dimm } => {
                let result = controller.plug(slot, dimm);
                prop_assert_eq!(result, model.plug(slot, dimm, &mut expected), "{}", at);
            }
            Op::RequestRemoval { slot } => {
                let result = controller.request_removal(slot);
                prop_assert_eq!(result, model.request_removal(slot, &mut expected), "{}", at);
            }
            Op::EjectFails(fails) => {
                fail.store(fails, Ordering::Relaxed);
                model.eject_fails = fails;
            }
        }

        let ejected = take(&ejects);
        // The safety property, from what the host saw before the operation rather than from
        // the model: only a DIMM the host asked to remove (and still in its slot) is unmapped.
        for &(slot, dimm) in &ejected {
            let was = usize::try_from(slot).ok().and_then(|i| before.get(i));
            prop_assert!(
                was.is_some_and(|v| v.state == SlotState::Removing && v.dimm == Some(dimm)),
                "{} made the host unmap slot {} ({:?}), which was {:?}",
                at,
                slot,
                dimm,
                was
            );
        }
        prop_assert_eq!(ejected, expected.ejects, "{}", at);
        prop_assert_eq!(take(&events), expected.events, "{}", at);
        prop_assert_eq!(controller.slot_count(), slots);
        for &i in &probed {
            prop_assert_eq!(controller.slot(i), model.view(i), "{}, slot {}", at, i);
        }
        prop_assert_eq!(controller.free_slot(), model.free_slot(), "{}", at);
    }
    Ok(())
}

proptest! {
    // A failure prints its shrunk sequence, which belongs in a unit test beside the controller;
    // a regressions file next to this one would only be left behind in the work tree.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn controller_follows_the_model(
        slots in prop_oneof![1 => Just(0), 4 => 1..=MAX_SLOTS],
        steps in proptest::collection::vec(step(), 0..=MAX_STEPS),
    ) {
        check(slots, &steps)?;
    }
}
