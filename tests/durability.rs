//! `--data-dir`: what was acknowledged survives `kill -9` and restarts,
//! exactly (ids, timestamps, data, order, the missed signal); what was
//! refused is never stored; a full disk is answered and recovered from; a
//! file abide cannot trust is refused; the files stay bounded. Real abide
//! processes on real files in temporary directories.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use common::{Abide, Http, TempDir, wait_until};
use serde_json::Value;

/// `abide serve` on `dir` with `flags`, on a free port.
fn serve(dir: &TempDir, flags: &[&str]) -> Abide {
    serve_at("127.0.0.1:0", dir, flags)
}

fn serve_at(listen: &str, dir: &TempDir, flags: &[&str]) -> Abide {
    let mut args = vec!["--quiet", "--data-dir", dir.arg()];
    args.extend(flags);
    Abide::serve_at(listen, &args, |_| {})
}

/// Every event the server holds on `channels` after `cursor`, in the order
/// the polls gave them (paging with the last id as the cursor).
fn all_events(http: &Http, channels: &[&str], cursor: u64) -> Vec<Value> {
    let mut cursor = cursor;
    let mut events = Vec::new();
    loop {
        let resp = http.get(&format!(
            "/events?channels={}&last_event_id={cursor}&timeout=0&limit=1000",
            channels.join(",")
        ));
        if resp.status == 204 {
            return events;
        }
        assert_eq!(resp.status, 200, "{resp:?}");
        let page = resp.json().as_array().expect("array").clone();
        cursor = page.last().expect("a 200 has events")["id"]
            .as_u64()
            .unwrap();
        events.extend(page);
    }
}

/// Stops the server with SIGTERM (a clean exit) and waits for it.
fn stop(abide: &mut Abide) {
    abide.signal(libc::SIGTERM);
    assert!(abide.wait_exit().success());
}

/// Sends SIGKILL to the server and waits until it is gone.
fn kill_9(abide: &mut Abide) {
    abide.signal(libc::SIGKILL);
    abide.wait_exit();
}

/// Every event answered `201` while the server was killed in the middle of
/// concurrent publishing is there after a restart on the same directory,
/// with the same id, timestamp and data, in order; nothing refused is; and
/// nothing is there that was not sent.
#[test]
fn acknowledged_events_survive_kill_9_during_concurrent_publishes() {
    let dir = TempDir::new("kill9");
    let mut abide = serve(&dir, &["--buffer", "100000"]);
    let addr = abide.addr;
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let acknowledged = acknowledged.clone();
            thread::spawn(move || publish_until_refused(addr, p, &acknowledged))
        })
        .collect();
    wait_until("300 acknowledged publishes", || {
        acknowledged.load(Ordering::Relaxed) >= 300
    });
    kill_9(&mut abide);
    let outcomes: Vec<Outcomes> = publishers
        .into_iter()
        .map(|p| common::join_within(p, "a publisher"))
        .collect();

    let abide = serve(&dir, &["--buffer", "100000"]);
    let channels = ["p0", "p1", "p2", "p3"];
    let restored = all_events(&abide.http(), &channels, 0);
    let ids: Vec<u64> = restored.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "in id order, once each"
    );
    let by_id: HashMap<u64, &Value> = ids.iter().copied().zip(&restored).collect();
    let mut acked = 0;
    for outcome in &outcomes {
        for event in &outcome.acknowledged {
            let id = event["id"].as_u64().unwrap();
            assert_eq!(
                by_id.get(&id).copied(),
                Some(event),
                "acknowledged event {id} is back unchanged"
            );
            acked += 1;
        }
    }
    assert!(acked >= 300, "{acked}");
    // Per publisher, what is back is what it sent, in the order it sent it:
    // the acknowledged events, plus at most the one in flight at the kill.
    for (p, outcome) in outcomes.iter().enumerate() {
        let back: Vec<&Value> = restored
            .iter()
            .filter(|e| e["channel"] == channels[p])
            .collect();
        let acked_ids: HashSet<u64> = outcome
            .acknowledged
            .iter()
            .map(|e| e["id"].as_u64().unwrap())
            .collect();
        let extra: Vec<&&Value> = back
            .iter()
            .filter(|e| !acked_ids.contains(&e["id"].as_u64().unwrap()))
            .collect();
        assert!(extra.len() <= 1, "publisher {p}: unacknowledged {extra:?}");
        for event in extra {
            assert_eq!(
                Some(&event["data"]),
                outcome.in_flight.as_ref(),
                "publisher {p}: only the event in flight at the kill may be back"
            );
        }
        let sequence: Vec<u64> = back
            .iter()
            .map(|e| e["data"]["seq"].as_u64().unwrap())
            .collect();
        assert!(sequence.windows(2).all(|w| w[0] < w[1]), "{sequence:?}");
        for seq in &sequence {
            assert!(
                !outcome.refused.contains(seq),
                "publisher {p}: refused publish {seq} was stored"
            );
        }
        assert!(!outcome.refused.is_empty(), "publisher {p} was refused too");
    }
}

/// What one publisher saw.
struct Outcomes {
    /// The events answered `201`, as answered.
    acknowledged: Vec<Value>,
    /// Sequence numbers answered `400` (refused): must never be stored.
    refused: Vec<u64>,
    /// The data sent when the server went away (no answer).
    in_flight: Option<Value>,
}

/// Publishes `{"p":p,"seq":n}` on channel `p{p}` until the server is gone;
/// every fifth publish is not valid JSON and must be refused.
fn publish_until_refused(addr: SocketAddr, p: usize, acknowledged: &AtomicUsize) -> Outcomes {
    let http = Http::new(addr);
    let mut outcomes = Outcomes {
        acknowledged: Vec::new(),
        refused: Vec::new(),
        in_flight: None,
    };
    for seq in 0u64.. {
        let data = serde_json::json!({ "p": p, "seq": seq });
        let mut body = data.to_string();
        if seq % 5 == 4 {
            body.pop(); // no closing brace
        }
        let path = format!("/channels/p{p}/events");
        match http.try_post(&path, &body) {
            Some(resp) if resp.status == 201 => {
                outcomes.acknowledged.push(resp.json());
                acknowledged.fetch_add(1, Ordering::Relaxed);
            }
            Some(resp) if resp.status == 400 => outcomes.refused.push(seq),
            Some(resp) => panic!("unexpected answer {resp:?}"),
            None => {
                outcomes.in_flight = Some(data);
                return outcomes;
            }
        }
    }
    unreachable!()
}

/// `abide watch --cursor-file` keeps watching through a server crash and a
/// restart on the same port and directory, and prints each event exactly
/// once, in order; started again, it resumes from its cursor file.
#[test]
fn a_watcher_with_a_cursor_file_sees_each_event_once_across_a_crash() {
    let dir = TempDir::new("watch-crash");
    let cursor_dir = TempDir::new("watch-cursor");
    let cursor_file = cursor_dir.path().join("cursor");
    let mut server = serve(&dir, &[]);
    let listen = server.addr.to_string();
    let url = format!("http://{listen}");
    let watch = |cursor_file: &std::path::Path| {
        Abide::spawn(&[
            "watch",
            "--url",
            &url,
            "--cursor-file",
            cursor_file.to_str().unwrap(),
            "--timeout",
            "5",
            "sensors",
        ])
    };
    let mut watcher = watch(&cursor_file);
    let mut published = Vec::new();
    let mut printed = Vec::new();
    for n in 0..5 {
        published.push(server.http().publish("sensors", &n.to_string()));
    }
    while printed.len() < 5 {
        printed.push(watcher.next_stdout_line("an event before the crash"));
    }
    kill_9(&mut server);
    // While the server is down the watcher retries with backoff.
    let server = serve_at(&listen, &dir, &[]);
    for n in 5..10 {
        published.push(server.http().publish("sensors", &n.to_string()));
    }
    while printed.len() < 10 {
        printed.push(watcher.next_stdout_line("an event after the restart"));
    }
    let ids: Vec<u64> = printed
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("a JSON line")["id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        ids, published,
        "each event once, in order, across the crash"
    );

    // Stopped, then started again with its cursor file: only what is new.
    stop(&mut watcher);
    let later = server.http().publish("sensors", "10");
    let watcher = watch(&cursor_file);
    let line = watcher.next_stdout_line("the event published while stopped");
    assert_eq!(
        serde_json::from_str::<Value>(&line).unwrap()["id"].as_u64(),
        Some(later)
    );
}

/// A restart on the same directory gives a cursor exactly the events after
/// it, marks `Abide-Missed` only for cursors that lost something to the
/// buffer, and continues the id sequence above every id issued before.
#[test]
fn a_cursor_from_before_a_restart_resumes_exactly() {
    let dir = TempDir::new("resume");
    let server = serve(&dir, &["--buffer", "3"]);
    let http = server.http();
    let a: Vec<u64> = (1..=5).map(|n| http.publish("a", &n.to_string())).collect();
    let b = http.publish("b", "\"b\"");
    drop(server);

    let server = serve(&dir, &["--buffer", "3"]);
    assert!(
        server
            .next_line("the restore line", |l| l.contains("restored"))
            .contains("restored 4 events in 2 channels"),
    );
    let http = server.http();
    let poll = |cursor: u64| {
        http.get(&format!(
            "/channels/a/events?last_event_id={cursor}&timeout=0"
        ))
    };
    let after_second = poll(a[1]);
    assert_eq!(after_second.ids(), a[2..]);
    assert_eq!(after_second.header("Abide-Missed"), None, "it lost nothing");
    let after_first = poll(a[0]);
    assert_eq!(after_first.ids(), a[2..]);
    assert_eq!(
        after_first.header("Abide-Missed"),
        Some("true"),
        "event 2 was dropped"
    );
    assert_eq!(poll(0).header("Abide-Missed"), Some("true"));
    assert_eq!(poll(a[4]).status, 204);
    assert_eq!(http.get("/channels/b/events?timeout=0").ids(), [b]);

    // A cursor at the newest event waits, and gets the next event, whose id
    // is above every id issued before the restart.
    let waiting = http.spawn_get(&format!(
        "/channels/a/events?last_event_id={}&timeout=20",
        a[4]
    ));
    server_waiters(&http, 1);
    let next = http.publish("a", "6");
    assert!(next > b);
    assert_eq!(common::join_within(waiting, "the held poll").ids(), [next]);
}

fn server_waiters(http: &Http, n: u64) {
    wait_until("the poll to be held", || {
        http.get("/stats").json()["waiters"].as_u64() == Some(n)
    });
}

/// A deleted channel stays deleted across `kill -9`, and ids go on above
/// the ids it held even though no stored event carries them any more.
#[test]
fn a_deleted_channel_stays_deleted_after_a_crash() {
    let dir = TempDir::new("delete");
    let mut server = serve(&dir, &[]);
    let http = server.http();
    let kept = http.publish("kept", "1");
    let doomed: Vec<u64> = (0..3)
        .map(|n| http.publish("doomed", &n.to_string()))
        .collect();
    let last = doomed[2];
    assert_eq!(http.delete("/channels/doomed").status, 204);
    kill_9(&mut server);

    let server = serve(&dir, &[]);
    let http = server.http();
    assert_eq!(http.get("/channels/doomed").status, 404);
    assert_eq!(http.get("/channels/doomed/events?timeout=0").status, 204);
    assert_eq!(http.get("/channels/kept/events?timeout=0").ids(), [kept]);
    assert!(
        http.publish("doomed", "\"again\"") > last,
        "ids never go back"
    );
}

/// An unreadable file is refused at start, with exit code 1 and a message
/// naming it, and left as it was: garbage, another program's database, a
/// database from a newer abide (a schema version this one does not know),
/// and abide's own file with an event it could not have written.
#[test]
fn a_database_abide_cannot_trust_is_refused_and_left_alone() {
    let garbage = TempDir::new("corrupt");
    let file = garbage.path().join("abide.db");
    let junk: Vec<u8> = (0..20_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&file, &junk).unwrap();
    refused(&garbage, "corrupt");
    assert_eq!(std::fs::read(&file).unwrap(), junk, "the file is untouched");

    let foreign = TempDir::new("foreign");
    let conn = rusqlite::Connection::open(foreign.path().join("abide.db")).unwrap();
    conn.execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine');")
        .unwrap();
    drop(conn);
    refused(&foreign, "not an abide database");

    // Written by this abide, then marked as a later schema version.
    let newer = TempDir::new("newer");
    let mut server = serve(&newer, &[]);
    server.http().publish("a", "1");
    stop(&mut server);
    let conn = rusqlite::Connection::open(newer.path().join("abide.db")).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    refused(&newer, "schema version is 99");

    // abide's own file, with a row it could not have written.
    let tampered = TempDir::new("tampered");
    let mut server = serve(&tampered, &[]);
    let id = server.http().publish("a", "1");
    stop(&mut server);
    let conn = rusqlite::Connection::open(tampered.path().join("abide.db")).unwrap();
    conn.execute(
        "UPDATE events SET data = '{broken' WHERE id = ?1",
        [id as i64],
    )
    .unwrap();
    drop(conn);
    refused(&tampered, "data that is not JSON");
}

/// Starts abide on `dir`, expecting exit code 1 and a message with the
/// database's path and `why`.
fn refused(dir: &TempDir, why: &str) {
    let mut abide = Abide::spawn(&["serve", "--listen", "127.0.0.1:0", "--data-dir", dir.arg()]);
    let status = abide.wait_exit();
    assert_eq!(status.code(), Some(1), "abide must refuse to start");
    let stderr = abide.rest_of_stderr().concat();
    let path = dir.path().join("abide.db");
    assert!(
        stderr.contains(path.to_str().unwrap()) && stderr.contains(why),
        "the message names the file and says {why:?}: {stderr}"
    );
    assert!(!stderr.contains("listening"), "{stderr}");
}

/// A second abide on a data directory in use refuses to start (exit 1)
/// and the first one keeps serving.
#[test]
fn a_second_abide_on_the_same_data_dir_refuses_to_start() {
    let dir = TempDir::new("second");
    let first = serve(&dir, &[]);
    let id = first.http().publish("a", "1");
    refused(&dir, "another abide");
    assert_eq!(first.http().get("/channels/a/events?timeout=0").ids(), [id]);
}

/// With the file size limited (`RLIMIT_FSIZE`, `SIGXFSZ` ignored), a
/// publish that cannot be stored is refused with a retryable JSON error;
/// polls keep being answered; once the limit is raised, publishing works
/// again; and after a restart only what was acknowledged is there.
#[test]
fn a_write_error_refuses_the_publish_and_publishing_resumes_after_it() {
    let dir = TempDir::new("fsize");
    let limit: libc::rlim_t = 256 * 1024;
    let mut args = vec!["--quiet", "--data-dir", dir.arg()];
    args.extend(["--max-event-bytes", "20000"]);
    let mut server = Abide::serve_with(&args, |command| {
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec only async-signal-safe calls:
        // signal and setrlimit.
        unsafe {
            command.pre_exec(move || {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let rlimit = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: libc::RLIM_INFINITY,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &rlimit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    });
    let http = server.http();
    let (mut acknowledged, refusal) = publish_until_not_stored(&http);
    assert!(matches!(refusal.status, 503 | 507), "{refusal:?}");
    assert!(refusal.header("Retry-After").is_some(), "{refusal:?}");
    assert!(
        refusal.json()["error"]
            .as_str()
            .unwrap()
            .contains("nothing was stored"),
        "{refusal:?}"
    );
    // Polls are still served from memory.
    assert_eq!(
        http.get("/channels/a/events?timeout=0&limit=1000").ids(),
        acknowledged
    );
    assert!(http.get("/stats").json()["store_errors"].as_u64() >= Some(1));

    raise_file_limit(server.child.id());
    let after = http.publish("a", "\"small\"");
    acknowledged.push(after);
    stop(&mut server);

    let server = serve(&dir, &["--max-event-bytes", "20000"]);
    let back = all_events(&server.http(), &["a"], 0);
    let ids: Vec<u64> = back.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, acknowledged, "exactly what was acknowledged");
}

/// Publishes 10 KB events on channel `a` until one is refused; returns the
/// ids acknowledged before, and the refusal.
fn publish_until_not_stored(http: &Http) -> (Vec<u64>, common::Resp) {
    let big = format!("\"{}\"", "x".repeat(10_000));
    let mut acknowledged = Vec::new();
    loop {
        let resp = http.post("/channels/a/events", &big);
        match resp.status {
            201 => acknowledged.push(resp.json()["id"].as_u64().unwrap()),
            _ => return (acknowledged, resp),
        }
        assert!(acknowledged.len() < 1000, "storage never ran out");
    }
}

/// Lifts the file size limit of process `pid` (this test's child).
fn raise_file_limit(pid: u32) {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit(2) on a child this test owns, with valid pointers.
    let done = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &unlimited,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(done, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// On a full filesystem (a small tmpfs), a publish is answered `507` with
/// `Retry-After` and a JSON error, polls are served, and once space is
/// freed publishing resumes; a restart finds exactly what was acknowledged.
#[test]
#[cfg_attr(not(abide_root), ignore = "needs root, to mount a small tmpfs")]
fn a_full_disk_is_answered_507_and_publishing_resumes_when_space_is_back() {
    let mount = TempDir::new("tmpfs");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "abide-test", mount.arg()])
        .status()
        .expect("mount runs");
    assert!(mounted.success(), "mount a tmpfs at {}", mount.arg());
    let _unmount = Unmount(mount.arg().to_string());
    // Room taken by something else, given back later.
    let filler = mount.path().join("filler");
    std::fs::write(&filler, vec![0u8; 256 * 1024]).unwrap();
    let data = mount.path().join("data");
    let data_dir = data.to_str().unwrap();

    let flags = [
        "--quiet",
        "--data-dir",
        data_dir,
        "--max-event-bytes",
        "20000",
    ];
    let mut server = Abide::serve(&flags);
    let http = server.http();
    let (mut acknowledged, refusal) = publish_until_not_stored(&http);
    assert_eq!(refusal.status, 507, "{refusal:?}");
    assert!(refusal.header("Retry-After").is_some(), "{refusal:?}");
    assert!(
        refusal.json()["error"]
            .as_str()
            .unwrap()
            .contains("disk is full")
    );
    assert_eq!(
        http.get("/channels/a/events?timeout=0&limit=1000").ids(),
        acknowledged
    );
    // Refused again while full: nothing changes.
    let again = http.post("/channels/a/events", &format!("\"{}\"", "x".repeat(10_000)));
    assert_eq!(again.status, 507, "{again:?}");

    std::fs::remove_file(&filler).unwrap();
    acknowledged.push(http.publish("a", "\"after\""));
    stop(&mut server);

    let mut server = Abide::serve(&flags);
    let back = all_events(&server.http(), &["a"], 0);
    let ids: Vec<u64> = back.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, acknowledged, "exactly what was acknowledged");
    stop(&mut server);
}

/// Unmounts its path on drop (after the servers using it are gone).
struct Unmount(String);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Over a long run of publishes, retention (`--buffer`, `--max-stored-bytes`)
/// deletes from the file what it drops from memory: the database stays
/// within twice `--max-stored-bytes` (plus its fixed pages), the WAL within
/// about 1 MiB (SQLite checkpoints it at 1,000 pages of 1 KiB), and the rows
/// left are the events still held.
#[test]
fn retention_keeps_the_files_bounded_over_a_long_run() {
    let dir = TempDir::new("bounded");
    let max_stored = 256 * 1024;
    let flags = [
        "--buffer",
        "50",
        "--max-stored-bytes",
        "262144",
        "--max-event-bytes",
        "4096",
    ];
    // Each publisher's events alone are about four times what the limit holds.
    const PER_PUBLISHER: u64 = 1_500;
    let mut server = serve(&dir, &flags);
    let addr = server.addr;
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            thread::spawn(move || {
                let http = Http::new(addr);
                let data = format!("\"{}\"", "d".repeat(400));
                for n in 0..PER_PUBLISHER {
                    http.publish(&format!("c{}", (n * 4 + p) % 40), &data);
                }
            })
        })
        .collect();
    let mut largest = (0, 0);
    for publisher in publishers {
        while !publisher.is_finished() {
            largest = largest_files(&dir, largest);
            thread::sleep(Duration::from_millis(20)); // sync-ok: sampling file sizes while publishers run
        }
        common::join_within(publisher, "a publisher");
    }
    let stats = server.http().get("/stats").json();
    assert_eq!(stats["events_published"], 4 * PER_PUBLISHER);
    let held = stats["events_stored"].as_u64().unwrap();
    stop(&mut server);
    largest = largest_files(&dir, largest);

    let (db, wal) = largest;
    assert!(
        db <= 2 * max_stored + 64 * 1024,
        "database grew to {db} bytes"
    );
    assert!(wal <= 1024 * 1024 + 128 * 1024, "WAL grew to {wal} bytes");
    let conn = rusqlite::Connection::open(dir.path().join("abide.db")).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        rows as u64, held,
        "the file holds exactly the events memory held"
    );
    assert!(held < PER_PUBLISHER, "retention dropped most: {held}");
}

/// The largest sizes seen so far of the database and its WAL.
fn largest_files(dir: &TempDir, (db, wal): (u64, u64)) -> (u64, u64) {
    let size = |name: &str| std::fs::metadata(dir.path().join(name)).map_or(0, |m| m.len());
    (db.max(size("abide.db")), wal.max(size("abide.db-wal")))
}

/// Without `--data-dir` the startup line says events are in memory only;
/// with it, where they are stored.
#[test]
fn the_startup_line_says_where_events_are_kept() {
    let memory = Abide::serve(&["--quiet"]);
    assert!(
        memory.startup_line.contains("in memory only"),
        "{}",
        memory.startup_line
    );
    let dir = TempDir::new("startup");
    let stored = serve(&dir, &["--sync", "full"]);
    let expected = format!("events stored in {}", dir.path().join("abide.db").display());
    assert!(
        stored.startup_line.contains(&expected),
        "{}",
        stored.startup_line
    );
    assert!(
        stored.startup_line.contains("sync full"),
        "{}",
        stored.startup_line
    );
}

/// `--sync` without `--data-dir` is refused (exit code 2, naming both
/// flags) rather than silently ignored, and so is a `--sync` mode that
/// does not exist.
#[test]
fn sync_without_a_data_dir_or_of_an_unknown_mode_is_refused() {
    let mut abide = Abide::spawn(&["serve", "--listen", "127.0.0.1:0", "--sync", "full"]);
    assert_eq!(abide.wait_exit().code(), Some(2));
    let stderr = abide.rest_of_stderr().concat();
    assert!(stderr.contains("--sync needs --data-dir"), "{stderr}");

    let dir = TempDir::new("sync-mode");
    let mut abide = Abide::spawn(&["serve", "--data-dir", dir.arg(), "--sync", "always"]);
    assert_eq!(abide.wait_exit().code(), Some(2));
    let stderr = abide.rest_of_stderr().concat();
    assert!(stderr.contains("--sync must be normal or full"), "{stderr}");
}
