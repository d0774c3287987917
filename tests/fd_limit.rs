//! Running out of file descriptors must not end accepting for good. Its own
//! test binary: it lowers RLIMIT_NOFILE, which a whole process shares; each
//! scenario runs in a child process of its own (this binary, filtered to one
//! test), so that the two never share a descriptor table.
//!
//! How the shortage meets tiny_http: its accept thread sits in `accept()`,
//! which on Linux reserves the new connection's descriptor before it blocks;
//! once a connection arrives, tiny_http clones the accepted socket (one more
//! descriptor) and calls `accept()` again (one more). `spare` below is how many
//! descriptors are free when a client connects into the shortage; the client's
//! own socket takes one of them.
mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::HANG_GUARD;
use rlimit::Resource;

/// How long the shortage lasts, while the keep-alive client keeps asking.
const OUTAGE: Duration = Duration::from_secs(1);

/// When `accept()` itself fails with EMFILE, the server accepts again once descriptors are free, and the keep-alive client is answered throughout.
#[test]
fn accept_error_from_running_out_of_descriptors_does_not_end_accepting() {
    // Two spare: the client's socket takes one, tiny_http's clone of the
    // accepted socket the other, and its next accept() fails with EMFILE.
    common::isolated(
        "accept_error_from_running_out_of_descriptors_does_not_end_accepting",
        || run_out_of_descriptors(2),
    );
}

/// When tiny_http runs out of descriptors cloning an accepted socket, the server still accepts again once descriptors are free.
#[test]
fn running_out_of_descriptors_while_accepting_does_not_end_accepting() {
    // One spare: the client's socket takes it, accept() returns the
    // descriptor it had reserved, and tiny_http's clone of it finds none.
    common::isolated(
        "running_out_of_descriptors_while_accepting_does_not_end_accepting",
        || run_out_of_descriptors(1),
    );
}

/// Opens a keep-alive connection, uses up every descriptor but `spare`, has a
/// client connect into the shortage, keeps the keep-alive client asking for
/// `OUTAGE`, frees everything, and checks that the server serves again.
fn run_out_of_descriptors(spare: usize) {
    let server = common::start();
    let mut keep_alive = connect(server.addr);
    let resp = ask(&mut keep_alive, "/healthz").expect("keep-alive answer before the shortage");
    assert_eq!(resp.0, 200, "{resp:?}");

    // The kicker opens a connection to ourselves after that request; its
    // descriptors must be gone before the shortage is measured out, or their
    // release would end the shortage early.
    wait_for_settled_descriptors();
    let mut shortage = Shortage::begin();
    shortage.free(spare);
    // A keep-alive client: once served, its descriptors stay in use, so the
    // shortage lasts.
    let mut pending = connect(server.addr);
    pending.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
    // The already open connection needs no new descriptor: it is answered
    // all through the shortage.
    let until = Instant::now() + OUTAGE;
    let mut asked = 0;
    while Instant::now() < until {
        let answer = ask(&mut keep_alive, "/stats");
        asked += 1;
        let Some((200, stats)) = answer else {
            drop(shortage);
            panic!(
                "the keep-alive connection got {answer:?} to request {asked} during the shortage \
                 (spare descriptors: {spare}); accept_errors afterwards: {:?}",
                server.stats()["accept_errors"]
            );
        };
        assert!(stats["waiters"].is_u64(), "{stats}");
    }
    drop(shortage);

    // The client that connected during the shortage is answered, or at worst
    // closed; it is not left hanging.
    let answer = read_answer(&mut pending);
    assert!(
        matches!(answer, Ok(Some((200, _))) | Ok(None)),
        "the client of the shortage got {answer:?}"
    );

    // A fresh connection is served again.
    let mut fresh = connect(server.addr);
    let answer = ask(&mut fresh, "/healthz");
    let accept_errors = ask(&mut keep_alive, "/stats").map(|(_, s)| s["accept_errors"].clone());
    assert!(
        matches!(answer, Some((200, _))),
        "a fresh connection after the shortage got {answer:?} within {HANG_GUARD:?} \
         (accept_errors: {accept_errors:?}, spare descriptors: {spare})"
    );
    // The failure is counted, and the old connection still works.
    let (status, stats) =
        ask(&mut keep_alive, "/stats").expect("keep-alive answer after the shortage");
    assert_eq!(status, 200, "{stats}");
    assert!(stats["accept_errors"].as_u64().unwrap() >= 1, "{stats}");
    let id = server.publish("after", "1");
    let resp = server.get(&format!(
        "/channels/after/events?timeout=5&last_event_id={}",
        id - 1
    ));
    assert_eq!(resp.ids(), [id]);
}

/// Waits until the process's descriptor count has stayed the same for 200 ms.
fn wait_for_settled_descriptors() {
    let count = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let mut last = (count(), Instant::now());
    common::wait_until("the descriptor count to settle", || {
        let now = count();
        if now != last.0 {
            last = (now, Instant::now());
        }
        last.1.elapsed() >= Duration::from_millis(200)
    });
}

/// Every descriptor of the process in use: the soft RLIMIT_NOFILE lowered to
/// a little above what is open, and the rest filled with /dev/null. Dropping
/// it closes them and restores the limit.
struct Shortage {
    files: Vec<File>,
    soft: u64,
    hard: u64,
}

impl Shortage {
    fn begin() -> Shortage {
        let (soft, hard) = rlimit::getrlimit(Resource::NOFILE).expect("getrlimit");
        let shortage = Shortage {
            files: Vec::new(),
            soft,
            hard,
        };
        let in_use = std::fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd")
            .count() as u64
            - 1;
        rlimit::setrlimit(Resource::NOFILE, in_use + 16, hard).expect("lower RLIMIT_NOFILE");
        let mut shortage = shortage;
        loop {
            match File::open("/dev/null") {
                Ok(file) => shortage.files.push(file),
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
                Err(e) => panic!("opening /dev/null: {e}"),
            }
            assert!(
                shortage.files.len() < 100_000,
                "RLIMIT_NOFILE did not take effect"
            );
        }
        shortage
    }

    /// Makes `n` descriptors available.
    fn free(&mut self, n: usize) {
        for _ in 0..n {
            self.files.pop().expect("a descriptor to free");
        }
    }
}

impl Drop for Shortage {
    fn drop(&mut self) {
        self.files.clear();
        rlimit::setrlimit(Resource::NOFILE, self.soft, self.hard).expect("restore RLIMIT_NOFILE");
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    stream
}

/// Sends `GET target` on a keep-alive connection and reads one answer:
/// status and JSON body, or `None` if none came within the hang guard.
fn ask(stream: &mut TcpStream, target: &str) -> Option<(u16, serde_json::Value)> {
    let request = format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    read_answer(stream).ok().flatten()
}

/// Reads one answer: `Ok(Some(..))`, `Ok(None)` if the server closed the
/// connection first, `Err` if nothing came within the hang guard.
fn read_answer(stream: &mut TcpStream) -> Result<Option<(u16, serde_json::Value)>, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("no status in {head:?}"))?;
            let length: usize = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let body = &buf[end + 4..end + 4 + length];
                let json = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
                return Ok(Some((status, json)));
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(format!("{e} after {} bytes", buf.len())),
        }
    }
}
