//! One channel: its ring of newest events and the polls waiting on it.
//!
//! Owns the per-channel buffer logic: appending with overflow, dropping the
//! oldest (age, memory), and reading what follows a cursor, with the "missed"
//! signal when events after the cursor were dropped before anyone read them.
//! Pure data: no I/O, no locking of its own; it lives inside `hub::State` and
//! is only touched with the state lock held.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::hub::Waiter;
use crate::hub::event::Event;

/// Identifies one waiting poll in `Channel::waiters`.
pub type WaiterId = u64;

#[derive(Debug)]
pub struct Channel {
    /// Distinguishes this channel from an earlier one of the same name that was
    /// deleted; a waiter that finds another generation knows its channel is gone.
    pub generation: u64,
    /// Stored events, oldest first, ids strictly increasing.
    events: VecDeque<Arc<Event>>,
    /// Highest id dropped from this channel by overflow, age or memory limit
    /// (0 if none). A cursor below it has missed something.
    dropped_through: u64,
    /// Polls and streams waiting on this channel.
    pub(super) waiters: HashMap<WaiterId, Arc<Waiter>>,
}

/// What a cursor gets from one channel.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<Arc<Event>>,
    /// Events after the cursor were dropped before they could be read.
    pub missed: bool,
    /// The highest id dropped from the channels read (0 if none): a cursor
    /// at or above it has missed nothing.
    pub dropped_through: u64,
}

impl Channel {
    /// A channel with nothing stored yet; `dropped_through` carries over what an
    /// earlier channel of this name lost by age or memory limit (0 if nothing).
    pub fn new(generation: u64, dropped_through: u64) -> Channel {
        Channel {
            generation,
            events: VecDeque::new(),
            dropped_through,
            waiters: HashMap::new(),
        }
    }

    /// Highest id dropped from this channel before anyone could read it (0 if none).
    pub fn dropped_through(&self) -> u64 {
        self.dropped_through
    }

    /// Appends `event` (whose id must exceed every stored id) and returns the
    /// events pushed out to keep at most `capacity`.
    pub fn push(&mut self, event: Arc<Event>, capacity: usize) -> Vec<Arc<Event>> {
        debug_assert!(self.events.back().is_none_or(|last| last.id < event.id));
        self.events.push_back(event);
        let mut dropped = Vec::new();
        while self.events.len() > capacity {
            dropped.extend(self.drop_oldest());
        }
        dropped
    }

    /// Remembers that events through `id` were dropped elsewhere (the shared
    /// store) before this channel held them.
    pub fn raise_dropped_through(&mut self, id: u64) {
        self.dropped_through = self.dropped_through.max(id);
    }

    /// Drops and returns the oldest event, remembering its id as missed.
    pub fn drop_oldest(&mut self) -> Option<Arc<Event>> {
        let event = self.events.pop_front()?;
        self.dropped_through = event.id;
        Some(event)
    }

    /// The oldest stored event.
    pub fn oldest(&self) -> Option<&Arc<Event>> {
        self.events.front()
    }

    /// The newest stored event.
    pub fn newest(&self) -> Option<&Arc<Event>> {
        self.events.back()
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Holds nothing and nobody waits: the hub removes such a channel.
    pub fn is_idle(&self) -> bool {
        self.events.is_empty() && self.waiters.is_empty()
    }

    /// Up to `limit` events with id greater than `cursor`, oldest first.
    pub fn read_after(&self, cursor: u64, limit: usize) -> Batch {
        let start = self.events.partition_point(|e| e.id <= cursor);
        Batch {
            events: self.events.range(start..).take(limit).cloned().collect(),
            missed: self.dropped_through > cursor,
            dropped_through: self.dropped_through,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Instant, SystemTime};

    fn ev(id: u64) -> Arc<Event> {
        Event::new(id, "c", SystemTime::now(), Instant::now(), "null")
    }

    fn ids(batch: &Batch) -> Vec<u64> {
        batch.events.iter().map(|e| e.id).collect()
    }

    /// A cursor gets the events after it, oldest first, never more than the limit.
    #[test]
    fn reads_after_the_cursor_in_order_up_to_the_limit() {
        let mut ch = Channel::new(1, 0);
        for id in [10, 20, 30, 40] {
            assert!(ch.push(ev(id), 10).is_empty());
        }
        assert_eq!(ids(&ch.read_after(0, 100)), [10, 20, 30, 40]);
        assert_eq!(ids(&ch.read_after(20, 100)), [30, 40]);
        assert_eq!(ids(&ch.read_after(25, 1)), [30]);
        assert!(ch.read_after(40, 100).events.is_empty());
        assert!(!ch.read_after(0, 100).missed);
    }

    /// A full ring drops its oldest event, and only cursors that had not read it are told they missed it.
    #[test]
    fn overflow_drops_the_oldest_and_marks_older_cursors_missed() {
        let mut ch = Channel::new(1, 0);
        for id in 1..=3 {
            ch.push(ev(id), 3);
        }
        let dropped = ch.push(ev(4), 3);
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].id, 1);
        assert_eq!(ids(&ch.read_after(0, 10)), [2, 3, 4]);
        assert!(ch.read_after(0, 10).missed, "event 1 was never read");
        assert!(!ch.read_after(1, 10).missed, "the reader had event 1");
        assert_eq!(ch.oldest().unwrap().id, 2);
        assert_eq!(ch.newest().unwrap().id, 4);
    }

    /// A channel whose last event is dropped is idle (removable) yet remembers the loss.
    #[test]
    fn a_channel_with_nothing_left_is_idle() {
        let mut ch = Channel::new(1, 0);
        assert!(ch.is_idle());
        ch.push(ev(1), 1);
        assert!(!ch.is_idle());
        ch.drop_oldest();
        assert!(ch.is_idle());
        assert!(ch.read_after(0, 1).missed);
    }
}
