//! The SQLite file under `--data-dir`: opening and checking it, its schema
//! and migrations, reading it back at start, and writing one batch as one
//! transaction.
//!
//! Owns the `rusqlite::Connection` and every SQL statement. Knows nothing of
//! HTTP, waiters or the hub's lock: the journal thread (`store/mod.rs`) calls
//! it, and so does `start` (on the main thread) to open and load the file
//! before serving.
//!
//! The file is opened in WAL mode with SQLite's exclusive locking mode: the
//! lock is taken at open and held until the process ends (the kernel drops it
//! when a process is killed), so a second abide on the same directory is
//! refused, and no `-shm` file is needed. Ids are the table's `INTEGER
//! PRIMARY KEY` (the rowid), so new events append at the right edge of the
//! b-tree and dropped ones leave at the left; pages freed there are reused.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use crate::api::request::valid_channel_name;
use crate::error::Error;
use crate::hub::Change;
use crate::hub::event::Event;

/// The database file's name inside `--data-dir`.
pub const DATABASE_FILE: &str = "abide.db";

/// Marks the file as abide's (`PRAGMA application_id`, the bytes "abid").
const APPLICATION_ID: i32 = 0x6162_6964;

/// The schema, one step per version: `MIGRATIONS[n]` takes version `n` to
/// `n + 1` (`PRAGMA user_version`). A new version appends a step; a file of
/// any older version is brought up to date at start, in one transaction.
const MIGRATIONS: &[&str] = &[
    // 0 → 1: events, channels' losses, the id floor.
    "CREATE TABLE events (
        id INTEGER PRIMARY KEY,       -- the event id (also the rowid)
        channel TEXT NOT NULL,
        at_ms INTEGER NOT NULL,       -- publish time, Unix milliseconds
        data TEXT NOT NULL            -- the published value, compact JSON
    );
    -- Largest id each channel lost (overflow, age, memory limit) while a
    -- cursor could still ask for it; kept for empty channels too (tombstones).
    CREATE TABLE channels (
        name TEXT PRIMARY KEY,
        dropped_through INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- 'id_floor': ids issued before a deletion removed them from both tables.
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;",
];

/// The schema version this abide writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// The WAL is truncated to this after a checkpoint. SQLite checkpoints it
/// once it holds 1,000 pages (about 1 MiB of 1 KiB pages), so it stays about
/// this size, and only a commit larger than that (a batch is at most
/// `MAX_BATCH_BYTES` of events plus one event) makes it grow for a while.
pub const MAX_WAL_BYTES: i64 = 1024 * 1024 + 64 * 1024;

/// Page size of a new database. Every commit appends each page it changed
/// to the WAL (an insert at the right edge of `events`, a deletion at its
/// left edge, the channel's losses: about three pages), so small pages mean
/// fewer bytes written per event on an SD card. Measured with 4 publishers
/// of 100-byte events (`/proc/self/io`, `write_bytes`, with the oldest
/// event deleted at every commit): 3.6 KiB written per event with 1 KiB
/// pages, 5.4 with 2 KiB, 9.3 with SQLite's default 4 KiB; 2,000-byte
/// events: 9.0, 12.7 and 21.8 KiB.
const PAGE_BYTES: i64 = 1024;

/// How commits reach the disk (`--sync`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sync {
    /// `synchronous = NORMAL`: a commit is in the operating system's hands
    /// when acknowledged (it survives the process being killed); the WAL is
    /// flushed to the device at checkpoints, so a power cut may lose the last
    /// commits.
    Normal,
    /// `synchronous = FULL`: every commit is flushed to the device (`fsync`)
    /// before it is acknowledged; it survives a power cut.
    Full,
}

impl std::str::FromStr for Sync {
    type Err = String;
    fn from_str(s: &str) -> Result<Sync, String> {
        match s {
            "normal" => Ok(Sync::Normal),
            "full" => Ok(Sync::Full),
            other => Err(format!("--sync must be normal or full, got {other:?}")),
        }
    }
}

impl Sync {
    pub fn name(self) -> &'static str {
        match self {
            Sync::Normal => "normal",
            Sync::Full => "full",
        }
    }
}

/// One step of a batch, in the order the journal received it.
#[derive(Debug)]
pub enum Op<'a> {
    Insert {
        id: u64,
        channel: &'a str,
        at_ms: u64,
        data_json: &'a str,
    },
    /// Deletes a channel's events and its losses; `last_id` is the largest
    /// id issued so far, kept as the id floor. Without `rows` the file holds
    /// no event of it (the journal knows), and the table is not scanned.
    Delete {
        channel: &'a str,
        last_id: u64,
        rows: bool,
    },
}

/// What the file held, read back at start.
pub struct Loaded {
    /// Channels with the largest id each lost, least recent loss first.
    pub tombstones: Vec<(Arc<str>, u64)>,
    /// The largest id ever issued.
    pub last_id: u64,
}

/// Why a commit failed.
#[derive(Debug)]
pub struct CommitError(rusqlite::Error);

impl CommitError {
    /// The answer a publish (or deletion) gets: `507` when the disk is full,
    /// `503` for any other failure; both are worth retrying.
    pub fn to_error(&self) -> Error {
        match self.0.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => Error::StorageFull {
                message: "the disk is full; nothing was stored; retry later".into(),
                retry_after_secs: 30,
            },
            _ => Error::Busy {
                message: format!(
                    "the store could not commit ({}); nothing was stored; retry later",
                    self.0
                ),
                retry_after_secs: 5,
            },
        }
    }
}

impl std::fmt::Display for CommitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

pub struct Database {
    conn: Connection,
    path: PathBuf,
}

impl Database {
    /// Opens (or creates) `dir/abide.db`, takes its lock, checks it, and
    /// brings its schema up to date. Refuses, with a message that names the
    /// file, a file that is locked by another process, corrupt, not abide's,
    /// or of a newer schema.
    pub fn open(dir: &Path, sync: Sync) -> Result<Database, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create --data-dir {}: {e}", dir.display()))?;
        let path = dir.join(DATABASE_FILE);
        let fail = |what: &str, e: rusqlite::Error| {
            let reason = match e.sqlite_error_code() {
                Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                    "it is in use by another process (is another abide running on this --data-dir?)"
                        .to_string()
                }
                Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
                    format!("it is corrupt or not a database ({e}); move it away to start empty")
                }
                _ => e.to_string(),
            };
            format!("cannot {what} {}: {reason}", path.display())
        };
        let conn = Connection::open(&path).map_err(|e| fail("open", e))?;
        let db = Database {
            conn,
            path: path.clone(),
        };
        let c = &db.conn;
        // Refuse at once rather than wait for another process's lock.
        c.busy_timeout(Duration::ZERO)
            .map_err(|e| fail("open", e))?;
        // Before the first access, so that the lock taken then is kept.
        c.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(|e| fail("lock", e))?;
        // Only takes effect on a new file (before its first table).
        c.pragma_update(
            None,
            "page_size",
            std::env::var("ABIDE_PAGE")
                .ok()
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(PAGE_BYTES),
        )
        .map_err(|e| fail("open", e))?;
        let mode: String = c
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(|e| fail("open", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(format!(
                "cannot open {}: SQLite refused WAL mode (got {mode})",
                path.display()
            ));
        }
        // Take the write lock now (kept, in exclusive mode) so that a second
        // abide is refused at its start, not at its first publish.
        c.execute_batch("BEGIN EXCLUSIVE; COMMIT;")
            .map_err(|e| fail("lock", e))?;
        let check: String = c
            .pragma_query_value(None, "quick_check", |r| r.get(0))
            .map_err(|e| fail("check", e))?;
        if check != "ok" {
            return Err(format!(
                "cannot use {}: it is corrupt ({check}); move it away to start empty",
                path.display()
            ));
        }
        c.pragma_update(None, "synchronous", sync.name())
            .map_err(|e| fail("configure", e))?;
        c.pragma_update(None, "journal_size_limit", MAX_WAL_BYTES)
            .map_err(|e| fail("configure", e))?;
        db.migrate()?;
        Ok(db)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Brings the schema to `SCHEMA_VERSION`, or refuses a file that is not
    /// abide's or is newer than this abide.
    fn migrate(&self) -> Result<(), String> {
        let path = self.path.display();
        let c = &self.conn;
        let read = |pragma: &str| -> Result<i64, String> {
            c.pragma_query_value(None, pragma, |r| r.get(0))
                .map_err(|e| format!("cannot read {path}: {e}"))
        };
        let application_id = read("application_id")?;
        let version = read("user_version")?;
        let tables: i64 = c
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .map_err(|e| format!("cannot read {path}: {e}"))?;
        let fresh = application_id == 0 && version == 0 && tables == 0;
        if !fresh && application_id != i64::from(APPLICATION_ID) {
            return Err(format!(
                "cannot use {path}: it is not an abide database (application_id {application_id}); \
                 move it away or choose another --data-dir"
            ));
        }
        let version = usize::try_from(version).unwrap_or(usize::MAX);
        if version > SCHEMA_VERSION {
            return Err(format!(
                "cannot use {path}: its schema version is {version}, and this abide knows \
                 versions up to {SCHEMA_VERSION}; run a newer abide"
            ));
        }
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        let migrate = || -> rusqlite::Result<()> {
            let tx = self.conn.unchecked_transaction()?;
            for step in &MIGRATIONS[version..] {
                tx.execute_batch(step)?;
            }
            tx.pragma_update(None, "application_id", APPLICATION_ID)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION as i64)?;
            tx.commit()
        };
        migrate()
            .map_err(|e| format!("cannot update the schema of {path} from version {version}: {e}"))
    }

    /// Reads back the channels' losses and the id floor. Refuses a row abide
    /// could not have written.
    pub fn load_channels(&self) -> Result<Loaded, String> {
        let path = self.path.display();
        let sql_error = |e: rusqlite::Error| format!("cannot read {path}: {e}");
        let mut tombstones = Vec::new();
        let mut last_id: u64 = 0;
        let channels = "SELECT name, dropped_through FROM channels ORDER BY dropped_through";
        self.each_row(channels, |row| {
            let name: String = row.get(0).map_err(sql_error)?;
            let dropped_through = checked_id(row.get(1).map_err(sql_error)?)
                .ok_or_else(|| format!("{path}: channel {name:?} has an invalid id"))?;
            if !valid_channel_name(&name) {
                return Err(format!("{path}: invalid channel name {name:?}"));
            }
            last_id = last_id.max(dropped_through);
            tombstones.push((Arc::from(name), dropped_through));
            Ok(())
        })?;
        let floor: Option<i64> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'id_floor'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql_error)?;
        if let Some(floor) = floor {
            let floor = checked_id(floor).ok_or_else(|| format!("{path}: invalid id floor"))?;
            last_id = last_id.max(floor);
        }
        Ok(Loaded {
            tombstones,
            last_id,
        })
    }

    /// Reads back each event in id order and hands it to `each` (so that
    /// they are never all held twice). Refuses a row abide could not have
    /// written.
    pub fn load_events(&self, mut each: impl FnMut(Arc<str>, Arc<Event>)) -> Result<(), String> {
        let path = self.path.display();
        let sql_error = |e: rusqlite::Error| format!("cannot read {path}: {e}");
        let now = Instant::now();
        let wall_now = SystemTime::now();
        let events = "SELECT id, channel, at_ms, data FROM events ORDER BY id";
        self.each_row(events, |row| {
            let raw_id: i64 = row.get(0).map_err(sql_error)?;
            let id =
                checked_id(raw_id).ok_or_else(|| format!("{path}: invalid event id {raw_id}"))?;
            let channel: String = row.get(1).map_err(sql_error)?;
            let at_ms: i64 = row.get(2).map_err(sql_error)?;
            let data: String = row.get(3).map_err(sql_error)?;
            let bad = |what: &str| format!("{path}: event {id} has {what}");
            if !valid_channel_name(&channel) {
                return Err(bad("an invalid channel name"));
            }
            let at_ms = u64::try_from(at_ms).map_err(|_| bad("an invalid time"))?;
            let at = UNIX_EPOCH + Duration::from_millis(at_ms);
            if serde_json::from_str::<serde::de::IgnoredAny>(&data).is_err() {
                return Err(bad("data that is not JSON"));
            }
            // Age by the wall clock, so that --event-ttl keeps counting
            // across the restart; an event from the future counts as new.
            let age = wall_now.duration_since(at).unwrap_or_default();
            let stored_at = now.checked_sub(age).unwrap_or(now);
            let event = Event::new(id, &channel, at, stored_at, &data);
            each(Arc::from(channel), event);
            Ok(())
        })
    }

    /// Runs `sql` and hands each row to `each`; errors name the file.
    fn each_row(
        &self,
        sql: &str,
        mut each: impl FnMut(&rusqlite::Row<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        let sql_error = |e: rusqlite::Error| format!("cannot read {}: {e}", self.path.display());
        let mut statement = self.conn.prepare(sql).map_err(sql_error)?;
        let mut rows = statement.query([]).map_err(sql_error)?;
        while let Some(row) = rows.next().map_err(sql_error)? {
            each(row)?;
        }
        Ok(())
    }

    /// Writes `changes` (what the hub dropped) and `ops` (in order) as one
    /// transaction. On failure nothing of it is stored.
    pub fn commit(&mut self, changes: &[Change], ops: &[Op]) -> Result<(), CommitError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(CommitError)?;
        {
            let mut floor: u64 = 0;
            for change in changes {
                match change {
                    Change::Dropped { channel, id } => {
                        tx.prepare_cached("DELETE FROM events WHERE id = ?1")?
                            .execute([sql_id(*id)])?;
                        tx.prepare_cached(
                            "INSERT INTO channels (name, dropped_through) VALUES (?1, ?2)
                             ON CONFLICT (name) DO UPDATE SET dropped_through = excluded.dropped_through
                             WHERE excluded.dropped_through > dropped_through",
                        )?
                        .execute(params![&**channel, sql_id(*id)])?;
                    }
                    Change::Forgotten { channel, last_id } => {
                        tx.prepare_cached("DELETE FROM channels WHERE name = ?1")?
                            .execute([&**channel])?;
                        floor = floor.max(*last_id);
                    }
                }
            }
            for op in ops {
                match op {
                    Op::Insert {
                        id,
                        channel,
                        at_ms,
                        data_json,
                    } => {
                        tx.prepare_cached(
                            "INSERT INTO events (id, channel, at_ms, data) VALUES (?1, ?2, ?3, ?4)",
                        )?
                        .execute(params![
                            sql_id(*id),
                            channel,
                            sql_id(*at_ms),
                            data_json
                        ])?;
                    }
                    Op::Delete {
                        channel,
                        last_id,
                        rows,
                    } => {
                        if *rows {
                            // A scan (no index on channel: it would cost a
                            // page written per commit); deletions are rare.
                            tx.prepare_cached("DELETE FROM events WHERE channel = ?1")?
                                .execute([channel])?;
                        }
                        tx.prepare_cached("DELETE FROM channels WHERE name = ?1")?
                            .execute([channel])?;
                        floor = floor.max(*last_id);
                    }
                }
            }
            if floor > 0 {
                tx.prepare_cached(
                    "INSERT INTO meta (key, value) VALUES ('id_floor', ?1)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value
                     WHERE excluded.value > value",
                )?
                .execute([sql_id(floor)])?;
            }
        }
        tx.commit().map_err(CommitError)
    }
}

impl From<rusqlite::Error> for CommitError {
    fn from(e: rusqlite::Error) -> CommitError {
        CommitError(e)
    }
}

/// Ids and times are below 2^53, so they fit SQLite's signed integers.
fn sql_id(id: u64) -> i64 {
    i64::try_from(id).expect("ids stay below 2^53")
}

/// An id read back, if it is one abide could have issued.
fn checked_id(raw: i64) -> Option<u64> {
    u64::try_from(raw)
        .ok()
        .filter(|id| *id <= crate::hub::event::MAX_EVENT_ID)
}
