//! Server-Sent Events over raw sockets: framing, ids, order, resuming from
//! `Last-Event-ID`, gaps, deletion, heartbeats, the wait-slot cap, a client
//! that does not read, `--max-stream-seconds` and shutdown.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Abide, HANG_GUARD, TempDir, TestServer, config, start_with, wait_until};
use serde_json::Value;

/// One message of a stream: its fields, or a comment.
#[derive(Debug, Default, PartialEq)]
struct Message {
    event: Option<String>,
    id: Option<u64>,
    data: Option<String>,
    retry: Option<u64>,
    comment: Option<String>,
}

impl Message {
    fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("data")).expect("JSON data")
    }
}

/// A stream read over a raw socket.
struct Stream {
    socket: TcpStream,
    buf: Vec<u8>,
    /// The status line and headers.
    head: String,
}

impl Stream {
    /// `GET path` with `Accept: text/event-stream` and `extra` header lines.
    fn open(addr: SocketAddr, path: &str, extra: &str) -> Stream {
        let mut socket = TcpStream::connect(addr).expect("connect");
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{extra}\r\n");
        socket.write_all(request.as_bytes()).unwrap();
        let mut stream = Stream {
            socket,
            buf: Vec::new(),
            head: String::new(),
        };
        let end = stream.read_until(b"\r\n\r\n").expect("a head");
        let head: Vec<u8> = stream.buf.drain(..end + 4).collect();
        stream.head = String::from_utf8(head).unwrap();
        stream
    }

    fn status(&self) -> u16 {
        self.head[9..12].parse().unwrap()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    /// Reads until `pattern` is buffered; its offset, or `None` at end of file.
    fn read_until(&mut self, pattern: &[u8]) -> Option<usize> {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            if let Some(at) = self.buf.windows(pattern.len()).position(|w| w == pattern) {
                return Some(at);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {pattern:?} within the hang guard");
            self.socket.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 8192];
            match self.socket.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next message, or `None` when the server ended the stream.
    fn next(&mut self) -> Option<Message> {
        let end = self.read_until(b"\n\n")?;
        let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
        let text = String::from_utf8(raw).unwrap();
        let mut message = Message::default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(comment) = line.strip_prefix(':') {
                message.comment = Some(comment.trim().to_string());
                continue;
            }
            let (field, value) = line.split_once(": ").unwrap_or((line, ""));
            match field {
                "event" => message.event = Some(value.into()),
                "id" => message.id = Some(value.parse().expect("numeric id")),
                "data" => message.data = Some(value.into()),
                "retry" => message.retry = Some(value.parse().expect("numeric retry")),
                other => panic!("unexpected field {other:?} in {text:?}"),
            }
        }
        Some(message)
    }

    /// The next message that carries an event (skipping comments).
    fn next_event(&mut self) -> Message {
        loop {
            let message = self.next().expect("the stream ended");
            if message.comment.is_none() {
                return message;
            }
        }
    }

    /// Waits until the server has closed the stream.
    fn ended(&mut self) -> bool {
        while let Some(message) = self.next() {
            if message.comment.is_none() {
                panic!("unexpected message before the end: {message:?}");
            }
        }
        true
    }
}

fn sse(server: &TestServer, path: &str) -> Stream {
    Stream::open(server.addr, path, "")
}

/// Starts a server with `adjust` applied to the test config.
fn server(adjust: impl FnOnce(&mut abide::Config)) -> TestServer {
    let mut config = config();
    adjust(&mut config);
    start_with(config)
}

/// A stream starts with its headers and a `retry:` line, sends what the
/// channel holds, then each new event as `id:` + `data:` (the event object),
/// in id order, once each, as soon as it is published: long before the
/// next heartbeat, and without waiting for another event.
#[test]
fn a_stream_sends_held_then_new_events_in_order_as_they_come() {
    let server = server(|c| c.sse_heartbeat = Duration::from_secs(3600));
    let held: Vec<u64> = (0..3)
        .map(|n| server.publish("a", &n.to_string()))
        .collect();
    let mut stream = sse(&server, "/channels/a/events");
    assert_eq!(stream.status(), 200, "{}", stream.head);
    assert_eq!(
        stream.header("Content-Type").as_deref(),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(stream.header("Cache-Control").as_deref(), Some("no-store"));
    assert_eq!(stream.header("X-Accel-Buffering").as_deref(), Some("no"));
    assert_eq!(stream.header("Content-Length"), None);
    assert!(
        stream.next().unwrap().retry.is_some(),
        "a retry: line first"
    );
    for (n, id) in held.iter().enumerate() {
        let message = stream.next_event();
        assert_eq!(message.id, Some(*id));
        let event = message.json();
        assert_eq!(event["id"], *id);
        assert_eq!(event["channel"], "a");
        assert_eq!(event["data"], n);
    }
    for n in 3..6 {
        let published_at = Instant::now();
        let id = server.publish("a", &n.to_string());
        let message = stream.next_event();
        assert_eq!(message.id, Some(id), "the new event, alone");
        assert!(
            published_at.elapsed() < Duration::from_secs(20),
            "held back: {:?}",
            published_at.elapsed()
        );
    }
    assert_eq!(server.stats()["streams"], 1);
}

/// `Last-Event-ID` resumes after the cursor, `last_event_id` wins over it,
/// and several channels are merged in id order.
#[test]
fn a_stream_resumes_after_last_event_id_over_several_channels() {
    let server = server(|_| {});
    let ids: Vec<u64> = (0..6)
        .map(|n| server.publish(if n % 2 == 0 { "a" } else { "b" }, &n.to_string()))
        .collect();
    let mut stream = Stream::open(
        server.addr,
        "/events?channels=a,b",
        &format!("Last-Event-ID: {}\r\n", ids[2]),
    );
    stream.next();
    let got: Vec<u64> = (0..3).map(|_| stream.next_event().id.unwrap()).collect();
    assert_eq!(got, ids[3..]);

    let path = format!("/events?channels=a,b&last_event_id={}", ids[4]);
    let mut stream = Stream::open(server.addr, &path, "Last-Event-ID: 1\r\n");
    stream.next();
    assert_eq!(stream.next_event().id, Some(ids[5]));
}

/// Events after the cursor that were dropped before the stream could send
/// them are announced (`event: missed`, naming the first id still held)
/// before the events that follow; a cursor that lost nothing is not told.
#[test]
fn a_gap_is_announced_before_the_events_after_it() {
    let server = server(|c| c.buffer_events = 2);
    let ids: Vec<u64> = (0..5)
        .map(|n| server.publish("a", &n.to_string()))
        .collect();
    let mut stream = sse(
        &server,
        &format!("/channels/a/events?last_event_id={}", ids[0]),
    );
    stream.next();
    let gap = stream.next_event();
    assert_eq!(gap.event.as_deref(), Some("missed"));
    assert_eq!(gap.json()["first_held_id"], ids[3]);
    assert_eq!(stream.next_event().id, Some(ids[3]));
    assert_eq!(stream.next_event().id, Some(ids[4]));

    let mut stream = sse(
        &server,
        &format!("/channels/a/events?last_event_id={}", ids[2]),
    );
    stream.next();
    let first = stream.next_event();
    assert_eq!(first.event, None, "nothing was lost after this cursor");
    assert_eq!(first.id, Some(ids[3]));
}

/// Deleting a channel sends `event: gone` and ends the stream, freeing its slot.
#[test]
fn deleting_the_channel_ends_the_stream_with_gone() {
    let server = server(|_| {});
    let mut stream = sse(&server, "/channels/a/events");
    stream.next();
    server.wait_for_stat("streams", |n| n == 1);
    assert_eq!(server.delete("/channels/a").status, 204);
    let gone = stream.next_event();
    assert_eq!(gone.event.as_deref(), Some("gone"));
    assert_eq!(gone.json()["channel"], "a");
    assert!(stream.ended());
    server.wait_for_stat("waiters", |n| n == 0);
}

/// An idle stream gets a comment every `--sse-heartbeat`.
#[test]
fn an_idle_stream_gets_heartbeat_comments() {
    let server = server(|c| c.sse_heartbeat = Duration::from_secs(1));
    let mut stream = sse(&server, "/channels/a/events");
    stream.next();
    for _ in 0..2 {
        let message = stream.next().expect("a heartbeat");
        assert!(message.comment.is_some(), "{message:?}");
    }
}

/// Each stream holds a wait slot: at `--max-waiters` a new stream (and a
/// poll that would wait) gets `503` with `Retry-After` and a JSON error;
/// `/stats` counts streams apart from held polls.
#[test]
fn streams_take_wait_slots_and_the_cap_refuses_more() {
    let server = server(|c| c.max_waiters = 2);
    let mut first = sse(&server, "/channels/a/events");
    first.next();
    let poll = server.spawn_get("/channels/b/events?timeout=20");
    server.wait_for_stat("waiters", |n| n == 2);
    let stats = server.stats();
    assert_eq!(
        (stats["waiters"].as_u64(), stats["streams"].as_u64()),
        (Some(2), Some(1))
    );
    let mut refused = sse(&server, "/channels/c/events");
    assert_eq!(refused.status(), 503, "{}", refused.head);
    assert!(refused.header("Retry-After").is_some());
    let body_end = refused.read_until(b"}").expect("a JSON error");
    let body = String::from_utf8_lossy(&refused.buf[..=body_end]).to_string();
    assert!(body.contains("--max-waiters"), "{body}");
    server.publish("b", "1");
    common::join_within(poll, "the poll");
}

/// A client that stops reading is dropped once a write outlives
/// `--write-timeout`: its slot is freed, and the events stay for its cursor.
#[test]
fn a_stream_that_is_not_read_is_dropped() {
    let server = server(|c| c.write_timeout = Duration::from_secs(1));
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let mut socket: TcpStream = socket.into();
    socket
        .write_all(
            b"GET /channels/a/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
        )
        .unwrap();
    server.wait_for_stat("streams", |n| n == 1);
    let big = format!("\"{}\"", "x".repeat(60_000));
    let mut published = 0;
    while server.stats()["streams"] == 1 {
        server.publish("a", &big);
        published += 1;
        assert!(published < 2_000, "the stream was never dropped");
    }
    assert_eq!(server.stats()["waiters"], 0);
    let resp = server.get("/channels/a/events?timeout=0&limit=1");
    assert_eq!(resp.status, 200, "the events stay");
    drop(socket);
}

/// `--max-stream-seconds` ends a stream; reconnecting with the last id seen
/// resumes it without a gap.
#[test]
fn max_stream_seconds_ends_a_stream_and_it_resumes() {
    let server = server(|c| c.max_stream = Some(Duration::from_secs(1)));
    let first = server.publish("a", "1");
    let mut stream = sse(&server, "/channels/a/events");
    stream.next();
    assert_eq!(stream.next_event().id, Some(first));
    assert!(stream.ended());
    let second = server.publish("a", "2");
    let mut stream = Stream::open(
        server.addr,
        "/channels/a/events",
        &format!("Last-Event-ID: {first}\r\n"),
    );
    stream.next();
    assert_eq!(stream.next_event().id, Some(second));
}

/// Shutdown ends every stream cleanly (the connection closes) and the
/// server stops promptly.
#[test]
fn shutdown_ends_streams() {
    let server = server(|_| {});
    let mut stream = sse(&server, "/channels/a/events");
    stream.next();
    server.wait_for_stat("streams", |n| n == 1);
    let took = server.stop();
    assert!(stream.ended());
    assert!(took < HANG_GUARD, "{took:?}");
}

/// With `--cors-origin` a stream carries the CORS headers; without
/// `Accept: text/event-stream` the same URL is a long poll, as before.
#[test]
fn streams_carry_cors_and_plain_gets_stay_long_polls() {
    let server = server(|c| c.cors_origin = Some("https://dash.example".into()));
    let id = server.publish("a", "1");
    let stream = sse(&server, "/channels/a/events");
    assert_eq!(
        stream.header("Access-Control-Allow-Origin").as_deref(),
        Some("https://dash.example")
    );
    let poll = server.get("/channels/a/events?timeout=0");
    assert_eq!(poll.ids(), [id]);
    wait_until("the stream to be counted", || {
        server.stats()["streams"] == 1
    });
}

/// `abide watch --stream` prints each event once, in order, as it comes,
/// keeps its cursor file, tells of a gap on stderr, resumes from the cursor
/// file when started again, and exits with an error when the channel is
/// deleted.
#[test]
fn watch_stream_prints_each_event_once_and_resumes() {
    let server = server(|c| c.buffer_events = 3);
    let dir = TempDir::new("watch-stream");
    let cursor_file = dir.path().join("cursor");
    let url = format!("http://{}", server.addr);
    let watch = || {
        Abide::spawn(&[
            "watch",
            "--stream",
            "--url",
            &url,
            "--cursor-file",
            cursor_file.to_str().unwrap(),
            "--timeout",
            "5",
            "news",
        ])
    };
    let mut watcher = watch();
    server.wait_for_stat("streams", |n| n == 1);
    let first: Vec<u64> = (0..2)
        .map(|n| server.publish("news", &n.to_string()))
        .collect();
    let printed: Vec<u64> = (0..2)
        .map(|_| {
            let line = watcher.next_stdout_line("an event");
            serde_json::from_str::<Value>(&line).unwrap()["id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(printed, first);
    watcher.signal(libc::SIGTERM);
    assert!(watcher.wait_exit().success());
    assert_eq!(
        abide::client::read_cursor(&cursor_file),
        Ok(first[1]),
        "the cursor file follows the stream"
    );

    // Five more while it is stopped: two of them fall out of the buffer.
    let later: Vec<u64> = (0..5)
        .map(|n| server.publish("news", &n.to_string()))
        .collect();
    let mut watcher = watch();
    let printed: Vec<u64> = (0..3)
        .map(|_| {
            let line = watcher.next_stdout_line("an event after the restart");
            serde_json::from_str::<Value>(&line).unwrap()["id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(printed, later[2..], "resumed from the cursor file");
    watcher.next_line("the gap notice", |l| l.contains("dropped"));

    assert_eq!(server.delete("/channels/news").status, 204);
    let status = watcher.wait_exit();
    assert!(!status.success(), "a deleted channel ends the watch");
    let stderr = watcher.rest_of_stderr().concat();
    assert!(stderr.contains("news was deleted"), "{stderr}");
}
