//! Answering requests: the per-connection lanes and the two worker pools.
//!
//! Owns everything that may block on a client: reading a body, waiting for a
//! poll, writing an answer, refusing an oversized body. The dispatch thread
//! hands each request over as a `Work` through `Writer::submit`, which never
//! blocks. Runs on the waiter pool (`Work::Wait`, one wait slot each) and the
//! writer pool (everything else, at most `--max-writers` threads).
//!
//! Lanes: tiny_http writes a connection's answers strictly in order, and an
//! answer whose predecessor is not written yet blocks its writer. So at most
//! one thread works on a connection at a time; later requests of the same
//! connection (pipelining) wait in its lane, holding no thread, and the thread
//! that finishes one takes the next. A write that fails (the client stopped
//! reading for `--write-timeout`) marks the lane dead: its remaining requests
//! are discarded without writing, so a client that never reads costs one
//! thread for one write timeout, never the whole pool.
//!
//! Together with `server.rs`, the only module that touches tiny_http.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Cursor, Write};
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use tiny_http::{Header, ReadWrite, Request, Response, StatusCode};

use crate::api::reply::{MISSED_HEADER, Reply};
use crate::api::request;
use crate::config::Config;
use crate::edge::pool::Pool;
use crate::error::Error;
use crate::hub::{Hub, Ticket, Wake};

/// Stack of a waiter thread: it waits and writes a prepared answer.
pub const WAITER_STACK_BYTES: usize = 64 * 1024;
/// Stack of a writer thread: it also parses JSON bodies (nesting is capped at
/// `request::MAX_JSON_DEPTH`; debug builds need the room).
pub const WRITER_STACK_BYTES: usize = 512 * 1024;
/// Stack of a drain thread: it only drops a refused request.
const DRAIN_STACK_BYTES: usize = 64 * 1024;
/// Threads that may drain refused bodies at once.
const MAX_DRAINERS: usize = 8;
/// A refused body declared up to this size is drained when its request is
/// dropped (tiny_http allocates the declared size once, lazily zeroed, and
/// reads until the client closes or the read timeout); a larger one is parked.
pub const MAX_DRAIN_BYTES: usize = 16 * 1024 * 1024;
/// Requests one connection may have queued behind the one being answered;
/// beyond it the connection is treated as not reading (its lane dies).
pub const MAX_PIPELINED_REQUESTS: usize = 64;
/// Longest request target written to the access log.
const LOG_TARGET_CHARS: usize = 200;

/// Work on one request.
pub enum Work {
    /// Write a prepared answer.
    Answer {
        request: Request,
        reply: Reply,
        started: Instant,
    },
    /// Read the body, publish, answer.
    Publish {
        request: Request,
        channel: String,
        started: Instant,
    },
    /// Answer `413` to a declared body over the limit, without reading it.
    RefuseBody {
        request: Request,
        declared_bytes: u64,
        started: Instant,
    },
    /// Wait for the poll's events, then answer (holds a wait slot).
    Wait {
        request: Request,
        ticket: Ticket,
        started: Instant,
    },
}

impl Work {
    fn request(&self) -> &Request {
        match self {
            Work::Answer { request, .. }
            | Work::Publish { request, .. }
            | Work::RefuseBody { request, .. }
            | Work::Wait { request, .. } => request,
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
    queue: VecDeque<Work>,
    /// A write failed or the client piled up requests: discard the rest.
    dead: bool,
}

/// The answering side. One per server, shared by the dispatch threads.
pub struct Writer {
    hub: Hub,
    max_event_bytes: usize,
    idle_timeout: Duration,
    cors_origin: Option<String>,
    quiet: bool,
    waiters: Pool<Work>,
    writers: Pool<Work>,
    drainers: Pool<Box<dyn ReadWrite + Send>>,
    /// Connections with a request being answered (and those queued behind it).
    lanes: Mutex<HashMap<SocketAddr, Lane>>,
    /// Streams of refused bodies too large to drain. Deliberately never
    /// dropped: tiny_http would allocate the declared size and abort.
    parked: ManuallyDrop<Mutex<Vec<Box<dyn ReadWrite + Send>>>>,
}

impl Writer {
    pub fn new(config: &Config, hub: Hub) -> Arc<Writer> {
        Arc::new_cyclic(|me: &Weak<Writer>| {
            let for_waiters = me.clone();
            let for_writers = me.clone();
            Writer {
                hub,
                max_event_bytes: config.max_event_bytes,
                idle_timeout: config.idle_timeout,
                cors_origin: config.cors_origin.clone(),
                quiet: config.quiet,
                waiters: Pool::new(
                    "abide-waiter",
                    config.max_waiters,
                    WAITER_STACK_BYTES,
                    move |work| {
                        if let Some(writer) = for_waiters.upgrade() {
                            writer.run(work, Kind::Waiter);
                        }
                    },
                ),
                writers: Pool::new(
                    "abide-writer",
                    config.max_writers,
                    WRITER_STACK_BYTES,
                    move |work| {
                        if let Some(writer) = for_writers.upgrade() {
                            writer.run(work, Kind::Writer);
                        }
                    },
                ),
                drainers: Pool::new("abide-drain", MAX_DRAINERS, DRAIN_STACK_BYTES, drop),
                lanes: Mutex::new(HashMap::new()),
                parked: ManuallyDrop::new(Mutex::new(Vec::new())),
            }
        })
    }

    /// Takes a request from the dispatch thread. Never blocks.
    pub fn submit(&self, work: Work) {
        if let Some(peer) = work.request().remote_addr().copied() {
            let mut lanes = self.lanes.lock();
            if let Some(lane) = lanes.get_mut(&peer) {
                // A thread is on this connection; it takes this one next.
                if lane.queue.len() >= MAX_PIPELINED_REQUESTS {
                    lane.dead = true;
                }
                lane.queue.push_back(work);
                return;
            }
            lanes.insert(peer, Lane::default());
        }
        self.start(work);
    }

    /// Hands a lane's head to the pool of its kind.
    fn start(&self, work: Work) {
        let result = if work.is_wait() {
            self.waiters.submit(work)
        } else {
            self.writers.submit(work)
        };
        if let Err(work) = result {
            // No thread could be spawned: answer on whichever pool works.
            let err = Error::Busy {
                message: "no thread could be started; retry later".into(),
                retry_after_secs: 1,
            };
            let (request, started) = match work {
                Work::Answer {
                    request, started, ..
                }
                | Work::Publish {
                    request, started, ..
                }
                | Work::RefuseBody {
                    request, started, ..
                }
                | Work::Wait {
                    request, started, ..
                } => (request, started),
            };
            let fallback = Work::Answer {
                request,
                reply: Reply::error(&err),
                started,
            };
            if let Err(fallback) = self.writers.submit(fallback) {
                // Not even a writer: answer here, on the caller's thread, which
                // also finishes the connection's lane so that it cannot stick.
                self.run(fallback, Kind::Writer);
            }
        }
    }

    /// A pool thread's job: answer `work`, then the rest of its connection's lane.
    fn run(&self, mut work: Work, kind: Kind) {
        loop {
            let peer = work.request().remote_addr().copied();
            let dead = peer.is_some_and(|p| self.lanes.lock().get(&p).is_some_and(|l| l.dead));
            let written = if dead && !matches!(work, Work::RefuseBody { .. }) {
                discard_work(work);
                false
            } else {
                self.execute(work)
            };
            let Some(peer) = peer else {
                return;
            };
            let next = {
                let mut lanes = self.lanes.lock();
                let lane = lanes.get_mut(&peer).expect("a lane outlives its work");
                lane.dead |= !written;
                match lane.queue.pop_front() {
                    Some(next) => next,
                    None => {
                        lanes.remove(&peer);
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
                return self.start(next);
            }
            work = next;
        }
    }

    /// Does one piece of work; returns whether its answer was written.
    fn execute(&self, work: Work) -> bool {
        match work {
            Work::Answer {
                request,
                reply,
                started,
            } => self.respond(request, reply, started),
            Work::Publish {
                mut request,
                channel,
                started,
            } => {
                let mut wake = None;
                let reply = catch_unwind(AssertUnwindSafe(|| {
                    self.publish(&mut request, &channel, started, &mut wake)
                }))
                .unwrap_or_else(|_| {
                    Err(Error::Internal(
                        "publishing failed; see the server log".into(),
                    ))
                })
                .unwrap_or_else(|err| Reply::error(&err));
                let written = self.respond(request, reply, started);
                // The publisher has its answer; now the waiters run.
                drop(wake);
                written
            }
            Work::RefuseBody {
                request,
                declared_bytes,
                started,
            } => self.refuse_body(request, declared_bytes, started),
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
                written
            }
        }
    }

    #[inline(never)]
    fn publish(
        &self,
        request: &mut Request,
        channel: &str,
        started: Instant,
        wake: &mut Option<Wake>,
    ) -> Result<Reply, Error> {
        let body = read_body(request, self.max_event_bytes, started + self.idle_timeout)?;
        let text = std::str::from_utf8(&body)
            .map_err(|_| Error::BadRequest("body is not UTF-8 text; send one JSON value".into()))?;
        if text.trim().is_empty() {
            return Err(Error::BadRequest(
                "body is empty; send one JSON value".into(),
            ));
        }
        request::check_json_depth(&body, request::MAX_JSON_DEPTH)?;
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::BadRequest(format!("body is not valid JSON: {e}")))?;
        let data_json = serde_json::to_string(&value).expect("a Value serializes");
        let (event, waiters) = self.hub.publish_deferred(channel, &data_json)?;
        *wake = Some(waiters);
        Ok(Reply::json(201, event.json.to_string()))
    }

    /// Answers `413` to a request whose declared body exceeds the limit,
    /// without reading it, and never lets tiny_http drain a huge one.
    ///
    /// tiny_http drains an unread body when the request is dropped, into one
    /// buffer of the declared size: a length beyond memory aborts the process.
    /// `upgrade()` is the only public way to keep the body reader: the client
    /// gets an interim `103` (clients skip 1xx answers) and then a complete `413` with `Connection: close`
    /// written by us. The stream is then dropped on a drain thread when the
    /// declared size is at most `MAX_DRAIN_BYTES` (the drop reads until the
    /// client closes or the read timeout, and blocks no writer), and parked for
    /// the life of the process beyond it (one blocked tiny_http thread and one
    /// descriptor each).
    #[inline(never)]
    fn refuse_body(&self, request: Request, declared_bytes: u64, started: Instant) -> bool {
        let err = Error::TooLarge {
            limit_bytes: self.max_event_bytes,
        };
        let method = request.method().to_string();
        let target = request.url().to_string();
        let peer = request.remote_addr().copied();
        let mut stream = request.upgrade("abide-refused", Response::empty(103));
        let body = err.to_json();
        let mut head = format!(
            "HTTP/1.1 413 Payload Too Large\r\nServer: abide/{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n",
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        if let Some(origin) = &self.cors_origin {
            head.push_str(&format!(
                "Access-Control-Allow-Origin: {origin}\r\nAccess-Control-Expose-Headers: {MISSED_HEADER}, Retry-After\r\n"
            ));
        }
        head.push_str("\r\n");
        let written = stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body.as_bytes()))
            .and_then(|()| stream.flush())
            .is_ok();
        if declared_bytes <= MAX_DRAIN_BYTES as u64 {
            if let Err(stream) = self.drainers.submit(stream) {
                self.parked.lock().push(stream);
                self.hub.count_parked_body();
            }
        } else {
            self.parked.lock().push(stream);
            self.hub.count_parked_body();
        }
        self.log(&method, &target, peer, 413, started);
        // The connection is closed for further requests either way.
        written
    }

    /// Writes `reply` and logs it; returns whether the write succeeded. Blocks
    /// up to `--write-timeout` per write on a client that does not read.
    pub fn respond(&self, request: Request, reply: Reply, started: Instant) -> bool {
        let method = request.method().to_string();
        let target = request.url().to_string();
        let peer = request.remote_addr().copied();
        let status = reply.status;
        let events = reply.events;
        let mut headers: Vec<Header> = Vec::with_capacity(reply.headers.len() + 4);
        headers.push(make_header(
            "Server",
            concat!("abide/", env!("CARGO_PKG_VERSION")),
        ));
        for (name, value) in &reply.headers {
            headers.push(make_header(name, value));
        }
        if let Some(origin) = &self.cors_origin {
            headers.push(make_header("Access-Control-Allow-Origin", origin));
            headers.push(make_header(
                "Access-Control-Expose-Headers",
                &format!("{MISSED_HEADER}, Retry-After"),
            ));
            if origin != "*" {
                headers.push(make_header("Vary", "Origin"));
            }
        }
        let length = reply.body.len();
        let response = Response::new(
            StatusCode(status),
            headers,
            Cursor::new(reply.body),
            Some(length),
            None,
        )
        .with_chunked_threshold(usize::MAX);
        // tiny_http reports success for a client that has gone away; the count
        // is of answers written without an error, not of answers read.
        let written = request.respond(response).is_ok();
        if written {
            self.hub.count_delivered(events);
        }
        self.log(&method, &target, peer, status, started);
        written
    }

    fn log(
        &self,
        method: &str,
        target: &str,
        peer: Option<SocketAddr>,
        status: u16,
        started: Instant,
    ) {
        if self.quiet {
            return;
        }
        let target: String = target.chars().take(LOG_TARGET_CHARS).collect();
        let peer = peer.map_or("-".to_string(), |p| p.to_string());
        eprintln!(
            "{} {peer} {method} {target} {status} {:.1}ms",
            humantime::format_rfc3339_millis(SystemTime::now()),
            started.elapsed().as_secs_f64() * 1000.0
        );
    }

    /// Stops the pools, giving their threads until `deadline` to finish.
    pub fn join(&self, deadline: Instant) {
        self.waiters.join(deadline);
        self.writers.join(deadline);
        self.drainers.join(deadline);
    }
}

/// Lets go of a request without writing anything: its turn in the
/// connection's answer order passes at once. For connections that stopped
/// reading, where every write would wait for `--write-timeout`.
fn discard(request: Request) {
    drop(request.into_writer());
}

/// Discards queued work of a dead connection (never a `RefuseBody`: dropping
/// that request would make tiny_http drain its declared size).
fn discard_work(work: Work) {
    match work {
        Work::Answer { request, .. } | Work::Publish { request, .. } => discard(request),
        Work::RefuseBody { .. } => unreachable!("refusals are always executed"),
        Work::Wait {
            request, ticket, ..
        } => {
            discard(request);
            drop(ticket);
        }
    }
}

/// Reads the whole body, refusing more than `max_bytes` and giving up at `deadline`.
fn read_body(request: &mut Request, max_bytes: usize, deadline: Instant) -> Result<Vec<u8>, Error> {
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
                return Err(Error::BodyTimeout);
            }
            Err(e) => return Err(Error::BadRequest(format!("could not read the body: {e}"))),
        };
        if n == 0 {
            return Ok(body);
        }
        if body.len() + n > max_bytes {
            return Err(Error::TooLarge {
                limit_bytes: max_bytes,
            });
        }
        body.extend_from_slice(&chunk[..n]);
        if Instant::now() > deadline {
            return Err(Error::BodyTimeout);
        }
    }
}

fn make_header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("header names and values are ASCII")
}
