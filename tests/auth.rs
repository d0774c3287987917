//! Access control and fair shares, as clients meet them: an auth file of
//! several rules, every route with and without the right token, reloading
//! on SIGHUP, the token kept out of the log, and the per-client shares
//! (`--max-waiters-per-client`, `--publish-rate`) with `--trust-proxy`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use common::{Abide, HANG_GUARD, Http, Resp, TempDir, config, start_with, wait_until};

const PUBLISHER: &str = "abide_publisher-token";
const READER: &str = "abide_reader-token";
const ADMIN: &str = "abide_admin-token";
const ALICE: &str = "abide_alice-token";

/// An auth file of several rules, in `dir`.
fn auth_file(dir: &TempDir) -> PathBuf {
    let hash = abide::token_hash_text;
    let text = format!(
        "# who             hash   rights              channels\n\
         token publisher   {}     publish             sensors.*\n\
         token reader      {}     subscribe           *\n\
         token admin       {}     admin               *\n\
         token alice       {}     publish,subscribe   chat\n\
         token alice       {}     subscribe           news\n\
         anonymous                subscribe           public.*\n",
        hash(PUBLISHER),
        hash(READER),
        hash(ADMIN),
        hash(ALICE),
        hash(ALICE),
    );
    let path = dir.path().join("auth");
    std::fs::write(&path, text).expect("write the auth file");
    path
}

/// The test config with the rules of `auth_file` in force.
fn with_rules(dir: &TempDir) -> abide::Config {
    abide::Config {
        auth_file: Some(auth_file(dir)),
        ..config()
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `method path` presenting `token` in the Authorization header.
fn call(http: &Http, token: Option<&str>, method: &str, path: &str) -> Resp {
    let header = token.map(bearer);
    let headers: Vec<(&str, &str)> = header
        .as_deref()
        .map(|h| vec![("Authorization", h)])
        .unwrap_or_default();
    let body = (method == "POST").then_some("1");
    http.request(method, path, &headers, body)
}

/// Every route admits exactly the rights its rules give, answering 401 (with WWW-Authenticate and a JSON error) without a token or with an unknown one, and 403 naming the channel and the right otherwise.
#[test]
fn every_route_admits_by_right_and_refuses_the_rest() {
    let dir = TempDir::new("auth-routes");
    let server = start_with(with_rules(&dir));
    let unknown = Some("abide_not-a-known-token");
    let (p, r, a, al) = (Some(PUBLISHER), Some(READER), Some(ADMIN), Some(ALICE));
    let poll = "/channels/sensors.t/events?timeout=0";
    let cases: &[(Option<&str>, &str, &str, u16, &str)] = &[
        // Open to anyone.
        (None, "GET", "/healthz", 200, ""),
        (unknown, "GET", "/healthz", 200, ""),
        (None, "GET", "/", 200, ""),
        (None, "OPTIONS", "/events", 204, ""),
        // Publishing.
        (p, "POST", "/channels/sensors.t/events", 201, ""),
        (al, "POST", "/channels/chat/events", 201, ""),
        (None, "POST", "/channels/sensors.t/events", 401, "publish"),
        (
            unknown,
            "POST",
            "/channels/sensors.t/events",
            401,
            "not known",
        ),
        (
            p,
            "POST",
            "/channels/chat/events",
            403,
            "publish right on channel chat",
        ),
        (
            r,
            "POST",
            "/channels/sensors.t/events",
            403,
            "publish right",
        ),
        (
            al,
            "POST",
            "/channels/news/events",
            403,
            "publish right on channel news",
        ),
        (
            a,
            "POST",
            "/channels/sensors.t/events",
            403,
            "publish right",
        ),
        // Reading: polls, multi-channel polls, channel figures.
        (r, "GET", poll, 200, ""),
        (al, "GET", "/events?channels=chat,news&timeout=0", 200, ""),
        (None, "GET", "/channels/public.x/events?timeout=0", 204, ""),
        (
            None,
            "GET",
            poll,
            401,
            "subscribe right on channel sensors.t",
        ),
        (unknown, "GET", poll, 401, "not known"),
        (p, "GET", poll, 403, "subscribe right on channel sensors.t"),
        (
            al,
            "GET",
            "/events?channels=chat,sensors.t&timeout=0",
            403,
            "sensors.t",
        ),
        (r, "GET", "/channels/sensors.t", 200, ""),
        (None, "GET", "/channels/sensors.t", 401, "subscribe"),
        (p, "HEAD", "/channels/sensors.t", 403, ""),
        // Deleting.
        (
            al,
            "DELETE",
            "/channels/chat",
            403,
            "admin right on channel chat",
        ),
        (r, "DELETE", "/channels/chat", 403, "admin right"),
        (None, "DELETE", "/channels/public.x", 401, "admin"),
        (a, "DELETE", "/channels/chat", 204, ""),
        // Figures.
        (a, "GET", "/stats", 200, ""),
        (a, "GET", "/metrics", 200, ""),
        (None, "GET", "/stats", 401, "/stats"),
        (None, "GET", "/metrics", 401, "/metrics"),
        (r, "GET", "/stats", 403, "admin right on *"),
        (al, "GET", "/metrics", 403, "--public-metrics"),
    ];
    for &(token, method, path, status, word) in cases {
        let resp = call(&server, token, method, path);
        let what = format!("{token:?} {method} {path}");
        assert_eq!(resp.status, status, "{what}: {resp:?}");
        match status {
            401 => {
                let challenge = resp.header("www-authenticate").unwrap_or_default();
                assert!(challenge.starts_with("Bearer realm="), "{what}: {resp:?}");
                assert_eq!(
                    challenge.contains("invalid_token"),
                    token.is_some(),
                    "{what}: {challenge}"
                );
                resp.assert_error(401, word);
            }
            403 if method != "HEAD" => resp.assert_error(403, word),
            _ => {}
        }
    }
    // Refusals are counted by kind.
    let stats = call(&server, a, "GET", "/stats").json();
    let refused = &stats["requests_refused"];
    let count = |status| cases.iter().filter(|c| c.3 == status).count();
    assert_eq!(refused["unauthenticated"], count(401), "{stats}");
    assert_eq!(refused["forbidden"], count(403), "{stats}");
}

/// A poll over several channels needs subscribe on every one: a token that may read `chat` cannot read `secret` through it, and learns nothing of it.
#[test]
fn a_multi_channel_poll_cannot_read_a_channel_without_the_right() {
    let dir = TempDir::new("auth-multi");
    let server = start_with(with_rules(&dir));
    let admin_publish = |channel: &str| {
        // The reader may not publish; the publisher only on sensors.*.
        let resp = call(
            &server,
            Some(PUBLISHER),
            "POST",
            &format!("/channels/{channel}/events"),
        );
        assert_eq!(resp.status, 201, "{resp:?}");
    };
    admin_publish("sensors.secret");
    let resp = call(
        &server,
        Some(ALICE),
        "GET",
        "/events?channels=chat,sensors.secret&timeout=0",
    );
    resp.assert_error(403, "subscribe right on channel sensors.secret");
    assert!(!resp.body.contains("\"data\""), "{resp:?}");
    // The same refusal whether the channel exists or not.
    let missing = call(
        &server,
        Some(ALICE),
        "GET",
        "/events?channels=chat,sensors.nothing&timeout=0",
    );
    assert_eq!(
        missing.body.replace("sensors.nothing", "X"),
        resp.body.replace("sensors.secret", "X")
    );
    let info = call(&server, Some(ALICE), "GET", "/channels/sensors.secret");
    let no_info = call(&server, Some(ALICE), "GET", "/channels/sensors.none");
    assert_eq!((info.status, no_info.status), (403, 403));
}

/// `?token=` works where headers cannot be set, and the access log shows it as REDACTED, never the token.
#[test]
fn a_token_in_the_query_works_and_never_reaches_the_log() {
    let dir = TempDir::new("auth-log");
    let file = auth_file(&dir);
    let abide = Abide::serve(&["--auth-file", file.to_str().unwrap()]);
    let http = abide.http();
    let resp = http.post(&format!("/channels/chat/events?token={ALICE}"), "1");
    assert_eq!(resp.status, 201, "{resp:?}");
    let resp = http.get(&format!("/channels/chat/events?timeout=0&token={ALICE}"));
    assert_eq!(resp.status, 200, "{resp:?}");
    // Percent-encoded, the parameter's name is still a token.
    let resp = http.get(&format!("/channels/chat/events?timeout=0&%74oken={ALICE}"));
    assert_eq!(resp.status, 200, "{resp:?}");
    let lines = abide.lines_until("three access log lines", |seen| {
        seen.iter()
            .filter(|l| l.contains(" 200 ") || l.contains(" 201 "))
            .count()
            >= 3
    });
    let log = lines.concat();
    assert!(!log.contains(ALICE), "the token is in the log: {log}");
    assert!(!log.contains("alice-token"), "{log}");
    assert_eq!(log.matches("oken=REDACTED").count(), 3, "{log}");
}

/// `abide token new` prints a URL-safe token of at least 128 bits and a rule that holds only its hash, and that rule admits the token.
#[test]
fn token_new_prints_a_token_and_a_rule_with_only_its_hash() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_abide"))
        .args([
            "token",
            "new",
            "sensor-7",
            "--rights",
            "publish",
            "--channels",
            "sensors.*",
        ])
        .output()
        .expect("abide token new runs");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let (token, rule) = (lines[0], lines[1]);
    assert!(token.len() >= 22, "{token}");
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "not URL-safe: {token}"
    );
    assert!(!rule.contains(token), "the rule holds the token: {rule}");
    assert!(rule.contains(&abide::token_hash_text(token)), "{rule}");
    assert!(rule.starts_with("token sensor-7 sha256:"), "{rule}");
    let dir = TempDir::new("auth-new");
    let path = dir.path().join("auth");
    std::fs::write(&path, format!("{rule}\n")).unwrap();
    let on_disk = std::fs::read_to_string(&path).unwrap();
    assert!(!on_disk.contains(token));
    let server = start_with(abide::Config {
        auth_file: Some(path),
        ..config()
    });
    let resp = call(&server, Some(token), "POST", "/channels/sensors.a/events");
    assert_eq!(resp.status, 201, "{resp:?}");
    let resp = call(
        &server,
        Some(token),
        "GET",
        "/channels/sensors.a/events?timeout=0",
    );
    resp.assert_error(403, "subscribe");
    // Two tokens are never the same.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_abide"))
        .args(["token", "new"])
        .output()
        .unwrap();
    let again = String::from_utf8(again.stdout).unwrap();
    assert_ne!(again.lines().next(), Some(token));
}

/// SIGHUP puts a corrected file in force (the new token in, the old one out), a file with an error keeps the rules in force and logs its line and reason, and a poll held across the reload keeps its wait.
#[test]
fn sighup_reloads_a_good_file_and_keeps_the_rules_on_a_bad_one() {
    let dir = TempDir::new("auth-reload");
    let path = dir.path().join("auth");
    let rule = |token: &str| {
        format!(
            "token t {} publish,subscribe *\n",
            abide::token_hash_text(token)
        )
    };
    std::fs::write(&path, rule("abide_first")).unwrap();
    let abide = Abide::serve(&["--auth-file", path.to_str().unwrap(), "--quiet"]);
    let http = abide.http();
    let poll = |token: &str| call(&http, Some(token), "GET", "/channels/b/events?timeout=0").status;
    assert_eq!((poll("abide_first"), poll("abide_second")), (204, 401));

    // A poll held by the first token across the reload.
    let held = {
        let http = http.clone();
        std::thread::spawn(move || {
            call(
                &http,
                Some("abide_first"),
                "GET",
                "/channels/a/events?timeout=60",
            )
        })
    };
    wait_until("the poll to be held", || {
        call(&http, Some("abide_first"), "GET", "/channels/a").status == 200
    });

    std::fs::write(&path, rule("abide_second")).unwrap();
    abide.signal(libc::SIGHUP);
    abide.next_line("the reload line", |l| l.contains("reloaded: 1 token(s)"));
    assert_eq!((poll("abide_first"), poll("abide_second")), (401, 204));

    // The held poll was admitted under the old rules and still gets its event.
    let resp = call(&http, Some("abide_second"), "POST", "/channels/a/events");
    assert_eq!(resp.status, 201, "{resp:?}");
    let resp = common::join_within(held, "the held poll");
    assert_eq!(resp.status, 200, "{resp:?}");

    std::fs::write(
        &path,
        format!("{}token x sha256:12 publish *\n", rule("abide_third")),
    )
    .unwrap();
    abide.signal(libc::SIGHUP);
    let line = abide.next_line("the refused reload", |l| l.contains("kept"));
    assert!(
        line.contains("line 2") && line.contains("64 hex digits"),
        "{line}"
    );
    assert_eq!((poll("abide_second"), poll("abide_third")), (204, 401));
}

/// After a reload that revokes a token, its open stream ends (the browser reconnects) and the reconnection is refused 401.
#[test]
fn a_reload_ends_open_streams_so_revoked_tokens_stop_reading() {
    let dir = TempDir::new("auth-stream");
    let path = dir.path().join("auth");
    let rule = |token: &str| format!("token t {} subscribe *\n", abide::token_hash_text(token));
    std::fs::write(&path, rule("abide_first")).unwrap();
    let abide = Abide::serve(&["--auth-file", path.to_str().unwrap(), "--quiet"]);
    let mut stream = TcpStream::connect(abide.addr).unwrap();
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    write!(
        stream,
        "GET /channels/a/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\
         Authorization: Bearer abide_first\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    std::fs::write(&path, rule("abide_second")).unwrap();
    abide.signal(libc::SIGHUP);
    // The stream ends: everything up to end of file is read (no hang).
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).expect("the stream ends");
    assert!(rest.contains("retry:"), "{rest}");
    let resp = abide.http().get_with_header(
        "/channels/a/events?timeout=0",
        "Authorization",
        "Bearer abide_first",
    );
    resp.assert_error(401, "not known");
}

/// A client holds at most --max-waiters-per-client slots (429 with Retry-After and a JSON error, counted); another token, or another address, still gets one.
#[test]
fn one_client_cannot_take_more_than_its_share_of_wait_slots() {
    let dir = TempDir::new("auth-share");
    let server = start_with(abide::Config {
        max_waiters_per_client: Some(2),
        max_timeout: Duration::from_secs(60),
        ..with_rules(&dir)
    });
    let hold = |token: &'static str| {
        let http = (*server).clone();
        std::thread::spawn(move || {
            call(
                &http,
                Some(token),
                "GET",
                "/channels/chat/events?timeout=60",
            )
        })
    };
    let held = [hold(READER), hold(READER)];
    server_wait_for_waiters(&server, 2);
    let resp = call(
        &server,
        Some(READER),
        "GET",
        "/channels/chat/events?timeout=60",
    );
    resp.assert_error(429, "--max-waiters-per-client");
    let retry: u32 = resp
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry >= 1, "{retry}");
    // Another token is another client.
    let other = hold(ALICE);
    server_wait_for_waiters(&server, 3);
    // Anonymous clients count by address: a third anonymous poll from here is refused.
    let anonymous = |_: u8| {
        let http = (*server).clone();
        std::thread::spawn(move || http.get("/channels/public.a/events?timeout=60"))
    };
    let anon = [anonymous(0), anonymous(1)];
    server_wait_for_waiters(&server, 5);
    server
        .get("/channels/public.a/events?timeout=60")
        .assert_error(429, "127.0.0.1");
    let stats = call(&server, Some(ADMIN), "GET", "/stats").json();
    assert_eq!(stats["requests_refused"]["client_waiters"], 2, "{stats}");
    // The events answer every held poll; then the share is free again.
    assert_eq!(
        call(&server, Some(ALICE), "POST", "/channels/chat/events").status,
        201
    );
    for poll in held.into_iter().chain([other]) {
        assert_eq!(common::join_within(poll, "a held poll").status, 200);
    }
    let resp = call(
        &server,
        Some(READER),
        "GET",
        "/channels/chat/events?timeout=0",
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    drop(server);
    for poll in anon {
        let resp = common::join_within(poll, "an anonymous poll");
        assert_eq!(resp.status, 204, "{resp:?}");
    }
}

fn server_wait_for_waiters(server: &common::TestServer, n: u64) {
    wait_until(&format!("{n} waiters"), || {
        call(server, Some(ADMIN), "GET", "/stats").json()["waiters"] == n
    });
}

/// --publish-rate gives each client a burst, then answers 429 with Retry-After; a refused event is never stored, and another client keeps its own allowance.
#[test]
fn publishing_faster_than_the_rate_is_refused_and_nothing_is_stored() {
    let dir = TempDir::new("auth-rate");
    let server = start_with(abide::Config {
        // One event per 100 s: the test never waits a refill out.
        publish_rate_per_second: Some(0.01),
        publish_burst: Some(3),
        ..with_rules(&dir)
    });
    for _ in 0..3 {
        let resp = call(&server, Some(ALICE), "POST", "/channels/chat/events");
        assert_eq!(resp.status, 201, "{resp:?}");
    }
    let resp = call(&server, Some(ALICE), "POST", "/channels/chat/events");
    resp.assert_error(429, "--publish-rate");
    let retry: u32 = resp
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=100).contains(&retry), "{retry}");
    let held = call(
        &server,
        Some(READER),
        "GET",
        "/channels/chat/events?timeout=0",
    );
    assert_eq!(held.ids().len(), 3, "the refused event is not stored");
    let resp = call(
        &server,
        Some(PUBLISHER),
        "POST",
        "/channels/sensors.x/events",
    );
    assert_eq!(resp.status, 201, "another client: {resp:?}");
    let stats = call(&server, Some(ADMIN), "GET", "/stats").json();
    assert_eq!(stats["requests_refused"]["publish_rate"], 1, "{stats}");
}

/// X-Forwarded-For names the client only when the connection comes from a --trust-proxy address; from anyone else it is ignored.
#[test]
fn forwarded_for_is_honoured_only_from_a_trusted_proxy() {
    let publish_as = |http: &Http, forwarded: &str| {
        http.request(
            "POST",
            "/channels/a/events",
            &[("X-Forwarded-For", forwarded)],
            Some("1"),
        )
        .status
    };
    let limited = |trust_proxy: &str| abide::Config {
        publish_rate_per_second: Some(0.01),
        publish_burst: Some(1),
        trust_proxy: vec![trust_proxy.parse().unwrap()],
        ..config()
    };
    // From the trusted proxy: two forwarded clients, one allowance each.
    let trusted = start_with(limited("127.0.0.1/32"));
    assert_eq!(publish_as(&trusted, "192.0.2.1"), 201);
    assert_eq!(publish_as(&trusted, "192.0.2.2"), 201);
    assert_eq!(publish_as(&trusted, "192.0.2.1"), 429);
    // A client cannot pass for another by writing the header itself: the
    // proxy appends the address it saw, and that one counts.
    assert_eq!(publish_as(&trusted, "192.0.2.9, 192.0.2.2"), 429);
    // From an untrusted address the header is ignored: one client, 127.0.0.1.
    let untrusted = start_with(limited("10.0.0.0/8"));
    assert_eq!(publish_as(&untrusted, "192.0.2.1"), 201);
    let resp = untrusted.request(
        "POST",
        "/channels/a/events",
        &[("X-Forwarded-For", "192.0.2.2")],
        Some("1"),
    );
    resp.assert_error(429, "127.0.0.1");
}

/// Two Authorization headers, or two different tokens, are a 400: no reading picks one of them.
#[test]
fn ambiguous_credentials_are_refused() {
    let dir = TempDir::new("auth-ambiguous");
    let server = start_with(with_rules(&dir));
    let raw = common::raw(
        server.addr,
        format!(
            "GET /channels/chat/events?timeout=0 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {READER}\r\n\
             Authorization: Bearer {ALICE}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
        HANG_GUARD,
    );
    common::parse_raw(&raw).assert_error(400, "Authorization given more than once");
    let resp = server.get_with_header(
        &format!("/channels/chat/events?timeout=0&token={ALICE}"),
        "Authorization",
        &bearer(READER),
    );
    resp.assert_error(400, "two different tokens");
}

/// Without --auth-file abide warns at start when it listens beyond loopback; a broken auth file stops it at start, naming the line.
#[test]
fn startup_warns_without_auth_and_refuses_a_broken_file() {
    let open = Abide::serve_at("0.0.0.0:0", &["--quiet"], |_| {});
    let warning = open.next_line("the warning", |l| l.contains("warning"));
    assert!(warning.contains("without --auth-file"), "{warning}");

    let dir = TempDir::new("auth-broken");
    let path = dir.path().join("auth");
    std::fs::write(&path, "# fine\ntoken a sha256:00 publish *\n").unwrap();
    let mut broken = Abide::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--auth-file",
        path.to_str().unwrap(),
    ]);
    let status = broken.wait_exit();
    assert_eq!(status.code(), Some(1), "{status:?}");
    let stderr = broken.rest_of_stderr().concat();
    assert!(
        stderr.contains("--auth-file") && stderr.contains("line 2"),
        "{stderr}"
    );
    let mut missing = Abide::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--auth-file",
        "/nonexistent/auth",
    ]);
    assert_eq!(missing.wait_exit().code(), Some(1));
}

/// With --public-metrics the figures are open; everything else still needs its token.
#[test]
fn public_metrics_opens_only_the_figures() {
    let dir = TempDir::new("auth-public");
    let server = start_with(abide::Config {
        public_metrics: true,
        ..with_rules(&dir)
    });
    assert_eq!(server.get("/metrics").status, 200);
    assert_eq!(server.get("/stats").status, 200);
    server
        .get("/channels/chat/events?timeout=0")
        .assert_error(401, "subscribe");
}
