//! Bad input of every kind, and the tiny_http traps: the server never panics,
//! hangs or dies, answers clearly, and keeps serving everyone else.
//!
//! Most exchanges here use raw TCP on a fresh connection (`Connection: close`)
//! so that the exact bytes sent are under the test's control and no pooled
//! client connection can be cut by a short `idle_timeout`.
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use abide::Config;
use common::HANG_GUARD;

// ---------------------------------------------------------------------------
// 1. Bad input
// ---------------------------------------------------------------------------

/// Malformed request lines (garbage, no version, unknown versions, NUL bytes) get tiny_http's 400 and a closed connection.
#[test]
fn malformed_request_lines_get_400_and_the_server_lives() {
    let server = common::start();
    for line in [
        &b"garbage\r\n\r\n"[..],
        b"GET /healthz\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /healthz http/1.1\r\n\r\n",
        b"\0\0\0\0\r\n\r\n",
        b"GET\0/healthz\0HTTP/1.1\r\n\r\n",
        b"\r\n\r\n",
    ] {
        let started = Instant::now();
        let raw = common::raw(server.addr, line, HANG_GUARD);
        assert!(started.elapsed() < HANG_GUARD, "not closed: {raw:?}");
        let resp = parse_response(&raw);
        assert_eq!(
            resp.status,
            400,
            "for {:?}: {raw:?}",
            String::from_utf8_lossy(line)
        );
        assert_serving(server.addr);
    }
}

/// A NUL or other control byte inside an otherwise valid request target gets a JSON 400 naming it, and the connection closes; an escaped one is only a bad parameter.
#[test]
fn control_bytes_in_the_target_get_a_json_400() {
    let server = common::start();
    for target in [
        &b"/channels/a\0b/events?timeout=0"[..],
        b"/heal\0thz",
        b"/healthz\x1b[2J",
        b"/healthz\x7f",
    ] {
        let mut bytes = b"GET ".to_vec();
        bytes.extend_from_slice(target);
        bytes.extend_from_slice(b" HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n");
        let raw = common::raw(server.addr, &bytes, HANG_GUARD);
        parse_response(&raw).assert_error(400, "control byte");
        assert_eq!(raw.matches("HTTP/1.1 ").count(), 1, "closed after: {raw:?}");
    }
    let resp = send(
        server.addr,
        b"GET /channels/a/events?timeout=0&last_event_id=1%00 HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    resp.assert_error(400, "last_event_id");
    assert_serving(server.addr);
}

/// Pins tiny_http's own deadlock on an `HTTP/2.0`/`HTTP/3.0` request line (its 505 waits for a writer that never frees): that connection gets no answer, and nobody else notices.
#[test]
fn http_2_request_line_gets_no_answer_and_harms_nobody_else() {
    let server = common::start_with(Config {
        idle_timeout: Duration::from_secs(1),
        // No hold may outlive that idle timeout: polls answer at once.
        max_timeout: Duration::ZERO,
        default_timeout: Duration::ZERO,
        ..common::config()
    });
    let mut pending = Vec::new();
    for version in ["HTTP/2.0", "HTTP/3.0"] {
        let mut stream = connect(server.addr);
        let line = format!("GET /healthz {version}\r\nConnection: close\r\n\r\n");
        stream.write_all(line.as_bytes()).unwrap();
        // Never reaches abide: the request is not counted as served.
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        pending.push((version, stream));
    }
    // Others are served meanwhile, and after.
    assert_serving(server.addr);
    for (version, mut stream) in pending {
        let raw = common::read_until_close(&mut stream);
        assert!(
            raw.is_empty() || common::final_status(&raw) == Some(505),
            "{version}: unexpected answer {raw:?}"
        );
    }
    assert_serving(server.addr);
}

/// HTTP/1.0 and HTTP/0.9 request lines are served like HTTP/1.1.
#[test]
fn older_http_versions_are_served() {
    let server = common::start();
    for version in ["HTTP/1.0", "HTTP/0.9"] {
        let line = format!("GET /healthz {version}\r\n\r\n");
        let resp = send(server.addr, line.as_bytes());
        assert_eq!(resp.status, 200, "{version}: {resp:?}");
        assert_eq!(resp.json()["status"], "ok");
    }
    assert_serving(server.addr);
}

/// Non-ASCII bytes in the path or a header get tiny_http's bare 400 and a closed connection at once; nothing else is harmed.
#[test]
fn non_ascii_bytes_close_the_connection_promptly() {
    // A long idle timeout: a close within the hang guard is not the idle timeout.
    let server = common::start_with(Config {
        idle_timeout: Duration::from_secs(120),
        ..common::config()
    });
    for request in [
        &b"GET /caf\xc3\xa9 HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        b"GET /channels/\xff/events HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nX-Name: J\xc3\xbcrgen\r\nConnection: close\r\n\r\n",
        b"POST /channels/a/events HTTP/1.1\r\nContent-Type: caf\xe9\r\nContent-Length: 1\r\n\r\n1",
    ] {
        let started = Instant::now();
        let raw = common::raw(server.addr, request, HANG_GUARD);
        assert!(
            started.elapsed() < HANG_GUARD,
            "the connection was not closed: {:?}",
            String::from_utf8_lossy(request)
        );
        // tiny_http answers a line it cannot read as ASCII itself.
        assert_eq!(
            common::final_status(&raw),
            Some(400),
            "for {:?}: {raw:?}",
            String::from_utf8_lossy(request)
        );
        assert_serving(server.addr);
    }
}

/// A header line without a colon gets tiny_http's 400 and a closed connection.
#[test]
fn header_without_a_colon_gets_400() {
    let server = common::start();
    for request in [
        &b"GET /healthz HTTP/1.1\r\nNoColonHere\r\n\r\n"[..],
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Name: x\r\n\r\n",
        b"POST /channels/a/events HTTP/1.1\r\nContent-Length 1\r\n\r\n1",
    ] {
        let raw = common::raw(server.addr, request, HANG_GUARD);
        assert_eq!(parse_response(&raw).status, 400, "for {request:?}: {raw:?}");
        assert_serving(server.addr);
    }
}

/// Header lines of several kilobytes are read and the request is answered normally.
#[test]
fn header_lines_of_several_kilobytes_are_served() {
    let server = common::start();
    for size in [4 * 1024, 16 * 1024, 64 * 1024] {
        let request = format!(
            "GET /healthz HTTP/1.1\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(size)
        );
        let resp = send(server.addr, request.as_bytes());
        assert_eq!(resp.status, 200, "{size} byte header: {resp:?}");
    }
    // A long Last-Event-ID is refused by name, not truncated or crashed on.
    let request = format!(
        "GET /channels/a/events?timeout=0 HTTP/1.1\r\nLast-Event-ID: {}\r\nConnection: close\r\n\r\n",
        "9".repeat(8 * 1024)
    );
    send(server.addr, request.as_bytes()).assert_error(400, "Last-Event-ID");
    assert_serving(server.addr);
}

/// Every bad query parameter and channel name gets a JSON 400 naming what was wrong.
#[test]
fn bad_parameters_get_a_json_400_naming_the_parameter() {
    let server = common::start();
    let long_name = "x".repeat(65);
    let many: Vec<String> = (0..33).map(|i| format!("c{i}")).collect();
    let many = format!("/events?channels={}", many.join(","));
    let cases: Vec<(String, &str)> = vec![
        (
            "/channels/a/events?last_event_id=-1".into(),
            "last_event_id",
        ),
        (
            "/channels/a/events?last_event_id=abc".into(),
            "last_event_id",
        ),
        (
            "/channels/a/events?last_event_id=1e3".into(),
            "last_event_id",
        ),
        (
            "/channels/a/events?last_event_id=99999999999999999999999999".into(),
            "last_event_id",
        ),
        ("/channels/a/events?timeout=-5".into(), "timeout"),
        ("/channels/a/events?timeout=1.5".into(), "timeout"),
        ("/channels/a/events?timeout=".into(), "timeout"),
        (
            "/channels/a/events?timeout=99999999999999999999999".into(),
            "timeout",
        ),
        ("/channels/a/events?limit=0".into(), "limit"),
        ("/channels/a/events?limit=1001".into(), "limit"),
        ("/channels/a/events?limit=ten".into(), "limit"),
        ("/channels/a/events?limit=1&limit=2".into(), "limit"),
        ("/channels/a%20b/events".into(), "channel name"),
        ("/channels/a%2Fb/events".into(), "channel name"),
        ("/channels/%ZZ/events".into(), "channel name"),
        (format!("/channels/{long_name}/events"), "channel name"),
        ("/events".into(), "channels"),
        ("/events?channels=".into(), "channel name"),
        ("/events?channels=a,,b".into(), "channel name"),
        ("/events?channels=a,b%00".into(), "channel name"),
        (many, "at most 32"),
    ];
    for (target, word) in &cases {
        let resp = get(server.addr, target);
        resp.assert_error(400, word);
    }
    // The same checks hold for a publish's channel name.
    post(server.addr, "/channels/a%20b/events", b"1").assert_error(400, "channel name");
    let resp = post(server.addr, &format!("/channels/{long_name}/events"), b"1");
    resp.assert_error(400, "channel name");
    let resp = send(
        server.addr,
        b"GET /channels/a/events?timeout=0 HTTP/1.1\r\nLast-Event-ID: -3\r\nConnection: close\r\n\r\n",
    );
    resp.assert_error(400, "Last-Event-ID");
    assert_serving(server.addr);
}

/// Invalid JSON, invalid UTF-8, empty and blank bodies get a JSON 400 and store nothing.
#[test]
fn bad_bodies_get_a_json_400() {
    let server = common::start();
    for (body, word) in [
        (&b"{not json"[..], "JSON"),
        (b"{\"a\":1} {\"b\":2}", "JSON"),
        (b"[1,2,", "JSON"),
        (b"'single'", "JSON"),
        (b"NaN", "JSON"),
        (b"\xff\xfe\xfd", "UTF-8"),
        (b"\"caf\xe9\"", "UTF-8"),
        (b"", "empty"),
        (b"   \r\n\t ", "empty"),
    ] {
        let resp = post(server.addr, "/channels/bodies/events", body);
        resp.assert_error(400, word);
    }
    // A body sent with no Content-Length at all is an empty body.
    let resp = send(
        server.addr,
        b"POST /channels/bodies/events HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    resp.assert_error(400, "empty");
    // An unparseable Content-Length frames nothing: refused, never read as empty.
    let resp = send(
        server.addr,
        b"POST /channels/bodies/events HTTP/1.1\r\nContent-Length: ten\r\n\r\n{}",
    );
    resp.assert_error(400, "Content-Length");
    let stats = server.stats();
    assert_eq!(stats["events_published"], 0, "{stats}");
    assert_eq!(get(server.addr, "/channels/bodies").status, 404);
    assert_serving(server.addr);
}

/// JSON nested 200 deep gets a JSON 400 (no stack overflow); nested 100 deep is stored and delivered intact.
#[test]
fn deeply_nested_json_is_refused_not_crashed_on() {
    // In a child process: a stack overflow aborts the whole process.
    common::isolated(
        "deeply_nested_json_is_refused_not_crashed_on",
        deeply_nested_json,
    );
}

fn deeply_nested_json() {
    let server = common::start();
    for shape in [("[", "]"), ("{\"a\":", "}")] {
        let deep = format!("{}1{}", shape.0.repeat(200), shape.1.repeat(200));
        post(server.addr, "/channels/deep/events", deep.as_bytes()).assert_error(400, "JSON");
        // Deep enough to overflow any small stack if parsed recursively, yet
        // under --max-event-bytes (about 60 KB).
        let depth = 60_000 / (shape.0.len() + shape.1.len());
        let very_deep = format!("{}1{}", shape.0.repeat(depth), shape.1.repeat(depth));
        let resp = post(server.addr, "/channels/deep/events", very_deep.as_bytes());
        resp.assert_error(400, "JSON");
    }
    // 64 deep (abide::api::request::MAX_JSON_DEPTH) is fine, and comes back intact.
    let arrays = format!("{}\"x\"{}", "[".repeat(64), "]".repeat(64));
    let objects = format!("{}\"x\"{}", "{\"a\":".repeat(64), "}".repeat(64));
    for (fine, step) in [
        (arrays, serde_json::json!(0)),
        (objects, serde_json::json!("a")),
    ] {
        let resp = post(server.addr, "/channels/deep/events", fine.as_bytes());
        assert_eq!(resp.status, 201, "{resp:?}");
        let id = resp.json()["id"].as_u64().expect("id");
        let resp = get(
            server.addr,
            &format!("/channels/deep/events?timeout=0&last_event_id={}", id - 1),
        );
        let mut value = &resp.json()[0]["data"];
        for _ in 0..64 {
            value = match &step {
                serde_json::Value::String(key) => &value[key.as_str()],
                _ => &value[0],
            };
        }
        assert_eq!(value, "x", "{}", resp.body);
    }
    assert_serving(server.addr);
}

/// A body over --max-event-bytes gets a JSON 413 naming the limit; a body of exactly the limit is stored.
#[test]
fn bodies_over_the_limit_get_a_json_413() {
    let server = common::start_with(Config {
        max_event_bytes: 1024,
        ..common::config()
    });
    let exact = format!("\"{}\"", "a".repeat(1022));
    let resp = post(server.addr, "/channels/big/events", exact.as_bytes());
    assert_eq!(resp.status, 201, "{resp:?}");
    let over = format!("\"{}\"", "a".repeat(1023));
    post(server.addr, "/channels/big/events", over.as_bytes())
        .assert_error(413, "--max-event-bytes");
    // Large bodies actually sent: a megabyte and ten megabytes.
    for size in [1 << 20, 10 << 20] {
        let body = format!("\"{}\"", "b".repeat(size));
        post(server.addr, "/channels/big/events", body.as_bytes())
            .assert_error(413, "--max-event-bytes");
    }
    // Through a real HTTP client as well.
    let resp = server.post("/channels/big/events", &over);
    resp.assert_error(413, "--max-event-bytes");
    assert_eq!(server.stats()["events_published"], 1);
    assert_serving(server.addr);
}

/// A chunked body over --max-event-bytes gets a JSON 413; a chunked body under it is stored.
#[test]
fn chunked_bodies_over_the_limit_get_a_json_413() {
    let server = common::start_with(Config {
        max_event_bytes: 1024,
        ..common::config()
    });
    let small = chunked_post("/channels/chunks/events", &[b"{\"part\":", b"1}"]);
    let resp = send(server.addr, &small);
    assert_eq!(resp.status, 201, "{resp:?}");
    assert_eq!(resp.json()["data"]["part"], 1);

    let piece = vec![b'7'; 700];
    let big = chunked_post("/channels/chunks/events", &[&piece, &piece, &piece]);
    send(server.addr, &big).assert_error(413, "--max-event-bytes");

    // A chunked body that never ends is cut off at the limit, not read for ever.
    let mut stream = connect(server.addr);
    stream
        .write_all(b"POST /channels/chunks/events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let mut feeder = stream.try_clone().unwrap();
    let feeding = thread::spawn(move || {
        let chunk = format!("{:x}\r\n{}\r\n", 512, "8".repeat(512));
        let deadline = Instant::now() + HANG_GUARD;
        while Instant::now() < deadline && feeder.write_all(chunk.as_bytes()).is_ok() {}
    });
    let resp = read_response(&mut stream).expect("an answer to an endless chunked body");
    resp.assert_error(413, "--max-event-bytes");
    let _ = stream.shutdown(std::net::Shutdown::Both);
    common::join_within(feeding, "the chunk feeder");
    assert_eq!(server.stats()["events_published"], 1);
    assert_serving(server.addr);
}

/// Unknown paths get a JSON 404; unknown and wrong methods get a JSON 405 with an Allow header.
#[test]
fn unknown_routes_and_methods_get_json_404_and_405() {
    let server = common::start();
    for target in [
        "/nope",
        "/channels",
        "/channels/a/events/",
        "/channels/a/b/c",
        "//healthz",
        "*",
    ] {
        get(server.addr, target).assert_error(404, "no route");
    }
    for (method, target, allow) in [
        ("BREW", "/channels/a/events", "GET, POST, OPTIONS"),
        ("PUT", "/channels/a/events", "GET, POST, OPTIONS"),
        ("DELETE", "/channels/a/events", "GET, POST, OPTIONS"),
        ("PATCH", "/channels/a", "GET, HEAD, DELETE, OPTIONS"),
        ("POST", "/healthz", "GET, HEAD, OPTIONS"),
        ("TRACE", "/stats", "GET, HEAD, OPTIONS"),
        ("POST", "/events?channels=a", "GET, OPTIONS"),
    ] {
        let resp = request(server.addr, method, target, &[], None);
        resp.assert_error(405, "method not allowed");
        assert_eq!(resp.header("allow"), Some(allow), "{method} {target}");
    }
    // A nonsense method on an unknown path is an unknown path.
    request(server.addr, "BREW", "/coffee", &[], None).assert_error(404, "no route");
    // On `/` it is an unknown path or, if `/` is served, a wrong method.
    let resp = request(server.addr, "BREW", "/", &[], None);
    if resp.status == 405 {
        resp.assert_error(405, "method not allowed");
        assert!(resp.header("allow").is_some(), "{resp:?}");
    } else {
        resp.assert_error(404, "no route");
    }
    assert_serving(server.addr);
}

/// An `Expect` other than 100-continue gets tiny_http's 417; `Expect: 100-continue` publishes normally.
#[test]
fn expect_headers_are_handled() {
    let server = common::start();
    let raw = common::raw(
        server.addr,
        b"POST /channels/a/events HTTP/1.1\r\nExpect: tea\r\nContent-Length: 1\r\n\r\n1",
        HANG_GUARD,
    );
    assert_eq!(common::final_status(&raw), Some(417), "{raw:?}");

    let mut stream = connect(server.addr);
    stream
        .write_all(b"POST /channels/a/events HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\n")
        .unwrap();
    // Send the body once the server asks for it (or at once: it must cope either way).
    stream.write_all(b"42").unwrap();
    let raw = common::read_until_close(&mut stream);
    let resp = parse_response(&raw);
    assert_eq!(resp.status, 201, "{raw:?}");
    assert_eq!(resp.json()["data"], 42);
    assert_serving(server.addr);
}

// ---------------------------------------------------------------------------
// 2. The tiny_http traps
// ---------------------------------------------------------------------------

/// Trap: `Content-Length: 100000000000000` (and 2^64-1, on a GET, with `Expect`) gets a JSON 413 as the first and only answer, then the connection closes; the process survives.
#[test]
fn trap_absurd_content_length_is_refused_without_aborting() {
    let server = common::start();
    for head in [
        "POST /channels/a/events HTTP/1.1\r\nContent-Length: 100000000000000\r\n\r\n",
        "POST /channels/a/events HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n",
        "GET /channels/a/events?timeout=0 HTTP/1.1\r\nContent-Length: 100000000000000\r\n\r\n",
        "POST /channels/a/events HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 100000000000000\r\n\r\n",
    ] {
        let mut stream = connect(server.addr);
        stream.write_all(head.as_bytes()).unwrap();
        // The client sending body bytes anyway changes nothing.
        let _ = stream.write_all(&[b'x'; 4096]);
        let raw = common::read_until_close(&mut stream);
        assert!(raw.starts_with("HTTP/1.1 413 "), "{head:?} got {raw:?}");
        let resp = parse_response(&raw);
        resp.assert_error(413, "--max-event-bytes");
        assert_eq!(resp.header("connection"), Some("close"), "{raw:?}");
        assert_eq!(
            raw.matches("HTTP/1.").count(),
            1,
            "one answer only: {raw:?}"
        );
        assert_serving(server.addr);
    }
    server.wait_for_stat("connections_closed", |n| n >= 4);
}

/// Trap: a thousand absurd declared lengths are all refused, and once their clients leave, the threads and descriptors they took are given back (nothing is parked).
#[test]
fn trap_absurd_content_lengths_leave_no_thread_or_descriptor_behind() {
    // In a child process: its thread and descriptor counts are its own, and
    // an abort fails this test, not the suite.
    common::isolated(
        "trap_absurd_content_lengths_leave_no_thread_or_descriptor_behind",
        absurd_lengths_leave_nothing_behind,
    );
}

fn absurd_lengths_leave_nothing_behind() {
    let server = common::start();
    assert_serving(server.addr);
    let threads = || server.stats()["threads"].as_u64().expect("threads");
    let descriptors = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let (threads_before, descriptors_before) = (threads(), descriptors());
    for i in 0..1000 {
        let mut stream = connect(server.addr);
        stream
            .write_all(
                b"POST /channels/a/events HTTP/1.1\r\nContent-Length: 100000000000000\r\n\r\n",
            )
            .unwrap();
        let raw = common::read_until_close(&mut stream);
        assert_eq!(
            common::final_status(&raw),
            Some(413),
            "request {i}: {raw:?}"
        );
    }
    assert_serving(server.addr);
    // Idle tiny_http connection threads retire after 5 s, abide's pool
    // threads after `WORKER_IDLE_RETIRE`; give both time, then compare.
    common::wait_until("threads back near the baseline", || {
        threads() <= threads_before + 8
    });
    common::wait_until("descriptors back near the baseline", || {
        descriptors() <= descriptors_before + 8
    });
}

/// Trap: a declared body over the limit, never sent, gets a JSON 413 at once and a closed connection, whatever its size.
#[test]
fn trap_moderately_oversized_declared_body_gets_413_at_once() {
    // With a 120 s idle timeout, an answer that waited for the body would miss the hang guard.
    let server = common::start_with(Config {
        max_event_bytes: 1024,
        idle_timeout: Duration::from_secs(120),
        ..common::config()
    });
    for length in [1025u64, 5000, 1_000_000, 16 * 1024 * 1024, 1 << 40] {
        let mut stream = connect(server.addr);
        let head = format!("POST /channels/a/events HTTP/1.1\r\nContent-Length: {length}\r\n\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        let raw = common::read_until_close(&mut stream);
        parse_response(&raw).assert_error(413, "--max-event-bytes");
        assert_serving(server.addr);
    }
}

/// Trap: more clients than writer threads declaring a drainable oversized body and never sending it all get their 413, and stall no one else.
#[test]
fn trap_many_oversized_declared_bodies_do_not_stall_others() {
    // tiny_http drains each refused body (bounded only by the 120 s idle
    // timeout here), so whatever drains it must not be what answers others.
    let config = Config {
        max_event_bytes: 1024,
        idle_timeout: Duration::from_secs(120),
        ..common::config()
    };
    let clients = config.max_writers + 16;
    let server = common::start_with(config);
    let mut streams = Vec::new();
    for _ in 0..clients {
        let mut stream = connect(server.addr);
        stream
            .write_all(b"POST /channels/a/events HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n")
            .unwrap();
        streams.push(stream);
    }
    for (i, stream) in streams.iter_mut().enumerate() {
        let resp = read_response(stream).unwrap_or_else(|| {
            panic!("client {i} of {clients} got no answer within {HANG_GUARD:?}")
        });
        resp.assert_error(413, "--max-event-bytes");
    }
    let addr = server.addr;
    common::join_within(thread::spawn(move || assert_serving(addr)), "other clients");
}

/// Trap: a client that declares a small body (tiny_http buffers it) and stalls blocks no one, and is cut off after the idle timeout.
#[test]
fn trap_stalled_small_declared_body_does_not_block_others() {
    let server = common::start_with(Config {
        idle_timeout: Duration::from_secs(1),
        // No hold may outlive that idle timeout: polls answer at once.
        max_timeout: Duration::ZERO,
        default_timeout: Duration::ZERO,
        ..common::config()
    });
    let mut stalled = connect(server.addr);
    stalled
        .write_all(b"POST /channels/a/events HTTP/1.1\r\nContent-Length: 500\r\n\r\n{\"partial\":")
        .unwrap();
    stalled.set_read_timeout(Some(HANG_GUARD)).unwrap();
    // While it stalls, everyone else is served.
    assert_serving(server.addr);
    assert_serving(server.addr);
    let started = Instant::now();
    let raw = common::read_until_close(&mut stalled);
    assert!(
        started.elapsed() < HANG_GUARD,
        "the staller was never cut off"
    );
    // tiny_http reads a body of at most 1024 bytes itself, before abide sees
    // the request; at its read timeout it answers a bare 400 (it does not
    // take EAGAIN for a timeout) and closes; nothing is published.
    assert_eq!(
        common::final_status(&raw),
        Some(400),
        "a stalled small body is cut off: {raw:?}"
    );
    assert_eq!(
        server.stats()["events_published"],
        2,
        "only the two assert_serving publishes"
    );
    assert_serving(server.addr);
}

/// Trap: a client that declares a larger body (abide reads it) and stalls blocks no one, and gets a JSON 408 after the idle timeout.
#[test]
fn trap_stalled_large_declared_body_does_not_block_others() {
    // Holds (at most 2 s plus jitter) end before the 3 s idle timeout.
    let server = common::start_with(Config {
        idle_timeout: Duration::from_secs(3),
        max_timeout: Duration::from_secs(2),
        default_timeout: Duration::from_secs(2),
        ..common::config()
    });
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut stream = connect(server.addr);
        stream
            .write_all(
                b"POST /channels/a/events HTTP/1.1\r\nContent-Length: 5000\r\n\r\n[\"partial\",",
            )
            .unwrap();
        stalled.push(stream);
    }
    // While they stall, everyone else is served.
    let poll = {
        let addr = server.addr;
        thread::spawn(move || get(addr, "/channels/b/events?timeout=2"))
    };
    let id = publish(server.addr, "b", "\"hello\"");
    assert_eq!(
        common::join_within(poll, "poll during the stall").ids(),
        [id]
    );
    assert_serving(server.addr);
    for stream in &mut stalled {
        let resp = read_response(stream).expect("an answer to a stalled body");
        resp.assert_error(408, "--idle-timeout");
    }
    assert_eq!(server.stats()["events_published"], 2);
    assert_serving(server.addr);
}

/// Trap: a waiting poll whose client vanished frees its slot, and others still get events, including the reconnecting client by cursor.
#[test]
fn trap_respond_to_a_vanished_client_breaks_nothing() {
    let server = common::start();
    let cursor = server.publish("gone", "0");
    let other = server.spawn_get(&format!(
        "/channels/gone/events?timeout=20&last_event_id={cursor}"
    ));
    let mut vanishing = connect(server.addr);
    let poll =
        format!("GET /channels/gone/events?timeout=20&last_event_id={cursor} HTTP/1.1\r\n\r\n");
    vanishing.write_all(poll.as_bytes()).unwrap();
    server.wait_for_stat("waiters", |n| n == 2);
    drop(vanishing);

    let id = server.publish("gone", r#"{"n":1}"#);
    assert_eq!(common::join_within(other, "the other waiter").ids(), [id]);
    server.wait_for_stat("waiters", |n| n == 0);
    // The vanished client reconnects with its cursor and gets what it missed.
    let resp = server.get(&format!(
        "/channels/gone/events?timeout=0&last_event_id={cursor}"
    ));
    assert_eq!(resp.ids(), [id]);
    assert_eq!(resp.header("abide-missed"), None);

    // A vanished client whose poll times out frees its slot as well.
    let mut vanishing = connect(server.addr);
    let poll = format!("GET /channels/gone/events?timeout=1&last_event_id={id} HTTP/1.1\r\n\r\n");
    vanishing.write_all(poll.as_bytes()).unwrap();
    server.wait_for_stat("waiters", |n| n == 1);
    drop(vanishing);
    server.wait_for_stat("waiters", |n| n == 0);
    server.wait_for_stat("polls_timed_out", |n| n == 1);
    let next = server.publish("gone", "2");
    let resp = server.get(&format!(
        "/channels/gone/events?timeout=5&last_event_id={id}"
    ));
    assert_eq!(resp.ids(), [next]);
    assert_serving(server.addr);
}

/// Trap: clients that pipeline many big polls and never read their answers stall no one else.
#[test]
fn trap_client_that_never_reads_does_not_stall_others() {
    let server = common::start_with(Config {
        max_event_bytes: 65536,
        write_timeout: Duration::from_secs(1),
        ..common::config()
    });
    let big = format!("\"{}\"", "z".repeat(60_000));
    for _ in 0..20 {
        publish(server.addr, "big", &big);
    }
    // Declared after the server so that they close first, even on failure.
    let mut silent = Vec::new();
    let pipelined = "GET /channels/big/events?timeout=0&limit=1000 HTTP/1.1\r\n\r\n".repeat(100);
    for _ in 0..4 {
        let stream = connect(server.addr);
        let mut writer = stream.try_clone().unwrap();
        writer.set_write_timeout(Some(HANG_GUARD)).unwrap();
        writer.write_all(pipelined.as_bytes()).unwrap();
        silent.push(stream);
    }
    // Meanwhile, everyone else is answered, round after round, while the
    // silent clients still hold their answers.
    for round in 0..5 {
        let addr = server.addr;
        let other = thread::spawn(move || assert_serving(addr));
        common::join_within(other, &format!("round {round} of other clients"));
    }
    let addr = server.addr;
    let waiter = thread::spawn(move || get(addr, "/channels/small/events?timeout=20"));
    let id = {
        let addr = server.addr;
        common::join_within(
            thread::spawn(move || publish(addr, "small", "1")),
            "publish",
        )
    };
    assert_eq!(
        common::join_within(waiter, "a poll while silent clients hold answers").ids(),
        [id]
    );
    drop(silent);
    assert_serving(server.addr);
}

/// A listener that sees no new connection for many idle timeouts is not an accept error, and its keep-alive connections stay served.
#[test]
fn quiet_listener_keeps_serving_its_keep_alive_connections() {
    // SO_RCVTIMEO on the listening socket is what gives accepted connections
    // their idle timeout; it must not turn a quiet accept() into a failure.
    let server = common::start_with(Config {
        idle_timeout: Duration::from_secs(1),
        // No hold may outlive that idle timeout: polls answer at once.
        max_timeout: Duration::ZERO,
        default_timeout: Duration::ZERO,
        ..common::config()
    });
    let mut keep_alive = connect(server.addr);
    let mut asked = 0;
    let mut stats = serde_json::Value::Null;
    common::wait_until(
        "12 s of uptime, asked over one keep-alive connection",
        || {
            asked += 1;
            keep_alive
                .write_all(b"GET /stats HTTP/1.1\r\nHost: test\r\n\r\n")
                .expect("send on the keep-alive connection");
            let resp = read_response(&mut keep_alive).unwrap_or_else(|| {
                panic!("keep-alive request {asked} got no answer; stats: {stats}")
            });
            assert_eq!(
                resp.status, 200,
                "keep-alive request {asked}: {resp:?}; stats before: {stats}"
            );
            stats = resp.json();
            stats["uptime_seconds"].as_u64().expect("uptime") >= 12
        },
    );
    assert_eq!(
        stats["accept_errors"], 0,
        "a quiet listener counted as failing: {stats}"
    );
    assert_serving(server.addr);
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A raw answer, parsed into the shared helper's response type.
type RawResp = common::Resp;

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    stream.set_write_timeout(Some(HANG_GUARD)).unwrap();
    stream
}

/// Sends `bytes` on a fresh connection and returns the first final answer.
/// Like Python's `requests` and curl, it reads the answer even when the
/// server closed before taking everything (an early `413`).
fn send(addr: SocketAddr, bytes: &[u8]) -> RawResp {
    let mut stream = connect(addr);
    let _ = stream.write_all(bytes);
    read_response(&mut stream)
        .unwrap_or_else(|| panic!("no answer to {:?}", String::from_utf8_lossy(bytes)))
}

fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> RawResp {
    let mut bytes =
        format!("{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n").into_bytes();
    for (name, value) in headers {
        bytes.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if let Some(body) = body {
        bytes.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        bytes.extend_from_slice(body);
    } else {
        bytes.extend_from_slice(b"\r\n");
    }
    send(addr, &bytes)
}

fn get(addr: SocketAddr, target: &str) -> RawResp {
    request(addr, "GET", target, &[], None)
}

fn post(addr: SocketAddr, target: &str, body: &[u8]) -> RawResp {
    request(
        addr,
        "POST",
        target,
        &[("Content-Type", "application/json")],
        Some(body),
    )
}

fn publish(addr: SocketAddr, channel: &str, data: &str) -> u64 {
    let resp = post(
        addr,
        &format!("/channels/{channel}/events"),
        data.as_bytes(),
    );
    assert_eq!(resp.status, 201, "{resp:?}");
    resp.json()["id"].as_u64().expect("id")
}

/// The server answers /healthz, a publish, and a poll for that event.
fn assert_serving(addr: SocketAddr) {
    let resp = get(addr, "/healthz");
    assert_eq!(resp.status, 200, "{resp:?}");
    let id = publish(addr, "alive", "true");
    let resp = get(
        addr,
        &format!("/channels/alive/events?timeout=5&last_event_id={}", id - 1),
    );
    assert_eq!(resp.ids(), [id]);
}

fn chunked_post(target: &str, chunks: &[&[u8]]) -> Vec<u8> {
    let mut bytes = format!(
        "POST {target} HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in chunks {
        bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        bytes.extend_from_slice(chunk);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    bytes
}

/// Reads until one complete final (non-1xx) answer has arrived; `None` if
/// the connection closed or the hang guard passed first.
fn read_response(stream: &mut TcpStream) -> Option<RawResp> {
    let deadline = Instant::now() + HANG_GUARD;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(resp) = common::complete_response(&buf) {
            return Some(resp);
        }
        if Instant::now() > deadline {
            return None;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

fn parse_response(raw: &str) -> RawResp {
    common::parse_raw(raw)
}
