//! Telling systemd that abide is alive, and only while it really serves.
//!
//! Under systemd (`Type=notify`, `NOTIFY_SOCKET` set), `run` reports
//! `READY=1` once abide accepts and `STOPPING=1` when it stops. When the unit
//! also sets `WatchdogSec=`, the watchdog thread sends `GET /healthz` to
//! abide's own listener over a new connection every third of that period
//! and reports `WATCHDOG=1` only when the answer came back (`200`, or the
//! `503 degraded` of a node that lost Redis, which still serves): a server that can
//! no longer accept or answer (a wedged listener, a poisoned tiny_http
//! pool, no descriptors left) stops reporting, and systemd kills and
//! restarts it even though the process lives. Without those variables
//! nothing runs. One thread (64 KiB stack), asleep on the shutdown condvar
//! between checks; its requests are not written to the access log.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::shutdown::Shutdown;

/// The request target of the watchdog's check (the access log skips it).
pub const WATCHDOG_TARGET: &str = "/healthz?from=watchdog";
/// Stack of the watchdog thread.
const WATCHDOG_STACK_BYTES: usize = 64 * 1024;
/// Checks come this often relative to `WatchdogSec=`.
const CHECKS_PER_PERIOD: u32 = 3;

/// Reports `READY=1` (a no-op without `NOTIFY_SOCKET`).
pub fn notify_ready() {
    let _ = sd_notify::notify(&[NotifyState::Ready]);
}

/// Reports `STOPPING=1` (a no-op without `NOTIFY_SOCKET`).
pub fn notify_stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// Starts the watchdog thread if systemd asked for one (`WATCHDOG_USEC`),
/// checking `target` (abide's own listener) until `shutdown`.
pub fn start(target: SocketAddr, shutdown: Shutdown) -> std::io::Result<Option<JoinHandle<()>>> {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return Ok(None);
    };
    let interval = (period / CHECKS_PER_PERIOD).max(Duration::from_millis(10));
    let thread = thread::Builder::new()
        .name("abide-watchdog".into())
        .stack_size(WATCHDOG_STACK_BYTES)
        .spawn(move || {
            loop {
                if serves(target, interval) {
                    let _ = sd_notify::notify(&[NotifyState::Watchdog]);
                }
                if shutdown.wait_timeout(interval) {
                    return;
                }
            }
        })?;
    Ok(Some(thread))
}

/// Whether abide answers `GET /healthz` on a new connection within `limit`.
fn serves(target: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let Ok(mut stream) = TcpStream::connect_timeout(&target, limit) else {
        return false;
    };
    let request =
        format!("GET {WATCHDOG_TARGET} HTTP/1.1\r\nHost: watchdog\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return false;
        };
        if stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .is_err()
        {
            return false;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    alive(&answer)
}

/// Whether `answer` shows a working server: `200`, or the `503 degraded`
/// of a node that lost Redis (it still serves; restarting it would not
/// bring Redis back, and would drop its waiters).
fn alive(answer: &[u8]) -> bool {
    answer.starts_with(b"HTTP/1.1 200 ")
        || (answer.starts_with(b"HTTP/1.1 503 ")
            && answer.windows(DEGRADED.len()).any(|w| w == DEGRADED))
}

/// What `/healthz` says while Redis is out of reach.
const DEGRADED: &[u8] = br#""status":"degraded""#;

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A node that lost Redis (`503 degraded`) is alive; any other refusal is not.
    #[test]
    fn a_degraded_node_is_alive_but_other_refusals_are_not() {
        assert!(alive(b"HTTP/1.1 200 OK\r\n\r\n{\"status\":\"ok\"}"));
        assert!(alive(
            b"HTTP/1.1 503 Service Unavailable\r\n\r\n{\"status\":\"degraded\",\"store\":\"redis\"}"
        ));
        assert!(!alive(
            b"HTTP/1.1 503 Service Unavailable\r\n\r\n{\"error\":\"all wait slots are taken\"}"
        ));
        assert!(!alive(b"HTTP/1.1 500 Internal Server Error\r\n\r\n"));
    }

    /// A listener that never answers fails the check within its limit; nothing listening fails it at once.
    #[test]
    fn a_silent_or_absent_server_fails_the_check() {
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let started = Instant::now();
        assert!(!serves(
            silent.local_addr().unwrap(),
            Duration::from_millis(200)
        ));
        assert!(started.elapsed() < Duration::from_secs(10));
        let addr = silent.local_addr().unwrap();
        drop(silent);
        assert!(!serves(addr, Duration::from_millis(200)));
    }
}
