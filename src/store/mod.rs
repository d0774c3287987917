//! Where events outlive memory: the journal thread and its group commit.
//!
//! With `--data-dir`, a publish or a deletion is not done by the writer
//! thread that took the request. The writer queues a `Record` to the one
//! journal thread (a bounded crossbeam channel) and blocks on its receipt.
//! The journal takes every record queued meanwhile as one batch (at most
//! `MAX_BATCH_RECORDS`), has the hub issue their ids, writes them and what
//! the hub dropped since the last batch (`hub::Change`) in one SQLite
//! transaction, and only after the commit makes them visible (`Hub::apply`),
//! answers the receipts, then wakes the waiters. So a `201` means committed,
//! no poll ever sees an event that a crash could take back, and concurrent
//! publishes share one commit (and one `fsync` with `--sync full`).
//!
//! The journal thread is the only one that touches the database after
//! start. It never holds the hub's lock while writing (the hub's lock stays
//! a leaf), and it blocks in `select!` with no timeout when there is nothing
//! to write (idle costs no wake-up). Without `--data-dir` none of this
//! exists: writers publish straight into the hub.

pub mod redis;
pub mod sqlite;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded, select};

use crate::error::Error;
use crate::hub::event::Event;
use crate::hub::{Committed, Hub, HubLimits};
use crate::store::sqlite::{Database, Op, Sync};

/// Most records in one commit; the rest wait for the next one.
pub const MAX_BATCH_RECORDS: usize = 256;

/// A batch takes no more records once its events' data reach this, so that
/// one commit (and the WAL) stays near this size even with large events.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Dropped events are deleted from the file once this many wait (by the
/// commit of a batch of publishes), or `DROPPED_FLUSH_DELAY` after the first
/// was dropped (by a commit of their own if nothing else comes). Deleting
/// the oldest events rewrites the pages at the left edge of the events table
/// and the channels' losses: done at every commit that is two more pages per
/// event with one publisher, about three times the bytes written. A crash
/// before they are written costs nothing: at start the same limits drop the
/// same events again.
pub const DROPS_PER_COMMIT: usize = 64;

/// At most this long after an event is dropped from memory, it is deleted
/// from the file.
pub const DROPPED_FLUSH_DELAY: Duration = Duration::from_secs(1);

/// How long a record may wait in the queue before the journal takes it; past
/// that its publisher is answered `503` and the journal skips it. Once taken,
/// a record's publisher waits for the commit's outcome, whatever it takes.
pub const MAX_QUEUE_WAIT: Duration = Duration::from_secs(10);

/// Stack of the journal thread: SQLite's b-tree balancing keeps a few pages'
/// worth of state on the stack.
const JOURNAL_STACK_BYTES: usize = 512 * 1024;

/// Events read back per call to `Hub::restore_events` at start.
const RESTORE_CHUNK_EVENTS: usize = 4096;

/// A record's claim: queued, taken by the journal, or given up by its publisher.
const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

/// Where a record's outcome goes, and who may still act on it.
pub(crate) struct Receipt<T> {
    claim: Arc<AtomicU8>,
    to: Sender<Result<T, Error>>,
}

impl<T> Receipt<T> {
    /// Takes the record for a commit, unless its publisher gave up on it.
    pub(crate) fn take(&self) -> bool {
        self.claim
            .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(crate) fn answer(&self, outcome: Result<T, Error>) {
        // The publisher waits for it; a full or closed channel cannot happen
        // (one answer per receipt) or means it is gone.
        let _ = self.to.try_send(outcome);
    }
}

enum Record {
    Publish {
        channel: Arc<str>,
        data_json: String,
        receipt: Receipt<Arc<Event>>,
    },
    Delete {
        channel: Arc<str>,
        receipt: Receipt<()>,
    },
    /// Commit what is queued, then end the thread.
    Stop,
}

impl Record {
    /// Bytes of event data it adds to a commit.
    fn data_bytes(&self) -> usize {
        match self {
            Record::Publish { data_json, .. } => data_json.len(),
            Record::Delete { .. } | Record::Stop => 0,
        }
    }
}

/// Where writer threads send publishes and deletions when events are kept
/// outside memory: the SQLite journal (`--data-dir`) or Redis (`--redis`).
#[derive(Clone)]
pub enum Store {
    Journal(Journal),
    Redis(redis::Link),
}

impl Store {
    /// Stores one event; returns it once stored and visible on this node.
    pub fn publish(&self, channel: &str, data_json: String) -> Result<Arc<Event>, Error> {
        match self {
            Store::Journal(journal) => journal.publish(channel, data_json),
            Store::Redis(link) => link.publish(channel, data_json),
        }
    }

    /// Deletes a channel; returns once the deletion is stored.
    pub fn delete(&self, channel: &str) -> Result<(), Error> {
        match self {
            Store::Journal(journal) => journal.delete(channel),
            Store::Redis(link) => link.delete(channel),
        }
    }
}

/// The threads behind a `Store`.
pub enum StoreThreads {
    Journal(JournalThread),
    /// Boxed: it holds the Redis address with its connection settings.
    Redis(Box<redis::RedisThreads>),
}

impl StoreThreads {
    pub fn store(&self) -> Store {
        match self {
            StoreThreads::Journal(journal) => Store::Journal(journal.journal()),
            StoreThreads::Redis(threads) => Store::Redis(threads.link()),
        }
    }

    /// Stores what is queued and ends the threads (after every writer that
    /// could queue more has stopped, or given up on).
    pub fn stop(self) {
        match self {
            StoreThreads::Journal(journal) => journal.stop(),
            StoreThreads::Redis(threads) => threads.stop(),
        }
    }
}

/// The handle writers hold: queues records and waits for their receipts.
#[derive(Clone)]
pub struct Journal {
    records: Sender<Record>,
    hub: Hub,
}

/// The running journal thread.
pub struct JournalThread {
    journal: Journal,
    thread: JoinHandle<()>,
}

/// Opens the database in `dir`, rebuilds the hub from it (under today's
/// limits), and starts the journal thread. `queue_records` bounds the
/// records waiting for a commit (one per writer thread at most is normal).
pub fn open(
    dir: &Path,
    sync: Sync,
    limits: HubLimits,
    queue_records: usize,
) -> Result<(Hub, JournalThread), String> {
    let db = Database::open(dir, sync)?;
    let (nudge_tx, nudge_rx) = bounded(1);
    let hub = Hub::with_store(limits, nudge_tx);
    let loaded = db.load_channels()?;
    hub.restore(loaded.tombstones, loaded.last_id);
    // Events go into the hub a few thousand at a time, so that what today's
    // limits drop at once is never all held in memory.
    let mut events = Vec::with_capacity(RESTORE_CHUNK_EVENTS);
    db.load_events(|channel, event| {
        events.push((channel, event));
        if events.len() == RESTORE_CHUNK_EVENTS {
            hub.restore_events(events.drain(..));
        }
    })?;
    hub.restore_events(events);
    hub.restored();
    let (records_tx, records_rx) = bounded(queue_records.max(1) + 1);
    let journal = Journal {
        records: records_tx,
        hub: hub.clone(),
    };
    let thread = {
        let hub = hub.clone();
        thread::Builder::new()
            .name("abide-journal".into())
            .stack_size(JOURNAL_STACK_BYTES)
            .spawn(move || run(db, hub, records_rx, nudge_rx))
            .map_err(|e| format!("cannot start the journal thread: {e}"))?
    };
    Ok((hub, JournalThread { journal, thread }))
}

impl JournalThread {
    pub fn journal(&self) -> Journal {
        self.journal.clone()
    }

    /// Commits what is queued and ends the thread (after every writer that
    /// could queue more has stopped, or given up on).
    pub fn stop(self) {
        let sent = self
            .journal
            .records
            .send_timeout(Record::Stop, Duration::from_secs(5));
        match sent {
            Ok(()) => {
                let _ = self.thread.join();
            }
            // Wedged on its disk: it is left to end with the process (the
            // file stays consistent; what was not committed was not acknowledged).
            Err(_) => eprintln!("abide: the journal did not take the stop within 5 s"),
        }
    }
}

impl Journal {
    /// Stores one event; returns it once committed and visible.
    pub fn publish(&self, channel: &str, data_json: String) -> Result<Arc<Event>, Error> {
        self.hub.check_publish(channel)?;
        let channel = Arc::from(channel);
        self.submit(|receipt| Record::Publish {
            channel,
            data_json,
            receipt,
        })
    }

    /// Deletes a channel; returns once the deletion is committed and its
    /// waiters are answered `410`.
    pub fn delete(&self, channel: &str) -> Result<(), Error> {
        let channel = Arc::from(channel);
        self.submit(|receipt| Record::Delete { channel, receipt })
    }

    fn submit<T>(&self, record: impl FnOnce(Receipt<T>) -> Record) -> Result<T, Error> {
        submit(&self.records, "the journal", record)
    }
}

/// Queues the record `record` builds to the store thread `store` names and
/// waits for its outcome: `503` if the queue is full, or if the thread does
/// not take it within `MAX_QUEUE_WAIT` (then it is skipped, never stored).
/// Once taken, the outcome is the thread's, however long it takes.
pub(crate) fn submit<R, T>(
    records: &Sender<R>,
    store: &str,
    record: impl FnOnce(Receipt<T>) -> R,
) -> Result<T, Error> {
    let claim = Arc::new(AtomicU8::new(QUEUED));
    let (to, outcome) = bounded(1);
    let record = record(Receipt {
        claim: claim.clone(),
        to,
    });
    match records.try_send(record) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return Err(Error::Busy {
                message: format!("{store} queue is full; retry later"),
                retry_after_secs: 1,
            });
        }
        Err(TrySendError::Disconnected(_)) => return Err(stopped()),
    }
    match outcome.recv_timeout(MAX_QUEUE_WAIT) {
        Ok(outcome) => outcome,
        Err(RecvTimeoutError::Disconnected) => Err(dropped()),
        Err(RecvTimeoutError::Timeout) => {
            let given_up = claim
                .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if given_up {
                Err(Error::Busy {
                    message: format!(
                        "the store did not take the event within {} s; it was not stored; retry later",
                        MAX_QUEUE_WAIT.as_secs()
                    ),
                    retry_after_secs: 5,
                })
            } else {
                // Taken: its commit decides, so wait for the outcome.
                outcome.recv().unwrap_or_else(|_| Err(dropped()))
            }
        }
    }
}

/// Adds to `batch` the records queued in `records`, up to
/// `MAX_BATCH_RECORDS` records or `MAX_BATCH_BYTES` of event data
/// (`data_bytes` of each), without waiting.
pub(crate) fn fill_batch<R>(
    records: &Receiver<R>,
    batch: &mut Vec<R>,
    data_bytes: impl Fn(&R) -> usize,
) {
    let mut bytes: usize = batch.iter().map(&data_bytes).sum();
    while batch.len() < MAX_BATCH_RECORDS && bytes < MAX_BATCH_BYTES {
        match records.try_recv() {
            Ok(record) => {
                bytes += data_bytes(&record);
                batch.push(record);
            }
            Err(_) => break,
        }
    }
}

/// The store thread dropped a record without an answer (a bug; it logged it).
pub(crate) fn dropped() -> Error {
    Error::Internal("the store failed on this request; see the server log".into())
}

pub(crate) fn stopped() -> Error {
    Error::Busy {
        message: "server is shutting down".into(),
        retry_after_secs: 1,
    }
}

/// The journal thread: batches, commits, applies, answers, wakes.
fn run(mut db: Database, hub: Hub, records: Receiver<Record>, nudges: Receiver<()>) {
    let mut failures = Failures::default();
    // What the hub dropped while loading leaves the file now.
    commit(&mut db, &hub, Vec::new(), true, &mut failures);
    // When the dropped events the hub holds for us must be written, even
    // without a publish to carry them (set when it signals the first).
    let mut drops_due: Option<Instant> = None;
    loop {
        let mut batch = Vec::new();
        let due = drops_due.map_or_else(crossbeam_channel::never, crossbeam_channel::at);
        select! {
            recv(records) -> record => match record {
                Ok(record) => batch.push(record),
                Err(_) => break,
            },
            recv(nudges) -> _ => {
                drops_due.get_or_insert_with(|| Instant::now() + DROPPED_FLUSH_DELAY);
                continue;
            },
            recv(due) -> _ => {}
        }
        fill_batch(&records, &mut batch, Record::data_bytes);
        let stop = batch.iter().any(|r| matches!(r, Record::Stop));
        let all_drops = stop || drops_due.is_some_and(|due| Instant::now() >= due);
        // A bug in a commit must not end the journal: the batch's receipts
        // are dropped (their publishers get `500`) and the next batch runs.
        let done = catch_unwind(AssertUnwindSafe(|| {
            commit(&mut db, &hub, batch, all_drops, &mut failures)
        }));
        match done {
            // The drops were written: the next one signals again.
            Ok(Some(true)) => drops_due = None,
            // Still held, or given back by a failed commit: written by the
            // next commit that reaches the threshold, or when due (a failed
            // one is retried a delay later, not at once).
            Ok(Some(false)) | Ok(None) => {
                if drops_due.is_some_and(|due| Instant::now() >= due) {
                    drops_due = Some(Instant::now() + DROPPED_FLUSH_DELAY);
                }
            }
            Err(_) => {
                eprintln!("abide: the journal failed on a batch; its publishes were refused");
            }
        }
        if stop {
            break;
        }
    }
    // Anything that raced the stop gets an answer.
    for record in records.try_iter() {
        match record {
            Record::Publish { receipt, .. } => receipt.answer(Err(stopped())),
            Record::Delete { receipt, .. } => receipt.answer(Err(stopped())),
            Record::Stop => {}
        }
    }
    commit(&mut db, &hub, Vec::new(), true, &mut failures);
}

/// Failed commits in a row, so that a full disk logs one line when it
/// starts failing and one when it works again, not one per batch.
#[derive(Default)]
struct Failures {
    in_a_row: u64,
}

impl Failures {
    fn failed(&mut self, db: &Database, err: &sqlite::CommitError) {
        if self.in_a_row == 0 {
            eprintln!(
                "abide: commit to {} failed: {err}; publishes are refused until commits work again",
                db.path().display()
            );
        }
        self.in_a_row += 1;
    }

    fn succeeded(&mut self, db: &Database) {
        if self.in_a_row > 0 {
            eprintln!(
                "abide: commits to {} work again after {} failed",
                db.path().display(),
                self.in_a_row
            );
            self.in_a_row = 0;
        }
    }
}

/// Commits one batch, with what the hub dropped if there are at least
/// `DROPS_PER_COMMIT` of them (or any, with `all_drops`), then makes it
/// visible and answers it; on failure answers every record with the error
/// and gives the dropped events back to the hub for the next commit.
/// Returns whether a commit was made (`None` if there was nothing to write)
/// and took the drops.
fn commit(
    db: &mut Database,
    hub: &Hub,
    batch: Vec<Record>,
    all_drops: bool,
    failures: &mut Failures,
) -> Option<bool> {
    let batch: Vec<Record> = batch
        .into_iter()
        .filter(|record| match record {
            Record::Publish { receipt, .. } => receipt.take(),
            Record::Delete { receipt, .. } => receipt.take(),
            Record::Stop => false,
        })
        .collect();
    let changes = hub.take_changes(if all_drops { 1 } else { DROPS_PER_COMMIT });
    if batch.is_empty() && changes.is_empty() {
        return None;
    }
    let took_drops = !changes.is_empty();
    let publishes = batch
        .iter()
        .filter(|r| matches!(r, Record::Publish { .. }))
        .count();
    let at = SystemTime::now();
    let at_ms = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let (ids, last_id) = match hub.issue_ids(publishes, at) {
        Ok(issued) => issued,
        Err(err) => {
            hub.return_changes(changes);
            answer_all(&batch, &err);
            return Some(false);
        }
    };
    let mut next_id = ids.iter();
    let mut ops: Vec<Op> = Vec::with_capacity(batch.len());
    for record in &batch {
        match record {
            Record::Publish {
                channel, data_json, ..
            } => {
                let id = *next_id.next().expect("one id per publish");
                ops.push(Op::Insert {
                    id,
                    channel,
                    at_ms,
                    data_json,
                });
            }
            Record::Delete { channel, .. } => {
                // The file holds events of the channel only if memory does,
                // or a pending change or this batch names it.
                let rows = hub.holds(channel)
                    || changes.iter().any(|c| c.channel() == &**channel)
                    || ops
                        .iter()
                        .any(|op| matches!(op, Op::Insert { channel: c, .. } if c == &&**channel));
                ops.push(Op::Delete {
                    channel,
                    last_id,
                    rows,
                });
            }
            Record::Stop => {}
        }
    }
    let outcome = db.commit(&changes, &ops);
    drop(ops);
    if let Err(err) = outcome {
        hub.count_store_error();
        failures.failed(db, &err);
        hub.return_changes(changes);
        answer_all(&batch, &err.to_error());
        return Some(false);
    }
    hub.count_store_commit();
    failures.succeeded(db);
    // The event as committed: its timestamp is the stored millisecond.
    let at = UNIX_EPOCH + Duration::from_millis(at_ms);
    let now = Instant::now();
    let mut issued = ids.into_iter();
    let committed: Vec<Committed> = batch
        .iter()
        .filter_map(|record| match record {
            Record::Publish {
                channel, data_json, ..
            } => {
                let id = issued.next().expect("one id per publish");
                Some(Committed::Event {
                    channel: channel.clone(),
                    event: Event::new(id, channel, at, now, data_json),
                })
            }
            Record::Delete { channel, .. } => Some(Committed::Delete {
                channel: channel.clone(),
            }),
            Record::Stop => None,
        })
        .collect();
    let wake = hub.apply(&committed);
    // Publishers first, then the waiters: a publisher's round trip does not
    // grow with the number of waiters.
    for (record, done) in batch.iter().zip(&committed) {
        match (record, done) {
            (Record::Publish { receipt, .. }, Committed::Event { event, .. }) => {
                receipt.answer(Ok(event.clone()));
            }
            (Record::Delete { receipt, .. }, Committed::Delete { .. }) => receipt.answer(Ok(())),
            _ => unreachable!("committed follows the batch"),
        }
    }
    drop(wake);
    Some(took_drops)
}

fn answer_all(batch: &[Record], err: &Error) {
    for record in batch {
        match record {
            Record::Publish { receipt, .. } => receipt.answer(Err(err.clone())),
            Record::Delete { receipt, .. } => receipt.answer(Err(err.clone())),
            Record::Stop => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::event::{MAX_EVENT_ID, wall_micros};
    use crate::store::sqlite::DATABASE_FILE;
    use std::path::PathBuf;

    /// A temporary data directory, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!(
                "abide-store-{name}-{}-{}",
                std::process::id(),
                fastrand::u32(..)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn limits() -> HubLimits {
        HubLimits {
            buffer_events: 100,
            event_ttl: None,
            max_channels: 100,
            max_stored_bytes: 1 << 20,
            max_waiters: 10,
            max_waiters_per_client: None,
            max_stream: None,
        }
    }

    fn insert(db: &mut Database, id: u64, channel: &str, at_ms: u64) {
        let op = Op::Insert {
            id,
            channel,
            at_ms,
            data_json: "1",
        };
        db.commit(&[], &[op]).unwrap();
    }

    /// Ids continue above the largest id a previous run issued, even when
    /// the clock now reads earlier (it stepped back), and even after the
    /// channel that held that id was deleted.
    #[test]
    fn ids_never_go_back_across_a_restart_even_when_the_clock_stepped_back() {
        let dir = Dir::new("ids");
        let hour_ahead = wall_micros(SystemTime::now()) + 3_600_000_000;
        {
            // As if the previous run's clock was an hour ahead.
            let mut db = Database::open(&dir.0, Sync::Normal).unwrap();
            insert(&mut db, hour_ahead, "a", 0);
        }
        let (hub, journal) = open(&dir.0, Sync::Normal, limits(), 4).unwrap();
        assert_eq!(hub.last_id(), hour_ahead);
        let event = journal.journal().publish("b", "2".into()).unwrap();
        assert_eq!(event.id, hour_ahead + 1);
        journal.journal().delete("a").unwrap();
        journal.journal().delete("b").unwrap();
        journal.stop();

        let (hub, journal) = open(&dir.0, Sync::Normal, limits(), 4).unwrap();
        assert_eq!(hub.stats().events_stored, 0, "both channels deleted");
        assert_eq!(hub.last_id(), hour_ahead + 1, "the floor outlives them");
        let next = journal.journal().publish("c", "3".into()).unwrap();
        assert!(next.id > hour_ahead + 1 && next.id <= MAX_EVENT_ID);
        journal.stop();
    }

    /// Events past `--event-ttl` at start are dropped and deleted from the
    /// file, and an old cursor learns of the loss.
    #[test]
    fn events_past_their_ttl_at_start_leave_the_file_and_count_as_missed() {
        let dir = Dir::new("ttl");
        let now_ms = wall_micros(SystemTime::now()) / 1000;
        {
            let mut db = Database::open(&dir.0, Sync::Normal).unwrap();
            insert(&mut db, 1_000, "old", now_ms - 7_200_000);
            insert(&mut db, 2_000, "new", now_ms - 60_000);
        }
        let ttl = HubLimits {
            event_ttl: Some(Duration::from_secs(3_600)),
            ..limits()
        };
        let (hub, journal) = open(&dir.0, Sync::Normal, ttl.clone(), 4).unwrap();
        let stats = hub.stats();
        assert_eq!((stats.events_stored, stats.events_dropped), (1, 1));
        journal.stop();

        let conn = rusqlite::Connection::open(dir.0.join(DATABASE_FILE)).unwrap();
        let ids: Vec<i64> = conn
            .prepare("SELECT id FROM events")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ids, [2_000], "the expired event left the file");
        let lost: i64 = conn
            .query_row(
                "SELECT dropped_through FROM channels WHERE name = 'old'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(lost, 1_000, "and its loss is remembered");
    }

    /// Concurrent publishes share commits, and each is answered with its
    /// own event once committed.
    #[test]
    fn concurrent_publishes_share_commits() {
        let dir = Dir::new("group");
        let (hub, journal) = open(&dir.0, Sync::Normal, limits(), 16).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let journal = journal.journal();
                thread::spawn(move || {
                    (0..50)
                        .map(|n| journal.publish(&format!("c{t}"), n.to_string()).unwrap().id)
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let mut ids: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let stats = hub.stats();
        assert_eq!(stats.events_published, 400);
        // Eight publishers blocked on their receipts at once queue behind
        // a commit in progress; the next commit takes them all.
        assert!(
            stats.store_commits < 400,
            "no commit was shared: {}",
            stats.store_commits
        );
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 400, "every id once");
        journal.stop();
    }

    /// A new file gets the current schema and abide's mark; opened again it
    /// is taken as it is.
    #[test]
    fn a_new_file_gets_the_schema_and_reopens_unchanged() {
        let dir = Dir::new("schema");
        drop(Database::open(&dir.0, Sync::Full).unwrap());
        drop(Database::open(&dir.0, Sync::Full).unwrap());
        let conn = rusqlite::Connection::open(dir.0.join(DATABASE_FILE)).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, sqlite::SCHEMA_VERSION as i64);
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 3);
    }

    /// A dropped event leaves the file about a second after it was dropped
    /// even when nothing more is published (a commit of its own), and the
    /// file then holds exactly what memory holds.
    #[test]
    fn dropped_events_leave_the_file_without_another_publish() {
        let dir = Dir::new("drops");
        let small = HubLimits {
            buffer_events: 2,
            ..limits()
        };
        let (hub, journal) = open(&dir.0, Sync::Normal, small, 4).unwrap();
        for n in 0..3 {
            journal.journal().publish("a", n.to_string()).unwrap();
        }
        let commits = hub.stats().store_commits;
        assert_eq!(commits, 3, "one commit per publish; the drop waits");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while hub.stats().store_commits == commits {
            assert!(
                std::time::Instant::now() < deadline,
                "the drop was never written"
            );
            thread::sleep(Duration::from_millis(20)); // sync-ok: re-check a condition before its deadline
        }
        journal.stop();
        let conn = rusqlite::Connection::open(dir.0.join(DATABASE_FILE)).unwrap();
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2);
    }
}
