//! Readings from /proc: a server's resident memory, threads and CPU ticks (summed
//! over its processes), the kernel's stack and socket memory, and a per-mapping
//! breakdown of resident memory from /proc/PID/smaps. Linux only.

use std::collections::BTreeMap;

/// What one look at a server's processes gives, summed over them.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    pub rss_kib: u64,
    pub threads: u64,
    /// utime + stime, in clock ticks.
    pub ticks: u64,
}

pub fn sample(pids: &[u32]) -> ProcSample {
    let mut s = ProcSample::default();
    for &pid in pids {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            s.rss_kib += status_field(&status, "VmRSS:");
            s.threads += status_field(&status, "Threads:");
        }
        s.ticks += cpu_ticks(pid);
    }
    s
}

/// Whether the process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
        .unwrap_or(false)
}

fn status_field(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    rest.split_whitespace().map(str::to_string).collect()
}

/// utime + stime of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let f = stat_fields(pid);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// Processes whose parent is `pid` (nginx's workers).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let f = stat_fields(child);
            if f.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
                out.push(child);
            }
        }
    }
    out.sort_unstable();
    out
}

pub fn meminfo_kib(field: &str) -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// TCP socket buffer memory of the whole machine (`mem` of the TCP line of
/// /proc/net/sockstat, in pages), in KiB.
pub fn sockstat_tcp_kib() -> i64 {
    let pages = std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("TCP:"))?.to_string();
            let mut words = line.split_whitespace();
            while let Some(word) = words.next() {
                if word == "mem" {
                    return words.next()?.parse::<i64>().ok();
                }
            }
            None
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as i64;
    pages * page / 1024
}

/// The kernel-side figures a held waiter moves: kernel stacks and TCP buffers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Kernel {
    pub kernel_stack_kib: i64,
    pub tcp_mem_kib: i64,
}

pub fn kernel() -> Kernel {
    Kernel {
        kernel_stack_kib: meminfo_kib("KernelStack:"),
        tcp_mem_kib: sockstat_tcp_kib(),
    }
}

/// One mapping of /proc/PID/smaps.
#[derive(Clone, Debug)]
pub struct Mapping {
    pub size_kib: u64,
    pub rss_kib: u64,
    pub perms: String,
    pub path: String,
}

pub fn smaps(pid: u32) -> Vec<Mapping> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            let mut words = line.split_whitespace();
            let _range = words.next();
            let perms = words.next().unwrap_or("").to_string();
            let path = words.nth(3).unwrap_or("").to_string();
            out.push(Mapping {
                size_kib: 0,
                rss_kib: 0,
                perms,
                path,
            });
        } else if let Some(last) = out.last_mut() {
            let value = || -> u64 {
                line.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            if line.starts_with("Size:") {
                last.size_kib = value();
            } else if line.starts_with("Rss:") {
                last.rss_kib = value();
            }
        }
    }
    out
}

/// Resident KiB of a process by kind of mapping. Thread stacks are told apart
/// by the size of their read-write mapping (see `classify`).
pub fn breakdown(
    pid: u32,
    classify: &dyn Fn(&Mapping) -> &'static str,
) -> BTreeMap<&'static str, (u64, u64)> {
    let mut out: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
    for m in smaps(pid) {
        let e = out.entry(classify(&m)).or_default();
        e.0 += m.rss_kib;
        e.1 += 1;
    }
    out
}

/// The machine line of a report: cores, CPU model, memory, kernel, and abide's version.
pub fn machine_line() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .or_else(|| l.strip_prefix("Model"))
        })
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mem = meminfo_kib("MemTotal:") / 1024;
    format!(
        "{cores} cores, {cpu}, {} MiB RAM, Linux {kernel} ({}), abide {}",
        mem,
        std::env::consts::ARCH,
        env!("CARGO_PKG_VERSION")
    )
}

/// A process's storage I/O counters from /proc/PID/io.
#[derive(Clone, Copy, Debug, Default)]
pub struct Io {
    /// Bytes the process caused to be sent to storage (counted when it
    /// dirties a page of the page cache, so in whole pages).
    pub write_bytes: u64,
    /// Of those, bytes that never reached storage (e.g. a truncated file's
    /// dirty pages).
    pub cancelled_write_bytes: u64,
}

pub fn io(pid: u32) -> Option<Io> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    Some(Io {
        write_bytes: field("write_bytes:")?,
        cancelled_write_bytes: field("cancelled_write_bytes:")?,
    })
}

/// The file system holding `path`: (mount point, type, source), from
/// /proc/self/mounts (the longest mount point that is a prefix of the path).
pub fn mount_of(path: &std::path::Path) -> Option<(String, String, String)> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (source, point, fstype) = (w.next()?, w.next()?, w.next()?);
            // Mount points escape spaces as \040.
            let point = point.replace("\\040", " ");
            path.starts_with(&point)
                .then(|| (point, fstype.to_string(), source.to_string()))
        })
        .max_by_key(|(point, _, _)| point.len())
}
