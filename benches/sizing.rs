//! Sizing benchmark: what held polls cost the server process.
//!
//! Starts the release `abide` binary once per row, holds N long polls on one
//! channel (raw sockets, one request each, nothing read until the end), and
//! reads the server's resident memory (VmRSS) and thread count from
//! /proc/PID/status, the kernel's stack and TCP memory from /proc/meminfo and
//! /proc/net/sockstat, and the CPU ticks the server used while the polls were
//! held with nothing happening. Then one publish answers them all, and every
//! answer is checked. Writes a Markdown table to stdout and `target/sizing.md`.
//!
//! Run with `make bench-sizing` (or `cargo bench --bench sizing`). Linux only.
//! `SIZING_WAITERS=0,100,512` picks the rows; `SIZING_IDLE_SECS` the idle hold.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The /proc readings the comparison benchmark uses too.
#[allow(dead_code)]
#[path = "compare/src/procfs.rs"]
mod procfs;

const DEADLINE: Duration = Duration::from_secs(60);

struct Row {
    waiters: usize,
    rss_kib: u64,
    threads: u64,
    kernel_stack_kib: i64,
    tcp_mem_kib: i64,
    idle_ticks: u64,
}

fn main() {
    let rows: Vec<usize> = std::env::var("SIZING_WAITERS")
        .unwrap_or_else(|_| "0,100,512".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("SIZING_WAITERS: comma-separated counts")
        })
        .collect();
    let idle = Duration::from_secs(
        std::env::var("SIZING_IDLE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    );
    let max_waiters = rows.iter().copied().max().unwrap_or(0).max(512);
    let mut table = Vec::new();
    for &n in &rows {
        table.push(measure(n, max_waiters, idle));
    }
    let base = table.iter().find(|r| r.waiters == 0).map(|r| r.rss_kib);
    let mut out = String::new();
    out.push_str(&format!(
        "Measured by `make bench-sizing` (benches/sizing.rs), release build, {}; \
         server started with `--max-waiters {max_waiters}`; idle CPU over {} s with the polls held.\n\n",
        procfs::machine_line(),
        idle.as_secs()
    ));
    out.push_str("| polls held | resident memory (VmRSS) | per held poll | threads | kernel stacks (delta) | TCP buffers (delta) | CPU ticks while idle |\n");
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in &table {
        let per = match (base, r.waiters) {
            (Some(b), n) if n > 0 => format!("{:.1} KiB", (r.rss_kib as f64 - b as f64) / n as f64),
            _ => "–".into(),
        };
        out.push_str(&format!(
            "| {} | {:.1} MiB | {} | {} | {} KiB | {} KiB | {} |\n",
            r.waiters,
            r.rss_kib as f64 / 1024.0,
            per,
            r.threads,
            r.kernel_stack_kib,
            r.tcp_mem_kib,
            r.idle_ticks
        ));
    }
    print!("{out}");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/target/sizing.md");
    std::fs::write(path, &out).expect("write target/sizing.md");
    eprintln!("written to {path}");
}

fn measure(n: usize, max_waiters: usize, idle: Duration) -> Row {
    let server = Server::start(max_waiters);
    let addr = server.addr;
    // Let startup allocations settle: a first request warms the paths every poll uses.
    server.publish("warmup");
    let kernel_before = procfs::meminfo_kib("KernelStack:");
    let tcp_before = procfs::sockstat_tcp_kib();

    let mut polls = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .write_all(b"GET /channels/sizing/events?timeout=120 HTTP/1.1\r\nHost: bench\r\n\r\n")
            .expect("send poll");
        polls.push(stream);
    }
    wait_until(&format!("{n} waiters"), || {
        server.stat("waiters") == n as u64
    });

    let ticks_before = procfs::cpu_ticks(server.pid());
    std::thread::sleep(idle); // the measurement itself: CPU used while nothing happens
    let idle_ticks = procfs::cpu_ticks(server.pid()) - ticks_before;

    let sample = procfs::sample(&[server.pid()]);
    let (rss_kib, threads) = (sample.rss_kib, sample.threads);
    let row = Row {
        waiters: n,
        rss_kib,
        threads,
        kernel_stack_kib: procfs::meminfo_kib("KernelStack:") - kernel_before,
        tcp_mem_kib: procfs::sockstat_tcp_kib() - tcp_before,
        idle_ticks,
    };

    // Release them all with one publish and check every answer.
    server.publish("sizing");
    for stream in &mut polls {
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let answer = read_response(stream);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "a held poll got {answer:?}"
        );
    }
    drop(polls);
    eprintln!(
        "{n:>5} polls: {:.1} MiB, {} threads, {} idle ticks",
        row.rss_kib as f64 / 1024.0,
        row.threads,
        row.idle_ticks
    );
    server.stop();
    row
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(max_waiters: usize) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_abide"))
            .args(["serve", "--listen", "127.0.0.1:0", "--quiet"])
            .args(["--max-waiters", &max_waiters.to_string()])
            .stderr(Stdio::piped())
            .spawn()
            .expect("start abide");
        let stderr = child.stderr.take().unwrap();
        let mut line = String::new();
        BufReader::new(stderr)
            .read_line(&mut line)
            .expect("startup line");
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in startup line {line:?}"));
        Server { child, addr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn request(&self, head: &str, body: &str) -> String {
        let mut stream = TcpStream::connect(self.addr).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let msg = format!(
            "{head} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(msg.as_bytes()).expect("send");
        let mut out = String::new();
        let _ = stream.read_to_string(&mut out);
        out
    }

    fn publish(&self, channel: &str) {
        let answer = self.request(
            &format!("POST /channels/{channel}/events"),
            r#"{"reading":21.5}"#,
        );
        assert!(answer.starts_with("HTTP/1.1 201"), "publish got {answer:?}");
    }

    fn stat(&self, name: &str) -> u64 {
        let answer = self.request("GET /stats", "");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
        let stats: serde_json::Value = serde_json::from_str(body).expect("stats JSON");
        stats[name].as_u64().expect("numeric stat")
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Reads one HTTP response (headers and a Content-Length body).
fn read_response(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).expect("read answer");
        assert!(n > 0, "connection closed before the answer");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return text.into_owned();
            }
        }
    }
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
