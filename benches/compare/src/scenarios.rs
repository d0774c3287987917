//! The eight scenarios. Each runs against one freshly started server and
//! returns its figures; `main` runs every server in turn for each point
//! (scenario 6: abide with each of its stores in turn; scenario 7: abide
//! with each access configuration in turn, scenarios 4 and 6's loads;
//! scenario 8: abide in memory, then abide nodes sharing a Redis, with
//! scenario 6's load for one publisher and scenario 2's fan-out).
//! Orchestration runs on the main thread (it may block); the connections are
//! tokio tasks on the harness's runtime.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::runtime::Runtime;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::client::{Conn, EventStream, numbers_after};
use crate::procfs::{self, Kernel, ProcSample};
use crate::servers::{Access, BUFFER, Cursor, Launch, NchanInstall, RedisServer, Server, Store};

/// Longest a poll is held in any scenario (seconds, the `timeout` parameter).
const HOLD_SECS: u64 = 110;

pub struct Ctx<'a> {
    pub rt: &'a Runtime,
    pub nchan: Option<&'a NchanInstall>,
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The same light warm-up for every server before a baseline is read: a
/// publish, a poll answered at once, and one held poll released by a publish.
fn warm_up(ctx: &Ctx, server: &Server) -> Result<(), String> {
    let id = server
        .publish_blocking("warm", r#"{"warm":1}"#)
        .map_err(|e| format!("warm-up publish: {e}"))?;
    let addr = server.addr;
    let now = server.immediate_request("warm");
    let held = server.poll_request("warm", &server.start_cursor(id), HOLD_SECS);
    let task = ctx.rt.spawn(async move {
        let mut c = Conn::connect(addr).await?;
        c.request_within(&now, Duration::from_secs(10)).await?;
        let mut c = Conn::connect(addr).await?;
        c.request_within(&held, Duration::from_secs(20)).await
    });
    server.wait_for_waiters(1, Duration::from_secs(10))?;
    server
        .publish_blocking("warm", r#"{"warm":2}"#)
        .map_err(|e| format!("warm-up publish: {e}"))?;
    let resp = ctx
        .rt
        .block_on(task)
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("warm-up poll: {e}"))?;
    if resp.status != 200 {
        return Err(format!("warm-up poll got {}", resp.status));
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

// ---------------------------------------------------------------- 1. hold

#[derive(Clone, Debug, Default)]
pub struct HoldRow {
    pub n: usize,
    pub max_waiters: usize,
    pub before: ProcSample,
    pub with: ProcSample,
    pub kernel_before: Kernel,
    pub kernel_with: Kernel,
    pub idle_ticks: u64,
    /// Polls answered `200` with the release event.
    pub answered: usize,
    pub error: Option<String>,
    /// abide only: resident KiB by kind of mapping, before and with.
    pub smaps_before: BTreeMap<&'static str, (u64, u64)>,
    pub smaps_with: BTreeMap<&'static str, (u64, u64)>,
}

impl HoldRow {
    pub fn per_waiter_kib(&self) -> Option<f64> {
        (self.error.is_none() && self.n > 0)
            .then(|| (self.with.rss_kib as f64 - self.before.rss_kib as f64) / self.n as f64)
    }
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.answered == self.n
    }
}

/// Classifies abide's mappings: thread stacks by their size.
pub fn abide_mapping_class(m: &procfs::Mapping) -> &'static str {
    let anon = m.path.is_empty();
    if m.path == "[heap]" {
        "main arena ([heap])"
    } else if !anon {
        if m.path.starts_with('[') {
            "other"
        } else {
            "binary and libraries"
        }
    } else if m.perms.starts_with("rw") {
        match m.size_kib {
            64 => "waiter stacks (64 KiB)",
            128 => "connection stacks (128 KiB, tiny_http)",
            256 => "writer/dispatch stacks (256 KiB)",
            132 | 136 | 140 => "malloc thread arenas",
            s if s > 1024 => "malloc thread arenas",
            _ => "other anonymous",
        }
    } else {
        "other"
    }
}

/// Starts a fresh server for `launch` and runs `measure` on it; a failure,
/// also to start, becomes the row's error.
fn on_fresh_server(
    ctx: &Ctx,
    launch: &Launch,
    measure: impl FnOnce(&Server) -> Result<(), String>,
) -> Option<String> {
    match Server::start(launch, ctx.nchan) {
        Ok(server) => measure(&server).err(),
        Err(e) => Some(format!("did not start: {e}")),
    }
}

pub fn hold(ctx: &Ctx, launch: &Launch, n: usize, idle: Duration) -> HoldRow {
    let mut row = HoldRow {
        n,
        max_waiters: launch.max_waiters,
        ..HoldRow::default()
    };
    row.error = on_fresh_server(ctx, launch, |server| hold_on(ctx, server, &mut row, idle));
    row
}

fn hold_on(ctx: &Ctx, server: &Server, row: &mut HoldRow, idle: Duration) -> Result<(), String> {
    let n = row.n;
    warm_up(ctx, server)?;
    // abide's and the hold floor's mappings, told apart by size alike.
    let is_abide = matches!(
        server.kind,
        crate::servers::Kind::Abide | crate::servers::Kind::FloorHold
    );
    row.before = procfs::sample(&server.pids());
    row.kernel_before = procfs::kernel();
    if is_abide {
        row.smaps_before = procfs::breakdown(server.serving_pid(), &abide_mapping_class);
    }
    let request = Arc::new(server.poll_request("hold", &server.start_cursor(0), HOLD_SECS));
    let addr = server.addr;
    let gate = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let request = request.clone();
        let gate = gate.clone();
        tasks.push(ctx.rt.spawn(async move {
            let permit = gate.acquire_owned().await.expect("open");
            let mut c = Conn::connect(addr).await?;
            c.send(&request).await?;
            drop(permit);
            tokio::time::timeout(Duration::from_secs(HOLD_SECS), c.read_response())
                .await
                .map_err(|_| std::io::Error::other("no answer"))?
        }));
    }
    server.wait_for_waiters(n as u64, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_millis(500));
    let ticks_before = procfs::sample(&server.pids()).ticks;
    std::thread::sleep(idle); // the measurement: CPU used while nothing happens
    row.with = procfs::sample(&server.pids());
    row.kernel_with = procfs::kernel();
    row.idle_ticks = row.with.ticks - ticks_before;
    if is_abide {
        row.smaps_with = procfs::breakdown(server.serving_pid(), &abide_mapping_class);
    }
    if !server.alive() {
        return Err("the server died while holding".into());
    }
    server
        .publish_blocking("hold", r#"{"bseq":0,"release":true}"#)
        .map_err(|e| format!("release publish: {e}"))?;
    let mut errors = BTreeMap::new();
    for task in tasks {
        match ctx.rt.block_on(task) {
            Ok(Ok(resp))
                if resp.status == 200 && !numbers_after(&resp.body, b"\"bseq\":").is_empty() =>
            {
                row.answered += 1
            }
            Ok(Ok(resp)) => *errors.entry(format!("status {}", resp.status)).or_insert(0) += 1,
            Ok(Err(e)) => *errors.entry(e.to_string()).or_insert(0) += 1,
            Err(e) => *errors.entry(e.to_string()).or_insert(0) += 1,
        }
    }
    if row.answered != n {
        return Err(format!(
            "{} of {n} held polls answered 200; others: {errors:?}",
            row.answered
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- 2. fan-out

#[derive(Clone, Debug, Default)]
pub struct FanoutRow {
    pub n: usize,
    pub rounds: usize,
    /// Medians over the rounds, in microseconds.
    pub first_us: f64,
    pub median_us: f64,
    pub p99_us: f64,
    pub last_us: f64,
    /// Median time for the publisher's POST to be answered, microseconds.
    pub publish_rtt_us: f64,
    pub publish_rtt_max_us: f64,
    pub error: Option<String>,
}

pub fn fanout(ctx: &Ctx, launch: &Launch, n: usize, rounds: usize) -> FanoutRow {
    let mut row = FanoutRow {
        n,
        rounds,
        ..FanoutRow::default()
    };
    row.error = on_fresh_server(ctx, launch, |server| fanout_on(ctx, &[server], &mut row));
    row
}

/// Waiters of `n` that `fanout_on` puts on node `k` of `nodes`.
fn share(n: usize, nodes: usize, k: usize) -> usize {
    n / nodes + usize::from(k < n % nodes)
}

/// The fan-out on `nodes` (one server, or scenario 8's nodes sharing a
/// Redis): waiter i on node i mod the count, the publisher on the first.
fn fanout_on(ctx: &Ctx, nodes: &[&Server], row: &mut FanoutRow) -> Result<(), String> {
    let (n, rounds) = (row.n, row.rounds);
    let publisher = nodes[0];
    for node in nodes {
        warm_up(ctx, node)?;
    }
    let last = publisher
        .publish_blocking("fan", r#"{"prime":1}"#)
        .map_err(|e| e.to_string())?;
    let (round_tx, round_rx) = watch::channel(0usize);
    let (result_tx, mut result_rx) = mpsc::unbounded_channel::<(usize, Result<i64, String>)>();
    let gate = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..n {
        let node = nodes[i % nodes.len()];
        let addr = node.addr;
        let mut cursor = node.start_cursor(last);
        let mut round_rx = round_rx.clone();
        let result_tx = result_tx.clone();
        let gate = gate.clone();
        let nchan = node.kind.is_nchan();
        tasks.push(ctx.rt.spawn(async move {
            let mut conn = {
                let _permit = gate.acquire().await.expect("open");
                match Conn::connect(addr).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = result_tx.send((0, Err(e.to_string())));
                        return;
                    }
                }
            };
            for r in 0..rounds {
                if round_rx.wait_for(|&v| v >= r).await.is_err() {
                    return;
                }
                let request = crate::servers::request_for(nchan, "fan", &cursor, HOLD_SECS);
                let out = match conn.request_within(&request, Duration::from_secs(60)).await {
                    Ok(resp) if resp.status == 200 => {
                        let got = wall_ns();
                        cursor.advance(&resp);
                        match numbers_after(&resp.body, b"\"bts\":").last() {
                            Some(&sent) => Ok((got as i64 - sent as i64) / 1000),
                            None => Err("an answer without the timestamp".to_string()),
                        }
                    }
                    Ok(resp) => Err(format!("status {}", resp.status)),
                    Err(e) => Err(e.to_string()),
                };
                let failed = out.is_err();
                let _ = result_tx.send((r, out));
                if failed {
                    return;
                }
            }
        }));
    }
    drop(result_tx);
    publish_rounds(ctx, publisher, row, &mut result_rx, |r| {
        let _ = round_tx.send(r);
        nodes.iter().enumerate().try_for_each(|(k, node)| {
            node.wait_for_waiters(share(n, nodes.len(), k) as u64, Duration::from_secs(30))
        })
    })?;
    for t in tasks {
        let _ = ctx.rt.block_on(t);
    }
    Ok(())
}

/// What a fan-out's subscribers report: (round, delay in µs or what failed).
type RoundResult = (usize, Result<i64, String>);

/// The publisher's side of a fan-out, for polls and streams alike: each
/// round, `ready(round)` (returns once the N subscribers wait), one `POST`
/// on a keep-alive connection carrying its send time, and the N
/// subscribers' delays from `results`; then the medians over the rounds.
fn publish_rounds(
    ctx: &Ctx,
    server: &Server,
    row: &mut FanoutRow,
    results: &mut mpsc::UnboundedReceiver<RoundResult>,
    mut ready: impl FnMut(usize) -> Result<(), String>,
) -> Result<(), String> {
    let (n, rounds) = (row.n, row.rounds);
    let mut publisher = ctx
        .rt
        .block_on(Conn::connect(server.addr))
        .map_err(|e| e.to_string())?;
    let mut per_round: Vec<[f64; 5]> = Vec::new();
    let mut rtt_max = 0f64;
    for r in 0..rounds {
        ready(r)?;
        let body = format!(r#"{{"bseq":{r},"bts":{}}}"#, wall_ns());
        let request = server.publish_request("fan", &body);
        let t0 = Instant::now();
        let resp = ctx
            .rt
            .block_on(async {
                publisher
                    .request_within(&request, Duration::from_secs(30))
                    .await
            })
            .map_err(|e| format!("publish: {e}"))?;
        let rtt = t0.elapsed().as_secs_f64() * 1e6;
        if !(200..300).contains(&resp.status) {
            return Err(format!("publish got {}", resp.status));
        }
        let mut lat = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while lat.len() < n {
            match ctx
                .rt
                .block_on(async { tokio::time::timeout_at(deadline, results.recv()).await })
            {
                Ok(Some((rr, Ok(us)))) if rr == r => lat.push(us.max(0) as f64),
                Ok(Some((rr, Err(e)))) => return Err(format!("round {rr}: a waiter failed: {e}")),
                Ok(Some(_)) => {}
                Ok(None) => return Err("waiters ended early".into()),
                Err(_) => {
                    return Err(format!(
                        "round {r}: {} of {n} waiters answered in 30 s",
                        lat.len()
                    ));
                }
            }
        }
        lat.sort_by(f64::total_cmp);
        per_round.push([
            lat[0],
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat[n - 1],
            rtt,
        ]);
        rtt_max = rtt_max.max(rtt);
    }
    let col = |i: usize| median(&per_round.iter().map(|r| r[i]).collect::<Vec<_>>());
    row.first_us = col(0);
    row.median_us = col(1);
    row.p99_us = col(2);
    row.last_us = col(3);
    row.publish_rtt_us = col(4);
    row.publish_rtt_max_us = rtt_max;
    Ok(())
}

// ---------------------------------------------------------------- 2, streams

/// How subscribers wait for events: held long polls, or open Server-Sent
/// Events streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Poll,
    Stream,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Poll => "long poll",
            Transport::Stream => "SSE",
        }
    }
}

/// Opens `n` streams on `channel` from `cursor`, each on its own connection
/// (at most 64 connecting at a time), and returns them once each has
/// delivered its first message (abide's `retry:`, Nchan's `: hi` comment),
/// so that it is known to be open and registered.
fn open_streams(
    ctx: &Ctx,
    server: &Server,
    channel: &str,
    cursor: &Cursor,
    n: usize,
) -> Result<Vec<EventStream>, String> {
    let request = Arc::new(server.stream_request(channel, cursor));
    let addr = server.addr;
    let gate = Arc::new(Semaphore::new(64));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let request = request.clone();
            let gate = gate.clone();
            ctx.rt.spawn(async move {
                let _permit = gate.acquire().await.expect("open");
                let open = async {
                    let conn = Conn::connect(addr).await?;
                    let mut stream = conn.open_stream(&request).await?;
                    let first = stream.next_message().await?;
                    if first.data.is_some() {
                        return Err(std::io::Error::other(format!(
                            "an event ({:?}) before anything was published",
                            first.event
                        )));
                    }
                    Ok(stream)
                };
                tokio::time::timeout(Duration::from_secs(30), open)
                    .await
                    .map_err(|_| std::io::Error::other("not open within 30 s"))?
            })
        })
        .collect();
    let mut streams = Vec::with_capacity(n);
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        match ctx.rt.block_on(t) {
            Ok(Ok(s)) => streams.push(s),
            Ok(Err(e)) => *errors.entry(e.to_string()).or_insert(0) += 1,
            Err(e) => *errors.entry(e.to_string()).or_insert(0) += 1,
        }
    }
    if streams.len() != n {
        return Err(format!(
            "{} of {n} streams opened; others: {errors:?}",
            streams.len()
        ));
    }
    Ok(streams)
}

/// The next event a stream delivers (comments, `retry:` and heartbeats
/// skipped): its `data`, and the wall clock (ns) when it had arrived whole.
/// `event: missed` or `event: gone`, the stream's end, or nothing within
/// `limit`, are errors.
async fn next_event(stream: &mut EventStream, limit: Duration) -> Result<(Vec<u8>, u64), String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let message = tokio::time::timeout_at(deadline, stream.next_message())
            .await
            .map_err(|_| format!("no event within {limit:?}"))?
            .map_err(|e| e.to_string())?;
        let got = wall_ns();
        if let Some(event) = message.event {
            return Err(format!("event: {event}"));
        }
        if let Some(data) = message.data {
            return Ok((data, got));
        }
    }
}

/// Scenario 2 with streams: N open streams instead of N held polls, the
/// same rounds and figures.
pub fn stream_fanout(ctx: &Ctx, launch: &Launch, n: usize, rounds: usize) -> FanoutRow {
    let mut row = FanoutRow {
        n,
        rounds,
        ..FanoutRow::default()
    };
    row.error = on_fresh_server(ctx, launch, |server| {
        stream_fanout_on(ctx, server, &mut row)
    });
    row
}

fn stream_fanout_on(ctx: &Ctx, server: &Server, row: &mut FanoutRow) -> Result<(), String> {
    let (n, rounds) = (row.n, row.rounds);
    warm_up(ctx, server)?;
    let last = server
        .publish_blocking("fan", r#"{"prime":1}"#)
        .map_err(|e| e.to_string())?;
    let streams = open_streams(ctx, server, "fan", &server.start_cursor(last), n)?;
    server.wait_for_streams(n as u64, Duration::from_secs(30))?;
    let (result_tx, mut result_rx) = mpsc::unbounded_channel::<RoundResult>();
    // Every stream stays open over all the rounds and must receive each
    // round's event, once and in order.
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            let result_tx = result_tx.clone();
            ctx.rt.spawn(async move {
                for r in 0..rounds {
                    let out = match next_event(&mut stream, Duration::from_secs(60)).await {
                        Ok((data, got)) => {
                            let seq = numbers_after(&data, b"\"bseq\":").first().copied();
                            let sent = numbers_after(&data, b"\"bts\":").first().copied();
                            match (seq, sent) {
                                (Some(s), Some(sent)) if s == r as u64 => {
                                    Ok((got as i64 - sent as i64) / 1000)
                                }
                                (Some(s), _) => Err(format!("event {s} came where {r} was due")),
                                _ => Err("an event without the sequence number and timestamp"
                                    .to_string()),
                            }
                        }
                        Err(e) => Err(e),
                    };
                    let failed = out.is_err();
                    let _ = result_tx.send((r, out));
                    if failed {
                        return;
                    }
                }
            })
        })
        .collect();
    drop(result_tx);
    publish_rounds(ctx, server, row, &mut result_rx, |_| {
        server.wait_for_streams(n as u64, Duration::from_secs(30))
    })?;
    for t in tasks {
        let _ = ctx.rt.block_on(t);
    }
    Ok(())
}

/// Memory per open stream, measured as scenario 1 measures a held poll: N
/// streams on one channel, resident memory after the same light warm-up and
/// with the N open (`idle_ticks` stays 0: there is no idle window); then one
/// publish that every stream must deliver (`answered`).
pub fn stream_hold(ctx: &Ctx, launch: &Launch, n: usize) -> HoldRow {
    let mut row = HoldRow {
        n,
        max_waiters: launch.max_waiters,
        ..HoldRow::default()
    };
    row.error = on_fresh_server(ctx, launch, |server| stream_hold_on(ctx, server, &mut row));
    row
}

fn stream_hold_on(ctx: &Ctx, server: &Server, row: &mut HoldRow) -> Result<(), String> {
    let n = row.n;
    warm_up(ctx, server)?;
    let is_abide = server.kind == crate::servers::Kind::Abide;
    row.before = procfs::sample(&server.pids());
    row.kernel_before = procfs::kernel();
    if is_abide {
        row.smaps_before = procfs::breakdown(server.serving_pid(), &abide_mapping_class);
    }
    let streams = open_streams(ctx, server, "hold", &server.start_cursor(0), n)?;
    server.wait_for_streams(n as u64, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_millis(500));
    row.with = procfs::sample(&server.pids());
    row.kernel_with = procfs::kernel();
    if is_abide {
        row.smaps_with = procfs::breakdown(server.serving_pid(), &abide_mapping_class);
    }
    if !server.alive() {
        return Err("the server died while holding the streams".into());
    }
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            ctx.rt.spawn(async move {
                let (data, _) = next_event(&mut stream, Duration::from_secs(30)).await?;
                if numbers_after(&data, b"\"release\":").is_empty() {
                    return Err(format!("another event: {}", String::from_utf8_lossy(&data)));
                }
                Ok(())
            })
        })
        .collect();
    server
        .publish_blocking("hold", r#"{"bseq":0,"release":1}"#)
        .map_err(|e| format!("release publish: {e}"))?;
    let mut errors = BTreeMap::new();
    for task in tasks {
        match ctx.rt.block_on(task) {
            Ok(Ok(())) => row.answered += 1,
            Ok(Err(e)) => *errors.entry(e).or_insert(0) += 1,
            Err(e) => *errors.entry(e.to_string()).or_insert(0) += 1,
        }
    }
    if row.answered != n {
        return Err(format!(
            "{} of {n} open streams delivered the event; others: {errors:?}",
            row.answered
        ));
    }
    Ok(())
}

pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

// ---------------------------------------------------------------- 3. throughput

#[derive(Clone, Debug, Default)]
pub struct ThroughputRow {
    pub k: usize,
    pub published: u64,
    pub publish_secs: f64,
    pub deliveries: u64,
    pub delivery_secs: f64,
    pub losses: u64,
    pub duplicates: u64,
    pub reordered: u64,
    /// Answers marked `Abide-Missed: true` (the server said it dropped events).
    pub missed_marks: u64,
    pub error: Option<String>,
}

impl ThroughputRow {
    pub fn events_per_sec(&self) -> f64 {
        self.published as f64 / self.publish_secs.max(1e-9)
    }
    pub fn deliveries_per_sec(&self) -> f64 {
        self.deliveries as f64 / self.delivery_secs.max(1e-9)
    }
    pub fn exact(&self) -> bool {
        self.error.is_none() && self.losses == 0 && self.duplicates == 0 && self.reordered == 0
    }
}

struct SubResult {
    seqs: Vec<u64>,
    missed_marks: u64,
    last_at: Option<Instant>,
    error: Option<String>,
}

pub fn throughput(
    ctx: &Ctx,
    launch: &Launch,
    k: usize,
    duration: Duration,
    max_events: u64,
) -> ThroughputRow {
    let mut row = ThroughputRow {
        k,
        ..ThroughputRow::default()
    };
    row.error = on_fresh_server(ctx, launch, |server| {
        throughput_on(ctx, server, &mut row, duration, max_events)
    });
    row
}

fn throughput_on(
    ctx: &Ctx,
    server: &Server,
    row: &mut ThroughputRow,
    duration: Duration,
    max_events: u64,
) -> Result<(), String> {
    let k = row.k;
    warm_up(ctx, server)?;
    let last = server
        .publish_blocking("tp", r#"{"prime":1}"#)
        .map_err(|e| e.to_string())?;
    let addr = server.addr;
    let nchan = server.kind.is_nchan();
    let drain_limit = duration + Duration::from_secs(20);
    let mut subs = Vec::new();
    for _ in 0..k {
        let mut cursor = server.start_cursor(last);
        subs.push(ctx.rt.spawn(async move {
            let mut out = SubResult {
                seqs: Vec::new(),
                missed_marks: 0,
                last_at: None,
                error: None,
            };
            let started = Instant::now();
            let mut conn = match Conn::connect(addr).await {
                Ok(c) => c,
                Err(e) => {
                    out.error = Some(e.to_string());
                    return out;
                }
            };
            loop {
                let left = drain_limit.saturating_sub(started.elapsed());
                if left.is_zero() {
                    out.error = Some("did not see the end marker in time".into());
                    return out;
                }
                let request = crate::servers::request_for(nchan, "tp", &cursor, HOLD_SECS);
                match conn.request_within(&request, left).await {
                    Ok(resp) if resp.status == 200 => {
                        out.last_at = Some(Instant::now());
                        out.missed_marks += u64::from(resp.missed);
                        out.seqs.extend(numbers_after(&resp.body, b"\"bseq\":"));
                        cursor.advance(&resp);
                        if !numbers_after(&resp.body, b"\"bend\":").is_empty() {
                            return out;
                        }
                    }
                    Ok(resp) if resp.status == 204 || resp.status == 304 || resp.status == 408 => {}
                    Ok(resp) => {
                        out.error = Some(format!("status {}", resp.status));
                        return out;
                    }
                    Err(e) => {
                        out.error = Some(e.to_string());
                        return out;
                    }
                }
            }
        }));
    }
    server.wait_for_waiters(k as u64, Duration::from_secs(30))?;
    let publish_path_req = {
        let s = server;
        move |body: &str| s.publish_request("tp", body)
    };
    let started = Instant::now();
    let pub_result: Result<u64, String> = ctx.rt.block_on(async {
        let mut conn = Conn::connect(addr).await.map_err(|e| e.to_string())?;
        let mut i = 0u64;
        while i < max_events && started.elapsed() < duration {
            let req = publish_path_req(&format!(r#"{{"bseq":{i}}}"#));
            let resp = conn
                .request_within(&req, Duration::from_secs(30))
                .await
                .map_err(|e| format!("publish: {e}"))?;
            if !(200..300).contains(&resp.status) {
                return Err(format!("publish got {}", resp.status));
            }
            i += 1;
        }
        Ok(i)
    });
    let published = pub_result?;
    row.publish_secs = started.elapsed().as_secs_f64();
    row.published = published;
    server
        .publish_blocking("tp", r#"{"bend":1}"#)
        .map_err(|e| format!("end marker: {e}"))?;
    let mut last_at = started;
    let mut errors = Vec::new();
    for sub in subs {
        let r = ctx.rt.block_on(sub).map_err(|e| e.to_string())?;
        if let Some(e) = r.error {
            errors.push(e);
        }
        if let Some(t) = r.last_at {
            last_at = last_at.max(t);
        }
        row.missed_marks += r.missed_marks;
        row.deliveries += r.seqs.len() as u64;
        let mut seen = vec![false; published as usize];
        let mut prev: Option<u64> = None;
        for &s in &r.seqs {
            if s >= published {
                continue;
            }
            if seen[s as usize] {
                row.duplicates += 1;
            }
            seen[s as usize] = true;
            if prev.is_some_and(|p| s < p) {
                row.reordered += 1;
            }
            prev = Some(s);
        }
        row.losses += seen.iter().filter(|x| !**x).count() as u64;
    }
    row.delivery_secs = (last_at - started).as_secs_f64();
    if !errors.is_empty() {
        return Err(format!(
            "{} subscribers failed, e.g. {}",
            errors.len(),
            errors[0]
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- 4. immediate polls

#[derive(Clone, Debug, Default)]
pub struct ImmediateRow {
    pub requests: u64,
    pub errors: u64,
    pub secs: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub error: Option<String>,
}

impl ImmediateRow {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.secs.max(1e-9)
    }
}

pub fn immediate(
    ctx: &Ctx,
    launch: &Launch,
    connections: usize,
    duration: Duration,
) -> ImmediateRow {
    let mut row = ImmediateRow::default();
    row.error = on_fresh_server(ctx, launch, |server| {
        immediate_on(ctx, server, &mut row, connections, duration)
    });
    row
}

fn immediate_on(
    ctx: &Ctx,
    server: &Server,
    row: &mut ImmediateRow,
    connections: usize,
    duration: Duration,
) -> Result<(), String> {
    warm_up(ctx, server)?;
    for i in 0..10 {
        server
            .publish_blocking("imm", &format!(r#"{{"bseq":{i}}}"#))
            .map_err(|e| e.to_string())?;
    }
    let request = Arc::new(server.immediate_request("imm"));
    let addr = server.addr;
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let request = request.clone();
            ctx.rt.spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let Ok(mut conn) = Conn::connect(addr).await else {
                    return (lat, 1);
                };
                while started.elapsed() < duration {
                    let t0 = Instant::now();
                    match conn.request_within(&request, Duration::from_secs(10)).await {
                        Ok(resp) if resp.status == 200 => {
                            lat.push(t0.elapsed().as_secs_f64() * 1e6)
                        }
                        Ok(_) => errors += 1,
                        Err(_) => {
                            errors += 1;
                            match Conn::connect(addr).await {
                                Ok(c) => conn = c,
                                Err(_) => break,
                            }
                        }
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        let (lat, errors) = ctx.rt.block_on(t).map_err(|e| e.to_string())?;
        row.errors += errors;
        all.extend(lat);
    }
    row.secs = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    row.requests = all.len() as u64;
    row.p50_us = percentile(&all, 0.5);
    row.p99_us = percentile(&all, 0.99);
    row.p999_us = percentile(&all, 0.999);
    row.max_us = all.last().copied().unwrap_or(f64::NAN);
    Ok(())
}

// ---------------------------------------------------------------- 6. durability

#[derive(Clone, Debug, Default)]
pub struct DurabilityRow {
    pub store: Store,
    /// Concurrent publishers, each on its own keep-alive connection and its
    /// own channel.
    pub publishers: usize,
    /// Events put in each channel before the measurement (its buffer's size).
    pub prefill: usize,
    /// Publishes answered `2xx` in the measured run.
    pub acked: u64,
    /// Sum of their JSON bodies' lengths.
    pub body_bytes: u64,
    /// From the first publish to the last answer.
    pub secs: f64,
    /// Publisher's round trips, microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Change of the server's /proc/PID/io over the measured run.
    pub io: procfs::Io,
    /// `/stats` `store_commits` and `store_errors` changes over the run.
    pub commits: u64,
    pub store_errors: u64,
    /// Publishes answered otherwise, or that failed.
    pub failed: u64,
    pub error: Option<String>,
}

impl DurabilityRow {
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.acked > 0
    }
    pub fn publishes_per_sec(&self) -> f64 {
        self.acked as f64 / self.secs.max(1e-9)
    }
    /// `write_bytes` Δ ÷ publishes acknowledged.
    pub fn written_per_event(&self) -> Option<f64> {
        (self.acked > 0).then(|| self.io.write_bytes as f64 / self.acked as f64)
    }
    /// Publishes acknowledged ÷ commits (SQLite only).
    pub fn events_per_commit(&self) -> Option<f64> {
        (self.store != Store::Memory && self.commits > 0)
            .then(|| self.acked as f64 / self.commits as f64)
    }
}

/// A publish of a small sensor reading, `{"t":21.5,"n":N}`, to `path`, with
/// `auth` (`Server::auth_header`); and the body's length.
fn reading_publish(path: &str, auth: &str, n: u64) -> (Vec<u8>, usize) {
    let body = format!(r#"{{"t":21.5,"n":{n}}}"#);
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: bench\r\n{auth}Content-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    (request.into_bytes(), body.len())
}

/// Scenario 6: `publishers` publishers, back to back, against abide with
/// `launch.store`; at most `max_events` publishes within `duration`.
pub fn durability(
    ctx: &Ctx,
    launch: &Launch,
    publishers: usize,
    duration: Duration,
    max_events: u64,
) -> DurabilityRow {
    let mut row = DurabilityRow {
        store: launch.store.unwrap_or_default(),
        publishers,
        prefill: BUFFER,
        ..DurabilityRow::default()
    };
    row.error = on_fresh_server(ctx, launch, |server| {
        durability_on(ctx, server, &mut row, duration, max_events)
    });
    row
}

/// `store_commits` and `store_errors` from `/stats`, after checking that the
/// server keeps its events where it was asked to.
fn store_counters(server: &Server, store: Store) -> Result<(u64, u64), String> {
    let v = server.stats().map_err(|e| format!("/stats: {e}"))?;
    let name = v["store"].as_str().unwrap_or("?");
    if name != store.stats_name() {
        return Err(format!(
            "/stats says store {name}, expected {}",
            store.stats_name()
        ));
    }
    Ok((
        v["store_commits"].as_u64().unwrap_or(0),
        v["store_errors"].as_u64().unwrap_or(0),
    ))
}

fn durability_on(
    ctx: &Ctx,
    server: &Server,
    row: &mut DurabilityRow,
    duration: Duration,
    max_events: u64,
) -> Result<(), String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    const ANSWER_LIMIT: Duration = Duration::from_secs(15);
    warm_up(ctx, server)?;
    let addr = server.addr;
    let pid = server.serving_pid();
    // Publisher p publishes on channel `dur-p`.
    let paths: Vec<Arc<str>> = (0..row.publishers)
        .map(|p| server.publish_path(&format!("dur-{p}")).into())
        .collect();
    // Connect, then fill every channel to its buffer (not measured), so that
    // each measured publish also drops the channel's oldest event, as on a
    // server that has been running for a while.
    let auth: Arc<str> = server.auth_header().into();
    let prefill = row.prefill as u64;
    let tasks: Vec<_> = paths
        .iter()
        .cloned()
        .map(|path| {
            let auth = auth.clone();
            ctx.rt.spawn(async move {
                let mut conn = Conn::connect(addr).await.map_err(|e| e.to_string())?;
                for n in 0..prefill {
                    let resp = conn
                        .request_within(&reading_publish(&path, &auth, n).0, ANSWER_LIMIT)
                        .await
                        .map_err(|e| format!("prefill publish: {e}"))?;
                    if !(200..300).contains(&resp.status) {
                        return Err(format!("prefill publish got {}", resp.status));
                    }
                }
                Ok::<Conn, String>(conn)
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(tasks.len());
    for t in tasks {
        conns.push(ctx.rt.block_on(t).map_err(|e| e.to_string())??);
    }
    let io_before = procfs::io(pid).ok_or("cannot read /proc/PID/io")?;
    let (commits_before, errors_before) = store_counters(server, row.store)?;
    // The measurement: every publisher back to back until the time or the
    // count is used up.
    let budget = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .zip(paths.iter().cloned())
        .map(|(mut conn, path)| {
            let budget = budget.clone();
            let auth = auth.clone();
            ctx.rt.spawn(async move {
                let mut lat = Vec::new();
                let mut body_bytes = 0u64;
                let mut failure = None;
                let mut n = prefill;
                while started.elapsed() < duration
                    && budget.fetch_add(1, Ordering::Relaxed) < max_events
                {
                    let (req, body_len) = reading_publish(&path, &auth, n);
                    let t0 = Instant::now();
                    match conn.request_within(&req, ANSWER_LIMIT).await {
                        Ok(resp) if (200..300).contains(&resp.status) => {
                            lat.push(t0.elapsed().as_secs_f64() * 1e6);
                            body_bytes += body_len as u64;
                        }
                        Ok(resp) => {
                            failure = Some(format!(
                                "publish got {}: {}",
                                resp.status,
                                String::from_utf8_lossy(&resp.body)
                            ));
                            break;
                        }
                        Err(e) => {
                            failure = Some(format!("publish: {e}"));
                            break;
                        }
                    }
                    n += 1;
                }
                (lat, body_bytes, failure)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut failures = Vec::new();
    for t in tasks {
        let (lat, body_bytes, failure) = ctx.rt.block_on(t).map_err(|e| e.to_string())?;
        all.extend(lat);
        row.body_bytes += body_bytes;
        failures.extend(failure);
    }
    row.secs = started.elapsed().as_secs_f64();
    let io_after = procfs::io(pid).ok_or("cannot read /proc/PID/io")?;
    let (commits_after, errors_after) = store_counters(server, row.store)?;
    row.io = procfs::Io {
        write_bytes: io_after.write_bytes.saturating_sub(io_before.write_bytes),
        cancelled_write_bytes: io_after
            .cancelled_write_bytes
            .saturating_sub(io_before.cancelled_write_bytes),
    };
    row.commits = commits_after.saturating_sub(commits_before);
    row.store_errors = errors_after.saturating_sub(errors_before);
    all.sort_by(f64::total_cmp);
    row.acked = all.len() as u64;
    row.p50_us = percentile(&all, 0.5);
    row.p99_us = percentile(&all, 0.99);
    row.max_us = all.last().copied().unwrap_or(f64::NAN);
    row.failed = failures.len() as u64;
    if !server.alive() {
        return Err("the server died".into());
    }
    if let Some(first) = failures.first() {
        return Err(format!(
            "{} of {} publishers failed, e.g. {first}",
            failures.len(),
            row.publishers
        ));
    }
    if row.store_errors > 0 {
        return Err(format!("{} store errors", row.store_errors));
    }
    Ok(())
}

// ---------------------------------------------------------------- 7. access control

/// Scenario 7: one round of one access configuration of abide, measured
/// with scenario 4's immediate polls and scenario 6's publishers (in
/// memory), each on a fresh server.
#[derive(Clone, Debug, Default)]
pub struct AccessRow {
    pub access: Access,
    pub round: usize,
    pub immediate: ImmediateRow,
    pub publish: DurabilityRow,
}

impl AccessRow {
    /// Every immediate poll answered `200`.
    pub fn polls_ok(&self) -> bool {
        self.immediate.error.is_none() && self.immediate.errors == 0 && self.immediate.requests > 0
    }
    /// Every publish answered `2xx`.
    pub fn publish_ok(&self) -> bool {
        self.publish.ok() && self.publish.failed == 0
    }
}

/// Scenario 7, one round for `launch.access`: `connections` immediate
/// pollers for `secs`, then `publishers` publishers for `secs` (at most
/// `max_events` publishes).
pub fn access(
    ctx: &Ctx,
    launch: &Launch,
    round: usize,
    connections: usize,
    publishers: usize,
    secs: Duration,
    max_events: u64,
) -> AccessRow {
    AccessRow {
        access: launch.access,
        round,
        immediate: immediate(ctx, launch, connections, secs),
        publish: durability(ctx, launch, publishers, secs, max_events),
    }
}

/// Scenario 7's figures for `access`: of its rounds without a failure, the
/// one with the most immediate polls per second and the one with the most
/// publishes per second (other load on a shared machine only ever slows a
/// round down, so the best round is the least disturbed).
pub fn access_best(
    rows: &[AccessRow],
    access: Access,
) -> (Option<&ImmediateRow>, Option<&DurabilityRow>) {
    let rounds = || rows.iter().filter(move |a| a.access == access);
    (
        rounds()
            .filter(|a| a.polls_ok())
            .map(|a| &a.immediate)
            .max_by(|x, y| x.rps().total_cmp(&y.rps())),
        rounds()
            .filter(|a| a.publish_ok())
            .map(|a| &a.publish)
            .max_by(|x, y| x.publishes_per_sec().total_cmp(&y.publishes_per_sec())),
    )
}

// ---------------------------------------------------------------- 8. more than one machine: Redis

/// Scenario 8's publish round trip: one publisher, back to back on one
/// keep-alive connection (scenario 6's load), on one fresh node for
/// `launch`: in memory, or on `redis` (emptied first).
pub fn redis_publish(
    ctx: &Ctx,
    launch: &Launch,
    redis: Option<&RedisServer>,
    duration: Duration,
    max_events: u64,
) -> DurabilityRow {
    match empty_redis(redis) {
        Ok(()) => durability(ctx, launch, 1, duration, max_events),
        Err(e) => DurabilityRow {
            store: launch.store.unwrap_or_default(),
            publishers: 1,
            prefill: BUFFER,
            error: Some(e),
            ..DurabilityRow::default()
        },
    }
}

/// Scenario 8's fan-out: which store, on how many nodes.
#[derive(Clone, Debug, Default)]
pub struct RedisFanoutRow {
    pub store: Store,
    pub nodes: usize,
    pub fanout: FanoutRow,
}

/// Scenario 2's fan-out with the N waiters spread evenly over `nodes` fresh
/// nodes for `launch` (on `redis`, emptied first, when it has one), the
/// publisher on the first node.
pub fn redis_fanout(
    ctx: &Ctx,
    launch: &Launch,
    redis: Option<&RedisServer>,
    nodes: usize,
    n: usize,
    rounds: usize,
) -> RedisFanoutRow {
    let mut row = RedisFanoutRow {
        store: launch.store.unwrap_or_default(),
        nodes,
        fanout: FanoutRow {
            n,
            rounds,
            ..FanoutRow::default()
        },
    };
    let measured = empty_redis(redis).and_then(|()| {
        let servers = (0..nodes)
            .map(|k| {
                Server::start(launch, ctx.nchan)
                    .map_err(|e| format!("node {} did not start: {e}", k + 1))
            })
            .collect::<Result<Vec<Server>, String>>()?;
        let nodes: Vec<&Server> = servers.iter().collect();
        fanout_on(ctx, &nodes, &mut row.fanout)?;
        match nodes.iter().position(|node| !node.alive()) {
            Some(k) => Err(format!("node {} died", k + 1)),
            None if redis.is_some_and(|r| !r.alive()) => Err("redis-server died".into()),
            None => Ok(()),
        }
    });
    row.fanout.error = measured.err();
    row
}

/// Empties `redis`, when the measurement has one, so that every
/// measurement starts on a Redis that holds nothing.
fn empty_redis(redis: Option<&RedisServer>) -> Result<(), String> {
    match redis {
        Some(redis) => redis.flush().map_err(|e| format!("emptying Redis: {e}")),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------- pinning

/// Pins every thread of this process to `cpus` (the Pi profile keeps the
/// load generator off the server's core).
pub fn pin_self(cpus: &[usize]) {
    // SAFETY: cpu_set_t is plain data; the calls get valid pointers and sizes.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for t in tasks.flatten() {
                if let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
                    libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
                }
            }
        }
    }
}
