//! The benchmark harness: abide side by side with an async variant (tokio +
//! hyper, current-thread and 2-worker multi-thread runtimes) and, when
//! installed, Nchan, in five scenarios (hold, fan-out, throughput, immediate
//! polls, a Raspberry-Pi-sized profile; the fan-out also with Server-Sent
//! Events streams for abide and Nchan, and their memory per open stream),
//! a sixth for abide alone (durability: publishing into memory, SQLite
//! `--sync normal` and `--sync full`), a seventh for abide alone (the
//! cost of access control: no flags, `--auth-file`, `--auth-file` and
//! shares), and, when `redis-server` is installed, an eighth for abide
//! alone (more than one machine: publishes and a fan-out over two nodes
//! sharing a Redis the harness starts, beside one node in memory). Writes
//! BENCHMARKS.md and the SVG plots under docs/bench/ (full mode) or
//! target/bench-quick/ (quick mode).
//!
//! A crate of its own in the workspace (`abide-compare`), so that tokio,
//! hyper and plotters are built only for it, never by `make test` or
//! `make test-pi`. It measures the release binary `target/release/abide`
//! (`ABIDE_BIN` overrides it):
//! `make bench` = `cargo build --release --bin abide` and then
//! `BENCH_MODE=full cargo run --release -p abide-compare`;
//! `make bench-quick` the same with `BENCH_MODE=quick`.
//! Called as `compare serve-async --flavor current|multi --listen ADDR`, this
//! executable is the async variant's server instead (the harness starts it so);
//! as `compare serve-floor --threads N [--hold-threads] --listen ADDR`, the
//! floor servers (bare tiny_http: `floor_server.rs`, `floor_hold.rs`).
//!
//! Every loop is bounded in count and time, all traffic is on loopback, and
//! every server process is killed by PID when its measurement ends, also on
//! failure. Linux only (it reads /proc).

mod async_server;
mod client;
mod floor_hold;
mod floor_server;
mod plots;
mod procfs;
mod report;
mod scenarios;
mod servers;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use report::{Meta, Results};
use scenarios::{Ctx, Transport};
use servers::{ABIDE_DEFAULT_MAX_WAITERS, Access, Kind, Launch, RedisServer, Store};

struct Plan {
    mode: &'static str,
    hold_ns: Vec<usize>,
    idle: Duration,
    fanout_ns: Vec<usize>,
    rounds: usize,
    tp_ks: Vec<usize>,
    tp_secs: Duration,
    tp_max_events: u64,
    imm_conns: usize,
    imm_secs: Duration,
    pi_rounds: usize,
    /// Scenario 6: concurrent publishers per run, the length and the most
    /// publishes of each run.
    dur_publishers: Vec<usize>,
    dur_secs: Duration,
    dur_max_events: u64,
    /// Scenario 7: rounds (each configuration once per round), the length
    /// of each polling and each publishing run, and the publishers (the
    /// polling connections are scenario 4's).
    acc_rounds: usize,
    acc_secs: Duration,
    acc_publishers: usize,
    /// Scenario 8: the length and the most publishes of each publish run
    /// (one publisher), and the waiters of the fan-outs (scenario 2's
    /// rounds).
    redis_secs: Duration,
    redis_max_events: u64,
    redis_fanout_ns: Vec<usize>,
    out_dir: PathBuf,
    plot_dir: PathBuf,
}

fn plan() -> Plan {
    let root = servers::workspace_root();
    let root = root.as_path();
    let quick = std::env::var("BENCH_MODE").is_ok_and(|m| m == "quick");
    if quick {
        let out = root.join("target/bench-quick");
        Plan {
            mode: "quick",
            hold_ns: vec![100, ABIDE_DEFAULT_MAX_WAITERS],
            idle: Duration::from_secs(2),
            fanout_ns: vec![10, 100],
            rounds: 5,
            tp_ks: vec![1, 10],
            tp_secs: Duration::from_secs(1),
            tp_max_events: 50_000,
            imm_conns: 50,
            imm_secs: Duration::from_secs(1),
            pi_rounds: 3,
            dur_publishers: vec![1, 16],
            dur_secs: Duration::from_millis(1500),
            dur_max_events: 100_000,
            acc_rounds: 3,
            acc_secs: Duration::from_secs(1),
            acc_publishers: 16,
            redis_secs: Duration::from_secs(1),
            redis_max_events: 100_000,
            redis_fanout_ns: vec![100],
            plot_dir: out.join("docs/bench"),
            out_dir: out,
        }
    } else {
        Plan {
            mode: "full",
            hold_ns: vec![100, 500, ABIDE_DEFAULT_MAX_WAITERS, 2000],
            idle: Duration::from_secs(10),
            fanout_ns: vec![10, 100, 500],
            rounds: 20,
            tp_ks: vec![1, 10, 100],
            tp_secs: Duration::from_secs(5),
            tp_max_events: 500_000,
            imm_conns: 50,
            imm_secs: Duration::from_secs(5),
            pi_rounds: 20,
            dur_publishers: vec![1, 16],
            dur_secs: Duration::from_secs(5),
            dur_max_events: 500_000,
            acc_rounds: 3,
            acc_secs: Duration::from_secs(3),
            acc_publishers: 16,
            redis_secs: Duration::from_secs(3),
            redis_max_events: 500_000,
            redis_fanout_ns: vec![100, 500],
            out_dir: root.to_path_buf(),
            plot_dir: root.join("docs/bench"),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve-async") {
        return serve_async(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("serve-floor") {
        return serve_floor(&args[1..]);
    }
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let plan = plan();
    // `BENCH_SCENARIOS=2,3` runs only those (for development); default all.
    // `2` includes the stream rows; `2s` runs those alone.
    let only = std::env::var("BENCH_SCENARIOS").ok();
    let wanted = |s: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|x| x.trim() == s))
    };
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let nchan = servers::find_nchan();
    let mut kinds = vec![Kind::Abide, Kind::AsyncCurrent, Kind::AsyncMulti];
    match &nchan {
        Ok(n) => {
            eprintln!("Nchan: {} ({})", n.version, n.nginx.display());
            kinds.push(Kind::Nchan);
        }
        Err(why) => {
            eprintln!("Nchan skipped: {why} (apt-get install nginx-light libnginx-mod-nchan)")
        }
    }
    // The floors, each only in its scenarios (`Kind::in_scenario`).
    kinds.extend([Kind::FloorHold, Kind::FloorInline1, Kind::FloorInlineN]);
    // `BENCH_SERVERS=abide,nchan` keeps only those (for development); default all.
    if let Ok(keep) = std::env::var("BENCH_SERVERS") {
        kinds.retain(|k| keep.split(',').any(|x| x.trim() == k.short()));
    }
    let ctx = Ctx {
        rt: &rt,
        nchan: nchan.as_ref().ok(),
    };
    let launch = |kind: Kind, max_waiters: usize, pi: bool| Launch {
        kind,
        max_waiters,
        pi,
        store: None,
        redis: None,
        access: Access::Open,
    };
    let mut r = Results {
        kinds: kinds.clone(),
        hold: Vec::new(),
        fanout: Vec::new(),
        stream_fanout: Vec::new(),
        stream_hold: Vec::new(),
        throughput: Vec::new(),
        immediate: Vec::new(),
        pi_hold: Vec::new(),
        pi_fanout: Vec::new(),
        durability: Vec::new(),
        access: Vec::new(),
        redis_publish: Vec::new(),
        redis_fanout: Vec::new(),
    };

    let of = |s: u8| -> Vec<Kind> { kinds.iter().copied().filter(|k| k.in_scenario(s)).collect() };
    for &n in plan.hold_ns.iter().filter(|_| wanted("1")) {
        for &k in &of(1) {
            let max_waiters = n.max(ABIDE_DEFAULT_MAX_WAITERS);
            let row = scenarios::hold(&ctx, &launch(k, max_waiters, false), n, plan.idle);
            eprintln!(
                "1 hold     N={n:<5} {:<24} {:>6} KiB/waiter, {} idle ticks{}",
                k.label(),
                row.per_waiter_kib()
                    .map_or("-".into(), |v| format!("{v:.1}")),
                row.idle_ticks,
                row.error
                    .as_ref()
                    .map(|e| format!("  FAILED: {e}"))
                    .unwrap_or_default()
            );
            r.hold.push((k, row));
        }
    }
    // Scenario 2: per N, the long polls of every server, then the streams of
    // those that stream (`BENCH_SCENARIOS=2s`: the streams alone).
    let streams_wanted = wanted("2") || wanted("2s");
    let stream_kinds: Vec<Kind> = kinds.iter().copied().filter(|k| k.streams()).collect();
    for &n in plan.fanout_ns.iter().filter(|_| streams_wanted) {
        for &k in of(2).iter().filter(|_| wanted("2")) {
            let row = scenarios::fanout(
                &ctx,
                &launch(k, ABIDE_DEFAULT_MAX_WAITERS, false),
                n,
                plan.rounds,
            );
            eprintln!(
                "2 fan-out  N={n:<5} {:<24} last {:.2} ms, publish {:.2} ms{}",
                k.label(),
                row.last_us / 1000.0,
                row.publish_rtt_us / 1000.0,
                row.error
                    .as_ref()
                    .map(|e| format!("  FAILED: {e}"))
                    .unwrap_or_default()
            );
            r.fanout.push((k, row));
        }
        for &k in stream_kinds.iter().filter(|_| streams_wanted) {
            let row = scenarios::stream_fanout(
                &ctx,
                &launch(k, ABIDE_DEFAULT_MAX_WAITERS, false),
                n,
                plan.rounds,
            );
            eprintln!(
                "2 streams  N={n:<5} {:<24} last {:.2} ms, publish {:.2} ms{}",
                k.label(),
                row.last_us / 1000.0,
                row.publish_rtt_us / 1000.0,
                row.error
                    .as_ref()
                    .map(|e| format!("  FAILED: {e}"))
                    .unwrap_or_default()
            );
            r.stream_fanout.push((k, row));
        }
    }
    // Memory per open stream beside memory per held poll, at abide's default
    // --max-waiters, each server with both transports in turn.
    for &k in stream_kinds.iter().filter(|_| streams_wanted) {
        let n = ABIDE_DEFAULT_MAX_WAITERS;
        for transport in [Transport::Poll, Transport::Stream] {
            let l = launch(k, ABIDE_DEFAULT_MAX_WAITERS, false);
            let row = match transport {
                Transport::Poll => scenarios::hold(&ctx, &l, n, Duration::ZERO),
                Transport::Stream => scenarios::stream_hold(&ctx, &l, n),
            };
            eprintln!(
                "2 memory   N={n:<5} {:<24} {:<9} {:>6} KiB/waiter{}",
                k.label(),
                transport.label(),
                row.per_waiter_kib()
                    .map_or("-".into(), |v| format!("{v:.1}")),
                row.error
                    .as_ref()
                    .map(|e| format!("  FAILED: {e}"))
                    .unwrap_or_default()
            );
            r.stream_hold.push((k, transport, row));
        }
    }
    for &kk in plan.tp_ks.iter().filter(|_| wanted("3")) {
        for &k in &of(3) {
            let row = scenarios::throughput(
                &ctx,
                &launch(k, ABIDE_DEFAULT_MAX_WAITERS, false),
                kk,
                plan.tp_secs,
                plan.tp_max_events,
            );
            eprintln!(
                "3 through  K={kk:<5} {:<24} {:.0} events/s, {:.0} deliveries/s, lost {} dup {} reord {} missed {}{}",
                k.label(),
                row.events_per_sec(),
                row.deliveries_per_sec(),
                row.losses,
                row.duplicates,
                row.reordered,
                row.missed_marks,
                row.error
                    .as_ref()
                    .map(|e| format!("  FAILED: {e}"))
                    .unwrap_or_default()
            );
            r.throughput.push((k, row));
        }
    }
    for &k in of(4).iter().filter(|_| wanted("4")) {
        let row = scenarios::immediate(
            &ctx,
            &launch(k, ABIDE_DEFAULT_MAX_WAITERS, false),
            plan.imm_conns,
            plan.imm_secs,
        );
        eprintln!(
            "4 immediate        {:<24} {:.0} polls/s, p99 {:.2} ms{}",
            k.label(),
            row.rps(),
            row.p99_us / 1000.0,
            row.error
                .as_ref()
                .map(|e| format!("  FAILED: {e}"))
                .unwrap_or_default()
        );
        r.immediate.push((k, row));
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus > 1 {
        scenarios::pin_self(&(1..cpus).collect::<Vec<_>>());
    }
    for &k in of(5).iter().filter(|_| wanted("5")) {
        let l = launch(k, ABIDE_DEFAULT_MAX_WAITERS, true);
        let h = scenarios::hold(&ctx, &l, ABIDE_DEFAULT_MAX_WAITERS, plan.idle);
        let f = scenarios::fanout(&ctx, &l, ABIDE_DEFAULT_MAX_WAITERS, plan.pi_rounds);
        eprintln!(
            "5 Pi       N={:<5} {:<24} held {}, {} KiB/waiter, last {:.2} ms{}{}",
            ABIDE_DEFAULT_MAX_WAITERS,
            k.label(),
            h.ok() && f.error.is_none(),
            h.per_waiter_kib().map_or("-".into(), |v| format!("{v:.1}")),
            f.last_us / 1000.0,
            h.error
                .as_ref()
                .map(|e| format!("  hold FAILED: {e}"))
                .unwrap_or_default(),
            f.error
                .as_ref()
                .map(|e| format!("  fan-out FAILED: {e}"))
                .unwrap_or_default()
        );
        r.pi_hold.push((k, h));
        r.pi_fanout.push((k, f));
    }
    scenarios::pin_self(&(0..cpus).collect::<Vec<_>>());
    // Scenario 6 is abide's alone: its three stores side by side, point by point.
    let run_durability = wanted("6") && kinds.contains(&Kind::Abide);
    for &p in plan.dur_publishers.iter().filter(|_| run_durability) {
        for store in Store::ALL {
            let l = Launch {
                store: Some(store),
                ..launch(Kind::Abide, ABIDE_DEFAULT_MAX_WAITERS, false)
            };
            let row = scenarios::durability(&ctx, &l, p, plan.dur_secs, plan.dur_max_events);
            eprintln!(
                "6 durable  P={p:<5} {:<24} {:.0} publishes/s, p50 {:.2} ms, p99 {:.2} ms, {} B written/event, {} events/commit{}",
                store.short(),
                row.publishes_per_sec(),
                row.p50_us / 1000.0,
                row.p99_us / 1000.0,
                row.written_per_event()
                    .map_or("-".into(), |v| format!("{v:.0}")),
                row.events_per_commit()
                    .map_or("-".into(), |v| format!("{v:.1}")),
                row.error
                    .as_ref()
                    .map(|e| format!("  FAILED: {e}"))
                    .unwrap_or_default()
            );
            r.durability.push(row);
        }
    }
    // Scenario 7 is abide's alone: its access configurations side by side,
    // in interleaved rounds (a, b, c, a, b, c, …) so that a burst of other
    // load on the machine does not fall on one configuration only.
    let run_access = wanted("7") && kinds.contains(&Kind::Abide);
    for round in (0..plan.acc_rounds).filter(|_| run_access) {
        for access in Access::ALL {
            let l = Launch {
                access,
                ..launch(Kind::Abide, ABIDE_DEFAULT_MAX_WAITERS, false)
            };
            let row = scenarios::access(
                &ctx,
                &l,
                round,
                plan.imm_conns,
                plan.acc_publishers,
                plan.acc_secs,
                plan.dur_max_events,
            );
            let (i, p) = (&row.immediate, &row.publish);
            eprintln!(
                "7 access   round {} {:<18} {:.0} polls/s, p99 {:.2} ms, {} errors; P={} {:.0} publishes/s, p50 {:.2} ms{}",
                round + 1,
                access.short(),
                i.rps(),
                i.p99_us / 1000.0,
                i.errors,
                p.publishers,
                p.publishes_per_sec(),
                p.p50_us / 1000.0,
                [("polls", &i.error), ("publishes", &p.error)]
                    .iter()
                    .filter_map(|(what, e)| e.as_ref().map(|e| format!("  {what} FAILED: {e}")))
                    .collect::<String>()
            );
            r.access.push(row);
        }
    }
    if let (Some(open_polls), Some(open_publish)) = scenarios::access_best(&r.access, Access::Open)
    {
        for access in &Access::ALL[1..] {
            let (Some(i), Some(p)) = scenarios::access_best(&r.access, *access) else {
                continue;
            };
            eprintln!(
                "7 access   best of {} {:<17} ÷ (a): polls/s {:.3}×, p99 {:.2}×; publishes/s {:.3}×, publish p50 {:.2}×",
                plan.acc_rounds,
                access.short(),
                i.rps() / open_polls.rps(),
                i.p99_us / open_polls.p99_us,
                p.publishes_per_sec() / open_publish.publishes_per_sec(),
                p.p50_us / open_publish.p50_us
            );
        }
    }
    // Scenario 8 is abide's alone: one node in memory beside nodes sharing a
    // Redis of the harness's own (started here, stopped at the end of the
    // block), point by point; skipped, with the reason, without redis-server.
    let redis_install = servers::find_redis();
    let mut redis_status = redis_install
        .as_ref()
        .map(|install| install.version.clone())
        .map_err(Clone::clone);
    if wanted("8") && kinds.contains(&Kind::Abide) {
        if let Ok(install) = &redis_install {
            match RedisServer::start(install) {
                Ok(redis) => {
                    eprintln!(
                        "Redis: {} ({}) on {}",
                        install.version,
                        install.exe.display(),
                        redis.addr
                    );
                    redis_scenario(&ctx, &plan, &redis, &mut r);
                }
                Err(e) => redis_status = Err(format!("redis-server did not start: {e}")),
            }
        }
        if let Err(why) = &redis_status {
            eprintln!("8 Redis skipped: {why}");
        }
    }

    std::fs::create_dir_all(&plan.plot_dir).expect("create the plot directory");
    let plots = draw_plots(&r, &plan);
    let nchan_config = nchan
        .as_ref()
        .ok()
        .map(|n| servers::nchan_config(n, Path::new("DIR"), 0).replace(":0;", ":PORT;"));
    let meta = Meta {
        mode: plan.mode,
        machine: procfs::machine_line(),
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        elapsed_secs: started.elapsed().as_secs_f64(),
        nchan: nchan
            .as_ref()
            .map(|n| n.version.clone())
            .map_err(Clone::clone),
        nchan_config,
        idle_secs: plan.idle.as_secs(),
        rounds: plan.rounds,
        tp_secs: plan.tp_secs.as_secs_f64(),
        imm_secs: plan.imm_secs.as_secs_f64(),
        imm_conns: plan.imm_conns,
        dur_secs: plan.dur_secs.as_secs_f64(),
        dur_max_events: plan.dur_max_events,
        acc_rounds: plan.acc_rounds,
        acc_secs: plan.acc_secs.as_secs_f64(),
        acc_publishers: plan.acc_publishers,
        redis: redis_status,
        redis_secs: plan.redis_secs.as_secs_f64(),
        redis_max_events: plan.redis_max_events,
        data_fs: procfs::mount_of(&std::env::temp_dir()),
        plots,
    };
    // The hand-written notes are read when the report is written, so that they
    // can be edited without rebuilding.
    let notes = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("notes.md"))
        .unwrap_or_default();
    let text = report::render(&r, &meta, &notes);
    eprint!("{}", report::terminal_headlines(&r, &meta));
    let path = plan.out_dir.join("BENCHMARKS.md");
    std::fs::write(&path, text).expect("write BENCHMARKS.md");
    eprintln!(
        "wrote {} and the plots in {} ({:.0} s)",
        path.display(),
        plan.plot_dir.display(),
        started.elapsed().as_secs_f64()
    );
}

/// Scenario 8 on `redis`: the publish round trip of one node in memory and
/// of one node on Redis, then per N the fan-out on one node in memory and
/// on two nodes sharing Redis.
fn redis_scenario(ctx: &Ctx, plan: &Plan, redis: &RedisServer, r: &mut Results) {
    let failed = |e: &Option<String>| {
        e.as_ref()
            .map(|e| format!("  FAILED: {e}"))
            .unwrap_or_default()
    };
    let on = |store: Store, max_waiters: usize| Launch {
        kind: Kind::Abide,
        max_waiters,
        pi: false,
        store: Some(store),
        redis: (store == Store::Redis).then(|| redis.url()),
        access: Access::Open,
    };
    let with = |store: Store| (store == Store::Redis).then_some(redis);
    for store in [Store::Memory, Store::Redis] {
        let row = scenarios::redis_publish(
            ctx,
            &on(store, ABIDE_DEFAULT_MAX_WAITERS),
            with(store),
            plan.redis_secs,
            plan.redis_max_events,
        );
        eprintln!(
            "8 redis    P=1     {:<24} {:.0} publishes/s, p50 {:.2} ms, p99 {:.2} ms{}",
            store.short(),
            row.publishes_per_sec(),
            row.p50_us / 1000.0,
            row.p99_us / 1000.0,
            failed(&row.error)
        );
        r.redis_publish.push(row);
    }
    for &n in &plan.redis_fanout_ns {
        // Every node could hold all N.
        let max_waiters = n.max(ABIDE_DEFAULT_MAX_WAITERS);
        for (store, nodes) in [(Store::Memory, 1), (Store::Redis, 1), (Store::Redis, 2)] {
            let row = scenarios::redis_fanout(
                ctx,
                &on(store, max_waiters),
                with(store),
                nodes,
                n,
                plan.rounds,
            );
            let f = &row.fanout;
            eprintln!(
                "8 redis    N={n:<5} {:<24} last {:.2} ms, publish {:.2} ms{}",
                format!("{}, {nodes} node(s)", store.short()),
                f.last_us / 1000.0,
                f.publish_rtt_us / 1000.0,
                failed(&f.error)
            );
            r.redis_fanout.push(row);
        }
    }
}

fn draw_plots(r: &Results, plan: &Plan) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let rel = |name: &str| format!("docs/bench/{name}");
    let kinds = &r.kinds;
    // Memory per held waiter vs N.
    let series: plots::Series = kinds
        .iter()
        .filter(|k| k.in_scenario(1))
        .map(|&k| {
            let pts = r
                .hold
                .iter()
                .filter(|(kk, h)| *kk == k && h.error.is_none())
                .filter_map(|(_, h)| Some((h.n as f64, h.per_waiter_kib()?)))
                .collect();
            (k, k.label().to_string(), pts, false)
        })
        .collect();
    let file = "memory-per-waiter.svg";
    match plots::line_chart(
        &plots::Chart {
            path: &plan.plot_dir.join(file),
            title: "Resident memory per held waiter (VmRSS)",
            x_desc: "held waiters N",
            y_desc: "KiB per waiter",
            log_x: true,
            log_y: false,
        },
        &series,
    ) {
        Ok(()) => out.push(("memory per waiter vs N".into(), rel(file))),
        Err(e) => eprintln!("plot {file}: {e}"),
    }
    // Fan-out latency vs N.
    let mut series: plots::Series = Vec::new();
    for &k in kinds.iter().filter(|k| k.in_scenario(2)) {
        let rows: Vec<_> = r
            .fanout
            .iter()
            .filter(|(kk, f)| *kk == k && f.error.is_none())
            .map(|(_, f)| f)
            .collect();
        series.push((
            k,
            format!("{} (last)", k.label()),
            rows.iter()
                .map(|f| (f.n as f64, f.last_us / 1000.0))
                .collect(),
            false,
        ));
        series.push((
            k,
            format!("{} (publisher)", k.label()),
            rows.iter()
                .map(|f| (f.n as f64, f.publish_rtt_us / 1000.0))
                .collect(),
            true,
        ));
    }
    let file = "fanout-latency.svg";
    match plots::line_chart(
        &plots::Chart {
            path: &plan.plot_dir.join(file),
            title: "Fan-out: last waiter has the event (solid), publisher's round trip (dashed)",
            x_desc: "waiters N",
            y_desc: "ms (median of rounds)",
            log_x: true,
            log_y: true,
        },
        &series,
    ) {
        Ok(()) => out.push(("fan-out latency vs N".into(), rel(file))),
        Err(e) => eprintln!("plot {file}: {e}"),
    }
    // Throughput vs K.
    let mut series: plots::Series = Vec::new();
    for &k in kinds.iter().filter(|k| k.in_scenario(3)) {
        let rows: Vec<_> = r
            .throughput
            .iter()
            .filter(|(kk, t)| *kk == k && t.error.is_none())
            .map(|(_, t)| t)
            .collect();
        series.push((
            k,
            format!("{} (deliveries/s)", k.label()),
            rows.iter()
                .map(|t| (t.k as f64, t.deliveries_per_sec()))
                .collect(),
            false,
        ));
        series.push((
            k,
            format!("{} (events/s)", k.label()),
            rows.iter()
                .map(|t| (t.k as f64, t.events_per_sec()))
                .collect(),
            true,
        ));
    }
    let file = "throughput.svg";
    match plots::line_chart(
        &plots::Chart {
            path: &plan.plot_dir.join(file),
            title: "Throughput: deliveries/s (solid), events published/s (dashed)",
            x_desc: "subscribers K",
            y_desc: "per second",
            log_x: true,
            log_y: true,
        },
        &series,
    ) {
        Ok(()) => out.push(("throughput vs K".into(), rel(file))),
        Err(e) => eprintln!("plot {file}: {e}"),
    }
    out
}

fn serve_floor(args: &[String]) {
    let mut threads = 1;
    let mut hold_threads = false;
    let mut listen = std::net::SocketAddr::from(([127, 0, 0, 1], 8082));
    let mut buffer = servers::BUFFER;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--hold-threads" => hold_threads = true,
            "--threads" => threads = it.next().and_then(|v| v.parse().ok()).expect("--threads N"),
            "--listen" => {
                listen = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--listen ADDR")
            }
            "--buffer" => buffer = it.next().and_then(|v| v.parse().ok()).expect("--buffer N"),
            other => panic!("unknown flag {other}"),
        }
    }
    floor_server::main(threads, hold_threads, listen, buffer);
}

fn serve_async(args: &[String]) {
    let mut flavor = async_server::Flavor::Current;
    let mut listen = std::net::SocketAddr::from(([127, 0, 0, 1], 8081));
    let mut buffer = servers::BUFFER;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().map(String::as_str).unwrap_or("");
        match a.as_str() {
            "--flavor" => {
                flavor = if v == "multi" {
                    async_server::Flavor::Multi
                } else {
                    async_server::Flavor::Current
                }
            }
            "--listen" => listen = v.parse().expect("--listen ADDR"),
            "--buffer" => buffer = v.parse().expect("--buffer N"),
            other => panic!("unknown flag {other}"),
        }
    }
    async_server::main(flavor, listen, buffer);
}
