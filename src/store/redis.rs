//! The shared store of `--redis`: several nodes, one id order, one cursor.
//!
//! Redis holds what every node shares: the id sequence (`abide:id`), each
//! channel's newest events (a stream per channel, `abide:c:NAME`, trimmed
//! to `--buffer` and `--event-ttl` by the publish script), the channels by
//! their newest id (`abide:channels`), what each channel lost to those
//! bounds (`abide:lost`) and recent deletions (`abide:deleted`). A publish
//! or a deletion is one Lua script: it takes the next id
//! (`max(last + 1, Redis's clock in µs)`, below 2^53), stores, trims and
//! announces it on the pub/sub channel `abide:events` in one atomic step,
//! so announcements arrive in id order.
//!
//! Each node runs two threads here, and keeps its own waiters, slots and
//! limits:
//!
//! - **The writer thread** (`abide-redis`) takes the publishes and
//!   deletions writer threads queue (`Link`), sends every one queued
//!   meanwhile as one pipeline of scripts (one round trip), and answers
//!   each with its id. Redis unreachable: the record is refused `503` and
//!   nothing is stored (a connection idle for a second is pinged before
//!   scripts go out on it). A connection lost after the scripts were sent
//!   leaves their outcome unknown: the thread reconnects and looks for each
//!   publish's token in its channel's stream; found, it is answered `201`,
//!   not found, it is sent again on the new connection. So a `201` is always
//!   stored and a `503` never is; only when Redis stays away for
//!   `RECHECK_WINDOW` is such a publish answered `504` (outcome unknown).
//! - **The subscription thread** (`abide-redis-sub`) holds one subscription
//!   and applies every announced event and deletion to the node's hub (its
//!   mirror) in id order, which wakes the local waiters. After every
//!   (re)connection it first subscribes, then reads from Redis everything
//!   newer than what the node applied, up to the newest id at that moment,
//!   and applies it in id order (`catch_up`); announcements above that id
//!   follow. So the node's mirror always holds every event up to some id,
//!   never a gap behind a newer one, and nothing published while it was
//!   away is missed. It reconnects with exponential backoff and jitter.
//!
//! A publish is answered once its event came back through the node's own
//! subscription (or after `VISIBLE_WAIT`), so a poll on the same node right
//! after a `201` sees it. Neither thread ever holds the hub's lock across
//! I/O, and both block without a timeout while there is nothing to do (TCP
//! keepalive watches the links), so an idle node costs no wake-ups.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};
use parking_lot::{Condvar, Mutex};
use redis::io::tcp::TcpSettings;
use redis::streams::StreamRangeReply;
use redis::{Client, Connection, ConnectionInfo, IntoConnectionInfo, RedisResult, Value};

use crate::api::request::valid_channel_name;
use crate::error::Error;
use crate::hub::event::Event;
use crate::hub::{Committed, Hub, HubLimits, LINK_SUBSCRIPTION, LINK_WRITER};
use crate::store::{Receipt, fill_batch, stopped, submit};

/// The pub/sub channel every publish and deletion is announced on.
pub const EVENTS_CHANNEL: &str = "abide:events";
/// Channels holding events, scored by their newest id.
pub const CHANNELS_KEY: &str = "abide:channels";
/// Channels that lost events to the bounds, scored by the highest id lost.
pub const LOST_KEY: &str = "abide:lost";
/// Recent deletions, scored by the deletion's id.
pub const DELETED_KEY: &str = "abide:deleted";
/// Prefix of a channel's stream.
pub const STREAM_PREFIX: &str = "abide:c:";

/// How long connecting to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one command or pipeline may take on the writer's and the
/// catch-up's connections.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle time before TCP keepalive probes a link, the time between probes,
/// and how many may go unanswered: a silently dead link is noticed within
/// about 25 s, without a wake-up of abide's own.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;

/// Reconnection backoff: doubles from the first to the last, each wait
/// drawn between half and all of it (jitter), so that nodes which lost
/// Redis together do not come back in step.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_LAST: Duration = Duration::from_secs(2);

/// A publish waits at most this long for its event to come back through
/// the node's subscription before it is answered anyway (it is stored).
const VISIBLE_WAIT: Duration = Duration::from_secs(2);

/// How long the writer keeps trying to learn the outcome of scripts sent
/// on a connection that broke before they were answered.
const RECHECK_WINDOW: Duration = Duration::from_secs(5);

/// A writer connection idle for longer is pinged before a batch is sent.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// `Retry-After` of a publish refused because Redis is unreachable.
const UNREACHABLE_RETRY_SECS: u32 = 2;

/// Applied in one call to `Hub::apply` while catching up, so that the
/// hub's lock is not held for a whole catch-up at once.
const APPLY_CHUNK: usize = 1024;

/// Stack of the two threads: the client's reply parser recurses a few
/// levels; no SQLite here.
const THREAD_STACK_BYTES: usize = 256 * 1024;

/// Takes the next id: at least one more than the last, at least Redis's
/// clock in microseconds (so ids never go back after a restart), below
/// 2^53. Defines `id` and `sid` (its decimal text) and `now` (µs).
const NEXT_ID: &str = r#"
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', 'abide:id') or '0')
local id = math.max(last + 1, now)
if id > 9007199254740991 then
  return redis.error_reply('ERR abide ids would pass 2^53')
end
local sid = string.format('%.0f', id)
redis.call('SET', 'abide:id', sid)
"#;

/// ARGV: channel, data (compact JSON), buffer, ttl in µs (0: none),
/// max channels, token. Returns {id, ms}.
const PUBLISH_BODY: &str = r#"
local ch, data, token = ARGV[1], ARGV[2], ARGV[6]
local buffer, ttl, max_ch = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local key = 'abide:c:' .. ch
local function lose(name, through)
  local known = tonumber(redis.call('ZSCORE', 'abide:lost', name) or '0')
  if through > known then
    redis.call('ZADD', 'abide:lost', string.format('%.0f', through), name)
  end
end
local function evict(list)
  for i = 1, #list, 2 do
    lose(list[i], tonumber(list[i + 1]))
    redis.call('DEL', 'abide:c:' .. list[i])
    redis.call('ZREM', 'abide:channels', list[i])
  end
end
if ttl > 0 then
  evict(redis.call('ZRANGEBYSCORE', 'abide:channels', '-inf',
    '(' .. string.format('%.0f', now - ttl), 'WITHSCORES', 'LIMIT', 0, 16))
end
if not redis.call('ZSCORE', 'abide:channels', ch) then
  local over = redis.call('ZCARD', 'abide:channels') - max_ch + 1
  if over > 0 then
    evict(redis.call('ZRANGE', 'abide:channels', 0, over - 1, 'WITHSCORES'))
  end
end
local n = redis.call('XLEN', key)
local drop = math.max(n - buffer + 1, 0)
if ttl > 0 and n > drop then
  local old = redis.call('XRANGE', key, '-', string.format('%.0f', now - ttl - 1), 'COUNT', n)
  drop = math.max(drop, #old)
end
if drop > 0 then
  local gone = redis.call('XRANGE', key, '-', '+', 'COUNT', drop)
  lose(ch, tonumber(string.match(gone[#gone][1], '^(%d+)')))
  redis.call('XTRIM', key, 'MAXLEN', n - drop)
end
local ms = string.format('%.0f', math.floor(now / 1000))
redis.call('XADD', key, sid .. '-0', 'd', data, 't', ms, 'k', token)
if ttl > 0 then
  redis.call('PEXPIRE', key, math.ceil(ttl / 1000))
end
redis.call('ZADD', 'abide:channels', sid, ch)
local extra = redis.call('ZCARD', 'abide:lost') - 2 * max_ch
if extra > 0 then
  redis.call('ZREMRANGEBYRANK', 'abide:lost', 0, extra - 1)
end
redis.call('PUBLISH', 'abide:events', 'e ' .. sid .. ' ' .. ms .. ' ' .. ch .. ' ' .. data)
return {sid, ms}
"#;

/// ARGV: channel, max channels. Returns the deletion's id.
const DELETE_BODY: &str = r#"
local ch, max_ch = ARGV[1], tonumber(ARGV[2])
redis.call('DEL', 'abide:c:' .. ch)
redis.call('ZREM', 'abide:channels', ch)
redis.call('ZREM', 'abide:lost', ch)
redis.call('ZADD', 'abide:deleted', sid, ch)
local extra = redis.call('ZCARD', 'abide:deleted') - max_ch
if extra > 0 then
  redis.call('ZREMRANGEBYRANK', 'abide:deleted', 0, extra - 1)
end
redis.call('PUBLISH', 'abide:events', 'd ' .. sid .. ' ' .. ch)
return sid
"#;

/// ARGV: an id this node has applied. Raises `abide:id` to it (a Redis
/// that lost its data must not issue ids again that nodes have seen) and
/// returns the largest id issued.
const FLOOR_SCRIPT: &str = r#"
local known = tonumber(redis.call('GET', 'abide:id') or '0')
if tonumber(ARGV[1]) > known then
  redis.call('SET', 'abide:id', ARGV[1])
  return ARGV[1]
end
return redis.call('GET', 'abide:id') or '0'
"#;

/// The limits the publish script applies in Redis (from the node's own).
#[derive(Debug, Clone, Copy)]
struct Bounds {
    buffer_events: usize,
    event_ttl_micros: u64,
    max_channels: usize,
}

/// Where Redis is, with the TCP settings every connection uses.
#[derive(Clone)]
struct Target {
    info: ConnectionInfo,
    /// As given without its password, for log lines.
    url: String,
}

impl Target {
    /// `url` is `redis://…` or `rediss://…` (TLS, trusting the system's CAs,
    /// or only the PEM certificates in `ca` if given).
    fn parse(url: &str, ca: Option<&Path>) -> Result<Target, String> {
        let bad = |e: &dyn std::fmt::Display| format!("--redis {}: {e}", redact_url(url));
        let info = if url.starts_with("rediss://") {
            // One crypto provider (ring) is built in; install it for rustls.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let root_cert = ca
                .map(|path| {
                    std::fs::read(path).map_err(|e| format!("--redis-ca {}: {e}", path.display()))
                })
                .transpose()?;
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert,
            };
            Client::build_with_tls(url, certificates)
                .map_err(|e| bad(&e))?
                .get_connection_info()
                .clone()
        } else {
            url.into_connection_info().map_err(|e| bad(&e))?
        };
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_RETRIES);
        let tcp = TcpSettings::default()
            .set_nodelay(true)
            .set_keepalive(keepalive)
            .set_user_timeout(COMMAND_TIMEOUT);
        Ok(Target {
            info: info.set_tcp_settings(tcp),
            url: redact_url(url),
        })
    }

    /// A new connection, its commands bounded by `COMMAND_TIMEOUT`.
    fn connect(&self) -> RedisResult<Connection> {
        let client = Client::open(self.info.clone())?;
        let con = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        con.set_read_timeout(Some(COMMAND_TIMEOUT))?;
        con.set_write_timeout(Some(COMMAND_TIMEOUT))?;
        Ok(con)
    }
}

/// A Redis URL without its password, for log lines.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// Ids the node has applied (through its subscription), for publishers
/// waiting to see their event.
#[derive(Default)]
struct Applied {
    through: Mutex<u64>,
    advanced: Condvar,
}

impl Applied {
    fn get(&self) -> u64 {
        *self.through.lock()
    }

    fn advance(&self, id: u64) {
        let mut through = self.through.lock();
        if id > *through {
            *through = id;
            drop(through);
            self.advanced.notify_all();
        }
    }

    /// Waits until `id` is applied, at most until `deadline`.
    fn wait_for(&self, id: u64, deadline: Instant) {
        let mut through = self.through.lock();
        while *through < id {
            if self.advanced.wait_until(&mut through, deadline).timed_out() {
                break;
            }
        }
    }
}

enum Record {
    Publish {
        channel: Arc<str>,
        data_json: String,
        /// Found in the stored entry (`k`): how an unknown outcome is settled.
        token: String,
        /// The event as stored.
        receipt: Receipt<Arc<Event>>,
    },
    Delete {
        channel: Arc<str>,
        receipt: Receipt<u64>,
    },
    /// Answer what is queued, then end the thread.
    Stop,
}

/// The handle writer threads hold: queues publishes and deletions and
/// waits for their outcome.
#[derive(Clone)]
pub struct Link {
    records: Sender<Record>,
    hub: Hub,
    applied: Arc<Applied>,
    /// This node's tokens: a random prefix and a count.
    node: Arc<str>,
    next_token: Arc<AtomicU64>,
}

/// The running writer and subscription threads.
pub struct RedisThreads {
    link: Link,
    target: Target,
    writer: JoinHandle<()>,
    subscriber: JoinHandle<()>,
    /// Wakes the subscription thread out of a backoff wait at shutdown.
    stop_subscriber: Sender<()>,
}

/// Starts a node on the Redis at `url` (with TLS, trusting `ca` if given):
/// its hub (a mirror of the shared
/// store, under `limits`), the writer and the subscription thread. Waits up
/// to a few seconds for the first catch-up; if Redis cannot be reached, the
/// node starts anyway, degraded (`/healthz`), and catches up once it can.
/// `queue_records` bounds the publishes and deletions waiting for Redis.
pub fn open(
    url: &str,
    ca: Option<&Path>,
    limits: HubLimits,
    queue_records: usize,
) -> Result<(Hub, RedisThreads), String> {
    let target = Target::parse(url, ca)?;
    let bounds = Bounds {
        buffer_events: limits.buffer_events,
        event_ttl_micros: limits.event_ttl.map_or(0, |t| t.as_micros() as u64),
        max_channels: limits.max_channels,
    };
    let hub = Hub::mirror(limits);
    let applied = Arc::new(Applied::default());
    let node: Arc<str> = Arc::from(format!("{:016x}", fastrand::u64(..)));
    let (records_tx, records_rx) = bounded(queue_records.max(1) + 1);
    let link = Link {
        records: records_tx,
        hub: hub.clone(),
        applied: applied.clone(),
        node: node.clone(),
        next_token: Arc::default(),
    };
    let (stop_tx, stop_rx) = bounded(1);
    let (caught_up_tx, caught_up_rx) = bounded(1);
    let subscriber = {
        let (hub, target, applied, node) = (hub.clone(), target.clone(), applied, node.clone());
        thread::Builder::new()
            .name("abide-redis-sub".into())
            .stack_size(THREAD_STACK_BYTES)
            .spawn(move || subscribe(target, hub, applied, node, stop_rx, caught_up_tx))
            .map_err(|e| format!("cannot start the Redis subscription thread: {e}"))?
    };
    let writer = {
        let (hub, target) = (hub.clone(), target.clone());
        thread::Builder::new()
            .name("abide-redis".into())
            .stack_size(THREAD_STACK_BYTES)
            .spawn(move || write(target, hub, bounds, records_rx))
            .map_err(|e| format!("cannot start the Redis writer thread: {e}"))?
    };
    if caught_up_rx.recv_timeout(CONNECT_TIMEOUT * 2).is_err() {
        eprintln!(
            "abide: Redis at {} is not reachable yet; serving degraded (publishes are refused) until it is",
            target.url
        );
    }
    Ok((
        hub,
        RedisThreads {
            link,
            target,
            writer,
            subscriber,
            stop_subscriber: stop_tx,
        },
    ))
}

impl RedisThreads {
    pub fn link(&self) -> Link {
        self.link.clone()
    }

    /// Answers what is queued and ends both threads (after every writer
    /// that could queue more has stopped).
    pub fn stop(self) {
        if self
            .link
            .records
            .send_timeout(Record::Stop, Duration::from_secs(5))
            .is_ok()
        {
            let _ = self.writer.join();
        }
        // The subscription thread is blocked reading its subscription, or
        // waiting out a backoff: a message on its node's channel ends the
        // first, the stop channel the second.
        let _ = self.stop_subscriber.try_send(());
        let announced = self.target.connect().and_then(|mut con| {
            redis::cmd("PUBLISH")
                .arg(control_channel(&self.link.node))
                .arg("stop")
                .query::<i64>(&mut con)
        });
        match announced {
            Ok(_) => {
                let _ = self.subscriber.join();
            }
            // Redis is gone: the subscription's read fails by itself (or
            // keepalive ends it); the thread ends with the process.
            Err(_) => {
                if self.subscriber.is_finished() {
                    let _ = self.subscriber.join();
                }
            }
        }
    }
}

impl Link {
    /// Stores one event in Redis; returns it once stored (and, normally,
    /// applied on this node).
    pub fn publish(&self, channel: &str, data_json: String) -> Result<Arc<Event>, Error> {
        self.hub.check_publish(channel)?;
        let token = format!(
            "{}:{}",
            self.node,
            self.next_token.fetch_add(1, Ordering::Relaxed)
        );
        let channel: Arc<str> = Arc::from(channel);
        let event = submit(&self.records, "the Redis writer", |receipt| {
            Record::Publish {
                channel,
                data_json,
                token,
                receipt,
            }
        })?;
        self.applied
            .wait_for(event.id, Instant::now() + VISIBLE_WAIT);
        Ok(event)
    }

    /// Deletes a channel on every node; returns once Redis has it (and,
    /// normally, this node's waiters of the channel are answered `410`).
    pub fn delete(&self, channel: &str) -> Result<(), Error> {
        let channel: Arc<str> = Arc::from(channel);
        let id = submit(&self.records, "the Redis writer", |receipt| {
            Record::Delete { channel, receipt }
        })?;
        self.applied.wait_for(id, Instant::now() + VISIBLE_WAIT);
        Ok(())
    }
}

fn control_channel(node: &str) -> String {
    format!("abide:node:{node}")
}

/// A record refused because Redis could not be reached: nothing was stored.
fn unreachable(err: &redis::RedisError) -> Error {
    Error::Busy {
        message: format!("redis is unreachable ({err}); nothing was stored; retry later"),
        retry_after_secs: UNREACHABLE_RETRY_SECS,
    }
}

/// Reconnection delays: exponential with jitter.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            next: BACKOFF_FIRST,
        }
    }

    /// The next wait (between half and all of the current step).
    fn wait(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(BACKOFF_LAST);
        step / 2 + step.mul_f64(fastrand::f64() / 2.0)
    }

    fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }
}

/// The writer's connection with its scripts loaded.
struct Scripts {
    con: Connection,
    publish_sha: String,
    delete_sha: String,
    /// When it last answered: one idle longer than `IDLE_CHECK` is pinged
    /// before a batch goes out on it.
    answered_at: Instant,
}

impl Scripts {
    fn load(target: &Target) -> RedisResult<Scripts> {
        let mut con = target.connect()?;
        let mut load = |body: &str| {
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(format!("{NEXT_ID}{body}"))
                .query::<String>(&mut con)
        };
        let publish_sha = load(PUBLISH_BODY)?;
        let delete_sha = load(DELETE_BODY)?;
        Ok(Scripts {
            con,
            publish_sha,
            delete_sha,
            answered_at: Instant::now(),
        })
    }

    /// Whether the connection still reaches Redis: pinged if it has been
    /// idle, or if the link is `suspect`, so that a Redis that went away (or
    /// restarted) meanwhile is found before any script is sent on it, when
    /// nothing can have been stored, rather than after, when the outcome
    /// would be unknown.
    fn alive(&mut self, suspect: bool) -> bool {
        if !suspect && self.answered_at.elapsed() < IDLE_CHECK {
            return true;
        }
        let pong = redis::cmd("PING").query::<String>(&mut self.con).is_ok();
        self.answered_at = Instant::now();
        pong
    }
}

/// The writer thread: batches, one pipeline per batch, answers.
fn write(target: Target, hub: Hub, bounds: Bounds, records: Receiver<Record>) {
    let mut scripts: Option<Scripts> = None;
    let mut backoff = Backoff::new();
    // While Redis is unreachable: when to try connecting again.
    let mut retry_at: Option<Instant> = None;
    let mut failed_since: Option<Instant> = None;
    loop {
        let first = match retry_at {
            None => records.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => records.recv_deadline(at),
        };
        let mut batch = match first {
            Ok(record) => vec![record],
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => Vec::new(),
        };
        fill_batch(&records, &mut batch, Record::data_bytes);
        let stop = batch.iter().any(|r| matches!(r, Record::Stop));
        let batch: Vec<Record> = batch.into_iter().filter(Record::take).collect();
        // The subscription noticing a lost link first is the usual sign
        // that Redis went away: then the writer's connection is checked too.
        let suspect = hub.link_up() == Some(false);
        if !batch.is_empty() && scripts.as_mut().is_some_and(|s| !s.alive(suspect)) {
            // Went away while idle: nothing was sent; connect again now.
            scripts = None;
            retry_at = None;
        }
        if scripts.is_none() && retry_at.is_none_or(|at| Instant::now() >= at) {
            match Scripts::load(&target) {
                Ok(loaded) => {
                    scripts = Some(loaded);
                    retry_at = None;
                    backoff.reset();
                    hub.set_link_down(LINK_WRITER, false);
                    if let Some(since) = failed_since.take() {
                        eprintln!(
                            "abide: Redis at {} is reachable again for writes after {:.1} s",
                            target.url,
                            since.elapsed().as_secs_f64()
                        );
                    }
                }
                Err(err) => {
                    hub.set_link_down(LINK_WRITER, true);
                    retry_at = Some(Instant::now() + backoff.wait());
                    if failed_since.is_none() {
                        failed_since = Some(Instant::now());
                        eprintln!(
                            "abide: cannot reach Redis at {} for writes: {err}; publishes are refused until it is back",
                            target.url
                        );
                    }
                    answer_all(&batch, &unreachable(&err));
                    if stop {
                        break;
                    }
                    continue;
                }
            }
        }
        let Some(loaded) = scripts.as_mut() else {
            answer_all(
                &batch,
                &unreachable(&redis::RedisError::from(std::io::Error::other(
                    "not connected",
                ))),
            );
            if stop {
                break;
            }
            continue;
        };
        let sent: Vec<&Record> = batch.iter().collect();
        if !sent.is_empty() {
            if let Err(err) = send(loaded, &hub, bounds, &sent) {
                // The connection broke with scripts in flight (or had died
                // while idle). What was stored is answered; what was not is
                // sent once more on a new connection.
                scripts = None;
                hub.count_store_error();
                let unsent = settle(&target, bounds, &sent, Settle::Report);
                let resent = match Scripts::load(&target) {
                    Ok(mut fresh) if !unsent.is_empty() => {
                        send(&mut fresh, &hub, bounds, &unsent).map(|()| fresh)
                    }
                    Ok(fresh) => Ok(fresh),
                    Err(err) => Err(err),
                };
                match resent {
                    Ok(fresh) => scripts = Some(fresh),
                    Err(_) => {
                        settle(&target, bounds, &unsent, Settle::Refuse);
                        hub.set_link_down(LINK_WRITER, true);
                        retry_at = Some(Instant::now() + backoff.wait());
                        failed_since.get_or_insert_with(Instant::now);
                        eprintln!(
                            "abide: lost Redis at {} with {} writes in flight: {err}; publishes are refused until it is back",
                            target.url,
                            sent.len()
                        );
                    }
                }
            }
        }
        if stop {
            break;
        }
    }
    for record in records.try_iter() {
        record.answer_err(&stopped());
    }
}

impl Record {
    fn data_bytes(&self) -> usize {
        match self {
            Record::Publish { data_json, .. } => data_json.len(),
            Record::Delete { .. } | Record::Stop => 0,
        }
    }

    /// Takes the record for sending, unless its publisher gave up on it.
    fn take(&self) -> bool {
        match self {
            Record::Publish { receipt, .. } => receipt.take(),
            Record::Delete { receipt, .. } => receipt.take(),
            Record::Stop => false,
        }
    }

    fn answer_err(&self, err: &Error) {
        match self {
            Record::Publish { receipt, .. } => receipt.answer(Err(err.clone())),
            Record::Delete { receipt, .. } => receipt.answer(Err(err.clone())),
            Record::Stop => {}
        }
    }
}

fn answer_all(batch: &[Record], err: &Error) {
    for record in batch {
        record.answer_err(err);
    }
}

/// Sends the batch as one pipeline and answers each record. `Err` only if
/// the connection failed: then nothing was answered.
fn send(scripts: &mut Scripts, hub: &Hub, bounds: Bounds, batch: &[&Record]) -> RedisResult<()> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for record in batch {
        match record {
            Record::Publish {
                channel,
                data_json,
                token,
                ..
            } => {
                pipe.cmd("EVALSHA")
                    .arg(&scripts.publish_sha)
                    .arg(0)
                    .arg(&**channel)
                    .arg(data_json)
                    .arg(bounds.buffer_events)
                    .arg(bounds.event_ttl_micros)
                    .arg(bounds.max_channels)
                    .arg(token);
            }
            Record::Delete { channel, .. } => {
                pipe.cmd("EVALSHA")
                    .arg(&scripts.delete_sha)
                    .arg(0)
                    .arg(&**channel)
                    .arg(bounds.max_channels);
            }
            Record::Stop => unreachable!("filtered out"),
        }
    }
    let replies: Vec<RedisResult<Value>> = pipe.query(&mut scripts.con)?;
    scripts.answered_at = Instant::now();
    hub.count_store_commit();
    let mut script_missing = None;
    for (record, reply) in batch.iter().zip(replies) {
        let reply = reply.and_then(|value| match record {
            Record::Publish {
                channel,
                data_json,
                receipt,
                ..
            } => {
                let (id, ms): (u64, u64) = redis::from_redis_value(value)?;
                receipt.answer(Ok(as_stored(id, ms, channel, data_json)));
                Ok(())
            }
            Record::Delete { receipt, .. } => {
                let id: u64 = redis::from_redis_value(value)?;
                receipt.answer(Ok(id));
                Ok(())
            }
            Record::Stop => Ok(()),
        });
        if let Err(err) = reply {
            // The script failed before it wrote anything (its checks come
            // first), or was not there (Redis lost its script cache).
            hub.count_store_error();
            if err.code() == Some("NOSCRIPT") {
                script_missing = Some(err.to_string());
            }
            record.answer_err(&Error::Busy {
                message: format!("redis refused the write ({err}); nothing was stored"),
                retry_after_secs: UNREACHABLE_RETRY_SECS,
            });
        }
    }
    match script_missing {
        // Load them again on a new connection.
        Some(err) => Err(redis::RedisError::from(std::io::Error::other(err))),
        None => Ok(()),
    }
}

/// What `settle` does with a publish it finds was not stored.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// Leaves it unanswered and returns it (to send it again).
    Report,
    /// Answers it `503`.
    Refuse,
}

/// Settles records whose scripts were sent on a connection that broke
/// before they were answered: a publish whose token is in its channel's
/// stream was stored (answered with its id); one whose token is not was
/// not (returned, or answered `503`: `mode`). Tries to reach Redis for
/// `RECHECK_WINDOW`; what stays unknown is answered `504` saying so, and so
/// is a deletion (its outcome cannot be looked up).
fn settle<'a>(
    target: &Target,
    bounds: Bounds,
    batch: &[&'a Record],
    mode: Settle,
) -> Vec<&'a Record> {
    let mut not_stored = Vec::new();
    let deadline = Instant::now() + RECHECK_WINDOW;
    let mut backoff = Backoff::new();
    let mut con = loop {
        match target.connect() {
            Ok(con) => break Some(con),
            Err(_) if Instant::now() + BACKOFF_FIRST < deadline => {
                thread::sleep(backoff.wait().min(deadline - Instant::now())); // sync-ok: the reconnect backoff
            }
            Err(_) => break None,
        }
    };
    for &record in batch {
        match record {
            Record::Publish {
                channel,
                data_json,
                token,
                receipt,
            } => {
                let found = con
                    .as_mut()
                    .map(|con| find_token(con, channel, token, bounds.buffer_events));
                match found {
                    Some(Ok(Some((id, ms)))) => {
                        receipt.answer(Ok(as_stored(id, ms, channel, data_json)))
                    }
                    Some(Ok(None)) if mode == Settle::Report => not_stored.push(record),
                    Some(Ok(None)) => receipt.answer(Err(Error::Busy {
                        message: "lost redis before the event was stored; nothing was stored; retry later".into(),
                        retry_after_secs: UNREACHABLE_RETRY_SECS,
                    })),
                    Some(Err(_)) | None => receipt.answer(Err(Error::OutcomeUnknown(format!(
                        "lost redis while storing the event; outcome unknown: could not learn within {} s \
                         whether it was stored, so it may appear (a retry may store it twice)",
                        RECHECK_WINDOW.as_secs()
                    )))),
                }
            }
            Record::Delete { receipt, .. } => receipt.answer(Err(Error::OutcomeUnknown(
                "lost redis while deleting the channel; outcome unknown: it may or may not be deleted"
                    .into(),
            ))),
            Record::Stop => {}
        }
    }
    not_stored
}

/// The event a publish stored as id `id` at `ms` (its answer).
fn as_stored(id: u64, ms: u64, channel: &str, data_json: &str) -> Arc<Event> {
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    Event::new(id, channel, at, Instant::now(), data_json)
}

/// The id and timestamp of the entry of `channel` stored with `token`, if
/// it is among the newest `buffer` entries.
fn find_token(
    con: &mut Connection,
    channel: &str,
    token: &str,
    buffer: usize,
) -> RedisResult<Option<(u64, u64)>> {
    let reply: StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(format!("{STREAM_PREFIX}{channel}"))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(buffer)
        .query(con)?;
    for entry in reply.ids {
        let matches = entry
            .map
            .get("k")
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
            .is_some_and(|k| k == token);
        if matches {
            let id = entry_id(&entry.id).ok_or_else(|| bad_reply("a stream entry id"))?;
            let ms = field::<u64>(&entry.map, "t")?;
            return Ok(Some((id, ms)));
        }
    }
    Ok(None)
}

fn bad_reply(what: &str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("redis answered with something other than {what}"),
    ))
}

/// The id of a stream entry (`ID-0`).
fn entry_id(entry: &str) -> Option<u64> {
    entry.split_once('-')?.0.parse().ok()
}

fn field<T: redis::FromRedisValue>(map: &HashMap<String, Value>, name: &str) -> RedisResult<T> {
    let value = map.get(name).ok_or_else(|| bad_reply("an abide event"))?;
    Ok(redis::from_redis_value_ref(value)?)
}

/// The subscription thread: connects, catches up, applies announcements;
/// on any failure, backs off and does it again, until stopped.
fn subscribe(
    target: Target,
    hub: Hub,
    applied: Arc<Applied>,
    node: Arc<str>,
    stop: Receiver<()>,
    caught_up: Sender<()>,
) {
    let mut backoff = Backoff::new();
    let mut lost_at: Option<Instant> = None;
    let mut connected_before = false;
    loop {
        let outcome = session(&target, &hub, &applied, &node, &mut || {
            hub.set_link_down(LINK_SUBSCRIPTION, false);
            backoff.reset();
            let _ = caught_up.try_send(());
            if connected_before {
                hub.count_store_reconnect();
            }
            connected_before = true;
            if let Some(at) = lost_at.take() {
                eprintln!(
                    "abide: subscribed to Redis at {} again after {:.1} s, caught up",
                    target.url,
                    at.elapsed().as_secs_f64()
                );
            }
        });
        match outcome {
            Ok(()) => return,
            Err(err) => {
                hub.set_link_down(LINK_SUBSCRIPTION, true);
                if lost_at.is_none() {
                    lost_at = Some(Instant::now());
                    eprintln!(
                        "abide: lost the subscription to Redis at {}: {err}; reconnecting",
                        target.url
                    );
                }
            }
        }
        match stop.recv_timeout(backoff.wait()) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// One subscription: subscribe, catch up, then apply announcements until
/// the node's control channel says stop (`Ok`) or the link fails (`Err`).
fn session(
    target: &Target,
    hub: &Hub,
    applied: &Applied,
    node: &str,
    on_caught_up: &mut dyn FnMut(),
) -> RedisResult<()> {
    let mut con = target.connect()?;
    // Announcements wait for as long as it takes; keepalive watches the link.
    con.set_read_timeout(None)?;
    let control = control_channel(node);
    let mut pubsub = con.as_pubsub();
    pubsub.subscribe(&[EVENTS_CHANNEL, control.as_str()])?;
    // Everything announced from now on arrives on the subscription; what
    // was stored before is read now, up to the newest id at this moment.
    let through = {
        let mut reader = target.connect()?;
        catch_up(&mut reader, hub, applied.get())?
    };
    applied.advance(through);
    on_caught_up();
    loop {
        let message = pubsub.get_message()?;
        if message.get_channel_name() == control {
            return Ok(());
        }
        let payload = message.get_payload_bytes();
        match Announcement::parse(payload) {
            Some(announcement) => {
                let id = announcement.id();
                if id > applied.get() {
                    let committed = announcement.into_committed();
                    if let Committed::Delete { .. } = committed {
                        hub.raise_last_id(id);
                    }
                    let wake = hub.apply(&[committed]);
                    // The publisher (if on this node) first, then the
                    // waiters: its round trip does not grow with them.
                    applied.advance(id);
                    drop(wake);
                }
            }
            None => eprintln!(
                "abide: ignored a malformed message on {EVENTS_CHANNEL} ({} bytes)",
                payload.len()
            ),
        }
    }
}

/// One message on `EVENTS_CHANNEL`.
#[derive(Debug)]
enum Announcement {
    Event {
        channel: Arc<str>,
        event: Arc<Event>,
    },
    Delete {
        id: u64,
        channel: Arc<str>,
    },
}

impl Announcement {
    /// `e ID MS CHANNEL DATA` or `d ID CHANNEL`; `None` if it is neither
    /// (or names an invalid channel, or its data is not JSON).
    fn parse(payload: &[u8]) -> Option<Announcement> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut parts = text.splitn(5, ' ');
        match parts.next()? {
            "e" => {
                let id: u64 = parts.next()?.parse().ok()?;
                let ms: u64 = parts.next()?.parse().ok()?;
                let channel = parts.next()?;
                let data = parts.next()?;
                Some(Announcement::Event {
                    event: stored_event(id, ms, channel, data)?,
                    channel: Arc::from(channel),
                })
            }
            "d" => {
                let id: u64 = parts.next()?.parse().ok()?;
                let channel = parts.next()?;
                if parts.next().is_some() || !valid_channel_name(channel) {
                    return None;
                }
                Some(Announcement::Delete {
                    id,
                    channel: Arc::from(channel),
                })
            }
            _ => None,
        }
    }

    fn id(&self) -> u64 {
        match self {
            Announcement::Event { event, .. } => event.id,
            Announcement::Delete { id, .. } => *id,
        }
    }

    fn into_committed(self) -> Committed {
        match self {
            Announcement::Event { channel, event } => Committed::Event { channel, event },
            Announcement::Delete { channel, .. } => Committed::Delete { channel },
        }
    }
}

/// An event as Redis stored it, if it is one abide could have stored: its
/// age counts from its timestamp, for `--event-ttl`.
fn stored_event(id: u64, ms: u64, channel: &str, data: &str) -> Option<Arc<Event>> {
    if id == 0 || !valid_channel_name(channel) {
        return None;
    }
    serde_json::from_str::<serde::de::IgnoredAny>(data).ok()?;
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    let age = SystemTime::now().duration_since(at).unwrap_or_default();
    let now = Instant::now();
    let stored_at = now.checked_sub(age).unwrap_or(now);
    Some(Event::new(id, channel, at, stored_at, data))
}

/// Reads what Redis holds above `after` (the newest id this node applied)
/// and applies it in id order: losses first, then events and deletions.
/// Returns the id it caught up to (everything through it is applied).
fn catch_up(con: &mut Connection, hub: &Hub, after: u64) -> RedisResult<u64> {
    // Everything with an id up to `through` was stored before now, so it is
    // read below; anything newer arrives on the subscription.
    let through: u64 = redis::cmd("EVAL")
        .arg(FLOOR_SCRIPT)
        .arg(0)
        .arg(after.max(hub.last_id()))
        .query(con)?;
    if through <= after {
        return Ok(after);
    }
    let above = format!("({after}");
    let mut items: Vec<(u64, Committed)> = Vec::new();
    let lost: Vec<(String, u64)> = redis::cmd("ZRANGEBYSCORE")
        .arg(LOST_KEY)
        .arg(&above)
        .arg("+inf")
        .arg("WITHSCORES")
        .query(con)?;
    let deleted: Vec<(String, u64)> = redis::cmd("ZRANGEBYSCORE")
        .arg(DELETED_KEY)
        .arg(&above)
        .arg(through)
        .arg("WITHSCORES")
        .query(con)?;
    for (name, id) in deleted {
        if valid_channel_name(&name) {
            items.push((
                id,
                Committed::Delete {
                    channel: Arc::from(name),
                },
            ));
        }
    }
    let names: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(CHANNELS_KEY)
        .arg(&above)
        .arg("+inf")
        .query(con)?;
    for name in names {
        if !valid_channel_name(&name) {
            continue;
        }
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(format!("{STREAM_PREFIX}{name}"))
            .arg(after + 1)
            .arg(through)
            .query(con)?;
        let channel: Arc<str> = Arc::from(name.as_str());
        for entry in reply.ids {
            let Some(id) = entry_id(&entry.id) else {
                continue;
            };
            let ms = field::<u64>(&entry.map, "t")?;
            let data = field::<String>(&entry.map, "d")?;
            if let Some(event) = stored_event(id, ms, &name, &data) {
                items.push((
                    id,
                    Committed::Event {
                        channel: channel.clone(),
                        event,
                    },
                ));
            }
        }
    }
    items.sort_unstable_by_key(|(id, _)| *id);
    let losses: Vec<Committed> = lost
        .into_iter()
        .filter(|(name, _)| valid_channel_name(name))
        .map(|(name, through)| Committed::Lost {
            channel: Arc::from(name),
            through,
        })
        .collect();
    drop(hub.apply(&losses));
    hub.raise_last_id(through);
    let mut items = items.into_iter().map(|(_, c)| c).peekable();
    while items.peek().is_some() {
        let chunk: Vec<Committed> = items.by_ref().take(APPLY_CHUNK).collect();
        drop(hub.apply(&chunk));
    }
    Ok(through)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Announcements parse back into the event or deletion the scripts
    /// stored, and anything else is refused rather than applied.
    #[test]
    fn announcements_parse_or_are_refused() {
        let event = Announcement::parse(b"e 1700000000000001 1700000000000 room {\"a\": [1, 2]}")
            .expect("an event");
        assert_eq!(event.id(), 1_700_000_000_000_001);
        match &event {
            Announcement::Event { channel, event } => {
                assert_eq!(&**channel, "room");
                assert!(
                    event.json.contains(r#""data":{"a": [1, 2]}"#),
                    "{}",
                    event.json
                );
                assert!(
                    event.json.contains("2023-11-14T22:13:20.000Z"),
                    "{}",
                    event.json
                );
            }
            other => panic!("not an event: {other:?}"),
        }
        let delete = Announcement::parse(b"d 42 room").expect("a deletion");
        assert_eq!(delete.id(), 42);
        for bad in [
            &b"e 1 2 room not-json"[..],
            b"e x 2 room 1",
            b"e 0 2 room 1",
            b"e 1 2 bad/name 1",
            b"d 42",
            b"d 42 room extra",
            b"x 1 2 room 1",
            b"",
            b"\xff\xfe",
        ] {
            assert!(
                Announcement::parse(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Backoff grows to its cap, each wait within its jittered step.
    #[test]
    fn backoff_doubles_with_jitter_up_to_its_cap() {
        let mut backoff = Backoff::new();
        let mut step = BACKOFF_FIRST;
        for _ in 0..12 {
            let wait = backoff.wait();
            assert!(
                wait >= step / 2 && wait <= step,
                "{wait:?} outside {step:?}"
            );
            step = (step * 2).min(BACKOFF_LAST);
        }
        backoff.reset();
        assert!(backoff.wait() <= BACKOFF_FIRST);
    }

    /// A stream entry id gives back the event id it was stored under.
    #[test]
    fn entry_ids_are_event_ids() {
        assert_eq!(entry_id("1700000000000001-0"), Some(1_700_000_000_000_001));
        assert_eq!(entry_id("nope"), None);
    }
}
