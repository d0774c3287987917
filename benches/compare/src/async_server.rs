//! The async variant: the same subset of abide's API on tokio + hyper 1.x, as
//! an async server would idiomatically be written.
//!
//! - `POST /channels/{name}/events`: body one JSON value (≤ 65536 bytes) → `201`
//!   with the stored event object `{"id","channel","timestamp","data"}`.
//! - `GET /channels/{name}/events?last_event_id=&timeout=&limit=`: events after
//!   the cursor at once (`200`, a JSON array), or wait on the channel's `Notify`
//!   until one arrives (`200`) or the timeout (plus up to 1/16 jitter) passes
//!   (`204`). Cursor from `Last-Event-ID` when the parameter is absent;
//!   `Abide-Missed: true` when events after the cursor were dropped.
//! - `GET /stats`: `waiters`, `channels`, `events_published`, `events_delivered`,
//!   `polls_timed_out`.
//!
//! Each channel keeps its newest `buffer` events in a ring (abide's default
//! 256). Ids are wall-clock microseconds bumped to stay strictly increasing, as
//! abide's are. State is one `std::sync::Mutex` held only for short, non-async
//! sections (tokio's advice for such state); a publish stores the event, then
//! wakes exactly the waiters of its channel with `Notify::notify_waiters`, and
//! is answered without waiting for them.
//!
//! Started by the benchmark harness as `compare serve-async --flavor
//! current|multi --listen ADDR [--buffer N]`: `current` runs a current-thread
//! runtime, `multi` a multi-thread runtime with 2 workers.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Notify;

const MAX_EVENT_BYTES: usize = 65536;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_CHANNELS: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Current,
    Multi,
}

struct Event {
    id: u64,
    json: Bytes,
}

struct Channel {
    events: VecDeque<Arc<Event>>,
    /// Highest id pushed out of the ring (0 if none): a cursor below it missed events.
    dropped_through: u64,
    notify: Arc<Notify>,
}

struct State {
    channels: HashMap<String, Channel>,
    last_id: u64,
}

struct Hub {
    state: Mutex<State>,
    buffer: usize,
    waiters: AtomicU64,
    published: AtomicU64,
    delivered: AtomicU64,
    timed_out: AtomicU64,
}

type Body = Full<Bytes>;

/// Runs the server until the process is killed.
pub fn main(flavor: Flavor, listen: SocketAddr, buffer: usize) {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = match flavor {
        Flavor::Current => tokio::runtime::Builder::new_current_thread(),
        Flavor::Multi => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            b
        }
    }
    .enable_all()
    .build()
    .expect("tokio runtime");
    let hub = Arc::new(Hub {
        state: Mutex::new(State {
            channels: HashMap::new(),
            last_id: 0,
        }),
        buffer,
        waiters: AtomicU64::new(0),
        published: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        timed_out: AtomicU64::new(0),
    });
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
        eprintln!(
            "abide-async ({flavor:?}) listening on http://{}",
            listener.local_addr().unwrap()
        );
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of descriptors and the like: back off, keep accepting.
                    eprintln!("abide-async: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let hub = hub.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(hub.clone(), req));
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

async fn handle(hub: Arc<Hub>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let answer = if path == "/stats" {
        Ok(hub.stats())
    } else if path == "/healthz" {
        Ok(json(StatusCode::OK, r#"{"status":"ok"}"#.into()))
    } else if let Some(name) = path
        .strip_prefix("/channels/")
        .and_then(|rest| rest.strip_suffix("/events"))
        .map(str::to_string)
    {
        if !valid_channel_name(&name) {
            Err((
                StatusCode::BAD_REQUEST,
                "channel names are 1-64 of A-Z a-z 0-9 - _ .".to_string(),
            ))
        } else if req.method() == Method::POST {
            publish(&hub, &name, req).await
        } else if req.method() == Method::GET {
            poll(&hub, &name, &req).await
        } else {
            Err((
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET or POST".to_string(),
            ))
        }
    } else {
        Err((StatusCode::NOT_FOUND, format!("no route for {path}")))
    };
    Ok(answer.unwrap_or_else(|(status, message)| {
        json(
            status,
            serde_json::json!({ "error": message }).to_string().into(),
        )
    }))
}

type Failure = (StatusCode, String);

async fn publish(hub: &Hub, name: &str, req: Request<Incoming>) -> Result<Response<Body>, Failure> {
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body exceeds {MAX_EVENT_BYTES} bytes"),
        )
    };
    if let Some(length) = req.headers().get(hyper::header::CONTENT_LENGTH) {
        let length: usize = length
            .to_str()
            .ok()
            .and_then(|l| l.parse().ok())
            .unwrap_or(usize::MAX);
        if length > MAX_EVENT_BYTES {
            return Err(too_large());
        }
    }
    let body = Limited::new(req.into_body(), MAX_EVENT_BYTES)
        .collect()
        .await
        .map_err(|_| too_large())?
        .to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("body is not valid JSON: {e}"),
        )
    })?;
    let data = serde_json::to_string(&value).expect("a Value serializes");
    let now = SystemTime::now();
    let (event, notify) = {
        let mut st = hub.state.lock().unwrap();
        if !st.channels.contains_key(name) && st.channels.len() >= MAX_CHANNELS {
            return Err((StatusCode::SERVICE_UNAVAILABLE, "too many channels".into()));
        }
        let micros = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let id = micros.max(st.last_id + 1);
        st.last_id = id;
        let timestamp = humantime::format_rfc3339_millis(now);
        let json =
            format!(r#"{{"id":{id},"channel":"{name}","timestamp":"{timestamp}","data":{data}}}"#);
        let event = Arc::new(Event {
            id,
            json: Bytes::from(json),
        });
        let ch = st
            .channels
            .entry(name.to_string())
            .or_insert_with(Channel::new);
        ch.events.push_back(event.clone());
        while ch.events.len() > hub.buffer {
            let old = ch.events.pop_front().expect("non-empty");
            ch.dropped_through = old.id;
        }
        (event, ch.notify.clone())
    };
    notify.notify_waiters();
    hub.published.fetch_add(1, Relaxed);
    Ok(json(StatusCode::CREATED, event.json.clone()))
}

/// Counts a waiting poll for `/stats` while it waits.
struct Waiting<'a>(&'a AtomicU64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

async fn poll(hub: &Hub, name: &str, req: &Request<Incoming>) -> Result<Response<Body>, Failure> {
    let mut cursor: Option<u64> = None;
    let mut timeout = DEFAULT_TIMEOUT;
    let mut limit = 100usize;
    let bad = |p: &str| (StatusCode::BAD_REQUEST, format!("bad {p}"));
    for (key, value) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match &*key {
            "last_event_id" => cursor = Some(value.parse().map_err(|_| bad("last_event_id"))?),
            "timeout" => {
                timeout =
                    Duration::from_secs(value.parse().map_err(|_| bad("timeout"))?).min(MAX_TIMEOUT)
            }
            "limit" => {
                limit = value.parse().map_err(|_| bad("limit"))?;
                if !(1..=1000).contains(&limit) {
                    return Err(bad("limit"));
                }
            }
            _ => {}
        }
    }
    let cursor = match cursor {
        Some(c) => c,
        None => match req.headers().get("last-event-id") {
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| bad("Last-Event-ID"))?,
            None => 0,
        },
    };
    let max_jitter = (timeout / 16).as_micros() as u64;
    let hold = timeout + Duration::from_micros(fastrand::u64(0..=max_jitter));
    let deadline = tokio::time::Instant::now() + hold;

    // Register interest before looking, so that a publish in between is not missed.
    let notify = {
        let mut st = hub.state.lock().unwrap();
        if let Some(answer) = st
            .channels
            .get(name)
            .and_then(|ch| ch.read_after(cursor, limit))
        {
            return Ok(hub.events(answer));
        }
        if timeout.is_zero() {
            return Ok(empty());
        }
        if !st.channels.contains_key(name) && st.channels.len() >= MAX_CHANNELS {
            return Err((StatusCode::SERVICE_UNAVAILABLE, "too many channels".into()));
        }
        st.channels
            .entry(name.to_string())
            .or_insert_with(Channel::new)
            .notify
            .clone()
    };
    hub.waiters.fetch_add(1, Relaxed);
    let _waiting = Waiting(&hub.waiters);
    loop {
        let mut notified = pin!(notify.notified());
        notified.as_mut().enable();
        let answer = hub
            .state
            .lock()
            .unwrap()
            .channels
            .get(name)
            .and_then(|ch| ch.read_after(cursor, limit));
        if let Some(answer) = answer {
            return Ok(hub.events(answer));
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            hub.timed_out.fetch_add(1, Relaxed);
            return Ok(empty());
        }
    }
}

impl Channel {
    fn new() -> Channel {
        Channel {
            events: VecDeque::new(),
            dropped_through: 0,
            notify: Arc::new(Notify::new()),
        }
    }

    /// Events after `cursor` (at most `limit`) and whether some were missed;
    /// `None` when there is nothing after it.
    fn read_after(&self, cursor: u64, limit: usize) -> Option<(Vec<Arc<Event>>, bool)> {
        let start = self.events.partition_point(|e| e.id <= cursor);
        if start == self.events.len() {
            return None;
        }
        let events: Vec<_> = self.events.range(start..).take(limit).cloned().collect();
        Some((events, self.dropped_through > cursor))
    }
}

impl Hub {
    fn events(&self, (events, missed): (Vec<Arc<Event>>, bool)) -> Response<Body> {
        let mut body =
            Vec::with_capacity(2 + events.iter().map(|e| e.json.len() + 1).sum::<usize>());
        body.push(b'[');
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&e.json);
        }
        body.push(b']');
        self.delivered.fetch_add(events.len() as u64, Relaxed);
        let mut resp = json(StatusCode::OK, body.into());
        resp.headers_mut()
            .insert("cache-control", "no-store".parse().unwrap());
        if missed {
            resp.headers_mut()
                .insert("abide-missed", "true".parse().unwrap());
        }
        resp
    }

    fn stats(&self) -> Response<Body> {
        let channels = self.state.lock().unwrap().channels.len();
        let body = serde_json::json!({
            "waiters": self.waiters.load(Relaxed),
            "channels": channels,
            "events_published": self.published.load(Relaxed),
            "events_delivered": self.delivered.load(Relaxed),
            "polls_timed_out": self.timed_out.load(Relaxed),
        });
        json(StatusCode::OK, body.to_string().into())
    }
}

fn json(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    resp
}

fn empty() -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp.headers_mut()
        .insert("cache-control", "no-store".parse().unwrap());
    resp
}

fn valid_channel_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}
