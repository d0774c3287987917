//! The shared state: channels, stored events, waiting polls and counters.
//!
//! `Hub` is the one handle every thread holds (an `Arc` around a
//! `parking_lot::Mutex<State>`). It decides what a poll gets: an answer now,
//! or a `Ticket` to wait for channels X until T, and it does the waiting on a
//! per-poll condvar. It never touches a socket or tiny_http, and it never holds
//! the lock while notifying: publishers collect the waiters of the channels
//! they touched, release the lock, then settle them (`Wake`): under the lock
//! once for all of them, each poll that now has its answer is handed it and
//! taken off its channels; then, with the lock released, exactly those are
//! woken. A woken poll finds its answer in its own `Waiter` and never takes
//! the hub's lock again, so N waiters released by one publish do not queue
//! on the lock one after another.
//!
//! Events enter in one of two ways. In memory only, a writer thread calls
//! `publish_deferred`, which issues the id and stores the event under one
//! lock. With a store (`store/`), the store's journal thread issues ids
//! (`issue_ids`), commits, and only then calls `apply`, so that a poll never
//! sees an event that is not committed; the hub records what it drops
//! (`Change`) for the journal to take (`take_changes`) into its next commit.
//! The hub never calls the store and never waits for it.
//!
//! With Redis (`store/redis.rs`) the hub is a node's mirror of the shared
//! store: the subscription thread `apply`s every event and deletion in the
//! order Redis issued their ids, whichever node published them, so what a
//! node holds is always everything up to some id (never a gap behind a
//! newer event), and a cursor from another node is answered as it would be
//! there.
//!
//! Called from the dispatch thread (`begin_poll`, `channel_info`, `delete`,
//! `stats`), from writer threads (`publish_deferred`, `check_publish`), from
//! waiter threads (`wait`) and from the store's journal thread (`issue_ids`,
//! `apply`, `take_changes`).

pub mod channel;
pub mod event;
pub mod stats;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Sender;
use parking_lot::{Condvar, Mutex};

use crate::api::auth::Client;
use crate::api::request::PollSpec;
use crate::error::Error;
use crate::hub::channel::{Batch, Channel, WaiterId};
use crate::hub::event::{Event, IdClock, wall_micros};
use crate::hub::stats::{Refusal, RefusedCounts, Stats};

/// Most bytes of events in one poll answer: when events are large, an
/// answer holds fewer than its `limit` (at least one), and the client gets
/// the rest with its next poll. So one answer never builds more than this
/// (plus one event) in memory, whatever `limit` asks for.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// `Retry-After` of a poll refused because its client holds its share of
/// slots: about when one of its polls may have been answered.
const CLIENT_SHARE_RETRY_SECS: u32 = 5;

/// The deadline of a stream without `--max-stream-seconds`.
const STREAM_FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The limits the hub enforces (from `Config`).
#[derive(Debug, Clone)]
pub struct HubLimits {
    pub buffer_events: usize,
    pub event_ttl: Option<Duration>,
    pub max_channels: usize,
    pub max_stored_bytes: usize,
    pub max_waiters: usize,
    /// Slots one client may hold (`--max-waiters-per-client`); `None`: no
    /// share beyond `max_waiters`.
    pub max_waiters_per_client: Option<usize>,
    /// A stream ends after this long (`--max-stream-seconds`); `None`: never.
    pub max_stream: Option<Duration>,
}

/// What the hub dropped, for a store to make durable (`Hub::take_changes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An event dropped by overflow, age, the memory limit or eviction; a
    /// cursor below `id` on `channel` has missed something.
    Dropped { channel: Arc<str>, id: u64 },
    /// The tombstone of `channel` was evicted (`max_tombstones`): its losses
    /// are no longer remembered. `last_id` is the largest id issued so far.
    Forgotten { channel: Arc<str>, last_id: u64 },
}

impl Change {
    /// The channel it concerns.
    pub fn channel(&self) -> &str {
        match self {
            Change::Dropped { channel, .. } | Change::Forgotten { channel, .. } => channel,
        }
    }
}

/// What a store committed, for `Hub::apply` to make visible, in commit order.
#[derive(Debug)]
pub enum Committed {
    Event {
        channel: Arc<str>,
        event: Arc<Event>,
    },
    Delete {
        channel: Arc<str>,
    },
    /// Events of `channel` through id `through` were dropped by the store
    /// (its per-channel bound) before this node held them: a cursor below it
    /// has missed something. Redis only.
    Lost {
        channel: Arc<str>,
        through: u64,
    },
}

/// Where events are kept, for `/stats` and `/healthz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    Memory,
    Sqlite,
    Redis,
}

impl Backing {
    pub fn name(self) -> &'static str {
        match self {
            Backing::Memory => "memory",
            Backing::Sqlite => "sqlite",
            Backing::Redis => "redis",
        }
    }
}

/// How far ahead of this node's clock a cursor issued by another node (by
/// Redis's clock) may be and still count as one the server issued.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// The parts of a Redis link that can be down (`Hub::set_link_down`).
pub const LINK_SUBSCRIPTION: u8 = 1;
pub const LINK_WRITER: u8 = 2;

/// The changes a store has not taken yet, and how to tell it there are some.
struct Pending {
    changes: Vec<Change>,
    /// Signalled (without blocking) when `changes` stops being empty.
    nudge: Sender<()>,
}

/// The handle. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Polls and streams holding a wait slot (registered, or being answered
    /// after a wait). Taken under the lock (`begin_poll`: the cap check and
    /// the increment are one step), given back without it (a poll's
    /// `Ticket` drop), so that N answered waiters do not queue on the lock
    /// once more each after writing their answers.
    waiters: AtomicUsize,
    /// Chains `Wake` wakes answered polls in: one per core, at most 4.
    wake_chains: usize,
    limits: HubLimits,
    backing: Backing,
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
    connections_closed: AtomicU64,
    connections_cut: AtomicU64,
    answers_inline: AtomicU64,
    requests_overloaded: AtomicU64,
    requests_malformed: AtomicU64,
    store_commits: AtomicU64,
    store_errors: AtomicU64,
    /// With Redis: the parts of the link that are down (`LINK_*` bits).
    link_down: AtomicU8,
    /// With Redis: times the subscription connected again after losing Redis.
    store_reconnects: AtomicU64,
    /// Requests refused by the access rules or the per-client shares, by
    /// `Refusal` (its discriminant).
    refused: [AtomicU64; Refusal::ALL.len()],
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
    /// Channels removed after losing events nobody read, with the highest id
    /// lost, so that an old cursor still learns of the gap. Oldest first in
    /// `tombstone_order` (which may hold stale names); at most `max_tombstones`.
    /// Only publishing creates them, never polling.
    tombstones: HashMap<Arc<str>, u64>,
    tombstone_order: VecDeque<Arc<str>>,
    max_tombstones: usize,
    ids: IdClock,
    /// With a store: what was dropped since the store last took the changes.
    pending: Option<Pending>,
    /// Events held over all channels, and the bytes they count.
    stored_events: usize,
    stored_bytes: usize,
    next_generation: u64,
    next_waiter_id: WaiterId,
    /// Of the wait slots taken (`Shared::waiters`), those of open streams.
    streams: usize,
    peak_waiters: usize,
    /// Slots held per client (`PollSpec::client`), with
    /// `--max-waiters-per-client` only; a client is removed when it holds
    /// none, so there are never more entries than slots.
    slots_by_client: HashMap<Client, usize>,
    /// Bumped by `end_streams`: a stream begun under an older one ends.
    streams_epoch: u64,
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

/// One waiting poll or stream: what it waits for, and where it is told.
/// Shared by its `Ticket` (the waiting thread), the lists of its channels
/// and its `EarlyAnswer`.
#[derive(Debug)]
struct Waiter {
    id: WaiterId,
    /// Its channels, with the generation of each when it registered.
    channels: Vec<(Arc<str>, u64)>,
    /// A poll's cursor and limit (a stream keeps its moving cursor in its
    /// `Ticket`; it is never handed an answer).
    cursor: u64,
    limit: usize,
    stream: bool,
    /// On its channels' waiter lists. Changed only under the hub's lock.
    registered: AtomicBool,
    /// What it is told. Its own small lock, taken after the hub's when
    /// both are held (lock order: `Shared::state`, then `Waiter::note`).
    note: Mutex<Note>,
    /// Waits on `note`.
    condvar: Condvar,
}

#[derive(Debug, Default)]
struct Note {
    /// A poll's answer, decided under the hub's lock by `State::settle`,
    /// which also took it off its channels.
    answer: Option<Answer>,
    /// A stream's: something it waits for may have changed; look again.
    changed: bool,
    /// Answer now with what it has (`EarlyAnswer`).
    answer_now: bool,
    /// The poll to wake once this one has taken its answer (`Wake`).
    next: Option<Arc<Waiter>>,
    /// Its ticket is gone: it will take no answer, so it is left out of a
    /// chain.
    gone: bool,
}

impl Waiter {
    /// Takes its handed-over answer, if any, waking the next in its chain.
    fn take_answer(&self) -> Option<Answer> {
        let mut note = self.note.lock();
        let answer = note.answer.take()?;
        let next = note.next.take();
        drop(note);
        if let Some(next) = next {
            next.condvar.notify_one();
        }
        Some(answer)
    }
}

/// Waiters to settle and wake, once the lock is released: dropping it takes
/// the lock once for all of them, hands each poll that can be answered its
/// answer (`State::settle`), then wakes those and every stream.
///
/// The answered polls are woken in chains, one per core: only the first of
/// each is woken here, and each wakes the next as it takes its answer
/// (before it writes, so a client that does not read holds up nobody).
/// Waking N threads at once makes N runnable together on a device with one
/// to four cores, where they compete with each other and with everything
/// else on it for the CPU; a chain keeps about one per core runnable.
/// Measured on 2 cores with 500 polls (benchmarks, scenario 2): the last
/// was served no sooner either way (8.0 ms chained, 8.1 ms all at once),
/// and the median sooner than when each poll re-read under the lock.
#[must_use = "dropping it wakes the waiters"]
pub struct Wake {
    hub: Hub,
    waiters: Vec<Arc<Waiter>>,
}

impl Drop for Wake {
    fn drop(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut self.waiters);
        let shared = &self.hub.shared;
        let mut st = shared.state.lock();
        let mut streams = Vec::new();
        let mut answered = Vec::new();
        for waiter in waiters {
            match st.settle(&waiter) {
                Settled::Waits => {}
                Settled::Stream => streams.push(waiter),
                Settled::Answered(answer) => answered.push((waiter, answer)),
            }
        }
        // Hand over the answers, building each chain from its end, so that
        // a poll holds its `next` from the moment it can find its answer.
        let mut heads: Vec<Option<Arc<Waiter>>> = vec![None; shared.wake_chains];
        for (i, (waiter, answer)) in answered.into_iter().enumerate().rev() {
            let head = &mut heads[i % shared.wake_chains];
            let mut note = waiter.note.lock();
            if note.gone {
                continue;
            }
            note.answer = Some(answer);
            note.next = head.take();
            drop(note);
            *head = Some(waiter);
        }
        drop(st);
        for waiter in heads.into_iter().flatten().chain(streams) {
            waiter.condvar.notify_one();
        }
    }
}

/// What `State::settle` decided for a waiter.
enum Settled {
    /// Nothing for it yet (or it was answered before).
    Waits,
    /// A stream, told to look again.
    Stream,
    /// A poll taken off its channels, with its answer to hand over.
    Answered(Answer),
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
    waiter: Arc<Waiter>,
    /// A stream's cursor, advanced as it writes (a poll's is its waiter's).
    cursor: u64,
    deadline: Instant,
    /// A stream's gap to announce although nothing was dropped after its
    /// cursor (the cursor was one this server cannot have issued).
    gap_pending: bool,
    /// The highest dropped id a stream has announced as a gap.
    gap_told_through: u64,
    /// `State::streams_epoch` when the stream began.
    streams_epoch: u64,
    /// The client counted in `State::slots_by_client` for this slot.
    client: Option<Client>,
}

/// Ends a held poll early (`Hub::wait` then answers with what it has): a
/// handle the writer keeps while the poll is held.
#[derive(Clone)]
pub struct EarlyAnswer {
    waiter: Arc<Waiter>,
}

/// What a stream writes next (`Hub::next_for_stream`).
#[derive(Debug)]
pub enum StreamStep {
    /// Events after the stream's cursor, ascending; with `missed`, some
    /// after the cursor were dropped before they could be sent (announce
    /// the gap before these).
    Events {
        events: Vec<Arc<Event>>,
        missed: bool,
    },
    /// Events after the cursor were dropped and none after them is held.
    Missed,
    /// Nothing new until the heartbeat time.
    Heartbeat,
    /// One of the stream's channels was deleted.
    Gone { channel: String },
    /// Shutdown, `--max-stream-seconds`, or a request arrived behind it.
    End,
}

impl Ticket {
    /// Whether this is a stream's ticket.
    pub fn is_stream(&self) -> bool {
        self.waiter.stream
    }

    /// A handle to answer this poll before its deadline.
    pub fn early_answer(&self) -> EarlyAnswer {
        EarlyAnswer {
            waiter: self.waiter.clone(),
        }
    }
}

impl EarlyAnswer {
    /// Makes the poll answer now: its events if it has some, else `204`.
    pub fn answer_now(&self) {
        // Set under the waiter's lock, so that a waiter between its check
        // and its wait cannot miss it; notified after.
        self.waiter.note.lock().answer_now = true;
        self.waiter.condvar.notify_one();
    }
}

impl Hub {
    /// A hub that keeps events in memory only.
    pub fn new(limits: HubLimits) -> Hub {
        Hub::build(limits, None, Backing::Memory)
    }

    /// A node's mirror of a Redis store: events enter through `apply`, in
    /// the order Redis issued them. The link starts down until the
    /// subscription has caught up.
    pub fn mirror(limits: HubLimits) -> Hub {
        let hub = Hub::build(limits, None, Backing::Redis);
        hub.shared
            .counters
            .link_down
            .store(LINK_SUBSCRIPTION, Relaxed);
        hub
    }

    /// A hub whose events a store commits (`apply`); it records what it
    /// drops and signals `nudge` when there is something to take.
    pub fn with_store(limits: HubLimits, nudge: Sender<()>) -> Hub {
        Hub::build(
            limits,
            Some(Pending {
                changes: Vec::new(),
                nudge,
            }),
            Backing::Sqlite,
        )
    }

    fn build(limits: HubLimits, pending: Option<Pending>, backing: Backing) -> Hub {
        Hub {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    channels: HashMap::new(),
                    order: VecDeque::new(),
                    tombstones: HashMap::new(),
                    tombstone_order: VecDeque::new(),
                    max_tombstones: limits.max_channels,
                    ids: IdClock::default(),
                    pending,
                    stored_events: 0,
                    stored_bytes: 0,
                    next_generation: 1,
                    next_waiter_id: 1,
                    streams: 0,
                    peak_waiters: 0,
                    slots_by_client: HashMap::new(),
                    streams_epoch: 0,
                    shutting_down: false,
                }),
                waiters: AtomicUsize::new(0),
                wake_chains: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
                limits,
                backing,
                started: Instant::now(),
                counters: Counters::default(),
            }),
        }
    }

    /// Stores one event and wakes the channel's waiters; `data_json` is the
    /// published value as compact JSON. (Writers use `publish_deferred`.)
    #[cfg(test)]
    pub fn publish(&self, channel: &str, data_json: &str) -> Result<Arc<Event>, Error> {
        self.publish_deferred(channel, data_json)
            .map(|(event, _wake)| event)
    }

    /// Like `publish`, but the waiters are woken only when the returned `Wake`
    /// is dropped, so that the publisher can be answered first: its round trip
    /// then does not grow with the number of waiters. In memory only: with a
    /// store, events enter through `apply` once committed.
    pub fn publish_deferred(
        &self,
        channel: &str,
        data_json: &str,
    ) -> Result<(Arc<Event>, Wake), Error> {
        let limits = &self.shared.limits;
        let now = Instant::now();
        let at = SystemTime::now();
        let mut st = self.shared.state.lock();
        debug_assert!(st.pending.is_none(), "a store publishes through apply");
        let mut dropped = st.expire(now, limits);
        st.check_publish(channel, limits)?;
        let id = st.ids.next_id(wall_micros(at)).ok_or_else(ids_exhausted)?;
        let event = Event::new(id, channel, at, now, data_json);
        let (wake, lost) = st.insert(channel, event.clone(), limits);
        dropped += lost;
        drop(st);

        let counters = &self.shared.counters;
        counters.events_published.fetch_add(1, Relaxed);
        counters.events_dropped.fetch_add(dropped as u64, Relaxed);
        Ok((event, self.wake(wake)))
    }

    /// Refuses a publish on `channel` that could not be stored now (shutting
    /// down, or `--max-channels` reached with every channel waited on). A
    /// store asks before it queues the event for its commit.
    pub fn check_publish(&self, channel: &str) -> Result<(), Error> {
        let limits = &self.shared.limits;
        let mut st = self.shared.state.lock();
        let dropped = st.expire(Instant::now(), limits);
        self.count_dropped(dropped);
        st.check_publish(channel, limits)
    }

    /// Issues `count` ids, ascending, for events published at `at` (a store
    /// calls it before committing them); with the largest id issued so far.
    pub fn issue_ids(&self, count: usize, at: SystemTime) -> Result<(Vec<u64>, u64), Error> {
        let mut st = self.shared.state.lock();
        let ids = (0..count)
            .map(|_| st.ids.next_id(wall_micros(at)).ok_or_else(ids_exhausted))
            .collect::<Result<Vec<u64>, Error>>()?;
        Ok((ids, st.ids.last_id()))
    }

    /// Makes committed events and deletions visible, in commit order. The
    /// returned `Wake` wakes the waiters of the channels they touched.
    pub fn apply(&self, committed: &[Committed]) -> Wake {
        let limits = &self.shared.limits;
        let now = Instant::now();
        let mut wake = Vec::new();
        let (mut published, mut dropped) = (0, 0);
        let mut st = self.shared.state.lock();
        dropped += st.expire(now, limits);
        for item in committed {
            match item {
                Committed::Event { channel, event } => {
                    // Issued here (`issue_ids`) or by the shared store.
                    st.ids.raise_to(event.id);
                    let (woken, lost) = st.insert(channel, event.clone(), limits);
                    wake.extend(woken);
                    dropped += lost;
                    published += 1;
                }
                Committed::Delete { channel } => wake.extend(st.delete(channel)),
                Committed::Lost { channel, through } => st.lose(channel, *through),
            }
        }
        drop(st);
        let counters = &self.shared.counters;
        counters.events_published.fetch_add(published, Relaxed);
        self.count_dropped(dropped);
        self.wake(wake)
    }

    /// Starts rebuilding the state a store kept: `tombstones` are channels
    /// with the largest id each lost, least recent first; `last_id` is the
    /// largest id ever issued. Then `restore_events`, then `restored`.
    pub fn restore(&self, tombstones: Vec<(Arc<str>, u64)>, last_id: u64) {
        let mut st = self.shared.state.lock();
        st.ids.raise_to(last_id);
        for (channel, dropped_through) in tombstones {
            st.ids.raise_to(dropped_through);
            st.tombstones.insert(channel.clone(), dropped_through);
            st.tombstone_order.push_back(channel);
        }
    }

    /// Stores events read back from a store, in id order, under today's
    /// limits; what the limits drop becomes changes for the store.
    pub fn restore_events(&self, events: impl IntoIterator<Item = (Arc<str>, Arc<Event>)>) {
        let limits = &self.shared.limits;
        let now = Instant::now();
        let mut st = self.shared.state.lock();
        let mut dropped = 0;
        for (channel, event) in events {
            st.ids.raise_to(event.id);
            dropped += st.expire(now, limits);
            dropped += st.insert(&channel, event, limits).1;
        }
        drop(st);
        self.count_dropped(dropped);
    }

    /// Ends a restore: tombstones past the limit are forgotten.
    pub fn restored(&self) {
        self.shared.state.lock().trim_tombstones();
    }

    /// Whether `channel` holds events or remembers losses: if not, a store
    /// holds nothing of it that a deletion must remove (beyond what its own
    /// batch and pending changes name).
    pub fn holds(&self, channel: &str) -> bool {
        let st = self.shared.state.lock();
        st.channels.get(channel).is_some_and(|c| c.len() > 0)
            || st.tombstones.contains_key(channel)
            || st
                .pending
                .as_ref()
                .is_some_and(|p| p.changes.iter().any(|c| c.channel() == channel))
    }

    /// The largest id issued so far.
    pub fn last_id(&self) -> u64 {
        self.shared.state.lock().ids.last_id()
    }

    /// Raises the largest id issued so far to `id` (a deletion's id, issued
    /// by the shared store).
    pub fn raise_last_id(&self, id: u64) {
        self.shared.state.lock().ids.raise_to(id);
    }

    /// Marks a part of the Redis link (`LINK_*`) down or up again.
    pub fn set_link_down(&self, part: u8, down: bool) {
        let link = &self.shared.counters.link_down;
        if down {
            link.fetch_or(part, Relaxed);
        } else {
            link.fetch_and(!part, Relaxed);
        }
    }

    /// With Redis: whether every part of the link is up.
    pub fn link_up(&self) -> Option<bool> {
        (self.shared.backing == Backing::Redis)
            .then(|| self.shared.counters.link_down.load(Relaxed) == 0)
    }

    /// Counts a subscription that connected again after losing Redis.
    pub fn count_store_reconnect(&self) {
        self.shared.counters.store_reconnects.fetch_add(1, Relaxed);
    }

    /// Counts a store commit.
    pub fn count_store_commit(&self) {
        self.shared.counters.store_commits.fetch_add(1, Relaxed);
    }

    /// Counts a failed store commit.
    pub fn count_store_error(&self) {
        self.shared.counters.store_errors.fetch_add(1, Relaxed);
    }

    /// What was dropped since the last call, if at least `min` changes
    /// (else nothing; always nothing in memory only).
    pub fn take_changes(&self, min: usize) -> Vec<Change> {
        let mut st = self.shared.state.lock();
        match st.pending.as_mut() {
            Some(p) if p.changes.len() >= min => std::mem::take(&mut p.changes),
            _ => Vec::new(),
        }
    }

    /// Gives back changes a store failed to commit, ahead of newer ones.
    pub fn return_changes(&self, mut changes: Vec<Change>) {
        let mut st = self.shared.state.lock();
        if let Some(pending) = st.pending.as_mut() {
            changes.append(&mut pending.changes);
            pending.changes = changes;
        }
    }

    /// Decides a poll: answer now, or register it to wait (taking a slot).
    pub fn begin_poll(&self, spec: &PollSpec) -> Result<PollStart, Error> {
        let limits = &self.shared.limits;
        let now = Instant::now();
        let mut st = self.shared.state.lock();
        if st.shutting_down {
            return Err(shutting_down());
        }
        self.expire(&mut st, now);

        // A cursor this server cannot have issued is answered with what is held.
        // With Redis, ids follow Redis's clock: another node's cursor may be
        // ahead of this one's by up to `MAX_CLOCK_SKEW`.
        let skew = match self.shared.backing {
            Backing::Redis => MAX_CLOCK_SKEW.as_micros() as u64,
            Backing::Memory | Backing::Sqlite => 0,
        };
        let now_micros = wall_micros(SystemTime::now()) + skew;
        let future = spec.cursor > st.ids.horizon(now_micros);
        let cursor = if future { 0 } else { spec.cursor };
        let names: Vec<&str> = spec.channels.iter().map(String::as_str).collect();
        if !spec.stream {
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
        }
        let client = spec
            .client
            .as_ref()
            .filter(|_| limits.max_waiters_per_client.is_some());
        if let (Some(client), Some(share)) = (client, limits.max_waiters_per_client) {
            if st
                .slots_by_client
                .get(client)
                .is_some_and(|held| *held >= share)
            {
                drop(st);
                self.count_refusal(Refusal::ClientWaiters);
                return Err(Error::TooManyRequests {
                    message: format!(
                        "{client} already holds {share} polls or streams (--max-waiters-per-client); \
                         retry once one is answered"
                    ),
                    retry_after_secs: CLIENT_SHARE_RETRY_SECS,
                });
            }
        }
        let waiters = self.shared.waiters.load(Relaxed);
        if waiters >= limits.max_waiters {
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
        let Some(evicted) = st.make_room_for_channels(new_channels, limits.max_channels) else {
            return Err(too_many_channels(limits.max_channels));
        };
        self.shared
            .counters
            .events_dropped
            .fetch_add(evicted as u64, Relaxed);

        let id = st.next_waiter_id;
        st.next_waiter_id += 1;
        let mut channels = Vec::with_capacity(names.len());
        for name in names {
            let name: Arc<str> = match st.channels.get_key_value(name) {
                Some((key, _)) => key.clone(),
                None => {
                    let generation = st.new_generation();
                    let key: Arc<str> = Arc::from(name);
                    let dropped_through = st.unbury(name);
                    st.channels
                        .insert(key.clone(), Channel::new(generation, dropped_through));
                    key
                }
            };
            let generation = st.channels[&name].generation;
            channels.push((name, generation));
        }
        let waiter = Arc::new(Waiter {
            id,
            channels,
            cursor,
            limit: spec.limit,
            stream: spec.stream,
            registered: AtomicBool::new(true),
            note: Mutex::default(),
            condvar: Condvar::new(),
        });
        for (name, _) in &waiter.channels {
            let ch = st.channels.get_mut(name).expect("present");
            ch.waiters.insert(id, waiter.clone());
        }
        self.shared.waiters.fetch_add(1, Relaxed);
        st.streams += usize::from(spec.stream);
        if let Some(client) = client {
            *st.slots_by_client.entry(client.clone()).or_default() += 1;
        }
        st.peak_waiters = st.peak_waiters.max(waiters + 1);
        let deadline = match (spec.stream, limits.max_stream) {
            (false, _) => now + spec.timeout + jitter(spec.timeout),
            (true, Some(max_stream)) => now + max_stream,
            (true, None) => now + STREAM_FOREVER,
        };
        Ok(PollStart::Wait(Ticket {
            hub: self.clone(),
            waiter,
            cursor,
            deadline,
            gap_pending: spec.stream && future,
            gap_told_through: 0,
            streams_epoch: st.streams_epoch,
            client: client.cloned(),
        }))
    }

    /// Blocks until the ticket's poll can be answered: events newer than its
    /// cursor, its deadline, deletion of one of its channels, or shutdown.
    /// Unregisters the poll from its channels; the slot stays taken until the
    /// ticket is dropped (after the answer is written). Woken by a `Wake`, it
    /// finds its answer handed over and does not take the hub's lock; it
    /// takes it only at its deadline or when told to answer now.
    pub fn wait(&self, ticket: &Ticket) -> Answer {
        let waiter = &ticket.waiter;
        debug_assert!(!waiter.stream);
        let mut note = waiter.note.lock();
        while note.answer.is_none() && !note.answer_now && Instant::now() < ticket.deadline {
            waiter.condvar.wait_until(&mut note, ticket.deadline);
        }
        let answer_now = note.answer_now;
        drop(note);
        if let Some(answer) = waiter.take_answer() {
            return answer;
        }
        let mut st = self.shared.state.lock();
        if waiter.note.lock().answer.is_some() {
            // Settled since the check above.
            drop(st);
            return waiter.take_answer().expect("handed over");
        }
        self.expire(&mut st, Instant::now());
        let answer = match st.answer_for(waiter) {
            Some(answer) => answer,
            None => {
                if !answer_now {
                    self.shared.counters.polls_timed_out.fetch_add(1, Relaxed);
                }
                Answer::Empty {
                    missed: st.read_for(waiter, waiter.cursor).missed,
                }
            }
        };
        st.unregister(waiter);
        answer
    }

    /// What a stream writes next: the events after its cursor (advancing
    /// it), a gap to announce, a heartbeat when nothing came by
    /// `heartbeat_at`, or its end. Blocks until one of those; the stream
    /// stays registered on its channels in between, so nothing published
    /// while it writes is missed (the next call finds it).
    pub fn next_for_stream(&self, ticket: &mut Ticket, heartbeat_at: Instant) -> StreamStep {
        let waiter = ticket.waiter.clone();
        debug_assert!(waiter.stream);
        loop {
            let mut st = self.shared.state.lock();
            // Whatever woke it is looked at now; a change after this sets
            // `changed` again (under this lock), so it is not missed.
            let answer_now = {
                let mut note = waiter.note.lock();
                note.changed = false;
                note.answer_now
            };
            if st.shutting_down {
                return StreamStep::End;
            }
            if let Some(channel) = st.deleted_channel(&waiter) {
                return StreamStep::Gone { channel };
            }
            let now = Instant::now();
            self.expire(&mut st, now);
            let batch = st.read_for(&waiter, ticket.cursor);
            // A gap is announced once: later reads below the same drops
            // (several channels, a small limit) do not repeat it.
            let new_gap = batch.missed && batch.dropped_through > ticket.gap_told_through;
            let missed = new_gap || std::mem::take(&mut ticket.gap_pending);
            ticket.gap_told_through = ticket.gap_told_through.max(batch.dropped_through);
            if let Some(last) = batch.events.last() {
                ticket.cursor = last.id;
                return StreamStep::Events {
                    events: batch.events,
                    missed,
                };
            }
            if missed {
                ticket.cursor = ticket.cursor.max(batch.dropped_through);
                return StreamStep::Missed;
            }
            let renewed = st.streams_epoch != ticket.streams_epoch;
            if answer_now || now >= ticket.deadline || renewed {
                return StreamStep::End;
            }
            if now >= heartbeat_at {
                return StreamStep::Heartbeat;
            }
            drop(st);
            let mut note = waiter.note.lock();
            if !note.changed && !note.answer_now {
                waiter
                    .condvar
                    .wait_until(&mut note, ticket.deadline.min(heartbeat_at));
            }
        }
    }

    /// Drops a channel's events and answers its waiters `410` (in memory
    /// only: with a store, deletions enter through `apply` once committed).
    pub fn delete(&self, channel: &str) {
        let mut st = self.shared.state.lock();
        let waiters = st.delete(channel);
        drop(st);
        drop(self.wake(waiters));
    }

    /// Settles and wakes `waiters` when dropped (after the lock is released).
    fn wake(&self, waiters: Vec<Arc<Waiter>>) -> Wake {
        Wake {
            hub: self.clone(),
            waiters,
        }
    }

    /// Drops events past `--event-ttl` (and counts them), under the lock.
    fn expire(&self, st: &mut State, now: Instant) {
        let dropped = st.expire(now, &self.shared.limits);
        self.count_dropped(dropped);
    }

    fn count_dropped(&self, dropped: usize) {
        if dropped > 0 {
            let counters = &self.shared.counters;
            counters.events_dropped.fetch_add(dropped as u64, Relaxed);
        }
    }

    /// The `GET /channels/{name}` figures, or `None` for an unknown channel.
    pub fn channel_info(&self, channel: &str) -> Option<serde_json::Value> {
        let mut st = self.shared.state.lock();
        self.expire(&mut st, Instant::now());
        let ch = st.channels.get(channel)?;
        Some(serde_json::json!({
            "channel": channel,
            "last_event_id": ch.newest().map(|e| e.id),
            "oldest_event_id": ch.oldest().map(|e| e.id),
            "events": ch.len(),
            "waiters": ch.waiters.len(),
        }))
    }

    /// Ends every open stream (its client reconnects from its cursor and is
    /// admitted again: after the access rules changed). Held polls keep
    /// their wait.
    pub fn end_streams(&self) {
        let mut st = self.shared.state.lock();
        st.streams_epoch += 1;
        // The hub does not know which waiters are streams: every waiter is
        // woken, and polls find nothing new and wait on.
        let waiters = st.all_waiters();
        drop(st);
        drop(self.wake(waiters));
    }

    /// Counts a request refused by the access rules or a client's share.
    pub fn count_refusal(&self, refusal: Refusal) {
        self.shared.counters.refused[refusal as usize].fetch_add(1, Relaxed);
    }

    /// Answers every waiting poll (`204`) and refuses new polls and publishes.
    pub fn shut_down(&self) {
        let mut st = self.shared.state.lock();
        st.shutting_down = true;
        let waiters = st.all_waiters();
        drop(st);
        drop(self.wake(waiters));
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

    /// Counts a connection abide closed after refusing one of its requests.
    pub fn count_closed_connection(&self) {
        self.shared
            .counters
            .connections_closed
            .fetch_add(1, Relaxed);
    }

    /// Counts a connection ended without an answer (`Writer::cut_connection`).
    pub fn count_cut_connection(&self) {
        self.shared.counters.connections_cut.fetch_add(1, Relaxed);
    }

    /// Counts an answer the dispatch thread wrote itself (`Writer::answer_now`).
    pub fn count_inline_answer(&self) {
        self.shared.counters.answers_inline.fetch_add(1, Relaxed);
    }

    /// Counts a request refused because no thread or queue room was left.
    pub fn count_overloaded_request(&self) {
        self.shared
            .counters
            .requests_overloaded
            .fetch_add(1, Relaxed);
    }

    /// Counts a request head refused as malformed (by tiny_http or abide).
    pub fn count_malformed_request(&self) {
        self.shared
            .counters
            .requests_malformed
            .fetch_add(1, Relaxed);
    }

    pub fn stats(&self) -> Stats {
        let (waiters, streams, peak_waiters, channels, events_stored, stored_bytes) = {
            let mut st = self.shared.state.lock();
            self.expire(&mut st, Instant::now());
            (
                self.shared.waiters.load(Relaxed),
                st.streams,
                st.peak_waiters,
                st.channels.len(),
                st.stored_events,
                st.stored_bytes,
            )
        };
        let c = &self.shared.counters;
        Stats {
            waiters,
            streams,
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
            connections_closed: c.connections_closed.load(Relaxed),
            connections_cut: c.connections_cut.load(Relaxed),
            answers_inline: c.answers_inline.load(Relaxed),
            requests_overloaded: c.requests_overloaded.load(Relaxed),
            requests_malformed: c.requests_malformed.load(Relaxed),
            store: self.shared.backing.name(),
            store_commits: c.store_commits.load(Relaxed),
            store_errors: c.store_errors.load(Relaxed),
            store_connected: self.link_up(),
            store_reconnects: c.store_reconnects.load(Relaxed),
            requests_refused: RefusedCounts::from_fn(|r| c.refused[r as usize].load(Relaxed)),
            uptime_seconds: self.shared.started.elapsed().as_secs(),
            threads: None,
            resident_bytes: None,
            disk_written_bytes: None,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let shared = &self.hub.shared;
        let waiter = &self.waiter;
        // A poll that was answered is on no list: its slot is given back
        // without the lock (the common case, N times after each fan-out).
        if !waiter.stream {
            // Not waiting any more: out of any chain, passing its turn on.
            let next = {
                let mut note = waiter.note.lock();
                note.gone = true;
                note.next.take()
            };
            if let Some(next) = next {
                next.condvar.notify_one();
            }
        }
        if waiter.registered.load(Relaxed) || waiter.stream || self.client.is_some() {
            let mut st = shared.state.lock();
            if waiter.registered.load(Relaxed) {
                st.unregister(waiter);
            }
            st.streams -= usize::from(waiter.stream);
            if let Some(client) = &self.client {
                if let Some(held) = st.slots_by_client.get_mut(client) {
                    *held -= 1;
                    if *held == 0 {
                        st.slots_by_client.remove(client);
                    }
                }
            }
        }
        shared.waiters.fetch_sub(1, Relaxed);
    }
}

impl State {
    /// Every registered waiter, to wake once the lock is released (one on
    /// several channels appears once for each: `settle` takes repeats).
    fn all_waiters(&self) -> Vec<Arc<Waiter>> {
        self.channels
            .values()
            .flat_map(|c| c.waiters.values().cloned())
            .collect()
    }

    /// Decides for a waiter a `Wake` named (under the lock): a poll that
    /// can be answered now (events after its cursor, a deleted channel, or
    /// shutdown) is taken off its channels, its answer to be handed over;
    /// a stream is told to look again.
    fn settle(&mut self, waiter: &Waiter) -> Settled {
        if !waiter.registered.load(Relaxed) {
            // Answered already (another wake, its deadline, or a repeat).
            return Settled::Waits;
        }
        if waiter.stream {
            waiter.note.lock().changed = true;
            return Settled::Stream;
        }
        let Some(answer) = self.answer_for(waiter) else {
            return Settled::Waits;
        };
        self.unregister(waiter);
        Settled::Answered(answer)
    }

    /// What a poll gets now if it need not wait on: `204` at shutdown,
    /// `410` if one of its channels was deleted, its events if it has some.
    fn answer_for(&self, waiter: &Waiter) -> Option<Answer> {
        if self.shutting_down {
            return Some(Answer::Empty { missed: false });
        }
        if let Some(channel) = self.deleted_channel(waiter) {
            return Some(Answer::Gone { channel });
        }
        let batch = self.read_for(waiter, waiter.cursor);
        (!batch.events.is_empty()).then_some(Answer::Events {
            events: batch.events,
            missed: batch.missed,
        })
    }

    /// Removes a channel that holds nothing and has no waiters. If it lost
    /// events nobody read, a tombstone keeps that fact for later cursors.
    fn remove_if_idle(&mut self, name: &str) {
        let Some(ch) = self.channels.get(name) else {
            return;
        };
        if !ch.is_idle() {
            return;
        }
        let dropped_through = ch.dropped_through();
        let (name, _) = self.channels.remove_entry(name).expect("present");
        if dropped_through > 0 {
            self.bury(name, dropped_through);
        }
    }

    /// Remembers that `name`, which holds nothing now, lost events through
    /// `dropped_through`; evicts the oldest tombstones past `max_tombstones`.
    fn bury(&mut self, name: Arc<str>, dropped_through: u64) {
        self.tombstones.insert(name.clone(), dropped_through);
        self.tombstone_order.push_back(name);
        self.trim_tombstones();
    }

    /// Evicts the oldest tombstones past `max_tombstones`.
    fn trim_tombstones(&mut self) {
        while self.tombstones.len() > self.max_tombstones {
            let Some(oldest) = self.tombstone_order.pop_front() else {
                break;
            };
            if self.tombstones.remove(&oldest).is_some() {
                let last_id = self.ids.last_id();
                self.record(Change::Forgotten {
                    channel: oldest,
                    last_id,
                });
            }
        }
        if self.tombstone_order.len() > 2 * self.tombstones.len() + 64 {
            let tombstones = &self.tombstones;
            self.tombstone_order.retain(|n| tombstones.contains_key(n));
        }
    }

    /// Notes a change for the store, if there is one.
    fn record(&mut self, change: Change) {
        if let Some(pending) = self.pending.as_mut() {
            if pending.changes.is_empty() {
                // Full means a nudge is already waiting to be read.
                let _ = pending.nudge.try_send(());
            }
            pending.changes.push(change);
        }
    }

    /// Remembers that `name` lost events through `through` in the store
    /// before this node held them: on the channel if it exists, else as
    /// its tombstone.
    fn lose(&mut self, name: &Arc<str>, through: u64) {
        match self.channels.get_mut(&**name) {
            Some(ch) => ch.raise_dropped_through(through),
            None => {
                let known = self.tombstones.get(&**name).copied().unwrap_or(0);
                if through > known {
                    self.bury(name.clone(), through);
                }
            }
        }
    }

    /// Takes the tombstone of `name`, if any: the highest id it lost unread.
    fn unbury(&mut self, name: &str) -> u64 {
        self.tombstones.remove(name).unwrap_or(0)
    }

    /// Refuses a publish on `channel` when shutting down, or when it would
    /// add a channel past `--max-channels` and no channel is idle to evict.
    fn check_publish(&self, channel: &str, limits: &HubLimits) -> Result<(), Error> {
        if self.shutting_down {
            return Err(shutting_down());
        }
        let room = self.channels.contains_key(channel)
            || self.channels.len() < limits.max_channels
            || self.channels.values().any(|c| c.waiters.is_empty());
        if room {
            Ok(())
        } else {
            Err(too_many_channels(limits.max_channels))
        }
    }

    /// Stores `event` (whose id exceeds every stored id) on `name`, creating
    /// the channel if needed, and applies the limits. Returns the condvars of
    /// the channel's waiters and how many events the limits dropped.
    fn insert(
        &mut self,
        name: &str,
        event: Arc<Event>,
        limits: &HubLimits,
    ) -> (Vec<Arc<Waiter>>, usize) {
        let mut dropped = 0;
        let name = match self.channels.get_key_value(name) {
            Some((key, _)) => key.clone(),
            None => {
                // `check_publish` found room. If polls took it since (a
                // store commits in between), the channel goes past the limit
                // until one is removed, rather than losing a committed event.
                dropped += self
                    .make_room_for_channels(1, limits.max_channels)
                    .unwrap_or(0);
                let generation = self.new_generation();
                let dropped_through = self.unbury(name);
                let name: Arc<str> = Arc::from(name);
                self.channels
                    .insert(name.clone(), Channel::new(generation, dropped_through));
                name
            }
        };
        let ch = self.channels.get_mut(&name).expect("inserted above");
        let overflow = ch.push(event.clone(), limits.buffer_events);
        let wake: Vec<Arc<Waiter>> = ch.waiters.values().cloned().collect();
        self.order.push_back((event.id, name.clone()));
        self.stored_events += 1;
        self.stored_bytes += event.stored_bytes();
        dropped += self.forget(&name, &overflow);
        dropped += self.enforce_memory(limits);
        self.compact_order();
        (wake, dropped)
    }

    /// Removes `channel` and its events; returns the condvars of its
    /// waiters, which then find their channel gone.
    fn delete(&mut self, channel: &str) -> Vec<Arc<Waiter>> {
        self.unbury(channel);
        if let Some(pending) = self.pending.as_mut() {
            // Events dropped before the deletion left the store with it; a
            // loss recorded now would bring the channel's losses back.
            pending.changes.retain(
                |change| !matches!(change, Change::Dropped { channel: c, .. } if &**c == channel),
            );
        }
        let Some(mut ch) = self.channels.remove(channel) else {
            return Vec::new();
        };
        self.stored_events -= ch.len();
        while let Some(event) = ch.drop_oldest() {
            self.stored_bytes -= event.stored_bytes();
        }
        self.compact_order();
        ch.waiters.into_values().collect()
    }

    fn new_generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// `read` on a waiter's channels; for one channel (the usual case, N
    /// times per fan-out under the lock) without allocating the list.
    fn read_for(&self, waiter: &Waiter, cursor: u64) -> Batch {
        match waiter.channels.as_slice() {
            [(name, _)] => self.read(&[&**name], cursor, waiter.limit),
            channels => {
                let names: Vec<&str> = channels.iter().map(|(n, _)| &**n).collect();
                self.read(&names, cursor, waiter.limit)
            }
        }
    }

    /// Events after `cursor` on `names`, merged ascending by id, at most
    /// `limit` and at most `MAX_ANSWER_BYTES` of them (but at least one).
    fn read(&self, names: &[&str], cursor: u64, limit: usize) -> Batch {
        let mut merged = Batch::default();
        for name in names {
            if let Some(ch) = self.channels.get(*name) {
                let batch = ch.read_after(cursor, limit);
                merged.missed |= batch.missed;
                merged.dropped_through = merged.dropped_through.max(batch.dropped_through);
                merged.events.extend(batch.events);
            } else if let Some(dropped_through) = self.tombstones.get(*name) {
                merged.missed |= *dropped_through > cursor;
                merged.dropped_through = merged.dropped_through.max(*dropped_through);
            }
        }
        if names.len() > 1 {
            merged.events.sort_unstable_by_key(|e| e.id);
            merged.events.truncate(limit);
        }
        let mut answer_bytes = 0;
        let fits = merged.events.iter().position(|e| {
            answer_bytes += e.json.len() + 1;
            answer_bytes > MAX_ANSWER_BYTES
        });
        if let Some(first_over) = fits {
            // The rest comes with the client's next poll, after its new cursor.
            merged.events.truncate(first_over.max(1));
        }
        merged
    }

    /// A channel of the ticket that was deleted since it registered (its
    /// generation is gone), if any.
    fn deleted_channel(&self, waiter: &Waiter) -> Option<String> {
        let (name, _) = waiter.channels.iter().find(|(name, generation)| {
            self.channels.get(name).map(|c| c.generation) != Some(*generation)
        })?;
        Some(name.to_string())
    }

    /// Takes `waiter` off its channels' lists (once; later calls do nothing).
    fn unregister(&mut self, waiter: &Waiter) {
        if !waiter.registered.swap(false, Relaxed) {
            return;
        }
        for (name, generation) in &waiter.channels {
            if let Some(ch) = self.channels.get_mut(name) {
                if ch.generation == *generation {
                    ch.waiters.remove(&waiter.id);
                    self.remove_if_idle(name);
                }
            }
        }
    }

    /// Takes events dropped from `channel` off the totals and records them
    /// for the store; returns how many.
    fn forget(&mut self, channel: &Arc<str>, dropped: &[Arc<Event>]) -> usize {
        for event in dropped {
            self.stored_events -= 1;
            self.stored_bytes -= event.stored_bytes();
            self.record(Change::Dropped {
                channel: channel.clone(),
                id: event.id,
            });
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

    /// Makes room for `new` more channels under `max_channels` by evicting
    /// channels nobody waits on, the one holding the oldest event first: their
    /// events are dropped and a tombstone tells old cursors (`Abide-Missed`).
    /// Returns how many events were dropped, or `None` if every channel has
    /// waiters (bounded by `--max-waiters`), and then evicts nothing.
    fn make_room_for_channels(&mut self, new: usize, max_channels: usize) -> Option<usize> {
        let excess = (self.channels.len() + new).saturating_sub(max_channels);
        if excess == 0 {
            return Some(0);
        }
        let mut victims: Vec<Arc<str>> = Vec::with_capacity(excess);
        for (_, name) in &self.order {
            if victims.len() == excess {
                break;
            }
            let idle = self
                .channels
                .get(name)
                .is_some_and(|c| c.waiters.is_empty());
            if idle && !victims.contains(name) {
                victims.push(name.clone());
            }
        }
        if victims.len() < excess {
            return None;
        }
        let mut dropped = 0;
        for name in victims {
            let ch = self.channels.get_mut(&name).expect("found above");
            let mut lost = Vec::with_capacity(ch.len());
            while let Some(event) = ch.drop_oldest() {
                lost.push(event);
            }
            dropped += self.forget(&name, &lost);
            self.remove_if_idle(&name);
        }
        Some(dropped)
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
            self.remove_if_idle(&name);
            self.forget(&name, &[event]);
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

fn ids_exhausted() -> Error {
    Error::Internal("event ids are exhausted (2^53)".into())
}

fn too_many_channels(max: usize) -> Error {
    Error::Busy {
        message: format!("the channel limit is reached (--max-channels {max}); retry later"),
        retry_after_secs: 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::Sender;
    use std::thread;

    fn limits() -> HubLimits {
        HubLimits {
            buffer_events: 4,
            event_ttl: None,
            max_channels: 100,
            max_stored_bytes: 1 << 20,
            max_waiters: 2,
            max_waiters_per_client: None,
            max_stream: None,
        }
    }

    fn spec(channels: &[&str], cursor: u64, timeout_secs: u64) -> PollSpec {
        PollSpec {
            channels: channels.iter().map(|c| c.to_string()).collect(),
            cursor,
            timeout: Duration::from_secs(timeout_secs),
            limit: 100,
            stream: false,
            client: None,
        }
    }

    fn ids(answer: &Answer) -> Vec<u64> {
        match answer {
            Answer::Events { events, .. } => events.iter().map(|e| e.id).collect(),
            other => panic!("no events: {other:?}"),
        }
    }

    /// Waits for `ticket` on its own thread, then sends its answer to `done`.
    fn send_answer_on_thread(hub: &Hub, ticket: Ticket, done: Sender<Answer>) {
        let hub = hub.clone();
        thread::spawn(move || {
            let answer = hub.wait(&ticket);
            drop(ticket);
            done.send(answer).unwrap();
        });
    }

    /// Registers a poll that must wait and waits for it on its own thread.
    fn wait_on_thread(hub: &Hub, spec: PollSpec) -> thread::JoinHandle<Answer> {
        let PollStart::Wait(ticket) = hub.begin_poll(&spec).unwrap() else {
            panic!("expected a wait");
        };
        let hub = hub.clone();
        thread::spawn(move || hub.wait(&ticket))
    }

    fn now(hub: &Hub, spec: &PollSpec) -> Answer {
        match hub.begin_poll(spec).unwrap() {
            PollStart::Now(answer) => answer,
            PollStart::Wait(_) => panic!("expected an answer now"),
        }
    }

    /// A mirror takes events with the shared store's ids (raising its own
    /// sequence), learns of losses the store had before it held the events,
    /// and counts a cursor up to `MAX_CLOCK_SKEW` ahead of its clock as one
    /// the server issued (another node's, by Redis's clock).
    #[test]
    fn a_mirror_applies_foreign_ids_losses_and_skewed_cursors() {
        let hub = Hub::mirror(limits());
        assert_eq!(hub.link_up(), Some(false), "down until caught up");
        let ahead = wall_micros(SystemTime::now()) + 60_000_000;
        let event = |id| Event::new(id, "m", SystemTime::now(), Instant::now(), "1");
        let committed = [
            Committed::Lost {
                channel: Arc::from("m"),
                through: ahead - 5,
            },
            Committed::Event {
                channel: Arc::from("m"),
                event: event(ahead),
            },
            Committed::Lost {
                channel: Arc::from("gone"),
                through: 7,
            },
        ];
        drop(hub.apply(&committed));
        assert_eq!(hub.last_id(), ahead);
        let Answer::Events { events, missed } = now(&hub, &spec(&["m"], 0, 0)) else {
            panic!("events expected");
        };
        assert_eq!((events.len(), missed), (1, true), "the store lost some");
        assert!(!now_missed(&hub, &spec(&["m"], ahead - 5, 0)));
        assert!(now_missed(&hub, &spec(&["gone"], 3, 0)), "a tombstone");
        // A cursor a minute ahead of this clock waits (it is not "future").
        let PollStart::Wait(_) = hub.begin_poll(&spec(&["m"], ahead + 1, 10)).unwrap() else {
            panic!("a cursor from another node's clock must wait");
        };
        hub.set_link_down(LINK_SUBSCRIPTION, false);
        assert_eq!(hub.link_up(), Some(true));
        hub.set_link_down(LINK_WRITER, true);
        assert_eq!(hub.link_up(), Some(false));
        assert_eq!(Hub::new(limits()).link_up(), None, "no link in memory");
    }

    fn now_missed(hub: &Hub, spec: &PollSpec) -> bool {
        match now(hub, spec) {
            Answer::Events { missed, .. } | Answer::Empty { missed } => missed,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// An answer stops at MAX_ANSWER_BYTES of events (at least one event), and the next poll gets the rest in order.
    #[test]
    fn answers_are_bounded_in_bytes_and_the_rest_follows() {
        let hub = Hub::new(HubLimits {
            buffer_events: 100,
            max_stored_bytes: 64 << 20,
            ..limits()
        });
        let big = format!("\"{}\"", "x".repeat(100_000));
        let ids_published: Vec<u64> = (0..25)
            .map(|i| {
                hub.publish(if i % 2 == 0 { "a" } else { "b" }, &big)
                    .unwrap()
                    .id
            })
            .collect();
        let mut cursor = 0;
        let mut seen = Vec::new();
        while seen.len() < ids_published.len() {
            let mut poll = spec(&["a", "b"], cursor, 0);
            poll.limit = 1000;
            let Answer::Events { events, .. } = now(&hub, &poll) else {
                panic!("events expected");
            };
            let bytes: usize = events.iter().map(|e| e.json.len() + 1).sum();
            assert!(bytes <= MAX_ANSWER_BYTES, "{bytes} bytes in one answer");
            assert!(!events.is_empty());
            cursor = events.last().unwrap().id;
            seen.extend(events.iter().map(|e| e.id));
        }
        assert_eq!(seen, ids_published, "every event once, in order");
        let huge = format!("\"{}\"", "y".repeat(MAX_ANSWER_BYTES + 10));
        let id = hub.publish("c", &huge).unwrap().id;
        assert_eq!(
            ids(&now(&hub, &spec(&["c"], 0, 0))),
            [id],
            "one event always fits"
        );
    }

    /// At --max-channels, a new channel evicts the one nobody waits on that holds the oldest event; old cursors of it get missed; channels with waiters are never evicted.
    #[test]
    fn a_new_channel_evicts_the_oldest_idle_one_at_the_limit() {
        let hub = Hub::new(HubLimits {
            max_channels: 3,
            ..limits()
        });
        let a = hub.publish("a", "1").unwrap().id;
        hub.publish("b", "2").unwrap();
        let waiter = wait_on_thread(&hub, spec(&["c"], 0, 30));
        // a, b and c (a waiter) exist; d evicts a, the oldest idle one.
        let d = hub.publish("d", "4").unwrap().id;
        assert!(hub.channel_info("a").is_none(), "a was evicted");
        assert!(hub.channel_info("b").is_some() && hub.channel_info("c").is_some());
        assert!(matches!(
            now(&hub, &spec(&["a"], a - 1, 0)),
            Answer::Empty { missed: true }
        ));
        assert_eq!(hub.stats().events_dropped, 1);
        // e evicts b; then only c (waited on) and d, e remain: f evicts d.
        hub.publish("e", "5").unwrap();
        assert!(hub.channel_info("b").is_none());
        hub.publish("f", "6").unwrap();
        assert!(hub.channel_info("d").is_none(), "{d}");
        assert!(
            hub.channel_info("c").is_some(),
            "a channel with a waiter stays"
        );
        hub.publish("c", "7").unwrap();
        assert_eq!(ids(&waiter.join().unwrap()).len(), 1);
    }

    /// When every channel has waiters, a new channel is refused with 503 rather than evicting any.
    #[test]
    fn channels_with_waiters_are_never_evicted() {
        let hub = Hub::new(HubLimits {
            max_channels: 2,
            max_waiters: 4,
            ..limits()
        });
        let _a = wait_on_thread(&hub, spec(&["a"], 0, 30));
        let _b = wait_on_thread(&hub, spec(&["b"], 0, 30));
        let err = hub.publish("c", "1").unwrap_err();
        assert_eq!(err.status(), 503, "{err}");
        assert!(err.to_string().contains("--max-channels"), "{err}");
        hub.shut_down();
    }

    /// A poll is answered now when events follow its cursor or its timeout is 0, and waits otherwise.
    #[test]
    fn a_cursor_behind_the_channel_is_answered_now_otherwise_it_waits() {
        let hub = Hub::new(limits());
        let first = hub.publish("a", "1").unwrap().id;
        assert_eq!(ids(&now(&hub, &spec(&["a"], 0, 30))), [first]);
        assert!(matches!(
            now(&hub, &spec(&["a"], first, 0)),
            Answer::Empty { missed: false }
        ));
        assert!(matches!(
            hub.begin_poll(&spec(&["a"], first, 30)).unwrap(),
            PollStart::Wait(_)
        ));
    }

    /// A publish on one of a waiter's channels wakes it with the event, and the slot and channel are freed after.
    /// One publish answers every poll on the channel, however the wake
    /// chains run, and hands each the event without it re-reading.
    #[test]
    fn one_publish_answers_every_poll_it_releases() {
        let hub = Hub::new(HubLimits {
            max_waiters: 64,
            ..limits()
        });
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        for _ in 0..64 {
            let PollStart::Wait(ticket) = hub.begin_poll(&spec(&["fan"], 0, 60)).unwrap() else {
                panic!("expected a wait");
            };
            send_answer_on_thread(&hub, ticket, done_tx.clone());
        }
        let id = hub.publish("fan", r#""x""#).unwrap().id;
        for _ in 0..64 {
            // Hang guard: a broken chain leaves polls waiting their 60 s.
            let answer = done_rx.recv_timeout(Duration::from_secs(20)).unwrap();
            assert_eq!(ids(&answer), [id]);
        }
        assert_eq!(hub.stats().waiters, 0);
    }

    /// Regression: a poll handed its answer whose ticket is then dropped
    /// without taking it (its connection died) must still wake the polls
    /// chained behind it, which would otherwise wait out their timeout.
    #[test]
    fn a_poll_dropped_with_its_answer_unread_passes_its_turn_on() {
        let hub = Hub::new(HubLimits {
            max_waiters: 32,
            ..limits()
        });
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let mut unread = Vec::new();
        for i in 0..32 {
            let PollStart::Wait(ticket) = hub.begin_poll(&spec(&["fan"], 0, 60)).unwrap() else {
                panic!("expected a wait");
            };
            if i % 2 == 0 {
                unread.push(ticket);
                continue;
            }
            send_answer_on_thread(&hub, ticket, done_tx.clone());
        }
        let id = hub.publish("fan", r#""x""#).unwrap().id;
        drop(unread);
        for _ in 0..16 {
            let answer = done_rx.recv_timeout(Duration::from_secs(20)).unwrap();
            assert_eq!(ids(&answer), [id]);
        }
        assert_eq!(hub.stats().waiters, 0);
    }

    #[test]
    fn a_publish_wakes_the_waiter_of_its_channel() {
        let hub = Hub::new(limits());
        let PollStart::Wait(ticket) = hub.begin_poll(&spec(&["a", "b"], 0, 60)).unwrap() else {
            panic!("expected a wait");
        };
        let waiter = {
            let hub = hub.clone();
            thread::spawn(move || {
                let answer = hub.wait(&ticket);
                drop(ticket);
                answer
            })
        };
        let id = hub.publish("b", r#""x""#).unwrap().id;
        assert_eq!(ids(&waiter.join().unwrap()), [id]);
        assert_eq!(hub.stats().waiters, 0);
        assert_eq!(hub.stats().channels, 1, "only b, which holds the event");
    }

    /// At the cap a poll that would wait is refused with 503 while one answered now still succeeds.
    #[test]
    fn the_cap_refuses_a_poll_that_would_wait_but_not_one_answered_now() {
        let hub = Hub::new(limits());
        let held: Vec<_> = (0..2)
            .map(|_| hub.begin_poll(&spec(&["a"], 0, 60)).unwrap())
            .collect();
        let err = hub.begin_poll(&spec(&["a"], 0, 60)).err().unwrap();
        assert_eq!(err.status(), 503);
        hub.publish("c", "1").unwrap();
        assert_eq!(ids(&now(&hub, &spec(&["c"], 0, 60))).len(), 1);
        assert_eq!(hub.stats().polls_rejected, 1);
        drop(held);
        assert_eq!(hub.stats().waiters, 0);
    }

    /// A cursor above any id the server could have issued is answered at once, marked missed.
    #[test]
    fn a_future_cursor_gets_everything_now_marked_missed() {
        let hub = Hub::new(limits());
        let id = hub.publish("a", "1").unwrap().id;
        match now(&hub, &spec(&["a"], crate::hub::event::MAX_EVENT_ID, 60)) {
            Answer::Events { events, missed } => {
                assert_eq!(events[0].id, id);
                assert!(missed);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            now(&hub, &spec(&["empty"], crate::hub::event::MAX_EVENT_ID, 60)),
            Answer::Empty { missed: true }
        ));
    }

    /// The stored-bytes limit drops the globally oldest events, and old cursors of an emptied channel are told.
    #[test]
    fn the_memory_limit_drops_the_oldest_events_across_channels() {
        let one = Event::new(1, "a", SystemTime::now(), Instant::now(), "1").stored_bytes();
        let hub = Hub::new(HubLimits {
            max_stored_bytes: 2 * one + one / 2,
            ..limits()
        });
        let first = hub.publish("a", "1").unwrap().id;
        hub.publish("b", "2").unwrap();
        let third = hub.publish("c", "3").unwrap().id;
        let stats = hub.stats();
        assert_eq!((stats.events_stored, stats.events_dropped), (2, 1));
        // Channel a lost its only event: an old cursor is told, a new one is not.
        assert!(matches!(
            now(&hub, &spec(&["a"], first - 1, 0)),
            Answer::Empty { missed: true }
        ));
        assert!(matches!(
            now(&hub, &spec(&["a"], first, 0)),
            Answer::Empty { missed: false }
        ));
        assert_eq!(ids(&now(&hub, &spec(&["c"], 0, 0))), [third]);
    }

    /// Deleting a channel answers its waiter Gone at once.
    #[test]
    fn deleting_a_channel_answers_its_waiter_gone() {
        let hub = Hub::new(limits());
        let waiter = wait_on_thread(&hub, spec(&["a"], 0, 60));
        hub.delete("a");
        assert!(matches!(waiter.join().unwrap(), Answer::Gone { channel } if channel == "a"));
    }

    /// Shutdown answers waiters with an empty answer and refuses new publishes.
    #[test]
    fn shutting_down_answers_waiters_empty_and_refuses_new_work() {
        let hub = Hub::new(limits());
        let waiter = wait_on_thread(&hub, spec(&["a"], 0, 60));
        hub.shut_down();
        assert!(matches!(
            waiter.join().unwrap(),
            Answer::Empty { missed: false }
        ));
        assert_eq!(hub.publish("a", "1").unwrap_err().status(), 503);
    }

    /// With a store, events become visible only through `apply`, what the
    /// limits drop is recorded (and signalled once) for the store, changes
    /// given back come before newer ones, and a committed deletion answers
    /// the channel's waiter Gone.
    #[test]
    fn a_store_hub_shows_only_applied_events_and_records_its_drops() {
        let (nudge, nudged) = crossbeam_channel::bounded(1);
        let hub = Hub::with_store(
            HubLimits {
                buffer_events: 2,
                ..limits()
            },
            nudge,
        );
        let (issued, _) = hub.issue_ids(3, SystemTime::now()).unwrap();
        assert!(issued.windows(2).all(|w| w[0] < w[1]));
        assert!(matches!(
            now(&hub, &spec(&["a"], 0, 0)),
            Answer::Empty { missed: false }
        ));
        let committed: Vec<Committed> = issued
            .iter()
            .map(|&id| Committed::Event {
                channel: Arc::from("a"),
                event: Event::new(id, "a", SystemTime::now(), Instant::now(), "1"),
            })
            .collect();
        drop(hub.apply(&committed));
        assert_eq!(ids(&now(&hub, &spec(&["a"], issued[0], 0))), issued[1..]);
        assert!(nudged.try_recv().is_ok(), "the store was told");
        let dropped = Change::Dropped {
            channel: Arc::from("a"),
            id: issued[0],
        };
        assert_eq!(hub.take_changes(1), std::slice::from_ref(&dropped));
        assert!(hub.take_changes(1).is_empty());

        // A failed commit gives its changes back, ahead of newer ones.
        let more = hub.issue_ids(1, SystemTime::now()).unwrap().0[0];
        drop(hub.apply(&[Committed::Event {
            channel: Arc::from("a"),
            event: Event::new(more, "a", SystemTime::now(), Instant::now(), "2"),
        }]));
        hub.return_changes(vec![dropped.clone()]);
        let newer = Change::Dropped {
            channel: Arc::from("a"),
            id: issued[1],
        };
        assert!(hub.take_changes(3).is_empty(), "two are fewer than three");
        assert_eq!(hub.take_changes(2), [dropped, newer]);

        let waiter = wait_on_thread(&hub, spec(&["a"], more, 60));
        drop(hub.apply(&[Committed::Delete {
            channel: Arc::from("a"),
        }]));
        assert!(matches!(waiter.join().unwrap(), Answer::Gone { .. }));
        assert!(hub.channel_info("a").is_none());
    }

    /// A stream gets what follows its cursor in order and advances; a gap
    /// is announced once, also when nothing after it is held; a cursor this
    /// server cannot have issued is announced as a gap; the stream ends at
    /// shutdown. It holds a slot, counted as a stream.
    #[test]
    fn a_stream_advances_and_announces_each_gap_once() {
        let hub = Hub::new(HubLimits {
            buffer_events: 2,
            max_waiters: 4,
            ..limits()
        });
        let first = hub.publish("a", "1").unwrap().id;
        let ids: Vec<u64> = (2..=4)
            .map(|n| hub.publish("a", &n.to_string()).unwrap().id)
            .collect();
        let mut poll = spec(&["a"], first, 60);
        poll.stream = true;
        let PollStart::Wait(mut ticket) = hub.begin_poll(&poll).unwrap() else {
            panic!("a stream always waits");
        };
        assert_eq!(hub.stats().streams, 1);
        let soon = Instant::now() + Duration::from_secs(60);
        match hub.next_for_stream(&mut ticket, soon) {
            StreamStep::Events { events, missed } => {
                assert!(missed, "event {} was dropped", ids[0]);
                assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), ids[1..]);
            }
            other => panic!("{other:?}"),
        }
        // Nothing new: a heartbeat when due, and no second gap.
        assert!(matches!(
            hub.next_for_stream(&mut ticket, Instant::now()),
            StreamStep::Heartbeat
        ));

        // A cursor this server cannot have issued: what is held, after a gap.
        let mut poll = spec(&["a"], crate::hub::event::MAX_EVENT_ID, 60);
        poll.stream = true;
        let PollStart::Wait(mut future) = hub.begin_poll(&poll).unwrap() else {
            panic!("a stream always waits");
        };
        match hub.next_for_stream(&mut future, soon) {
            StreamStep::Events { missed, .. } => assert!(missed, "a cursor from elsewhere"),
            other => panic!("{other:?}"),
        }
        hub.shut_down();
        assert!(matches!(
            hub.next_for_stream(&mut ticket, soon),
            StreamStep::End
        ));
        drop((ticket, future));
        assert_eq!(hub.stats().streams, 0);
    }

    /// A client holds at most its share of slots (429, counted); another client still gets one, and a slot given back is free again.
    #[test]
    fn a_client_holds_at_most_its_share_of_slots() {
        let hub = Hub::new(HubLimits {
            max_waiters: 4,
            max_waiters_per_client: Some(2),
            ..limits()
        });
        let client = |name: &str| Some(Client::Token(name.into()));
        let poll = |who: &str| PollSpec {
            client: client(who),
            ..spec(&["a"], 0, 60)
        };
        let take = |who: &str| match hub.begin_poll(&poll(who)) {
            Ok(PollStart::Wait(ticket)) => Ok(ticket),
            Ok(PollStart::Now(answer)) => panic!("{answer:?}"),
            Err(err) => Err(err),
        };
        let first = take("x").unwrap();
        let _second = take("x").unwrap();
        let err = take("x").err().unwrap();
        assert_eq!(err.status(), 429);
        assert!(
            err.to_string().contains("--max-waiters-per-client"),
            "{err}"
        );
        assert_eq!(hub.stats().requests_refused.client_waiters, 1);
        let _other = take("y").unwrap();
        drop(first);
        let _third = take("x").unwrap();
        assert_eq!(hub.stats().waiters, 3);
        // Entries go with the last slot: no client is remembered for nothing.
        drop((_second, _third, _other));
        assert!(hub.shared.state.lock().slots_by_client.is_empty());
    }

    /// `end_streams` ends every open stream (they reconnect under new rules) and leaves held polls waiting.
    #[test]
    fn end_streams_ends_streams_not_polls() {
        let hub = Hub::new(HubLimits {
            max_waiters: 4,
            ..limits()
        });
        let mut stream_spec = spec(&["a"], 0, 60);
        stream_spec.stream = true;
        let PollStart::Wait(mut stream) = hub.begin_poll(&stream_spec).unwrap() else {
            panic!("a stream always waits");
        };
        let poll = wait_on_thread(&hub, spec(&["a"], 0, 60));
        hub.end_streams();
        let later = Instant::now() + Duration::from_secs(60);
        assert!(matches!(
            hub.next_for_stream(&mut stream, later),
            StreamStep::End
        ));
        // The poll still waits: a publish answers it with the event.
        let id = hub.publish("a", "1").unwrap().id;
        assert_eq!(ids(&poll.join().unwrap()), [id]);
    }
}
