//! The edge: the listening socket, tiny_http, and the threads that move requests.
//!
//! Only this module touches tiny_http and sockets. It owns:
//! - the listener (socket2: read/write timeouts set on the listening socket are
//!   inherited by every accepted connection) and the tiny_http `Server`s on it;
//!   tiny_http's accept thread stops at its first accept error, so each error
//!   starts a new `Server` on a clone of the listener after a backoff, while the
//!   old one keeps serving the connections it already has;
//! - one dispatch thread per `Server`: it calls `recv()`, routes, asks the hub,
//!   and hands every request to a pool. It never reads a body and never writes
//!   an answer, so a slow or silent client cannot stall it;
//! - the waiter pool (polls that must wait; one slot each, `--max-waiters`) and
//!   the writer pool (publishes, immediate answers; `--max-writers`).
//!
//! tiny_http traps handled here: an unread body is drained on drop into a
//! buffer sized from the declared `Content-Length` (so an absurd length would
//! abort the process); a declared body that never comes blocks its reader;
//! `respond()` to a vanished client returns `Ok`. See `refuse_body`.

use std::io::{self, Cursor, Write};
use std::mem::ManuallyDrop;
use std::net::{SocketAddr, TcpListener};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use socket2::{Domain, Protocol, Socket, Type};
use tiny_http::{Header, ReadWrite, Request, Response, StatusCode};

use crate::config::Config;
use crate::demo;
use crate::error::Error;
use crate::hub::{Hub, HubLimits, PollStart, Ticket};
use crate::pool::Pool;
use crate::reply::{MISSED_HEADER, Reply};
use crate::request::{self, Action, RouteSettings};
use crate::shutdown::Shutdown;

/// Stack of a waiter thread: it only waits and writes a prepared answer.
pub const WAITER_STACK_BYTES: usize = 64 * 1024;
/// Stack of a writer thread: it also parses JSON bodies (nesting depth is
/// capped at 128 by serde_json).
pub const WRITER_STACK_BYTES: usize = 256 * 1024;
/// Stack of a dispatch thread.
const DISPATCH_STACK_BYTES: usize = 256 * 1024;
/// A refused body declared up to this size is drained by tiny_http (bounded by
/// the socket timeouts); a larger one cannot be, see `refuse_body`.
pub const MAX_DRAIN_BYTES: usize = 16 * 1024 * 1024;
/// Connections parked for an undrainable declared body, at most.
pub const MAX_PARKED_BODIES: usize = 1024;
/// Listen backlog.
const LISTEN_BACKLOG: i32 = 1024;
/// After an accept error, wait this long before accepting again; doubles on
/// each error in a row up to `ACCEPT_BACKOFF_MAX`.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(20);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// tiny_http `Server`s kept after accept errors (each serves its existing
/// connections); the oldest is retired beyond this.
const MAX_LISTENER_GENERATIONS: usize = 8;
/// How long shutdown waits for pool threads to finish their answers.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);
/// Longest request target written to the access log.
const LOG_TARGET_CHARS: usize = 200;

/// A started server. Stop it with its `Shutdown` and `wait`.
pub struct Running {
    addr: SocketAddr,
    edge: Arc<Edge>,
}

/// What the dispatch threads share.
struct Edge {
    config: Config,
    hub: Hub,
    shutdown: Shutdown,
    writer: Arc<Writer>,
    waiters: Pool<WaitJob>,
    writers: Pool<WriteJob>,
    /// Kept to start a new tiny_http `Server` after an accept error.
    listener: TcpListener,
    /// tiny_http servers, oldest first; the last one is accepting.
    servers: Mutex<Vec<Generation>>,
    dispatchers: Mutex<Vec<JoinHandle<()>>>,
    accept_backoff_ms: AtomicU64,
}

struct Generation {
    number: u64,
    server: Arc<tiny_http::Server>,
}

/// What answers need; shared by the pool threads.
struct Writer {
    hub: Hub,
    max_event_bytes: usize,
    idle_timeout: Duration,
    cors_origin: Option<String>,
    quiet: bool,
    /// Connections whose undrainable body must never be dropped (see
    /// `refuse_body`). Deliberately never freed: dropping one aborts.
    parked: ManuallyDrop<Mutex<Vec<Box<dyn ReadWrite + Send>>>>,
}

/// A poll that waits on a waiter thread.
struct WaitJob {
    request: Request,
    ticket: Ticket,
    started: Instant,
}

/// Work for a writer thread.
enum WriteJob {
    Answer {
        request: Request,
        reply: Reply,
        started: Instant,
    },
    Publish {
        request: Request,
        channel: String,
        started: Instant,
    },
    RefuseBody {
        request: Request,
        declared_bytes: usize,
        started: Instant,
    },
}

/// Starts the server: binds, spawns the dispatch thread, returns at once.
pub fn start(config: Config) -> io::Result<Running> {
    config
        .check()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // Services on a Pi often start with a soft limit of 1024 descriptors.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let listener = bind(&config)?;
    let addr = listener.local_addr()?;
    let hub = Hub::new(HubLimits {
        buffer_events: config.buffer_events,
        event_ttl: config.event_ttl,
        max_channels: config.max_channels,
        max_stored_bytes: config.max_stored_bytes,
        max_waiters: config.max_waiters,
    });
    let writer = Arc::new(Writer {
        hub: hub.clone(),
        max_event_bytes: config.max_event_bytes,
        idle_timeout: config.idle_timeout,
        cors_origin: config.cors_origin.clone(),
        quiet: config.quiet,
        parked: ManuallyDrop::new(Mutex::new(Vec::new())),
    });
    let waiters = {
        let writer = writer.clone();
        Pool::new(
            "abide-waiter",
            config.max_waiters,
            WAITER_STACK_BYTES,
            move |job| writer.wait_and_answer(job),
        )
    };
    let writers = {
        let writer = writer.clone();
        Pool::new(
            "abide-writer",
            config.max_writers,
            WRITER_STACK_BYTES,
            move |job| writer.write(job),
        )
    };
    let edge = Arc::new(Edge {
        hub,
        shutdown: Shutdown::new(),
        writer,
        waiters,
        writers,
        listener,
        servers: Mutex::new(Vec::new()),
        dispatchers: Mutex::new(Vec::new()),
        accept_backoff_ms: AtomicU64::new(ACCEPT_BACKOFF_MIN.as_millis() as u64),
        config,
    });
    Edge::add_generation(&edge)?;
    {
        let c = &edge.config;
        eprintln!(
            "abide {} listening on http://{addr} (max-waiters {}, timeout {}s default / {}s max, \
             buffer {} events, max-event-bytes {}, max-channels {}, max-stored-bytes {}, \
             idle-timeout {}s, write-timeout {}s, max-writers {}, event-ttl {}, cors {})",
            env!("CARGO_PKG_VERSION"),
            c.max_waiters,
            c.default_timeout.as_secs(),
            c.max_timeout.as_secs(),
            c.buffer_events,
            c.max_event_bytes,
            c.max_channels,
            c.max_stored_bytes,
            c.idle_timeout.as_secs(),
            c.write_timeout.as_secs(),
            c.max_writers,
            c.event_ttl
                .map_or("off".to_string(), |t| format!("{}s", t.as_secs())),
            c.cors_origin.as_deref().unwrap_or("off"),
        );
    }
    Ok(Running { addr, edge })
}

/// The listening socket, with the timeouts every accepted connection inherits.
fn bind(config: &Config) -> io::Result<TcpListener> {
    let addr = config.listen;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_read_timeout(Some(config.idle_timeout))?;
    socket.set_write_timeout(Some(config.write_timeout))?;
    socket.set_tcp_nodelay(true)?;
    Ok(socket.into())
}

impl Running {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The value that stops this server when triggered.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.edge.shutdown.clone()
    }

    pub fn hub(&self) -> &Hub {
        &self.edge.hub
    }

    /// Blocks until shutdown is triggered, then stops: refuses new requests,
    /// answers every waiting poll `204`, and joins the threads it started
    /// (giving writers `SHUTDOWN_GRACE` to finish their answers).
    pub fn wait(self) {
        let edge = self.edge;
        edge.shutdown.wait();
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        edge.hub.shut_down();
        for generation in edge.servers.lock().iter() {
            generation.server.unblock();
        }
        let dispatchers = std::mem::take(&mut *edge.dispatchers.lock());
        for dispatcher in dispatchers {
            let _ = dispatcher.join();
        }
        edge.servers.lock().clear();
        // The dispatch threads held the only other references; if one slipped
        // in a restart during the stop, its threads end with the process.
        if let Ok(edge) = Arc::try_unwrap(edge) {
            edge.waiters.join(deadline);
            edge.writers.join(deadline);
        }
    }
}

impl Edge {
    /// Starts a tiny_http `Server` on a clone of the listener, with its own
    /// dispatch thread, and retires the oldest beyond `MAX_LISTENER_GENERATIONS`.
    fn add_generation(edge: &Arc<Edge>) -> io::Result<()> {
        let listener = edge.listener.try_clone()?;
        let server = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let server = Arc::new(server);
        let mut servers = edge.servers.lock();
        let number = servers.last().map_or(0, |g| g.number + 1);
        servers.push(Generation {
            number,
            server: server.clone(),
        });
        if servers.len() > MAX_LISTENER_GENERATIONS {
            let oldest = servers.remove(0);
            oldest.server.unblock();
        }
        drop(servers);
        let dispatcher = {
            let edge = edge.clone();
            thread::Builder::new()
                .name("abide-dispatch".into())
                .stack_size(DISPATCH_STACK_BYTES)
                .spawn(move || edge.dispatch_loop(number, server))?
        };
        edge.dispatchers.lock().push(dispatcher);
        Ok(())
    }

    fn is_current(&self, number: u64) -> bool {
        self.servers
            .lock()
            .last()
            .is_some_and(|g| g.number == number)
    }

    fn is_kept(&self, number: u64) -> bool {
        self.servers.lock().iter().any(|g| g.number == number)
    }

    fn dispatch_loop(self: Arc<Edge>, number: u64, server: Arc<tiny_http::Server>) {
        loop {
            match server.recv() {
                Ok(request) => {
                    if self.shutdown.is_triggered() {
                        self.refuse_for_shutdown(request);
                        continue;
                    }
                    self.accept_backoff_ms
                        .store(ACCEPT_BACKOFF_MIN.as_millis() as u64, Relaxed);
                    let edge = &self;
                    let caught = catch_unwind(AssertUnwindSafe(|| edge.dispatch(request)));
                    if caught.is_err() {
                        eprintln!("abide: a request's dispatch panicked; the request was dropped");
                    }
                }
                Err(_) if self.shutdown.is_triggered() => break,
                Err(_) if !self.is_kept(number) => break,
                Err(err) => {
                    // tiny_http's accept thread of this server has ended.
                    if self.is_current(number) {
                        self.hub.count_accept_error();
                        let backoff = Duration::from_millis(self.accept_backoff_ms.load(Relaxed));
                        eprintln!(
                            "abide: accept failed ({err}); accepting again in {} ms",
                            backoff.as_millis()
                        );
                        let next = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                        self.accept_backoff_ms
                            .store(next.as_millis() as u64, Relaxed);
                        if self.shutdown.wait_timeout(backoff) {
                            break;
                        }
                        if let Err(err) = Edge::add_generation(&self) {
                            eprintln!("abide: cannot restart the listener: {err}");
                        }
                    }
                }
            }
        }
        // Requests that arrived before the stop are refused, not dropped.
        while let Ok(Some(request)) = server.try_recv() {
            self.refuse_for_shutdown(request);
        }
    }

    fn refuse_for_shutdown(&self, request: Request) {
        let reply = Reply::error(&Error::Busy {
            message: "server is shutting down".into(),
            retry_after_secs: 1,
        });
        self.write(WriteJob::Answer {
            request,
            reply,
            started: Instant::now(),
        });
    }

    /// Routes one request and hands it to a pool. Never blocks on the client.
    fn dispatch(&self, request: Request) {
        let started = Instant::now();
        if let Some(declared_bytes) = request.body_length() {
            if declared_bytes > self.config.max_event_bytes {
                return self.write(WriteJob::RefuseBody {
                    request,
                    declared_bytes,
                    started,
                });
            }
        }
        let limits = RouteSettings {
            default_timeout: self.config.default_timeout,
            max_timeout: self.config.max_timeout,
            demo: self.config.demo,
        };
        let last_event_id = header(&request, "Last-Event-ID");
        let action = request::route(
            request.method().as_str(),
            request.url(),
            last_event_id.as_deref(),
            limits,
        );
        let reply = match action {
            Err(err) => Reply::error(&err),
            Ok(Action::Publish { channel }) => {
                return self.write(WriteJob::Publish {
                    request,
                    channel,
                    started,
                });
            }
            Ok(Action::Poll(spec)) => match self.hub.begin_poll(&spec) {
                Ok(PollStart::Now(answer)) => Reply::poll(answer),
                Ok(PollStart::Wait(ticket)) => {
                    let job = WaitJob {
                        request,
                        ticket,
                        started,
                    };
                    match self.waiters.submit(job) {
                        Ok(()) => return,
                        Err(job) => {
                            drop(job.ticket);
                            let err = Error::Busy {
                                message: "no waiter thread could be started; retry later".into(),
                                retry_after_secs: 1,
                            };
                            return self.write(WriteJob::Answer {
                                request: job.request,
                                reply: Reply::error(&err),
                                started,
                            });
                        }
                    }
                }
                Err(err) => Reply::error(&err),
            },
            Ok(Action::ChannelInfo { channel }) => match self.hub.channel_info(&channel) {
                Some(info) => Reply::json(200, info.to_string()),
                None => Reply::error(&Error::NotFound(format!(
                    "channel {channel} holds no events and has no waiters"
                ))),
            },
            Ok(Action::DeleteChannel { channel }) => {
                self.hub.delete(&channel);
                Reply::empty(204)
            }
            Ok(Action::Demo) => demo::reply(),
            Ok(Action::Healthz) => Reply::json(200, r#"{"status":"ok"}"#.into()),
            Ok(Action::Stats) => {
                Reply::json(200, self.hub.stats().with_process_figures().to_json())
            }
            Ok(Action::Metrics) => Reply::text(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                self.hub.stats().with_process_figures().to_prometheus(),
            ),
            Ok(Action::Options { allow }) => {
                let mut reply = Reply::empty(204);
                reply.headers.push(("Allow", allow.into()));
                if self.config.cors_origin.is_some() {
                    reply.headers.extend([
                        ("Access-Control-Allow-Methods", "GET, POST, DELETE".into()),
                        (
                            "Access-Control-Allow-Headers",
                            "Content-Type, Last-Event-ID".into(),
                        ),
                        ("Access-Control-Max-Age", "600".into()),
                    ]);
                }
                reply
            }
        };
        self.write(WriteJob::Answer {
            request,
            reply,
            started,
        })
    }

    /// Hands a job to the writer pool, waiting while every writer is busy
    /// (each is bounded by the socket timeouts).
    fn write(&self, mut job: WriteJob) {
        loop {
            match self.writers.submit(job) {
                Ok(()) => return,
                Err(back) => job = back,
            }
            if self.shutdown.is_triggered() && self.writers.threads() == 0 {
                // No writer will come; answer here rather than drop silently.
                return self.writer.write(job);
            }
        }
    }
}

impl Writer {
    fn wait_and_answer(&self, job: WaitJob) {
        let WaitJob {
            request,
            ticket,
            started,
        } = job;
        let answer = catch_unwind(AssertUnwindSafe(|| self.hub.wait(&ticket)));
        let reply = match answer {
            Ok(answer) => Reply::poll(answer),
            Err(_) => Reply::error(&Error::Internal(
                "the poll failed; see the server log".into(),
            )),
        };
        self.respond(request, reply, started);
        drop(ticket);
    }

    fn write(&self, job: WriteJob) {
        match job {
            WriteJob::Answer {
                request,
                reply,
                started,
            } => self.respond(request, reply, started),
            WriteJob::Publish {
                mut request,
                channel,
                started,
            } => {
                let reply = catch_unwind(AssertUnwindSafe(|| {
                    self.publish(&mut request, &channel, started)
                }))
                .unwrap_or_else(|_| {
                    Err(Error::Internal(
                        "publishing failed; see the server log".into(),
                    ))
                });
                let reply = reply.unwrap_or_else(|err| Reply::error(&err));
                self.respond(request, reply, started);
            }
            WriteJob::RefuseBody {
                request,
                declared_bytes,
                started,
            } => self.refuse_body(request, declared_bytes, started),
        }
    }

    fn publish(
        &self,
        request: &mut Request,
        channel: &str,
        started: Instant,
    ) -> Result<Reply, Error> {
        let body = read_body(request, self.max_event_bytes, started + self.idle_timeout)?;
        let text = std::str::from_utf8(&body)
            .map_err(|_| Error::BadRequest("body is not UTF-8 text; send one JSON value".into()))?;
        if text.trim().is_empty() {
            return Err(Error::BadRequest(
                "body is empty; send one JSON value".into(),
            ));
        }
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::BadRequest(format!("body is not valid JSON: {e}")))?;
        let data_json = serde_json::to_string(&value).expect("a Value serializes");
        let event = self.hub.publish(channel, &data_json)?;
        Ok(Reply::json(201, event.json.to_string()))
    }

    /// Answers `413` to a request whose declared body exceeds the limit,
    /// without reading it.
    ///
    /// tiny_http drains an unread body when the request is dropped, into one
    /// buffer of the declared size: a length beyond memory aborts the process.
    /// Up to `MAX_DRAIN_BYTES` that drain is harmless (reads are bounded by the
    /// socket timeouts). Beyond it, the only way through tiny_http's public API
    /// not to drop the body is `upgrade()`: the answer goes out as an interim
    /// `100` followed by a complete `413` with `Connection: close`, and the
    /// stream is parked for the life of the process (one blocked tiny_http
    /// thread and one descriptor each, at most `MAX_PARKED_BODIES`).
    fn refuse_body(&self, request: Request, declared_bytes: usize, started: Instant) {
        let err = Error::TooLarge {
            limit_bytes: self.max_event_bytes,
        };
        let mut parked = self.parked.lock();
        if declared_bytes <= MAX_DRAIN_BYTES || parked.len() >= MAX_PARKED_BODIES {
            drop(parked);
            return self.respond(request, Reply::error(&err), started);
        }
        let method = request.method().to_string();
        let target = request.url().to_string();
        let peer = request.remote_addr().copied();
        let mut stream = request.upgrade("abide-refused", Response::empty(100));
        let body = err.to_json();
        let mut head = format!(
            "HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        if let Some(origin) = &self.cors_origin {
            head.push_str(&format!("Access-Control-Allow-Origin: {origin}\r\n"));
        }
        head.push_str("\r\n");
        let _ = stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body.as_bytes()))
            .and_then(|()| stream.flush());
        parked.push(stream);
        drop(parked);
        self.hub.count_parked_body();
        self.log(&method, &target, peer, 413, started);
    }

    /// Writes `reply` and logs it. Runs on a pool thread; may block up to
    /// `--write-timeout` per write on a client that does not read.
    fn respond(&self, request: Request, reply: Reply, started: Instant) {
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
        if request.respond(response).is_ok() {
            self.hub.count_delivered(events);
        }
        self.log(&method, &target, peer, status, started);
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
}

/// Reads the whole body, refusing more than `max_bytes` and giving up at `deadline`.
fn read_body(request: &mut Request, max_bytes: usize, deadline: Instant) -> Result<Vec<u8>, Error> {
    let declared = request.body_length().unwrap_or(0);
    let mut body = Vec::with_capacity(declared.min(max_bytes));
    let mut chunk = [0u8; 8192];
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

fn header(request: &Request, name: &str) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str().to_string())
}

fn make_header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("header names and values are ASCII")
}
