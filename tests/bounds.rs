//! Bounds on what one client can make the server hold: a connection that
//! pipelines past its bound is cut with nothing more of it run, an answer
//! read at a trickle is cut at `--write-timeout` in all, and a request no
//! thread or backlog room can take is refused without stalling anyone.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::HANG_GUARD;

/// Reads until the server ends the connection (end of file or a reset);
/// returns what arrived and when it ended. Fails at the hang guard.
fn read_until_cut(stream: &mut TcpStream) -> (Vec<u8>, Instant) {
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (out, Instant::now()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the connection was not ended within the hang guard")
            }
            Err(_) => return (out, Instant::now()),
        }
    }
}

/// Publishes 15 events of 60 KB on `big`: a poll for them is answered with 900 KB.
fn fill_big(server: &common::TestServer) {
    let event = format!("\"{}\"", "e".repeat(60_000));
    for _ in 0..15 {
        assert_eq!(server.post("/channels/big/events", &event).status, 201);
    }
}

/// Eight polls for 900 KB each, then `extra`: sent by a client that does
/// not read, the answers fill the kernel's buffers (the sending socket's
/// grows to 4 MiB) and the lane's head blocks writing, so what follows queues.
fn blocked_head_then(extra: &str) -> String {
    let poll = "GET /channels/big/events?last_event_id=0&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n";
    format!("{}{extra}", poll.repeat(8))
}

/// Regression: requests pipelined behind an answer being written past --max-pipelined-requests cut the connection, and none of them runs (20,000 of them used to pile up behind a held poll, 212 MiB).
#[test]
fn pipelining_past_the_request_bound_cuts_the_connection() {
    let server = common::start_with(abide::Config {
        max_pipelined_requests: 8,
        ..common::config()
    });
    fill_big(&server);
    server.publish("victim", "1");
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let healthz = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(20);
    let delete = "DELETE /channels/victim HTTP/1.1\r\nHost: x\r\n\r\n";
    stream
        .write_all(blocked_head_then(&format!("{healthz}{delete}")).as_bytes())
        .unwrap();
    server.wait_for_stat("connections_cut", |n| n >= 1);
    let (got, _) = read_until_cut(&mut stream);
    assert!(got.len() < 8 * 900_000, "cut before the last answer");
    assert_eq!(
        server.get("/channels/victim").status,
        200,
        "the DELETE never ran"
    );
    assert_eq!(server.get("/healthz").status, 200);
}

/// Request heads pipelined behind an answer being written past --max-pipelined-bytes (one 70 KB header) cut the connection; within the bound they are answered.
#[test]
fn pipelining_past_the_byte_bound_cuts_the_connection() {
    let server = common::start();
    fill_big(&server);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let padded = format!(
        "DELETE /channels/big HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    stream
        .write_all(blocked_head_then(&padded).as_bytes())
        .unwrap();
    server.wait_for_stat("connections_cut", |n| n >= 1);
    let (got, _) = read_until_cut(&mut stream);
    assert!(got.len() < 8 * 900_000, "cut before the last answer");
    assert_eq!(
        server.get("/channels/big").status,
        200,
        "the DELETE never ran"
    );
    // Heads within the bound are queued and answered as before.
    let mut fine = TcpStream::connect(server.addr).unwrap();
    fine.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let small = format!(
        "GET /channels/held2/events?timeout=1 HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(30 * 1024)
    );
    fine.write_all(small.as_bytes()).unwrap();
    let text = common::read_until_close(&mut fine);
    assert!(
        text.starts_with("HTTP/1.1 204") && text.contains("HTTP/1.1 200"),
        "{text:?}"
    );
}

/// Regression: an answer read at a trickle is cut once it has taken --write-timeout in all (the timeout used to bound each send only, so a trickle held the thread for the whole answer, and the next).
#[test]
fn an_answer_read_at_a_trickle_is_cut_at_the_write_timeout() {
    let server = common::start_with(abide::Config {
        write_timeout: Duration::from_secs(1),
        ..common::config()
    });
    fill_big(&server);
    // A small receive window, so that the kernel's buffers hold little of it.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    // Eight answers of 900 KB: more than the kernel's buffers take (the
    // sending socket's grows to 4 MiB), so writing them blocks on the reader.
    let poll = "GET /channels/big/events?last_event_id=0&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\n";
    stream.write_all(poll.repeat(8).as_bytes()).unwrap();
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let started = Instant::now();
    let mut got = 0usize;
    let mut buf = [0u8; 2048];
    // 2 KB every 50 ms, about 40 KB/s: one answer would take over 20 s to
    // read, with every send making progress well within a second.
    let ended = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break false;
            }
            Err(_) => break true,
        }
        if started.elapsed() > Duration::from_secs(15) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50)); // sync-ok: the slow reader's pace, not a wait for a state
    };
    assert!(
        ended,
        "still open after {:?} ({got} bytes read)",
        started.elapsed()
    );
    assert!(got < 8 * 900_000, "cut before the last answer: {got} bytes");
    server.wait_for_stat("connections_cut", |n| n >= 1);
    assert_eq!(server.get("/healthz").status, 200);
}

/// When every writer is busy and the backlog (--max-backlog) is full, a request is refused at once (its connection cut, or `503` if a writer freed up for that), and the server serves normally once the writer is free.
#[test]
fn a_full_backlog_cuts_the_request_and_the_server_recovers() {
    let server = common::start_with(abide::Config {
        max_writers: 1,
        max_backlog: 1,
        ..common::config()
    });
    // The one writer reads a body that is slow to come.
    let mut slow = TcpStream::connect(server.addr).unwrap();
    slow.write_all(
        b"POST /channels/slow/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n\"",
    )
    .unwrap();
    // Publishes from other connections (a publish always needs a writer;
    // a small answer ready at once may be written by the dispatch thread):
    // answered while the slow publish has not reached the writer yet, then
    // one queued in the backlog, then one cut.
    let publish = b"POST /channels/other/events HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\n1";
    let mut waiting = Vec::new();
    let mut cut = false;
    let mut refused_with_503 = false;
    for _ in 0..200 {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream.write_all(publish).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 512];
        match stream.read(&mut buf) {
            Ok(0) => {
                cut = true;
                break;
            }
            // Refused with 503 (a writer freed up for the refusal).
            Ok(n) if buf[..n].starts_with(b"HTTP/1.1 503") => {
                refused_with_503 = true;
                cut = true;
                break;
            }
            Ok(_) => {} // answered: the writer was still free
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                waiting.push(stream);
            }
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    assert!(cut, "no request was refused");
    // The writer is freed: the slow publish completes, the queued request
    // is answered, and new ones are served.
    slow.write_all(format!("{}\"", "s".repeat(1998)).as_bytes())
        .unwrap();
    slow.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let answer = common::read_until_close(&mut slow);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer:?}");
    // Those that waited (in the backlog, or slow to be refused) all end:
    // answered, refused, or cut; none hangs.
    for mut stream in waiting {
        let (got, _) = read_until_cut(&mut stream);
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 201") || text.starts_with("HTTP/1.1 503"),
            "{text:?}"
        );
    }
    assert_eq!(server.get("/healthz").status, 200);
    let stats = server.stats();
    assert!(
        stats["requests_overloaded"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    if !refused_with_503 {
        assert!(stats["connections_cut"].as_u64().unwrap() >= 1, "{stats}");
    }
}

/// Regression guard for answers the dispatch thread writes itself: a client that sends polls and never reads gets them written at once only while its socket has room, then on a writer, so it never stalls the thread every request passes through; the others are served throughout (a stalled dispatch would hold them for the hour-long --write-timeout), and the client's connection is cut.
#[test]
fn a_client_that_stops_reading_never_stalls_the_dispatch_thread() {
    let server = common::start_with(abide::Config {
        write_timeout: Duration::from_secs(3600),
        ..common::config()
    });
    server.publish("a", &format!("\"{}\"", "x".repeat(200)));
    // A small receive buffer: its window closes after a few answers.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let mut hostile: TcpStream = socket.into();
    hostile.set_write_timeout(Some(HANG_GUARD)).unwrap();
    let sender = std::thread::spawn(move || {
        let poll = "GET /channels/a/events?last_event_id=0 HTTP/1.1\r\nHost: x\r\n\r\n";
        // Far more answers (about 7 MB) than the kernel's buffers hold.
        for _ in 0..20_000 {
            if hostile.write_all(poll.as_bytes()).is_err() {
                break;
            }
        }
    });
    let mut served = 0u32;
    while !sender.is_finished() || served < 50 {
        assert_eq!(server.get("/channels/a/events?last_event_id=0").status, 200);
        served += 1;
    }
    common::join_within(sender, "the client that does not read");
    server.wait_for_stat("connections_cut", |n| n >= 1);
    // Under qemu-user the kernel cannot be asked (no sock_diag netlink), so
    // every answer goes to a writer there.
    if !cfg!(abide_cross) {
        assert!(
            server.stats()["answers_inline"].as_u64().unwrap() >= 1,
            "small answers were written by the dispatch thread"
        );
    }
}
