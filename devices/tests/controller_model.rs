//! The memory-hotplug controller against a model of docs/design.md ("Memory-hotplug registers"
//! and "A DIMM's life"), fed arbitrary sequences of guest register accesses interleaved with the
//! host's plugs, removal requests and failing unmaps.
//!
//! The model and the comparison are `tidal_devices::model` (the `model` feature), shared with the
//! fuzz target `fuzz/fuzz_targets/hotplug_registers.rs`; this file makes up the sequences.
//!
//! Every register access is guest input, so the unit tests' hand-picked hostile accesses are not
//! enough: here proptest makes up the sequences, and after every step the controller must agree
//! with the model on every slot, on the events it reports and on the ejects it asks the host for.
//! The property that matters most is checked on its own as well: a guest can never make the host
//! unmap a DIMM the host did not ask to remove.

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tidal_acpi::memory_hotplug_layout::REGISTERS_LEN;
use tidal_devices::memory_hotplug::{
    Dimm, OST_EJECT_IN_PROGRESS, OST_EVENT_DEVICE_CHECK, OST_EVENT_EJECT_REQUEST, OST_SUCCESS,
};
use tidal_devices::model::reg::{CONTROL, OST_EVENT, OST_STATUS, SELECTOR};
use tidal_devices::model::{Harness, Op};

/// More slots would only make a plug and later accesses to the same slot rarer.
const MAX_SLOTS: u32 = 3;
/// Long enough for several DIMMs to go through a whole life, and for selectors and `_OST`
/// writes from one life to be left over into the next. A step is at most three accesses.
const MAX_STEPS: usize = 200;

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

/// Any single operation, host ones often enough for DIMMs to come and go in every sequence,
/// and now and then the GED: the host's notification and the guest's read of its events.
fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (offset(), width()).prop_map(|(offset, width)| Op::Read { offset, width }),
        6 => (offset(), width(), data())
            .prop_map(|(offset, width, value)| Op::Write { offset, width, value }),
        4 => (slot(), dimm()).prop_map(|(slot, dimm)| Op::Plug { slot, dimm }),
        4 => slot().prop_map(|slot| Op::RequestRemoval { slot }),
        1 => any::<bool>().prop_map(Op::EjectFails),
        1 => (0..8_u64, width()).prop_map(|(offset, width)| Op::GedRead { offset, width }),
        1 => (0..4_u32).prop_map(Op::GedNotify),
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

/// Runs `steps` against a controller with `slots` slots and against the model, comparing them
/// after each operation, and every slot after each step.
fn check(slots: u32, steps: &[Vec<Op>]) -> Result<(), TestCaseError> {
    let mut harness =
        Harness::new(slots).map_err(|e| TestCaseError::fail(format!("no eventfd: {e}")))?;
    for (index, step) in steps.iter().enumerate() {
        let failed = |mismatch| TestCaseError::fail(format!("step {index}: {mismatch}"));
        for op in step {
            harness.apply(op).map_err(failed)?;
        }
        harness.check_all().map_err(failed)?;
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
