//! The `abide` command as a user runs it: flag checking, `--help`, the
//! startup line and the access log on stderr, `--quiet`; `abide publish`
//! and `abide watch` presenting a token (`--token`, `ABIDE_TOKEN`).
mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;

use common::{Abide, HANG_GUARD, TempDir};

/// Every flag of `abide serve`.
const FLAGS: [&str; 14] = [
    "--listen",
    "--max-waiters",
    "--default-timeout",
    "--max-timeout",
    "--buffer",
    "--event-ttl",
    "--max-event-bytes",
    "--max-channels",
    "--max-stored-bytes",
    "--idle-timeout",
    "--write-timeout",
    "--max-writers",
    "--cors-origin",
    "--quiet",
];

/// Bad flag values and unknown flags exit 2 with a message naming the flag, serving nothing.
#[test]
fn bad_flag_values_exit_2_naming_the_flag() {
    let cases: [(&[&str], &str); 8] = [
        (
            &["--default-timeout", "200", "--max-timeout", "100"],
            "--default-timeout",
        ),
        (
            &["--max-timeout", "120", "--idle-timeout", "75"],
            "--idle-timeout",
        ),
        (&["--max-waiters", "0"], "--max-waiters"),
        (&["--buffer", "0"], "--buffer"),
        (&["--cors-origin", ""], "--cors-origin"),
        (&["--listen", "notanaddress"], "--listen"),
        (&["--max-waiters", "many"], "--max-waiters"),
        (&["--no-such-flag", "1"], "--no-such-flag"),
    ];
    for (flags, named) in cases {
        let mut args = vec!["serve"];
        // A valid listen address first, so that a wrongly accepted value
        // cannot collide with a server already on the default port.
        if named != "--listen" {
            args.extend(["--listen", "127.0.0.1:0"]);
        }
        args.extend(flags);
        let mut abide = common::Abide::spawn(&args);
        let status = abide.wait_exit();
        let stderr = abide.rest_of_stderr().join("");
        assert_eq!(
            status.code(),
            Some(2),
            "{args:?}: {status}; stderr: {stderr}"
        );
        assert!(
            stderr.contains(named),
            "{args:?}: stderr does not name {named}: {stderr:?}"
        );
        assert!(
            !stderr.contains("listening on"),
            "{args:?} started a server: {stderr}"
        );
    }
}

/// `abide serve --help` exits 0 and lists every flag, each with help text.
#[test]
fn help_lists_every_flag_with_text() {
    let mut abide = common::Abide::spawn(&["serve", "--help"]);
    let status = abide.wait_exit();
    let help = abide.stdout_text();
    assert!(status.success(), "{status}: {help}");
    let lines: Vec<&str> = help.lines().collect();
    for flag in FLAGS {
        let at = lines
            .iter()
            .position(|l| l.split_whitespace().next() == Some(flag))
            .unwrap_or_else(|| panic!("{flag} is not listed in:\n{help}"));
        // The text follows the flag, on its line or (for a long flag) the next.
        let same_line = lines[at].trim_start()[flag.len()..].trim();
        let text = if same_line.is_empty() {
            lines.get(at + 1).map_or("", |l| l.trim())
        } else {
            same_line
        };
        assert!(
            text.split_whitespace().count() >= 2 && !text.starts_with("--"),
            "{flag} has no help text in:\n{help}"
        );
    }
}

/// The startup line on stderr names the listen address and the limits in force.
#[test]
fn startup_line_names_the_address_and_limits() {
    let limits = [
        ("--max-waiters", "37"),
        ("--default-timeout", "41"),
        ("--max-timeout", "43"),
        ("--buffer", "47"),
        ("--max-event-bytes", "5003"),
        ("--max-channels", "53"),
        ("--idle-timeout", "59"),
    ];
    let flags: Vec<&str> = limits.iter().flat_map(|(f, v)| [*f, *v]).collect();
    let abide = common::Abide::serve(&flags);
    let line = &abide.startup_line;
    assert!(line.contains(&abide.addr.to_string()), "{line}");
    // Cross-check the port with a request.
    assert_eq!(request(abide.addr, "GET", "/healthz", "").0, 200);
    let numbers: Vec<&str> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|t| !t.is_empty())
        .collect();
    for (flag, value) in limits {
        assert!(
            numbers.contains(&value),
            "{flag} {value} missing from {line:?}"
        );
        let name = flag.trim_start_matches("--");
        let word = name.rsplit('-').next().expect("a word");
        assert!(
            line.contains(name) || line.contains(word),
            "{flag} not named in {line:?}"
        );
    }
}

/// Each request gets one stderr line: time, peer, method, path, status, duration.
#[test]
fn access_log_has_one_line_per_request() {
    let mut abide = common::Abide::serve(&[]);
    let requests = [
        ("GET", "/healthz", ""),
        ("POST", "/channels/logged/events", r#"{"n":1}"#),
        ("GET", "/channels/logged/events?timeout=0", ""),
        ("GET", "/no-such-route", ""),
        ("DELETE", "/channels/logged", ""),
    ];
    let mut done = Vec::new();
    for (method, path, body) in requests {
        let (status, local) = request(abide.addr, method, path, body);
        done.push((method, path, status, local));
    }
    assert_eq!(
        done.iter().map(|d| d.2).collect::<Vec<_>>(),
        [200, 201, 200, 404, 204]
    );
    // Lines may come out of order (each is written after its answer).
    let needles: Vec<String> = done
        .iter()
        .map(|(m, p, _, _)| format!(" {m} {p} "))
        .collect();
    let seen = abide.lines_until("an access-log line per request", |seen| {
        needles.iter().all(|n| seen.iter().any(|l| l.contains(n)))
    });
    for ((method, path, status, local), needle) in done.iter().zip(&needles) {
        let line = seen.iter().find(|l| l.contains(needle)).expect("seen");
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            fields.len(),
            6,
            "time peer method path status duration: {line:?}"
        );
        humantime::parse_rfc3339(fields[0])
            .unwrap_or_else(|e| panic!("time {:?} in {line:?}: {e}", fields[0]));
        assert_eq!(fields[1], local.to_string(), "peer in {line:?}");
        assert_eq!(fields[2], *method, "{line:?}");
        assert_eq!(fields[3], *path, "{line:?}");
        assert_eq!(fields[4], status.to_string(), "status in {line:?}");
        let millis = fields[5]
            .strip_suffix("ms")
            .and_then(|d| d.parse::<f64>().ok());
        assert!(millis.is_some_and(|d| d >= 0.0), "duration in {line:?}");
    }
    // After the process has exited every line is out: none is doubled.
    abide.signal(libc::SIGTERM);
    assert!(abide.wait_exit().success());
    let all: Vec<String> = seen.into_iter().chain(abide.rest_of_stderr()).collect();
    for needle in &needles {
        let logged: Vec<&String> = all.iter().filter(|l| l.contains(needle)).collect();
        assert_eq!(
            logged.len(),
            1,
            "{needle:?} is not logged exactly once: {logged:?}"
        );
    }
}

/// `--quiet` logs no request, even ones answered well before the process exits.
#[test]
fn quiet_turns_the_access_log_off() {
    let mut abide = common::Abide::serve(&["--quiet"]);
    assert_eq!(request(abide.addr, "GET", "/healthz", "").0, 200);
    assert_eq!(
        request(abide.addr, "POST", "/channels/q/events", "1").0,
        201
    );
    assert_eq!(request(abide.addr, "GET", "/no-such-route", "").0, 404);
    abide.signal(libc::SIGTERM);
    assert!(abide.wait_exit().success());
    let rest = abide.rest_of_stderr();
    let logged: Vec<&String> = rest
        .iter()
        .filter(|l| {
            ["/healthz", "/channels/q/events", "/no-such-route"]
                .iter()
                .any(|p| l.contains(p))
        })
        .collect();
    assert!(logged.is_empty(), "--quiet still logged: {logged:?}");
}

/// Sends one request on its own connection; returns the status and the
/// client's address (the peer the server sees).
fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, SocketAddr) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let local = stream.local_addr().expect("local address");
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: abide\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("send");
    stream.write_all(body.as_bytes()).expect("send");
    let answer = common::read_until_close(&mut stream);
    let status = common::final_status(&answer).unwrap_or_else(|| panic!("no answer: {answer:?}"));
    (status, local)
}

const WRITER: &str = "abide_cli-writer-token";
const READER: &str = "abide_cli-reader-token";
const UNKNOWN: &str = "abide_cli-unknown-token";

/// An auth file in `dir`: the writer may publish on `chat` and `public.*`
/// and read `chat`, the reader only read `chat`, anyone read `public.*`.
fn auth_file(dir: &TempDir) -> PathBuf {
    let hash = abide::token_hash_text;
    let text = format!(
        "token writer {w} publish,subscribe chat\n\
         token writer {w} publish public.*\n\
         token reader {r} subscribe chat\n\
         anonymous subscribe public.*\n",
        w = hash(WRITER),
        r = hash(READER),
    );
    let path = dir.path().join("auth");
    std::fs::write(&path, text).expect("write the auth file");
    path
}

/// `abide serve --auth-file` with the rules of `auth_file`.
fn protected_server(dir: &TempDir) -> Abide {
    let path = auth_file(dir);
    Abide::serve(&["--quiet", "--auth-file", path.to_str().expect("UTF-8")])
}

/// `abide ARGS` as a client process, with `ABIDE_TOKEN` set to `variable`
/// (unset when `None`, whatever the test's own environment holds).
fn client(args: &[&str], variable: Option<&str>) -> Abide {
    Abide::spawn_with(args, |command| {
        command.env_remove("ABIDE_TOKEN");
        if let Some(token) = variable {
            command.env("ABIDE_TOKEN", token);
        }
    })
}

/// What a client process that ran to its end left: exit code, stdout, stderr.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `abide ARGS` to its end (within the hang guard).
fn run(args: &[&str], variable: Option<&str>) -> Ran {
    let mut abide = client(args, variable);
    let code = abide.wait_exit().code();
    Ran {
        code,
        stdout: abide.stdout_text(),
        stderr: abide.rest_of_stderr().concat(),
    }
}

impl Ran {
    /// Exit 0 with one stored event on `channel` on stdout; returns its id.
    fn published(&self, channel: &str) -> u64 {
        assert_eq!(self.code, Some(0), "stderr: {}", self.stderr);
        let event: serde_json::Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one event ({e}): {:?}", self.stdout));
        assert_eq!(event["channel"], channel, "{event}");
        event["id"].as_u64().expect("an id")
    }

    /// Exit 1 with every one of `words` on stderr.
    fn refused(&self, words: &[&str]) {
        assert_eq!(
            self.code,
            Some(1),
            "stdout: {:?}; stderr: {}",
            self.stdout,
            self.stderr
        );
        for word in words {
            assert!(
                self.stderr.contains(word),
                "stderr does not hold {word:?}: {}",
                self.stderr
            );
        }
    }
}

/// Publishes `data` on `channel` over HTTP as the writer; returns the id.
fn publish_as_writer(server: &Abide, channel: &str, data: &str) -> u64 {
    let bearer = format!("Bearer {WRITER}");
    let path = format!("/channels/{channel}/events");
    let resp = server
        .http()
        .request("POST", &path, &[("Authorization", &bearer)], Some(data));
    assert_eq!(resp.status, 201, "{resp:?}");
    resp.json()["id"].as_u64().expect("an id")
}

/// The ids of the events a client printed, one JSON line each.
fn printed_ids(stdout: &str) -> Vec<u64> {
    stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("a JSON line")["id"]
                .as_u64()
                .expect("an id")
        })
        .collect()
}

/// `abide publish --help` and `abide watch --help` document --token and its ABIDE_TOKEN fallback.
#[test]
fn client_help_documents_the_token_flag_and_variable() {
    for command in ["publish", "watch"] {
        let ran = run(&[command, "--help"], None);
        assert_eq!(ran.code, Some(0), "{}", ran.stderr);
        let flag = ran
            .stdout
            .split("--token")
            .nth(2) // past the usage line, into the flag's description
            .unwrap_or_else(|| panic!("{command}: no --token in:\n{}", ran.stdout));
        assert!(flag.contains("ABIDE_TOKEN"), "{command}:\n{}", ran.stdout);
    }
}

/// `abide publish --token T` publishes where the rules need a token; without one it exits 1 with the 401 message and a hint, with a known token lacking the right 1 with the 403 message, with an unknown one 1 with "not known".
#[test]
fn publish_with_a_token_succeeds_where_none_is_refused() {
    let dir = TempDir::new("cli-publish-token");
    let server = protected_server(&dir);
    let url = server.http().url("");
    run(
        &["publish", "--url", &url, "--token", WRITER, "chat", "1"],
        None,
    )
    .published("chat");
    run(&["publish", "--url", &url, "chat", "1"], None).refused(&[
        "401",
        "publish right on channel chat",
        "--token",
        "ABIDE_TOKEN",
    ]);
    run(
        &["publish", "--url", &url, "--token", READER, "chat", "1"],
        None,
    )
    .refused(&["403", "lacks the publish right on channel chat"]);
    run(
        &["publish", "--url", &url, "--token", UNKNOWN, "chat", "1"],
        None,
    )
    .refused(&["401", "not known", "from --token"]);
    // Nothing refused was stored: the only event is the first.
    let ran = run(
        &[
            "watch",
            "--url",
            &url,
            "--token",
            READER,
            "--once",
            "--timeout",
            "0",
            "chat",
        ],
        None,
    );
    assert_eq!(printed_ids(&ran.stdout).len(), 1, "{}", ran.stderr);
}

/// Without --token, `abide publish` presents the token in ABIDE_TOKEN.
#[test]
fn publish_takes_the_token_from_abide_token() {
    let dir = TempDir::new("cli-publish-env");
    let server = protected_server(&dir);
    let url = server.http().url("");
    run(&["publish", "--url", &url, "chat", "1"], Some(WRITER)).published("chat");
    run(&["publish", "--url", &url, "chat", "1"], Some(UNKNOWN)).refused(&[
        "401",
        "not known",
        "from ABIDE_TOKEN",
    ]);
}

/// --token wins over ABIDE_TOKEN both ways (the variable is not tried after it), and `--token ""` presents none.
#[test]
fn token_flag_wins_over_abide_token() {
    let dir = TempDir::new("cli-token-wins");
    let server = protected_server(&dir);
    let url = server.http().url("");
    run(
        &["publish", "--url", &url, "--token", WRITER, "chat", "1"],
        Some(UNKNOWN),
    )
    .published("chat");
    run(
        &["publish", "--url", &url, "--token", UNKNOWN, "chat", "1"],
        Some(WRITER),
    )
    .refused(&["401", "not known", "from --token"]);
    run(
        &["publish", "--url", &url, "--token", "", "chat", "1"],
        Some(WRITER),
    )
    .refused(&["401", "publish right on channel chat"]);
}

/// `abide watch --once --token T` (or ABIDE_TOKEN) prints the events of a channel the token may read; an anonymous-readable channel needs none.
#[test]
fn watch_once_with_a_token_receives_events() {
    let dir = TempDir::new("cli-watch-once");
    let server = protected_server(&dir);
    let url = server.http().url("");
    let id = publish_as_writer(&server, "chat", r#""hello""#);
    let once = ["watch", "--url", &url, "--once", "--timeout", "1"];
    let with_flag = run(&[&once[..], &["--token", READER, "chat"]].concat(), None);
    assert_eq!(with_flag.code, Some(0), "{}", with_flag.stderr);
    assert_eq!(printed_ids(&with_flag.stdout), [id]);
    let with_variable = run(&[&once[..], &["chat"]].concat(), Some(READER));
    assert_eq!(with_variable.code, Some(0), "{}", with_variable.stderr);
    assert_eq!(printed_ids(&with_variable.stdout), [id]);

    let public = publish_as_writer(&server, "public.news", "1");
    let anonymous = run(&[&once[..], &["public.news"]].concat(), None);
    assert_eq!(anonymous.code, Some(0), "{}", anonymous.stderr);
    assert_eq!(printed_ids(&anonymous.stdout), [public]);
}

/// `abide watch` (polling or --stream, with or without --once) on a protected channel exits 1 at once on a 401 or 403, with the server's message and a hint, instead of retrying.
#[test]
fn watch_stops_on_a_refused_token_instead_of_retrying() {
    let dir = TempDir::new("cli-watch-refused");
    let server = protected_server(&dir);
    let url = server.http().url("");
    let watch = ["watch", "--url", &url];
    for mode in [&[][..], &["--stream"], &["--once"]] {
        // No token. A retry loop would never exit: `run` fails at its hang guard.
        let ran = run(&[&watch[..], mode, &["chat"]].concat(), None);
        ran.refused(&[
            "401",
            "subscribe right on channel chat",
            "hint",
            "--token",
            "ABIDE_TOKEN",
        ]);
        assert!(!ran.stderr.contains("retrying"), "{mode:?}: {}", ran.stderr);
        // A known token without the right.
        let ran = run(
            &[&watch[..], mode, &["--token", READER, "public.news"]].concat(),
            None,
        );
        ran.refused(&["403", "lacks the subscribe right on channel public.news"]);
        assert!(!ran.stderr.contains("retrying"), "{mode:?}: {}", ran.stderr);
        // An unknown token, from the variable.
        let ran = run(&[&watch[..], mode, &["chat"]].concat(), Some(UNKNOWN));
        ran.refused(&["401", "not known", "from ABIDE_TOKEN"]);
        assert!(!ran.stderr.contains("retrying"), "{mode:?}: {}", ran.stderr);
    }
}

/// `abide watch --stream --token T` prints the events published before and while it streams.
#[test]
fn watch_stream_with_a_token_receives_events() {
    let dir = TempDir::new("cli-watch-stream");
    let server = protected_server(&dir);
    let url = server.http().url("");
    let before = publish_as_writer(&server, "chat", r#""before""#);
    let watcher = client(
        &[
            "watch", "--url", &url, "--stream", "--token", READER, "chat",
        ],
        None,
    );
    let first = watcher.next_stdout_line("the event published before");
    assert_eq!(printed_ids(&first), [before]);
    let during = publish_as_writer(&server, "chat", r#""during""#);
    let second = watcher.next_stdout_line("the event published while streaming");
    assert_eq!(printed_ids(&second), [during]);
}
