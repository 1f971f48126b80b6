//! The events journal (`tidal_api::EventJournal`) under any sequence of publishes, new
//! subscriptions (from now on, or `since` any number) and reads and drops by any subscriber,
//! checked against what each subscriber must see: every event numbered one more than the last,
//! a `Lagged(n)` only for the `n` events that went by unseen (never zero), nothing ever seen
//! twice or out of order, nothing left once a read comes back empty, and `publish` counting the
//! subscribers there are.

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use tidal_api::{DimmState, EventJournal, HotplugEvent, Record, Subscription};

/// Enough subscribers to interleave, few enough to keep each input quick.
const MAX_SUBSCRIBERS: usize = 8;

/// A subscription and the number of the next event it must see.
struct Reader {
    subscription: Subscription,
    expected: u64,
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

fn run(input: &mut Unstructured) -> Result<()> {
    let journal = EventJournal::default();
    let mut readers: Vec<Reader> = Vec::new();
    // The number the next event gets.
    let mut next_seq = 1u64;
    while !input.is_empty() {
        match input.int_in_range(0..=4u8)? {
            0 => {
                // Bursts, so that readers fall behind the ring.
                for _ in 0..input.int_in_range(1..=300u16)? {
                    let reached = journal.publish(event());
                    assert_eq!(reached, readers.len(), "publish counted {reached}");
                    next_seq += 1;
                }
            }
            1 if readers.len() < MAX_SUBSCRIBERS => {
                let since = if input.arbitrary()? {
                    Some(input.int_in_range(0..=next_seq + 10)?)
                } else {
                    None
                };
                let expected = since.map_or(next_seq, |since| (since + 1).min(next_seq));
                readers.push(Reader {
                    subscription: journal.subscribe(since),
                    expected,
                });
            }
            2 | 3 if !readers.is_empty() => {
                let index = input.choose_index(readers.len())?;
                let reads = input.int_in_range(1..=300u16)?;
                read(&mut readers[index], reads, next_seq);
            }
            4 if !readers.is_empty() => {
                let index = input.choose_index(readers.len())?;
                readers.swap_remove(index);
            }
            _ => {}
        }
    }
    for reader in &mut readers {
        read(reader, u16::MAX, next_seq);
        assert_eq!(reader.expected, next_seq, "a reader did not catch up");
    }
    Ok(())
}

/// Up to `reads` records of `reader`, each checked.
fn read(reader: &mut Reader, reads: u16, next_seq: u64) {
    for _ in 0..reads {
        match reader.subscription.try_next() {
            Some(Record::Event(event)) => {
                assert_eq!(event.seq, reader.expected, "event out of order");
                reader.expected += 1;
            }
            Some(Record::Lagged(missed)) => {
                assert!(missed > 0, "a lagged record of nothing");
                reader.expected += missed;
                assert!(reader.expected <= next_seq, "lagged past the newest event");
            }
            None => {
                assert_eq!(reader.expected, next_seq, "a read came back empty too early");
                return;
            }
        }
    }
}

fn event() -> HotplugEvent {
    HotplugEvent {
        seq: 0,
        id: "dimm0".to_owned(),
        slot: 0,
        node: 0,
        base: 1 << 32,
        size: 128 << 20,
        old_state: DimmState::Inserting,
        new_state: DimmState::Added,
        ost: None,
        timestamp_us: 0,
    }
}
