//! The `abide` command as a user runs it: flag checking, `--help`, the
//! startup line and the access log on stderr, `--quiet`.
mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};

use common::HANG_GUARD;

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
