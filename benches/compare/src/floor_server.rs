//! The floor: a bare tiny_http server answering the bytes abide answers,
//! with nothing of abide's between `recv()` and `respond()` (no dispatch
//! thread, lane, pool or writer hand-off). What abide costs above it is
//! abide's own.
//!
//! `POST /channels/{name}/events` stores the body as the event's `data`
//! (abide's event object, ids as abide's: wall-clock microseconds, strictly
//! increasing; newest `buffer` per channel) and answers `201` with it;
//! `GET /channels/{name}/events?last_event_id=&limit=` answers `200
//! [events]` (`Cache-Control: no-store`, `Abide-Missed: true` after a gap)
//! when there are events after the cursor; `GET /stats` answers
//! `{"waiters":N}`. State is one `Mutex`.
//!
//! Omitted on purpose: validating the JSON body or the channel name, error
//! answers, `Last-Event-ID`, limits, auth, streams, logging, and (inline
//! floor) the poll timeout: a poll with nothing after its cursor is parked
//! as its tiny_http `Request` and answered by the thread that handles the
//! next publish to its channel. The harness never waits for a timeout.
//!
//! Threads: tiny_http's accept thread and one thread per connection (as in
//! abide), and `threads` threads looping on `recv()` that answer inline, on
//! the thread that received the request (`--threads 1` or one per core).
//! With `--hold-threads` (scenario 1's memory floor, `floor_hold.rs`), a
//! poll that must wait gets its own 64 KiB thread blocked on the condvar.
//! Started by the harness as `compare serve-floor --threads N
//! [--hold-threads] --listen ADDR`, with `RUST_MIN_STACK=131072` (the
//! 128 KiB connection stacks abide sets for itself).

use std::collections::{HashMap, VecDeque};
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tiny_http::{Header, Method, Request, Response, Server, StatusCode};

#[derive(Default)]
pub struct Channel {
    events: VecDeque<(u64, Arc<str>)>,
    /// Highest id pushed out of the ring: a cursor below it missed events.
    dropped_through: u64,
    /// Inline floor: polls waiting for this channel (cursor, limit, request).
    parked: Vec<(u64, usize, Request)>,
}

#[derive(Default)]
pub struct State {
    pub channels: HashMap<String, Channel>,
    last_id: u64,
    pub waiters: u64,
}

pub struct Floor {
    pub state: Mutex<State>,
    pub wake: Condvar,
    buffer: usize,
    hold_threads: bool,
    /// Hold floor only: set when requests arrived since the last kick.
    kick: Mutex<bool>,
    kick_wake: Condvar,
}

/// The hold floor kicks at most once per this interval (as abide).
const KICK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

pub fn main(threads: usize, hold_threads: bool, listen: SocketAddr, buffer: usize) {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    // abide's two malloc arenas.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: no other thread exists yet; mallopt only sets a tunable.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    // tiny_http configured as abide configures it: a listener whose accepted
    // sockets inherit TCP_NODELAY, a backlog of 1024, no idle connection
    // threads kept.
    let listener = std::net::TcpListener::bind(listen).expect("bind");
    let on: libc::c_int = 1;
    // SAFETY: setsockopt and listen on a socket this process owns.
    unsafe {
        use std::os::fd::AsRawFd;
        let size = std::mem::size_of_val(&on) as libc::socklen_t;
        let on = (&on as *const libc::c_int).cast();
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            on,
            size,
        );
        // abide's backlog (std's is 128).
        libc::listen(listener.as_raw_fd(), 1024);
    }
    // With no idle connection thread kept, tiny_http's pool can leave a new
    // connection queued until another one ends (abide's kicker works around
    // it; the floor has none): measured 1 s stalls in scenario 4. The inline
    // floors keep 64 idle threads, so that they show tiny_http at its best;
    // the hold floor keeps none, as abide, so that its memory compares.
    let config = tiny_http::ServerConfig {
        addr: tiny_http::ConfigListenAddr::IP(vec![listen]),
        ssl: None,
        min_threads: Some(if hold_threads { 0 } else { 64 }),
        max_threads: None,
    };
    let server = Server::from_listener(listener, listen.into(), config).expect("tiny_http");
    let server = Arc::new(server);
    let floor = Arc::new(Floor {
        state: Mutex::default(),
        wake: Condvar::new(),
        buffer,
        hold_threads,
        kick: Mutex::new(false),
        kick_wake: Condvar::new(),
    });
    if hold_threads {
        let floor = floor.clone();
        std::thread::spawn(move || floor.kicker(listen));
    }
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let (server, floor) = (server.clone(), floor.clone());
            std::thread::spawn(move || {
                while let Ok(next) = server.recv() {
                    if let Ok(request) = next {
                        floor.handle(request);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}

impl Floor {
    /// The hold floor keeps no idle connection thread (as abide, so that
    /// its memory compares), so tiny_http's pool can leave a new connection
    /// unread until another one ends; abide's kicker works around it, and so
    /// does this one, the same way: after requests arrive, open and close a
    /// connection to ourselves (at most once per `KICK_INTERVAL`). Idle, it
    /// blocks.
    fn kicker(&self, listen: SocketAddr) {
        loop {
            let mut requested = self.kick.lock().unwrap();
            while !*requested {
                requested = self.kick_wake.wait(requested).unwrap();
            }
            *requested = false;
            drop(requested);
            let _ =
                std::net::TcpStream::connect_timeout(&listen, std::time::Duration::from_secs(1));
            let quiet = self.kick.lock().unwrap();
            drop(self.kick_wake.wait_timeout(quiet, KICK_INTERVAL).unwrap());
        }
    }

    fn handle(self: &Arc<Self>, mut request: Request) {
        if self.hold_threads {
            let mut requested = self.kick.lock().unwrap();
            if !*requested {
                *requested = true;
                self.kick_wake.notify_one();
            }
        }
        let url = request.url().to_string();
        let (path, query) = url.split_once('?').unwrap_or((&url, ""));
        if path == "/stats" {
            let waiters = self.state.lock().unwrap().waiters;
            return answer(request, 200, format!(r#"{{"waiters":{waiters}}}"#), &[]);
        }
        let Some(name) = path
            .strip_prefix("/channels/")
            .and_then(|r| r.strip_suffix("/events"))
        else {
            return answer(request, 404, "{}".into(), &[]);
        };
        if *request.method() == Method::Post {
            let mut data = String::new();
            let _ = request.as_reader().read_to_string(&mut data);
            return self.publish(request, name, data.trim());
        }
        let (mut cursor, mut limit) = (0, 100);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "last_event_id" => cursor = value.parse().unwrap_or(0),
                "limit" => limit = value.parse().unwrap_or(100),
                _ => {}
            }
        }
        let mut st = self.state.lock().unwrap();
        let ready = st
            .channels
            .get(name)
            .and_then(|ch| read_after(ch, cursor, limit));
        if let Some(body) = ready {
            drop(st);
            answer_poll(request, Some(body))
        } else if self.hold_threads {
            st.waiters += 1;
            drop(st);
            crate::floor_hold::spawn_waiter(self.clone(), name.to_string(), cursor, limit, request);
        } else {
            let ch = st.channels.entry(name.to_string()).or_default();
            ch.parked.push((cursor, limit, request));
            st.waiters += 1;
        }
    }

    fn publish(&self, request: Request, name: &str, data: &str) {
        let now = SystemTime::now();
        let micros = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut st = self.state.lock().unwrap();
        let id = micros.max(st.last_id + 1);
        st.last_id = id;
        let time = humantime::format_rfc3339_millis(now);
        let json: Arc<str> =
            format!(r#"{{"id":{id},"channel":"{name}","timestamp":"{time}","data":{data}}}"#)
                .into();
        let ch = st.channels.entry(name.to_string()).or_default();
        ch.events.push_back((id, json.clone()));
        if ch.events.len() > self.buffer {
            ch.dropped_through = ch.events.pop_front().map_or(0, |(id, _)| id);
        }
        let parked = std::mem::take(&mut ch.parked);
        let due: Vec<_> = parked
            .into_iter()
            .map(|(cursor, limit, r)| (r, read_after(ch, cursor, limit)))
            .collect();
        st.waiters -= due.len() as u64;
        drop(st);
        if self.hold_threads {
            self.wake.notify_all();
        }
        answer(request, 201, json.to_string(), &[]);
        for (r, body) in due {
            answer_poll(r, body);
        }
    }
}

/// `[events after cursor]` (at most `limit`) and whether the ring dropped
/// some after it, or `None` when there are none.
pub fn read_after(ch: &Channel, cursor: u64, limit: usize) -> Option<(String, bool)> {
    let start = ch.events.partition_point(|(id, _)| *id <= cursor);
    let events: Vec<&str> = ch
        .events
        .range(start..)
        .take(limit)
        .map(|(_, j)| &**j)
        .collect();
    (!events.is_empty()).then(|| {
        (
            format!("[{}]", events.join(",")),
            ch.dropped_through > cursor,
        )
    })
}

/// A poll's answer: `200` with the events (`Abide-Missed: true` after a
/// gap), or `204` when it timed out.
pub fn answer_poll(request: Request, events: Option<(String, bool)>) {
    let no_store = ("Cache-Control", "no-store");
    match events {
        Some((body, false)) => answer(request, 200, body, &[no_store]),
        Some((body, true)) => answer(request, 200, body, &[no_store, ("Abide-Missed", "true")]),
        None => answer(request, 204, String::new(), &[no_store]),
    }
}

/// One answer with abide's headers (tiny_http adds `Date` and `Content-Length`).
pub fn answer(request: Request, status: u16, body: String, extra: &[(&str, &str)]) {
    let server = ("Server", concat!("abide/", env!("CARGO_PKG_VERSION")));
    let mut headers: Vec<Header> = [server, ("Content-Type", "application/json")]
        .iter()
        .chain(extra)
        .map(|(name, value)| Header::from_bytes(*name, *value).unwrap())
        .collect();
    if status == 204 {
        headers.remove(1);
    }
    let (status, length) = (StatusCode(status), body.len());
    let r = Response::new(
        status,
        headers.into(),
        Cursor::new(body.into_bytes()),
        Some(length),
        None,
    );
    let _ = request.respond(r.with_chunked_threshold(usize::MAX));
}
