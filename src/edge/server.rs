//! The edge: the listening socket, tiny_http, and the dispatch threads.
//!
//! Owns the listener (socket2; read and write timeouts set on the listening
//! socket are inherited by every accepted connection), the tiny_http
//! `Server`s on it, their dispatch threads, the kicker thread, and the stop
//! sequence. A dispatch thread calls `recv()`, checks the head's framing
//! (`api::framing`), routes, asks the hub, and hands every request to
//! `Writer::submit`; it never reads a body and never writes an answer, so no
//! client can stall it. Together with `writer.rs` and `connection.rs`, the
//! only code that touches tiny_http (the fork, `tiny_http_fork` 0.12.17).
//!
//! tiny_http traps handled here (see ARCHITECTURE.md):
//! - its accept thread ends at the first accept error, and also when accept
//!   times out (the listening socket carries `SO_RCVTIMEO`), or panics when
//!   it runs out of descriptors: each time a new `Server` generation starts on
//!   a clone of the listener, and the old one serves its connections until
//!   they have all gone quiet;
//! - its connection thread pool can lose a wake-up and leave a new connection
//!   unread until another connection ends: the kicker opens and closes a
//!   connection to ourselves after requests arrive, which frees such a
//!   connection;
//! - its `Headers` shows only the first header of a name: `all_headers`
//!   reads every one, so a repeated `Content-Length` cannot hide.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tiny_http::Request;

use crate::api::auth::{self, Caller, Client, Need, PublishRates, Rules};
use crate::api::framing::{self, BodyFraming};
use crate::api::reply::Reply;
use crate::api::request::{self, Action, RouteSettings};
use crate::config::Config;
use crate::demo;
use crate::edge::connection::SocketFinder;
use crate::edge::send_room::SendRoom;
use crate::edge::writer::{
    Close, PeerState, WAITER_STACK_BYTES, WRITER_STACK_BYTES, Work, Writer, holds_unread_body,
};
use crate::error::Error;
use crate::hub::stats::Refusal;
use crate::hub::{Hub, HubLimits, PollStart};
use crate::shutdown::Shutdown;
use crate::store::{self, StoreThreads};

/// Largest body a request that reads none (anything but a publish) may
/// carry: tiny_http reads up to this much with the head, before abide sees
/// the request. A larger one is refused, and its connection closed.
const UNREAD_BODY_MAX_BYTES: usize = 1024;
/// Stack of a dispatch thread.
const DISPATCH_STACK_BYTES: usize = 256 * 1024;
/// Stack of the kicker thread.
const KICKER_STACK_BYTES: usize = 64 * 1024;
/// Listen backlog.
const LISTEN_BACKLOG: i32 = 1024;
/// After an accept error, wait this long before accepting again; doubles on
/// each error in a row up to `ACCEPT_BACKOFF_MAX`.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(20);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// tiny_http `Server`s kept at once (old ones serve their connections until
/// quiet); beyond it the oldest is retired at once.
const MAX_LISTENER_GENERATIONS: usize = 64;
/// The kicker kicks at most once per this interval, and only after requests.
const KICK_INTERVAL: Duration = Duration::from_millis(20);
/// After requests stop for this long, freed memory is given back to the
/// system once (`give_memory_back`); an idle server is never woken for it.
const TRIM_AFTER_QUIET: Duration = Duration::from_secs(1);
/// How long shutdown waits for pool threads to finish their answers.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// A started server. Stop it with its `Shutdown`, then `wait`.
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
    /// Kept to start a new tiny_http `Server` when one's accept thread ends.
    listener: TcpListener,
    /// tiny_http servers, oldest first; the last one is accepting.
    servers: Mutex<Vec<Generation>>,
    dispatchers: Mutex<Vec<JoinHandle<()>>>,
    accept_backoff_ms: AtomicU64,
    kicker: Arc<Kicker>,
    /// A generation with no request for this long has no connection left.
    quiet_period: Duration,
    /// With `--data-dir` or `--redis`: the store's threads, stopped after
    /// the writers.
    store: Mutex<Option<StoreThreads>>,
    /// With `--auth-file`: the rules in force, replaced whole by
    /// `reload_rules` (a request keeps the `Arc` it took).
    rules: Mutex<Option<Arc<Rules>>>,
    /// With `--publish-rate`: each client's allowance. A leaf lock, taken
    /// alone on the dispatch thread.
    publish_rates: Option<Mutex<PublishRates>>,
}

struct Generation {
    number: u64,
    server: Arc<tiny_http::Server>,
}

/// Address space a thread takes besides its stack (guard page, the signal
/// stack std gives every thread, TLS) and, for a connection, its share of
/// the heap: measured about 20 KiB beyond a 128 KiB stack with 1,000
/// connections (`VmSize`), taken at three times that.
const THREAD_OVERHEAD_BYTES: u64 = 64 * 1024;
/// Address space taken whatever the load: the binary and its libraries, the
/// main heap, the second malloc arena's heaps (`M_ARENA_MAX` 2 in `main.rs`;
/// 64 MiB each on 64-bit), the fixed threads. Measured 70 MiB at start.
const FIXED_ADDRESS_SPACE_BYTES: u64 = 160 * 1024 * 1024;
/// Descriptors abide holds besides two per connection (listener, stdio, the
/// finder's 80 reserved slots, the kicker's and watchdog's sockets).
const SPARE_DESCRIPTORS: u64 = 144;
/// Stack of a thread started by `std::thread::spawn` when `RUST_MIN_STACK`
/// is not set (tiny_http's connection threads).
const STD_DEFAULT_STACK_BYTES: u64 = 2 * 1024 * 1024;

/// Connections that fit in an address space of `limit_bytes` once the wait
/// and writer pools are counted at their caps, with each connection's
/// tiny_http thread taking `connection_stack_bytes` of stack.
fn connections_within(limit_bytes: u64, config: &Config, connection_stack_bytes: u64) -> u64 {
    let thread = |stack: usize| stack as u64 + THREAD_OVERHEAD_BYTES;
    let pools = config.max_waiters as u64 * thread(WAITER_STACK_BYTES)
        + config.max_writers as u64 * thread(WRITER_STACK_BYTES);
    limit_bytes.saturating_sub(FIXED_ADDRESS_SPACE_BYTES + pools)
        / (connection_stack_bytes + THREAD_OVERHEAD_BYTES)
}

/// Under a limit on address space (`RLIMIT_AS`: `prlimit --as`, a unit's
/// `LimitAS=`), lowers the descriptor limit so that connections, each a
/// thread of tiny_http's, cannot use it up. Running out of address space
/// can abort the process (std aborts a new thread whose signal stack cannot
/// be mapped); running out of descriptors only makes `accept` fail, which
/// abide recovers from. Returns what it did, for the log.
fn fit_descriptors_to_address_space(config: &Config) -> Option<String> {
    let (limit_bytes, _) = rlimit::getrlimit(rlimit::Resource::AS).ok()?;
    if limit_bytes == rlimit::INFINITY {
        return None;
    }
    let stack = std::env::var("RUST_MIN_STACK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(STD_DEFAULT_STACK_BYTES);
    let connections = connections_within(limit_bytes, config, stack);
    let descriptors = 2 * connections + SPARE_DESCRIPTORS;
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?;
    if descriptors >= soft {
        return None;
    }
    rlimit::setrlimit(rlimit::Resource::NOFILE, descriptors, hard).ok()?;
    Some(format!(
        "address space limited to {} MiB: at most {connections} connections \
         (descriptor limit lowered from {soft} to {descriptors})",
        limit_bytes / (1024 * 1024)
    ))
}

/// Starts the server: binds, spawns the dispatch and kicker threads, returns.
pub fn start(config: Config) -> io::Result<Running> {
    config
        .check()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // Services on a Pi often start with a soft limit of 1024 descriptors.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let fitted = fit_descriptors_to_address_space(&config);
    let rules = match &config.auth_file {
        None => None,
        Some(path) => {
            Some(Arc::new(load_rules(path).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, e)
            })?))
        }
    };
    let listener = bind(&config)?;
    let addr = listener.local_addr()?;
    let limits = HubLimits {
        buffer_events: config.buffer_events,
        event_ttl: config.event_ttl,
        max_channels: config.max_channels,
        max_stored_bytes: config.max_stored_bytes,
        max_waiters: config.max_waiters,
        max_waiters_per_client: config.max_waiters_per_client,
        max_stream: config.max_stream,
    };
    // Each writer thread queues at most one record at a time.
    let (hub, store) = match (&config.data_dir, &config.redis) {
        (Some(dir), _) => {
            let (hub, journal) = store::open(dir, config.sync, limits, config.max_writers)
                .map_err(io::Error::other)?;
            (hub, Some(StoreThreads::Journal(journal)))
        }
        (None, Some(url)) => {
            let (hub, threads) =
                store::redis::open(url, config.redis_ca.as_deref(), limits, config.max_writers)
                    .map_err(io::Error::other)?;
            (hub, Some(StoreThreads::Redis(Box::new(threads))))
        }
        (None, None) => (Hub::new(limits), None),
    };
    let writer = Writer::new(
        &config,
        hub.clone(),
        store.as_ref().map(StoreThreads::store),
        SocketFinder::start(addr.port())?,
        SendRoom::open(addr),
    )?;
    let quiet_period = config.max_timeout
        + config.max_timeout / 16
        + config.idle_timeout
        + config.write_timeout
        + Duration::from_secs(1);
    let kicker = Kicker::start(loopback_of(addr))?;
    let edge = Arc::new(Edge {
        hub,
        shutdown: Shutdown::new(),
        writer,
        listener,
        servers: Mutex::new(Vec::new()),
        dispatchers: Mutex::new(Vec::new()),
        accept_backoff_ms: AtomicU64::new(ACCEPT_BACKOFF_MIN.as_millis() as u64),
        kicker,
        quiet_period,
        store: Mutex::new(store),
        rules: Mutex::new(rules),
        publish_rates: config
            .publish_rate_per_second
            .map(|rate| Mutex::new(PublishRates::new(rate, config.publish_burst()))),
        config,
    });
    {
        // A verified request (`Work::Verify`) is routed again on a writer
        // thread, as if it had just arrived.
        let weak = Arc::downgrade(&edge);
        edge.writer.set_redispatch(Box::new(move |request| {
            if let Some(edge) = weak.upgrade() {
                edge.dispatch(request);
            }
        }));
    }
    Edge::add_generation(&edge)?;
    watch_accept_panics(&edge);
    print_startup_line(&edge.config, addr);
    if edge.config.data_dir.is_some() {
        let stats = edge.hub.stats();
        eprintln!(
            "abide: restored {} events in {} channels; ids continue after {}",
            stats.events_stored,
            stats.channels,
            edge.hub.last_id()
        );
    }
    if let Some(fitted) = fitted {
        eprintln!("abide: {fitted}");
    }
    if let (Some(path), Some(rules)) = (&edge.config.auth_file, edge.rules.lock().as_ref()) {
        eprintln!(
            "abide: access rules from {}: {} token(s); without a token: {}",
            path.display(),
            rules.token_count(),
            match rules.anonymous_allowed() {
                true => "what the anonymous rules allow",
                false => "nothing but /healthz, the demo page and preflights",
            }
        );
    }
    if edge.config.auth_file.is_none() && !addr.ip().is_loopback() {
        eprintln!(
            "abide: warning: listening on {addr} without --auth-file: anyone who can reach it \
             can publish, read and delete every channel (see \"Access control\" in the README)"
        );
    }
    Ok(Running { addr, edge })
}

fn print_startup_line(c: &Config, addr: SocketAddr) {
    eprintln!(
        "abide {} listening on http://{addr} (max-waiters {}, timeout {}s default / {}s max, \
         buffer {} events, max-event-bytes {}, max-channels {}, max-stored-bytes {}, \
         idle-timeout {}s, write-timeout {}s, max-writers {}, event-ttl {}, sse-heartbeat {}s, \
         max-stream {}, cors {}, demo {}, {}); {}",
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
        c.sse_heartbeat.as_secs(),
        c.max_stream
            .map_or("off".to_string(), |t| format!("{}s", t.as_secs())),
        c.cors_origin.as_deref().unwrap_or("off"),
        if c.demo { "on" } else { "off" },
        access_summary(c),
        match (&c.data_dir, &c.redis) {
            (None, Some(url)) => format!(
                "events shared through Redis at {}",
                store::redis::redact_url(url)
            ),
            (None, None) => {
                "events in memory only (lost at exit; --data-dir keeps them)".to_string()
            }
            (Some(dir), _) => format!(
                "events stored in {} (sync {})",
                dir.join(store::sqlite::DATABASE_FILE).display(),
                c.sync.name()
            ),
        },
    );
}

/// `/healthz`: `200` and `ok`; with Redis out of reach, `503` and
/// `degraded`, so that a load balancer sends publishes elsewhere (the node
/// still answers the polls it can).
fn health(hub: &Hub) -> Reply {
    match hub.link_up() {
        None => Reply::json(200, r#"{"status":"ok"}"#.into()),
        Some(true) => Reply::json(200, r#"{"status":"ok","store":"redis"}"#.into()),
        Some(false) => {
            let mut reply = Reply::json(
                503,
                r#"{"status":"degraded","store":"redis","reason":"redis is unreachable: publishes are refused, polls are answered from what this node holds"}"#.into(),
            );
            reply.headers.push(("Retry-After", "2".into()));
            reply
        }
    }
}

/// The access settings, for the startup line.
fn access_summary(c: &Config) -> String {
    let mut text = match &c.auth_file {
        None => "auth off".to_string(),
        Some(path) => format!("auth-file {}", path.display()),
    };
    if c.auth_file.is_some() && c.public_metrics {
        text.push_str(", public-metrics");
    }
    if let Some(share) = c.max_waiters_per_client {
        text.push_str(&format!(", max-waiters-per-client {share}"));
    }
    if let Some(rate) = c.publish_rate_per_second {
        text.push_str(&format!(
            ", publish-rate {rate}/s burst {}",
            c.publish_burst()
        ));
    }
    if !c.trust_proxy.is_empty() {
        let nets: Vec<String> = c.trust_proxy.iter().map(ToString::to_string).collect();
        text.push_str(&format!(", trust-proxy {}", nets.join(" ")));
    }
    text
}

/// Reads and parses an auth file; the error names the file and the line.
fn load_rules(path: &std::path::Path) -> Result<Rules, String> {
    let fail = |reason: String| format!("--auth-file {}: {reason}", path.display());
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut text = String::new();
    io::Read::read_to_string(
        &mut io::Read::take(file, auth::MAX_AUTH_FILE_BYTES + 1),
        &mut text,
    )
    .map_err(|e| fail(e.to_string()))?;
    if text.len() as u64 > auth::MAX_AUTH_FILE_BYTES {
        return Err(fail(format!(
            "larger than {} bytes",
            auth::MAX_AUTH_FILE_BYTES
        )));
    }
    Rules::parse(&text).map_err(|e| fail(e.to_string()))
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

/// Where to connect to reach our own listener.
fn loopback_of(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

impl Running {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where abide reaches its own listener (loopback for a wildcard address).
    pub fn self_check_addr(&self) -> SocketAddr {
        loopback_of(self.addr)
    }

    /// A handle that re-reads `--auth-file` (on `SIGHUP`).
    pub fn rules_reload(&self) -> RulesReload {
        RulesReload(Arc::downgrade(&self.edge))
    }

    /// The value that stops this server when triggered.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.edge.shutdown.clone()
    }

    /// Blocks until shutdown is triggered, then stops: stops listening,
    /// answers every waiting poll `204`, and joins the threads it started
    /// (giving them `SHUTDOWN_GRACE` to finish their answers). Connections
    /// that are still open get `503` until they go quiet; a process that exits
    /// after `wait` simply closes them.
    pub fn wait(self) {
        let edge = self.edge;
        edge.shutdown.wait();
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        // Stop listening: every generation's accept() ends and the port is free.
        let _ = SockRef::from(&edge.listener).shutdown(std::net::Shutdown::Both);
        edge.hub.shut_down();
        for generation in edge.servers.lock().iter() {
            let _ = generation.server.unblock();
        }
        let dispatchers = std::mem::take(&mut *edge.dispatchers.lock());
        for dispatcher in dispatchers {
            let _ = dispatcher.join();
        }
        edge.kicker.stop();
        edge.writer.join(deadline);
        // After the writers: what they queued is committed and answered.
        if let Some(store) = edge.store.lock().take() {
            store.stop();
        }
        let servers = std::mem::take(&mut *edge.servers.lock());
        for generation in servers {
            let edge = edge.clone();
            let _ = thread::Builder::new()
                .name("abide-closing".into())
                .stack_size(DISPATCH_STACK_BYTES)
                .spawn(move || edge.refuse_until_quiet(&generation.server));
        }
    }
}

/// Re-reads the auth file of a running server (`Running::rules_reload`).
pub struct RulesReload(Weak<Edge>);

impl RulesReload {
    /// Re-reads `--auth-file` and puts its rules in force; with an error,
    /// keeps the rules in force and returns it (the line and the reason).
    /// Polls already held keep their wait; when the rules changed, open
    /// streams end, and their clients reconnect under the new rules. Logs
    /// what it did. Returns whether the rules changed.
    pub fn reload(&self) -> Result<bool, String> {
        let Some(edge) = self.0.upgrade() else {
            return Ok(false);
        };
        let Some(path) = &edge.config.auth_file else {
            return Err("no --auth-file to reload".into());
        };
        match load_rules(path) {
            Ok(rules) => {
                let count = rules.token_count();
                let changed = {
                    let mut current = edge.rules.lock();
                    let changed = current.as_deref() != Some(&rules);
                    *current = Some(Arc::new(rules));
                    changed
                };
                if changed {
                    edge.hub.end_streams();
                }
                eprintln!(
                    "abide: --auth-file {} reloaded: {count} token(s){}",
                    path.display(),
                    if changed {
                        "; open streams reconnect under the new rules"
                    } else {
                        " (unchanged)"
                    }
                );
                Ok(changed)
            }
            Err(err) => {
                eprintln!("abide: {err}; the rules in force are kept");
                Err(err)
            }
        }
    }
}

impl Edge {
    /// Starts a tiny_http `Server` on a clone of the listener, with its own
    /// dispatch thread; the previous one becomes old and is told so.
    fn add_generation(edge: &Arc<Edge>) -> io::Result<()> {
        let listener = edge.listener.try_clone()?;
        let local_addr = listener.local_addr()?;
        let server_config = tiny_http::ServerConfig {
            addr: tiny_http::ConfigListenAddr::IP(vec![local_addr]),
            ssl: None,
            // No connection threads kept idle: each generation would hold them.
            min_threads: Some(0),
            max_threads: None,
        };
        // Created under the lock: an accept thread that panics at once (the
        // panic hook takes this lock to unblock the current generation) then
        // finds this generation, not the one before it.
        let mut servers = edge.servers.lock();
        // tiny_http spawns its accept thread with `thread::spawn`, which
        // panics when no thread can be created (a task or memory limit):
        // that is an error to retry later, never a panic here.
        ADDING_GENERATION.set(true);
        let server = catch_unwind(AssertUnwindSafe(|| {
            tiny_http::Server::from_listener(listener, local_addr.into(), server_config)
        }));
        ADDING_GENERATION.set(false);
        let server = server
            .map_err(|_| io::Error::other("no thread could be started for accepting"))?
            .map_err(|e| io::Error::other(e.to_string()))?;
        let server = Arc::new(server);
        let number = servers.last().map_or(0, |g| g.number + 1);
        let dispatcher = {
            let edge = edge.clone();
            let server = server.clone();
            thread::Builder::new()
                .name("abide-dispatch".into())
                .stack_size(DISPATCH_STACK_BYTES)
                .spawn(move || edge.dispatch_loop(number, server))?
        };
        if let Some(previous) = servers.last() {
            // Its dispatch thread switches to waiting for its connections to go quiet.
            let _ = previous.server.unblock();
        }
        servers.push(Generation { number, server });
        if servers.len() > MAX_LISTENER_GENERATIONS {
            let oldest = servers.remove(0);
            let _ = oldest.server.unblock();
        }
        drop(servers);
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

    fn retire(&self, number: u64) {
        self.servers.lock().retain(|g| g.number != number);
    }

    fn dispatch_loop(self: Arc<Edge>, number: u64, server: Arc<tiny_http::Server>) {
        let mut last_request = Instant::now();
        loop {
            let current = self.is_current(number);
            let next = if current {
                server.recv().map(|r| r.map(Some))
            } else {
                // Old generation: serve its connections until none is left.
                server.recv_timeout(self.quiet_period)
            };
            match next {
                // tiny_http refused a head itself (and answered it), or a
                // connection ended between requests.
                Ok(Err(read_error)) => self.note_read_error(&read_error),
                Ok(Ok(Some(request))) => {
                    last_request = Instant::now();
                    if self.shutdown.is_triggered() {
                        self.refuse_for_shutdown(request);
                        continue;
                    }
                    self.kicker.nudge();
                    let edge = &self;
                    let caught = catch_unwind(AssertUnwindSafe(|| edge.dispatch(request)));
                    if caught.is_err() {
                        eprintln!("abide: a request's dispatch panicked; the request was dropped");
                    }
                }
                Ok(Ok(None)) if self.shutdown.is_triggered() || !self.is_kept(number) => break,
                // An unblock marker also reads as "nothing": only a quiet period counts.
                Ok(Ok(None)) if last_request.elapsed() < self.quiet_period => continue,
                Ok(Ok(None)) => {
                    self.retire(number);
                    break;
                }
                Err(_) if self.shutdown.is_triggered() => break,
                Err(_) if !self.is_kept(number) => break,
                // Told that it is old now (see `add_generation`).
                Err(_) if !current => continue,
                Err(err) => self.restart_accepting(&err),
            }
        }
        // Requests that arrived before the stop are refused, not dropped.
        while let Ok(Some(request)) = server.try_recv() {
            self.refuse_for_shutdown(request);
        }
    }

    /// The current generation's accept thread has ended: start a new one.
    fn restart_accepting(self: &Arc<Edge>, err: &io::Error) {
        // An accept that timed out (the listener's SO_RCVTIMEO) only means
        // nobody connected for a while: start again at once, quietly.
        let quiet = matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        );
        let mut backoff = Duration::from_millis(self.accept_backoff_ms.load(Relaxed));
        if !quiet {
            self.hub.count_accept_error();
            eprintln!(
                "abide: accept failed ({err}); accepting again in {} ms",
                backoff.as_millis()
            );
            self.accept_backoff_ms.store(
                (backoff * 2).min(ACCEPT_BACKOFF_MAX).as_millis() as u64,
                Relaxed,
            );
        } else {
            backoff = Duration::ZERO;
        }
        loop {
            if self.shutdown.wait_timeout(backoff) {
                return;
            }
            match Edge::add_generation(self) {
                Ok(()) => return,
                Err(err) => {
                    self.hub.count_accept_error();
                    backoff = (backoff * 2).clamp(ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX);
                    eprintln!(
                        "abide: cannot accept again yet ({err}); retrying in {} ms",
                        backoff.as_millis()
                    );
                }
            }
        }
    }

    /// After the stop: answers `503` to requests on connections that are
    /// still open, for up to `--idle-timeout` (by then the socket timeouts
    /// have closed every quiet connection), then lets the server go.
    fn refuse_until_quiet(&self, server: &tiny_http::Server) {
        let until = Instant::now() + self.config.idle_timeout;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            // Errors (the accept thread's end, a leftover unblock) are not requests.
            if let Ok(Ok(Some(request))) = server.recv_timeout(left) {
                let _ =
                    self.writer
                        .respond(request, Reply::error(&shutting_down()), Instant::now());
            }
        }
    }

    fn refuse_for_shutdown(&self, request: Request) {
        self.writer.submit(Work::Answer {
            request,
            reply: Reply::error(&shutting_down()),
            started: Instant::now(),
            close: Close::No,
        });
    }

    fn lane_busy(&self, request: &Request) -> bool {
        request
            .remote_addr()
            .is_some_and(|peer| self.writer.lane_busy(peer))
    }

    /// A head tiny_http refused itself (it has answered `400`, `408`, `417`
    /// or `505` and closed that connection) is counted; a connection that
    /// simply ended between requests is not.
    ///
    /// tiny_http does not export its error type, only its `Display`: heads it
    /// refused print as `[ProtocolViolation]`, `[WrongRequestLine]`,
    /// `[WrongHeader]` or `[ExpectationFailed]`; I/O ends as `[ReadIoError]`.
    fn note_read_error(&self, error: &impl std::fmt::Display) {
        let text = error.to_string();
        if !text.starts_with("[ReadIoError]") {
            self.hub.count_malformed_request();
        }
    }

    /// Routes one request and hands it to the writer. Never blocks on a client.
    fn dispatch(&self, request: Request) {
        let started = Instant::now();
        let refuse = |request, error: Error, close| match close {
            Close::No => self
                .writer
                .answer_now(request, Reply::error(&error), started),
            Close::Yes => self.writer.submit(Work::Answer {
                request,
                reply: Reply::error(&error),
                started,
                close,
            }),
        };
        if let Some(peer) = request.remote_addr().copied() {
            match self.writer.peer_state(&peer) {
                PeerState::Open => {}
                // Read from a connection being closed after a refused
                // request: it must have no effect at all.
                PeerState::Closing => {
                    let err = Error::BadRequest(format!(
                        "the connection from {peer} is closed after a refused request; open a new one"
                    ));
                    return refuse(request, err, Close::Yes);
                }
                // Routed again once its socket is known not to be the closed one.
                PeerState::RecentlyClosed => {
                    return self.writer.submit(Work::Verify { request, started });
                }
            }
        }
        let headers = all_headers(request.headers())
            .iter()
            .map(|h| (h.field.as_str().as_str(), h.value.as_str()));
        let http_1_0 = *request.http_version() <= tiny_http::HTTPVersion(1, 0);
        let framing = match framing::check_head(request.url(), headers, http_1_0) {
            Ok(framing) => framing,
            Err(refusal) => {
                if refusal.close {
                    self.hub.count_malformed_request();
                }
                let close = if refusal.close { Close::Yes } else { Close::No };
                return refuse(request, refusal.error, close);
            }
        };
        let too_large = Error::TooLarge {
            limit_bytes: self.config.max_event_bytes,
        };
        match framing {
            // Refused before reading any of it (no `100 Continue`), then closed.
            BodyFraming::Length(declared) if declared > self.config.max_event_bytes as u64 => {
                return refuse(request, too_large, Close::Yes);
            }
            // Only a publish reads a body. tiny_http never reads an unread
            // chunked body to its end, and reads an unread declared body
            // beyond what it buffered (1 KiB) when the request is dropped,
            // at whatever pace the client trickles it: refused at once.
            BodyFraming::Chunked if *request.method() != tiny_http::Method::Post => {
                let err = Error::BadRequest(format!(
                    "{} requests carry no body here; a chunked body is only accepted when publishing",
                    request.method()
                ));
                return refuse(request, err, Close::Yes);
            }
            BodyFraming::Length(declared)
                if declared > UNREAD_BODY_MAX_BYTES as u64
                    && *request.method() != tiny_http::Method::Post =>
            {
                let err = Error::BadRequest(format!(
                    "{} requests carry no body here; at most {UNREAD_BODY_MAX_BYTES} bytes are ignored",
                    request.method()
                ));
                return refuse(request, err, Close::Yes);
            }
            _ => {}
        }
        let settings = RouteSettings {
            default_timeout: self.config.default_timeout,
            max_timeout: self.config.max_timeout,
            demo: self.config.demo,
        };
        let last_event_id = header(&request, "Last-Event-ID");
        let action = request::route(
            request.method().as_str(),
            request.url(),
            last_event_id.as_deref(),
            settings,
        );
        let action = match action {
            Ok(action) => action,
            // A body that will not be read (the action has none) is left to
            // tiny_http, which reads a declared length to its end.
            Err(err) => return refuse(request, err, Close::No),
        };
        let client = match self.admit(&request, &action) {
            Ok(client) => client,
            // A publish's body is not read: the connection closes unless
            // tiny_http already holds all of it.
            Err(err) => {
                let close = match holds_unread_body(&request) {
                    true => Close::Yes,
                    false => Close::No,
                };
                return refuse(request, err, close);
            }
        };
        // What routing leaves to the edge: the transport, and who asks.
        let action = match action {
            Action::Poll(mut spec) => {
                let accept = header(&request, "Accept");
                spec.stream = request::wants_event_stream(accept.as_deref());
                spec.client = client;
                Action::Poll(spec)
            }
            other => other,
        };
        let reply = match action {
            Action::Publish { channel } => {
                return self.writer.submit(Work::Publish {
                    request,
                    channel,
                    started,
                });
            }
            // Behind other requests of its connection, a poll or a deletion
            // takes effect in its turn, after theirs (and a poll then takes
            // its slot only at the head: one connection, one slot).
            Action::Poll(spec) if self.lane_busy(&request) => {
                return self.writer.submit(Work::Poll {
                    request,
                    spec,
                    started,
                });
            }
            // With a store, a deletion waits for its commit: on a writer.
            Action::DeleteChannel { channel }
                if self.lane_busy(&request) || self.writer.has_store() =>
            {
                return self.writer.submit(Work::Delete {
                    request,
                    channel,
                    started,
                });
            }
            Action::Poll(spec) => match self.hub.begin_poll(&spec) {
                Ok(PollStart::Now(answer)) => Reply::poll(answer),
                Ok(PollStart::Wait(ticket)) => {
                    return self.writer.submit(Work::Wait {
                        request,
                        ticket,
                        started,
                    });
                }
                Err(err) => Reply::error(&err),
            },
            Action::ChannelInfo { channel } => match self.hub.channel_info(&channel) {
                Some(info) => Reply::json(200, info.to_string()),
                None => Reply::error(&Error::NotFound(format!(
                    "channel {channel} holds no events and has no waiters"
                ))),
            },
            Action::DeleteChannel { channel } => {
                self.hub.delete(&channel);
                Reply::empty(204)
            }
            Action::Demo => demo::reply(),
            Action::Healthz => health(&self.hub),
            Action::Stats => Reply::json(200, self.hub.stats().with_process_figures().to_json()),
            Action::Metrics => Reply::text(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                self.hub.stats().with_process_figures().to_prometheus(),
            ),
            Action::Options { allow } => {
                let mut reply = Reply::empty(204);
                reply.headers.push(("Allow", allow.into()));
                if self.config.cors_origin.is_some() {
                    reply.headers.extend([
                        ("Access-Control-Allow-Methods", "GET, POST, DELETE".into()),
                        (
                            "Access-Control-Allow-Headers",
                            "Authorization, Content-Type, Last-Event-ID".into(),
                        ),
                        ("Access-Control-Max-Age", "600".into()),
                    ]);
                }
                reply
            }
        };
        self.writer.answer_now(request, reply, started)
    }
}

impl Edge {
    /// Admits a request under `--auth-file` and the client's shares, or
    /// refuses it (`401`, `403`, `429`; counted). Returns the client, when
    /// a share counts it (`--max-waiters-per-client`, `--publish-rate`).
    fn admit(&self, request: &Request, action: &Action) -> Result<Option<Client>, Error> {
        let rules = self.rules.lock().clone();
        let shares = self.config.max_waiters_per_client.is_some() || self.publish_rates.is_some();
        if rules.is_none() && !shares {
            return Ok(None);
        }
        let need = Need::of(action, self.config.public_metrics);
        if need == Need::Nothing {
            return Ok(None);
        }
        let caller = match rules {
            None => Caller::Anonymous,
            Some(rules) => {
                let authorization = single_header(request, "Authorization")?;
                let query = request.url().split_once('?').map_or("", |(_, q)| q);
                let token = auth::presented_token(authorization, query)?;
                rules.admit(token.as_deref(), &need).inspect_err(|err| {
                    let refusal = match err {
                        Error::Forbidden(_) => Refusal::Forbidden,
                        _ => Refusal::Unauthenticated,
                    };
                    self.hub.count_refusal(refusal);
                })?
            }
        };
        if !shares {
            return Ok(None);
        }
        let peer = request
            .remote_addr()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let forwarded_for: Vec<&str> = all_headers(request.headers())
            .iter()
            .filter(|h| h.field.equiv("X-Forwarded-For"))
            .map(|h| h.value.as_str())
            .collect();
        let address = auth::client_address(peer, &forwarded_for, &self.config.trust_proxy);
        let client = Client::new(&caller, address);
        if let (Action::Publish { .. }, Some(rates)) = (action, &self.publish_rates) {
            let taken = rates.lock().take(&client, Instant::now());
            if let Err(wait) = taken {
                self.hub.count_refusal(Refusal::PublishRate);
                return Err(Error::TooManyRequests {
                    message: format!(
                        "{client} publishes faster than --publish-rate ({} events/s, bursts of {}); \
                         retry in {:.1} s",
                        self.config.publish_rate_per_second.unwrap_or_default(),
                        self.config.publish_burst(),
                        wait.as_secs_f64()
                    ),
                    retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u32,
                });
            }
        }
        Ok(Some(client))
    }
}

/// The value of a header that may appear once: a repeated one is a `400`
/// (two `Authorization` headers could be read two ways).
fn single_header<'r>(request: &'r Request, name: &str) -> Result<Option<&'r str>, Error> {
    let mut found = all_headers(request.headers())
        .iter()
        .filter(|h| h.field.equiv(name));
    let first = found.next().map(|h| h.value.as_str());
    if found.next().is_some() {
        return Err(Error::BadRequest(format!(
            "header {name} given more than once"
        )));
    }
    Ok(first)
}

fn shutting_down() -> Error {
    Error::Busy {
        message: "server is shutting down".into(),
        retry_after_secs: 1,
    }
}

fn header(request: &Request, name: &str) -> Option<String> {
    request.headers().get(name).map(|v| v.as_str().to_string())
}

/// Every header of a request, in order, repeated names included.
///
/// tiny_http_fork 0.12.17 offers only `Headers::get` (the first header of a
/// name), which would hide a second `Content-Length` or `Transfer-Encoding`,
/// exactly what request smuggling sends. Its `Headers` is declared
/// `#[repr(transparent)] struct Headers(Vec<Header>)`, so a reference to it
/// is a reference to that vector. The version is pinned exactly, the size
/// check fails the build if the wrapper grows, and a unit test below fails if
/// the layout changes in any other way.
pub(crate) fn all_headers(headers: &tiny_http::Headers) -> &[tiny_http::Header] {
    const _: () = assert!(
        std::mem::size_of::<tiny_http::Headers>() == std::mem::size_of::<Vec<tiny_http::Header>>()
    );
    // SAFETY: `Headers` is `#[repr(transparent)]` over `Vec<Header>` (see
    // above), so both have one layout; the slice borrows from `headers`.
    let vec = unsafe { &*(headers as *const tiny_http::Headers).cast::<Vec<tiny_http::Header>>() };
    vec.as_slice()
}

/// Gives freed heap memory back to the system. A burst (a client's megabytes
/// of headers, a deep pipeline, large answers) leaves its memory free but
/// resident in the allocator's arenas; glibc's `malloc_trim` returns the free
/// pages of every arena (it takes about a millisecond, so only once after
/// each burst, from the kicker thread).
fn give_memory_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Works around tiny_http's connection pool losing a wake-up: when
/// connections arrive in a burst, one can be queued with no thread to take it
/// until another connection ends. A connection that opens and closes at once
/// gets a fresh thread when none is idle; that thread finishes it at once and
/// then takes the queued one. So after requests arrive (some of a burst got
/// through), the kicker opens and closes one connection to ourselves, at most
/// once per `KICK_INTERVAL`; a connection it frees sends a request and so
/// triggers the next kick. An idle server is never kicked.
struct Kicker {
    target: SocketAddr,
    state: Mutex<KickState>,
    wake: Condvar,
}

#[derive(Default)]
struct KickState {
    requested: bool,
    stopped: bool,
    thread: Option<JoinHandle<()>>,
}

impl Kicker {
    fn start(target: SocketAddr) -> io::Result<Arc<Kicker>> {
        let kicker = Arc::new(Kicker {
            target,
            state: Mutex::new(KickState::default()),
            wake: Condvar::new(),
        });
        let thread = {
            let kicker = kicker.clone();
            thread::Builder::new()
                .name("abide-kicker".into())
                .stack_size(KICKER_STACK_BYTES)
                .spawn(move || kicker.run())?
        };
        kicker.state.lock().thread = Some(thread);
        Ok(kicker)
    }

    fn nudge(&self) {
        let mut state = self.state.lock();
        if !state.requested {
            state.requested = true;
            self.wake.notify_one();
        }
    }

    fn run(&self) {
        // Requests came since memory was last given back.
        let mut trim_pending = false;
        loop {
            {
                let mut state = self.state.lock();
                while !state.requested && !state.stopped {
                    if !trim_pending {
                        self.wake.wait(&mut state);
                    } else if self.wake.wait_for(&mut state, TRIM_AFTER_QUIET).timed_out() {
                        drop(state);
                        give_memory_back();
                        trim_pending = false;
                        state = self.state.lock();
                    }
                }
                if state.stopped {
                    return;
                }
                state.requested = false;
                trim_pending = true;
            }
            let _ = TcpStream::connect_timeout(&self.target, Duration::from_secs(1));
            // Rate limit: the next kick waits out the interval (or the stop).
            let mut state = self.state.lock();
            if !state.stopped {
                self.wake.wait_for(&mut state, KICK_INTERVAL);
            }
        }
    }

    fn stop(&self) {
        let thread = {
            let mut state = self.state.lock();
            state.stopped = true;
            self.wake.notify_one();
            state.thread.take()
        };
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// Servers whose accept thread may panic, and never report it to `recv()`:
/// tiny_http unwraps a descriptor clone there (it panics with no descriptor
/// left), and spawns each connection's thread with `thread::spawn` while it
/// holds its pool's lock (it panics when no thread can be created, under a
/// task or memory limit, and the poisoned lock then panics every later use
/// of that pool). On either panic the current generation is unblocked: its
/// dispatch thread sees an error and starts a new generation, with a new
/// pool, backing off while the panics go on (`restart_accepting`).
fn watch_accept_panics(edge: &Arc<Edge>) {
    static EDGES: OnceLock<Mutex<Vec<Weak<Edge>>>> = OnceLock::new();
    let edges = EDGES.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // A failed spawn inside `add_generation`, which holds the
            // generations' lock: it handles that itself (and taking the
            // lock here would deadlock).
            if is_accept_panic(info) {
                if ADDING_GENERATION.get() {
                    // Reported by `restart_accepting`.
                    return;
                }
                eprintln!(
                    "abide: tiny_http's accept thread stopped: {}",
                    panic_message(info)
                );
                if let Some(edges) = EDGES.get() {
                    edges.lock().retain(|weak| match weak.upgrade() {
                        Some(edge) => {
                            if let Some(g) = edge.servers.lock().last() {
                                let _ = g.server.unblock();
                            }
                            true
                        }
                        None => false,
                    });
                }
                return;
            }
            // The connection threads of a generation whose pool a failed
            // spawn poisoned: each panics once its connection is done (and
            // ends). A consequence of the failure already reported; with
            // thousands of connections it would flood the log.
            let poisoned_pool = info
                .location()
                .is_some_and(|l| l.file().ends_with("task_pool_legacy.rs"));
            if !poisoned_pool {
                previous(info);
            }
        }));
        Mutex::new(Vec::new())
    });
    edges.lock().push(Arc::downgrade(edge));
}

thread_local! {
    /// Set while this thread starts a generation (`add_generation`).
    static ADDING_GENERATION: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a panic is one of tiny_http's accept thread (see
/// `watch_accept_panics`): in its descriptor clone, or a failed spawn (std's
/// `thread::spawn` panics "failed to spawn thread"; abide's own threads are
/// started with `Builder::spawn`, which returns the error instead).
fn is_accept_panic(info: &std::panic::PanicHookInfo<'_>) -> bool {
    let in_clone = info
        .location()
        .is_some_and(|l| l.file().ends_with("refined_tcp_stream.rs"));
    in_clone || panic_message(info).starts_with("failed to spawn thread")
}

/// A panic's message, if it has one.
fn panic_message<'a>(info: &'a std::panic::PanicHookInfo<'_>) -> &'a str {
    let payload = info.payload();
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under 512 MiB of address space the default pools leave room for about 1,300 connections of 128 KiB stacks, and none when the pools alone do not fit.
    #[test]
    fn connections_fit_what_the_pools_leave() {
        let config = Config::default();
        let connections = connections_within(512 << 20, &config, 128 << 10);
        assert!((1200..1500).contains(&connections), "{connections}");
        assert_eq!(connections_within(200 << 20, &config, 128 << 10), 0);
        let more = connections_within(3 << 30, &config, 128 << 10);
        assert!(more > 14_000, "a 32-bit Pi's 3 GiB: {more}");
    }

    /// Every header is seen, in order, repeated names included (the layout `all_headers` relies on).
    #[test]
    fn all_headers_sees_repeated_names_in_order() {
        let headers: tiny_http::Headers = vec![
            tiny_http::Header::from_bytes("Content-Length", "5").unwrap(),
            tiny_http::Header::from_bytes("Host", "x").unwrap(),
            tiny_http::Header::from_bytes("content-length", "6").unwrap(),
        ]
        .into();
        let seen: Vec<(String, String)> = all_headers(&headers)
            .iter()
            .map(|h| (h.field.to_string(), h.value.to_string()))
            .collect();
        assert_eq!(
            seen,
            [
                ("Content-Length".to_string(), "5".to_string()),
                ("Host".into(), "x".into()),
                ("content-length".into(), "6".into()),
            ]
        );
        assert_eq!(headers.get("content-length").unwrap().as_str(), "5");
    }
}
