//! The hotplug events as the `events` stream serves them: numbered in order, the latest
//! [`HISTORY`] kept for clients that reconnect (`?since=N`), and handed to every subscriber
//! through one bounded ring ([`QUEUE`]). A subscriber that falls further behind than the ring
//! does not hold memory or the publisher: it is told how many events it missed
//! ([`Record::Lagged`]) and goes on from the oldest one still held.
//!
//! The VMM publishes on whichever of its threads made the change (a vCPU thread, with the
//! hotplug controller locked), so [`EventJournal::publish`] never waits for a reader.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use tokio::sync::broadcast;

use crate::types::HotplugEvent;

/// How many of the latest events a reconnecting client can have again.
pub const HISTORY: usize = 256;

/// How many events a subscriber may fall behind before it misses some.
pub const QUEUE: usize = 256;

/// What a subscriber reads next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Event(HotplugEvent),
    /// This many events went by that the subscriber will not see.
    Lagged(u64),
}

/// Every hotplug event so far, as far as the history reaches, and the subscribers to come.
#[derive(Debug)]
pub struct EventJournal {
    inner: Mutex<Journal>,
}

#[derive(Debug)]
struct Journal {
    /// The number the next event gets; the first is 1.
    next_seq: u64,
    history: VecDeque<HotplugEvent>,
    live: broadcast::Sender<HotplugEvent>,
}

impl Default for EventJournal {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Journal {
                next_seq: 1,
                history: VecDeque::with_capacity(HISTORY),
                live: broadcast::channel(QUEUE).0,
            }),
        }
    }
}

impl EventJournal {
    /// Numbers `event` (its `seq` is overwritten), keeps it in the history and hands it to
    /// every subscriber; returns how many there are. Never blocks on a reader.
    pub fn publish(&self, mut event: HotplugEvent) -> usize {
        let mut journal = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        event.seq = journal.next_seq;
        journal.next_seq += 1;
        if journal.history.len() == HISTORY {
            journal.history.pop_front();
        }
        journal.history.push_back(event.clone());
        // An error only means nobody subscribes now.
        journal.live.send(event).unwrap_or(0)
    }

    /// A subscription to every event from now on; with `since`, first every event numbered
    /// above it that the history still holds (and, if it no longer holds them all, how many
    /// are gone). Under the journal's lock, so nothing is missed or seen twice between the
    /// history and what follows.
    pub fn subscribe(&self, since: Option<u64>) -> Subscription {
        let journal = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut backlog = VecDeque::new();
        if let Some(since) = since {
            let oldest = journal
                .history
                .front()
                .map_or(journal.next_seq, |event| event.seq);
            let gone = oldest.saturating_sub(since.saturating_add(1));
            if gone > 0 {
                backlog.push_back(Record::Lagged(gone));
            }
            backlog.extend(
                journal
                    .history
                    .iter()
                    .filter(|event| event.seq > since)
                    .cloned()
                    .map(Record::Event),
            );
        }
        Subscription {
            backlog,
            live: journal.live.subscribe(),
        }
    }
}

/// One subscriber's view of the journal.
#[derive(Debug)]
pub struct Subscription {
    backlog: VecDeque<Record>,
    live: broadcast::Receiver<HotplugEvent>,
}

impl Subscription {
    /// The next record; waits for one. `None` once the journal is gone.
    pub async fn next(&mut self) -> Option<Record> {
        if let Some(record) = self.backlog.pop_front() {
            return Some(record);
        }
        match self.live.recv().await {
            Ok(event) => Some(Record::Event(event)),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(Record::Lagged(missed)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next record if one is there already.
    pub fn try_next(&mut self) -> Option<Record> {
        if let Some(record) = self.backlog.pop_front() {
            return Some(record);
        }
        match self.live.try_recv() {
            Ok(event) => Some(Record::Event(event)),
            Err(broadcast::error::TryRecvError::Lagged(missed)) => Some(Record::Lagged(missed)),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::DimmState;

    fn event(slot: u32) -> HotplugEvent {
        HotplugEvent {
            seq: 0,
            id: format!("dimm{slot}"),
            slot,
            node: 0,
            base: 1 << 32,
            size: 128 << 20,
            old_state: DimmState::Empty,
            new_state: DimmState::Inserting,
            ost: None,
            timestamp_us: 0,
        }
    }

    fn drain(subscription: &mut Subscription) -> Vec<Record> {
        std::iter::from_fn(|| subscription.try_next()).collect()
    }

    fn seqs(records: &[Record]) -> Vec<u64> {
        records
            .iter()
            .filter_map(|record| match record {
                Record::Event(event) => Some(event.seq),
                Record::Lagged(_) => None,
            })
            .collect()
    }

    #[test]
    fn events_are_numbered_from_one_and_replayed_after_since() {
        let journal = EventJournal::default();
        let mut live = journal.subscribe(None);
        for slot in 0..5 {
            journal.publish(event(slot));
        }
        assert_eq!(seqs(&drain(&mut live)), [1, 2, 3, 4, 5]);
        let mut again = journal.subscribe(Some(3));
        journal.publish(event(5));
        assert_eq!(seqs(&drain(&mut again)), [4, 5, 6]);
        assert_eq!(drain(&mut journal.subscribe(Some(6))), []);
    }

    #[test]
    fn a_subscriber_that_falls_behind_is_told_how_much_it_missed() {
        let journal = EventJournal::default();
        let mut slow = journal.subscribe(None);
        let published = QUEUE as u64 + 10;
        for slot in 0..published {
            journal.publish(event(u32::try_from(slot % 8).unwrap()));
        }
        let records = drain(&mut slow);
        assert_eq!(records.first(), Some(&Record::Lagged(10)));
        assert_eq!(seqs(&records), (11..=published).collect::<Vec<_>>());
    }

    #[test]
    fn a_since_older_than_the_history_says_how_many_are_gone() {
        let journal = EventJournal::default();
        let published = HISTORY as u64 + 7;
        for _ in 0..published {
            journal.publish(event(0));
        }
        let records = drain(&mut journal.subscribe(Some(2)));
        assert_eq!(records.first(), Some(&Record::Lagged(5)));
        assert_eq!(seqs(&records), (8..=published).collect::<Vec<_>>());
        assert_eq!(records.len(), HISTORY + 1);
    }
}
