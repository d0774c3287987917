//! The shared state: channels, stored events, waiting polls and counters.
//!
//! `Hub` is the one handle every thread holds (an `Arc` around a
//! `parking_lot::Mutex<State>`). It decides what a poll gets: an answer now,
//! or a `Ticket` to wait for channels X until T, and it does the waiting on a
//! per-poll condvar. It never touches a socket or tiny_http, and it never holds
//! the lock while notifying: publishers collect the condvars of the channels
//! they touched, release the lock, then wake exactly those waiters.
//!
//! Called from the dispatch thread (`begin_poll`, `delete`, `stats`), from
//! writer threads (`publish`) and from waiter threads (`wait`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};

use crate::channel::{Batch, Channel, WaiterId};
use crate::error::Error;
use crate::event::{Event, IdClock, wall_micros};
use crate::request::PollSpec;
use crate::stats::Stats;

/// The limits the hub enforces (from `Config`).
#[derive(Debug, Clone)]
pub struct HubLimits {
    pub buffer_events: usize,
    pub event_ttl: Option<Duration>,
    pub max_channels: usize,
    pub max_stored_bytes: usize,
    pub max_waiters: usize,
}

/// The handle. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    limits: HubLimits,
    started: Instant,
    counters: Counters,
}

/// Counters that only grow; atomics so that they need no lock.
#[derive(Default)]
struct Counters {
    events_published: AtomicU64,
    events_delivered: AtomicU64,
    events_dropped: AtomicU64,
    polls_timed_out: AtomicU64,
    polls_rejected: AtomicU64,
    accept_errors: AtomicU64,
    bodies_parked: AtomicU64,
}

/// Everything behind the lock.
struct State {
    /// Channels that hold events or have waiters. A channel with neither is
    /// removed at once, so polling unknown names leaves nothing behind.
    channels: HashMap<Arc<str>, Channel>,
    /// (id, channel) of stored events, oldest first, for `--event-ttl` and
    /// `--max-stored-bytes`. Entries of events that overflow or deletion already
    /// removed are skipped when met and compacted away when they pile up.
    order: VecDeque<(u64, Arc<str>)>,
    ids: IdClock,
    /// Events held over all channels, and the bytes they count.
    stored_events: usize,
    stored_bytes: usize,
    next_generation: u64,
    next_waiter_id: WaiterId,
    /// Polls holding a wait slot (registered, or being answered after a wait).
    waiters: usize,
    peak_waiters: usize,
    shutting_down: bool,
}

/// What a poll gets, before it becomes an HTTP answer.
#[derive(Debug)]
pub enum Answer {
    /// `200`: events after the cursor, ascending by id.
    Events {
        events: Vec<Arc<Event>>,
        missed: bool,
    },
    /// `204`: nothing new (timeout, short poll, or shutdown).
    Empty { missed: bool },
    /// `410`: the channel was deleted while the poll waited.
    Gone { channel: String },
}

/// The outcome of `begin_poll`.
pub enum PollStart {
    Now(Answer),
    Wait(Ticket),
}

/// A poll registered on its channels, holding one wait slot. Dropping it
/// unregisters the poll and frees the slot, whatever happened before.
pub struct Ticket {
    hub: Hub,
    id: WaiterId,
    channels: Vec<(Arc<str>, u64)>,
    cursor: u64,
    limit: usize,
    deadline: Instant,
    condvar: Arc<Condvar>,
}

impl Hub {
    pub fn new(limits: HubLimits) -> Hub {
        Hub {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    channels: HashMap::new(),
                    order: VecDeque::new(),
                    ids: IdClock::default(),
                    stored_events: 0,
                    stored_bytes: 0,
                    next_generation: 1,
                    next_waiter_id: 1,
                    waiters: 0,
                    peak_waiters: 0,
                    shutting_down: false,
                }),
                limits,
                started: Instant::now(),
                counters: Counters::default(),
            }),
        }
    }

    /// Stores one event; `data_json` is the published value as compact JSON.
    pub fn publish(&self, channel: &str, data_json: &str) -> Result<Arc<Event>, Error> {
        let limits = &self.shared.limits;
        let now = Instant::now();
        let at = SystemTime::now();
        let mut st = self.shared.state.lock();
        if st.shutting_down {
            return Err(shutting_down());
        }
        let mut dropped = st.expire(now, limits);
        let name = match st.channels.get_key_value(channel) {
            Some((name, _)) => name.clone(),
            None if st.channels.len() >= limits.max_channels => {
                return Err(too_many_channels(limits.max_channels));
            }
            None => Arc::from(channel),
        };
        let id = st
            .ids
            .next_id(wall_micros(at))
            .ok_or_else(|| Error::Internal("event ids are exhausted (2^53)".into()))?;
        let event = Event::new(id, channel, at, now, data_json);
        if !st.channels.contains_key(channel) {
            let generation = st.new_generation();
            st.channels.insert(name.clone(), Channel::new(generation));
        }
        let ch = st.channels.get_mut(channel).expect("inserted above");
        let overflow = ch.push(event.clone(), limits.buffer_events);
        let wake: Vec<Arc<Condvar>> = ch.waiters.values().cloned().collect();
        st.order.push_back((id, name));
        st.stored_events += 1;
        st.stored_bytes += event.stored_bytes();
        dropped += st.forget(&overflow);
        dropped += st.enforce_memory(limits);
        st.compact_order();
        drop(st);

        for condvar in wake {
            condvar.notify_one();
        }
        let counters = &self.shared.counters;
        counters.events_published.fetch_add(1, Relaxed);
        counters.events_dropped.fetch_add(dropped as u64, Relaxed);
        Ok(event)
    }

    /// Decides a poll: answer now, or register it to wait (taking a slot).
    pub fn begin_poll(&self, spec: &PollSpec) -> Result<PollStart, Error> {
        let limits = &self.shared.limits;
        let now = Instant::now();
        let mut st = self.shared.state.lock();
        if st.shutting_down {
            return Err(shutting_down());
        }
        let dropped = st.expire(now, limits);
        self.shared
            .counters
            .events_dropped
            .fetch_add(dropped as u64, Relaxed);

        // A cursor this server cannot have issued is answered with what is held.
        let future = spec.cursor > st.ids.horizon(wall_micros(SystemTime::now()));
        let cursor = if future { 0 } else { spec.cursor };
        let names: Vec<&str> = spec.channels.iter().map(String::as_str).collect();
        let batch = st.read(&names, cursor, spec.limit);
        let missed = batch.missed || future;
        if !batch.events.is_empty() {
            return Ok(PollStart::Now(Answer::Events {
                events: batch.events,
                missed,
            }));
        }
        if future || spec.timeout.is_zero() {
            return Ok(PollStart::Now(Answer::Empty { missed }));
        }
        if st.waiters >= limits.max_waiters {
            drop(st);
            self.shared.counters.polls_rejected.fetch_add(1, Relaxed);
            return Err(Error::Busy {
                message: format!(
                    "all {} wait slots are taken (--max-waiters); retry later",
                    limits.max_waiters
                ),
                retry_after_secs: 1 + fastrand::u32(0..4),
            });
        }
        let new_channels = names
            .iter()
            .filter(|n| !st.channels.contains_key(**n))
            .count();
        if st.channels.len() + new_channels > limits.max_channels {
            return Err(too_many_channels(limits.max_channels));
        }

        let id = st.next_waiter_id;
        st.next_waiter_id += 1;
        let condvar = Arc::new(Condvar::new());
        let mut channels = Vec::with_capacity(names.len());
        for name in names {
            let name: Arc<str> = match st.channels.get_key_value(name) {
                Some((key, _)) => key.clone(),
                None => {
                    let generation = st.new_generation();
                    let key: Arc<str> = Arc::from(name);
                    st.channels.insert(key.clone(), Channel::new(generation));
                    key
                }
            };
            let ch = st.channels.get_mut(&name).expect("present");
            ch.waiters.insert(id, condvar.clone());
            channels.push((name, ch.generation));
        }
        st.waiters += 1;
        st.peak_waiters = st.peak_waiters.max(st.waiters);
        let hold = spec.timeout + jitter(spec.timeout);
        Ok(PollStart::Wait(Ticket {
            hub: self.clone(),
            id,
            channels,
            cursor,
            limit: spec.limit,
            deadline: now + hold,
            condvar,
        }))
    }

    /// Blocks until the ticket's poll can be answered: events newer than its
    /// cursor, its deadline, deletion of one of its channels, or shutdown.
    /// Unregisters the poll from its channels; the slot stays taken until the
    /// ticket is dropped (after the answer is written).
    pub fn wait(&self, ticket: &Ticket) -> Answer {
        let limits = &self.shared.limits;
        let names: Vec<&str> = ticket.channels.iter().map(|(n, _)| &**n).collect();
        let mut st = self.shared.state.lock();
        let answer = loop {
            if st.shutting_down {
                break Answer::Empty { missed: false };
            }
            let deleted = ticket.channels.iter().find(|(name, generation)| {
                st.channels.get(name).map(|c| c.generation) != Some(*generation)
            });
            if let Some((name, _)) = deleted {
                break Answer::Gone {
                    channel: name.to_string(),
                };
            }
            let now = Instant::now();
            let dropped = st.expire(now, limits);
            self.shared
                .counters
                .events_dropped
                .fetch_add(dropped as u64, Relaxed);
            let batch = st.read(&names, ticket.cursor, ticket.limit);
            if !batch.events.is_empty() {
                break Answer::Events {
                    events: batch.events,
                    missed: batch.missed,
                };
            }
            if now >= ticket.deadline {
                self.shared.counters.polls_timed_out.fetch_add(1, Relaxed);
                break Answer::Empty {
                    missed: batch.missed,
                };
            }
            ticket.condvar.wait_until(&mut st, ticket.deadline);
        };
        st.unregister(ticket);
        answer
    }

    /// Drops a channel's events and answers its waiters `410`.
    pub fn delete(&self, channel: &str) {
        let mut st = self.shared.state.lock();
        let Some(ch) = st.channels.remove(channel) else {
            return;
        };
        st.stored_events -= ch.len();
        let mut bytes = 0;
        let mut ch = ch;
        while let Some(event) = ch.drop_oldest() {
            bytes += event.stored_bytes();
        }
        st.stored_bytes -= bytes;
        st.compact_order();
        drop(st);
        for condvar in ch.waiters.values() {
            condvar.notify_one();
        }
    }

    /// The `GET /channels/{name}` figures, or `None` for an unknown channel.
    pub fn channel_info(&self, channel: &str) -> Option<serde_json::Value> {
        let mut st = self.shared.state.lock();
        let dropped = st.expire(Instant::now(), &self.shared.limits);
        self.shared
            .counters
            .events_dropped
            .fetch_add(dropped as u64, Relaxed);
        let ch = st.channels.get(channel)?;
        Some(serde_json::json!({
            "channel": channel,
            "last_event_id": ch.newest().map(|e| e.id),
            "oldest_event_id": ch.oldest().map(|e| e.id),
            "events": ch.len(),
            "waiters": ch.waiters.len(),
        }))
    }

    /// Answers every waiting poll (`204`) and refuses new polls and publishes.
    pub fn shut_down(&self) {
        let mut st = self.shared.state.lock();
        st.shutting_down = true;
        let wake: Vec<Arc<Condvar>> = st
            .channels
            .values()
            .flat_map(|c| c.waiters.values().cloned())
            .collect();
        drop(st);
        for condvar in wake {
            condvar.notify_one();
        }
    }

    /// Counts events written to clients.
    pub fn count_delivered(&self, events: usize) {
        let counters = &self.shared.counters;
        counters.events_delivered.fetch_add(events as u64, Relaxed);
    }

    /// Counts a failed `accept` (the listener was restarted).
    pub fn count_accept_error(&self) {
        self.shared.counters.accept_errors.fetch_add(1, Relaxed);
    }

    /// Counts a connection parked because its declared body could not be drained.
    pub fn count_parked_body(&self) {
        self.shared.counters.bodies_parked.fetch_add(1, Relaxed);
    }

    pub fn max_waiters(&self) -> usize {
        self.shared.limits.max_waiters
    }

    pub fn stats(&self) -> Stats {
        let (waiters, peak_waiters, channels, events_stored, stored_bytes) = {
            let mut st = self.shared.state.lock();
            let dropped = st.expire(Instant::now(), &self.shared.limits);
            self.shared
                .counters
                .events_dropped
                .fetch_add(dropped as u64, Relaxed);
            (
                st.waiters,
                st.peak_waiters,
                st.channels.len(),
                st.stored_events,
                st.stored_bytes,
            )
        };
        let c = &self.shared.counters;
        Stats {
            waiters,
            max_waiters: self.shared.limits.max_waiters,
            peak_waiters,
            channels,
            events_stored,
            stored_bytes,
            events_published: c.events_published.load(Relaxed),
            events_delivered: c.events_delivered.load(Relaxed),
            events_dropped: c.events_dropped.load(Relaxed),
            polls_timed_out: c.polls_timed_out.load(Relaxed),
            polls_rejected: c.polls_rejected.load(Relaxed),
            accept_errors: c.accept_errors.load(Relaxed),
            bodies_parked: c.bodies_parked.load(Relaxed),
            uptime_seconds: self.shared.started.elapsed().as_secs(),
            threads: None,
            resident_bytes: None,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut st = self.hub.shared.state.lock();
        st.unregister(self);
        st.waiters -= 1;
    }
}

impl State {
    fn new_generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// Events after `cursor` on `names`, merged ascending by id, at most `limit`.
    fn read(&self, names: &[&str], cursor: u64, limit: usize) -> Batch {
        let mut merged = Batch::default();
        for name in names {
            if let Some(ch) = self.channels.get(*name) {
                let batch = ch.read_after(cursor, limit);
                merged.missed |= batch.missed;
                merged.events.extend(batch.events);
            }
        }
        if names.len() > 1 {
            merged.events.sort_unstable_by_key(|e| e.id);
            merged.events.truncate(limit);
        }
        merged
    }

    fn unregister(&mut self, ticket: &Ticket) {
        for (name, generation) in &ticket.channels {
            if let Some(ch) = self.channels.get_mut(name) {
                if ch.generation == *generation {
                    ch.waiters.remove(&ticket.id);
                    if ch.is_idle() {
                        self.channels.remove(name);
                    }
                }
            }
        }
    }

    /// Takes dropped events off the totals; returns how many.
    fn forget(&mut self, dropped: &[Arc<Event>]) -> usize {
        for event in dropped {
            self.stored_events -= 1;
            self.stored_bytes -= event.stored_bytes();
        }
        dropped.len()
    }

    /// Drops events older than `--event-ttl`; returns how many.
    fn expire(&mut self, now: Instant, limits: &HubLimits) -> usize {
        let Some(ttl) = limits.event_ttl else {
            return 0;
        };
        self.drop_oldest_while(|event| now.saturating_duration_since(event.stored_at) >= ttl)
    }

    /// Drops the oldest events over all channels until the bytes fit.
    fn enforce_memory(&mut self, limits: &HubLimits) -> usize {
        let mut excess = self.stored_bytes.saturating_sub(limits.max_stored_bytes);
        self.drop_oldest_while(|event| {
            let doomed = excess > 0;
            excess = excess.saturating_sub(event.stored_bytes());
            doomed
        })
    }

    /// Walks `order` from the oldest entry, dropping live events while `doomed`
    /// says so; stops at the first live event it keeps. Returns how many were dropped.
    fn drop_oldest_while(&mut self, mut doomed: impl FnMut(&Event) -> bool) -> usize {
        let mut dropped = 0;
        while let Some((id, name)) = self.order.front() {
            let live = self
                .channels
                .get(name)
                .and_then(|c| c.oldest())
                .filter(|e| e.id == *id)
                .cloned();
            let Some(event) = live else {
                // Already gone by overflow or deletion.
                self.order.pop_front();
                continue;
            };
            if !doomed(&event) {
                break;
            }
            let (_, name) = self.order.pop_front().expect("front exists");
            let ch = self.channels.get_mut(&name).expect("checked above");
            ch.drop_oldest();
            if ch.is_idle() {
                self.channels.remove(&name);
            }
            self.forget(&[event]);
            dropped += 1;
        }
        dropped
    }

    /// Removes entries of events no longer stored, once they outnumber live ones.
    fn compact_order(&mut self) {
        if self.order.len() <= 2 * self.stored_events + 64 {
            return;
        }
        let channels = &self.channels;
        self.order.retain(|(id, name)| {
            channels.get(name).is_some_and(|c| {
                c.oldest().is_some_and(|o| o.id <= *id) && c.newest().is_some_and(|n| n.id >= *id)
            })
        });
    }
}

/// A random extra hold of up to 1/16 of the timeout, so that clients that
/// started together do not all come back together.
fn jitter(timeout: Duration) -> Duration {
    let max_micros = (timeout / 16).as_micros() as u64;
    Duration::from_micros(fastrand::u64(0..=max_micros))
}

fn shutting_down() -> Error {
    Error::Busy {
        message: "server is shutting down".into(),
        retry_after_secs: 1,
    }
}

fn too_many_channels(max: usize) -> Error {
    Error::Busy {
        message: format!("the channel limit is reached (--max-channels {max}); retry later"),
        retry_after_secs: 5,
    }
}
