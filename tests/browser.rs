//! The demo page in a real browser: runs `tests/browser/chat.mjs`, and
//! `tests/browser/auth.mjs` against a server with `--auth-file` (playwright-core
//! driving Debian's headless Chromium), against the real binary. Ignored,
//! with the reason, when the build script found no node, Chromium or npm
//! packages (`abide_browser`); `.ci/run` installs them and sets
//! `ABIDE_REQUIRE_TOOLS=1`, which makes their absence a build failure. The
//! tests themselves never reach the network.

mod common;

use std::env;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{Abide, TempDir};

/// Whole-script hang guard; a pass takes about 5 seconds.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(180);

/// Two browser tabs chat through the demo page over Server-Sent Events, markup in a message stays text, EventSource resumes by itself after a server restart with nothing missed or repeated (a durable data directory), a gap is shown, and the long-poll fallback works.
#[test]
#[cfg_attr(
    not(abide_browser),
    ignore = "needs node, Debian's chromium and `npm ci --prefix tests/browser` (.ci/run installs them)"
)]
fn demo_page_works_in_headless_chromium() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium =
        prerequisites(&dir).unwrap_or_else(|why| panic!("the browser test cannot run: {why}"));
    // CARGO_TARGET_TMPDIR is <target dir>/tmp: the screenshot goes beside it.
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("demo-screenshot.png");
    let started = Instant::now();
    let mut node = Command::new("node");
    node.arg(dir.join("chat.mjs"))
        .arg(env!("CARGO_BIN_EXE_abide"))
        .arg(&screenshot)
        .env("ABIDE_CHROMIUM", &chromium);
    let (status, stdout, stderr) = run_node(node);
    print!("{stdout}");
    eprint!("{stderr}");
    let status_text = status.map_or("no exit status".into(), |s| s.to_string());
    println!(
        "browser test: {status_text} after {:.1} s; screenshot: {}",
        started.elapsed().as_secs_f64(),
        screenshot.display()
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "tests/browser/chat.mjs failed ({status_text}); its output is above"
    );
}

/// Tokens of the auth file `demo_page_asks_for_a_token_and_uses_it` serves
/// with: the writer's has characters that must be escaped in a URL.
const WRITER: &str = "writer +/=&?#% token";
const READER: &str = "reader-token";
const POSTER: &str = "poster-token";

/// With --auth-file the demo page in headless Chromium says a token is needed (401) and stops asking, reads and publishes with the token from its field (EventSource `?token=`, the fetches' Bearer header, the long poll too, kept in localStorage), says when a token may not read or publish (403), and keeps the figures' refusal quiet.
#[test]
#[cfg_attr(
    not(abide_browser),
    ignore = "needs node, Debian's chromium and `npm ci --prefix tests/browser` (.ci/run installs them)"
)]
fn demo_page_asks_for_a_token_and_uses_it() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium =
        prerequisites(&dir).unwrap_or_else(|why| panic!("the browser test cannot run: {why}"));
    let files = TempDir::new("browser-auth");
    let hash = abide::token_hash_text;
    let auth = files.path().join("auth");
    let rules = format!(
        "token writer {} publish,subscribe chat\n\
         token writer {} admin *\n\
         token reader {} subscribe chat\n\
         token poster {} publish chat\n",
        hash(WRITER),
        hash(WRITER),
        hash(READER),
        hash(POSTER),
    );
    std::fs::write(&auth, rules).expect("write the auth file");
    let mut server = Abide::serve(&["--auth-file", auth.to_str().expect("UTF-8 path")]);
    let started = Instant::now();
    let mut node = Command::new("node");
    // Run from tests/browser, so that the script finds playwright-core.
    node.arg(dir.join("auth.mjs"))
        .current_dir(&dir)
        .env("ABIDE_CHROMIUM", &chromium)
        .env("ABIDE_ADDR", server.addr.to_string())
        .env("ABIDE_WRITER", WRITER)
        .env("ABIDE_READER", READER)
        .env("ABIDE_POSTER", POSTER);
    let (status, stdout, stderr) = run_node(node);
    print!("{stdout}");
    eprint!("{stderr}");
    let status_text = status.map_or("no exit status".into(), |s| s.to_string());
    println!(
        "browser auth test: {status_text} after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if !status.is_some_and(|s| s.success()) {
        server.signal(libc::SIGTERM);
        server.wait_exit();
        eprintln!("abide's log:\n{}", server.rest_of_stderr().concat());
        panic!("the auth script failed ({status_text}); its output is above");
    }
}

/// Chromium's path when Node, Chromium and the script's node_modules are all
/// there, or why not.
fn prerequisites(dir: &Path) -> Result<PathBuf, String> {
    if !runs("node", &["--version"]) {
        return Err("`node` is not on PATH (apt-get install nodejs npm)".into());
    }
    let chromium = find_chromium()
        .ok_or("no Chromium (ABIDE_CHROMIUM, /usr/bin/chromium or `chromium` on PATH; apt-get install chromium)")?;
    if !dir.join("node_modules/playwright-core").is_dir() {
        return Err(format!(
            "{}/node_modules is missing: run `npm ci --prefix {0}` (tests never fetch it)",
            dir.display()
        ));
    }
    Ok(chromium)
}

fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `ABIDE_CHROMIUM`, else /usr/bin/chromium, else `chromium` on PATH.
fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = env::var_os("ABIDE_CHROMIUM") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let debian = PathBuf::from("/usr/bin/chromium");
    if debian.is_file() {
        return Some(debian);
    }
    env::split_paths(&env::var_os("PATH")?)
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
}

/// Runs a node script to completion (killed by PID past the deadline): its
/// exit status (None if it could not be had), its stdout and its stderr.
fn run_node(mut node: Command) -> (Option<ExitStatus>, String, String) {
    let mut child = node
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    let pid = child.id() as libc::pid_t;
    let out = read_all(child.stdout.take().expect("stdout"));
    let err = read_all(child.stderr.take().expect("stderr"));
    let (done_tx, done_rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let status = child.wait();
        let _ = done_tx.send(());
        status
    });
    let mut note = String::new();
    if done_rx.recv_timeout(SCRIPT_DEADLINE).is_err() {
        // SIGTERM first: the script then kills the servers it started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        if done_rx.recv_timeout(Duration::from_secs(10)).is_err() {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        note = format!("\n(killed: still running after {SCRIPT_DEADLINE:?})");
    }
    let status = waiter.join().expect("waiter thread").ok();
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader") + &note;
    (status, stdout, stderr)
}

fn read_all(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    })
}
