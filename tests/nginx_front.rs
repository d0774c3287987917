//! The shipped nginx front (`contrib/nginx/abide.conf`) in front of the real
//! abide binary: a real `nginx`, started on a free loopback port in a
//! temporary directory with that file (only its two addresses replaced).
//! Checks that the API works through it (long polls woken by a publish, `204`
//! on timeout, `Abide-Missed`, `503` with `Retry-After` at the cap,
//! `Last-Event-ID`), and that what tiny_http cannot bound is refused by nginx
//! and leaves abide's threads, descriptors and memory where they were.
//! Ignored, with the reason, when no nginx is installed (`.ci/run` installs
//! nginx-light and requires it).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{Abide, HANG_GUARD};

/// Slots of the abide behind the front, small so the cap is reached.
const MAX_WAITERS: usize = 6;

/// nginx started for one test, stopped (by PID) on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    /// nginx with `contrib/nginx/abide.conf` in front of `upstream`.
    fn start(upstream: SocketAddr) -> Nginx {
        let dir = std::env::temp_dir().join(format!(
            "abide-nginx-{}-{}",
            std::process::id(),
            upstream.port()
        ));
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let addr = free_port();
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/nginx/abide.conf"),
        )
        .unwrap();
        assert!(shipped.contains("server 127.0.0.1:8080;") && shipped.contains("listen 80;"));
        let front = shipped
            .replace("server 127.0.0.1:8080;", &format!("server {upstream};"))
            .replace("listen 80;", &format!("listen {addr};"));
        std::fs::write(dir.join("abide.conf"), front).unwrap();
        let temp_paths: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .iter()
            .map(|p| format!("    {p}_temp_path {};\n", dir.join(p).display()))
            .collect();
        let main = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {pid};\n\
             error_log {log} info;\nevents {{ worker_connections 1024; }}\n\
             http {{\n    access_log off;\n{temp_paths}    include {conf};\n}}\n",
            pid = dir.join("nginx.pid").display(),
            log = dir.join("logs/error.log").display(),
            conf = dir.join("abide.conf").display(),
        );
        std::fs::write(dir.join("nginx.conf"), main).unwrap();
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("logs/error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let mut nginx = Nginx { child, addr, dir };
        common::wait_until("nginx to listen", || {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited ({status}): {}", nginx.error_log());
            }
            TcpStream::connect(addr).is_ok()
        });
        nginx
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs/error.log")).unwrap_or_default()
    }

    /// Sends `request` on a fresh connection; the raw answer, read until the
    /// connection closes.
    fn raw(&self, request: &[u8]) -> String {
        common::raw(self.addr, request, HANG_GUARD)
    }

    fn request(&self, method: &str, target: &str, headers: &str, body: &str) -> common::Resp {
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: front\r\nConnection: close\r\n{headers}\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        common::parse_raw(&self.raw(request.as_bytes()))
    }

    fn get(&self, target: &str) -> common::Resp {
        self.request("GET", target, "", "")
    }

    fn publish(&self, channel: &str, data: &str) -> u64 {
        let resp = self.request(
            "POST",
            &format!("/channels/{channel}/events"),
            "Content-Type: application/json\r\n",
            data,
        );
        assert_eq!(resp.status, 201, "{resp:?}");
        resp.json()["id"].as_u64().expect("id")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nginx_binary() -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
        .expect("nginx (build.rs found one)")
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// abide behind the front: few slots, a small buffer, no access log.
fn abide() -> Abide {
    Abide::serve(&[
        "--max-waiters",
        &MAX_WAITERS.to_string(),
        "--buffer",
        "2",
        "--quiet",
    ])
}

/// abide's threads, descriptors and resident memory (KiB), from /proc.
fn footprint(abide: &Abide) -> (u64, u64, u64) {
    let pid = abide.child.id();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    (
        common::proc_status_field(pid, "Threads:"),
        fds,
        common::proc_status_field(pid, "VmRSS:"),
    )
}

/// The API through the front: publish, a long poll woken by a publish, 204 on timeout, Abide-Missed, Last-Event-ID, and 503 with Retry-After at abide's cap.
#[test]
#[cfg_attr(
    not(abide_nginx),
    ignore = "needs nginx (apt-get install nginx-light; .ci/run installs it)"
)]
fn the_api_works_through_the_nginx_front() {
    let abide = abide();
    let front = Nginx::start(abide.addr);

    // A long poll is woken by a publish, both through the front.
    let first = front.publish("kitchen", r#"{"celsius":21.5}"#);
    let poller = {
        let addr = front.addr;
        thread::spawn(move || {
            let target = format!("/channels/kitchen/events?timeout=20&last_event_id={first}");
            let request =
                format!("GET {target} HTTP/1.1\r\nHost: front\r\nConnection: close\r\n\r\n");
            common::parse_raw(&common::raw(addr, request.as_bytes(), HANG_GUARD))
        })
    };
    common::wait_until("the poll to wait in abide", || {
        let stats = common::parse_raw(&common::raw(
            abide.addr,
            b"GET /stats HTTP/1.1\r\nConnection: close\r\n\r\n",
            HANG_GUARD,
        ))
        .json();
        stats["waiters"] == 1
    });
    let second = front.publish("kitchen", r#"{"celsius":22}"#);
    let resp = common::join_within(poller, "the woken poll");
    assert_eq!(resp.ids(), [second]);

    // Nothing new before the timeout: 204. Last-Event-ID is passed through.
    let resp = front.get(&format!(
        "/channels/kitchen/events?timeout=1&last_event_id={second}"
    ));
    assert_eq!(resp.status, 204, "{resp:?}");
    let resp = front.request(
        "GET",
        "/channels/kitchen/events?timeout=0",
        &format!("Last-Event-ID: {first}\r\n"),
        "",
    );
    assert_eq!(resp.ids(), [second]);

    // Events dropped before the client read them: Abide-Missed.
    let old = front.publish("busy", "1");
    for i in 0..3 {
        front.publish("busy", &i.to_string());
    }
    let resp = front.get(&format!(
        "/channels/busy/events?timeout=0&last_event_id={old}"
    ));
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("abide-missed"), Some("true"), "{resp:?}");

    // abide's cap: the poll after MAX_WAITERS gets abide's 503 and Retry-After.
    let held: Vec<TcpStream> = (0..MAX_WAITERS)
        .map(|_| {
            let mut stream = TcpStream::connect(front.addr).unwrap();
            stream
                .write_all(b"GET /channels/quiet/events?timeout=30 HTTP/1.1\r\nHost: front\r\n\r\n")
                .unwrap();
            stream
        })
        .collect();
    common::wait_until("every slot taken", || {
        let resp = front.get("/stats");
        resp.json()["waiters"] == MAX_WAITERS as u64
    });
    let resp = front.get("/channels/quiet/events?timeout=30");
    resp.assert_error(503, "max-waiters");
    assert!(resp.header("retry-after").is_some(), "{resp:?}");
    drop(held);
}

/// A Server-Sent Events stream passes through the front unbuffered: an event
/// published while the stream is open reaches the client at once, not when
/// a buffer fills or the stream ends.
#[test]
#[cfg_attr(
    not(abide_nginx),
    ignore = "needs nginx (apt-get install nginx-light; .ci/run installs it)"
)]
fn a_stream_passes_through_the_nginx_front_unbuffered() {
    let abide = abide();
    let front = Nginx::start(abide.addr);
    let held = front.publish("live", "1");
    let mut stream = TcpStream::connect(front.addr).unwrap();
    stream
        .write_all(
            b"GET /channels/live/events HTTP/1.1\r\nHost: front\r\nAccept: text/event-stream\r\n\r\n",
        )
        .unwrap();
    let mut seen = Vec::new();
    let mut read_until = |needle: &str| -> String {
        let deadline = std::time::Instant::now() + HANG_GUARD;
        while !String::from_utf8_lossy(&seen).contains(needle) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(
                !left.is_zero(),
                "no {needle:?} through the front: {:?}",
                String::from_utf8_lossy(&seen)
            );
            stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 4096];
            match std::io::Read::read(&mut stream, &mut chunk) {
                Ok(0) | Err(_) => panic!("the stream ended: {:?}", String::from_utf8_lossy(&seen)),
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
        String::from_utf8_lossy(&seen).to_lowercase()
    };
    let text = read_until(&format!("id: {held}\n"));
    assert!(text.contains("content-type: text/event-stream"), "{text}");
    let next = front.publish("live", "2");
    read_until(&format!("id: {next}\n"));
}

/// What tiny_http cannot bound is refused by nginx (an HTTP/2.0 request line, huge or endless headers, a dribbled header, a huge body, too many requests from one address), and abide's threads, descriptors and memory come back to where they were.
#[test]
#[cfg_attr(
    not(abide_nginx),
    ignore = "needs nginx (apt-get install nginx-light; .ci/run installs it)"
)]
fn attacks_stop_at_the_nginx_front() {
    let abide = abide();
    let front = Nginx::start(abide.addr);
    front.publish("warm", "1");
    let before = footprint(&abide);

    // An HTTP/2.0 request line (it wedges a connection inside tiny_http).
    for line in ["GET / HTTP/2.0", "GET /healthz HTTP/3.0"] {
        let raw = front.raw(format!("{line}\r\nHost: front\r\n\r\n").as_bytes());
        let status = common::final_status(&raw);
        assert!(matches!(status, Some(400..=505)), "{line}: {raw:?}");
        assert!(raw.contains("nginx"), "answered by nginx: {raw:?}");
    }
    // A header line of 20 KB, and 2 MB of small headers.
    let long = format!(
        "GET /healthz HTTP/1.1\r\nHost: front\r\nX-Long: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    assert_eq!(common::final_status(&front.raw(long.as_bytes())), Some(400));
    let many: String = (0..100_000).map(|i| format!("X-{i}: y\r\n")).collect();
    let mut stream = TcpStream::connect(front.addr).unwrap();
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let _ =
        stream.write_all(format!("GET /healthz HTTP/1.1\r\nHost: front\r\n{many}\r\n").as_bytes());
    let raw = common::read_until_close(&mut stream);
    assert_eq!(
        common::final_status(&raw),
        Some(400),
        "{}",
        &raw[..raw.len().min(300)]
    );
    // A body over --max-event-bytes, declared and sent.
    let body = "x".repeat(200_000);
    let resp = front.request("POST", "/channels/a/events", "", &body);
    assert_eq!(resp.status, 413, "{resp:?}");

    // A header dribbled one byte at a time is cut by nginx
    // (client_header_timeout, 10 s), however long the client keeps going.
    let dribbler = {
        let addr = front.addr;
        thread::spawn(move || {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let started = Instant::now();
            let head = b"GET /healthz HTTP/1.1\r\nHost: front\r\nX-Slow: ";
            stream.write_all(head).unwrap();
            let mut buf = [0u8; 256];
            while started.elapsed() < HANG_GUARD {
                if stream.write_all(b"a").is_err() {
                    return started.elapsed();
                }
                match stream.read(&mut buf) {
                    Ok(0) => return started.elapsed(),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                        return started.elapsed();
                    }
                    _ => {}
                }
            }
            panic!("a dribbled header was never cut");
        })
    };

    // A burst from one address beyond limit_req's: 429 from nginx.
    let burst: Vec<u16> = (0..60).map(|_| front.get("/healthz").status).collect();
    assert!(burst.contains(&429), "{burst:?}");

    // More requests in flight from one address than limit_conn allows:
    // headers of bodies that never come, paced under limit_req's rate (so
    // that it is limit_conn that refuses). The ones past 64 get 503.
    let mut streams = Vec::new();
    for _ in 0..80 {
        let mut stream = TcpStream::connect(front.addr).unwrap();
        stream
            .write_all(
                b"POST /channels/a/events HTTP/1.1\r\nHost: front\r\nContent-Length: 100\r\n\r\n",
            )
            .unwrap();
        streams.push(stream);
        thread::sleep(Duration::from_millis(60)); // sync-ok: pacing traffic under 20 requests/s
    }
    let mut answers = Vec::new();
    for stream in &mut streams {
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 64];
        if let Ok(n @ 1..) = stream.read(&mut buf) {
            answers.push(common::final_status(&String::from_utf8_lossy(&buf[..n])));
        }
    }
    let refused = answers.iter().filter(|s| **s == Some(503)).count();
    assert!(
        refused >= 10,
        "{refused} of 80 requests in flight refused by limit_conn: {answers:?}"
    );
    drop(streams);

    let cut_after = common::join_within(dribbler, "the dribbled header");
    assert!(
        cut_after >= Duration::from_secs(5),
        "cut after {cut_after:?}"
    );

    // abide never saw any of it: it still serves, and holds what it held.
    assert_eq!(front.get("/healthz").status, 200);
    let stats = front.get("/stats").json();
    assert_eq!(stats["requests_malformed"], 0, "{stats}");
    let after = footprint(&abide);
    eprintln!(
        "abide (threads, descriptors, resident KiB): {before:?} before the attacks, {after:?} \
         after; the dribbled header was cut after {cut_after:?}; limit_conn refused \
         {refused} of 80 requests in flight"
    );
    // Under qemu-user (`make test-pi`) the process's resident memory is the
    // emulator's too, whose cache of translated code grows with every code
    // path the attacks reach for the first time (measured +4.3 MiB on
    // aarch64 with SQLite linked in): a looser bound there.
    let resident_slack_kib = if cfg!(abide_cross) { 16 * 1024 } else { 4096 };
    assert!(
        after.0 <= before.0 + 4
            && after.1 <= before.1 + 8
            && after.2 <= before.2 + resident_slack_kib,
        "abide's threads, descriptors, resident KiB: {before:?} before, {after:?} after"
    );
    let log = front.error_log();
    assert!(!log.contains("[emerg]"), "{log}");
}

/// Behind the front with the README's access settings: a token passes through, a client gets its own publish allowance by the address nginx saw, and an X-Forwarded-For the client writes itself buys it nothing.
#[test]
#[cfg_attr(
    not(abide_nginx),
    ignore = "needs nginx (apt-get install nginx-light; .ci/run installs it)"
)]
fn tokens_and_shares_work_through_the_nginx_front() {
    let dir = common::TempDir::new("nginx-auth");
    let auth = dir.path().join("auth");
    let token = "abide_front-token";
    std::fs::write(
        &auth,
        format!(
            "token front {} publish,subscribe *\n",
            abide::token_hash_text(token)
        ),
    )
    .unwrap();
    let abide = Abide::serve(&[
        "--auth-file",
        auth.to_str().unwrap(),
        "--trust-proxy",
        "127.0.0.1",
        "--publish-rate",
        "0.01",
        "--publish-burst",
        "1",
        "--quiet",
    ]);
    let front = Nginx::start(abide.addr);
    let publish = |headers: &str| {
        front.request(
            "POST",
            "/channels/a/events",
            &format!("Content-Type: application/json\r\n{headers}"),
            "1",
        )
    };
    let refused = publish("");
    refused.assert_error(401, "publish");
    assert!(
        refused
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")),
        "{refused:?}"
    );
    let bearer = format!("Authorization: Bearer {token}\r\n");
    assert_eq!(publish(&bearer).status, 201);
    // The token's allowance is spent; another address written by the
    // client is not another client.
    publish(&format!("{bearer}X-Forwarded-For: 192.0.2.77\r\n")).assert_error(429, "token front");
    let resp = front.get(&format!("/channels/a/events?timeout=0&token={token}"));
    assert_eq!(resp.ids().len(), 1, "{resp:?}");
}
