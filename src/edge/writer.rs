//! Answering requests: the per-connection lanes and the two worker pools.
//!
//! Owns everything that may block on a client: reading a body, waiting for a
//! poll, writing an answer, closing a connection after a refusal. The dispatch
//! thread hands each request over as a `Work` through `Writer::submit`, which
//! never blocks. Runs on the waiter pool (`Work::Wait`, one wait slot each)
//! and the writer pool (everything else, at most `--max-writers` threads).
//!
//! Lanes: tiny_http writes a connection's answers strictly in order, and an
//! answer whose predecessor is not written yet blocks its writer. So at most
//! one thread works on a connection at a time; later requests of the same
//! connection (pipelining) wait in its lane, holding no thread, and the thread
//! that finishes one takes the next. A poll held at the head of a lane is
//! answered at once when a request arrives behind it. A write that times out
//! (the client does not read) or outlives its whole-answer deadline
//! (`deadline.rs`) cuts the connection; one to a reset connection lets the
//! rest of the lane run on a lane of its own. So a client that never reads
//! costs one thread for one `--write-timeout`, never the whole pool.
//!
//! Bounds: a lane holds at most `--max-pipelined-requests` requests and
//! `--max-pipelined-bytes` of their heads; one more and the connection is
//! cut (`cut_connection`: ended without an answer by the finder thread; what
//! it queued is then verified, and runs only if it came over another socket). A job no pool can take (no thread can be spawned, or
//! the backlog, `--max-backlog`, is full) is answered `503` by a writer if
//! one can take that, else its connection is cut. The thread that submits
//! (the dispatch thread) never writes, reads a body or waits.
//!
//! Closing: an answer with `Close::Yes` ends its connection (see
//! `connection.rs`). From the moment it is queued, requests of that
//! connection are refused unrun (`peer_state`); the rest of its lane is
//! discarded. tiny_http may still hand over a request it parsed before the
//! close took effect, after the lane is gone: for `CLOSED_HOLD` a request
//! from that peer address is checked first (`Work::Verify`): it runs only if
//! it came over a different socket (the client reused its port for a new
//! connection), never if it came over the closed one.
//!
//! Together with `server.rs`, the only module that touches tiny_http.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::{self, Cursor, Write};
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use tiny_http::{HTTPVersion, Header, Method, Request, Response, StatusCode};

use crate::api::auth;
use crate::api::reply::{MISSED_HEADER, Reply};
use crate::api::request;
use crate::api::request::PollSpec;
use crate::config::Config;
use crate::edge::connection::{ConnectionSocket, SocketFinder};
use crate::edge::deadline::AnswerDeadlines;
use crate::edge::pool::Pool;
use crate::edge::send_room::SendRoom;
use crate::edge::server::all_headers;
use crate::edge::watchdog::WATCHDOG_TARGET;
use crate::error::Error;
use crate::hub::{EarlyAnswer, Hub, PollStart, StreamStep, Ticket, Wake};
use crate::store::Store;

/// Stack of a waiter thread: it waits and writes a prepared answer.
pub const WAITER_STACK_BYTES: usize = 64 * 1024;
/// Stack of a writer thread: it also parses JSON bodies (nesting is capped at
/// `request::MAX_JSON_DEPTH`; debug builds need the room).
pub const WRITER_STACK_BYTES: usize = 512 * 1024;
/// Longest request target written to the access log.
const LOG_TARGET_CHARS: usize = 200;
/// How long a closed connection's answer may take to be acknowledged before
/// the connection is reset anyway (`ConnectionSocket::reset_once_delivered`).
const RESET_WAIT: Duration = Duration::from_secs(1);
/// After abide closes a connection, requests from its peer address that
/// still reach dispatch for this long are refused, never executed.
pub const CLOSED_HOLD: Duration = Duration::from_secs(10);

/// The `retry:` a stream starts with: how long a browser's `EventSource`
/// waits before it reconnects (with `Last-Event-ID`) after the stream ends.
const SSE_RETRY_MS: u64 = 2000;

/// The data of an `event: missed` message: the first id still held after
/// the gap (`null` when none is).
fn gap_json(first_held_id: Option<u64>) -> String {
    serde_json::json!({ "first_held_id": first_held_id }).to_string()
}

/// Work on one request.
pub enum Work {
    /// A request from the address of a connection closed lately: run it (by
    /// routing it again) only if it came over another socket.
    Verify { request: Request, started: Instant },
    /// Write a prepared answer, then keep or close the connection.
    Answer {
        request: Request,
        reply: Reply,
        started: Instant,
        close: Close,
    },
    /// Read the body, publish, answer.
    Publish {
        request: Request,
        channel: String,
        started: Instant,
    },
    /// A poll that arrived behind other requests of its connection: decided
    /// (answer now, or wait and take a slot) only when it reaches the head of
    /// the lane, after their effects, so one connection holds one slot.
    Poll {
        request: Request,
        spec: PollSpec,
        started: Instant,
    },
    /// A deletion that arrived behind other requests of its connection: done
    /// when it reaches the head of the lane, after their effects.
    Delete {
        request: Request,
        channel: String,
        started: Instant,
    },
    /// Wait for the poll's events, then answer (holds a wait slot).
    Wait {
        request: Request,
        ticket: Ticket,
        started: Instant,
    },
}

/// How writing an answer went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Yes,
    /// The write timed out: the client does not read (its socket is open).
    NotRead,
    /// The connection was reset or broken: the client is gone.
    Gone,
}

impl Written {
    fn from(result: io::Result<()>) -> Written {
        match result {
            Ok(()) => Written::Yes,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Written::NotRead
            }
            Err(_) => Written::Gone,
        }
    }
}

/// Whether a connection ends after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Keep the connection as the client asked.
    No,
    /// Close it after the answer: its body framing cannot be trusted, or its
    /// body is left unread, so nothing after it is read as a request.
    Yes,
}

impl Work {
    fn request(&self) -> &Request {
        match self {
            Work::Answer { request, .. }
            | Work::Publish { request, .. }
            | Work::Wait { request, .. }
            | Work::Poll { request, .. }
            | Work::Delete { request, .. }
            | Work::Verify { request, .. } => request,
        }
    }

    /// The request and when it arrived (a wait slot is given back).
    fn into_request(self) -> (Request, Instant) {
        match self {
            Work::Answer {
                request, started, ..
            }
            | Work::Publish {
                request, started, ..
            }
            | Work::Wait {
                request, started, ..
            }
            | Work::Poll {
                request, started, ..
            }
            | Work::Delete {
                request, started, ..
            }
            | Work::Verify { request, started } => (request, started),
        }
    }

    fn is_wait(&self) -> bool {
        matches!(self, Work::Wait { .. })
    }
}

/// Which pool a thread belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Waiter,
    Writer,
}

/// Requests queued behind the one being answered, per connection.
#[derive(Default)]
struct Lane {
    /// Which lane this is: a lane detached from its peer address (its
    /// connection was closed and a new connection from the same address
    /// came) is recognised by its worker, which then stops.
    id: u64,
    queue: VecDeque<Work>,
    /// Bytes of the heads in `queue` (`head_bytes`).
    queued_bytes: usize,
    /// A write failed, the connection was closed, or the client piled up
    /// requests: discard the rest.
    dead: bool,
    /// The connection is being cut (`Writer::cut_connection`): requests
    /// from it are queued unrun (up to the bounds, dropped beyond); the lane
    /// goes once the finder has shut the socket (`Writer::cut_done`), never
    /// before, so that no later request of it can start a lane of its own.
    cut: bool,
    /// The poll being held at the head of the lane: answered at once when
    /// a request arrives behind it.
    held: Option<EarlyAnswer>,
    /// An answer that closes the connection is queued or being written:
    /// requests that arrive from it now are refused unrun (`is_closing`).
    closing: bool,
}

/// What a request from a peer address may do (`Writer::peer_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Nothing known against it: route it.
    Open,
    /// Its connection is being closed after a refused request: refuse it
    /// without any effect.
    Closing,
    /// A connection from that address was closed within `CLOSED_HOLD`:
    /// verify it first (`Work::Verify`).
    RecentlyClosed,
}

/// The lanes of connections being answered, and the peers abide closed.
#[derive(Default)]
struct Lanes {
    active: HashMap<SocketAddr, Lane>,
    /// Peer addresses of connections abide closed: until when requests from
    /// them are verified (`CLOSED_HOLD`), and the closed socket's inode.
    closed: HashMap<SocketAddr, (Instant, Option<u64>)>,
    /// `closed` is swept of expired entries when it doubles past this size.
    closed_sweep_at: usize,
    /// The id of the next lane.
    next_lane_id: u64,
}

impl Lanes {
    /// The closed socket's entry for `peer`, if within `CLOSED_HOLD`.
    fn closed(&mut self, peer: &SocketAddr, now: Instant) -> Option<Option<u64>> {
        match self.closed.get(peer) {
            Some((until, inode)) if now < *until => Some(*inode),
            Some(_) => {
                self.closed.remove(peer);
                None
            }
            None => None,
        }
    }

    fn mark_closed(&mut self, peer: SocketAddr, inode: Option<u64>, now: Instant) {
        self.closed.insert(peer, (now + CLOSED_HOLD, inode));
        if self.closed.len() > self.closed_sweep_at {
            self.closed.retain(|_, (until, _)| now < *until);
            self.closed_sweep_at = (self.closed.len() * 2).max(64);
        }
    }
}

/// The answering side. One per server, shared by the dispatch threads.
pub struct Writer {
    /// This writer, for work the finder thread does on its behalf.
    me: Weak<Writer>,
    hub: Hub,
    /// With `--data-dir` or `--redis`: publishes and deletions go through
    /// the store, which answers once they are stored.
    store: Option<Store>,
    max_event_bytes: usize,
    idle_timeout: Duration,
    /// The headers every answer carries (`common_headers`).
    common_headers: Vec<(&'static str, String)>,
    quiet: bool,
    max_pipelined_requests: usize,
    max_pipelined_bytes: usize,
    /// Finds a connection's socket to close it (`connection.rs`).
    finder: SocketFinder,
    /// Tells whether a connection's socket can take an answer at once, so
    /// the dispatch thread may write it itself (`answer_now`); `None`
    /// where the kernel cannot be asked (`send_room.rs`).
    send_room: Option<SendRoom>,
    /// Bounds the whole write of each answer by `--write-timeout`.
    deadlines: AnswerDeadlines,
    /// A stream with nothing to send writes a comment this often.
    sse_heartbeat: Duration,
    waiters: Pool<(u64, Work)>,
    writers: Pool<(u64, Work)>,
    /// Connections with a request being answered (and those queued behind
    /// it), and the recently closed ones.
    lanes: Mutex<Lanes>,
    /// Routes a verified request again (`set_redispatch`).
    redispatch: OnceLock<Box<dyn Fn(Request) + Send + Sync>>,
}

impl Writer {
    /// Whether events go through a store (`--data-dir`, `--redis`); its
    /// deletions then block on it, so they run on a writer thread.
    pub fn has_store(&self) -> bool {
        self.store.is_some()
    }

    pub fn new(
        config: &Config,
        hub: Hub,
        store: Option<Store>,
        finder: SocketFinder,
        send_room: Option<SendRoom>,
    ) -> io::Result<Arc<Writer>> {
        let this: Arc<OnceLock<Weak<Writer>>> = Arc::default();
        let for_deadlines = this.clone();
        let deadlines = AnswerDeadlines::start(config.write_timeout, move |peer| {
            if let Some(writer) = for_deadlines.get().and_then(Weak::upgrade) {
                writer.too_slow(peer);
            }
        })?;
        let writer = Arc::new_cyclic(|me: &Weak<Writer>| {
            let for_waiters = me.clone();
            let for_writers = me.clone();
            Writer {
                me: me.clone(),
                hub,
                store,
                max_event_bytes: config.max_event_bytes,
                idle_timeout: config.idle_timeout,
                common_headers: common_headers(config.cors_origin.as_deref()),
                quiet: config.quiet,
                max_pipelined_requests: config.max_pipelined_requests,
                max_pipelined_bytes: config.max_pipelined_bytes,
                finder,
                send_room,
                deadlines,
                sse_heartbeat: config.sse_heartbeat,
                // A wait job exists only with a wait slot, so the slots
                // bound it; its backlog is for the moment a slot is given
                // back before its thread is free.
                waiters: Pool::new(
                    "abide-waiter",
                    config.max_waiters,
                    config.max_waiters,
                    WAITER_STACK_BYTES,
                    move |(lane, work)| {
                        if let Some(writer) = for_waiters.upgrade() {
                            writer.run(lane, work, Kind::Waiter);
                        }
                    },
                ),
                writers: Pool::new(
                    "abide-writer",
                    config.max_writers,
                    config.max_backlog,
                    WRITER_STACK_BYTES,
                    move |(lane, work)| {
                        if let Some(writer) = for_writers.upgrade() {
                            writer.run(lane, work, Kind::Writer);
                        }
                    },
                ),
                lanes: Mutex::new(Lanes::default()),
                redispatch: OnceLock::new(),
            }
        });
        let _ = this.set(Arc::downgrade(&writer));
        Ok(writer)
    }

    /// An answer to `peer` was still being written at its deadline: the
    /// connection is cut, which fails the blocked write at once.
    fn too_slow(&self, peer: SocketAddr) {
        self.cut_connection(peer, None);
    }

    /// What a request from `peer` may do. The dispatch thread asks before
    /// any request has an effect.
    pub fn peer_state(&self, peer: &SocketAddr) -> PeerState {
        let mut lanes = self.lanes.lock();
        // Once the socket is shut, the address may be reused by a new
        // connection: verify. Before that, it can only be the same one.
        if lanes.closed(peer, Instant::now()).is_some() {
            PeerState::RecentlyClosed
        } else if lanes.active.get(peer).is_some_and(|lane| lane.closing) {
            PeerState::Closing
        } else {
            PeerState::Open
        }
    }

    /// Whether a request of `peer`'s connection is being answered (or waits):
    /// then a new poll or deletion of it must wait its turn (`Work::Poll`,
    /// `Work::Delete`) for its effect to come after theirs.
    pub fn lane_busy(&self, peer: &SocketAddr) -> bool {
        self.lanes.lock().active.contains_key(peer)
    }

    /// Sets what routes a verified request again (`Work::Verify`): the
    /// server's dispatch. Set once, at start.
    pub fn set_redispatch(&self, redispatch: Box<dyn Fn(Request) + Send + Sync>) {
        let _ = self.redispatch.set(redispatch);
    }

    /// Takes a request from the dispatch thread. Never blocks, never writes.
    pub fn submit(&self, work: Work) {
        let Some(peer) = work.request().remote_addr().copied() else {
            return self.start(0, work);
        };
        let closes = matches!(
            work,
            Work::Answer {
                close: Close::Yes,
                ..
            }
        );
        let mut lanes = self.lanes.lock();
        let mut detached = None;
        if let Some(lane) = lanes.active.get_mut(&peer) {
            if !(matches!(work, Work::Verify { .. }) && lane.dead && !lane.cut) {
                // Only a request that queues is measured (off the common path).
                let bytes = head_bytes(work.request());
                let over = lane.queue.len() >= self.max_pipelined_requests
                    || lane.queued_bytes + bytes > self.max_pipelined_bytes;
                if over {
                    let cut = lane.cut;
                    drop(lanes);
                    return match cut {
                        true => self.drop_unrun(peer, work),
                        false => self.cut_connection(peer, Some(work)),
                    };
                }
                lane.closing |= closes;
                // A thread is on this connection; it takes this one next.
                lane.queued_bytes += bytes;
                lane.queue.push_back(work);
                // A poll held at the head is answered now: nothing waits
                // behind a hold (and a connection that reuses the address
                // of one that vanished is not stuck behind its old poll).
                let held = lane.held.take();
                drop(lanes);
                if let Some(held) = held {
                    held.answer_now();
                }
                return;
            }
            // The lane of a connection abide closed, still finishing: a
            // request to verify may come from a new connection, so it gets
            // a lane of its own, and the old one is detached (its worker
            // stops when it sees that).
            detached = lanes.active.remove(&peer);
        }
        let id = lanes.next_lane_id;
        lanes.next_lane_id += 1;
        let lane = Lane {
            id,
            closing: closes,
            ..Lane::default()
        };
        lanes.active.insert(peer, lane);
        drop(lanes);
        if let Some(old) = detached {
            // Requests of the closed connection: never run, never answered.
            old.queue.into_iter().for_each(discard_work);
        }
        self.start(id, work);
    }

    /// Writes an answer that is ready now and keeps the connection: on the
    /// calling (dispatch) thread when nothing else of its connection is
    /// being answered and its socket can take the whole answer at once
    /// (`SendRoom::fits`), which saves the hand-off to a writer thread;
    /// else on a writer, as `Work::Answer`. Never blocks on a client: a
    /// write that finds room cannot block, and nothing else writes to the
    /// connection meanwhile (it has no lane, and only the dispatch thread
    /// starts one).
    pub fn answer_now(&self, request: Request, reply: Reply, started: Instant) {
        let inline = request.remote_addr().copied().filter(|peer| {
            self.send_room.as_ref().is_some_and(|room| {
                !self.lane_busy(peer) && room.fits(*peer, self.wire_bytes(&reply))
            })
        });
        let Some(peer) = inline else {
            return self.submit(Work::Answer {
                request,
                reply,
                started,
                close: Close::No,
            });
        };
        self.hub.count_inline_answer();
        // As a writer would (`run`): a client that does not read is cut.
        if self.respond(request, reply, started) == Written::NotRead {
            self.cut_connection(peer, None);
        }
    }

    /// An upper bound of `reply`'s size on the wire: its body, its headers
    /// and abide's own, and what tiny_http adds (status line, `Date`,
    /// `Content-Length`, `Content-Type`).
    fn wire_bytes(&self, reply: &Reply) -> usize {
        let headers: usize = self
            .common_headers
            .iter()
            .chain(&reply.headers)
            .map(|(name, value)| name.len() + value.len() + 4)
            .sum();
        reply.body.len() + headers + 256
    }

    /// Ends `peer`'s connection without an answer: it pipelined past its
    /// bound (`work` is the request that went past it), a request of it found
    /// no thread and no room, or an answer to it could not be written. Nothing
    /// more of its lane runs as it is; a poll it holds is answered now (its
    /// slot comes back); the finder shuts the socket down and resets it, then
    /// drops `work` (an unread body cannot be dropped here without reading
    /// it) and hands the lane's queue to `cut_done`. Never blocks or writes.
    fn cut_connection(&self, peer: SocketAddr, work: Option<Work>) {
        let (lane_id, held) = {
            let mut lanes = self.lanes.lock();
            match lanes.active.get_mut(&peer) {
                Some(lane) if lane.cut => {
                    drop(lanes);
                    if let Some(work) = work {
                        self.drop_unrun(peer, work);
                    }
                    return;
                }
                Some(lane) => {
                    lane.cut = true;
                    lane.dead = true;
                    (Some(lane.id), lane.held.take())
                }
                None => (None, None),
            }
        };
        if let Some(held) = held {
            held.answer_now();
        }
        self.hub.count_cut_connection();
        let request = work.map(|work| {
            let (request, started) = work.into_request();
            let method = request.method().to_string();
            let target = request.url().to_string();
            self.log(&method, &target, Some(peer), 0, started);
            request
        });
        let me = self.me.clone();
        self.finder.cut(
            peer,
            Box::new(move |inode: Option<u64>| {
                if let Some(request) = request {
                    discard(request);
                }
                if let Some(writer) = me.upgrade() {
                    writer.cut_done(peer, lane_id, inode);
                }
            }),
        );
    }

    /// The finder has shut the socket of a cut connection (`inode`, if it
    /// was still open): its lane goes, requests from its address are verified
    /// from now on like those of a closed connection, and so are the ones its
    /// lane held: they run only if they came over another socket (a client
    /// that reused the address of one that vanished), never over this one.
    fn cut_done(&self, peer: SocketAddr, lane_id: Option<u64>, inode: Option<u64>) {
        let mut lanes = self.lanes.lock();
        let lane = match lanes.active.get(&peer) {
            Some(lane) if Some(lane.id) == lane_id => lanes.active.remove(&peer),
            _ => None,
        };
        lanes.mark_closed(peer, inode, Instant::now());
        drop(lanes);
        for work in lane.into_iter().flat_map(|lane| lane.queue) {
            let (request, started) = work.into_request();
            self.submit(Work::Verify { request, started });
        }
    }

    /// Lets go of a request of a connection being cut, unrun and unanswered:
    /// here if that reads nothing from the client, else on the finder
    /// thread once the socket is shut (an unread body is read on drop).
    fn drop_unrun(&self, peer: SocketAddr, work: Work) {
        let (request, _) = work.into_request();
        if holds_unread_body(&request) {
            self.finder.cut(peer, Box::new(move |_| discard(request)));
        } else {
            discard(request);
        }
    }

    /// Marks the lane of `peer` as closing, before its connection's reader is
    /// given back to tiny_http (which may then parse what follows).
    fn mark_closing(&self, peer: Option<SocketAddr>) {
        let Some(peer) = peer else {
            return;
        };
        if let Some(lane) = self.lanes.lock().active.get_mut(&peer) {
            lane.closing = true;
        }
    }

    /// Hands a lane's head to the pool of its kind. If that pool can take no
    /// more (no thread could be spawned, or its backlog is full), a writer
    /// answers `503`; if no writer can take even that, the connection is cut.
    fn start(&self, lane: u64, work: Work) {
        let result = if work.is_wait() {
            self.waiters.submit((lane, work))
        } else {
            self.writers.submit((lane, work))
        };
        let Err((lane, work)) = result else {
            return;
        };
        self.hub.count_overloaded_request();
        let err = Error::Busy {
            message: "the server is overloaded; retry later".into(),
            retry_after_secs: 1,
        };
        let (request, started) = work.into_request();
        let refusal = Work::Answer {
            request,
            reply: Reply::error(&err),
            started,
            close: Close::No,
        };
        if let Err((_, refusal)) = self.writers.submit((lane, refusal)) {
            match refusal.request().remote_addr().copied() {
                Some(peer) => self.cut_connection(peer, Some(refusal)),
                None => discard_work(refusal),
            }
        }
    }

    /// A pool thread's job: answer `work`, then the rest of its connection's
    /// lane (number `lane`).
    fn run(&self, lane: u64, mut work: Work, kind: Kind) {
        loop {
            let peer = work.request().remote_addr().copied();
            let dead = peer.is_some_and(|p| {
                self.lanes
                    .lock()
                    .active
                    .get(&p)
                    .is_none_or(|l| l.id != lane || l.dead)
            });
            if !dead {
                work = self.decide(work);
            }
            if work.is_wait() && kind != Kind::Waiter {
                // A deferred poll that must wait: a waiter takes the lane on.
                return self.start(lane, work);
            }
            if let (Work::Wait { ticket, .. }, Some(peer), false) = (&work, peer, dead) {
                self.hold(peer, lane, ticket.early_answer());
            }
            let (written, closed) = if dead {
                discard_work(work);
                (Written::Gone, false)
            } else {
                self.execute(work)
            };
            let Some(peer) = peer else {
                return;
            };
            let next = {
                let mut lanes = self.lanes.lock();
                let Some(current) = lanes.active.get_mut(&peer).filter(|l| l.id == lane) else {
                    // Detached (see `submit`) or cut: its queue went elsewhere.
                    return;
                };
                current.held = None;
                if current.cut {
                    // What it holds is verified once the socket is shut (`cut_done`).
                    return;
                }
                if !dead && !closed && written == Written::NotRead {
                    // The client does not read: cut the connection. What is
                    // queued is verified after the cut (`cut_done`).
                    drop(lanes);
                    return self.cut_connection(peer, None);
                }
                if !dead && !closed && written == Written::Gone {
                    // The client is gone (reset). A reset socket has no peer
                    // any more, so what is queued may only have come before
                    // the reset, or over a new connection that reuses the
                    // address: either way it runs, on a lane of its own.
                    let lane = lanes.active.remove(&peer).expect("the current lane");
                    drop(lanes);
                    lane.queue.into_iter().for_each(|work| self.submit(work));
                    return;
                }
                current.dead |= closed;
                match current.queue.pop_front() {
                    Some(next) => {
                        current.queued_bytes -= head_bytes(next.request());
                        next
                    }
                    None => {
                        lanes.active.remove(&peer);
                        return;
                    }
                }
            };
            let mine = if next.is_wait() {
                Kind::Waiter
            } else {
                Kind::Writer
            };
            if mine != kind {
                return self.start(lane, next);
            }
            work = next;
        }
    }

    /// Notes the poll `lane` holds, so that a request arriving behind it
    /// answers it at once (`submit`); answers it now if one already has.
    fn hold(&self, peer: SocketAddr, lane: u64, early: EarlyAnswer) {
        let mut lanes = self.lanes.lock();
        let Some(current) = lanes.active.get_mut(&peer).filter(|l| l.id == lane) else {
            return;
        };
        if current.queue.is_empty() && !current.cut {
            current.held = Some(early);
        } else {
            drop(lanes);
            early.answer_now();
        }
    }

    /// Deletes a channel (with a store, once committed); the answer.
    /// Out of line: `decide` is on every waiter's stack, and a waiter
    /// thread touches each page its deepest frame reaches.
    #[inline(never)]
    fn delete(&self, channel: &str) -> Reply {
        match &self.store {
            Some(store) => match store.delete(channel) {
                Ok(()) => Reply::empty(204),
                Err(err) => Reply::error(&err),
            },
            None => {
                self.hub.delete(channel);
                Reply::empty(204)
            }
        }
    }

    /// Decides a deferred poll or deletion at the head of its lane: the
    /// deletion is done and answered, the poll answered now or made to wait.
    fn decide(&self, work: Work) -> Work {
        let (request, reply, started) = match work {
            Work::Poll {
                request,
                spec,
                started,
            } => match self.hub.begin_poll(&spec) {
                Ok(PollStart::Wait(ticket)) => {
                    return Work::Wait {
                        request,
                        ticket,
                        started,
                    };
                }
                Ok(PollStart::Now(answer)) => (request, Reply::poll(answer), started),
                Err(err) => (request, Reply::error(&err), started),
            },
            Work::Delete {
                request,
                channel,
                started,
            } => (request, self.delete(&channel), started),
            other => return other,
        };
        Work::Answer {
            request,
            reply,
            started,
            close: Close::No,
        }
    }

    /// Does one piece of work; returns how its answer was written, and
    /// whether its connection was closed.
    fn execute(&self, work: Work) -> (Written, bool) {
        match work {
            Work::Answer {
                request,
                reply,
                started,
                close,
            } => (
                self.answer(request, reply, started, close),
                close != Close::No,
            ),
            Work::Publish {
                mut request,
                channel,
                started,
            } => {
                let mut wake = None;
                let (reply, close) = catch_unwind(AssertUnwindSafe(|| {
                    self.publish(&mut request, &channel, started, &mut wake)
                }))
                .unwrap_or_else(|_| {
                    let err = Error::Internal("publishing failed; see the server log".into());
                    Err((err, Close::Yes))
                })
                .unwrap_or_else(|(err, close)| (Reply::error(&err), close));
                let written = self.answer(request, reply, started, close);
                // The publisher has its answer; now the waiters run.
                drop(wake);
                (written, close != Close::No)
            }
            Work::Verify { request, started } => self.verify(request, started),
            // Decided at the head of the lane (`decide`) before they get here.
            Work::Poll { .. } | Work::Delete { .. } => {
                unreachable!("deferred work is decided before it runs")
            }
            Work::Wait {
                request,
                ticket,
                started,
            } if ticket.is_stream() => (self.stream(request, ticket, started), true),
            Work::Wait {
                request,
                ticket,
                started,
            } => {
                let answer = catch_unwind(AssertUnwindSafe(|| self.hub.wait(&ticket)));
                let reply = match answer {
                    Ok(answer) => Reply::poll(answer),
                    Err(_) => Reply::error(&Error::Internal(
                        "the poll failed; see the server log".into(),
                    )),
                };
                let written = self.respond(request, reply, started);
                drop(ticket);
                (written, false)
            }
        }
    }

    /// Routes `request` again if it came over another socket than the
    /// connection closed lately from its address; refuses it otherwise.
    fn verify(&self, request: Request, started: Instant) -> (Written, bool) {
        let peer = request.remote_addr().copied();
        let closed_inode = peer.and_then(|p| self.lanes.lock().closed(&p, Instant::now()));
        let reopened = match closed_inode {
            // Verified already, or the hold is over.
            None => true,
            Some(inode) => peer
                .and_then(|p| self.finder.find(p))
                .is_some_and(|socket| inode.is_none_or(|i| socket.inode() != i)),
        };
        match (reopened, self.redispatch.get()) {
            (true, Some(redispatch)) => {
                if let Some(p) = peer {
                    self.lanes.lock().closed.remove(&p);
                }
                redispatch(request);
                (Written::Yes, false)
            }
            _ => {
                let err = Error::BadRequest(
                    "this connection was closed after a refused request; open a new one".into(),
                );
                let written = self.respond_and_close(request, Reply::error(&err), started);
                (written, true)
            }
        }
    }

    /// Reads the body and publishes it. A refusal says whether the connection
    /// must close (when the body was not read to its end).
    #[inline(never)]
    fn publish(
        &self,
        request: &mut Request,
        channel: &str,
        started: Instant,
        wake: &mut Option<Wake>,
    ) -> Result<(Reply, Close), (Error, Close)> {
        let body = read_body(request, self.max_event_bytes, started + self.idle_timeout)?;
        let refuse = |err| (err, Close::No);
        let text = std::str::from_utf8(&body).map_err(|_| {
            refuse(Error::BadRequest(
                "body is not UTF-8 text; send one JSON value".into(),
            ))
        })?;
        if text.trim().is_empty() {
            return Err(refuse(Error::BadRequest(
                "body is empty; send one JSON value".into(),
            )));
        }
        request::check_json_depth(&body, request::MAX_JSON_DEPTH).map_err(refuse)?;
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| refuse(Error::BadRequest(format!("body is not valid JSON: {e}"))))?;
        let data_json = serde_json::to_string(&value).expect("a Value serializes");
        let event = match &self.store {
            // Answered once stored; the store's thread wakes the waiters.
            Some(store) => store.publish(channel, data_json).map_err(refuse)?,
            None => {
                let (event, waiters) = self
                    .hub
                    .publish_deferred(channel, &data_json)
                    .map_err(refuse)?;
                *wake = Some(waiters);
                event
            }
        };
        Ok((Reply::json(201, event.json.to_string()), Close::No))
    }

    /// Writes `reply`, then keeps or closes the connection.
    fn answer(&self, request: Request, reply: Reply, started: Instant, close: Close) -> Written {
        match close {
            Close::No => self.respond(request, reply, started),
            Close::Yes => self.respond_and_close(request, reply, started),
        }
    }

    /// Writes `reply` with `Connection: close` and ends the connection, so
    /// that nothing the client sent after this request is read as a request.
    ///
    /// tiny_http has no way to close a connection, and dropping a request
    /// makes it read the rest of the declared body. So: find the socket
    /// (`connection.rs`); shut it for reading, so that the unread body reads
    /// as end of file at once; write the answer through the request's raw
    /// writer; shut the socket down while that writer is still held, so that
    /// tiny_http's connection thread, which then sees end of file, cannot
    /// write anything after our answer. The answer goes out at once, before
    /// any of a refused body is read: clients still sending it read it
    /// (Python's `requests`, curl and Chromium do; tests pin the first two).
    #[inline(never)]
    fn respond_and_close(&self, request: Request, reply: Reply, started: Instant) -> Written {
        let method = request.method().to_string();
        let target = request.url().to_string();
        let (peer, socket) = self.take_over(&request);
        let head = self.raw_head(&reply, request.http_version(), Some(reply.body.len()));
        let head_only =
            *request.method() == Method::Head || matches!(reply.status, 100..=199 | 204 | 304);
        let status = reply.status;
        let events = reply.events;
        let watch = peer.map(|p| self.deadlines.watch(p));
        let mut writer = request.into_writer();
        let written = Written::from(
            writer
                .write_all(head.as_bytes())
                .and_then(|()| match head_only {
                    true => Ok(()),
                    false => writer.write_all(&reply.body),
                })
                .and_then(|()| writer.flush()),
        );
        drop(watch);
        if written == Written::Yes {
            self.hub.count_delivered(events);
        }
        self.end_connection(peer, socket, writer);
        self.hub.count_closed_connection();
        self.log(&method, &target, peer, status, started);
        written
    }

    /// Takes `request`'s connection over for an answer abide writes itself
    /// and ends (`end_connection`): its lane is closing, and its socket,
    /// found, is shut for reading (an unread body or a pipelined request
    /// then reads as end of file at once).
    fn take_over(&self, request: &Request) -> (Option<SocketAddr>, Option<ConnectionSocket>) {
        let peer = request.remote_addr().copied();
        self.mark_closing(peer);
        let socket = peer.and_then(|p| self.finder.find(p));
        if let Some(socket) = &socket {
            socket.shut_reading();
        }
        (peer, socket)
    }

    /// Ends a connection abide answered through its raw `writer` (held until
    /// now, so that tiny_http writes nothing after our answer): from now on
    /// requests from its address are verified, nothing more of its lane runs,
    /// and the socket is shut down and reset once what was written is read.
    fn end_connection(
        &self,
        peer: Option<SocketAddr>,
        socket: Option<ConnectionSocket>,
        writer: Box<dyn Write + Send>,
    ) {
        if let Some(peer) = peer {
            // Before the socket is shut down (after which the client may
            // reuse its port).
            let inode = socket.as_ref().map(|s| s.inode());
            let mut lanes = self.lanes.lock();
            lanes.mark_closed(peer, inode, Instant::now());
            if let Some(lane) = lanes.active.get_mut(&peer) {
                lane.dead = true;
            }
        }
        if let Some(socket) = &socket {
            socket.shut_down();
            socket.reset_once_delivered(RESET_WAIT);
        }
        drop(writer);
    }

    /// Writes a stream of Server-Sent Events on `request`'s connection: a
    /// `retry:` line, then each event after the ticket's cursor as `id:` and
    /// `data:` lines, in id order, once each; `event: missed` before events
    /// that follow a gap; a comment every `--sse-heartbeat` while nothing
    /// comes (a client that left fails that write); `event: gone` when a
    /// channel is deleted. It ends on a deletion, at shutdown, after
    /// `--max-stream-seconds`, when a write fails or outlives
    /// `--write-timeout` (a client that does not read is dropped; its events
    /// stay, and it resumes with its cursor), and then the connection is
    /// closed: a stream's body ends with its connection (no length, no
    /// chunks, nothing buffered on the way: each step is flushed).
    #[inline(never)]
    fn stream(&self, request: Request, mut ticket: Ticket, started: Instant) -> Written {
        let method = request.method().to_string();
        let target = request.url().to_string();
        // Nothing is read after a stream's request.
        let (peer, socket) = self.take_over(&request);
        let mut head = Reply::empty(200);
        head.headers.extend([
            ("Content-Type", "text/event-stream; charset=utf-8".into()),
            ("Cache-Control", "no-store".into()),
            // nginx passes the stream on unbuffered.
            ("X-Accel-Buffering", "no".into()),
        ]);
        let mut out = self.raw_head(&head, request.http_version(), None);
        let _ = write!(out, "retry: {SSE_RETRY_MS}\n\n");
        let mut writer = request.into_writer();
        let mut written = self.write_step(peer, &mut writer, &out);
        while written == Written::Yes {
            let heartbeat_at = Instant::now() + self.sse_heartbeat;
            let step = catch_unwind(AssertUnwindSafe(|| {
                self.hub.next_for_stream(&mut ticket, heartbeat_at)
            }))
            .unwrap_or(StreamStep::End);
            out.clear();
            let mut delivered = 0;
            let mut last = false;
            match step {
                StreamStep::Events { events, missed } => {
                    if missed {
                        let first = events.first().map(|e| e.id);
                        let _ = write!(out, "event: missed\ndata: {}\n\n", gap_json(first));
                    }
                    for event in &events {
                        let _ = write!(out, "id: {}\ndata: {}\n\n", event.id, event.json);
                    }
                    delivered = events.len();
                }
                StreamStep::Missed => {
                    let _ = write!(out, "event: missed\ndata: {}\n\n", gap_json(None));
                }
                StreamStep::Heartbeat => out.push_str(": heartbeat\n\n"),
                StreamStep::Gone { channel } => {
                    let data = serde_json::json!({ "channel": channel });
                    let _ = write!(out, "event: gone\ndata: {data}\n\n");
                    last = true;
                }
                StreamStep::End => break,
            }
            written = self.write_step(peer, &mut writer, &out);
            if written == Written::Yes {
                self.hub.count_delivered(delivered);
            }
            if last {
                break;
            }
        }
        self.end_connection(peer, socket, writer);
        drop(ticket);
        self.log(&method, &target, peer, 200, started);
        written
    }

    /// Writes one step of a stream and flushes it, within `--write-timeout`.
    fn write_step(
        &self,
        peer: Option<SocketAddr>,
        writer: &mut Box<dyn Write + Send>,
        text: &str,
    ) -> Written {
        let _watch = peer.map(|p| self.deadlines.watch(p));
        Written::from(
            writer
                .write_all(text.as_bytes())
                .and_then(|()| writer.flush()),
        )
    }

    /// Writes `reply` and logs it; returns whether the write succeeded. Blocks
    /// up to `--write-timeout` in all on a client that does not read.
    pub fn respond(&self, request: Request, reply: Reply, started: Instant) -> Written {
        // Kept for the log line only (the request is consumed by the write).
        let (method, target) = match self.quiet {
            true => (String::new(), String::new()),
            false => (request.method().to_string(), request.url().to_string()),
        };
        let peer = request.remote_addr().copied();
        let status = reply.status;
        let events = reply.events;
        let _watch = peer.map(|p| self.deadlines.watch(p));
        // tiny_http reports success for a client that has gone away; the count
        // is of answers written without an error, not of answers read.
        let written = Written::from(request.respond(self.response(reply)));
        if written == Written::Yes {
            self.hub.count_delivered(events);
        }
        self.log(&method, &target, peer, status, started);
        written
    }

    /// The tiny_http response for `reply`, with abide's own headers.
    fn response(&self, reply: Reply) -> Response<Cursor<Vec<u8>>> {
        let headers: Vec<Header> = self
            .common_headers
            .iter()
            .chain(&reply.headers)
            .map(|(name, value)| make_header(name, value))
            .collect();
        let length = reply.body.len();
        Response::new(
            StatusCode(reply.status),
            headers.into(),
            Cursor::new(reply.body),
            Some(length),
            None,
        )
        .with_chunked_threshold(usize::MAX)
    }

    /// The status line and headers of `reply` with `Connection: close`,
    /// written by abide itself (tiny_http drops a `Connection` header);
    /// without a `length`, the body ends with the connection (a stream).
    fn raw_head(&self, reply: &Reply, version: &HTTPVersion, length: Option<usize>) -> String {
        let status = StatusCode(reply.status);
        let minor = if *version <= HTTPVersion(1, 0) { 0 } else { 1 };
        let mut head = format!(
            "HTTP/1.{minor} {} {}\r\nDate: {}\r\n",
            reply.status,
            status.default_reason_phrase(),
            httpdate::fmt_http_date(SystemTime::now()),
        );
        for (name, value) in self.common_headers.iter().chain(&reply.headers) {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        if let Some(length) = length {
            let _ = write!(head, "Content-Length: {length}\r\n");
        }
        head.push_str("Connection: close\r\n\r\n");
        head
    }

    /// One access log line; what the client sent is escaped (`printable`).
    fn log(
        &self,
        method: &str,
        target: &str,
        peer: Option<SocketAddr>,
        status: u16,
        started: Instant,
    ) {
        if self.quiet || target == WATCHDOG_TARGET {
            return;
        }
        // 0: the connection was cut, nothing was answered.
        let status = match status {
            0 => "cut".to_string(),
            status => status.to_string(),
        };
        let peer = peer.map_or("-".to_string(), |p| p.to_string());
        eprintln!(
            "{} {peer} {} {} {status} {:.1}ms",
            humantime::format_rfc3339_millis(SystemTime::now()),
            printable(method, 32),
            printable(&auth::redact_token(target), LOG_TARGET_CHARS),
            started.elapsed().as_secs_f64() * 1000.0
        );
    }

    /// Stops the pools, giving their threads until `deadline` to finish.
    pub fn join(&self, deadline: Instant) {
        self.waiters.join(deadline);
        self.writers.join(deadline);
        self.deadlines.stop();
        self.finder.stop();
    }
}

/// The headers every answer carries besides its own: `Server`, and the
/// CORS headers when `--cors-origin` is set. Built once, at start.
fn common_headers(cors_origin: Option<&str>) -> Vec<(&'static str, String)> {
    let mut headers = vec![(
        "Server",
        concat!("abide/", env!("CARGO_PKG_VERSION")).into(),
    )];
    if let Some(origin) = cors_origin {
        headers.push(("Access-Control-Allow-Origin", origin.to_string()));
        headers.push((
            "Access-Control-Expose-Headers",
            format!("{MISSED_HEADER}, Retry-After, WWW-Authenticate"),
        ));
        if origin != "*" {
            headers.push(("Vary", "Origin".into()));
        }
    }
    headers
}

/// At most `max_chars` of `text` for a log line: control characters,
/// backslashes and anything outside printable ASCII become `\xNN` escapes,
/// so a client cannot forge or break a line.
fn printable(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars));
    for c in text.chars().take(max_chars) {
        if c == ' ' || (c.is_ascii_graphic() && c != '\\') {
            out.push(c);
        } else {
            for b in c.to_string().bytes() {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    if text.chars().nth(max_chars).is_some() {
        out.push_str("...");
    }
    out
}

/// Lets go of a request without writing anything: its turn in the
/// connection's answer order passes at once. For connections that stopped
/// reading, where every write would wait for `--write-timeout`, and for those
/// abide closed.
fn discard(request: Request) {
    drop(request.into_writer());
}

/// Bytes a request's head takes (its line and headers, as received, about):
/// what a queued request holds in memory.
fn head_bytes(request: &Request) -> usize {
    let headers: usize = all_headers(request.headers())
        .iter()
        .map(|h| h.field.as_str().as_str().len() + h.value.as_str().len() + 4)
        .sum();
    request.method().as_str().len() + request.url().len() + 12 + headers
}

/// Whether dropping `request` would read from its connection: tiny_http
/// reads a body it did not buffer (a chunked one, a larger one than 1 KiB,
/// or one announced with `Expect: 100-continue`) to its end on drop.
pub fn holds_unread_body(request: &Request) -> bool {
    request.body_length().is_none_or(|length| length > 0)
        && all_headers(request.headers())
            .iter()
            .any(|h| h.field.equiv("Content-Length") || h.field.equiv("Transfer-Encoding"))
}

/// Discards queued work of a dead connection (a wait slot is given back).
fn discard_work(work: Work) {
    let (request, _) = work.into_request();
    discard(request);
}

/// Reads the whole body, refusing more than `max_bytes` and giving up at
/// `deadline`. A refusal closes the connection (its body is not read to the
/// end).
fn read_body(
    request: &mut Request,
    max_bytes: usize,
    deadline: Instant,
) -> Result<Vec<u8>, (Error, Close)> {
    let declared = request.body_length().unwrap_or(0);
    let mut body = Vec::with_capacity(declared.min(max_bytes));
    // Read into the heap, not a stack buffer: a large stack frame is probed
    // page by page, and every page a thread touches stays resident.
    let mut chunk = vec![0u8; 8192];
    let reader = request.as_reader();
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err((Error::BodyTimeout, Close::Yes));
            }
            Err(e) => {
                let err = Error::BadRequest(format!("could not read the body: {e}"));
                return Err((err, Close::Yes));
            }
        };
        if n == 0 {
            return Ok(body);
        }
        if body.len() + n > max_bytes {
            let err = Error::TooLarge {
                limit_bytes: max_bytes,
            };
            return Err((err, Close::Yes));
        }
        body.extend_from_slice(&chunk[..n]);
        if Instant::now() > deadline {
            return Err((Error::BodyTimeout, Close::Yes));
        }
    }
}

fn make_header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("header names and values are ASCII")
}
