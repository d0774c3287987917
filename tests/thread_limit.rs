//! Running out of threads must not leave abide alive but not accepting.
//!
//! The real binary runs as user `nobody` (uid 65534) under a small
//! `RLIMIT_NPROC`, the per-user task limit (root is exempt from it, so the
//! test must start as root to drop to another user; `build.rs` sets
//! `abide_root`). Idle connections then take every thread the limit allows.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Abide, HANG_GUARD};

/// Tasks user `nobody` may run: abide's own threads when idle (about 6)
/// plus a few connection threads.
const TASK_LIMIT: u64 = 24;
/// Idle connections opened: more than the limit leaves threads for.
const IDLE_CONNECTIONS: usize = 40;

/// Regression: with no thread left to start (3,000 idle connections under the unit's TasksMax), tiny_http's accept thread panicked with its pool's lock held, and abide stayed alive without ever accepting again; now it accepts again once the idle connections are gone.
#[test]
#[cfg_attr(
    not(abide_root),
    ignore = "needs root, to run abide as nobody under RLIMIT_NPROC"
)]
#[cfg_attr(
    abide_cross,
    ignore = "qemu-user's own threads count against the task limit"
)]
fn running_out_of_threads_does_not_end_accepting() {
    let mut abide = Abide::serve_with(&["--quiet"], |command| {
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec only async-signal-safe calls:
        // setrlimit, setgroups, setgid, setuid.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: TASK_LIMIT as libc::rlim_t,
                    rlim_max: TASK_LIMIT as libc::rlim_t,
                };
                let ok = libc::setrlimit(libc::RLIMIT_NPROC, &limit) == 0
                    && libc::setgroups(0, std::ptr::null()) == 0
                    && libc::setgid(65534) == 0
                    && libc::setuid(65534) == 0;
                if ok {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    });
    assert_eq!(
        ask_healthz(abide.addr),
        Some(200),
        "served before the shortage"
    );

    // Each connection is answered once, then left open: its tiny_http
    // thread waits for its next request. (Connections that never send
    // anything could queue behind one another in tiny_http's pool instead
    // of each taking a thread.) Until a connection is no longer answered.
    let mut idle = Vec::new();
    for _ in 0..IDLE_CONNECTIONS {
        let Ok(mut stream) = TcpStream::connect(abide.addr) else {
            break;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let asked = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut buf = [0u8; 512];
        let answered = asked.is_ok() && matches!(stream.read(&mut buf), Ok(n) if n > 0);
        idle.push(stream);
        if !answered {
            break;
        }
    }
    // The shortage was reached: a thread could not be started.
    abide.next_line("a failed thread start", |line| {
        line.contains("failed to spawn thread") || line.contains("no thread could be started")
    });
    drop(idle);

    // Once the idle connections are gone, their threads end, and new
    // connections are served again, by the same process.
    let deadline = Instant::now() + HANG_GUARD;
    while ask_healthz(abide.addr) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "not accepting again within the hang guard"
        );
        assert!(abide.child.try_wait().unwrap().is_none(), "abide exited");
    }
    assert!(abide.child.try_wait().unwrap().is_none(), "abide lives on");
}

/// `GET /healthz` on a new connection: its status, or `None` if the
/// connection was refused, dropped or not answered within a second.
fn ask_healthz(addr: SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    common::final_status(&String::from_utf8_lossy(&text))
}
