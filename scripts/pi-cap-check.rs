//! The armv7 address-space check (run by `make test-pi`, built for the host
//! with plain `rustc`; std only).
//!
//! Starts the armv7 release server under qemu-user with a 32-bit Pi's address
//! space, holds its default `--max-waiters` polls at once, and checks that it
//! still answers meanwhile: a 513th waiting poll gets 503 + Retry-After, a
//! publish on another channel gets 201 and a poll for it 200. Then one
//! publish answers every held poll (each must get that event), and SIGTERM
//! stops the server with exit code 0. Prints resident memory, threads and the
//! guest address space in use at the cap.
//!
//! Usage: pi-cap-check BINARY QEMU [QEMU-ARGS...]
//! runs `QEMU QEMU-ARGS BINARY serve --listen 127.0.0.1:0 --quiet`.
//!
//! Why not `qemu-arm -R 3G`: qemu-user maps ARM's kernel helper page at
//! 0xffff0000 for every A-profile CPU, so any reserved guest space below
//! 0xffff1000 aborts qemu at start (seen with qemu 7.2 and 10.0). Instead the
//! Makefile gives qemu `-s 1024M`: the guest's main-thread stack takes 1 GiB
//! of the 4 GiB guest space, and the server has what a Pi OS 32-bit process
//! has under the kernel's 3G/1G split, about 3 GiB. This program checks that
//! from the host: it reads qemu's mappings (/proc/PID/maps) inside the guest
//! space and reports what the server uses beside that stack.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Anything this check waits for (emulated thread creation is slow).
const DEADLINE: Duration = Duration::from_secs(120);
/// The poll timeout of the held polls: the server's default --max-timeout, so
/// nothing times out while the check runs.
const HOLD_SECS: u64 = 60;
/// A 32-bit Pi OS process has 3 GiB of address space (3G/1G split).
const PI_ADDRESS_SPACE: u64 = 3 << 30;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: pi-cap-check BINARY QEMU [QEMU-ARGS...]");
        return ExitCode::from(2);
    }
    match run(&args[0], &args[1], &args[2..]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pi-cap-check: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(binary: &str, qemu: &str, qemu_args: &[String]) -> Result<(), String> {
    let started = Instant::now();
    let mut server = Server::start(binary, qemu, qemu_args)?;
    let result = check(&mut server, binary);
    if result.is_err() {
        server.kill();
    }
    let result = result.and_then(|figures| {
        let status = server.terminate()?;
        println!("{figures}");
        println!(
            "pi-cap-check: SIGTERM: server exited with {status} ({:.1} s for the whole check)",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    });
    if result.is_err() {
        eprintln!("server stderr (last lines):\n{}", server.stderr_tail());
    }
    result
}

/// What the check measured at the cap, as printed lines.
fn check(server: &mut Server, binary: &str) -> Result<String, String> {
    let addr = server.addr;
    let stats = json_fields(&expect(get(addr, "/stats")?, 200, "GET /stats")?);
    let cap = stat(&stats, "max_waiters")?;
    println!(
        "pi-cap-check: server up on {addr} (pid {}), max_waiters {cap}; opening {cap} polls",
        server.child.id()
    );

    // Hold `cap` polls on one channel: raw sockets, request sent, nothing read.
    // Keep-alive, as most clients send them: tiny_http then keeps a thread on
    // the connection besides abide's waiter, the costlier case.
    let hold_started = Instant::now();
    let mut held = Vec::with_capacity(cap as usize);
    for i in 0..cap {
        let mut stream =
            TcpStream::connect(addr).map_err(|e| format!("connecting held poll {i}: {e}"))?;
        let request =
            format!("GET /channels/cap/events?timeout={HOLD_SECS} HTTP/1.1\r\nHost: pi\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("sending held poll {i}: {e}"))?;
        held.push(stream);
    }
    let waiters = wait_for_stat(addr, "waiters", |n| n == cap)?;
    let hold_secs = hold_started.elapsed().as_secs_f64();

    // At the cap: measure, then check the server still answers.
    let host = proc_status(server.child.id())?;
    let stats = json_fields(&expect(get(addr, "/stats")?, 200, "GET /stats")?);
    let guest = guest_mappings(server.child.id(), binary)?;

    let over = get(addr, &format!("/channels/cap/events?timeout={HOLD_SECS}"))?;
    let over = expect(over, 503, "a poll beyond the cap")?;
    if !over.head.to_ascii_lowercase().contains("\r\nretry-after:") {
        return Err(format!(
            "the 503 beyond the cap has no Retry-After: {}",
            over.head
        ));
    }

    let t = Instant::now();
    let published = expect(
        post(addr, "/channels/meanwhile/events", "\"at the cap\"")?,
        201,
        "a publish at the cap",
    )?;
    let publish_ms = t.elapsed().as_secs_f64() * 1000.0;
    let id = json_fields(&published)
        .get("id")
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| format!("no id in {}", published.body))?;
    let t = Instant::now();
    let polled = expect(
        get(
            addr,
            &format!(
                "/channels/meanwhile/events?last_event_id={}&timeout=30",
                id - 1
            ),
        )?,
        200,
        "a poll at the cap",
    )?;
    let poll_ms = t.elapsed().as_secs_f64() * 1000.0;
    if !polled.body.contains(&format!("\"id\":{id}")) {
        return Err(format!(
            "the poll at the cap did not get event {id}: {}",
            polled.body
        ));
    }

    // One publish answers every held poll with that event.
    let fanned = expect(
        post(addr, "/channels/cap/events", "\"release\"")?,
        201,
        "the releasing publish",
    )?;
    let release_id = json_fields(&fanned)
        .get("id")
        .cloned()
        .ok_or_else(|| format!("no id in {}", fanned.body))?;
    let deadline = Instant::now() + DEADLINE;
    for (i, mut stream) in held.into_iter().enumerate() {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        stream.set_read_timeout(Some(left)).ok();
        let answer = read_answer(&mut stream).map_err(|e| format!("reading held poll {i}: {e}"))?;
        let answer = expect(answer, 200, &format!("held poll {i}"))?;
        if !answer.body.contains(&format!("\"id\":{release_id}")) {
            return Err(format!(
                "held poll {i} did not get event {release_id}: {}",
                answer.body
            ));
        }
    }
    wait_for_stat(addr, "waiters", |n| n == 0)?;

    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let mut out = String::new();
    out.push_str(&format!(
        "pi-cap-check: PASS: {waiters} polls held at once (cap {cap}) after {hold_secs:.1} s; meanwhile a 513th waiting poll got 503 + Retry-After, a publish 201 in {publish_ms:.0} ms, a poll 200 in {poll_ms:.0} ms; one publish then answered all {cap} held polls\n"
    ));
    out.push_str(&format!(
        "pi-cap-check: at the cap: qemu process (the emulated server plus the emulator): VmRSS {:.1} MiB, {} threads\n",
        mib(host.rss_kib * 1024),
        host.threads
    ));
    out.push_str(&format!(
        "pi-cap-check: at the cap: the server's own /stats: resident_bytes {}, threads {}\n",
        stats
            .get("resident_bytes")
            .map(|b| b
                .parse::<u64>()
                .map(|b| format!("{:.1} MiB", mib(b)))
                .unwrap_or_else(|_| b.clone()))
            .unwrap_or_else(|| "-".into()),
        stats.get("threads").cloned().unwrap_or_else(|| "-".into())
    ));
    out.push_str(&format!(
        "pi-cap-check: at the cap: guest address space mapped {:.1} MiB of the {:.0} MiB a 32-bit Pi OS process has ({:.1} MiB beside the {:.0} MiB main-thread stack that stands for the kernel's top 1 GiB)",
        mib(guest.mapped),
        mib(PI_ADDRESS_SPACE),
        mib(guest.mapped - guest.ballast),
        mib(guest.ballast),
    ));
    if guest.ballast < 1 << 30 {
        return Err(format!(
            "{out}\nno 1 GiB main-thread stack in the guest: give qemu `-s 1024M`, so that the server has a Pi's 3 GiB"
        ));
    }
    if guest.mapped - guest.ballast >= PI_ADDRESS_SPACE {
        return Err(format!("{out}\nthe server maps more than a Pi's 3 GiB"));
    }
    Ok(out)
}

// ---- the server process -------------------------------------------------

struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Server {
    fn start(binary: &str, qemu: &str, qemu_args: &[String]) -> Result<Server, String> {
        let mut child = Command::new(qemu)
            .args(qemu_args)
            .arg(binary)
            .args(["serve", "--listen", "127.0.0.1:0", "--quiet"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {qemu} {binary}: {e}"))?;
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    return Err(format!(
                        "no startup line from the server; its stderr:\n{}",
                        seen.join("\n")
                    ));
                }
            };
            eprintln!("server: {line}");
            let addr = line
                .split_once("listening on http://")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .and_then(|a| a.parse::<SocketAddr>().ok());
            seen.push(line);
            if let Some(addr) = addr {
                return Ok(Server {
                    child,
                    addr,
                    stderr: rx,
                    seen,
                });
            }
        }
    }

    fn stderr_tail(&mut self) -> String {
        while let Ok(line) = self.stderr.try_recv() {
            self.seen.push(line);
        }
        let from = self.seen.len().saturating_sub(30);
        self.seen[from..].join("\n")
    }

    /// SIGTERM (by pid, through kill(1)); waits for the exit.
    fn terminate(&mut self) -> Result<String, String> {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .map_err(|e| format!("kill: {e}"))?;
        if !ok.success() {
            return Err("kill -TERM failed".into());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(status.to_string()),
                Ok(Some(status)) => {
                    return Err(format!("after SIGTERM the server exited with {status}"))
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)), // re-check the exit before its deadline
                Ok(None) => {
                    self.kill();
                    return Err("the server did not exit within 30 s of SIGTERM".into());
                }
                Err(e) => return Err(format!("waiting for the server: {e}")),
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- what the host sees of the qemu process ------------------------------

struct HostStatus {
    rss_kib: u64,
    threads: u64,
}

fn proc_status(pid: u32) -> Result<HostStatus, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok(HostStatus {
        rss_kib: field("VmRSS:")?,
        threads: field("Threads:")?,
    })
}

struct GuestMappings {
    /// Bytes of accessible (not PROT_NONE) mappings inside the guest space.
    mapped: u64,
    /// The largest of them: the main-thread stack that `-s 1024M` made.
    ballast: u64,
}

/// qemu-user keeps the whole 32-bit guest space in one host region starting
/// at guest_base, and maps the guest's own mappings into it. The guest binary
/// is mapped from its file at guest_base + its first segment's address, so
/// the host's /proc/PID/maps tells guest_base; every accessible mapping in
/// [guest_base, guest_base + 4 GiB) is the guest's.
fn guest_mappings(pid: u32, binary: &str) -> Result<GuestMappings, String> {
    let path = std::fs::canonicalize(binary).map_err(|e| format!("{binary}: {e}"))?;
    let path = path.to_string_lossy().into_owned();
    let first_vaddr = first_load_vaddr(binary)?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| format!("/proc/{pid}/maps: {e}"))?;
    let mut ranges = Vec::new();
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
            continue;
        };
        let file = parts.nth(3).unwrap_or("");
        let Some((lo, hi)) = range.split_once('-') else {
            continue;
        };
        let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16)) else {
            continue;
        };
        ranges.push((lo, hi, perms.to_string(), file.to_string()));
    }
    let image = ranges
        .iter()
        .filter(|(_, _, _, file)| *file == path)
        .map(|(lo, _, _, _)| *lo)
        .min()
        .ok_or_else(|| format!("{path} is not mapped in qemu's process {pid}"))?;
    let base = image - (first_vaddr & !0xfff);
    let end = base + (1u64 << 32);
    let mut mapped = 0;
    let mut ballast = 0;
    for (lo, hi, perms, _) in &ranges {
        if *lo >= base && *hi <= end && !perms.starts_with("---") {
            mapped += hi - lo;
            ballast = ballast.max(hi - lo);
        }
    }
    Ok(GuestMappings { mapped, ballast })
}

/// The virtual address of the first PT_LOAD segment of a 32-bit ELF file.
fn first_load_vaddr(binary: &str) -> Result<u64, String> {
    let elf = std::fs::read(binary).map_err(|e| format!("{binary}: {e}"))?;
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64)
    };
    if elf.get(..5) != Some(b"\x7fELF\x01".as_slice()) {
        return Err(format!("{binary} is not a 32-bit ELF file"));
    }
    let bad = || format!("{binary}: truncated ELF header");
    let phoff = u32_at(0x1c).ok_or_else(bad)? as usize;
    let phentsize = u16_at(0x2a).ok_or_else(bad)?;
    let phnum = u16_at(0x2c).ok_or_else(bad)?;
    (0..phnum)
        .map(|i| phoff + i * phentsize)
        .filter(|&ph| u32_at(ph) == Some(1))
        .filter_map(|ph| u32_at(ph + 8))
        .min()
        .ok_or_else(|| format!("{binary}: no PT_LOAD segment"))
}

// ---- HTTP over raw sockets ------------------------------------------------

struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn parse(raw: &[u8]) -> Result<Answer, String> {
        let text = String::from_utf8_lossy(raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status in {head:?}"))?;
        Ok(Answer {
            status,
            head: head.to_string(),
            body: body.to_string(),
        })
    }
}

fn expect(answer: Answer, status: u16, what: &str) -> Result<Answer, String> {
    if answer.status == status {
        Ok(answer)
    } else {
        Err(format!(
            "{what}: expected {status}, got {}: {} {}",
            answer.status, answer.head, answer.body
        ))
    }
}

/// One answer from a keep-alive connection: the head, then Content-Length
/// bytes of body.
fn read_answer(stream: &mut TcpStream) -> Result<Answer, String> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&raw))),
            Ok(_) => raw.push(byte[0]),
            Err(e) => return Err(e.to_string()),
        }
    }
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no Content-Length in {head:?}"))?;
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).map_err(|e| e.to_string())?;
    raw.extend_from_slice(&body);
    Answer::parse(&raw)
}

fn exchange(addr: SocketAddr, request: &str) -> Result<Answer, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(DEADLINE)).ok();
    stream.set_write_timeout(Some(DEADLINE)).ok();
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read: {e}"))?;
    Answer::parse(&raw)
}

fn get(addr: SocketAddr, target: &str) -> Result<Answer, String> {
    exchange(
        addr,
        &format!("GET {target} HTTP/1.1\r\nHost: pi\r\nConnection: close\r\n\r\n"),
    )
}

fn post(addr: SocketAddr, target: &str, body: &str) -> Result<Answer, String> {
    exchange(
        addr,
        &format!(
            "POST {target} HTTP/1.1\r\nHost: pi\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// The top-level number and string fields of a flat JSON object, as text
/// (enough for /stats and an event; no JSON crate in a std-only program).
fn json_fields(answer: &Answer) -> HashMap<String, String> {
    let body = answer
        .body
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}');
    let mut fields = HashMap::new();
    for pair in body.split(',') {
        if let Some((k, v)) = pair.split_once(':') {
            fields.insert(
                k.trim().trim_matches('"').to_string(),
                v.trim().trim_matches('"').to_string(),
            );
        }
    }
    fields
}

fn stat(fields: &HashMap<String, String>, name: &str) -> Result<u64, String> {
    fields
        .get(name)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("/stats has no number {name}: {fields:?}"))
}

/// Re-reads /stats until `name` satisfies `ok`; returns its value.
fn wait_for_stat(addr: SocketAddr, name: &str, ok: impl Fn(u64) -> bool) -> Result<u64, String> {
    let deadline = Instant::now() + DEADLINE;
    let mut last = None;
    while Instant::now() < deadline {
        let stats = json_fields(&expect(get(addr, "/stats")?, 200, "GET /stats")?);
        let value = stat(&stats, name)?;
        if ok(value) {
            return Ok(value);
        }
        last = Some(value);
        thread::sleep(Duration::from_millis(100)); // re-check a condition before its deadline
    }
    Err(format!("/stats {name} stayed at {last:?} for {DEADLINE:?}"))
}
