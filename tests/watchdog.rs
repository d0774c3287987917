//! systemd's notification protocol against the real binary: a test socket
//! stands in for systemd (`NOTIFY_SOCKET`), and `WATCHDOG_USEC` asks for the
//! watchdog. abide must say READY, keep saying WATCHDOG while it serves, stop
//! saying it while it cannot accept, and say STOPPING when it stops.

mod common;

use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::HANG_GUARD;

/// The watchdog period asked for: abide checks itself every third of it.
const WATCHDOG_USEC: &str = "300000";

/// A stand-in for systemd's notification socket.
struct Systemd {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Systemd {
    fn new(name: &str) -> Systemd {
        let path = std::env::temp_dir().join(format!("abide-notify-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        Systemd { socket, path }
    }

    /// The next message, or `None` if none comes within `wait`.
    fn next(&self, wait: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 512];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Waits for a message containing `what`, skipping others.
    fn expect(&self, what: &str) {
        let deadline = Instant::now() + HANG_GUARD;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            match self.next(Duration::from_millis(200)) {
                Some(m) if m.contains(what) => return,
                Some(m) => seen.push(m),
                None => {}
            }
        }
        panic!("no {what} from abide; got {seen:?}");
    }

    /// Messages that come within `window`.
    fn during(&self, window: Duration) -> Vec<String> {
        let until = Instant::now() + window;
        let mut seen = Vec::new();
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if let Some(m) = self.next(left.max(Duration::from_millis(1))) {
                seen.push(m);
            }
        }
        seen
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `abide serve` under our stand-in systemd, with at most `max_descriptors`.
fn serve(systemd: &Systemd, max_descriptors: libc::rlim_t) -> (Child, std::net::SocketAddr) {
    serve_with(systemd, max_descriptors, &[])
}

fn serve_with(
    systemd: &Systemd,
    max_descriptors: libc::rlim_t,
    flags: &[&str],
) -> (Child, std::net::SocketAddr) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_abide"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--quiet"])
        .args(flags)
        .env("NOTIFY_SOCKET", &systemd.path)
        .env("WATCHDOG_USEC", WATCHDOG_USEC)
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: max_descriptors,
                rlim_max: max_descriptors,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().expect("abide starts");
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    // The startup line (a node whose Redis is out of reach says so first).
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        let read = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(read > 0, "abide exited before its startup line");
    }
    let addr = line
        .split("listening on http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    // Keep reading stderr so that abide never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (child, addr)
}

/// READY once serving, WATCHDOG again and again while it serves, STOPPING on SIGTERM.
#[test]
fn ready_watchdog_and_stopping_are_reported() {
    let systemd = Systemd::new("plain");
    let (mut child, addr) = serve(&systemd, 4096);
    systemd.expect("READY=1");
    for _ in 0..3 {
        systemd.expect("WATCHDOG=1");
    }
    assert_eq!(
        common::final_status(&common::raw(
            addr,
            b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
            HANG_GUARD
        )),
        Some(200)
    );
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    systemd.expect("STOPPING=1");
    assert!(child.wait().unwrap().success());
}

/// Regression: a node whose Redis is out of reach answers `/healthz` `503
/// degraded` and still reports WATCHDOG (it serves; a restart would not
/// bring Redis back and would drop its waiters).
#[test]
fn watchdog_keeps_reporting_while_redis_is_unreachable() {
    let systemd = Systemd::new("degraded");
    // Nothing listens on port 1.
    let (mut child, addr) = serve_with(&systemd, 4096, &["--redis", "redis://127.0.0.1:1/0"]);
    systemd.expect("READY=1");
    let health = common::parse_raw(&common::raw(
        addr,
        b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
        HANG_GUARD,
    ));
    assert_eq!(health.status, 503, "{health:?}");
    assert_eq!(health.json()["status"], "degraded");
    for _ in 0..3 {
        systemd.expect("WATCHDOG=1");
    }
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    systemd.expect("STOPPING=1");
    assert!(child.wait().unwrap().success());
}

/// Regression: while abide cannot accept (no descriptor left), it stops reporting WATCHDOG, so systemd restarts a server that is alive but not serving; once descriptors are free it reports again.
#[test]
fn watchdog_goes_quiet_while_abide_cannot_accept() {
    let systemd = Systemd::new("wedged");
    let (mut child, addr) = serve(&systemd, 64);
    systemd.expect("READY=1");
    systemd.expect("WATCHDOG=1");
    // Idle connections until abide has no descriptor left (two each).
    let hogs: Vec<TcpStream> = (0..64)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    assert!(hogs.len() >= 20, "{} connections", hogs.len());
    // Messages already on their way may still come; then silence.
    let _ = systemd.during(Duration::from_millis(400));
    let quiet = systemd.during(Duration::from_millis(1500));
    assert!(
        !quiet.iter().any(|m| m.contains("WATCHDOG=1")),
        "still reporting while it cannot accept: {quiet:?}"
    );
    drop(hogs);
    systemd.expect("WATCHDOG=1");
    let _ = child.kill();
    let _ = child.wait();
}
