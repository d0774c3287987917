//! Several abide nodes on one real `redis-server` (`--redis`) behave, for
//! every client, like one abide: one id order, one cursor, nothing lost or
//! duplicated; deletions reach every node; a Redis killed and restarted
//! (append-only) loses no acknowledged event, refuses publishes meanwhile
//! with `503`, and the nodes recover by themselves; a restarted node
//! catches up.
//!
//! Each test starts its own `redis-server` on a free loopback port in a
//! temporary directory (killed by PID on drop) and its nodes in this
//! process (`abide::start` on port 0). Ignored, with the reason, when no
//! redis-server is installed (`.ci/run` installs and requires it).
mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{HANG_GUARD, Http, TempDir, TestServer};

/// A `redis-server` started for one test; killed (by PID) on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    append_only: bool,
    /// Serves TLS only, with the certificates `make_certificates` wrote in
    /// `dir`.
    tls: bool,
}

impl Redis {
    /// Without persistence.
    fn start() -> Redis {
        Redis::launch(false)
    }

    /// With append-only persistence, an fsync per write.
    fn start_append_only() -> Redis {
        Redis::launch(true)
    }

    /// TLS only, its certificate signed by a CA of its own (`ca_path`).
    fn start_tls() -> Redis {
        let dir = TempDir::new("redis-tls");
        make_certificates(dir.path());
        Redis::launch_in(dir, false, true)
    }

    fn launch(append_only: bool) -> Redis {
        Redis::launch_in(TempDir::new("redis"), append_only, false)
    }

    fn launch_in(dir: TempDir, append_only: bool, tls: bool) -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut redis = Redis {
            child: None,
            port,
            dir,
            append_only,
            tls,
        };
        redis.restart();
        redis
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Starts it (again) on the same port and directory, and waits until it
    /// answers.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let persistence: &[&str] = if self.append_only {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let port = self.port.to_string();
        let cert = |name: &str| self.dir.path().join(name).display().to_string();
        let listen: Vec<String> = if self.tls {
            [
                "--port",
                "0",
                "--tls-port",
                &port,
                "--tls-auth-clients",
                "no",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([
                "--tls-cert-file".into(),
                cert("server.crt"),
                "--tls-key-file".into(),
                cert("server.key"),
                "--tls-ca-cert-file".into(),
                cert("ca.crt"),
            ])
            .collect()
        } else {
            vec!["--port".into(), port.clone()]
        };
        let child = Command::new(redis_binary())
            .args(&listen)
            .args(["--bind", "127.0.0.1"])
            .args(["--dir", self.dir.arg(), "--save", ""])
            .args(persistence)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        common::wait_until("redis-server to answer", || self.ping());
    }

    /// Kills it at once (SIGKILL), as a crash would.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill redis-server");
        child.wait().expect("reap redis-server");
    }

    fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    fn ping(&self) -> bool {
        let client = if self.tls {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(self.ca_path()).expect("the CA certificate")),
            };
            redis::Client::build_with_tls(self.url(), certificates)
        } else {
            redis::Client::open(self.url())
        };
        client
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con))
            .is_ok()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Writes a CA (`ca.crt`) and a certificate for 127.0.0.1 signed by it
/// (`server.crt`, `server.key`) into `dir`, with the `openssl` command.
fn make_certificates(dir: &std::path::Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (days, rsa) = (["-days", "2"], ["-newkey", "rsa:2048", "-nodes"]);
    openssl(
        &[
            &["req", "-x509"],
            &rsa[..],
            &["-keyout", "ca.key", "-out", "ca.crt"],
            &days[..],
            &["-subj", "/CN=abide test CA"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"],
            &rsa[..],
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        &[
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-extfile",
                "san.ext",
            ],
            &days[..],
        ]
        .concat(),
    );
}

fn redis_binary() -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
        .expect("redis-server (build.rs found one)")
}

/// A node on `redis`, with a buffer large enough that nothing is dropped.
fn node(redis: &Redis) -> TestServer {
    node_with(redis, |_| {})
}

fn node_with(redis: &Redis, adjust: impl FnOnce(&mut abide::Config)) -> TestServer {
    let mut config = abide::Config {
        redis: Some(redis.url()),
        buffer_events: 10_000,
        ..common::config()
    };
    adjust(&mut config);
    common::start_with(config)
}

/// Waits until `/healthz` answers `status`.
fn wait_for_health(node: &Http, status: u16) {
    common::wait_until(&format!("/healthz {status}"), || {
        node.get("/healthz").status == status
    });
}

/// Everything `node` holds on `channel` after `cursor`, polled page by page.
fn read_all(node: &Http, channel: &str, mut cursor: u64) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    loop {
        let resp = node.get(&format!(
            "/channels/{channel}/events?last_event_id={cursor}&timeout=0&limit=1000"
        ));
        match resp.status {
            204 => return events,
            200 => {
                let page = resp.json();
                let page = page.as_array().expect("array").clone();
                cursor = page.last().expect("a 200 holds events")["id"]
                    .as_u64()
                    .unwrap();
                events.extend(page);
            }
            _ => panic!("unexpected answer {resp:?}"),
        }
    }
}

fn ids(events: &[serde_json::Value]) -> Vec<u64> {
    events.iter().map(|e| e["id"].as_u64().unwrap()).collect()
}

/// A publish on node A wakes a poll waiting on node B, and B answers with
/// the event as A stored it.
#[test]
#[cfg_attr(
    not(abide_redis),
    ignore = "needs redis-server (apt-get install redis-server; .ci/run installs it)"
)]
fn a_publish_on_one_node_wakes_a_waiter_on_another() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let poll = b.spawn_get("/channels/kitchen/events?timeout=20");
    b.wait_for_stat("waiters", |n| n == 1);
    let published = a.post("/channels/kitchen/events", r#"{"celsius":21.5}"#);
    assert_eq!(published.status, 201, "{published:?}");
    let resp = common::join_within(poll, "the poll on B");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        resp.json()[0],
        published.json(),
        "B answers A's event as stored"
    );
    assert_eq!(a.get("/healthz").json()["store"], "redis");
}

/// A cursor from one node is good on every other: polls alternating
/// between three nodes, each with the cursor the previous answer gave,
/// get every event once, in id order, while events are published on all
/// three.
#[test]
#[cfg_attr(
    not(abide_redis),
    ignore = "needs redis-server (apt-get install redis-server; .ci/run installs it)"
)]
fn one_cursor_serves_on_every_node() {
    let redis = Redis::start();
    let nodes = [node(&redis), node(&redis), node(&redis)];
    let published: Vec<u64> = (0..30)
        .map(|i| nodes[i % 3].publish("shared", &i.to_string()))
        .collect();
    assert!(published.windows(2).all(|w| w[0] < w[1]), "{published:?}");
    let mut cursor = 0;
    let mut seen = Vec::new();
    for turn in 0.. {
        let node = &nodes[turn % 3];
        let resp = node.get(&format!(
            "/channels/shared/events?last_event_id={cursor}&timeout=0&limit=4"
        ));
        if resp.status == 204 {
            break;
        }
        assert_eq!(resp.header("abide-missed"), None, "{resp:?}");
        let got = resp.ids();
        cursor = *got.last().unwrap();
        seen.extend(got);
    }
    assert_eq!(seen, published);
    // A cursor handed to another node the moment it was issued.
    for i in 0..20 {
        let (from, to) = (&nodes[i % 3], &nodes[(i + 1) % 3]);
        let before = from.publish("race", "1");
        let waiting = to.spawn_get(&format!(
            "/channels/race/events?last_event_id={before}&timeout=20"
        ));
        let after = nodes[(i + 2) % 3].publish("race", "2");
        let resp = common::join_within(waiting, "the poll with a fresh cursor");
        assert_eq!(resp.ids(), [after], "turn {i}: {resp:?}");
    }
}

const CHANNELS: [&str; 3] = ["a", "b", "c"];
const PUBLISHERS: usize = 3;
const EVENTS_PER_PUBLISHER: usize = if cfg!(abide_cross) { 40 } else { 120 };

/// The torture pattern of `tests/concurrency.rs` spread over three nodes:
/// publishers on different nodes, subscribers on overlapping channels each
/// polling a different node every time; every subscriber sees every event
/// of its channels exactly once, in id order.
#[test]
#[cfg_attr(
    not(abide_redis),
    ignore = "needs redis-server (apt-get install redis-server; .ci/run installs it)"
)]
fn three_nodes_deliver_every_event_once_in_order() {
    let redis = Redis::start();
    let nodes = [node(&redis), node(&redis), node(&redis)];
    let subscriptions: Vec<Vec<&str>> = vec![
        vec!["a"],
        vec!["b", "c"],
        vec!["a", "c"],
        vec!["a", "b", "c"],
    ];
    let channel_of = |p: usize, i: usize| CHANNELS[(p + i) % CHANNELS.len()];
    let mut per_channel: HashMap<&str, usize> = HashMap::new();
    for p in 0..PUBLISHERS {
        for i in 0..EVENTS_PER_PUBLISHER {
            *per_channel.entry(channel_of(p, i)).or_default() += 1;
        }
    }
    let (published, seen) = thread::scope(|scope| {
        let subscribers: Vec<_> = subscriptions
            .iter()
            .enumerate()
            .map(|(s, channels)| {
                let expected = channels.iter().map(|c| per_channel[c]).sum();
                let nodes = &nodes;
                scope.spawn(move || subscribe(nodes, s, channels, expected))
            })
            .collect();
        let publishers: Vec<_> = (0..PUBLISHERS)
            .map(|p| {
                let node = &nodes[p % nodes.len()];
                scope.spawn(move || {
                    (0..EVENTS_PER_PUBLISHER)
                        .map(|i| {
                            let channel = channel_of(p, i);
                            (node.publish(channel, &format!("[{p},{i}]")), channel)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let published: Vec<(u64, &str)> = publishers
            .into_iter()
            .flat_map(|h| h.join().expect("publisher"))
            .collect();
        let seen: Vec<Vec<(u64, String)>> = subscribers
            .into_iter()
            .map(|h| h.join().expect("subscriber"))
            .collect();
        (published, seen)
    });
    let unique: BTreeSet<u64> = published.iter().map(|(id, _)| *id).collect();
    assert_eq!(unique.len(), published.len(), "an id was issued twice");
    for (channels, got) in subscriptions.iter().zip(&seen) {
        let mut expected: Vec<u64> = published
            .iter()
            .filter(|(_, c)| channels.contains(c))
            .map(|(id, _)| *id)
            .collect();
        expected.sort_unstable();
        let got_ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
        assert_eq!(got_ids, expected, "subscriber {channels:?}");
        for (id, channel) in got {
            let (_, want) = published.iter().find(|(p, _)| p == id).unwrap();
            assert_eq!(channel, want, "event {id}");
        }
    }
}

/// Subscriber `s` long-polls `channels`, each poll on the next node, until
/// `expected` events came; returns (id, channel) in the order received.
fn subscribe(
    nodes: &[TestServer],
    s: usize,
    channels: &[&str],
    expected: usize,
) -> Vec<(u64, String)> {
    let path = format!("/events?channels={}", channels.join(","));
    let deadline = Instant::now() + HANG_GUARD * 2;
    let mut seen = Vec::with_capacity(expected);
    let mut cursor = 0;
    let mut turn = s;
    while seen.len() < expected {
        assert!(
            Instant::now() < deadline,
            "subscriber {channels:?}: only {} of {expected} events",
            seen.len()
        );
        let node = &nodes[turn % nodes.len()];
        turn += 1;
        let resp = node.get(&format!("{path}&last_event_id={cursor}&timeout=5"));
        assert_eq!(resp.header("abide-missed"), None, "{resp:?}");
        if resp.status == 204 {
            continue;
        }
        for event in resp.json().as_array().expect("array") {
            let id = event["id"].as_u64().unwrap();
            assert!(id > cursor, "subscriber {channels:?}: {id} after {cursor}");
            cursor = id;
            seen.push((id, event["channel"].as_str().unwrap().to_string()));
        }
    }
    seen
}

/// A deletion on one node answers the polls waiting on the channel on
/// every node with `410`, and no node holds its events afterwards.
#[test]
#[cfg_attr(
    not(abide_redis),
    ignore = "needs redis-server (apt-get install redis-server; .ci/run installs it)"
)]
fn a_deletion_reaches_every_node() {
    let redis = Redis::start();
    let nodes = [node(&redis), node(&redis), node(&redis)];
    let last = nodes[0].publish("doomed", "1");
    let waiting: Vec<_> = nodes
        .iter()
        .map(|n| {
            n.spawn_get(&format!(
                "/channels/doomed/events?last_event_id={last}&timeout=20"
            ))
        })
        .collect();
    for n in &nodes {
        n.wait_for_stat("waiters", |w| w == 1);
    }
    let deleted = nodes[1].delete("/channels/doomed");
    assert_eq!(deleted.status, 204, "{deleted:?}");
    for poll in waiting {
        let resp = common::join_within(poll, "a poll on the deleted channel");
        resp.assert_error(410, "doomed");
    }
    for n in &nodes {
        assert!(read_all(n, "doomed", 0).is_empty());
    }
    // Published again, it starts afresh, above the deletion, on every node.
    let again = nodes[2].publish("doomed", "2");
    assert!(again > last);
    for n in &nodes {
        common::wait_until("the new event on every node", || {
            ids(&read_all(n, "doomed", 0)) == [again]
        });
    }
}

/// Redis killed and restarted (append-only) under a stream of publishes on
/// two nodes: no acknowledged event is lost, every publish refused meanwhile
/// got `503` with `Retry-After` and was not stored, `/healthz` says
/// `degraded` (503) during the outage and `ok` after, and a poll held on
/// node B throughout is woken by a publish on node A once Redis is back.
#[test]
#[cfg_attr(
    not(abide_redis),
    ignore = "needs redis-server (apt-get install redis-server; .ci/run installs it)"
)]
fn redis_killed_and_restarted_loses_no_acknowledged_event() {
    let mut redis = Redis::start_append_only();
    let (a, b) = (node(&redis), node(&redis));
    let start = a.publish("held", "0");
    let held = b.spawn_get(&format!(
        "/channels/held/events?last_event_id={start}&timeout=60"
    ));
    b.wait_for_stat("waiters", |n| n == 1);

    let stop = AtomicBool::new(false);
    let refusals = AtomicUsize::new(0);
    let outcomes = thread::scope(|scope| {
        let publisher = scope.spawn(|| {
            let mut outcomes: Vec<(String, common::Resp)> = Vec::new();
            for i in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let data = format!("{i}");
                let node = if i % 2 == 0 { &a } else { &b };
                let resp = node.post("/channels/k/events", &data);
                if resp.status == 503 {
                    refusals.fetch_add(1, Ordering::Relaxed);
                }
                outcomes.push((data, resp));
                thread::sleep(Duration::from_millis(2)); // sync-ok: paces the publisher, waits for no state
            }
            outcomes
        });
        let acked = |n: usize| {
            common::wait_until("publishes acknowledged", || {
                a.stats()["events_published"].as_u64().unwrap() >= n as u64
            })
        };
        acked(30);
        redis.kill();
        wait_for_health(&a, 503);
        let degraded = a.get("/healthz");
        assert_eq!(degraded.json()["status"], "degraded", "{degraded:?}");
        assert!(degraded.header("retry-after").is_some(), "{degraded:?}");
        let refused = a.post("/channels/k/events", "\"during\"");
        refused.assert_error(503, "redis");
        assert!(refused.header("retry-after").is_some(), "{refused:?}");
        let metrics = a.get("/metrics").body;
        assert!(metrics.contains("abide_redis_connected 0"), "{metrics}");
        // The publisher meets the outage on both nodes before Redis is back.
        common::wait_until("the publisher refused on both nodes", || {
            refusals.load(Ordering::Relaxed) >= 2
        });
        redis.restart();
        wait_for_health(&a, 200);
        wait_for_health(&b, 200);
        let published = a.stats()["events_published"].as_u64().unwrap() as usize;
        acked(published + 30);
        stop.store(true, Ordering::Relaxed);
        publisher.join().expect("publisher")
    });

    let woken = a.publish("held", "\"after\"");
    let resp = common::join_within(held, "the poll held through the outage");
    assert_eq!(resp.ids(), [woken], "{resp:?}");

    let stored: HashMap<String, u64> = read_all(&b, "k", 0)
        .iter()
        .map(|e| (e["data"].to_string(), e["id"].as_u64().unwrap()))
        .collect();
    assert!(
        !stored.contains_key("\"during\""),
        "a refused event was stored"
    );
    let (mut acknowledged, mut refused) = (0, 0);
    for (data, resp) in &outcomes {
        match resp.status {
            201 => {
                acknowledged += 1;
                assert_eq!(
                    stored.get(data),
                    Some(&resp.json()["id"].as_u64().unwrap()),
                    "acknowledged event {data} lost"
                );
            }
            503 => {
                refused += 1;
                assert!(resp.header("retry-after").is_some(), "{resp:?}");
                assert!(
                    !stored.contains_key(data),
                    "refused event {data} was stored"
                );
            }
            // Redis went away with the event in flight and stayed away:
            // stored or not, the answer said it is unknown.
            504 => resp.assert_error(504, "unknown"),
            _ => panic!("unexpected answer {resp:?}"),
        }
    }
    assert!(
        acknowledged >= 60 && refused >= 1,
        "{acknowledged} acknowledged, {refused} refused"
    );
    assert_eq!(
        ids(&read_all(&a, "k", 0)),
        ids(&read_all(&b, "k", 0)),
        "A and B hold the same"
    );
    assert!(a.get("/metrics").body.contains("abide_redis_connected 1"));
}

/// A node stopped while others publish, then started again, catches up
/// from Redis: it holds what was published meanwhile, and its own next ids
/// continue above.
#[test]
#[cfg_attr(
    not(abide_redis),
    ignore = "needs redis-server (apt-get install redis-server; .ci/run installs it)"
)]
fn a_restarted_node_catches_up() {
    let redis = Redis::start();
    let a = node(&redis);
    let c = node(&redis);
    let first = c.publish("log", "1");
    c.stop();
    let meanwhile: Vec<u64> = (0..5).map(|i| a.publish("log", &i.to_string())).collect();
    let c = node(&redis);
    let mut expected = vec![first];
    expected.extend(&meanwhile);
    assert_eq!(ids(&read_all(&c, "log", 0)), expected);
    let next = c.publish("log", "6");
    assert!(next > *meanwhile.last().unwrap());
    assert_eq!(
        ids(&read_all(&a, "log", *meanwhile.last().unwrap())),
        [next]
    );
}

/// Ids never go back, even after Redis lost everything (restarted without
/// persistence): the nodes raise its id sequence to what they have seen.
#[test]
#[cfg_attr(
    not(abide_redis),
    ignore = "needs redis-server (apt-get install redis-server; .ci/run installs it)"
)]
fn ids_never_go_back_after_redis_lost_its_data() {
    let mut redis = Redis::start();
    let a = node(&redis);
    // Far ahead of the clock, as after a clock that ran fast.
    let ahead: u64 = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .and_then(|mut con| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros() as u64;
            let ahead = now + 3_600_000_000;
            redis::cmd("SET")
                .arg("abide:id")
                .arg(ahead)
                .query::<()>(&mut con)
                .map(|()| ahead)
        })
        .unwrap();
    let before = a.publish("x", "1");
    assert_eq!(before, ahead + 1);
    redis.kill();
    redis.restart();
    wait_for_health(&a, 200);
    let after = a.publish("x", "2");
    assert!(after > before, "{after} after {before}");
}

/// Events the shared store trimmed (`--buffer`) before a node held them are
/// announced as missed (`Abide-Missed`) on that node, as on the others.
#[test]
#[cfg_attr(
    not(abide_redis),
    ignore = "needs redis-server (apt-get install redis-server; .ci/run installs it)"
)]
fn trimmed_events_are_missed_on_every_node() {
    let redis = Redis::start();
    let small = |config: &mut abide::Config| config.buffer_events = 3;
    let a = node_with(&redis, small);
    let published: Vec<u64> = (0..6).map(|i| a.publish("t", &i.to_string())).collect();
    // A node that starts now learns of the loss from Redis.
    let late = node_with(&redis, small);
    for n in [&a, &late] {
        let resp = n.get("/channels/t/events?last_event_id=0&timeout=0");
        assert_eq!(resp.ids(), published[3..], "{resp:?}");
        assert_eq!(resp.header("abide-missed"), Some("true"), "{resp:?}");
        let caught_up = n.get(&format!(
            "/channels/t/events?last_event_id={}&timeout=0",
            published[2]
        ));
        assert_eq!(caught_up.header("abide-missed"), None, "{caught_up:?}");
    }
}

/// A node started while Redis is down serves degraded (`/healthz` 503,
/// publishes 503) and recovers by itself once Redis comes up.
#[test]
#[cfg_attr(
    not(abide_redis),
    ignore = "needs redis-server (apt-get install redis-server; .ci/run installs it)"
)]
fn a_node_started_before_redis_recovers_by_itself() {
    let mut redis = Redis::start();
    redis.kill();
    let a = node(&redis);
    assert_eq!(a.get("/healthz").status, 503);
    a.post("/channels/x/events", "1").assert_error(503, "redis");
    let poll = a.spawn_get("/channels/x/events?timeout=30");
    redis.restart();
    wait_for_health(&a, 200);
    let id = a.publish("x", "2");
    let resp = common::join_within(poll, "the poll held while Redis was down");
    assert_eq!(resp.ids(), [id]);
}

/// Two nodes reach a Redis that serves TLS only, through `rediss://` and
/// `--redis-ca`, and share events as over plain TCP; a node that does not
/// trust Redis's CA is refused by TLS and stays degraded.
#[test]
#[cfg_attr(
    not(abide_redis),
    ignore = "needs redis-server and openssl (apt-get install redis-server openssl; .ci/run installs them)"
)]
fn nodes_reach_redis_over_tls() {
    let redis = Redis::start_tls();
    let trusting = |config: &mut abide::Config| config.redis_ca = Some(redis.ca_path());
    let (a, b) = (node_with(&redis, trusting), node_with(&redis, trusting));
    let poll = b.spawn_get("/channels/secure/events?timeout=20");
    b.wait_for_stat("waiters", |n| n == 1);
    let id = a.publish("secure", "1");
    assert_eq!(common::join_within(poll, "the poll over TLS").ids(), [id]);
    // The system's CAs do not include the test's own.
    let doubting = node(&redis);
    assert_eq!(doubting.get("/healthz").status, 503);
    doubting
        .post("/channels/secure/events", "2")
        .assert_error(503, "redis");
}

/// `--redis` refuses what cannot work, with the flag named.
#[test]
fn redis_flags_are_checked() {
    for (url, data_dir, ca, word) in [
        ("http://127.0.0.1:6379", None, None, "redis://"),
        ("redis://127.0.0.1:6379", Some("/tmp/x"), None, "--data-dir"),
        (
            "redis://127.0.0.1:6379",
            None,
            Some("/tmp/ca.pem"),
            "--redis-ca",
        ),
    ] {
        let config = abide::Config {
            redis: Some(url.into()),
            data_dir: data_dir.map(PathBuf::from),
            redis_ca: ca.map(PathBuf::from),
            ..common::config()
        };
        let err = config.check().expect_err(url).to_string();
        assert!(err.contains(word), "{url}: {err}");
    }
}
