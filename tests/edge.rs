//! The HTTP edge as hostile or merely broken clients try it: request
//! smuggling, header injection, forged log lines, oversized bodies as other
//! HTTP clients read them, long request targets. Each test sends raw bytes (or
//! runs a real client: Python's http.client and requests, curl) against the
//! real server on a loopback port.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use abide::Config;
use common::HANG_GUARD;

/// A long idle timeout: a connection closed within the hang guard was closed
/// by abide, not by the idle timeout.
fn start() -> common::TestServer {
    common::start_with(Config {
        idle_timeout: Duration::from_secs(120),
        max_event_bytes: 1024,
        ..common::config()
    })
}

/// Sends `bytes` on one connection, then reads until the server closes it
/// (panics if it is still open at the hang guard).
fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let _ = stream.write_all(bytes);
    let raw = common::read_until_close(&mut stream);
    assert!(
        started.elapsed() < HANG_GUARD,
        "the connection was not closed after {:?}: got {raw:?}",
        String::from_utf8_lossy(bytes)
    );
    raw
}

/// A channel that the smuggled requests below try to delete.
fn victim(server: &common::TestServer) {
    server.publish("victim", "\"keep me\"");
}

fn assert_victim_intact(server: &common::TestServer) {
    let resp = server.get("/channels/victim");
    assert_eq!(resp.status, 200, "the smuggled DELETE ran: {resp:?}");
    assert_eq!(server.stats()["events_published"], 1, "nothing else stored");
}

const SMUGGLED: &str = "DELETE /channels/victim HTTP/1.1\r\nHost: x\r\n\r\n";

/// Regression (CVE-2026-66752): `Content-Length` with `Transfer-Encoding: chunked, identity` is refused, its connection closed, and the request smuggled behind it never runs.
#[test]
fn cve_2026_66752_smuggled_request_after_both_framings_never_runs() {
    let server = start();
    victim(&server);
    let attack = format!(
        "POST /channels/a/events HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
         Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{SMUGGLED}"
    );
    let raw = exchange(server.addr, attack.as_bytes());
    assert_eq!(common::final_status(&raw), Some(400), "{raw:?}");
    assert_eq!(raw.matches("HTTP/1.1 ").count(), 1, "one answer: {raw:?}");
    assert_victim_intact(&server);
}

/// Two differing `Content-Length`s, a coding other than chunked, or a length with chunked: a JSON error naming the problem, the connection closed, the request behind it never run.
#[test]
fn ambiguous_framing_gets_a_json_error_and_nothing_behind_it_runs() {
    let server = start();
    victim(&server);
    for (head, status, word) in [
        (
            "Content-Length: 5\r\nContent-Length: 50\r\n",
            400,
            "different values",
        ),
        ("Content-Length: 5, 6\r\n", 400, "different values"),
        (
            "Transfer-Encoding: gzip, chunked\r\n",
            501,
            "transfer coding",
        ),
        ("Content-Length: five\r\n", 400, "Content-Length"),
    ] {
        let attack = format!(
            "POST /channels/a/events HTTP/1.1\r\nHost: x\r\n{head}\r\n5\r\nhello{SMUGGLED}"
        );
        let raw = exchange(server.addr, attack.as_bytes());
        let resp = common::parse_raw(&raw);
        resp.assert_error(status, word);
        assert_eq!(resp.header("connection"), Some("close"), "{raw:?}");
        assert_eq!(raw.matches("HTTP/1.1 ").count(), 1, "one answer: {raw:?}");
    }
    assert_victim_intact(&server);
    server.wait_for_stat("connections_closed", |n| n >= 4);
    server.wait_for_stat("requests_malformed", |n| n >= 4);
}

/// Regression: a request pipelined behind a refused framing has no effect, even when the refusal waits behind a held poll on the same connection (a DELETE used to run at dispatch).
#[test]
fn request_behind_a_refused_framing_has_no_effect_even_behind_a_held_poll() {
    let server = start();
    victim(&server);
    let attack = format!(
        "GET /channels/hold/events?timeout=1 HTTP/1.1\r\nHost: x\r\n\r\n\
         POST /channels/a/events HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
         Content-Length: 50\r\n\r\nhello{SMUGGLED}"
    );
    let raw = exchange(server.addr, attack.as_bytes());
    assert!(
        raw.starts_with("HTTP/1.1 204 "),
        "the held poll's answer first: {raw:?}"
    );
    assert!(raw.contains("HTTP/1.1 400 "), "then the refusal: {raw:?}");
    assert_eq!(
        raw.matches("HTTP/1.1 ").count(),
        2,
        "nothing after it: {raw:?}"
    );
    assert_victim_intact(&server);
}

/// Regression: a new connection from the client port of a connection abide just closed is served normally (it used to be refused for 10 s as if it were the closed one).
#[test]
fn a_new_connection_from_a_reused_port_is_served() {
    let server = start();
    for _ in 0..3 {
        let first = bound_client(None);
        let port = first.local_addr().unwrap().as_socket().unwrap().port();
        first.connect(&server.addr.into()).unwrap();
        let mut first: TcpStream = first.into();
        first.set_read_timeout(Some(HANG_GUARD)).unwrap();
        first
            .write_all(
                b"POST /channels/a/events HTTP/1.1\r\nHost: x\r\nContent-Length: 99999\r\n\r\n",
            )
            .unwrap();
        let raw = common::read_until_close(&mut first);
        assert_eq!(common::final_status(&raw), Some(413), "{raw:?}");
        drop(first);
        // The same client port again: another socket, another connection.
        let second = bound_client(Some(port));
        second.connect(&server.addr.into()).unwrap();
        let mut second: TcpStream = second.into();
        second.set_read_timeout(Some(HANG_GUARD)).unwrap();
        second
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let raw = common::read_until_close(&mut second);
        assert_eq!(
            common::final_status(&raw),
            Some(200),
            "port {port}: {raw:?}"
        );
    }
}

/// A client socket bound to `port` on loopback (any port if `None`), which may be reused at once.
fn bound_client(port: Option<u16>) -> socket2::Socket {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port.unwrap_or(0)));
    socket.bind(&addr.into()).unwrap();
    socket
}

/// Regression: a body on a request that reads none (a GET, a DELETE) is refused at once above 1 KiB and its connection closed, so a client trickling it holds nothing (tiny_http used to read it, byte by byte, after the answer); up to 1 KiB it is ignored.
#[test]
fn a_trickled_body_on_a_get_is_refused_at_once() {
    // Bodies up to 64 KiB may be published; the idle timeout is long.
    let server = common::start_with(Config {
        idle_timeout: Duration::from_secs(120),
        ..common::config()
    });
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\nabc")
        .unwrap();
    let started = Instant::now();
    let raw = common::read_until_close(&mut stream);
    assert!(started.elapsed() < HANG_GUARD, "{raw:?}");
    common::parse_raw(&raw).assert_error(400, "carry no body");
    let raw = exchange(
        server.addr,
        format!(
            "DELETE /channels/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n{}",
            "y".repeat(1024)
        )
        .as_bytes(),
    );
    assert_eq!(common::final_status(&raw), Some(204), "{raw:?}");
}

/// Regression: `Transfer-Encoding: gzip` is refused at once (not answered 408 after a wait), and the connection closed.
#[test]
fn unsupported_transfer_coding_is_refused_at_once() {
    let server = start();
    for coding in ["gzip", "gzip, chunked", "chunked, identity", "x-custom"] {
        let started = Instant::now();
        let raw = exchange(
            server.addr,
            format!(
                "POST /channels/a/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {coding}\r\n\r\n"
            )
            .as_bytes(),
        );
        let status = common::final_status(&raw);
        assert!(matches!(status, Some(400 | 501)), "{coding}: {raw:?}");
        // The idle timeout is 120 s: an answer within the guard is at once.
        assert!(started.elapsed() < HANG_GUARD, "{coding}");
    }
    assert_eq!(server.stats()["events_published"], 0);
}

/// Regression (CVE-2026-66753): a bare CR or LF inside a header value, or a NUL, is refused with a 400 and the connection closed; nothing after it runs.
#[test]
fn cve_2026_66753_bare_cr_or_lf_in_a_header_is_refused() {
    let server = start();
    victim(&server);
    for header in [
        "X-Note: a\rInjected: yes",
        "X-Note: a\nInjected: yes",
        "X-Note: a\0b",
        "Last-Event-ID: 1\r",
    ] {
        let attack = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n{SMUGGLED}");
        let raw = exchange(server.addr, attack.as_bytes());
        assert_eq!(common::final_status(&raw), Some(400), "{header:?}: {raw:?}");
        assert!(!raw.contains("200 OK"), "{header:?}: {raw:?}");
    }
    assert_victim_intact(&server);
}

/// Regression: a bare LF in the request target cannot forge an access log line, and control bytes that reach the log are escaped.
#[test]
fn request_targets_cannot_forge_access_log_lines() {
    let abide = common::Abide::serve(&[]);
    let forged =
        b"GET /healthz\n2026-01-01T00:00:00.000Z 10.0.0.1 GET /admin 200 0.1ms HTTP/1.1\r\n\r\n";
    let raw = exchange(abide.addr, forged);
    assert_eq!(common::final_status(&raw), Some(400), "{raw:?}");
    let escaped = b"GET /he\x1b[31mal\x7fthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let raw = exchange(abide.addr, escaped);
    common::parse_raw(&raw).assert_error(400, "control byte");
    // The access log: one line for the escaped request, none for the forgery.
    let line = abide.next_line("the access log line", |l| l.contains(" 400 "));
    assert!(line.contains("/he\\x1b[31mal\\x7fthz"), "{line:?}");
    assert!(!line.contains('\x1b'), "{line:?}");
    let quiet_mark = common::publish_raw(abide.addr, "mark");
    let lines = abide.lines_until("the mark's log line", |seen| {
        seen.last()
            .is_some_and(|l| l.contains("/channels/mark/events"))
    });
    assert!(quiet_mark > 0);
    assert!(
        lines.iter().chain([&line]).all(|l| !l.contains("/admin")),
        "a forged line: {lines:?}"
    );
}

/// Regression: HTTP/1.0 and 1.1 clients get the 413 and its JSON as the first status line (no interim 1xx), then `Connection: close`.
#[test]
fn oversized_declared_body_gets_413_as_the_first_answer() {
    let server = start();
    for version in ["1.0", "1.1"] {
        let raw = exchange(
            server.addr,
            format!(
                "POST /channels/a/events HTTP/{version}\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{}",
                "x".repeat(5000)
            )
            .as_bytes(),
        );
        assert!(
            raw.starts_with(&format!("HTTP/{version} 413 ")),
            "HTTP/{version}: {raw:?}"
        );
        let resp = common::parse_raw(&raw);
        resp.assert_error(413, "--max-event-bytes");
        assert_eq!(resp.header("connection"), Some("close"));
    }
}

/// Regression: Python's http.client (what `requests` is built on) reads the 413 and its JSON for a body over the limit, large or small, and for one sent with `Expect: 100-continue`.
#[test]
#[cfg_attr(
    not(abide_python),
    ignore = "needs python3 on PATH (.ci/run installs it)"
)]
fn python_http_client_reads_the_413() {
    let server = start();
    let script = r#"
import http.client, json, sys
host, port = sys.argv[1], int(sys.argv[2])
for size, headers in [(5000, {}), (10_000_000, {}), (5000, {"Expect": "100-continue"})]:
    c = http.client.HTTPConnection(host, port, timeout=30)
    try:
        c.request("POST", "/channels/a/events", body=b"x" * size, headers=headers)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered early; the answer is still there to read
    r = c.getresponse()
    body = json.loads(r.read())
    print(r.status, r.getheader("Connection"), body["error"])
    c.close()
"#;
    let out = run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(server.addr.ip().to_string())
        .arg(server.addr.port().to_string()));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for line in lines {
        assert!(
            line.starts_with("413 close event body exceeds --max-event-bytes"),
            "{line}"
        );
    }
    // With `requests` too, where it is installed (the README's client).
    let requests = r#"
import requests, sys
r = requests.post(sys.argv[1], data=b"x" * 2_000_000, timeout=30)
print(r.status_code, r.json()["error"])
"#;
    let has_requests = Command::new("python3")
        .args(["-c", "import requests"])
        .status()
        .is_ok_and(|s| s.success());
    if has_requests {
        let out = run(Command::new("python3")
            .arg("-c")
            .arg(requests)
            .arg(server.url("/channels/a/events")));
        assert!(out.starts_with("413 event body exceeds"), "{out}");
    }
    assert_eq!(server.stats()["events_published"], 0);
}

/// curl reads the 413 and its JSON for a body over the limit, with and without `Expect: 100-continue`.
#[test]
#[cfg_attr(not(abide_curl), ignore = "needs curl on PATH (.ci/run installs it)")]
fn curl_reads_the_413() {
    let server = start();
    let body = std::env::temp_dir().join(format!("abide-edge-{}.json", std::process::id()));
    std::fs::write(&body, "x".repeat(3_000_000)).unwrap();
    for expect in ["Expect:", "Expect: 100-continue"] {
        let out = run(Command::new("curl").args([
            "-sS",
            "--max-time",
            "30",
            "-H",
            expect,
            "-w",
            "\n%{http_code}",
            "--data-binary",
            &format!("@{}", body.display()),
            &server.url("/channels/a/events"),
        ]));
        assert!(out.ends_with("\n413"), "{expect}: {out}");
        assert!(out.contains("--max-event-bytes"), "{expect}: {out}");
    }
    let _ = std::fs::remove_file(&body);
}

/// Regression: a request target of 1 MiB (or a 1 MiB channel list) is refused 414 at once, and other clients are served meanwhile.
#[test]
fn long_request_targets_are_414_and_stall_no_one() {
    let server = start();
    let addr = server.addr;
    let long_query = format!("/channels/a/events?{}", "x=1&".repeat(256 * 1024));
    let long_list = format!("/events?channels={}", "ab,".repeat(350 * 1024));
    let attackers: Vec<_> = [long_query, long_list]
        .into_iter()
        .map(|target| {
            thread::spawn(move || {
                exchange(
                    addr,
                    format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
            })
        })
        .collect();
    // Others are served while the long targets arrive.
    for _ in 0..20 {
        assert_eq!(server.get("/healthz").status, 200);
    }
    for attacker in attackers {
        let raw = common::join_within(attacker, "a long target's answer");
        common::parse_raw(&raw).assert_error(414, "8192 bytes");
    }
    // A list of more than 32 channels within the limit is refused as soon as
    // the 33rd name is read.
    let names: Vec<String> = (0..1000).map(|i| format!("c{i}")).collect();
    let resp = server.get(&format!("/events?channels={}", names.join(",")));
    resp.assert_error(400, "at most 32");
}

/// Runs a command to completion and returns its stdout, failing with its stderr.
fn run(command: &mut Command) -> String {
    let out = command.output().expect("the command starts");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
