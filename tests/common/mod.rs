//! The one helper integration tests share: start the real server on an
//! ephemeral loopback port, talk HTTP to it (ureq, or raw bytes), and wait for
//! conditions with deadlines.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use abide::{Config, Shutdown};

/// Hang guard for anything a test waits on (generous: the suite must not be
/// flaky on 2 loaded cores).
/// A cross build's tests run under qemu-user (`make test-pi`, build.rs sets
/// `abide_cross`), two to four times slower, and get three times as long.
pub const HANG_GUARD: Duration = if cfg!(abide_cross) {
    Duration::from_secs(90)
} else {
    Duration::from_secs(30)
};

/// A server started in this process; stopped (and joined) on drop. Talk to
/// it through its `Http` methods (`server.get(…)`).
pub struct TestServer {
    http: Http,
    shutdown: Shutdown,
    thread: Option<JoinHandle<()>>,
}

/// An HTTP client for one server (in this process or a child `Abide`).
#[derive(Clone)]
pub struct Http {
    pub addr: SocketAddr,
    agent: ureq::Agent,
}

impl std::ops::Deref for TestServer {
    type Target = Http;
    fn deref(&self) -> &Http {
        &self.http
    }
}

/// A finished HTTP exchange.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The ids of a `200` poll answer.
    pub fn ids(&self) -> Vec<u64> {
        assert_eq!(self.status, 200, "not a 200 poll answer: {self:?}");
        self.json()
            .as_array()
            .expect("array")
            .iter()
            .map(|e| e["id"].as_u64().expect("integer id"))
            .collect()
    }

    /// Asserts a JSON error answer with `status` whose message contains `word`.
    pub fn assert_error(&self, status: u16, word: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let message = self.json()["error"]
            .as_str()
            .expect("error string")
            .to_string();
        assert!(
            message.contains(word),
            "error {message:?} does not name {word:?}"
        );
    }
}

/// A config for tests: loopback, port 0, no access log.
pub fn config() -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        quiet: true,
        ..Config::default()
    }
}

pub fn start() -> TestServer {
    start_with(config())
}

pub fn start_with(config: Config) -> TestServer {
    let running = abide::start(config).expect("server starts");
    let addr = running.local_addr();
    let shutdown = running.shutdown_handle();
    let thread = thread::spawn(move || running.wait());
    TestServer {
        http: Http::new(addr),
        shutdown,
        thread: Some(thread),
    }
}

impl Http {
    pub fn new(addr: SocketAddr) -> Http {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(200)))
            .build()
            .into();
        Http { addr, agent }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn get(&self, path: &str) -> Resp {
        into_resp(self.agent.get(self.url(path)).call())
    }

    pub fn get_with_header(&self, path: &str, name: &str, value: &str) -> Resp {
        into_resp(self.agent.get(self.url(path)).header(name, value).call())
    }

    pub fn post(&self, path: &str, body: &str) -> Resp {
        into_resp(
            self.agent
                .post(self.url(path))
                .header("Content-Type", "application/json")
                .send(body),
        )
    }

    /// Like `post`, but `None` when no answer came (the server went away).
    pub fn try_post(&self, path: &str, body: &str) -> Option<Resp> {
        let sent = self
            .agent
            .post(self.url(path))
            .header("Content-Type", "application/json")
            .send(body);
        sent.ok().map(read_resp)
    }

    pub fn delete(&self, path: &str) -> Resp {
        into_resp(self.agent.delete(self.url(path)).call())
    }

    /// Any request: `method` on `path` with `headers`, and a JSON `body`
    /// when given.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let result = match body {
            Some(body) => {
                let request = request
                    .header("Content-Type", "application/json")
                    .body(body.to_string())
                    .expect("a request");
                self.agent.run(request)
            }
            None => self.agent.run(request.body(()).expect("a request")),
        };
        into_resp(result)
    }

    /// Publishes `data` on `channel` and returns the stored event's id.
    pub fn publish(&self, channel: &str, data: &str) -> u64 {
        let resp = self.post(&format!("/channels/{channel}/events"), data);
        assert_eq!(resp.status, 201, "{resp:?}");
        resp.json()["id"].as_u64().expect("id")
    }

    pub fn stats(&self) -> serde_json::Value {
        let resp = self.get("/stats");
        assert_eq!(resp.status, 200, "{resp:?}");
        resp.json()
    }

    /// Waits until `/stats` field `name` satisfies `ok`, or panics at the deadline.
    pub fn wait_for_stat(&self, name: &str, ok: impl Fn(u64) -> bool) {
        let what = format!("stat {name}");
        wait_until(&what, || self.stats()[name].as_u64().is_some_and(&ok));
    }

    /// Starts `GET path` on its own thread; join it for the answer.
    pub fn spawn_get(&self, path: &str) -> JoinHandle<Resp> {
        let agent = self.agent.clone();
        let url = self.url(path);
        thread::spawn(move || into_resp(agent.get(url).call()))
    }
}

impl TestServer {
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Triggers shutdown and waits for the server to finish; returns how long
    /// the stop took.
    pub fn stop(mut self) -> Duration {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Duration {
        let begun = Instant::now();
        self.shutdown.trigger();
        if let Some(thread) = self.thread.take() {
            join_within(thread, "server stop");
        }
        begun.elapsed()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop_inner();
        }
    }
}

fn into_resp(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Resp {
    read_resp(result.unwrap_or_else(|e| panic!("request failed: {e}")))
}

/// Reads a ureq response whole (status, headers, body up to 256 MiB).
pub fn read_resp(mut response: ureq::http::Response<ureq::Body>) -> Resp {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = response
        .body_mut()
        .with_config()
        .limit(256 * 1024 * 1024)
        .read_to_string()
        .unwrap_or_default();
    Resp {
        status,
        headers,
        body,
    }
}

/// Joins `thread`, panicking if it has not finished within `HANG_GUARD`.
pub fn join_within<T>(thread: JoinHandle<T>, what: &str) -> T {
    wait_until(what, || thread.is_finished());
    thread
        .join()
        .unwrap_or_else(|_| panic!("{what}: thread panicked"))
}

/// Polls `condition` until it holds, panicking after `HANG_GUARD`.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG_GUARD;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5)); // sync-ok: re-check a condition before its deadline
    }
}

/// Sends `bytes` on a fresh connection and returns everything the server
/// writes back until it closes the connection or `read_for` passes.
pub fn raw(addr: SocketAddr, bytes: &[u8], read_for: Duration) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(read_for)).unwrap();
    stream.write_all(bytes).expect("send");
    read_until_close(&mut stream)
}

/// Reads until EOF, a read timeout, or an error; returns what was read. A
/// read interrupted by a signal (the test process gets SIGCHLD from the
/// servers it spawns) is retried.
pub fn read_until_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first final answer in `buf`, once it is complete (by Content-Length).
pub fn complete_response(buf: &[u8]) -> Option<Resp> {
    let mut rest = buf;
    loop {
        let end = rest.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?;
        let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let body_start = end + 4;
        if (100..200).contains(&status) {
            rest = &rest[body_start..];
            continue;
        }
        if rest.len() < body_start + length {
            return None;
        }
        let body = String::from_utf8_lossy(&rest[body_start..body_start + length]).into_owned();
        return Some(Resp {
            status,
            headers,
            body,
        });
    }
}

/// A number field of `/proc/PID/status` (`Threads:`, `VmRSS:` in KiB).
pub fn proc_status_field(pid: u32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {status}"))
}

/// Parses the first final answer of a complete raw exchange.
pub fn parse_raw(raw: &str) -> Resp {
    complete_response(raw.as_bytes()).unwrap_or_else(|| panic!("no complete answer in {raw:?}"))
}

/// Publishes `"mark"` on `channel` over a raw connection; returns the id.
pub fn publish_raw(addr: SocketAddr, channel: &str) -> u64 {
    let request = format!(
        "POST /channels/{channel}/events HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nConnection: close\r\n\r\n\"mark\""
    );
    let resp = parse_raw(&raw(addr, request.as_bytes(), HANG_GUARD));
    assert_eq!(resp.status, 201, "{resp:?}");
    resp.json()["id"].as_u64().expect("id")
}

/// The status code of the first final (non-1xx) response in raw text.
pub fn final_status(raw: &str) -> Option<u16> {
    raw.split("HTTP/1.")
        .filter_map(|part| part.get(2..5)?.parse::<u16>().ok())
        .find(|code| *code >= 200)
}

/// Runs `scenario` in a child process (this test binary, filtered to the
/// test `name`): the child has a descriptor table and limits of its own, and
/// a crash there fails that test alone.
pub fn isolated(name: &str, scenario: fn()) {
    const CHILD: &str = "ABIDE_ISOLATED_CHILD";
    if std::env::var(CHILD).as_deref() == Ok(name) {
        return scenario();
    }
    let exe = std::env::current_exe().expect("test binary");
    let child = std::process::Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, name)
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the child test");
    // The child's own waits end within its hang guards; allow for several.
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    thread::spawn(move || done_tx.send(child.wait_with_output().expect("child output")));
    let output = done_rx.recv_timeout(HANG_GUARD * 3).unwrap_or_else(|_| {
        // SAFETY: kill(2) on the child this test started, by its id.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        panic!(
            "{name}: the child process did not finish within {:?}",
            HANG_GUARD * 3
        )
    });
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    assert!(
        output.status.success(),
        "the process running {name} failed: {:?}\nits stderr ends:\n{}",
        output.status,
        tail.join("\n")
    );
}

/// A fresh directory under the system's temporary directory, removed (with
/// what it holds) on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("abide-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// The path as a flag value.
    pub fn arg(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The real `abide` binary; killed on drop.
pub struct Abide {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub startup_line: String,
    stderr: std::sync::mpsc::Receiver<String>,
    stdout: std::sync::mpsc::Receiver<String>,
}

impl Abide {
    pub fn spawn(args: &[&str]) -> Abide {
        Abide::spawn_with(args, |_| {})
    }

    /// Like `spawn`, with the command adjusted first (limits, a user).
    pub fn spawn_with(args: &[&str], adjust: impl FnOnce(&mut std::process::Command)) -> Abide {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_abide"));
        adjust(&mut command);
        let mut child = command
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("abide starts");
        let stdout = lines(child.stdout.take().expect("stdout"));
        let stderr = lines(child.stderr.take().expect("stderr"));
        Abide {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            startup_line: String::new(),
            stderr,
            stdout,
        }
    }

    /// `abide serve --listen 127.0.0.1:0 FLAGS`, once its startup line is out.
    pub fn serve(flags: &[&str]) -> Abide {
        Abide::serve_with(flags, |_| {})
    }

    /// Like `serve`, with the command adjusted first (see `spawn_with`).
    pub fn serve_with(flags: &[&str], adjust: impl FnOnce(&mut std::process::Command)) -> Abide {
        Abide::serve_at("127.0.0.1:0", flags, adjust)
    }

    /// Like `serve_with`, listening on `listen` (a port a killed abide used).
    pub fn serve_at(
        listen: &str,
        flags: &[&str],
        adjust: impl FnOnce(&mut std::process::Command),
    ) -> Abide {
        let mut args = vec!["serve", "--listen", listen];
        args.extend(flags);
        let mut abide = Abide::spawn_with(&args, adjust);
        let line = abide.next_line("the startup line", |l| l.contains("listening on http://"));
        let (_, rest) = line.split_once("listening on http://").expect("matched");
        let addr = rest.split_whitespace().next().unwrap_or_default();
        abide.addr = addr
            .parse()
            .unwrap_or_else(|e| panic!("address in {line:?}: {e}"));
        abide.startup_line = line;
        abide
    }

    /// The next stderr line that satisfies `wanted` (skipping others).
    pub fn next_line(&self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let mut lines = self.lines_until(what, |seen| seen.last().is_some_and(|l| wanted(l)));
        lines.pop().expect("the wanted line")
    }

    /// Stderr lines read until `enough` holds for all read so far.
    pub fn lines_until(&self, what: &str, enough: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + HANG_GUARD;
        let mut seen = Vec::new();
        while !enough(&seen) {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(wait) {
                Ok(line) => seen.push(line),
                Err(e) => panic!("no {what} on stderr ({e:?}); got {seen:?}"),
            }
        }
        seen
    }

    /// A client for this server.
    pub fn http(&self) -> Http {
        Http::new(self.addr)
    }

    /// The next stdout line (waiting for it up to `HANG_GUARD`).
    pub fn next_stdout_line(&self, what: &str) -> String {
        self.stdout
            .recv_timeout(HANG_GUARD)
            .unwrap_or_else(|e| panic!("no {what} on stdout ({e:?})"))
    }

    /// Every stderr line not read yet, up to the end (call after exit).
    pub fn rest_of_stderr(&self) -> Vec<String> {
        drain(&self.stderr)
    }

    /// Everything written to stdout (call after exit).
    pub fn stdout_text(&self) -> String {
        drain(&self.stdout).concat()
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) with the pid of a child this test owns and has not reaped.
        let sent = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(sent, 0, "kill failed");
    }

    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut status = None;
        wait_until("abide to exit", || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        status.expect("exited")
    }
}

impl Drop for Abide {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines of `reader` (each with its newline), sent as they come.
fn lines(reader: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut reader = std::io::BufReader::new(reader);
        let mut line = String::new();
        while matches!(std::io::BufRead::read_line(&mut reader, &mut line), Ok(n) if n > 0) {
            if tx.send(std::mem::take(&mut line)).is_err() {
                return;
            }
        }
    });
    rx
}

/// Everything left on `rx` until its writer has hit end of file.
fn drain(rx: &std::sync::mpsc::Receiver<String>) -> Vec<String> {
    let deadline = Instant::now() + HANG_GUARD;
    let mut out = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => out.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return out,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("output did not end; got {out:?}")
            }
        }
    }
}
