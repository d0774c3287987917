//! Pipelined requests on one connection: their effects come in order, and a
//! connection holds at most one wait slot.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::HANG_GUARD;

/// Reads `count` complete answers from `stream`, in order.
fn answers(stream: &mut TcpStream, count: usize) -> Vec<common::Resp> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut out = Vec::new();
    while out.len() < count {
        if let Some((resp, used)) = next_answer(&buf) {
            buf.drain(..used);
            out.push(resp);
            continue;
        }
        let n = stream
            .read(&mut chunk)
            .expect("answers within the hang guard");
        assert!(n > 0, "closed after {} answers: {out:?}", out.len());
        buf.extend_from_slice(&chunk[..n]);
    }
    out
}

/// The first complete answer in `buf` and how many bytes it took.
fn next_answer(buf: &[u8]) -> Option<(common::Resp, usize)> {
    let resp = common::complete_response(buf)?;
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let length: usize = resp
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some((resp, head_end + length))
}

/// Regression: a poll pipelined behind a publish on the same connection sees that publish (it used to be decided before the publish's body was read, and answered 204).
#[test]
fn a_poll_pipelined_behind_a_publish_sees_it() {
    let server = common::start();
    for round in 0..20 {
        let cursor = server.publish("ordered", &round.to_string());
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
        let requests = format!(
            "GET /channels/ordered/events?timeout=0&last_event_id={cursor} HTTP/1.1\r\nHost: x\r\n\r\n\
             POST /channels/ordered/events HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n\"new\"\
             GET /channels/ordered/events?timeout=5&last_event_id={cursor} HTTP/1.1\r\nHost: x\r\n\r\n\
             DELETE /channels/ordered HTTP/1.1\r\nHost: x\r\n\r\n\
             GET /channels/ordered/events?timeout=0&last_event_id={cursor} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(requests.as_bytes()).unwrap();
        let got = answers(&mut stream, 5);
        let statuses: Vec<u16> = got.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            [204, 201, 200, 204, 204],
            "round {round}: {got:?}"
        );
        let published = got[1].json()["id"].as_u64().unwrap();
        assert_eq!(got[2].ids(), [published], "round {round}");
    }
}

/// Regression: one connection pipelining many polls holds at most one wait slot (it used to take a slot per poll at once, and could take them all); each poll with another request behind it is answered at once.
#[test]
fn one_connection_holds_at_most_one_wait_slot() {
    let server = common::start_with(abide::Config {
        max_waiters: 4,
        ..common::config()
    });
    let mut greedy = TcpStream::connect(server.addr).unwrap();
    greedy.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let polls: String = (0..10)
        .map(|_| "GET /channels/quiet/events?timeout=30 HTTP/1.1\r\nHost: x\r\n\r\n")
        .collect();
    greedy.write_all(polls.as_bytes()).unwrap();
    // Nine are answered at once (a request waits behind each); the last holds.
    let first = answers(&mut greedy, 9);
    assert!(first.iter().all(|r| r.status == 204), "{first:?}");
    server.wait_for_stat("waiters", |n| n == 1);
    // The other slots stay free for everyone else.
    let others: Vec<_> = (0..3)
        .map(|_| server.spawn_get("/channels/other/events?timeout=30"))
        .collect();
    server.wait_for_stat("waiters", |n| n == 4);
    let id = server.publish("other", "1");
    for other in others {
        assert_eq!(
            common::join_within(other, "another client's poll").ids(),
            [id]
        );
    }
    let quiet = server.publish("quiet", "2");
    let last = answers(&mut greedy, 1);
    assert_eq!(last[0].ids(), [quiet]);
    assert_eq!(server.stats()["polls_rejected"], 0);
}

/// A poll held on a connection is answered at once when another request arrives behind it, so a pipelined request never waits out a hold.
#[test]
fn a_request_behind_a_held_poll_answers_it_at_once() {
    let server = common::start();
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    stream
        .write_all(b"GET /channels/hold/events?timeout=60 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    server.wait_for_stat("waiters", |n| n == 1);
    let started = std::time::Instant::now();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let got = answers(&mut stream, 2);
    assert_eq!(got[0].status, 204);
    assert_eq!(got[1].status, 200);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "the hold was cut short"
    );
    server.wait_for_stat("waiters", |n| n == 0);
}

/// Regression: a new connection that reuses the address of a client that vanished (reset) while its poll was held is served at once (lanes were keyed by address alone: it waited out the old hold, 30 s, or its request was dropped with the dead lane).
#[test]
fn a_new_connection_on_a_vanished_clients_address_is_served_at_once() {
    use socket2::{Domain, Socket, Type};
    let server = common::start();
    let bound = |port: u16| {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_reuse_address(true).unwrap();
        socket
            .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
            .unwrap();
        socket
    };
    let old = bound(0);
    let port = old.local_addr().unwrap().as_socket().unwrap().port();
    old.connect(&server.addr.into()).unwrap();
    let mut old: TcpStream = old.into();
    old.write_all(b"GET /channels/vanish/events?timeout=60 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    server.wait_for_stat("waiters", |n| n == 1);
    // Vanish: a reset, not a close.
    socket2::SockRef::from(&old)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(old);
    let new = bound(port);
    new.connect(&server.addr.into()).unwrap();
    let mut new: TcpStream = new.into();
    new.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let started = std::time::Instant::now();
    new.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let got = answers(&mut new, 1);
    assert_eq!(got[0].status, 200);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "served at once, not after the old hold: {:?}",
        started.elapsed()
    );
    server.wait_for_stat("waiters", |n| n == 0);
}
