//! Stopping: every pending poll is answered `204`, the process exits 0 on
//! SIGINT and SIGTERM, and requests that come during or after the stop are
//! refused or closed, never left hanging.
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::HANG_GUARD;

/// Hang guard for the exit after a signal (the issue asks for 2 s; this only
/// catches a process that does not exit at all).
const EXIT_GUARD: Duration = Duration::from_secs(10);

/// `stop` answers every waiting poll (single- and multi-channel) `204` and returns.
#[test]
fn stop_answers_every_waiting_poll_with_204() {
    let server = common::start();
    let paths = [
        "/channels/a/events?timeout=100",
        "/channels/a/events?timeout=100",
        "/channels/b/events?timeout=100&last_event_id=0",
        "/events?channels=a,b,c&timeout=100",
    ];
    // One at a time: this test is about the stop, not about connections
    // arriving together (concurrency.rs covers that).
    let polls: Vec<_> = (1..)
        .zip(paths)
        .map(|(n, path)| {
            let poll = server.spawn_get(path);
            server.wait_for_stat("waiters", |w| w == n);
            poll
        })
        .collect();

    let took = server.stop();
    eprintln!("in-process stop took {took:?}");
    for (path, poll) in paths.iter().zip(polls) {
        let resp = common::join_within(poll, "poll answered at stop");
        assert_eq!(resp.status, 204, "{path}: {resp:?}");
        assert_eq!(resp.body, "", "{path}");
    }
}

/// After an in-process stop, requests on new or earlier connections are refused, never hung.
#[test]
fn requests_after_stop_are_refused_or_closed() {
    let server = common::start();
    let addr = server.addr;
    // Connections opened before the stop: one served once and kept alive,
    // one that has sent nothing yet.
    let mut kept_alive = TcpStream::connect(addr).expect("connect");
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: abide\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut kept_alive), Outcome::Answered(200));
    let silent = TcpStream::connect(addr).expect("connect");

    server.stop();

    let outcomes = requests_after_stop(addr, vec![kept_alive, silent]);
    for (what, outcome) in &outcomes {
        assert!(
            matches!(
                outcome,
                Outcome::Refused | Outcome::Closed | Outcome::Answered(503)
            ),
            "{what} connection after stop: {outcome:?} (all: {outcomes:?})"
        );
    }
}

/// SIGTERM: every pending poll is answered `204` and the process exits 0.
#[test]
fn sigterm_answers_pending_polls_and_exits_0() {
    signal_answers_pending_polls_and_exits_0(libc::SIGTERM, "SIGTERM");
}

/// SIGINT: every pending poll is answered `204` and the process exits 0.
#[test]
fn sigint_answers_pending_polls_and_exits_0() {
    signal_answers_pending_polls_and_exits_0(libc::SIGINT, "SIGINT");
}

/// Requests sent to the binary once SIGTERM's stop began are refused or closed, never hung.
#[test]
fn requests_after_sigterm_are_refused_or_closed() {
    let mut abide = common::Abide::serve(&[]);
    let addr = abide.addr;
    let poll = thread::spawn(move || {
        common::raw(addr, &get("/channels/z/events?timeout=100"), HANG_GUARD)
    });
    common::wait_until("the poll to wait", || stats(addr)["waiters"] == 1);
    let early: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();

    abide.signal(libc::SIGTERM);
    // The waiting poll's 204 shows that the stop has begun.
    let answer = common::join_within(poll, "poll answered at the signal");
    assert_eq!(common::final_status(&answer), Some(204), "{answer:?}");
    let outcomes = requests_after_stop(addr, early);
    let status = abide.wait_exit();
    eprintln!("after SIGTERM: {outcomes:?}");
    for (what, outcome) in &outcomes {
        assert!(
            matches!(
                outcome,
                Outcome::Refused | Outcome::Closed | Outcome::Answered(503)
            ),
            "{what} connection after SIGTERM: {outcome:?} (all: {outcomes:?})"
        );
    }
    assert!(status.success(), "exit status {status}");
}

fn signal_answers_pending_polls_and_exits_0(signal: libc::c_int, name: &str) {
    let mut abide = common::Abide::serve(&[]);
    let addr = abide.addr;
    let paths = [
        "/channels/a/events?timeout=100",
        "/channels/b/events?timeout=100",
        "/events?channels=a,b&timeout=100",
    ];
    // One at a time, each waiting before the next connects.
    let polls: Vec<JoinHandle<String>> = (1..)
        .zip(paths)
        .map(|(n, path)| {
            let request = get(path);
            let poll = thread::spawn(move || common::raw(addr, &request, HANG_GUARD));
            common::wait_until("the poll to wait", || stats(addr)["waiters"] == n);
            poll
        })
        .collect();

    let begun = Instant::now();
    abide.signal(signal);
    for (path, poll) in paths.iter().zip(polls) {
        let answer = common::join_within(poll, "poll answered at the signal");
        assert_eq!(
            common::final_status(&answer),
            Some(204),
            "{path} after {name}: {answer:?}"
        );
    }
    let status = abide.wait_exit();
    let took = begun.elapsed();
    eprintln!("{name}: exited with {status} after {took:?}");
    assert!(status.success(), "{name}: exit status {status}");
    assert!(took < EXIT_GUARD, "{name}: exit took {took:?}");
}

/// What became of a request.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The connection could not be made.
    Refused,
    /// The connection ended (EOF or reset) without an answer.
    Closed,
    /// A complete answer with this status.
    Answered(u16),
    /// No answer and no close within the hang guard.
    Hung(String),
}

/// Sends `GET /healthz` on each of `early` (connections opened before the
/// stop) and on as many new connections, then reports what became of each.
fn requests_after_stop(addr: SocketAddr, early: Vec<TcpStream>) -> Vec<(String, Outcome)> {
    let request = b"GET /healthz HTTP/1.1\r\nHost: abide\r\n\r\n";
    let mut sent: Vec<(String, TcpStream)> = Vec::new();
    let mut outcomes = Vec::new();
    for (i, mut stream) in early.into_iter().enumerate() {
        // A write to a closed connection may fail; reading tells what happened.
        let _ = stream.write_all(request);
        sent.push((format!("early #{i}"), stream));
        match TcpStream::connect(addr) {
            Ok(mut stream) => {
                let _ = stream.write_all(request);
                sent.push((format!("new #{i}"), stream));
            }
            Err(_) => outcomes.push((format!("new #{i}"), Outcome::Refused)),
        }
    }
    // Read in parallel, so that hung connections cost one hang guard in all.
    let readers: Vec<_> = sent
        .into_iter()
        .map(|(what, mut stream)| thread::spawn(move || (what, read_answer(&mut stream))))
        .collect();
    // Each reader ends by itself: its reads time out at the hang guard.
    outcomes.extend(readers.into_iter().map(|r| r.join().expect("reader")));
    outcomes
}

/// Reads one answer: its status once complete (by `Content-Length`), `Closed`
/// on EOF or reset before that, `Hung` if neither happens within the guard.
fn read_answer(stream: &mut TcpStream) -> Outcome {
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(status) = complete_answer(&text) {
            return Outcome::Answered(status);
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Outcome::Hung(text);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&got);
    match common::final_status(&text) {
        Some(status) => Outcome::Answered(status),
        None => Outcome::Closed,
    }
}

/// The status of `text` if it holds a complete answer (head and body).
fn complete_answer(text: &str) -> Option<u16> {
    let (head, body) = text.split_once("\r\n\r\n")?;
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    (body.len() >= length)
        .then(|| common::final_status(head))
        .flatten()
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: abide\r\nConnection: close\r\n\r\n").into_bytes()
}

/// `GET /stats` on its own connection.
fn stats(addr: SocketAddr) -> serde_json::Value {
    let answer = common::raw(addr, &get("/stats"), HANG_GUARD);
    let (_, body) = answer.split_once("\r\n\r\n").expect("an answer");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("stats not JSON ({e}): {answer:?}"))
}
