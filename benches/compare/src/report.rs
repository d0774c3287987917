//! BENCHMARKS.md: the machine line, the commands, the headline ratios, a table
//! per scenario with every server side by side and abide's ratio to each (for
//! scenario 6, abide's stores side by side and their ratio to memory), the
//! memory breakdown of abide's held waiters, scenario 2's streams beside its
//! long polls, scenario 7's access configurations side by side and their
//! ratio to none, scenario 8's nodes on Redis beside one node in memory and
//! their ratio to it, and the notes.

use std::fmt::Write as _;

use crate::scenarios::{
    AccessRow, DurabilityRow, FanoutRow, HoldRow, ImmediateRow, RedisFanoutRow, ThroughputRow,
    Transport,
};
use crate::servers::{Access, Kind, Store};

pub struct Results {
    pub kinds: Vec<Kind>,
    pub hold: Vec<(Kind, HoldRow)>,
    pub fanout: Vec<(Kind, FanoutRow)>,
    /// Scenario 2 with open Server-Sent Events streams (abide, Nchan).
    pub stream_fanout: Vec<(Kind, FanoutRow)>,
    /// Memory per open stream, and per held poll beside it (abide, Nchan).
    pub stream_hold: Vec<(Kind, Transport, HoldRow)>,
    pub throughput: Vec<(Kind, ThroughputRow)>,
    pub immediate: Vec<(Kind, ImmediateRow)>,
    pub pi_hold: Vec<(Kind, HoldRow)>,
    pub pi_fanout: Vec<(Kind, FanoutRow)>,
    pub durability: Vec<DurabilityRow>,
    /// Scenario 7: abide in each access configuration.
    pub access: Vec<AccessRow>,
    /// Scenario 8: one publisher on one node, in memory and on Redis.
    pub redis_publish: Vec<DurabilityRow>,
    /// Scenario 8: per N, one node in memory and two nodes on Redis.
    pub redis_fanout: Vec<RedisFanoutRow>,
}

pub struct Meta {
    pub mode: &'static str,
    pub machine: String,
    pub date: String,
    pub elapsed_secs: f64,
    pub nchan: Result<String, String>,
    pub nchan_config: Option<String>,
    pub idle_secs: u64,
    pub rounds: usize,
    pub tp_secs: f64,
    pub imm_secs: f64,
    pub imm_conns: usize,
    pub dur_secs: f64,
    pub dur_max_events: u64,
    pub acc_rounds: usize,
    pub acc_secs: f64,
    pub acc_publishers: usize,
    /// Scenario 8: the `redis-server` version, or why it was skipped.
    pub redis: Result<String, String>,
    pub redis_secs: f64,
    pub redis_max_events: u64,
    /// The file system of the temporary directory scenario 6's databases are
    /// in: (mount point, type, source).
    pub data_fs: Option<(String, String, String)>,
    pub plots: Vec<(String, String)>,
}

fn peers(kinds: &[Kind]) -> Vec<Kind> {
    kinds
        .iter()
        .copied()
        .filter(|k| *k != Kind::Abide)
        .collect()
}

/// `abide ÷ peer`, as text.
fn ratio(abide: Option<f64>, peer: Option<f64>) -> String {
    match (abide, peer) {
        (Some(a), Some(p)) if p.abs() < 1e-12 && a.abs() < 1e-12 => "=".into(),
        (Some(a), Some(p)) if p.abs() > 1e-12 && a.is_finite() && p.is_finite() => {
            format!("{:.2}×", a / p)
        }
        _ => "–".into(),
    }
}

fn find<R>(rows: &[(Kind, R)], kind: Kind, pred: impl Fn(&R) -> bool) -> Option<&R> {
    rows.iter()
        .find(|(k, r)| *k == kind && pred(r))
        .map(|(_, r)| r)
}

fn kib(v: f64) -> String {
    format!("{v:.1} KiB")
}

fn ms(us: f64) -> String {
    if us.is_finite() {
        format!("{:.2} ms", us / 1000.0)
    } else {
        "–".into()
    }
}

fn fail(e: &Option<String>) -> String {
    e.as_ref()
        .map(|e| format!("failed: {}", e.replace('|', "/")))
        .unwrap_or_default()
}

/// A headline line: figure name, which way is better, abide's value, ratios.
struct Headline {
    scenario: &'static str,
    figure: String,
    better: &'static str,
    abide: Option<f64>,
    peers: Vec<Option<f64>>,
    fmt: fn(f64) -> String,
}

/// The headline figures: abide's value and each peer's, per scenario run.
fn headlines(r: &Results, m: &Meta, peers: &[Kind]) -> Vec<Headline> {
    let mut heads: Vec<Headline> = Vec::new();
    let hold_n = r
        .hold
        .iter()
        .filter(|(k, _)| *k == Kind::Abide)
        .map(|(_, h)| h.n)
        .filter(|&n| n == crate::servers::ABIDE_DEFAULT_MAX_WAITERS)
        .max();
    if let Some(n) = hold_n {
        let get = |k: Kind| find(&r.hold, k, |h| h.n == n).and_then(HoldRow::per_waiter_kib);
        heads.push(Headline {
            scenario: "1 hold",
            figure: format!("resident memory per held waiter, N = {n}"),
            better: "lower",
            abide: get(Kind::Abide),
            peers: peers.iter().map(|&k| get(k)).collect(),
            fmt: |v| kib(v),
        });
        let get = |k: Kind| {
            find(&r.hold, k, |h| h.n == n)
                .filter(|h| h.error.is_none())
                .map(|h| h.idle_ticks as f64)
        };
        heads.push(Headline {
            scenario: "1 hold",
            figure: format!("CPU ticks in {} s idle with N = {n} held", m.idle_secs),
            better: "lower",
            abide: get(Kind::Abide),
            peers: peers.iter().map(|&k| get(k)).collect(),
            fmt: |v| format!("{v:.0}"),
        });
    }
    if let Some(n) = r.fanout.iter().map(|(_, f)| f.n).max() {
        let get =
            |k: Kind| find(&r.fanout, k, |f| f.n == n && f.error.is_none()).map(|f| f.last_us);
        heads.push(Headline {
            scenario: "2 fan-out",
            figure: format!("time until the last of {n} waiters has the event"),
            better: "lower",
            abide: get(Kind::Abide),
            peers: peers.iter().map(|&k| get(k)).collect(),
            fmt: ms,
        });
        let get = |k: Kind| {
            find(&r.fanout, k, |f| f.n == n && f.error.is_none()).map(|f| f.publish_rtt_us)
        };
        heads.push(Headline {
            scenario: "2 fan-out",
            figure: format!("publisher's round trip with {n} waiters"),
            better: "lower",
            abide: get(Kind::Abide),
            peers: peers.iter().map(|&k| get(k)).collect(),
            fmt: ms,
        });
    }
    let ks: Vec<usize> = {
        let mut v: Vec<usize> = r.throughput.iter().map(|(_, t)| t.k).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    if let (Some(&k1), Some(&kmax)) = (ks.first(), ks.last()) {
        let get = |k: Kind| {
            find(&r.throughput, k, |t| t.k == k1 && t.error.is_none())
                .map(ThroughputRow::events_per_sec)
        };
        heads.push(Headline {
            scenario: "3 throughput",
            figure: format!("events published per second, K = {k1}"),
            better: "higher",
            abide: get(Kind::Abide),
            peers: peers.iter().map(|&k| get(k)).collect(),
            fmt: |v| format!("{v:.0}/s"),
        });
        let get = |k: Kind| {
            find(&r.throughput, k, |t| t.k == kmax && t.error.is_none())
                .map(ThroughputRow::deliveries_per_sec)
        };
        heads.push(Headline {
            scenario: "3 throughput",
            figure: format!("deliveries per second, K = {kmax}"),
            better: "higher",
            abide: get(Kind::Abide),
            peers: peers.iter().map(|&k| get(k)).collect(),
            fmt: |v| format!("{v:.0}/s"),
        });
    }
    {
        let get = |k: Kind| find(&r.immediate, k, |i| i.error.is_none()).map(ImmediateRow::rps);
        heads.push(Headline {
            scenario: "4 immediate",
            figure: format!("polls answered per second, {} connections", m.imm_conns),
            better: "higher",
            abide: get(Kind::Abide),
            peers: peers.iter().map(|&k| get(k)).collect(),
            fmt: |v| format!("{v:.0}/s"),
        });
        let get = |k: Kind| find(&r.immediate, k, |i| i.error.is_none()).map(|i| i.p99_us);
        heads.push(Headline {
            scenario: "4 immediate",
            figure: "99th percentile latency".into(),
            better: "lower",
            abide: get(Kind::Abide),
            peers: peers.iter().map(|&k| get(k)).collect(),
            fmt: ms,
        });
    }
    {
        let get = |k: Kind| find(&r.pi_hold, k, |_| true).and_then(HoldRow::per_waiter_kib);
        heads.push(Headline {
            scenario: "5 Pi profile",
            figure: format!(
                "memory per held waiter, N = {}, one core, 512 MiB address space",
                crate::servers::ABIDE_DEFAULT_MAX_WAITERS
            ),
            better: "lower",
            abide: get(Kind::Abide),
            peers: peers.iter().map(|&k| get(k)).collect(),
            fmt: |v| kib(v),
        });
        let get = |k: Kind| find(&r.pi_fanout, k, |f| f.error.is_none()).map(|f| f.last_us);
        heads.push(Headline {
            scenario: "5 Pi profile",
            figure: format!(
                "fan-out to the last of {} waiters, one core",
                crate::servers::ABIDE_DEFAULT_MAX_WAITERS
            ),
            better: "lower",
            abide: get(Kind::Abide),
            peers: peers.iter().map(|&k| get(k)).collect(),
            fmt: ms,
        });
    }
    heads
}

/// The headline ratios as plain text for the terminal (`make bench-quick`
/// prints them at the end of its run).
pub fn terminal_headlines(r: &Results, m: &Meta) -> String {
    let peers = peers(&r.kinds);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "headline: abide's figure, then abide ÷ each server (better: lower/higher)"
    );
    for h in headlines(r, m, &peers) {
        if h.abide.is_none() {
            continue;
        }
        let _ = write!(
            o,
            "  {:<13} {:<58} {:>10} ({})",
            h.scenario,
            h.figure,
            h.abide.map_or("–".into(), h.fmt),
            h.better
        );
        for (k, p) in peers.iter().zip(&h.peers) {
            if p.is_some() {
                let _ = write!(o, "  ÷{} {}", k.label(), ratio(h.abide, *p));
            }
        }
        let _ = writeln!(o);
    }
    o
}

pub fn render(r: &Results, m: &Meta, notes: &str) -> String {
    let peers = peers(&r.kinds);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Benchmarks: abide side by side with an async variant and Nchan\n"
    );
    let _ = writeln!(
        o,
        "Generated by `make bench` ({} mode) on {}. Machine: {}. All traffic on loopback; the load generator \
         runs on the same machine. **These figures come from a shared 2-core machine** on which other builds \
         and tests may have been running: absolute times vary from run to run, so read the ratios first. \
         The run took {:.0} s.\n",
        m.mode, m.date, m.machine, m.elapsed_secs
    );
    let _ = writeln!(
        o,
        "Servers, each started fresh for every measurement and run in turn, interleaved, point by point:\n"
    );
    for k in &r.kinds {
        let what = match k {
            Kind::Abide => "the release `abide` binary (tiny_http, a blocking thread per waiting poll), `--quiet`, default flags (`--buffer 256`, `--max-waiters 512` unless a row says otherwise)".to_string(),
            Kind::AsyncCurrent => "the async variant (`benches/compare/src/async_server.rs`, tokio + hyper 1.x, same API subset and semantics, ring of 256 per channel) on a current-thread runtime".to_string(),
            Kind::AsyncMulti => "the same async variant on a multi-thread runtime with 2 workers".to_string(),
            Kind::Nchan => format!(
                "Nchan: {} with one worker process, subscriber (long poll; EventSource for the stream rows) and publisher locations on loopback, `nchan_message_buffer_length 256` (config below)",
                m.nchan.as_ref().map(String::as_str).unwrap_or("?")
            ),
            Kind::FloorInline1 | Kind::FloorInlineN => format!(
                "scenarios 3 and 4 only: the floor, a bare tiny_http server (`benches/compare/src/floor_server.rs`, \
                 the same tiny_http as abide's) answering abide's bytes inline on the thread that called `recv()`, \
                 with {}; state in one `Mutex`, a poll with nothing to answer parked and answered by the next \
                 publish's thread; no validation, limits or hand-offs",
                if *k == Kind::FloorInline1 {
                    "one such thread".to_string()
                } else {
                    format!("one such thread per core ({})", crate::servers::cores())
                }
            ),
            Kind::FloorHold => "scenarios 1 to 3: the floor of the design, a thread per waiting poll at its \
                 barest: the same bare tiny_http server (`floor_hold.rs`) holding each poll on a thread of its \
                 own (spawned for it, 64 KiB stack) blocked on one shared condvar until a publish (which wakes \
                 them all) or its timeout, then writing the answer itself; tiny_http's connection threads with \
                 128 KiB stacks (`RUST_MIN_STACK`) and a kicker for its pool's lost wake-up, as abide's"
                .to_string(),
        };
        let _ = writeln!(o, "- **{}**: {what}.", k.label());
    }
    if let Err(why) = &m.nchan {
        let _ = writeln!(
            o,
            "- **Nchan: skipped** ({why}). Install it with `apt-get install nginx-light libnginx-mod-nchan` and run `make bench` again."
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Plots: {}.\n",
        m.plots
            .iter()
            .map(|(t, p)| format!("[{t}]({p})"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // ---- headline ratios
    let heads = headlines(r, m, &peers);
    let _ = writeln!(o, "## Headline: abide's ratio to each server\n");
    let _ = writeln!(
        o,
        "Each ratio is abide's figure divided by the other server's (`=` when both are zero). Where lower is \
         better, a ratio below 1 means abide is ahead; where higher is better, above 1.\n"
    );
    let _ = write!(o, "| scenario | figure | better | abide |");
    for k in &peers {
        let _ = write!(o, " abide ÷ {} |", k.label());
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "|---|---|---|---:|{}", "---:|".repeat(peers.len()));
    for h in &heads {
        let _ = write!(
            o,
            "| {} | {} | {} | {} |",
            h.scenario,
            h.figure,
            h.better,
            h.abide.map_or("–".into(), h.fmt)
        );
        for p in &h.peers {
            let _ = write!(
                o,
                " **{}** ({}) |",
                ratio(h.abide, *p),
                p.map_or("–".into(), h.fmt)
            );
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(o);

    // ---- what the numbers must show
    let _ = writeln!(o, "## The checks abide must pass\n");
    for line in checks(r) {
        let _ = writeln!(o, "- {line}");
    }
    let _ = writeln!(o);

    // ---- scenario 1
    let _ = writeln!(o, "## 1. Hold: N waiters on one channel\n");
    let _ = writeln!(
        o,
        "N polls (one connection each, `timeout` 110 s) wait on one channel. Resident memory (VmRSS, summed over \
         the server's processes: nginx's master and worker) after a light warm-up and then with the N polls held; \
         bytes per held waiter = the difference ÷ N. The kernel's share is the machine-wide change of \
         `KernelStack` (/proc/meminfo) and of TCP socket memory (`mem` in /proc/net/sockstat; it also counts the \
         client's sockets), divided by N. CPU: utime + stime ticks (1/100 s) over {} s of idleness with the polls \
         held. Then one publish releases them all and every answer is checked.\n",
        m.idle_secs
    );
    hold_table(&mut o, &r.hold, &r.kinds);
    breakdown_table(&mut o, &r.hold, Kind::Abide);
    breakdown_table(&mut o, &r.hold, Kind::FloorHold);

    // ---- scenario 2
    let _ = writeln!(o, "## 2. Fan-out: one publish to N waiters\n");
    let _ = writeln!(
        o,
        "N keep-alive connections each hold a poll; once the server counts N waiting, one `POST` carries its send \
         time (wall clock, ns) in the event; each waiter notes when its whole answer has arrived. Per round: the \
         first, median, 99th percentile and last waiter's delay, and the publisher's round trip (how long its `POST` \
         took). {} rounds; the table gives the medians over the rounds (the publisher's worst round in brackets).\n",
        m.rounds
    );
    fanout_table(&mut o, &r.fanout, &r.kinds);
    streams_section(&mut o, r, m);

    // ---- scenario 3
    let _ = writeln!(
        o,
        "## 3. Throughput: K subscribers, one publisher as fast as the server takes it\n"
    );
    let _ = writeln!(
        o,
        "K subscribers each re-poll with their cursor at once (abide and the async variant: `last_event_id` and \
         `limit=1000`; Nchan: `If-Modified-Since`/`If-None-Match`, all buffered messages in one multipart answer). \
         One publisher sends events `{{\"bseq\":i}}` back to back on one keep-alive connection for {:.0} s, then an \
         end marker. Events/s = events published ÷ publishing time; deliveries/s = events received by all \
         subscribers ÷ time from the first publish to the last delivery. Every subscriber's sequence is checked: \
         losses (never received), duplicates, reorderings, and answers the server marked `Abide-Missed` (buffer \
         overrun, announced).\n",
        m.tp_secs
    );
    throughput_table(&mut o, &r.throughput, &r.kinds);

    // ---- scenario 4
    let _ = writeln!(o, "## 4. Immediate polls\n");
    let _ = writeln!(
        o,
        "{} keep-alive connections poll for {:.0} s in a closed loop; each poll is answered at once with the \
         channel's oldest event (abide and async: `last_event_id=0&limit=1`; Nchan: a subscriber location with \
         `nchan_subscriber_first_message oldest`).\n",
        m.imm_conns, m.imm_secs
    );
    immediate_table(&mut o, &r.immediate, &r.kinds);

    // ---- scenario 5
    let _ = writeln!(o, "## 5. Pi profile: one core, 512 MiB of address space\n");
    let _ = writeln!(
        o,
        "Scenarios 1 and 2 at N = {} (abide's default `--max-waiters`) with each server started under \
         `taskset -c 0 prlimit --as={}` (the load generator pinned to the other core). \"Held\" means every poll \
         was registered, every poll was answered correctly and the server was still alive.\n",
        crate::servers::ABIDE_DEFAULT_MAX_WAITERS,
        crate::servers::PI_AS_BYTES
    );
    let pi_kinds: Vec<Kind> = r
        .kinds
        .iter()
        .copied()
        .filter(|k| k.in_scenario(5))
        .collect();
    pi_table(&mut o, &r.pi_hold, &r.pi_fanout, &pi_kinds);

    // ---- scenario 6
    durability_section(&mut o, &r.durability, m);

    // ---- scenario 7
    access_section(&mut o, &r.access, m);

    // ---- scenario 8
    redis_section(&mut o, r, m);

    // ---- commands
    let _ = writeln!(o, "## How to run it\n");
    let _ = writeln!(
        o,
        "```sh\nmake bench          # full run: writes BENCHMARKS.md and docs/bench/*.svg (about 7 minutes)\n\
         make bench-quick    # quick run for development: writes target/bench-quick/ (under 2 minutes)\n\
         # both are: cargo build --release --bin abide && BENCH_MODE=full|quick cargo run --release -p abide-compare\n\
         apt-get install nginx-light libnginx-mod-nchan   # to include Nchan\n\
         apt-get install redis-server                     # to include scenario 8 (Redis)\n```\n"
    );
    let _ = writeln!(
        o,
        "The servers are started as (`PORT` a free loopback port; the Pi profile prefixes `taskset -c 0 prlimit --as={}`):\n",
        crate::servers::PI_AS_BYTES
    );
    let _ = writeln!(o, "```sh");
    for k in &r.kinds {
        let _ = writeln!(
            o,
            "{}",
            crate::servers::describe(*k, crate::servers::ABIDE_DEFAULT_MAX_WAITERS)
        );
    }
    let _ = writeln!(o, "```\n");
    let _ = writeln!(
        o,
        "`compare` is the benchmark's own executable (`benches/compare.rs`), which runs the async variant when \
         called with `serve-async`, and the floor servers with `serve-floor`; the load generator is the same executable, on a tokio runtime with 2 workers."
    );
    if let Some(conf) = &m.nchan_config {
        let _ = writeln!(
            o,
            "\nNchan's nginx.conf (`DIR` a fresh temporary directory):\n\n```nginx\n{conf}```"
        );
    }
    let _ = writeln!(o);
    o.push_str(notes);
    o
}

fn checks(r: &Results) -> Vec<String> {
    let mut out = Vec::new();
    let abide_hold: Vec<&HoldRow> = r
        .hold
        .iter()
        .filter(|(k, _)| *k == Kind::Abide)
        .map(|(_, h)| h)
        .collect();
    if let Some(h) = abide_hold.iter().find(|h| h.n == h.max_waiters) {
        out.push(format!(
            "Idle: {} CPU ticks in the idle window with `--max-waiters` ({}) polls held: **{}**.",
            h.idle_ticks,
            h.n,
            if h.idle_ticks == 0 && h.ok() {
                "pass"
            } else {
                "FAIL"
            }
        ));
        if let Some(pw) = h.per_waiter_kib() {
            let floor =
                find(&r.hold, Kind::FloorHold, |f| f.n == h.n).and_then(HoldRow::per_waiter_kib);
            out.push(format!(
                "Resident memory per held waiter at N = {}: {:.1} KiB ({}, target at most 24 KiB): **{}**. See the \
                 breakdown under scenario 1 and the notes.",
                h.n,
                pw,
                match floor {
                    Some(f) => format!("the measured floor of a thread per waiting poll {f:.1} KiB, abide ÷ floor {:.2}×", pw / f),
                    None => "floor about 21 KB for two blocked threads".into(),
                },
                if pw <= 24.0 { "pass" } else { "above target" }
            ));
        }
    }
    // The issue's targets against the bare tiny_http floor, one recv thread
    // and one per core: polls/s at least 0.9× the floor's, p99 within 1.5×.
    let a = find(&r.immediate, Kind::Abide, |i| i.error.is_none());
    for floor in [Kind::FloorInline1, Kind::FloorInlineN] {
        if let (Some(a), Some(f)) = (a, find(&r.immediate, floor, |i| i.error.is_none())) {
            let (rate, p99) = (a.rps() / f.rps(), a.p99_us / f.p99_us);
            out.push(format!(
                "Immediate polls against the {}: abide ÷ floor {rate:.2}× the polls/s (target at least 0.9×), \
                 p99 {p99:.2}× (target at most 1.5×): **{}**.",
                floor.label().replace("floor: ", "floor, "),
                match (rate >= 0.9, p99 <= 1.5) {
                    (true, true) => "pass",
                    (false, true) => "fewer polls/s",
                    (true, false) => "p99 above target",
                    (false, false) => "fewer polls/s, p99 above target",
                }
            ));
        }
    }
    let tp: Vec<&ThroughputRow> = r
        .throughput
        .iter()
        .filter(|(k, _)| *k == Kind::Abide)
        .map(|(_, t)| t)
        .collect();
    if !tp.is_empty() {
        let clean = tp.iter().filter(|t| t.missed_marks == 0).all(|t| t.exact());
        out.push(format!(
            "Scenario 3: losses {}, duplicates {}, reorderings {} over all K (answers marked missed: {}): **{}**.",
            tp.iter().map(|t| t.losses).sum::<u64>(),
            tp.iter().map(|t| t.duplicates).sum::<u64>(),
            tp.iter().map(|t| t.reordered).sum::<u64>(),
            tp.iter().map(|t| t.missed_marks).sum::<u64>(),
            if clean { "pass" } else { "FAIL" }
        ));
    }
    let fo: Vec<&FanoutRow> = r
        .fanout
        .iter()
        .filter(|(k, f)| *k == Kind::Abide && f.error.is_none())
        .map(|(_, f)| f)
        .collect();
    if fo.len() >= 2 {
        let (lo, hi) = (fo.first().unwrap(), fo.last().unwrap());
        let grows = hi.publish_rtt_us > 3.0 * lo.publish_rtt_us.max(50.0);
        out.push(format!(
            "Publisher's round trip: {} at N = {}, {} at N = {}: **{}**.",
            ms(lo.publish_rtt_us),
            lo.n,
            ms(hi.publish_rtt_us),
            hi.n,
            if grows {
                "grows with N"
            } else {
                "pass (does not grow with N)"
            }
        ));
        // Target: no slower than Nchan and the async variant (current
        // thread); the thread-per-waiter floor shows what the design allows.
        let last = |kind| find(&r.fanout, kind, |f| f.n == hi.n && f.error.is_none());
        let peers: Vec<String> = [Kind::Nchan, Kind::AsyncCurrent, Kind::FloorHold]
            .into_iter()
            .filter_map(|kind| last(kind).map(|f| (kind, f)))
            .map(|(kind, f)| format!("{} {}", kind.label(), ms(f.last_us)))
            .collect();
        let slower: Vec<&str> = [
            (Kind::Nchan, "Nchan"),
            (Kind::AsyncCurrent, "the async variant"),
        ]
        .into_iter()
        .filter(|(kind, _)| last(*kind).is_some_and(|f| hi.last_us > f.last_us))
        .map(|(_, name)| name)
        .collect();
        out.push(format!(
            "Fan-out to the last of {} waiters: abide {}{}{}: **{}**.",
            hi.n,
            ms(hi.last_us),
            if peers.is_empty() { "" } else { ", " },
            peers.join(", "),
            if slower.is_empty() {
                "pass".to_string()
            } else {
                format!("slower than {}", slower.join(" and "))
            }
        ));
    }
    // Target: deliveries at K = 100 at least 0.8× the async variant's
    // (current thread); the floors show what tiny_http allows.
    let deliveries = |kind| {
        find(&r.throughput, kind, |t| t.k == 100 && t.error.is_none())
            .map(ThroughputRow::deliveries_per_sec)
    };
    if let (Some(a), Some(async_ct)) = (deliveries(Kind::Abide), deliveries(Kind::AsyncCurrent)) {
        let floors: Vec<String> = [Kind::FloorHold, Kind::FloorInline1, Kind::FloorInlineN]
            .into_iter()
            .filter_map(|kind| {
                let f = deliveries(kind)?;
                Some(format!(
                    "{} {:.0}/s ({:.2}× the async variant; abide ÷ this {:.2}×)",
                    kind.label(),
                    f,
                    f / async_ct,
                    a / f
                ))
            })
            .collect();
        out.push(format!(
            "Deliveries at K = 100: abide {a:.0}/s, {:.2}× the async variant's {async_ct:.0}/s (target at least \
             0.8×){}{}: **{}**.",
            a / async_ct,
            if floors.is_empty() { "" } else { "; " },
            floors.join(", "),
            if a >= 0.8 * async_ct { "pass" } else { "below target" }
        ));
    }
    if let Some(line) = streams_check(r) {
        out.push(line);
    }
    if !r.durability.is_empty() {
        let failed: Vec<&DurabilityRow> = r.durability.iter().filter(|d| !d.ok()).collect();
        out.push(format!(
            "Scenario 6: {} publishes acknowledged over {} runs, {} runs failed, store errors {}: **{}**.",
            r.durability.iter().map(|d| d.acked).sum::<u64>(),
            r.durability.len(),
            failed.len(),
            r.durability.iter().map(|d| d.store_errors).sum::<u64>(),
            if failed.is_empty() { "pass" } else { "FAIL" }
        ));
        if let Some(d) = r
            .durability
            .iter()
            .filter(|d| d.store == Store::SqliteFull && d.publishers > 1 && d.ok())
            .max_by_key(|d| d.publishers)
        {
            let epc = d.events_per_commit().unwrap_or(0.0);
            out.push(format!(
                "Group commit: with {} and `--sync full`, {epc:.1} events per commit: **{}**.",
                publishers(d.publishers),
                if epc >= 2.0 {
                    "pass (the publishers share commits)"
                } else {
                    "FAIL (about one commit per publish)"
                }
            ));
        }
    }
    if !r.access.is_empty() {
        let polls: u64 = r.access.iter().map(|a| a.immediate.requests).sum();
        let publishes: u64 = r.access.iter().map(|a| a.publish.acked).sum();
        let bad: Vec<String> = r
            .access
            .iter()
            .filter(|a| !a.polls_ok() || !a.publish_ok())
            .map(|a| format!("{} round {}", a.access.short(), a.round + 1))
            .collect();
        out.push(format!(
            "Scenario 7: {polls} immediate polls and {publishes} publishes over the three access \
             configurations, none refused or failed: **{}**.",
            if bad.is_empty() {
                "pass".to_string()
            } else {
                format!("FAIL ({})", bad.join(", "))
            }
        ));
    }
    if !r.redis_publish.is_empty() || !r.redis_fanout.is_empty() {
        let failed: Vec<String> = r
            .redis_publish
            .iter()
            .filter(|d| !d.ok())
            .map(|d| format!("{} publishes", d.store.short()))
            .chain(
                r.redis_fanout
                    .iter()
                    .filter(|f| f.fanout.error.is_some())
                    .map(|f| format!("{} fan-out N = {}", f.store.short(), f.fanout.n)),
            )
            .collect();
        out.push(format!(
            "Scenario 8: {} publishes acknowledged by a node on Redis, and in every fan-out round every waiter \
             on both nodes had the event: **{}**.",
            r.redis_publish
                .iter()
                .filter(|d| d.store == Store::Redis)
                .map(|d| d.acked)
                .sum::<u64>(),
            if failed.is_empty() {
                "pass".to_string()
            } else {
                format!("FAIL ({})", failed.join(", "))
            }
        ));
    }
    out
}

fn bytes(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", v / (1024.0 * 1024.0))
    } else if v >= 1024.0 {
        format!("{:.1} KiB", v / 1024.0)
    } else {
        format!("{v:.0} B")
    }
}

fn publishers(p: usize) -> String {
    if p == 1 {
        "1 publisher".into()
    } else {
        format!("{p} publishers")
    }
}

fn durability_section(o: &mut String, rows: &[DurabilityRow], m: &Meta) {
    let _ = writeln!(
        o,
        "## 6. Durability: abide in memory, with SQLite `--sync normal`, with SQLite `--sync full`\n"
    );
    if rows.is_empty() {
        let _ = writeln!(o, "Not run.\n");
        return;
    }
    let tmp = std::env::temp_dir();
    let _ = writeln!(
        o,
        "abide alone, started fresh for every run, the three stores in turn (the SQLite ones each on a fresh, empty \
         data directory under `{}`, removed after the run; `DIR` below):\n",
        tmp.display()
    );
    let _ = writeln!(o, "```sh");
    for store in Store::ALL {
        let _ = writeln!(
            o,
            "{}",
            crate::servers::describe_store(store, crate::servers::ABIDE_DEFAULT_MAX_WAITERS)
        );
    }
    let _ = writeln!(o, "```\n");
    let acked: u64 = rows.iter().map(|d| d.acked).sum();
    let body: u64 = rows.iter().map(|d| d.body_bytes).sum();
    let prefill = rows.first().map_or(crate::servers::BUFFER, |d| d.prefill);
    let disk = match &m.data_fs {
        Some((point, fstype, source)) if fstype == "tmpfs" || fstype == "ramfs" => format!(
            "`{}` is on {fstype} (`{source}` at `{point}`), that is in memory: an fsync costs nothing there, so \
             `--sync full` looks cheaper than it is on a disk",
            tmp.display()
        ),
        Some((point, fstype, source)) => format!(
            "`{}` is on this machine's disk: {fstype} on `{source}` (mounted at `{point}`){}",
            tmp.display(),
            if source.starts_with("/dev/vd") || source.starts_with("/dev/xvd") {
                ", a virtual machine's disk, so what an fsync costs depends on the host under it"
            } else {
                ""
            }
        ),
        None => format!("the file system of `{}` could not be read", tmp.display()),
    };
    let _ = writeln!(
        o,
        "A publish is one `POST /channels/dur-P/events` of a small JSON reading (`{{\"t\":21.5,\"n\":N}}`, {} bytes \
         on average) on the publisher's own keep-alive connection; the next is sent as soon as the answer has been \
         read. With `--data-dir` the answer (`201`) comes only after the event is committed. Each publisher has its \
         own channel (16 publishers: 16 channels), first filled with {prefill} events, its buffer (not measured), so \
         that every measured publish also drops that channel's oldest event, as on a server that has been up a while. \
         Each run lasts {:.1} s or {} publishes, whichever comes first. Publishes/s = publishes acknowledged ÷ the \
         run's time; round trip = from writing the request until the whole answer has been read (with 16 publishers, \
         over all of them).\n",
        if acked > 0 {
            format!("{:.1}", body as f64 / acked as f64)
        } else {
            "–".into()
        },
        m.dur_secs,
        m.dur_max_events
    );
    let _ = writeln!(
        o,
        "Written per event = the change of `write_bytes` in the server's `/proc/PID/io` over the measured run ÷ \
         publishes acknowledged (in brackets: the whole change). The kernel counts `write_bytes` when the process \
         dirties a page of the page cache, so it counts whole pages ({} KiB here) of the WAL, and of `abide.db` when \
         a checkpoint copies the WAL back, not the bytes of the rows, and whether or not they have reached the disk \
         yet; a page dirtied again before the kernel writes it back is counted once. Events per commit = publishes acknowledged ÷ the change of `/stats` `store_commits` (one journal \
         thread commits the publishes queued meanwhile together). {disk}.\n",
        // SAFETY: sysconf has no preconditions.
        unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) / 1024
    );
    header(
        o,
        &["publishers", "store"],
        &[],
        &[
            "publishes/s",
            "÷ memory",
            "round trip p50",
            "p99",
            "p50 ÷ memory",
            "written per event (whole Δ)",
            "events per commit",
            "publishes",
        ],
    );
    let mut ps: Vec<usize> = rows.iter().map(|d| d.publishers).collect();
    ps.sort_unstable();
    ps.dedup();
    let get = |p: usize, store: Store| {
        rows.iter()
            .find(|d| d.publishers == p && d.store == store && d.ok())
    };
    for &p in &ps {
        let mem = get(p, Store::Memory);
        for d in rows.iter().filter(|d| d.publishers == p) {
            if d.error.is_some() && d.acked == 0 {
                let _ = writeln!(
                    o,
                    "| {p} | {} | {} | | | | | | | |",
                    d.store.label(),
                    fail(&d.error)
                );
                continue;
            }
            let is_mem = d.store == Store::Memory;
            let _ = writeln!(
                o,
                "| {p} | {} | {:.0} | {} | {} | {} | {} | {} ({}) | {} | {}{}{} |",
                d.store.label(),
                d.publishes_per_sec(),
                if is_mem {
                    "1×".into()
                } else {
                    ratio(
                        Some(d.publishes_per_sec()),
                        mem.map(DurabilityRow::publishes_per_sec),
                    )
                },
                ms(d.p50_us),
                ms(d.p99_us),
                if is_mem {
                    "1×".into()
                } else {
                    ratio(Some(d.p50_us), mem.map(|m| m.p50_us))
                },
                d.written_per_event().map_or("–".into(), bytes),
                bytes(d.io.write_bytes as f64),
                d.events_per_commit()
                    .map_or("–".into(), |v| format!("{v:.2}")),
                d.acked,
                if d.io.cancelled_write_bytes > 0 {
                    format!(
                        "; cancelled writes {}",
                        bytes(d.io.cancelled_write_bytes as f64)
                    )
                } else {
                    String::new()
                },
                if d.error.is_some() {
                    format!(" ({})", fail(&d.error))
                } else {
                    String::new()
                },
            );
        }
    }
    let _ = writeln!(o);
    // What the fsync costs, from this run's figures.
    let mut said = Vec::new();
    for &p in &ps {
        let (Some(normal), Some(full)) = (get(p, Store::SqliteNormal), get(p, Store::SqliteFull))
        else {
            continue;
        };
        let diff = full.p50_us - normal.p50_us;
        let mut line = format!(
            "With {}, `--sync full` (an fsync per commit) answers a publish in {} (median) against {} with \
             `--sync normal`, {} {} per publish{}, and makes {} of `--sync normal`'s publishes/s",
            publishers(p),
            ms(full.p50_us),
            ms(normal.p50_us),
            ms(diff.abs()),
            if diff >= 0.0 { "more" } else { "less" },
            if p == 1 && full.events_per_commit().is_some_and(|e| e < 1.05) {
                " (here every publish is a commit of its own, so this is what an fsync costs)"
            } else {
                ""
            },
            ratio(
                Some(full.publishes_per_sec()),
                Some(normal.publishes_per_sec())
            )
        );
        if let Some(epc) = full.events_per_commit().filter(|_| p > 1) {
            let _ = write!(
                line,
                "; its commits carry {epc:.1} events each on average, so the publishers share each fsync"
            );
        }
        line.push('.');
        said.push(line);
    }
    if !said.is_empty() {
        let _ = writeln!(o, "{}\n", said.join(" "));
    }
}

fn access_section(o: &mut String, rows: &[AccessRow], m: &Meta) {
    let _ = writeln!(
        o,
        "## 7. Cost of access control: abide without and with `--auth-file` and shares\n"
    );
    if rows.is_empty() {
        let _ = writeln!(o, "Not run.\n");
        return;
    }
    let _ = writeln!(
        o,
        "What `--auth-file` and the per-client shares cost when nothing is refused: the same load on abide \
         without them (a), with an auth file of {} rules and a valid token on every request (b), and with shares \
         as well, large enough never to refuse (c). Under (b) abide finds every request's token by its SHA-256 in \
         the rules and checks the right; under (c) it also names the client (its token) and takes each publish \
         from the client's bucket (an immediate poll never waits, so it takes no waiter slot).\n",
        crate::servers::AUTH_RULES
    );
    let _ = writeln!(o, "```sh");
    for access in Access::ALL {
        let _ = writeln!(
            o,
            "{}",
            crate::servers::describe_access(access, crate::servers::ABIDE_DEFAULT_MAX_WAITERS)
        );
    }
    let _ = writeln!(o, "```\n");
    let _ = writeln!(
        o,
        "`DIR/auth` is a fresh temporary file: the harness's token (`publish,subscribe *`, and `admin *` for the \
         harness's own `/stats` reads), sensors publishing to their own channel, dashboards reading `sensors.*`, \
         chat apps, an operator and one `anonymous` rule. Under (b) and (c) every request carries \
         `Authorization: Bearer` and the 32-character token; under (a) none does, as today's clients. Immediate \
         polls: scenario 4's load ({} connections for {:.0} s). Publishes: scenario 6's load in memory ({}, each \
         on its own keep-alive connection and channel, back to back for {:.0} s or at most {} publishes). Each \
         load runs on a fresh server. {} rounds, each configuration once per round in turn (a, b, c, a, b, c, …); \
         the table gives each configuration's best round for polls and for publishes (a burst of other load on \
         the shared machine only slows a round down) and, in brackets, its worst. \"÷ (a)\" is the \
         configuration's figure divided by (a)'s: below 1 for polls/s and publishes/s, above 1 for the latencies, \
         is what access control costs.\n",
        m.imm_conns,
        m.acc_secs,
        publishers(m.acc_publishers),
        m.acc_secs,
        m.dur_max_events,
        m.acc_rounds
    );
    header(
        o,
        &["configuration"],
        &[],
        &[
            "polls/s (worst)",
            "÷ (a)",
            "p50",
            "p99",
            "p99 ÷ (a)",
            "publishes/s (worst)",
            "÷ (a)",
            "round trip p50",
            "p99",
            "p50 ÷ (a)",
            "rounds with a refusal or failure",
        ],
    );
    let (open_polls, open_publish) = crate::scenarios::access_best(rows, Access::Open);
    for access in Access::ALL {
        let rounds: Vec<&AccessRow> = rows.iter().filter(|a| a.access == access).collect();
        if rounds.is_empty() {
            continue;
        }
        let (polls, publish) = crate::scenarios::access_best(rows, access);
        let vs = |value: f64, open: Option<f64>| match access {
            Access::Open => "1×".to_string(),
            _ => ratio(Some(value), open),
        };
        let worst = |values: Vec<f64>| values.into_iter().fold(f64::INFINITY, f64::min);
        let poll_cells = match polls {
            None => "– | | | | |".to_string(),
            Some(i) => format!(
                "{:.0} ({:.0}) | {} | {} | {} | {} |",
                i.rps(),
                worst(rounds.iter().map(|a| a.immediate.rps()).collect()),
                vs(i.rps(), open_polls.map(ImmediateRow::rps)),
                ms(i.p50_us),
                ms(i.p99_us),
                vs(i.p99_us, open_polls.map(|o| o.p99_us))
            ),
        };
        let publish_cells = match publish {
            None => "– | | | | |".to_string(),
            Some(p) => format!(
                "{:.0} ({:.0}) | {} | {} | {} | {} |",
                p.publishes_per_sec(),
                worst(
                    rounds
                        .iter()
                        .map(|a| a.publish.publishes_per_sec())
                        .collect()
                ),
                vs(
                    p.publishes_per_sec(),
                    open_publish.map(DurabilityRow::publishes_per_sec)
                ),
                ms(p.p50_us),
                ms(p.p99_us),
                vs(p.p50_us, open_publish.map(|o| o.p50_us))
            ),
        };
        let failures: Vec<String> = rounds
            .iter()
            .filter(|a| !a.polls_ok() || !a.publish_ok())
            .map(|a| {
                let what = [
                    a.immediate.error.clone(),
                    (a.immediate.errors > 0)
                        .then(|| format!("{} polls not answered 200", a.immediate.errors)),
                    a.publish.error.clone(),
                ];
                format!(
                    "round {}: {}",
                    a.round + 1,
                    what.into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join("; ")
                        .replace('|', "/")
                )
            })
            .collect();
        let _ = writeln!(
            o,
            "| {} | {poll_cells} {publish_cells} {} of {} |",
            access.label(),
            if failures.is_empty() {
                "0".to_string()
            } else {
                failures.join(", ")
            },
            rounds.len()
        );
    }
    let _ = writeln!(o);
    let best = |access: Access| crate::scenarios::access_best(rows, access);
    if let ((Some(ai), Some(ap)), (Some(bi), Some(bp)), (Some(ci), Some(cp))) = (
        best(Access::Open),
        best(Access::Tokens),
        best(Access::TokensAndShares),
    ) {
        let polls = |i: &ImmediateRow| ratio(Some(i.rps()), Some(ai.rps()));
        let pubs =
            |p: &DurabilityRow| ratio(Some(p.publishes_per_sec()), Some(ap.publishes_per_sec()));
        let _ = writeln!(
            o,
            "With `--auth-file`, abide answers **{}** (a)'s immediate polls per second and **{}** its publishes \
             per second; with the shares as well, **{}** and **{}**. On this shared machine a few percent either \
             way is within the run-to-run noise.\n",
            polls(bi),
            pubs(bp),
            polls(ci),
            pubs(cp)
        );
    }
}

/// Scenario 8: the heading keeps README's link (`#more-than-one-machine-redis`).
fn redis_section(o: &mut String, r: &Results, m: &Meta) {
    let _ = writeln!(o, "## More than one machine: Redis\n");
    if r.redis_publish.is_empty() && r.redis_fanout.is_empty() {
        match &m.redis {
            Err(why) => {
                let _ = writeln!(
                    o,
                    "Scenario 8 was skipped: {why}. It runs when `redis-server` is installed (on PATH \
                     or in /usr/bin, or named by `REDIS_SERVER`) and starts.\n"
                );
            }
            Ok(_) => {
                let _ = writeln!(o, "Not run.\n");
            }
        }
        return;
    }
    let _ = writeln!(
        o,
        "Scenario 8, abide alone: what sharing events through Redis (`--redis`) costs, against one node in \
         memory. The harness starts its own `redis-server` ({}) on a free loopback port in a fresh temporary \
         directory (`DIR`, removed afterwards), append-only with a flush once a second and no snapshots, and \
         empties it (`FLUSHALL`) before every measurement; each abide node is started fresh (`--buffer` is \
         abide's default, given explicitly):\n",
        m.redis.as_deref().unwrap_or("?")
    );
    let max_waiters = crate::servers::ABIDE_DEFAULT_MAX_WAITERS;
    let _ = writeln!(
        o,
        "```sh\n{}\n{}   # one node in memory\n{}   # each node on Redis\n```\n",
        crate::servers::describe_redis(),
        crate::servers::describe_store(Store::Memory, max_waiters),
        crate::servers::describe_store(Store::Redis, max_waiters)
    );
    let _ = writeln!(
        o,
        "In memory a publish is answered `201` once the event is in the node's buffer; on Redis, only once one \
         Lua script has stored it in Redis and the event has come back to the node through its own \
         subscription. Everything runs on this machine, on loopback: between machines, each publish also pays \
         the network's round trip to Redis and back, and the fan-out the way from Redis to the other node.\n"
    );
    // ---- publish round trip
    let _ = writeln!(
        o,
        "**Publish round trip.** One publisher on one node: `POST`s of a small reading (`{{\"t\":21.5,\"n\":N}}`) \
         on one keep-alive connection, each sent as soon as the previous answer has been read, for {:.1} s or \
         {} publishes, whichever comes first (scenario 6's load with one publisher: its channel first filled \
         with its {} events, not measured). Round trip = from writing the request until the whole answer has \
         been read.\n",
        m.redis_secs,
        m.redis_max_events,
        crate::servers::BUFFER
    );
    header(
        o,
        &["store"],
        &[],
        &[
            "publishes/s",
            "÷ memory",
            "round trip p50",
            "p99",
            "p50 ÷ memory",
            "p99 ÷ memory",
            "publishes",
        ],
    );
    let memory_publish = r
        .redis_publish
        .iter()
        .find(|d| d.store == Store::Memory && d.ok());
    for d in &r.redis_publish {
        if d.error.is_some() && d.acked == 0 {
            let _ = writeln!(
                o,
                "| {} | {} | | | | | | |",
                d.store.label(),
                fail(&d.error)
            );
            continue;
        }
        let vs = |value: f64, memory: Option<f64>| {
            if d.store == Store::Memory {
                "1×".to_string()
            } else {
                ratio(Some(value), memory)
            }
        };
        let _ = writeln!(
            o,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {}{} |",
            d.store.label(),
            d.publishes_per_sec(),
            vs(
                d.publishes_per_sec(),
                memory_publish.map(DurabilityRow::publishes_per_sec)
            ),
            ms(d.p50_us),
            ms(d.p99_us),
            vs(d.p50_us, memory_publish.map(|m| m.p50_us)),
            vs(d.p99_us, memory_publish.map(|m| m.p99_us)),
            d.acked,
            if d.error.is_some() {
                format!(" ({})", fail(&d.error))
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(o);
    // ---- fan-out
    let _ = writeln!(
        o,
        "**Fan-out over two nodes.** N waiters long-poll one channel, spread evenly over two nodes on the same \
         Redis (waiter i on node i mod 2), each node with `--max-waiters` at least N; the publisher publishes \
         on the first node. Measured as scenario 2: N keep-alive connections each hold a poll; once both nodes \
         count their waiters, one `POST` carries its send time (wall clock, ns) in the event; each waiter notes \
         when its whole answer has arrived. Per round: the first, median, 99th percentile and last waiter's \
         delay, and the publisher's round trip. {} rounds; the table gives the medians over the rounds (the \
         publisher's worst round in brackets). Beside it, the same N waiters on one node in memory, and on \
         one node on Redis. The waiters on the second node get the event through Redis: that node's \
         subscription applies it to its memory, which wakes them. On the first node too the event is applied \
         when it comes back through the subscription; the publish is answered then, before that node's \
         waiters are woken. On this 2-core machine both nodes wake their waiters at the same moment, so the \
         publisher's answer competes for the cores with the other node's wake-ups (compare the one-node row); \
         nodes on separate machines do not share cores.\n",
        m.rounds
    );
    header(
        o,
        &["N", "nodes"],
        &[],
        &[
            "first",
            "median",
            "p99",
            "last",
            "last ÷ memory",
            "publisher round trip (worst)",
            "round trip ÷ memory",
        ],
    );
    let memory_fanout = |n: usize| {
        r.redis_fanout
            .iter()
            .find(|f| f.store == Store::Memory && f.fanout.n == n && f.fanout.error.is_none())
            .map(|f| &f.fanout)
    };
    let nodes = |f: &RedisFanoutRow| match (f.store, f.nodes) {
        (Store::Memory, 1) => "one node in memory".to_string(),
        (store, 1) => format!("one node, {}", store.label()),
        (store, k) => format!("{k} nodes, {}", store.label()),
    };
    for row in &r.redis_fanout {
        let (n, f) = (row.fanout.n, &row.fanout);
        if f.error.is_some() {
            let _ = writeln!(
                o,
                "| {n} | {} | {} | | | | | | |",
                nodes(row),
                fail(&f.error)
            );
            continue;
        }
        let vs = |value: f64, memory: Option<f64>| {
            if row.store == Store::Memory {
                "1×".to_string()
            } else {
                ratio(Some(value), memory)
            }
        };
        let mem = memory_fanout(n);
        let _ = writeln!(
            o,
            "| {n} | {} | {} | {} | {} | {} | {} | {} ({}) | {} |",
            nodes(row),
            ms(f.first_us),
            ms(f.median_us),
            ms(f.p99_us),
            ms(f.last_us),
            vs(f.last_us, mem.map(|m| m.last_us)),
            ms(f.publish_rtt_us),
            ms(f.publish_rtt_max_us),
            vs(f.publish_rtt_us, mem.map(|m| m.publish_rtt_us)),
        );
    }
    let _ = writeln!(o);
    // ---- the ratios in a sentence
    let mut said = Vec::new();
    if let (Some(mem), Some(red)) = (
        memory_publish,
        r.redis_publish
            .iter()
            .find(|d| d.store == Store::Redis && d.ok()),
    ) {
        said.push(format!(
            "On Redis a publish is answered in {} (median) against {} in memory, **{}**, and one publisher gets \
             **{}** of memory's publishes per second.",
            ms(red.p50_us),
            ms(mem.p50_us),
            ratio(Some(red.p50_us), Some(mem.p50_us)),
            ratio(
                Some(red.publishes_per_sec()),
                Some(mem.publishes_per_sec())
            )
        ));
    }
    if let Some((red, mem)) = r
        .redis_fanout
        .iter()
        .filter(|f| f.store == Store::Redis && f.nodes == 2 && f.fanout.error.is_none())
        .filter_map(|f| Some((&f.fanout, memory_fanout(f.fanout.n)?)))
        .max_by_key(|(f, _)| f.n)
    {
        said.push(format!(
            "The last of {} waiters over two nodes has the event after {} against {} on one node in memory \
             (**{}**); the publisher's round trip is {} against {} (**{}**).",
            red.n,
            ms(red.last_us),
            ms(mem.last_us),
            ratio(Some(red.last_us), Some(mem.last_us)),
            ms(red.publish_rtt_us),
            ms(mem.publish_rtt_us),
            ratio(Some(red.publish_rtt_us), Some(mem.publish_rtt_us))
        ));
    }
    if !said.is_empty() {
        let _ = writeln!(o, "{}\n", said.join(" "));
    }
    let _ = writeln!(
        o,
        "This scenario alone: `cargo build --release --bin abide && BENCH_SCENARIOS=8 BENCH_MODE=quick cargo run \
         --release -p abide-compare` (quick mode writes target/bench-quick/BENCHMARKS.md).\n"
    );
}

fn header(o: &mut String, first: &[&str], kinds: &[Kind], cols: &[&str]) {
    let _ = write!(o, "|");
    for f in first {
        let _ = write!(o, " {f} |");
    }
    for c in cols {
        let _ = write!(o, " {c} |");
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "|{}{}",
        "---|".repeat(first.len()),
        "---:|".repeat(cols.len())
    );
    let _ = kinds;
}

fn hold_table(o: &mut String, rows: &[(Kind, HoldRow)], kinds: &[Kind]) {
    if rows.is_empty() {
        let _ = writeln!(o, "Not run.\n");
        return;
    }
    header(
        o,
        &["N", "server"],
        kinds,
        &[
            "per held waiter (VmRSS)",
            "abide ÷ this",
            "VmRSS before → with",
            "threads before → with",
            "KernelStack Δ per waiter",
            "TCP mem Δ per waiter",
            "CPU ticks idle",
            "answered",
        ],
    );
    let mut ns: Vec<usize> = rows.iter().map(|(_, h)| h.n).collect();
    ns.sort_unstable();
    ns.dedup();
    for n in ns {
        let abide = find(rows, Kind::Abide, |h| h.n == n).and_then(HoldRow::per_waiter_kib);
        for (k, h) in rows.iter().filter(|(_, h)| h.n == n) {
            let label = if *k == Kind::Abide
                && h.max_waiters != crate::servers::ABIDE_DEFAULT_MAX_WAITERS
            {
                format!("{} (`--max-waiters {}`)", k.label(), h.max_waiters)
            } else {
                k.label().to_string()
            };
            if h.error.is_some() && h.with.rss_kib == 0 {
                let _ = writeln!(o, "| {n} | {label} | {} | | | | | | | |", fail(&h.error));
                continue;
            }
            let per_n = |v: i64| format!("{:.1} KiB", v as f64 / n as f64);
            let _ = writeln!(
                o,
                "| {n} | {label} | {} | {} | {:.1} → {:.1} MiB | {} → {} | {} | {} | {} | {}{} |",
                h.per_waiter_kib().map_or("–".into(), kib),
                if *k == Kind::Abide {
                    "1×".into()
                } else {
                    ratio(abide, h.per_waiter_kib())
                },
                h.before.rss_kib as f64 / 1024.0,
                h.with.rss_kib as f64 / 1024.0,
                h.before.threads,
                h.with.threads,
                per_n(h.kernel_with.kernel_stack_kib - h.kernel_before.kernel_stack_kib),
                per_n(h.kernel_with.tcp_mem_kib - h.kernel_before.tcp_mem_kib),
                h.idle_ticks,
                h.answered,
                if h.error.is_some() {
                    format!(" ({})", fail(&h.error))
                } else {
                    String::new()
                },
            );
        }
    }
    let _ = writeln!(o);
}

fn breakdown_table(o: &mut String, rows: &[(Kind, HoldRow)], kind: Kind) {
    let Some(h) = rows
        .iter()
        .filter(|(k, h)| *k == kind && h.error.is_none() && !h.smaps_with.is_empty())
        .map(|(_, h)| h)
        .find(|h| {
            h.n == h.max_waiters && h.max_waiters == crate::servers::ABIDE_DEFAULT_MAX_WAITERS
        })
    else {
        return;
    };
    let n = h.n as f64;
    let _ = writeln!(
        o,
        "Where {}'s resident memory goes with N = {} held (from /proc/PID/smaps, mappings told apart by size; \
         KiB per held waiter):\n",
        if kind == Kind::Abide {
            "abide"
        } else {
            "the floor"
        },
        h.n
    );
    let _ = writeln!(
        o,
        "| kind of mapping | before | with | Δ per held waiter | mappings before → with |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|");
    let mut keys: Vec<&&str> = h.smaps_with.keys().chain(h.smaps_before.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut total = 0.0;
    for key in keys {
        let (b, bc) = h.smaps_before.get(*key).copied().unwrap_or_default();
        let (w, wc) = h.smaps_with.get(*key).copied().unwrap_or_default();
        let per = (w as f64 - b as f64) / n;
        total += per;
        let _ = writeln!(
            o,
            "| {key} | {b} KiB | {w} KiB | {per:.2} KiB | {bc} → {wc} |"
        );
    }
    let threads = (h.with.threads as f64 - h.before.threads as f64) / n;
    let _ = writeln!(o, "| **total** | | | **{total:.2} KiB** | |");
    let _ = writeln!(
        o,
        "\nThreads per held waiter: {threads:.2}. Kernel, not in VmRSS: KernelStack {:.1} KiB and TCP buffers \
         {:.2} KiB per held waiter (machine-wide deltas).\n",
        (h.kernel_with.kernel_stack_kib - h.kernel_before.kernel_stack_kib) as f64 / n,
        (h.kernel_with.tcp_mem_kib - h.kernel_before.tcp_mem_kib) as f64 / n,
    );
}

fn fanout_table(o: &mut String, rows: &[(Kind, FanoutRow)], kinds: &[Kind]) {
    if rows.is_empty() {
        let _ = writeln!(o, "Not run.\n");
        return;
    }
    header(
        o,
        &["N", "server"],
        kinds,
        &[
            "first",
            "median",
            "p99",
            "last",
            "last: abide ÷ this",
            "publisher round trip (worst)",
            "round trip: abide ÷ this",
        ],
    );
    let mut ns: Vec<usize> = rows.iter().map(|(_, f)| f.n).collect();
    ns.sort_unstable();
    ns.dedup();
    for n in ns {
        let a = find(rows, Kind::Abide, |f| f.n == n && f.error.is_none());
        for (k, f) in rows.iter().filter(|(_, f)| f.n == n) {
            if f.error.is_some() {
                let _ = writeln!(
                    o,
                    "| {n} | {} | {} | | | | | | |",
                    k.label(),
                    fail(&f.error)
                );
                continue;
            }
            let _ = writeln!(
                o,
                "| {n} | {} | {} | {} | {} | {} | {} | {} ({}) | {} |",
                k.label(),
                ms(f.first_us),
                ms(f.median_us),
                ms(f.p99_us),
                ms(f.last_us),
                if *k == Kind::Abide {
                    "1×".into()
                } else {
                    ratio(a.map(|a| a.last_us), Some(f.last_us))
                },
                ms(f.publish_rtt_us),
                ms(f.publish_rtt_max_us),
                if *k == Kind::Abide {
                    "1×".into()
                } else {
                    ratio(a.map(|a| a.publish_rtt_us), Some(f.publish_rtt_us))
                },
            );
        }
    }
    let _ = writeln!(o);
}

fn throughput_table(o: &mut String, rows: &[(Kind, ThroughputRow)], kinds: &[Kind]) {
    if rows.is_empty() {
        let _ = writeln!(o, "Not run.\n");
        return;
    }
    header(
        o,
        &["K", "server"],
        kinds,
        &[
            "events/s",
            "abide ÷ this",
            "deliveries/s",
            "abide ÷ this",
            "events",
            "losses",
            "duplicates",
            "reordered",
            "marked missed",
        ],
    );
    let mut ks: Vec<usize> = rows.iter().map(|(_, t)| t.k).collect();
    ks.sort_unstable();
    ks.dedup();
    for kk in ks {
        let a = find(rows, Kind::Abide, |t| t.k == kk && t.error.is_none());
        for (k, t) in rows.iter().filter(|(_, t)| t.k == kk) {
            if t.error.is_some() && t.published == 0 {
                let _ = writeln!(
                    o,
                    "| {kk} | {} | {} | | | | | | | | |",
                    k.label(),
                    fail(&t.error)
                );
                continue;
            }
            let _ = writeln!(
                o,
                "| {kk} | {} | {:.0} | {} | {:.0} | {} | {} | {} | {} | {} | {}{} |",
                k.label(),
                t.events_per_sec(),
                if *k == Kind::Abide {
                    "1×".into()
                } else {
                    ratio(
                        a.map(ThroughputRow::events_per_sec),
                        Some(t.events_per_sec()),
                    )
                },
                t.deliveries_per_sec(),
                if *k == Kind::Abide {
                    "1×".into()
                } else {
                    ratio(
                        a.map(ThroughputRow::deliveries_per_sec),
                        Some(t.deliveries_per_sec()),
                    )
                },
                t.published,
                t.losses,
                t.duplicates,
                t.reordered,
                t.missed_marks,
                if t.error.is_some() {
                    format!(" ({})", fail(&t.error))
                } else {
                    String::new()
                },
            );
        }
    }
    let _ = writeln!(o);
}

fn immediate_table(o: &mut String, rows: &[(Kind, ImmediateRow)], kinds: &[Kind]) {
    if rows.is_empty() {
        let _ = writeln!(o, "Not run.\n");
        return;
    }
    header(
        o,
        &["server"],
        kinds,
        &[
            "polls/s",
            "abide ÷ this",
            "p50",
            "p99",
            "p99.9",
            "max",
            "p99: abide ÷ this",
            "errors",
        ],
    );
    let a = find(rows, Kind::Abide, |i| i.error.is_none());
    for (k, i) in rows {
        if i.error.is_some() {
            let _ = writeln!(o, "| {} | {} | | | | | | | |", k.label(), fail(&i.error));
            continue;
        }
        let _ = writeln!(
            o,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            k.label(),
            i.rps(),
            if *k == Kind::Abide {
                "1×".into()
            } else {
                ratio(a.map(ImmediateRow::rps), Some(i.rps()))
            },
            ms(i.p50_us),
            ms(i.p99_us),
            ms(i.p999_us),
            ms(i.max_us),
            if *k == Kind::Abide {
                "1×".into()
            } else {
                ratio(a.map(|a| a.p99_us), Some(i.p99_us))
            },
            i.errors
        );
    }
    let _ = writeln!(o);
}

fn pi_table(o: &mut String, hold: &[(Kind, HoldRow)], fan: &[(Kind, FanoutRow)], kinds: &[Kind]) {
    if hold.is_empty() {
        let _ = writeln!(o, "Not run.\n");
        return;
    }
    header(
        o,
        &["server", "held the load"],
        kinds,
        &[
            "per held waiter",
            "abide ÷ this",
            "VmRSS with N held",
            "threads",
            "CPU ticks idle",
            "fan-out last",
            "last: abide ÷ this",
            "fan-out median",
            "publisher round trip",
        ],
    );
    let ah = find(hold, Kind::Abide, |_| true).and_then(HoldRow::per_waiter_kib);
    let af = find(fan, Kind::Abide, |f| f.error.is_none()).map(|f| f.last_us);
    for k in kinds {
        let h = find(hold, *k, |_| true);
        let f = find(fan, *k, |_| true);
        let held = h.is_some_and(HoldRow::ok) && f.is_some_and(|f| f.error.is_none());
        let why: Vec<String> = h
            .and_then(|h| h.error.clone())
            .into_iter()
            .chain(f.and_then(|f| f.error.clone()))
            .collect();
        let _ = writeln!(
            o,
            "| {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            k.label(),
            if held { "yes" } else { "**no**" },
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({})", why.join("; ").replace('|', "/"))
            },
            h.and_then(HoldRow::per_waiter_kib).map_or("–".into(), kib),
            if *k == Kind::Abide {
                "1×".into()
            } else {
                ratio(ah, h.and_then(HoldRow::per_waiter_kib))
            },
            h.map_or("–".into(), |h| format!(
                "{:.1} MiB",
                h.with.rss_kib as f64 / 1024.0
            )),
            h.map_or("–".into(), |h| h.with.threads.to_string()),
            h.map_or("–".into(), |h| h.idle_ticks.to_string()),
            f.filter(|f| f.error.is_none())
                .map_or("–".into(), |f| ms(f.last_us)),
            if *k == Kind::Abide {
                "1×".into()
            } else {
                ratio(af, f.filter(|f| f.error.is_none()).map(|f| f.last_us))
            },
            f.filter(|f| f.error.is_none())
                .map_or("–".into(), |f| ms(f.median_us)),
            f.filter(|f| f.error.is_none())
                .map_or("–".into(), |f| ms(f.publish_rtt_us)),
        );
    }
    let _ = writeln!(o);
}

/// The check line for abide's streams: every event delivered to every open
/// stream, once, in order.
fn streams_check(r: &Results) -> Option<String> {
    let fan: Vec<&FanoutRow> = r
        .stream_fanout
        .iter()
        .filter(|(k, _)| *k == Kind::Abide)
        .map(|(_, f)| f)
        .collect();
    let held: Vec<&HoldRow> = r
        .stream_hold
        .iter()
        .filter(|(k, t, _)| *k == Kind::Abide && *t == Transport::Stream)
        .map(|(_, _, h)| h)
        .collect();
    if fan.is_empty() && held.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    if !fan.is_empty() {
        parts.push(format!(
            "N = {} open streams each received every one of {} events once and in order",
            fan.iter()
                .map(|f| f.n.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            fan[0].rounds
        ));
    }
    for h in &held {
        parts.push(format!(
            "{} of {} open streams delivered the event published to them",
            h.answered, h.n
        ));
    }
    let failed: Vec<String> = fan
        .iter()
        .filter_map(|f| f.error.clone())
        .chain(held.iter().filter_map(|h| h.error.clone()))
        .collect();
    Some(format!(
        "Streams: {}: **{}**.",
        parts.join("; "),
        if failed.is_empty() {
            "pass".to_string()
        } else {
            format!("FAIL ({})", failed.join("; ").replace('|', "/"))
        }
    ))
}

/// Scenario 2's streams: the fan-out to N open Server-Sent Events streams
/// beside the same servers' long polls, and memory per open stream beside
/// memory per held poll.
fn streams_section(o: &mut String, r: &Results, m: &Meta) {
    let _ = writeln!(o, "### Streams (Server-Sent Events) beside long polls\n");
    if r.stream_fanout.is_empty() && r.stream_hold.is_empty() {
        let _ = writeln!(o, "Not run.\n");
        return;
    }
    let kinds: Vec<Kind> = r.kinds.iter().copied().filter(|k| k.streams()).collect();
    let skipped = r.kinds.iter().any(|k| !k.streams());
    let mut ns: Vec<usize> = r.stream_fanout.iter().map(|(_, f)| f.n).collect();
    ns.sort_unstable();
    ns.dedup();
    let list = |v: &[usize]| {
        v.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rounds = r.stream_fanout.first().map_or(m.rounds, |(_, f)| f.rounds);
    let _ = writeln!(
        o,
        "The same fan-out with N open streams instead of N held polls, for the servers that stream: {}{}. \
         abide's stream is its poll route asked with `Accept: text/event-stream` \
         (`GET /channels/fan/events?last_event_id=…`); Nchan's is its EventSource subscriber, the same `/sub/` \
         location (it permits `longpoll eventsource`, config below) asked with `Accept: text/event-stream`. For each \
         N ({}), every server started fresh: N connections each open one stream and read until its first message \
         (abide's `retry:`, Nchan's `: hi` comment), so that it is known to be open; once the server counts N open \
         streams (abide: `/stats` `streams`; Nchan: `subscribers` in its stub status), each of {rounds} rounds \
         publishes one event carrying its send time, and each stream notes when that event's `data:` message has \
         arrived whole. The streams stay open from round to round, and every stream must receive every round's \
         event once and in order. Same figures as the table above (medians over the rounds; the publisher's worst \
         round in brackets){}. Ratios: abide's stream figure ÷ the row's.\n",
        kinds
            .iter()
            .map(|k| k.label())
            .collect::<Vec<_>>()
            .join(" and "),
        if !skipped {
            ""
        } else {
            "; the async variant has no streams and is left out of these rows"
        },
        list(&ns),
        if r.fanout.is_empty() {
            ""
        } else {
            "; the long-poll rows are that table's"
        },
    );
    let poll = |k: Kind, n: usize| find(&r.fanout, k, |f| f.n == n);
    let sse = |k: Kind, n: usize| find(&r.stream_fanout, k, |f| f.n == n);
    if !ns.is_empty() {
        header(
            o,
            &["N", "server", "transport"],
            &kinds,
            &[
                "first",
                "median",
                "p99",
                "last",
                "last: abide SSE ÷ this",
                "publisher round trip (worst)",
                "round trip: abide SSE ÷ this",
            ],
        );
        for &n in &ns {
            let a = ok(sse(Kind::Abide, n));
            for &k in &kinds {
                for (t, f) in [
                    (Transport::Poll, poll(k, n)),
                    (Transport::Stream, sse(k, n)),
                ] {
                    let Some(f) = f else { continue };
                    if f.error.is_some() {
                        let _ = writeln!(
                            o,
                            "| {n} | {} | {} | {} | | | | | | |",
                            k.label(),
                            t.label(),
                            fail(&f.error)
                        );
                        continue;
                    }
                    let me = k == Kind::Abide && t == Transport::Stream;
                    let _ = writeln!(
                        o,
                        "| {n} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} |",
                        k.label(),
                        t.label(),
                        ms(f.first_us),
                        ms(f.median_us),
                        ms(f.p99_us),
                        ms(f.last_us),
                        if me {
                            "1×".into()
                        } else {
                            ratio(a.map(|a| a.last_us), Some(f.last_us))
                        },
                        ms(f.publish_rtt_us),
                        ms(f.publish_rtt_max_us),
                        if me {
                            "1×".into()
                        } else {
                            ratio(a.map(|a| a.publish_rtt_us), Some(f.publish_rtt_us))
                        },
                    );
                }
            }
        }
        let _ = writeln!(o);
        // What the table says at the largest N, from this run's figures.
        if let Some(&n) = ns.last()
            && let Some(a) = ok(sse(Kind::Abide, n))
        {
            let mut line = format!(
                "At N = {n}, the last of abide's streams had the event after {}",
                ms(a.last_us)
            );
            let mut rtt = format!(
                "the publisher's round trip was {} with streams",
                ms(a.publish_rtt_us)
            );
            if let Some(p) = ok(poll(Kind::Abide, n)) {
                let _ = write!(
                    line,
                    ", against {} for the last of its held polls (abide SSE ÷ abide poll: {})",
                    ms(p.last_us),
                    ratio(Some(a.last_us), Some(p.last_us))
                );
                let _ = write!(
                    rtt,
                    " and {} with polls (abide SSE ÷ abide poll: {})",
                    ms(p.publish_rtt_us),
                    ratio(Some(a.publish_rtt_us), Some(p.publish_rtt_us))
                );
            }
            if let Some(nc) = ok(sse(Kind::Nchan, n)) {
                let _ = write!(
                    line,
                    "{} {} for the last of Nchan's EventSource streams (abide SSE ÷ Nchan EventSource: {})",
                    if ok(poll(Kind::Abide, n)).is_some() {
                        " and"
                    } else {
                        ", against"
                    },
                    ms(nc.last_us),
                    ratio(Some(a.last_us), Some(nc.last_us))
                );
                let _ = write!(
                    rtt,
                    "; Nchan's publisher waited {} with EventSource streams (abide SSE ÷ Nchan EventSource: {})",
                    ms(nc.publish_rtt_us),
                    ratio(Some(a.publish_rtt_us), Some(nc.publish_rtt_us))
                );
            }
            let _ = writeln!(o, "{line}; {rtt}.\n");
        }
    }

    // ---- memory per open stream
    if r.stream_hold.is_empty() {
        return;
    }
    let n = r.stream_hold[0].2.n;
    let _ = writeln!(
        o,
        "Memory per open stream beside memory per held poll: N = {n} streams (polls) on one channel, each on its \
         own connection, measured as in scenario 1 (VmRSS summed over the server's processes after the same light \
         warm-up, then with all N open and counted by the server, 0.5 s later; the difference ÷ N; the kernel's \
         figures machine-wide; no idle window), each row on a freshly started server. Then one publish, which every \
         stream (poll) must deliver. Ratios: abide's figure per open stream ÷ the row's.\n"
    );
    header(
        o,
        &["server", "transport"],
        &kinds,
        &[
            "per open stream or held poll (VmRSS)",
            "abide SSE ÷ this",
            "VmRSS before → with",
            "threads before → with",
            "KernelStack Δ per waiter",
            "TCP mem Δ per waiter",
            "delivered",
        ],
    );
    let held = |k: Kind, t: Transport| {
        r.stream_hold
            .iter()
            .find(|(kk, tt, _)| *kk == k && *tt == t)
            .map(|(_, _, h)| h)
    };
    let a = held(Kind::Abide, Transport::Stream).and_then(HoldRow::per_waiter_kib);
    for (k, t, h) in &r.stream_hold {
        if h.error.is_some() && h.with.rss_kib == 0 {
            let _ = writeln!(
                o,
                "| {} | {} | {} | | | | | | |",
                k.label(),
                t.label(),
                fail(&h.error)
            );
            continue;
        }
        let per_n = |v: i64| format!("{:.1} KiB", v as f64 / h.n as f64);
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {:.1} → {:.1} MiB | {} → {} | {} | {} | {} of {}{} |",
            k.label(),
            t.label(),
            h.per_waiter_kib().map_or("–".into(), kib),
            if *k == Kind::Abide && *t == Transport::Stream {
                "1×".into()
            } else {
                ratio(a, h.per_waiter_kib())
            },
            h.before.rss_kib as f64 / 1024.0,
            h.with.rss_kib as f64 / 1024.0,
            h.before.threads,
            h.with.threads,
            per_n(h.kernel_with.kernel_stack_kib - h.kernel_before.kernel_stack_kib),
            per_n(h.kernel_with.tcp_mem_kib - h.kernel_before.tcp_mem_kib),
            h.answered,
            h.n,
            if h.error.is_some() {
                format!(" ({})", fail(&h.error))
            } else {
                String::new()
            },
        );
    }
    let _ = writeln!(o);
    let abide_poll = held(Kind::Abide, Transport::Poll).filter(|h| h.error.is_none());
    let abide_sse = held(Kind::Abide, Transport::Stream).filter(|h| h.error.is_none());
    let nchan_sse = held(Kind::Nchan, Transport::Stream).filter(|h| h.error.is_none());
    if let Some(s) = abide_sse.and_then(|h| h.per_waiter_kib().map(|v| (h, v))) {
        let (h, v) = s;
        let threads = (h.with.threads as f64 - h.before.threads as f64) / h.n as f64;
        let mut line = format!(
            "abide holds an open stream in {} of resident memory ({threads:.2} threads per stream)",
            kib(v)
        );
        if let Some((p, pv)) = abide_poll.and_then(|p| p.per_waiter_kib().map(|v| (p, v))) {
            let pthreads = (p.with.threads as f64 - p.before.threads as f64) / p.n as f64;
            let _ = write!(
                line,
                ", a held poll in {} ({pthreads:.2} threads per poll): abide SSE ÷ abide poll {}",
                kib(pv),
                ratio(Some(v), Some(pv))
            );
        }
        if let Some(nv) = nchan_sse.and_then(HoldRow::per_waiter_kib) {
            let _ = write!(
                line,
                "; Nchan holds an EventSource stream in {}: abide SSE ÷ Nchan EventSource {}",
                kib(nv),
                ratio(Some(v), Some(nv))
            );
        }
        let _ = writeln!(o, "{line}.\n");
        if let Some(p) = abide_poll {
            stream_breakdown_table(o, p, h);
        }
    }
}

/// Where abide's resident memory goes per held poll and per open stream,
/// side by side (smaps, mappings told apart by size as in scenario 1).
fn stream_breakdown_table(o: &mut String, poll: &HoldRow, stream: &HoldRow) {
    if poll.smaps_with.is_empty() || stream.smaps_with.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "Where abide's resident memory goes, per held poll and per open stream (N = {}, from /proc/PID/smaps as \
         in scenario 1; KiB per waiter):\n",
        stream.n
    );
    let _ = writeln!(
        o,
        "| kind of mapping | Δ per held poll | Δ per open stream | mappings with N polls → with N streams |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|");
    let mut keys: Vec<&&str> = poll
        .smaps_with
        .keys()
        .chain(poll.smaps_before.keys())
        .chain(stream.smaps_with.keys())
        .chain(stream.smaps_before.keys())
        .collect();
    keys.sort();
    keys.dedup();
    let per = |h: &HoldRow, key: &str| {
        let (b, _) = h.smaps_before.get(key).copied().unwrap_or_default();
        let (w, _) = h.smaps_with.get(key).copied().unwrap_or_default();
        (w as f64 - b as f64) / h.n as f64
    };
    let (mut tp, mut ts) = (0.0, 0.0);
    for key in keys {
        let (p, s) = (per(poll, key), per(stream, key));
        tp += p;
        ts += s;
        let count = |h: &HoldRow| h.smaps_with.get(*key).map_or(0, |v| v.1);
        let _ = writeln!(
            o,
            "| {key} | {p:.2} KiB | {s:.2} KiB | {} → {} |",
            count(poll),
            count(stream)
        );
    }
    let _ = writeln!(o, "| **total** | **{tp:.2} KiB** | **{ts:.2} KiB** | |\n");
}

fn ok(f: Option<&FanoutRow>) -> Option<&FanoutRow> {
    f.filter(|f| f.error.is_none())
}
