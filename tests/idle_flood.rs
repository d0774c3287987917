//! 2,000 idle connections at once: the server keeps serving, closes them after
//! the idle timeout, and their threads go away. Its own test binary: it
//! measures the thread count of the whole process.
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use abide::Config;
use common::HANG_GUARD;

const IDLE_CONNECTIONS: usize = 2000;
/// Threads allowed above the baseline once the flood is over: pool threads a
/// slow machine has not reaped yet, and today also up to 7 extra dispatch
/// threads from listener restarts (see `quiet_listener_...` in
/// robustness.rs). Any per-connection leak would be in the thousands.
const SLACK_THREADS: u64 = 12;

/// 2,000 idle connections neither crash the server nor stop a publish and a poll; after the idle timeout they are closed and their threads are gone.
#[test]
fn idle_flood_is_survived_and_cleaned_up() {
    // Client and server descriptors both count against this process.
    rlimit::increase_nofile_limit(u64::MAX).expect("raise RLIMIT_NOFILE");
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    assert!(
        soft >= (IDLE_CONNECTIONS as u64) * 3 + 256,
        "RLIMIT_NOFILE {soft} is too low for this test"
    );
    // Holds (at most 2 s plus jitter) must end before the 3 s idle timeout.
    let server = common::start_with(Config {
        idle_timeout: Duration::from_secs(3),
        max_timeout: Duration::from_secs(2),
        default_timeout: Duration::from_secs(2),
        ..common::config()
    });
    // Warm up, so that the baseline holds the threads a served request leaves.
    assert_serving(server.addr);
    let baseline = process_threads();

    let mut idle: Vec<TcpStream> = (0..IDLE_CONNECTIONS)
        .map(|i| TcpStream::connect(server.addr).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    let during = process_threads();

    // Another client is served while the flood is in place.
    let addr = server.addr;
    let poll = thread::spawn(move || get(addr, "/channels/flood/events?timeout=2"));
    let id = publish(server.addr, "flood", "\"still here\"");
    let resp = common::join_within(poll, "a poll during the flood");
    assert_eq!(status(&resp), 200, "{resp}");
    assert!(resp.contains(&format!("\"id\":{id}")), "{resp}");

    // Every idle connection is closed by the server.
    for (i, stream) in idle.iter_mut().enumerate() {
        stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
        let mut buf = [0u8; 512];
        let closed = loop {
            match stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break false,
            }
        };
        assert!(closed, "idle connection {i} was not closed by the server");
    }
    drop(idle);

    // And their threads are gone (tiny_http retires idle pool threads after
    // 5 s, abide's pools after 10 s).
    common::wait_until("the thread count to fall back near its baseline", || {
        process_threads() <= baseline + SLACK_THREADS
    });
    eprintln!(
        "threads: {baseline} before the flood, {during} during, {} after",
        process_threads()
    );
    assert_serving(server.addr);
}

/// Threads of this process, from /proc/self/status.
fn process_threads() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Threads: line")
}

/// One request on a fresh connection; the whole raw answer.
fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    stream.write_all(request.as_bytes()).expect("send");
    common::read_until_close(&mut stream)
}

fn get(addr: SocketAddr, target: &str) -> String {
    exchange(
        addr,
        &format!("GET {target} HTTP/1.1\r\nConnection: close\r\n\r\n"),
    )
}

fn publish(addr: SocketAddr, channel: &str, data: &str) -> u64 {
    let resp = exchange(
        addr,
        &format!(
            "POST /channels/{channel}/events HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{data}",
            data.len()
        ),
    );
    assert_eq!(status(&resp), 201, "{resp}");
    let body = resp.split_once("\r\n\r\n").expect("a body").1;
    let event: serde_json::Value = serde_json::from_str(body).expect("JSON");
    event["id"].as_u64().expect("id")
}

fn status(raw: &str) -> u16 {
    common::final_status(raw).unwrap_or_else(|| panic!("no status in {raw:?}"))
}

/// /healthz, a publish, and a poll for that event are all answered.
fn assert_serving(addr: SocketAddr) {
    let resp = get(addr, "/healthz");
    assert_eq!(status(&resp), 200, "{resp}");
    let id = publish(addr, "alive", "1");
    let resp = get(
        addr,
        &format!("/channels/alive/events?timeout=5&last_event_id={}", id - 1),
    );
    assert_eq!(status(&resp), 200, "{resp}");
    assert!(resp.contains(&format!("\"id\":{id}")), "{resp}");
}
