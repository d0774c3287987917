//! The shipped cluster example (`contrib/cluster/`) run for real: a
//! `redis-server` with `contrib/cluster/redis.conf` (only its port,
//! directory and pid file replaced), three abide nodes (`--redis`), and
//! `nginx` with `contrib/cluster/nginx.conf` in front of them (only its
//! listen port and the nodes' addresses replaced), all on free loopback
//! ports in temporary directories. Checks that, with requests spread round
//! robin over the nodes, a client talking to the front sees one abide: a
//! long poll on one node is woken by a publish on another, a cursor walks
//! from node to node without missing or repeating an event, with one node
//! killed publishes and polls go on through the others and nothing
//! acknowledged is lost, and a publish refused `503` by a node that cannot
//! reach Redis is passed to another node and stored once.
//!
//! Every request through the front is paced under the file's `limit_req`
//! (20 a second from one address), so that nginx's own 429 never interferes.
//! Ignored, with the reason, when nginx or redis-server is missing (`.ci/run`
//! installs both and requires them).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::{Abide, HANG_GUARD, Resp, TempDir};

/// The nodes' addresses in the shipped `nginx.conf`.
const SHIPPED_NODES: [&str; 3] = ["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"];

/// Time between two requests through the front: under `limit_req`'s
/// 20 a second, so its burst allowance is never touched.
const PACE: Duration = Duration::from_millis(60);

fn contrib(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib/cluster")
        .join(file)
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// A program's path: the first on PATH, else in `fallback` (where Debian
/// puts it; build.rs looks in the same places).
fn binary(name: &str, fallback: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from(fallback)])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} (build.rs found one)"))
}

/// `redis-server` with the shipped `redis.conf`; killed (by PID) on drop.
struct Redis {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Redis {
    fn start() -> Redis {
        let dir = TempDir::new("cluster-redis");
        let port = free_port().port();
        // Options after the file override the file's.
        let child = Command::new(binary("redis-server", "/usr/bin"))
            .arg(contrib("redis.conf"))
            .args(["--port", &port.to_string()])
            .args(["--dir", dir.arg()])
            .arg("--pidfile")
            .arg(dir.path().join("redis.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let mut redis = Redis {
            child,
            port,
            _dir: dir,
        };
        common::wait_until("redis-server to answer", || {
            if let Ok(Some(status)) = redis.child.try_wait() {
                panic!("redis-server exited ({status}) with contrib/cluster/redis.conf");
            }
            redis.ping()
        });
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Whether it answers `PING` (not while it loads its files).
    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }

    /// One setting, as the running server has it (`CONFIG GET`).
    fn config(&self, name: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
        stream
            .write_all(format!("CONFIG GET {name}\r\n").as_bytes())
            .unwrap();
        // *2 $len name $len value: six lines.
        let mut text = String::new();
        let mut buf = [0u8; 512];
        while text.matches("\r\n").count() < 5 {
            let n = stream.read(&mut buf).expect("redis answers");
            assert!(n > 0, "redis closed the connection: {text:?}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        text.split("\r\n").nth(4).unwrap_or_default().to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx with the shipped `nginx.conf` in front of three nodes; stopped (by
/// PID) on drop. Requests through it are paced (`PACE`).
struct Front {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
    next_request: Mutex<Instant>,
}

impl Front {
    fn start(nodes: [SocketAddr; 3]) -> Front {
        let dir = TempDir::new("cluster-nginx");
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        let addr = free_port();
        let shipped = std::fs::read_to_string(contrib("nginx.conf")).unwrap();
        let mut front = shipped.clone();
        for (shipped_node, node) in SHIPPED_NODES.iter().zip(nodes) {
            let line = format!("server {shipped_node} ");
            assert_eq!(shipped.matches(&line).count(), 1, "{line:?} in nginx.conf");
            front = front.replace(&line, &format!("server {node} "));
        }
        assert_eq!(shipped.matches("listen 80;").count(), 1);
        let front = front.replace("listen 80;", &format!("listen {addr};"));
        std::fs::write(dir.path().join("abide-cluster.conf"), front).unwrap();
        let temp_paths: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .iter()
            .map(|p| format!("    {p}_temp_path {};\n", dir.path().join(p).display()))
            .collect();
        // One worker, as the shipped file's per-worker figures assume, and
        // so that round robin is one rotation.
        let main = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {pid};\n\
             error_log {log} info;\nevents {{ worker_connections 1024; }}\n\
             http {{\n    access_log off;\n{temp_paths}    include {conf};\n}}\n",
            pid = dir.path().join("nginx.pid").display(),
            log = dir.path().join("logs/error.log").display(),
            conf = dir.path().join("abide-cluster.conf").display(),
        );
        std::fs::write(dir.path().join("nginx.conf"), main).unwrap();
        let child = Command::new(binary("nginx", "/usr/sbin"))
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("logs/error.log"))
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let mut front = Front {
            child,
            addr,
            dir,
            next_request: Mutex::new(Instant::now()),
        };
        common::wait_until("nginx to listen", || {
            if let Ok(Some(status)) = front.child.try_wait() {
                panic!("nginx exited ({status}): {}", front.error_log());
            }
            TcpStream::connect(addr).is_ok()
        });
        front
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs/error.log")).unwrap_or_default()
    }

    /// Waits for this request's turn: one every `PACE`, whichever thread
    /// sends it.
    fn pace(&self) {
        let mut next = self.next_request.lock().unwrap();
        let now = Instant::now();
        if *next > now {
            thread::sleep(*next - now); // sync-ok: pacing traffic under limit_req's 20 requests/s
        }
        *next = Instant::now() + PACE;
    }

    /// `method target` on a fresh connection (after its turn); the answer.
    fn request(&self, method: &str, target: &str, body: &str) -> Resp {
        self.pace();
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: front\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        common::parse_raw(&common::raw(self.addr, request.as_bytes(), HANG_GUARD))
    }

    fn get(&self, target: &str) -> Resp {
        self.request("GET", target, "")
    }

    /// Publishes `data` on `channel`; the id of the stored event.
    fn publish(&self, channel: &str, data: &str) -> u64 {
        let resp = self.request("POST", &format!("/channels/{channel}/events"), data);
        assert_eq!(resp.status, 201, "{resp:?}\n{}", self.error_log());
        resp.json()["id"].as_u64().expect("id")
    }

    /// `GET target` on its own thread (sent after its turn, taken here).
    fn spawn_get(&self, target: &str) -> thread::JoinHandle<Resp> {
        self.pace();
        let request = format!("GET {target} HTTP/1.1\r\nHost: front\r\nConnection: close\r\n\r\n");
        let addr = self.addr;
        thread::spawn(move || common::parse_raw(&common::raw(addr, request.as_bytes(), HANG_GUARD)))
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Redis, three nodes on it, and the front.
struct Cluster {
    front: Front,
    /// `None` once killed.
    nodes: Vec<Option<Abide>>,
    /// Dropped last, after the front and the nodes.
    _redis: Redis,
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with(None)
    }

    /// With node `cut_off` (if any) given the address of a Redis that is not
    /// there: it serves, degraded, and refuses every publish with `503`.
    fn start_with(cut_off: Option<usize>) -> Cluster {
        let redis = Redis::start();
        assert_eq!(redis.config("appendonly"), "yes");
        assert_eq!(redis.config("maxmemory-policy"), "noeviction");
        let (url, nowhere) = (redis.url(), format!("redis://{}/0", free_port()));
        // Started side by side: a node that cannot reach Redis takes a few
        // seconds to start. The cut-off node keeps its access log.
        let nodes: Vec<Abide> = thread::scope(|scope| {
            let starting: Vec<_> = (0..3)
                .map(|i| {
                    let flags: Vec<&str> = if cut_off == Some(i) {
                        vec!["--redis", &nowhere]
                    } else {
                        vec!["--redis", &url, "--quiet"]
                    };
                    scope.spawn(move || Abide::serve(&flags))
                })
                .collect();
            starting
                .into_iter()
                .map(|s| s.join().expect("a node starts"))
                .collect()
        });
        for (i, node) in nodes.iter().enumerate() {
            let (status, health) = if cut_off == Some(i) {
                (503, "degraded")
            } else {
                (200, "ok")
            };
            common::wait_until(&format!("node {i}'s /healthz {status}"), || {
                let resp = node.http().get("/healthz");
                resp.status == status
                    && resp.json()["status"] == health
                    && resp.json()["store"] == "redis"
            });
        }
        let front = Front::start([nodes[0].addr, nodes[1].addr, nodes[2].addr]);
        Cluster {
            front,
            nodes: nodes.into_iter().map(Some).collect(),
            _redis: redis,
        }
    }

    /// A `/stats` figure of each node (0 for a killed one), asked of the
    /// node directly.
    fn figures(&self, name: &str) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|node| match node {
                Some(node) => node.http().stats()[name]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no {name} in /stats")),
                None => 0,
            })
            .collect()
    }

    /// The one node whose `name` grew since `before`, and by how much.
    fn grown(&self, name: &str, before: &[u64]) -> (usize, u64) {
        let after = self.figures(name);
        let grown: Vec<(usize, u64)> = after
            .iter()
            .zip(before)
            .enumerate()
            .filter(|(_, (a, b))| a > b)
            .map(|(i, (a, b))| (i, a - b))
            .collect();
        assert_eq!(grown.len(), 1, "{name}: {before:?} before, {after:?} after");
        grown[0]
    }

    /// Waits until exactly one poll waits, on any node; that node.
    fn waiting_node(&self) -> usize {
        let mut on = None;
        common::wait_until("a poll to wait on a node", || {
            let waiters = self.figures("waiters");
            on = waiters.iter().position(|w| *w == 1);
            waiters.iter().sum::<u64>() == 1
        });
        on.expect("a node holds the poll")
    }

    /// Kills node `i` at once (SIGKILL), as a crash would.
    fn kill(&mut self, i: usize) {
        let mut node = self.nodes[i].take().expect("running");
        node.child.kill().expect("kill the node");
        node.child.wait().expect("reap the node");
    }

    /// Every event of `channel` after `cursor`, through the front, `limit`
    /// at a time, each poll with the cursor the previous answer gave; with
    /// the node that answered each poll.
    fn read_through_front(
        &self,
        channel: &str,
        mut cursor: u64,
        limit: usize,
        expected: usize,
    ) -> (Vec<u64>, Vec<usize>) {
        let (mut ids, mut answered_by) = (Vec::new(), Vec::new());
        for _ in 0..expected.div_ceil(limit) + 3 {
            let before = self.figures("events_delivered");
            let resp = self.front.get(&format!(
                "/channels/{channel}/events?last_event_id={cursor}&timeout=1&limit={limit}"
            ));
            if resp.status == 204 {
                return (ids, answered_by);
            }
            assert_eq!(resp.header("abide-missed"), None, "{resp:?}");
            let got = resp.ids();
            let (node, delivered) = self.grown("events_delivered", &before);
            assert_eq!(delivered, got.len() as u64);
            answered_by.push(node);
            cursor = *got.last().expect("a 200 holds events");
            ids.extend(got);
        }
        panic!("polls through the front never ran dry: got {ids:?}, expected {expected} events");
    }
}

/// Through the front, round robin over three nodes: a long poll is woken by a publish landing on another node, and a cursor carried from poll to poll (each on the next node) misses and repeats nothing, also while events are being published.
#[test]
#[cfg_attr(
    not(all(abide_nginx, abide_redis)),
    ignore = "needs nginx and redis-server (apt-get install nginx-light redis-server; .ci/run installs them)"
)]
fn one_cursor_walks_the_nodes_behind_the_front() {
    let cluster = Cluster::start();
    let front = &cluster.front;

    // A long poll waits on one node; the publish after it lands on another
    // (round robin) and wakes it.
    let mut cursor = front.publish("kitchen", "0");
    for round in 1..=3 {
        let poll = front.spawn_get(&format!(
            "/channels/kitchen/events?last_event_id={cursor}&timeout=20"
        ));
        let waiting_on = cluster.waiting_node();
        let commits = cluster.figures("store_commits");
        let id = front.publish("kitchen", &round.to_string());
        let (published_on, _) = cluster.grown("store_commits", &commits);
        assert_ne!(waiting_on, published_on, "round {round}: round robin");
        let resp = common::join_within(poll, "the poll woken through the front");
        assert_eq!(resp.ids(), [id], "round {round}: {resp:?}");
        cursor = id;
    }

    // 21 events published across the nodes, then read with the cursor, two
    // at a time: each poll on the next node.
    let commits = cluster.figures("store_commits");
    let published: Vec<u64> = (0..21)
        .map(|i| front.publish("shared", &i.to_string()))
        .collect();
    assert!(published.windows(2).all(|w| w[0] < w[1]), "{published:?}");
    let spread: Vec<u64> = cluster
        .figures("store_commits")
        .iter()
        .zip(&commits)
        .map(|(a, b)| a - b)
        .collect();
    assert_eq!(spread, [7, 7, 7], "publishes per node");
    let (seen, answered_by) = cluster.read_through_front("shared", 0, 2, published.len());
    assert_eq!(seen, published);
    assert!(
        answered_by.windows(2).all(|w| w[0] != w[1]),
        "each poll on another node: {answered_by:?}"
    );

    // A reader long-polling through the front while events are published
    // through it: both kinds of request land on every node in turn.
    thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let (mut cursor, mut seen) = (0, Vec::new());
            let deadline = Instant::now() + HANG_GUARD;
            while seen.len() < 15 && Instant::now() < deadline {
                let resp = front.get(&format!(
                    "/channels/live/events?last_event_id={cursor}&timeout=5&limit=3"
                ));
                if resp.status == 204 {
                    continue;
                }
                assert_eq!(resp.header("abide-missed"), None, "{resp:?}");
                let got = resp.ids();
                cursor = *got.last().expect("a 200 holds events");
                seen.extend(got);
            }
            seen
        });
        let published: Vec<u64> = (0..15)
            .map(|i| front.publish("live", &i.to_string()))
            .collect();
        let seen = reader.join().expect("the reader");
        assert_eq!(seen, published, "what the reader got, what was published");
    });
    let delivered = cluster.figures("events_delivered");
    assert!(
        delivered.iter().all(|d| *d > 0),
        "every node answered polls: {delivered:?}"
    );
    let log = front.error_log();
    assert!(
        !log.contains("[emerg]") && !log.contains("[alert]"),
        "{log}"
    );
}

/// With one node killed, even one holding a long poll, publishes and polls through the front go on through the other two (the held poll is passed on and still woken), and every acknowledged event is read back in order; with no node left the front answers a JSON 503 with Retry-After.
#[test]
#[cfg_attr(
    not(all(abide_nginx, abide_redis)),
    ignore = "needs nginx and redis-server (apt-get install nginx-light redis-server; .ci/run installs them)"
)]
fn the_front_goes_on_without_a_node() {
    let mut cluster = Cluster::start();
    let mut acknowledged: Vec<u64> = (0..6)
        .map(|i| cluster.front.publish("kept", &i.to_string()))
        .collect();

    // A long poll waits on some node; that node dies.
    let last = *acknowledged.last().unwrap();
    let poll = cluster.front.spawn_get(&format!(
        "/channels/kept/events?last_event_id={last}&timeout=20"
    ));
    let doomed = cluster.waiting_node();
    cluster.kill(doomed);
    // nginx asks another node the same poll, with the same cursor.
    let now_on = cluster.waiting_node();
    assert_ne!(now_on, doomed);
    let id = cluster.front.publish("kept", r#""woken""#);
    acknowledged.push(id);
    let resp = common::join_within(poll, "the poll passed on by nginx");
    assert_eq!(resp.ids(), [id], "{resp:?}");

    // Publishes keep being acknowledged, on the other two nodes only.
    let commits = cluster.figures("store_commits");
    for i in 0..12 {
        acknowledged.push(cluster.front.publish("kept", &format!("\"after {i}\"")));
    }
    let spread: Vec<u64> = cluster
        .figures("store_commits")
        .iter()
        .zip(&commits)
        .map(|(a, b)| a - b)
        .collect();
    assert_eq!(spread.iter().sum::<u64>(), 12, "{spread:?}");
    assert_eq!(spread[doomed], 0, "{spread:?}");
    assert!(
        spread.iter().filter(|n| **n > 0).count() == 2,
        "both live nodes took publishes: {spread:?}"
    );

    // Nothing acknowledged is lost, through the front.
    let (seen, answered_by) = cluster.read_through_front("kept", 0, 3, acknowledged.len());
    assert_eq!(seen, acknowledged);
    assert!(!answered_by.contains(&doomed), "{answered_by:?}");
    for _ in 0..3 {
        let health = cluster.front.get("/healthz");
        assert_eq!(health.status, 200, "{health:?}");
    }

    // With no node left, the front answers as abide would: a JSON 503 with
    // Retry-After, never nginx's own 502 page.
    for i in 0..3 {
        if i != doomed {
            cluster.kill(i);
        }
    }
    let refused = cluster.front.request("POST", "/channels/kept/events", "1");
    refused.assert_error(503, "retry");
    assert!(refused.header("retry-after").is_some(), "{refused:?}");
}

/// A publish a node refuses with 503 because it cannot reach Redis (nothing stored) is passed by the front to another node: every publish is acknowledged, and each is stored exactly once.
#[test]
#[cfg_attr(
    not(all(abide_nginx, abide_redis)),
    ignore = "needs nginx and redis-server (apt-get install nginx-light redis-server; .ci/run installs them)"
)]
fn a_publish_refused_by_a_cut_off_node_is_passed_on() {
    const CUT_OFF: usize = 2;
    let cluster = Cluster::start_with(Some(CUT_OFF));
    let commits = cluster.figures("store_commits");
    let acknowledged: Vec<u64> = (0..9)
        .map(|i| cluster.front.publish("passed", &i.to_string()))
        .collect();
    let spread: Vec<u64> = cluster
        .figures("store_commits")
        .iter()
        .zip(&commits)
        .map(|(a, b)| a - b)
        .collect();
    assert_eq!(spread[CUT_OFF], 0, "{spread:?}");
    assert_eq!(spread.iter().sum::<u64>(), 9, "one commit each: {spread:?}");
    // The cut-off node did refuse publishes; the client never saw it.
    let cut_off = cluster.nodes[CUT_OFF].as_ref().expect("running");
    let refused = cut_off.next_line("a publish refused 503 on the cut-off node", |l| {
        l.contains("POST /channels/passed/events 503")
    });
    assert!(refused.contains(" 503 "), "{refused}");
    // Read back from a node that reaches Redis (the cut-off node's mirror
    // is empty): each acknowledged event once, in order.
    let healthy = cluster.nodes[0].as_ref().expect("running").http();
    let resp = healthy.get("/channels/passed/events?last_event_id=0&timeout=0&limit=1000");
    assert_eq!(resp.ids(), acknowledged, "{resp:?}");
}
