//! The client (`abide::client`, `abide publish`, `abide watch`) against the
//! real server on a loopback port: cursors, cursor files, retries, backoff,
//! stops on 4xx, gap warnings, signals, tokens.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use abide::client::{
    Batch, Client, ClientError, Note, StreamMessage, WatchEnd, WatchOptions, Watcher,
};
use abide::{Config, Shutdown};
use serde_json::Value;

fn options(server: SocketAddr, channels: &[&str]) -> WatchOptions {
    WatchOptions {
        base_url: format!("http://{server}"),
        channels: channels.iter().map(|c| c.to_string()).collect(),
        from: None,
        cursor_file: None,
        timeout: Duration::from_secs(5),
        limit: 100,
        stream: false,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(160),
        token: None,
    }
}

/// A fresh temporary directory for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("abide-client-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ids(batch: &Batch) -> Vec<u64> {
    batch
        .events
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect()
}

/// A restarted watcher resumes from its cursor file: nothing printed twice, nothing skipped.
#[test]
fn watch_resumes_from_the_cursor_file() {
    let server = common::start();
    let dir = temp_dir("resume");
    let cursor_file = dir.join("cursor");
    let first: Vec<u64> = (0..3)
        .map(|i| server.publish("jobs", &i.to_string()))
        .collect();

    let opts = WatchOptions {
        cursor_file: Some(cursor_file.clone()),
        ..options(server.addr, &["jobs"])
    };
    let mut seen = Vec::new();
    let mut watcher = Watcher::new(opts.clone()).unwrap();
    let batch = watcher.poll_once(&mut |_| Ok(()), &mut |_| {}).unwrap();
    seen.extend(ids(&batch));
    assert_eq!(seen, first);
    assert_eq!(abide::client::read_cursor(&cursor_file), Ok(first[2]));
    drop(watcher);

    let second: Vec<u64> = (3..5)
        .map(|i| server.publish("jobs", &i.to_string()))
        .collect();
    let mut restarted = Watcher::new(opts).unwrap();
    assert_eq!(restarted.cursor(), first[2]);
    let batch = restarted.poll_once(&mut |_| Ok(()), &mut |_| {}).unwrap();
    assert_eq!(ids(&batch), second);
    assert_eq!(abide::client::read_cursor(&cursor_file), Ok(second[1]));
}

/// `abide watch --once --cursor-file` prints each event once across runs and exits 3 when nothing is new.
#[test]
fn watch_once_with_a_cursor_file_from_the_shell() {
    let server = common::start();
    let dir = temp_dir("once");
    let cursor = dir.join("cursor");
    let url = format!("http://{}", server.addr);
    let a = server.publish("sensors", r#"{"t":20}"#);
    let b = server.publish("sensors", r#"{"t":21}"#);
    let watch = || {
        abide(&[
            "watch",
            "--url",
            &url,
            "sensors",
            "--once",
            "--timeout",
            "1",
            "--cursor-file",
        ])
        .arg(&cursor)
        .output()
        .unwrap()
    };
    let out = watch();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(printed_ids(&out), [a, b]);
    let c = server.publish("sensors", r#"{"t":22}"#);
    let out = watch();
    assert_eq!(printed_ids(&out), [c]);
    let out = watch();
    assert_eq!(out.status.code(), Some(3), "nothing new: {out:?}");
    assert!(out.stdout.is_empty());
}

/// The watcher keeps going across a server restart and gets what the new server publishes.
#[test]
fn watch_retries_across_a_server_restart() {
    let first = common::start();
    let addr = first.addr;
    let stop = Shutdown::new();
    let (events_tx, events_rx) = mpsc::channel::<Value>();
    let (notes_tx, notes_rx) = mpsc::channel::<String>();
    let watching = {
        let stop = stop.clone();
        let opts = options(addr, &["status"]);
        thread::spawn(move || {
            let mut watcher = Watcher::new(opts).unwrap();
            watcher.run(
                &stop,
                &mut |batch| {
                    for event in &batch.events {
                        let _ = events_tx.send(event.clone());
                    }
                    Ok(())
                },
                &mut |note| {
                    let _ = notes_tx.send(format!("{note:?}"));
                },
            )
        })
    };
    let before = first.publish("status", r#""up""#);
    let got = events_rx.recv_timeout(common::HANG_GUARD).unwrap();
    assert_eq!(got["id"].as_u64(), Some(before));

    first.stop();
    // The watcher notices and retries.
    let note = notes_rx.recv_timeout(common::HANG_GUARD).unwrap();
    assert!(note.contains("Retrying"), "{note}");
    let second = common::start_with(Config {
        listen: addr,
        ..common::config()
    });
    let after = second.publish("status", r#""back""#);
    let got = events_rx.recv_timeout(common::HANG_GUARD).unwrap();
    assert_eq!(got["id"].as_u64(), Some(after));
    assert!(after > before, "ids keep increasing across the restart");

    stop.trigger();
    let end = common::join_within(watching, "watcher stop");
    assert!(matches!(end, WatchEnd::Stopped), "{end:?}");
}

/// Against a dead port, retries back off exponentially, each wait within its ceiling and never above the cap.
#[test]
fn backoff_grows_and_is_capped() {
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let stop = Shutdown::new();
    let mut watcher = Watcher::new(options(dead, &["x"])).unwrap();
    let mut attempts: Vec<(Instant, Duration)> = Vec::new();
    let end = watcher.run(&stop, &mut |_| Ok(()), &mut |note| {
        if let Note::Retrying { delay, .. } = note {
            attempts.push((Instant::now(), delay));
            if attempts.len() == 12 {
                stop.trigger();
            }
        }
    });
    assert!(matches!(end, WatchEnd::Stopped), "{end:?}");
    assert_eq!(attempts.len(), 12);
    for (n, (_, delay)) in attempts.iter().enumerate() {
        let ceiling = Duration::from_millis(20 * (1 << n.min(3)));
        assert!(
            *delay <= ceiling,
            "attempt {n}: {delay:?} above {ceiling:?}"
        );
        assert!(*delay <= Duration::from_millis(160), "above the cap");
    }
    // Measured on the attempts: each retry came no sooner than its delay.
    for pair in attempts.windows(2) {
        let ((at, delay), (next, _)) = (pair[0], pair[1]);
        assert!(next.duration_since(at) >= delay, "retried before its delay");
    }
}

/// A 4xx other than 408/429 stops the watcher with the server's message, and the CLI exits 1.
#[test]
fn a_client_error_stops_the_watcher() {
    let server = common::start();
    let opts = WatchOptions {
        limit: 5000,
        ..options(server.addr, &["news"])
    };
    let mut watcher = Watcher::new(opts).unwrap();
    let end = watcher.run(&Shutdown::new(), &mut |_| Ok(()), &mut |_| {});
    match end {
        WatchEnd::Failed(error) => {
            let message = error.to_string();
            assert!(
                message.contains("400") && message.contains("limit"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    let out = abide(&["watch", "--url", &server.url(""), "news", "--limit", "5000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("limit"));
    // A name the server would refuse is refused before asking.
    let out = abide(&["watch", "--url", &server.url(""), "bad name"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid channel name"));
}

/// A poll refused with 503 is retried after the server's Retry-After, not the backoff.
#[test]
fn retry_after_is_honoured() {
    let server = common::start_with(Config {
        max_waiters: 1,
        ..common::config()
    });
    let held = server.spawn_get("/channels/full/events?timeout=30");
    server.wait_for_stat("waiters", |n| n == 1);
    let stop = Shutdown::new();
    let mut watcher = Watcher::new(options(server.addr, &["other"])).unwrap();
    let mut seen = None;
    watcher.run(&stop, &mut |_| Ok(()), &mut |note| {
        if let Note::Retrying { error, delay } = note {
            seen = Some((error.to_string(), delay));
            stop.trigger();
        }
    });
    let (error, delay) = seen.expect("a retry");
    assert!(error.contains("503"), "{error}");
    assert!(
        delay >= Duration::from_secs(1),
        "Retry-After is 1-4 s, got {delay:?}"
    );
    server.publish("full", "1");
    common::join_within(held, "held poll");
}

/// A gap (Abide-Missed) is reported as a warning and the watcher carries on with the events.
#[test]
fn a_missed_gap_warns_and_carries_on() {
    let server = common::start_with(Config {
        buffer_events: 2,
        ..common::config()
    });
    let first = server.publish("fast", "1");
    for i in 2..=5 {
        server.publish("fast", &i.to_string());
    }
    let url = format!("http://{}", server.addr);
    let out = abide(&["watch", "--url", &url, "fast", "--once", "--from"])
        .arg(first.to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(printed_ids(&out).len(), 2, "the two the buffer still holds");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning") && stderr.contains("gap"),
        "{stderr}"
    );
}

/// `abide publish` prints the stored event (argument or stdin) and fails with the server's message.
#[test]
fn publish_from_the_shell() {
    let server = common::start();
    let url = server.url("");
    let out = abide(&["publish", "--url", &url, "kitchen", r#"{"celsius":21.5}"#])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let event: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(event["data"]["celsius"], 21.5);
    assert_eq!(event["channel"], "kitchen");

    // Standard input when the value is absent or `-` (regression: a lone `-`
    // used to be refused as an unknown flag), before or after other flags.
    for args in [
        &["publish", "--url", &url, "kitchen"][..],
        &["publish", "--url", &url, "kitchen", "-"],
        &["publish", "kitchen", "-", "--url", &url],
    ] {
        let mut child = abide(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"[1, 2]").unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        let event: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(event["data"], serde_json::json!([1, 2]));
    }

    let out = abide(&["publish", "--url", &url, "kitchen", "{oops"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));
}

/// SIGTERM stops `abide watch` promptly with exit 0 and the cursor file matching what it printed.
#[test]
fn sigterm_stops_the_watcher_with_its_cursor_saved() {
    let server = common::start();
    let dir = temp_dir("signal");
    let cursor = dir.join("cursor");
    let mut child = Kill(
        abide(&[
            "watch",
            "--url",
            &server.url(""),
            "news",
            "--timeout",
            "30",
            "--cursor-file",
        ])
        .arg(&cursor)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let (lines_tx, lines_rx) = mpsc::channel();
    let stdout = child.0.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = lines_tx.send(line.unwrap());
        }
    });
    let id = server.publish("news", r#""hello""#);
    let line = lines_rx.recv_timeout(common::HANG_GUARD).unwrap();
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["id"].as_u64(), Some(id));
    // The watcher is in its next long poll now.
    server.wait_for_stat("waiters", |n| n == 1);
    unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM) };
    let status = wait_exit(&mut child.0);
    assert_eq!(status.code(), Some(0));
    assert_eq!(abide::client::read_cursor(&cursor), Ok(id));
}

const WRITER: &str = "abide_writer-token";
const READER: &str = "abide_reader-token";

/// An auth file in `dir`: the writer may publish and read `chat`, the
/// reader only read it; nobody else may do anything.
fn auth_file(dir: &common::TempDir) -> PathBuf {
    let hash = abide::token_hash_text;
    let text = format!(
        "token writer {} publish,subscribe chat\n\
         token reader {} subscribe chat\n",
        hash(WRITER),
        hash(READER),
    );
    let path = dir.path().join("auth");
    std::fs::write(&path, text).unwrap();
    path
}

/// A `Client` given a token publishes, polls and streams where the rules let it; without one it gets a 401 that is not retried, and a token lacking the right a 403.
#[test]
fn a_client_with_a_token_publishes_polls_and_streams() {
    let dir = common::TempDir::new("client-token");
    let server = common::start_with(Config {
        auth_file: Some(auth_file(&dir)),
        ..common::config()
    });
    let url = server.url("");
    let timeout = Duration::from_secs(5);
    let writer = Client::new(&url, timeout).with_token(Some(WRITER));
    let event = writer.publish("chat", r#""hi""#).unwrap();
    let id = event["id"].as_u64().unwrap();
    let chat = ["chat".to_string()];
    let batch = writer.poll(&chat, 0, Duration::ZERO, 10).unwrap();
    assert_eq!(ids(&batch), [id]);
    let reader = Client::new(&url, timeout).with_token(Some(READER));
    assert_eq!(
        ids(&reader.poll(&chat, 0, Duration::ZERO, 10).unwrap()),
        [id]
    );
    // A stream, left by a deliberate error once the event is in.
    let mut streamed = Vec::new();
    let enough = reader.stream(&chat, 0, common::HANG_GUARD, &mut |message| {
        streamed.push(message);
        Err(ClientError::Invalid("enough".into()))
    });
    assert!(matches!(enough, Err(ClientError::Invalid(_))), "{enough:?}");
    assert!(
        matches!(&streamed[..], [StreamMessage::Event(e)] if e["id"].as_u64() == Some(id)),
        "{streamed:?}"
    );

    let anonymous = Client::new(&url, timeout);
    for refused in [
        anonymous.publish("chat", "1").unwrap_err(),
        anonymous.poll(&chat, 0, Duration::ZERO, 10).unwrap_err(),
        anonymous
            .stream(&chat, 0, common::HANG_GUARD, &mut |_| Ok(()))
            .unwrap_err(),
    ] {
        assert!(
            matches!(&refused, ClientError::Status { status: 401, message, .. }
                if message.contains("channel chat")),
            "{refused:?}"
        );
        assert!(!refused.is_retryable());
    }
    let refused = reader.publish("chat", "1").unwrap_err();
    assert!(
        matches!(&refused, ClientError::Status { status: 403, message, .. }
            if message.contains("lacks the publish right on channel chat")),
        "{refused:?}"
    );
    assert!(!refused.is_retryable());
}

/// A Watcher with a token gets events; without one it ends at once with the 401 (no retry), and with a token lacking the right with the 403.
#[test]
fn a_watcher_presents_its_token_and_stops_on_a_refusal() {
    let dir = common::TempDir::new("watch-token");
    let server = common::start_with(Config {
        auth_file: Some(auth_file(&dir)),
        ..common::config()
    });
    let id = Client::new(&server.url(""), Duration::from_secs(5))
        .with_token(Some(WRITER))
        .publish("chat", "1")
        .unwrap()
        .get("id")
        .and_then(Value::as_u64)
        .unwrap();
    for stream in [false, true] {
        let opts = WatchOptions {
            stream,
            token: Some(READER.into()),
            ..options(server.addr, &["chat"])
        };
        // Left by a deliberate output error once the event is in (a stream
        // would not look at a `Shutdown` before it ends).
        let watching = thread::spawn(move || {
            let mut got = Vec::new();
            let end = Watcher::new(opts).unwrap().run(
                &Shutdown::new(),
                &mut |batch| {
                    got.extend(ids(batch));
                    Err(std::io::Error::other("enough"))
                },
                &mut |_| {},
            );
            (end, got)
        });
        let (end, got) = common::join_within(watching, "a watcher with a token");
        assert!(
            matches!(&end, WatchEnd::Failed(e) if e.to_string().contains("enough")),
            "stream {stream}: {end:?}"
        );
        assert_eq!(got, [id], "stream {stream}");

        for (token, channel, status) in [(None, "chat", 401), (Some(READER), "other", 403)] {
            let opts = WatchOptions {
                stream,
                token: token.map(String::from),
                ..options(server.addr, &[channel])
            };
            let watching = thread::spawn(move || {
                let mut notes = Vec::new();
                let end = Watcher::new(opts).unwrap().run(
                    &Shutdown::new(),
                    &mut |_| Ok(()),
                    &mut |note| notes.push(format!("{note:?}")),
                );
                (end, notes)
            });
            let (end, notes) = common::join_within(watching, "a refused watcher");
            assert!(
                matches!(&end, WatchEnd::Failed(ClientError::Status { status: s, .. }) if *s == status),
                "stream {stream}, {channel}: {end:?}"
            );
            assert!(notes.is_empty(), "retried: {notes:?}");
        }
    }
}

/// A poll refused with 429 (over --max-waiters-per-client) is retried after the server's Retry-After, not the backoff.
#[test]
fn a_429_is_retried_after_its_retry_after() {
    let server = common::start_with(Config {
        max_waiters_per_client: Some(1),
        ..common::config()
    });
    let held = server.spawn_get("/channels/held/events?timeout=30");
    server.wait_for_stat("waiters", |n| n == 1);
    let stop = Shutdown::new();
    let mut watcher = Watcher::new(options(server.addr, &["other"])).unwrap();
    let mut seen = None;
    let end = watcher.run(&stop, &mut |_| Ok(()), &mut |note| {
        if let Note::Retrying { error, delay } = note {
            seen = Some((error.to_string(), delay));
            stop.trigger();
        }
    });
    assert!(matches!(end, WatchEnd::Stopped), "{end:?}");
    let (error, delay) = seen.expect("a retry");
    assert!(
        error.contains("429") && error.contains("--max-waiters-per-client"),
        "{error}"
    );
    // The backoff would be at most 20 ms; the server asks for seconds.
    assert!(delay >= Duration::from_secs(1), "{delay:?}");
    server.publish("held", "1");
    common::join_within(held, "held poll");
}

fn abide(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_abide"));
    // A token in the caller's environment must not reach these open servers.
    command.args(args).env_remove("ABIDE_TOKEN");
    command
}

fn printed_ids(out: &Output) -> Vec<u64> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// Kills the child on drop, so that no process outlives its test.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let mut status = None;
    common::wait_until("the watcher to exit", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status.unwrap()
}
