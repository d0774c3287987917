//! Starting, watching and stopping the servers under test, each in its own
//! process group of one (abide, the async variant) or two (nginx's master and
//! its one worker) processes, and scenario 8's `redis-server` under them.
//! Every process started here is killed by PID when its `Server` (or
//! `RedisServer`) is dropped, also when a scenario fails.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::procfs;

/// Events each server keeps per channel (abide's default `--buffer`).
pub const BUFFER: usize = 256;
/// abide's default `--max-waiters`.
pub const ABIDE_DEFAULT_MAX_WAITERS: usize = 512;
/// The Pi profile's address-space limit.
pub const PI_AS_BYTES: u64 = 512 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Abide,
    AsyncCurrent,
    AsyncMulti,
    Nchan,
    /// The floor (`floor_server.rs`): bare tiny_http answering inline on one
    /// `recv()` thread, or on one per core (scenarios 3 and 4).
    FloorInline1,
    FloorInlineN,
    /// The floor of scenario 1 (`floor_hold.rs`): tiny_http and one thread
    /// blocked on a condvar per held poll.
    FloorHold,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Abide => "abide",
            Kind::AsyncCurrent => "async, current-thread",
            Kind::AsyncMulti => "async, multi-thread (2)",
            Kind::Nchan => "Nchan (1 worker)",
            Kind::FloorInline1 => "floor: tiny_http inline, 1 thread",
            Kind::FloorInlineN => "floor: tiny_http inline, a thread per core",
            Kind::FloorHold => "floor: tiny_http + a waiter thread per poll",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Kind::Abide => "abide",
            Kind::AsyncCurrent => "async-ct",
            Kind::AsyncMulti => "async-mt",
            Kind::Nchan => "nchan",
            Kind::FloorInline1 => "floor-1",
            Kind::FloorInlineN => "floor-n",
            Kind::FloorHold => "floor-hold",
        }
    }

    pub fn is_floor(self) -> bool {
        matches!(
            self,
            Kind::FloorInline1 | Kind::FloorInlineN | Kind::FloorHold
        )
    }

    /// Whether the server runs in `scenario` (1 to 7): the floors only where
    /// they are a floor (the hold in 1, the inline servers in 3 and 4).
    pub fn in_scenario(self, scenario: u8) -> bool {
        match self {
            Kind::FloorHold => scenario <= 3,
            Kind::FloorInline1 | Kind::FloorInlineN => scenario == 3 || scenario == 4,
            _ => true,
        }
    }

    pub fn is_nchan(self) -> bool {
        self == Kind::Nchan
    }

    /// Whether the server answers Server-Sent Events streams (abide, and
    /// Nchan's EventSource subscriber; the async variant only long-polls).
    pub fn streams(self) -> bool {
        matches!(self, Kind::Abide | Kind::Nchan)
    }
}

/// Where nginx and the Nchan module are, when installed.
#[derive(Clone, Debug)]
pub struct NchanInstall {
    pub nginx: PathBuf,
    /// `load_module` line target; `None` when the module is built in.
    pub module: Option<PathBuf>,
    pub version: String,
}

/// Finds nginx with the Nchan module (`NCHAN_NGINX`/`NCHAN_MODULE` override).
pub fn find_nchan() -> Result<NchanInstall, String> {
    let nginx = std::env::var_os("NCHAN_NGINX")
        .map(PathBuf::from)
        .or_else(|| {
            [
                "/usr/sbin/nginx",
                "/usr/local/sbin/nginx",
                "/usr/local/nginx/sbin/nginx",
                "/usr/bin/nginx",
            ]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
        })
        .ok_or("nginx is not installed")?;
    let v = Command::new(&nginx)
        .arg("-V")
        .output()
        .map_err(|e| format!("{}: {e}", nginx.display()))?;
    let text = String::from_utf8_lossy(&v.stderr).to_string();
    let version = text
        .lines()
        .next()
        .unwrap_or("nginx")
        .replace("nginx version: ", "");
    let module = std::env::var_os("NCHAN_MODULE")
        .map(PathBuf::from)
        .or_else(|| {
            [
                "/usr/lib/nginx/modules/ngx_nchan_module.so",
                "/usr/local/nginx/modules/ngx_nchan_module.so",
            ]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
        });
    if module.is_none() && !text.contains("nchan") {
        return Err(format!(
            "{} has no Nchan module (libnginx-mod-nchan)",
            nginx.display()
        ));
    }
    let nchan_version = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "libnginx-mod-nchan"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| format!(", Nchan {}", String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default();
    Ok(NchanInstall {
        nginx,
        module,
        version: format!("{version}{nchan_version}"),
    })
}

/// The nginx configuration the harness runs Nchan with.
pub fn nchan_config(nchan: &NchanInstall, dir: &Path, port: u16) -> String {
    let load = nchan
        .module
        .as_ref()
        .map(|m| format!("load_module {};\n", m.display()))
        .unwrap_or_default();
    let d = dir.display();
    format!(
        r#"{load}worker_processes 1;
worker_rlimit_nofile 65536;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 64k;
    client_body_buffer_size 64k;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    nchan_message_buffer_length {BUFFER};
    nchan_message_timeout 0;
    server {{
        listen 127.0.0.1:{port};
        # Publisher: POST /pub/{{channel}}
        location ~ ^/pub/([\w.-]+)$ {{
            nchan_publisher;
            nchan_channel_id $1;
        }}
        # Subscriber. A long poll: waits for the next message, then follows
        # the Last-Modified/Etag cursor; all buffered messages in one answer.
        # With Accept: text/event-stream, an EventSource stream instead
        # (scenario 2's stream rows), from the next message on.
        location ~ ^/sub/([\w.-]+)$ {{
            nchan_subscriber longpoll eventsource;
            nchan_channel_id $1;
            nchan_subscriber_first_message newest;
            nchan_longpoll_multipart_response on;
            nchan_subscriber_timeout 120s;
        }}
        # Immediate polls: the oldest buffered message, at once.
        location ~ ^/now/([\w.-]+)$ {{
            nchan_subscriber longpoll;
            nchan_channel_id $1;
            nchan_subscriber_first_message oldest;
            nchan_subscriber_timeout 120s;
        }}
        location = /nchan_status {{
            nchan_stub_status;
        }}
    }}
}}
"#
    )
}

/// Scenarios 6 and 8: where abide keeps its events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Store {
    /// No `--data-dir`: in memory only.
    #[default]
    Memory,
    /// `--data-dir DIR --sync normal`.
    SqliteNormal,
    /// `--data-dir DIR --sync full`.
    SqliteFull,
    /// Scenario 8 only: `--redis URL`, the URL in `Launch::redis`.
    Redis,
}

impl Store {
    /// Scenario 6's stores (scenario 8 compares `Memory` with `Redis`).
    pub const ALL: [Store; 3] = [Store::Memory, Store::SqliteNormal, Store::SqliteFull];

    pub fn label(self) -> &'static str {
        match self {
            Store::Memory => "memory",
            Store::SqliteNormal => "SQLite, `--sync normal`",
            Store::SqliteFull => "SQLite, `--sync full`",
            Store::Redis => "Redis, `--redis`",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Store::Memory => "memory",
            Store::SqliteNormal => "sqlite normal",
            Store::SqliteFull => "sqlite full",
            Store::Redis => "redis",
        }
    }

    /// The `--sync` value, for the stores that write a database.
    pub fn sync(self) -> Option<&'static str> {
        match self {
            Store::Memory | Store::Redis => None,
            Store::SqliteNormal => Some("normal"),
            Store::SqliteFull => Some("full"),
        }
    }

    /// What `/stats` says in `store`.
    pub fn stats_name(self) -> &'static str {
        match self {
            Store::Memory => "memory",
            Store::SqliteNormal | Store::SqliteFull => "sqlite",
            Store::Redis => "redis",
        }
    }
}

/// Scenario 7: abide's access control, off or on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Access {
    /// (a) No access flags: anyone may do anything; requests carry no token.
    #[default]
    Open,
    /// (b) `--auth-file` with `AUTH_RULES` rules; every request presents the
    /// harness's token in `Authorization: Bearer`.
    Tokens,
    /// (c) (b) and per-client shares large enough never to refuse:
    /// `--max-waiters-per-client 512 --publish-rate 1000000 --publish-burst 1000000`.
    TokensAndShares,
}

/// Rules in scenario 7's auth file.
pub const AUTH_RULES: usize = 100;
/// The token the harness presents to scenario 7's servers (32 URL-safe
/// characters, as long as one `abide token new` makes).
pub const BENCH_TOKEN: &str = "q8Zc3vN0-xR5tLw2Yb7Hk4Pj9Ds6Fm1A";
/// (c)'s shares: at most what a run ever uses, so that they never refuse.
const SHARE_FLAGS: [&str; 6] = [
    "--max-waiters-per-client",
    "512",
    "--publish-rate",
    "1000000",
    "--publish-burst",
    "1000000",
];

impl Access {
    pub const ALL: [Access; 3] = [Access::Open, Access::Tokens, Access::TokensAndShares];

    pub fn label(self) -> &'static str {
        match self {
            Access::Open => "(a) no access flags",
            Access::Tokens => "(b) `--auth-file`, a token per request",
            Access::TokensAndShares => "(c) (b) and shares that never refuse",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Access::Open => "(a) open",
            Access::Tokens => "(b) auth-file",
            Access::TokensAndShares => "(c) auth + shares",
        }
    }

    /// abide's flags besides `--auth-file FILE` (which (b) and (c) add).
    fn share_flags(self) -> &'static [&'static str] {
        match self {
            Access::TokensAndShares => &SHARE_FLAGS,
            Access::Open | Access::Tokens => &[],
        }
    }

    fn tokens(self) -> bool {
        self != Access::Open
    }
}

/// Scenario 7's auth file: `AUTH_RULES` rules of the kinds a site with many
/// clients has. The harness's token may publish and subscribe everywhere,
/// and administer `*` for the harness's own `/stats` reads (waiting polls,
/// store counters); the others are sensors publishing to their own channel,
/// dashboards reading `sensors.*` and `alerts`, chat apps, an operator, and
/// one `anonymous` rule.
pub fn auth_file_text() -> String {
    let hash = abide::token_hash_text;
    let mut rules = vec![
        format!("token bench {} publish,subscribe *", hash(BENCH_TOKEN)),
        format!("token bench {} admin *", hash(BENCH_TOKEN)),
        format!("token ops {} admin *", hash("bench-ops")),
        "anonymous subscribe public.*".to_string(),
    ];
    let mut i = 0;
    while rules.len() < AUTH_RULES {
        let rule = match i % 4 {
            0 | 1 => format!(
                "token sensor-{i:03} {} publish sensors.room-{i:03}",
                hash(&format!("bench-sensor-{i}"))
            ),
            2 => format!(
                "token dashboard-{i:03} {} subscribe sensors.* alerts",
                hash(&format!("bench-dashboard-{i}"))
            ),
            _ => format!(
                "token app-{i:03} {} publish,subscribe chat.* news",
                hash(&format!("bench-app-{i}"))
            ),
        };
        rules.push(rule);
        i += 1;
    }
    let mut text = "# scenario 7 of benches/compare: written by the harness\n".to_string();
    for rule in rules {
        text.push_str(&rule);
        text.push('\n');
    }
    text
}

/// How a server is started.
#[derive(Clone, Debug)]
pub struct Launch {
    pub kind: Kind,
    /// abide's `--max-waiters`.
    pub max_waiters: usize,
    /// Pi profile: `taskset -c 0` and `prlimit --as=512MiB`.
    pub pi: bool,
    /// abide only, scenario 6: `Some` adds `--buffer BUFFER` and, for SQLite,
    /// `--data-dir` (a fresh temporary directory, removed after the run) and
    /// `--sync`. `None`: the harness's usual abide.
    pub store: Option<Store>,
    /// abide only, scenario 8: `--redis URL`, with `store` `Some(Store::Redis)`.
    pub redis: Option<String>,
    /// abide only, scenario 7: `--auth-file` (a fresh temporary file,
    /// removed after the run) and shares, and the token on the requests
    /// that `Server` builds (the setup's, scenario 4's and scenario 6's).
    pub access: Access,
}

pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    /// `Authorization: Bearer TOKEN\r\n` when the server needs a token,
    /// else empty: added to every request `Server` builds.
    auth_header: String,
    child: Option<Child>,
    _workdir: Option<TempDir>,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The machine's cores (the floor's threads in its per-core variant).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The harness's own executable (the async variant is this binary re-run).
fn self_exe() -> PathBuf {
    std::env::current_exe().expect("current_exe")
}

/// The repository's root: this crate lives in `benches/compare`.
pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The abide binary to measure: `target/release/abide`, which `make bench`
/// builds first (`ABIDE_BIN` overrides it, to measure an experimental build).
pub fn abide_exe() -> PathBuf {
    let exe = std::env::var_os("ABIDE_BIN").map_or_else(
        || workspace_root().join("target/release/abide"),
        PathBuf::from,
    );
    assert!(
        exe.is_file(),
        "no abide binary at {}: run `make bench` (it builds one first) or set ABIDE_BIN",
        exe.display()
    );
    exe
}

/// The command lines of every server, for the report (with a placeholder port).
pub fn describe(kind: Kind, max_waiters: usize) -> String {
    match kind {
        Kind::Abide => {
            format!("abide serve --listen 127.0.0.1:PORT --quiet --max-waiters {max_waiters}")
        }
        Kind::AsyncCurrent => "compare serve-async --flavor current --listen 127.0.0.1:PORT".into(),
        Kind::AsyncMulti => "compare serve-async --flavor multi --listen 127.0.0.1:PORT".into(),
        Kind::Nchan => "nginx -p DIR -c DIR/nginx.conf -g 'daemon off; master_process on;'".into(),
        Kind::FloorInline1 => "compare serve-floor --threads 1 --listen 127.0.0.1:PORT".into(),
        Kind::FloorInlineN => format!(
            "compare serve-floor --threads {} --listen 127.0.0.1:PORT",
            cores()
        ),
        Kind::FloorHold => {
            "RUST_MIN_STACK=131072 compare serve-floor --threads 1 --hold-threads --listen 127.0.0.1:PORT".into()
        }
    }
}

/// Scenario 7's abide command line for `access`, for the report.
pub fn describe_access(access: Access, max_waiters: usize) -> String {
    let mut line = describe(Kind::Abide, max_waiters);
    if access.tokens() {
        line.push_str(" --auth-file DIR/auth");
    }
    for flag in access.share_flags() {
        line.push(' ');
        line.push_str(flag);
    }
    line
}

/// Scenario 6's abide command line for `store`, for the report.
pub fn describe_store(store: Store, max_waiters: usize) -> String {
    let mut line = format!("{} --buffer {BUFFER}", describe(Kind::Abide, max_waiters));
    if let Some(sync) = store.sync() {
        line.push_str(&format!(" --data-dir DIR --sync {sync}"));
    }
    if store == Store::Redis {
        line.push_str(" --redis redis://127.0.0.1:RPORT/0");
    }
    line
}

impl Server {
    pub fn start(launch: &Launch, nchan: Option<&NchanInstall>) -> io::Result<Server> {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut workdir = None;
        if (launch.store.is_some() || launch.access != Access::Open) && launch.kind != Kind::Abide {
            return Err(io::Error::other(
                "a store or access control is abide's only",
            ));
        }
        if launch.redis.is_some() != (launch.store == Some(Store::Redis)) {
            return Err(io::Error::other(
                "a Redis store goes with its URL, and a URL with a Redis store",
            ));
        }
        let (program, args): (PathBuf, Vec<String>) = match launch.kind {
            Kind::Abide => {
                let mut args: Vec<String> = vec![
                    "serve".into(),
                    "--listen".into(),
                    addr.to_string(),
                    "--quiet".into(),
                    "--max-waiters".into(),
                    launch.max_waiters.to_string(),
                ];
                if let Some(store) = launch.store {
                    args.extend(["--buffer".into(), BUFFER.to_string()]);
                    if let Some(sync) = store.sync() {
                        // A fresh, empty data directory for this run only.
                        let dir = std::env::temp_dir()
                            .join(format!("abide-bench-data-{}-{port}", std::process::id()));
                        let _ = std::fs::remove_dir_all(&dir);
                        std::fs::create_dir_all(&dir)?;
                        workdir = Some(TempDir(dir.clone()));
                        args.extend([
                            "--data-dir".into(),
                            dir.display().to_string(),
                            "--sync".into(),
                            sync.into(),
                        ]);
                    }
                }
                if let Some(url) = &launch.redis {
                    args.extend(["--redis".into(), url.clone()]);
                }
                if launch.access.tokens() {
                    // Beside the data directory when there is one.
                    let dir = match &workdir {
                        Some(TempDir(dir)) => dir.clone(),
                        None => {
                            let dir = std::env::temp_dir()
                                .join(format!("abide-bench-auth-{}-{port}", std::process::id()));
                            std::fs::create_dir_all(&dir)?;
                            workdir = Some(TempDir(dir.clone()));
                            dir
                        }
                    };
                    let file = dir.join("auth");
                    std::fs::write(&file, auth_file_text())?;
                    args.extend(["--auth-file".into(), file.display().to_string()]);
                }
                args.extend(launch.access.share_flags().iter().map(|f| f.to_string()));
                (abide_exe(), args)
            }
            Kind::AsyncCurrent | Kind::AsyncMulti => (
                self_exe(),
                vec![
                    "serve-async".into(),
                    "--flavor".into(),
                    if launch.kind == Kind::AsyncCurrent {
                        "current"
                    } else {
                        "multi"
                    }
                    .into(),
                    "--listen".into(),
                    addr.to_string(),
                    "--buffer".into(),
                    BUFFER.to_string(),
                ],
            ),
            Kind::FloorInline1 | Kind::FloorInlineN | Kind::FloorHold => {
                let threads = if launch.kind == Kind::FloorInlineN {
                    cores()
                } else {
                    1
                };
                let mut args = vec![
                    "serve-floor".into(),
                    "--threads".into(),
                    threads.to_string(),
                    "--listen".into(),
                    addr.to_string(),
                    "--buffer".into(),
                    BUFFER.to_string(),
                ];
                if launch.kind == Kind::FloorHold {
                    args.push("--hold-threads".into());
                }
                (self_exe(), args)
            }
            Kind::Nchan => {
                let nchan = nchan.ok_or_else(|| io::Error::other("Nchan is not installed"))?;
                let dir = std::env::temp_dir()
                    .join(format!("abide-bench-nchan-{}-{port}", std::process::id()));
                std::fs::create_dir_all(&dir)?;
                let conf = dir.join("nginx.conf");
                std::fs::write(&conf, nchan_config(nchan, &dir, port))?;
                workdir = Some(TempDir(dir.clone()));
                (
                    nchan.nginx.clone(),
                    vec![
                        "-p".into(),
                        dir.display().to_string(),
                        "-c".into(),
                        conf.display().to_string(),
                        "-g".into(),
                        "daemon off; master_process on;".into(),
                    ],
                )
            }
        };
        let mut command = if launch.pi {
            let mut c = Command::new("taskset");
            c.args(["-c", "0", "prlimit", &format!("--as={PI_AS_BYTES}")]);
            c.arg(&program);
            c
        } else {
            Command::new(&program)
        };
        // tiny_http's connection threads: 128 KiB stacks, as abide sets for
        // itself (floors only; abide sets it in its own `main`).
        if launch.kind.is_floor() {
            command.env("RUST_MIN_STACK", "131072");
        }
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn()?;
        // Drain stderr on a thread so the server never blocks on a full pipe;
        // keep the last lines for error messages.
        let stderr = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("BENCH_VERBOSE").is_some() {
                    eprintln!("  [server] {line}");
                }
            }
        });
        let mut server = Server {
            kind: launch.kind,
            addr,
            auth_header: if launch.access.tokens() {
                format!("Authorization: Bearer {BENCH_TOKEN}\r\n")
            } else {
                String::new()
            },
            child: Some(child),
            _workdir: workdir,
        };
        server.wait_ready()?;
        if launch.redis.is_some() {
            server.wait_linked()?;
        }
        Ok(server)
    }

    /// Waits until a node started with `--redis` counts its links to Redis
    /// up (`/stats` `store_connected`).
    fn wait_linked(&self) -> io::Result<()> {
        let deadline = Instant::now() + REDIS_LINK_LIMIT;
        loop {
            let stats = self.stats()?;
            if stats["store_connected"].as_bool() == Some(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "its link to Redis was not up within {REDIS_LINK_LIMIT:?}: {}",
                    stats["store_connected"]
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(io::Error::other(format!(
                        "{} exited at start: {status}",
                        self.kind.label()
                    )));
                }
            }
            if self.waiters().is_ok() {
                if self.kind.is_nchan() && self.pids().len() < 2 {
                    // The worker is not up yet.
                } else {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "{} did not come up",
                    self.kind.label()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// The server's processes: the child and (nginx) its workers.
    pub fn pids(&self) -> Vec<u32> {
        let pid = self.pid();
        let mut pids = vec![pid];
        if self.kind.is_nchan() {
            pids.extend(procfs::children_of(pid));
        }
        pids
    }

    /// The process that serves (nginx's worker; the only process otherwise).
    pub fn serving_pid(&self) -> u32 {
        *self.pids().last().unwrap_or(&0)
    }

    pub fn alive(&self) -> bool {
        procfs::alive(self.pid())
    }

    /// A blocking request on a fresh connection (setup and status only).
    pub fn blocking_request(&self, head: &str, body: &str) -> io::Result<(u16, String)> {
        let mut stream = TcpStream::connect(self.addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let msg = format!(
            "{head} HTTP/1.1\r\nHost: bench\r\n{}Accept: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            self.auth_header,
            body.len()
        );
        stream.write_all(msg.as_bytes())?;
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).to_string();
        let status = text
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other("no status"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// abide's `/stats` (also the async variant's), parsed.
    pub fn stats(&self) -> io::Result<serde_json::Value> {
        let (status, body) = self.blocking_request("GET /stats", "")?;
        if status != 200 {
            return Err(io::Error::other(format!("/stats: status {status}")));
        }
        serde_json::from_str(&body).map_err(io::Error::other)
    }

    /// Polls currently waiting, as the server counts them (`/stats` waiters,
    /// Nchan's stub status `subscribers`).
    pub fn waiters(&self) -> io::Result<u64> {
        if self.kind.is_nchan() {
            let (status, body) = self.blocking_request("GET /nchan_status", "")?;
            if status != 200 {
                return Err(io::Error::other(format!("status {status}")));
            }
            body.lines()
                .find_map(|l| l.strip_prefix("subscribers:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| io::Error::other("no subscribers line"))
        } else {
            let (status, body) = self.blocking_request("GET /stats", "")?;
            if status != 200 {
                return Err(io::Error::other(format!("status {status}")));
            }
            let v: serde_json::Value = serde_json::from_str(&body).map_err(io::Error::other)?;
            v["waiters"]
                .as_u64()
                .ok_or_else(|| io::Error::other("no waiters"))
        }
    }

    /// Waits until the server counts `n` waiting polls.
    pub fn wait_for_waiters(&self, n: u64, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let mut last = 0;
        while Instant::now() < deadline {
            match self.waiters() {
                Ok(w) if w >= n => return Ok(()),
                Ok(w) => last = w,
                Err(_) if !self.alive() => return Err(format!("{} died", self.kind.label())),
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(format!(
            "{}: {last} of {n} polls waiting after {limit:?}",
            self.kind.label()
        ))
    }

    /// Open Server-Sent Events streams, as the server counts them (abide's
    /// `/stats` `streams`; Nchan's stub status `subscribers`, which counts
    /// its EventSource subscribers with the rest).
    pub fn streams(&self) -> io::Result<u64> {
        if self.kind.is_nchan() {
            return self.waiters();
        }
        self.stats()?["streams"]
            .as_u64()
            .ok_or_else(|| io::Error::other("no streams in /stats"))
    }

    /// Waits until the server counts exactly `n` open streams.
    pub fn wait_for_streams(&self, n: u64, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let mut last = None;
        while Instant::now() < deadline {
            match self.streams() {
                Ok(s) if s == n => return Ok(()),
                Ok(s) => last = Some(s),
                Err(_) if !self.alive() => return Err(format!("{} died", self.kind.label())),
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(format!(
            "{}: {} streams open after {limit:?}, expected {n}",
            self.kind.label(),
            last.map_or("?".into(), |s| s.to_string())
        ))
    }

    /// Stops the server: SIGTERM, then SIGKILL after 3 s; nginx's workers too.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pids = self.pids_of(child.id());
        terminate(&mut child);
        for pid in pids.into_iter().skip(1) {
            if procfs::alive(pid) {
                // SAFETY: an nginx worker this harness's nginx started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }

    fn pids_of(&self, pid: u32) -> Vec<u32> {
        let mut pids = vec![pid];
        if self.kind.is_nchan() {
            pids.extend(procfs::children_of(pid));
        }
        pids
    }

    // --- requests in each server's dialect ---

    pub fn publish_path(&self, channel: &str) -> String {
        if self.kind.is_nchan() {
            format!("/pub/{channel}")
        } else {
            format!("/channels/{channel}/events")
        }
    }

    /// `Authorization: Bearer TOKEN\r\n` when the server needs a token
    /// (scenario 7), else empty: a header line for requests built elsewhere.
    pub fn auth_header(&self) -> &str {
        &self.auth_header
    }

    /// A publish request carrying `body`.
    pub fn publish_request(&self, channel: &str, body: &str) -> Vec<u8> {
        format!(
            "POST {} HTTP/1.1\r\nHost: bench\r\n{}Content-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.publish_path(channel),
            self.auth_header,
            body.len()
        )
        .into_bytes()
    }

    /// A long poll from `cursor`.
    pub fn poll_request(&self, channel: &str, cursor: &Cursor, timeout_secs: u64) -> Vec<u8> {
        let mut request = request_for(self.kind.is_nchan(), channel, cursor, timeout_secs);
        // Before the blank line that ends the head (a poll has no body).
        request.truncate(request.len() - 2);
        request.extend_from_slice(self.auth_header.as_bytes());
        request.extend_from_slice(b"\r\n");
        request
    }

    /// A request for a stream of Server-Sent Events from `cursor`: abide's
    /// poll route, Nchan's subscriber location, with `Accept: text/event-stream`.
    pub fn stream_request(&self, channel: &str, cursor: &Cursor) -> Vec<u8> {
        let target = match cursor {
            Cursor::Id(id) if !self.kind.is_nchan() => {
                format!("/channels/{channel}/events?last_event_id={id}")
            }
            _ => format!("/sub/{channel}"),
        };
        format!(
            "GET {target} HTTP/1.1\r\nHost: bench\r\n{}Accept: text/event-stream\r\n\r\n",
            self.auth_header
        )
        .into_bytes()
    }

    /// A poll answered at once: the oldest buffered event.
    pub fn immediate_request(&self, channel: &str) -> Vec<u8> {
        if self.kind.is_nchan() {
            format!("GET /now/{channel} HTTP/1.1\r\nHost: bench\r\n\r\n")
        } else {
            format!(
                "GET /channels/{channel}/events?last_event_id=0&limit=1&timeout=30 HTTP/1.1\r\nHost: bench\r\n{}\r\n",
                self.auth_header
            )
        }
        .into_bytes()
    }

    /// The cursor a new subscriber starts from: after `last_id` (abide and the
    /// async variant), or Nchan's "newest" (the next message).
    pub fn start_cursor(&self, last_id: u64) -> Cursor {
        if self.kind.is_nchan() {
            Cursor::Nchan {
                etag: None,
                last_modified: None,
            }
        } else {
            Cursor::Id(last_id)
        }
    }

    /// Publishes one event on a fresh connection; returns its id (0 for Nchan).
    pub fn publish_blocking(&self, channel: &str, body: &str) -> io::Result<u64> {
        let (status, answer) =
            self.blocking_request(&format!("POST {}", self.publish_path(channel)), body)?;
        if !(200..300).contains(&status) {
            return Err(io::Error::other(format!("publish got {status}: {answer}")));
        }
        Ok(crate::client::numbers_after(answer.as_bytes(), b"\"id\":")
            .first()
            .copied()
            .unwrap_or(0))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A long poll from `cursor` on `channel`: abide's API (the async variant
/// shares it) or Nchan's subscriber location with its cache headers.
pub fn request_for(nchan: bool, channel: &str, cursor: &Cursor, timeout_secs: u64) -> Vec<u8> {
    match cursor {
        Cursor::Id(id) if !nchan => format!(
            "GET /channels/{channel}/events?last_event_id={id}&timeout={timeout_secs}&limit=1000 HTTP/1.1\r\nHost: bench\r\n\r\n"
        ),
        Cursor::Id(_) => format!("GET /sub/{channel} HTTP/1.1\r\nHost: bench\r\n\r\n"),
        Cursor::Nchan { etag, last_modified } => {
            let mut head = format!("GET /sub/{channel} HTTP/1.1\r\nHost: bench\r\n");
            if let Some(lm) = last_modified {
                head.push_str(&format!("If-Modified-Since: {lm}\r\n"));
            }
            if let Some(et) = etag {
                head.push_str(&format!("If-None-Match: {et}\r\n"));
            }
            head.push_str("\r\n");
            head
        }
    }
    .into_bytes()
}

/// Where a subscriber is in a channel.
#[derive(Clone, Debug)]
pub enum Cursor {
    Id(u64),
    Nchan {
        etag: Option<String>,
        last_modified: Option<String>,
    },
}

impl Cursor {
    /// Moves past what `resp` delivered.
    pub fn advance(&mut self, resp: &crate::client::Resp) {
        match self {
            Cursor::Id(id) => {
                if let Some(last) = crate::client::numbers_after(&resp.body, b"{\"id\":").last() {
                    *id = (*id).max(*last);
                }
            }
            Cursor::Nchan {
                etag,
                last_modified,
            } => {
                if resp.etag.is_some() || resp.last_modified.is_some() {
                    *etag = resp.etag.clone();
                    *last_modified = resp.last_modified.clone();
                }
            }
        }
    }
}

/// Stops a child this harness started: SIGTERM, then SIGKILL after 3 s; reaps it.
fn terminate(child: &mut Child) {
    // SAFETY: kill on the PID of a process this harness started and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
    }
}

// ---------------------------------------------------------------- scenario 8: Redis

/// Scenario 8's `redis-server` flags besides `--port` and `--dir`: loopback
/// only, no snapshots, append-only with an fsync a second (the persistence
/// of contrib/cluster/redis.conf).
const REDIS_FLAGS: [&str; 8] = [
    "--bind",
    "127.0.0.1",
    "--save",
    "",
    "--appendonly",
    "yes",
    "--appendfsync",
    "everysec",
];

/// How long a `redis-server` may take to answer `PING` after it was started.
const REDIS_START_LIMIT: Duration = Duration::from_secs(10);

/// How long a node started with `--redis` may take to count its links up.
const REDIS_LINK_LIMIT: Duration = Duration::from_secs(10);

/// How long one command to the harness's Redis may take.
const REDIS_COMMAND_LIMIT: Duration = Duration::from_secs(5);

/// Where `redis-server` is, when installed.
#[derive(Clone, Debug)]
pub struct RedisInstall {
    pub exe: PathBuf,
    /// As `redis-server --version` gives it, e.g. `Redis 7.0.15`.
    pub version: String,
}

/// Finds `redis-server` on PATH or at /usr/bin/redis-server, as build.rs
/// does for the tests (`REDIS_SERVER` overrides it).
pub fn find_redis() -> Result<RedisInstall, String> {
    let exe = match std::env::var_os("REDIS_SERVER") {
        Some(exe) => Some(PathBuf::from(exe)).filter(|p| p.is_file()),
        None => std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain([PathBuf::from("/usr/bin")])
            .map(|d| d.join("redis-server"))
            .find(|p| p.is_file()),
    }
    .ok_or("redis-server is not installed (`apt-get install redis-server`)")?;
    let out = Command::new(&exe)
        .arg("--version")
        .output()
        .map_err(|e| format!("{}: {e}", exe.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let version = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .map_or_else(
            || "Redis (version unknown)".into(),
            |v| format!("Redis {v}"),
        );
    Ok(RedisInstall { exe, version })
}

/// Scenario 8's `redis-server` command line, for the report.
pub fn describe_redis() -> String {
    let flags: Vec<String> = REDIS_FLAGS
        .iter()
        .map(|f| {
            if f.is_empty() {
                "''".into()
            } else {
                f.to_string()
            }
        })
        .collect();
    format!("redis-server --port RPORT --dir DIR {}", flags.join(" "))
}

/// A `redis-server` the harness started on a free loopback port, in a fresh
/// temporary directory of its own; stopped by PID and the directory
/// removed when dropped.
pub struct RedisServer {
    pub addr: SocketAddr,
    child: Option<Child>,
    _dir: TempDir,
}

impl RedisServer {
    pub fn start(install: &RedisInstall) -> io::Result<RedisServer> {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("abide-bench-redis-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let dir = TempDir(dir);
        let mut child = Command::new(&install.exe)
            .args(["--port", &port.to_string(), "--dir"])
            .arg(&dir.0)
            .args(REDIS_FLAGS)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        // Its log goes to stdout: drained on a thread so that it never
        // blocks on a full pipe.
        let stdout = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if std::env::var_os("BENCH_VERBOSE").is_some() {
                    eprintln!("  [redis] {line}");
                }
            }
        });
        let mut redis = RedisServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: Some(child),
            _dir: dir,
        };
        let deadline = Instant::now() + REDIS_START_LIMIT;
        loop {
            if let Some(Ok(Some(status))) = redis.child.as_mut().map(Child::try_wait) {
                // Reaped: its PID is no longer ours to signal.
                redis.child = None;
                return Err(io::Error::other(format!(
                    "redis-server exited at start: {status}"
                )));
            }
            if redis.command("PING").is_ok_and(|r| r == "+PONG") {
                return Ok(redis);
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "redis-server did not answer PING within {REDIS_START_LIMIT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `--redis` address of its database 0.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Sends one inline command on a fresh connection; returns the first
    /// line of the reply (`+OK`, `+PONG`, `-ERR …`).
    fn command(&self, line: &str) -> io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&self.addr, REDIS_COMMAND_LIMIT)?;
        stream.set_read_timeout(Some(REDIS_COMMAND_LIMIT))?;
        stream.set_write_timeout(Some(REDIS_COMMAND_LIMIT))?;
        stream.write_all(format!("{line}\r\n").as_bytes())?;
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply)?;
        Ok(reply.trim_end().to_string())
    }

    /// Empties every database, so that the next measurement starts on a
    /// Redis that holds nothing (no node is connected then).
    pub fn flush(&self) -> io::Result<()> {
        match self.command("FLUSHALL")?.as_str() {
            "+OK" => Ok(()),
            other => Err(io::Error::other(format!("FLUSHALL: {other}"))),
        }
    }

    pub fn alive(&self) -> bool {
        self.child.as_ref().is_some_and(|c| procfs::alive(c.id()))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}
