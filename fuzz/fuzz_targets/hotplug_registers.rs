//! The memory-hotplug controller and the GED under arbitrary guest register accesses (any
//! offset, width and value, and the sequences the DSDT's methods make) interleaved with the
//! host's adds, plugs, removals, notifications and failing unmaps. After every access both
//! devices are compared with their models in `tidal_devices::model`, the same ones the property
//! test `devices/tests/controller_model.rs` uses: every read, every event and eject the
//! controller reports, every slot, the GED's events and its interrupt.
//!
//! The host is played here as the VMM plays it (vmm/src/hotplug.rs): a DIMM's range comes from
//! the VMM's own allocator of the hotplug region (`tidal_vmm::memory::dimm_space::DimmSpace`) and goes
//! into the memory map before the plug; an eject takes it out of the map and gives it back to the
//! allocator. After every step the map holds exactly the DIMMs in the slots, none overlapping,
//! all inside the region; the allocator refuses a DIMM only when the map has no gap for it,
//! never hands out a range in use and takes back every ejected DIMM; at the end, with every
//! DIMM gone, it gives out the whole region again.
//!
//! Not covered: the rest of the VMM's `MemoryHotplug` (KVM slots and the guest memory map)
//! needs /dev/kvm, so it is not fuzzed; the controller, the GED and the allocator are, with
//! the rest of the host's part played by this file.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use tidal_acpi::memory_hotplug_layout::REGISTERS_LEN;
use tidal_acpi::{GED_MEMORY_HOTPLUG, GED_POWER_BUTTON};
use tidal_devices::memory_hotplug::{
    Dimm, OST_EJECT_IN_PROGRESS, OST_EVENT_DEVICE_CHECK, OST_EVENT_EJECT_REQUEST, OST_SUCCESS,
};
use tidal_devices::model::reg::{
    CLEAR_INSERT, CLEAR_REMOVE, CONTROL, EJECT, INSERT_PENDING, OST_EVENT, OST_STATUS,
    REMOVE_PENDING, SELECTOR, STATUS,
};
use tidal_devices::model::{Applied, Harness, Op};
use tidal_vmm::layout::{HOTPLUG_ALIGNMENT, MEMORY_BLOCK_SIZE, MMIO_HOLE_END};
use tidal_vmm::memory::dimm_space::DimmSpace;

/// The most DIMM slots a VM has (`--memory slots=`).
const MAX_SLOTS: u32 = tidal_acpi::MAX_MEMORY_SLOTS;
/// Small regions fill up, so the allocator's refusals are reached too.
const MAX_REGION_BLOCKS: u64 = 64;

fuzz_target!(|data: &[u8]| {
    let mut input = Unstructured::new(data);
    // Running out of input just ends the sequence.
    let _ = run(&mut input);
});

fn run(input: &mut Unstructured) -> Result<()> {
    let slots = match input.arbitrary::<u8>()? {
        // Now and then the most slots there can be; mostly few, so that each is hit often.
        250.. => MAX_SLOTS,
        n => u32::from(n % 9),
    };
    let region_blocks = input.int_in_range(1..=MAX_REGION_BLOCKS)?;
    let region_base = MMIO_HOLE_END + HOTPLUG_ALIGNMENT * u64::from(input.int_in_range(0..=3_u8)?);
    let mut machine = Machine::new(slots, region_base, region_blocks * MEMORY_BLOCK_SIZE);
    while !input.is_empty() {
        let step = Step::decode(input, slots)?;
        machine.run(step);
        machine.check();
    }
    machine.finish();
    Ok(())
}

/// One step: a guest access, a sequence of the DSDT's, or something the host does.
#[derive(Debug)]
enum Step {
    /// Any access to the controller's or the GED's registers.
    Access(Op),
    /// The GED's `_EVT`: read the events; on a memory-hotplug event, the controller's scan.
    Event,
    /// `MSCN`: for every slot, clear the pending bits the guest is told about.
    Scan,
    /// `MOST`: a slot's `_OST`.
    Ost { slot: u32, event: u32, status: u32 },
    /// `MEJ0`: a slot's `_EJ0`.
    Eject { slot: u32 },
    /// `MSTA`, `MCRS`, `MPXM`: what the guest reads of a slot.
    Describe { slot: u32 },
    /// The API's add: a free slot, memory from the allocator, the plug, the GED.
    Add { blocks: u64, node: u32 },
    /// A plug into a slot the host picked (the VMM always picks a free one).
    PlugInto { slot: u32, blocks: u64, node: u32 },
    /// The API's remove: a removal request and the GED.
    Remove { slot: u32 },
    /// The host's unmap fails from now on, or works again.
    EjectFails(bool),
    /// The host raises GED events (the power button, or any bits).
    Notify(u32),
}

impl Step {
    fn decode(input: &mut Unstructured, slots: u32) -> Result<Step> {
        let step = match input.int_in_range(0..=15_u8)? {
            0 | 1 => Step::Access(Op::Read {
                offset: offset(input)?,
                width: width(input)?,
            }),
            2 | 3 => Step::Access(Op::Write {
                offset: offset(input)?,
                width: width(input)?,
                value: value(input)?,
            }),
            4 => Step::Access(Op::GedRead {
                offset: input.int_in_range(0..=8)?,
                width: width(input)?,
            }),
            5 => Step::Access(Op::GedWrite {
                offset: input.int_in_range(0..=8)?,
                width: width(input)?,
                value: value(input)?,
            }),
            6 => Step::Event,
            7 => Step::Scan,
            8 => {
                let slot = slot(input, slots)?;
                let any_event = input.arbitrary()?;
                let event =
                    *input.choose(&[OST_EVENT_DEVICE_CHECK, OST_EVENT_EJECT_REQUEST, any_event])?;
                // Linux's answers, and anything.
                let any_status = input.arbitrary()?;
                let status = *input.choose(&[
                    OST_SUCCESS,
                    OST_EJECT_IN_PROGRESS,
                    0x01,
                    0x80,
                    0x81,
                    0x82,
                    0x83,
                    any_status,
                ])?;
                Step::Ost {
                    slot,
                    event,
                    status,
                }
            }
            9 => Step::Eject {
                slot: slot(input, slots)?,
            },
            10 => Step::Describe {
                slot: slot(input, slots)?,
            },
            11 => Step::Add {
                blocks: input.int_in_range(1..=MAX_REGION_BLOCKS + 1)?,
                node: input.arbitrary()?,
            },
            12 => Step::PlugInto {
                slot: slot(input, slots)?,
                blocks: input.int_in_range(1..=MAX_REGION_BLOCKS + 1)?,
                node: input.arbitrary()?,
            },
            13 => Step::Remove {
                slot: slot(input, slots)?,
            },
            14 => Step::EjectFails(input.arbitrary()?),
            _ => {
                let any = input.arbitrary()?;
                Step::Notify(*input.choose(&[GED_POWER_BUTTON, any])?)
            }
        };
        Ok(step)
    }
}

/// Mostly a register, sometimes just past the block or misaligned, sometimes anything.
fn offset(input: &mut Unstructured) -> Result<u64> {
    Ok(match input.int_in_range(0..=7_u8)? {
        0..=5 => 4 * input.int_in_range(0..=REGISTERS_LEN / 4 - 1)?,
        6 => input.int_in_range(0..=REGISTERS_LEN + 8)?,
        _ => input.arbitrary()?,
    })
}

/// Mostly the one valid width, else any a vCPU can issue (and none).
fn width(input: &mut Unstructured) -> Result<usize> {
    Ok(match input.int_in_range(0..=3_u8)? {
        0..=2 => 4,
        _ => input.int_in_range(0..=8)?,
    })
}

/// Small values (selectors, control bits) or anything.
fn value(input: &mut Unstructured) -> Result<u64> {
    Ok(match input.int_in_range(0..=2_u8)? {
        0 | 1 => input.int_in_range(0..=15)?,
        _ => input.arbitrary()?,
    })
}

/// Mostly a slot that exists, sometimes one just past the last, sometimes any.
fn slot(input: &mut Unstructured, slots: u32) -> Result<u32> {
    Ok(match input.int_in_range(0..=7_u8)? {
        0 => input.arbitrary()?,
        1 => slots.saturating_add(input.int_in_range(0..=2)?),
        _ => input.int_in_range(0..=slots.saturating_sub(1))?,
    })
}

/// A valid register write, as the AML makes them.
fn write(offset: u64, value: u32) -> Op {
    Op::Write {
        offset,
        width: 4,
        value: u64::from(value),
    }
}

/// A valid register read.
fn read(offset: u64) -> Op {
    Op::Read { offset, width: 4 }
}

/// The devices, the host's allocator over the hotplug region and its memory map.
struct Machine {
    devices: Harness,
    slots: u32,
    region_base: u64,
    region_size: u64,
    allocator: DimmSpace,
    /// The DIMMs in the guest memory map: base to (slot, size).
    map: BTreeMap<u64, (u32, u64)>,
}

impl Machine {
    fn new(slots: u32, region_base: u64, region_size: u64) -> Self {
        Self {
            devices: Harness::new(slots).expect("an eventfd for the GED"),
            slots,
            region_base,
            region_size,
            allocator: DimmSpace::new(region_base, region_size)
                .expect("an allocator over the hotplug region"),
            map: BTreeMap::new(),
        }
    }

    /// Applies `op` to the devices and their models; what an eject unmapped leaves the map.
    fn apply(&mut self, op: Op) -> Applied {
        let applied = self
            .devices
            .apply(&op)
            .unwrap_or_else(|mismatch| panic!("a device disagrees with its model: {mismatch}"));
        for &(slot, dimm) in &applied.unmapped {
            let entry = self.map.remove(&dimm.base);
            assert_eq!(
                entry,
                Some((slot, dimm.size)),
                "slot {slot} ejected {dimm:?}, which is not what the host mapped there"
            );
            self.free(dimm.base, dimm.size);
        }
        applied
    }

    /// A 4-byte register read, as a number.
    fn read(&mut self, offset: u64) -> u32 {
        let bytes = self.apply(read(offset)).read;
        u32::from_le_bytes(bytes.try_into().expect("a 4-byte read"))
    }

    fn run(&mut self, step: Step) {
        match step {
            Step::Access(op) => {
                self.apply(op);
            }
            Step::Event => {
                let events = self.apply(Op::GedRead {
                    offset: 0,
                    width: 4,
                });
                let events = u32::from_le_bytes(events.read.try_into().expect("a 4-byte read"));
                if events & GED_MEMORY_HOTPLUG != 0 {
                    self.scan();
                }
            }
            Step::Scan => self.scan(),
            Step::Ost {
                slot,
                event,
                status,
            } => {
                self.apply(write(SELECTOR, slot));
                self.apply(write(OST_EVENT, event));
                self.apply(write(OST_STATUS, status));
            }
            Step::Eject { slot } => {
                self.apply(write(SELECTOR, slot));
                self.apply(write(CONTROL, EJECT));
            }
            Step::Describe { slot } => {
                self.apply(write(SELECTOR, slot));
                for register in 0..REGISTERS_LEN / 4 {
                    self.apply(read(register * 4));
                }
            }
            Step::Add { blocks, node } => self.add(blocks * MEMORY_BLOCK_SIZE, node),
            Step::PlugInto { slot, blocks, node } => {
                self.plug_into(slot, blocks * MEMORY_BLOCK_SIZE, node);
            }
            Step::Remove { slot } => {
                if self.apply(Op::RequestRemoval { slot }).result == Some(Ok(())) {
                    self.apply(Op::GedNotify(GED_MEMORY_HOTPLUG));
                }
            }
            Step::EjectFails(fails) => {
                self.apply(Op::EjectFails(fails));
            }
            Step::Notify(events) => {
                self.apply(Op::GedNotify(events));
            }
        }
    }

    /// `MSCN`: each slot's insert-pending bit, then its remove-pending bit, cleared once the
    /// guest was told.
    fn scan(&mut self) {
        for slot in 0..self.slots {
            self.apply(write(SELECTOR, slot));
            if self.read(STATUS) & INSERT_PENDING != 0 {
                self.apply(write(CONTROL, CLEAR_INSERT));
            }
            if self.read(STATUS) & REMOVE_PENDING != 0 {
                self.apply(write(CONTROL, CLEAR_REMOVE));
            }
        }
    }

    /// The API's add: the lowest free slot, memory for it, the plug, the interrupt.
    fn add(&mut self, size: u64, node: u32) {
        let Some(slot) = self.devices.controller().free_slot() else {
            return;
        };
        let Some(base) = self.map_dimm(slot, size) else {
            return;
        };
        let dimm = Dimm { base, size, node };
        let plugged = self.apply(Op::Plug { slot, dimm }).result;
        assert_eq!(
            plugged,
            Some(Ok(())),
            "the free slot {slot} refused {dimm:?}"
        );
        self.apply(Op::GedNotify(GED_MEMORY_HOTPLUG));
    }

    /// A plug into any slot; a refused one gives the memory back.
    fn plug_into(&mut self, slot: u32, size: u64, node: u32) {
        let Some(base) = self.map_dimm(slot, size) else {
            return;
        };
        let dimm = Dimm { base, size, node };
        if self.apply(Op::Plug { slot, dimm }).result != Some(Ok(())) {
            self.map.remove(&base);
            self.free(base, size);
        }
    }

    /// Allocates `size` bytes of the region for `slot` and puts them in the map. The allocator
    /// must find room exactly when the map has a gap for it.
    fn map_dimm(&mut self, slot: u32, size: u64) -> Option<u64> {
        let room = self.has_gap(size);
        let Some(base) = self.allocator.allocate(size) else {
            assert!(
                !room,
                "the allocator refused {size:#x} bytes though the map has room"
            );
            return None;
        };
        let end = base + size - 1;
        let range = base..=end;
        assert!(
            room,
            "the allocator gave out {range:?}, which the map has no room for"
        );
        assert_eq!(
            base % MEMORY_BLOCK_SIZE,
            0,
            "{range:?} is not block aligned"
        );
        assert!(
            base >= self.region_base && end < self.region_base + self.region_size,
            "{range:?} is outside the region"
        );
        if let Some((&other, &(other_slot, other_size))) = self.map.range(..=end).next_back() {
            assert!(
                other + other_size <= base,
                "{range:?} overlaps slot {other_slot}'s DIMM at {other:#x}"
            );
        }
        self.map.insert(base, (slot, size));
        Some(base)
    }

    /// Whether the region has `size` free bytes in one piece. Every base and size is a multiple
    /// of the block size, so every gap is aligned.
    fn has_gap(&self, size: u64) -> bool {
        let mut next = self.region_base;
        for (&base, &(_, len)) in &self.map {
            if base - next >= size {
                return true;
            }
            next = base + len;
        }
        self.region_base + self.region_size - next >= size
    }

    fn free(&mut self, base: u64, size: u64) {
        if let Err(error) = self.allocator.free(base, size) {
            panic!("the allocator did not take back {base:#x}+{size:#x}: {error}");
        }
    }

    /// Every slot agrees with the model, and the map holds exactly the DIMMs in the slots.
    fn check(&self) {
        if let Err(mismatch) = self.devices.check_all() {
            panic!("a device disagrees with its model: {mismatch}");
        }
        let controller = self.devices.controller();
        let in_slots: BTreeMap<u64, (u32, u64)> = (0..controller.slot_count())
            .filter_map(|slot| {
                let dimm = controller.slot(slot)?.dimm?;
                Some((dimm.base, (slot, dimm.size)))
            })
            .collect();
        assert_eq!(in_slots, self.map, "the slots and the memory map disagree");
    }

    /// Takes every DIMM's memory back: then the whole region is free again, in one piece.
    fn finish(mut self) {
        for (base, (_, size)) in std::mem::take(&mut self.map) {
            self.free(base, size);
        }
        assert_eq!(
            self.allocator.allocate(self.region_size),
            Some(self.region_base),
            "the emptied region is not free in one piece"
        );
    }
}
