//! The server's settings, checked once at start.
//!
//! Owns `Config` (every limit the server enforces, with its unit in the name)
//! and its validation. It does no I/O and starts no threads; `main.rs` builds a
//! `Config` from flags on the main thread, tests build one directly.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

pub use crate::store::sqlite::Sync;

/// The largest `--max-event-bytes` accepted: an event body is read whole into
/// memory (and stored), so one must stay small beside a Pi's RAM.
pub const MAX_EVENT_BYTES_LIMIT: usize = 16 * 1024 * 1024;

/// `--publish-burst` when not given (unless one second of the rate is more).
pub const DEFAULT_PUBLISH_BURST: u32 = 10;
/// The highest `--publish-rate` accepted, per second.
pub const MAX_PUBLISH_RATE: f64 = 1_000_000.0;

/// Everything `run` needs. Build it with `Config::default()` and change fields.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Polls that may wait at once; one more gets `503`.
    pub max_waiters: usize,
    /// Hold of a poll that names no `timeout`.
    pub default_timeout: Duration,
    /// Longest hold; larger `timeout` values are clamped to it.
    pub max_timeout: Duration,
    /// Newest events kept per channel (`--buffer`).
    pub buffer_events: usize,
    /// Events older than this are dropped; `None` keeps them until overwritten.
    pub event_ttl: Option<Duration>,
    /// Largest accepted event body.
    pub max_event_bytes: usize,
    /// Most channels that may exist at once.
    pub max_channels: usize,
    /// Bytes of stored events over all channels; beyond it the oldest are dropped.
    pub max_stored_bytes: usize,
    /// A connection that sends nothing for this long is closed; also bounds
    /// each read of a request.
    pub idle_timeout: Duration,
    /// A write to a client that does not read for this long fails.
    pub write_timeout: Duration,
    /// Threads that may answer requests at once (publishes, immediate answers).
    pub max_writers: usize,
    /// Requests waiting for a writer thread when all `max_writers` are busy;
    /// one more is refused (`503`, or its connection cut if even that
    /// cannot be queued).
    pub max_backlog: usize,
    /// Requests one connection may have queued behind the one being
    /// answered; one more and the connection is cut.
    pub max_pipelined_requests: usize,
    /// Bytes (request lines and headers) one connection may have queued
    /// behind the one being answered; more and the connection is cut.
    pub max_pipelined_bytes: usize,
    /// A Server-Sent Events stream with nothing to send writes a comment
    /// this often (`--sse-heartbeat`), so that proxies and NAT tables keep
    /// it and abide notices a client that left.
    pub sse_heartbeat: Duration,
    /// A stream ends after this long (`--max-stream-seconds`), so that
    /// long-lived streams rebalance; `None`: never.
    pub max_stream: Option<Duration>,
    /// Directory of the SQLite database that keeps events across restarts
    /// (`--data-dir`); `None` keeps them in memory only.
    pub data_dir: Option<PathBuf>,
    /// How a commit reaches the disk (`--sync`); only with `data_dir`.
    pub sync: Sync,
    /// The Redis that several nodes share events, ids and deletions
    /// through (`--redis redis://HOST:PORT/DB`); `None`: this node alone.
    pub redis: Option<String>,
    /// With a `rediss://` address: trust only the CA certificates in this
    /// PEM file (`--redis-ca`); `None`: the system's.
    pub redis_ca: Option<PathBuf>,
    /// The auth file (`--auth-file`): which token may do what on which
    /// channels; `None`: everything is open to everyone.
    pub auth_file: Option<PathBuf>,
    /// `/stats` and `/metrics` are open to anyone even with an auth file
    /// (`--public-metrics`).
    pub public_metrics: bool,
    /// Wait slots one client may hold at once (`--max-waiters-per-client`);
    /// one more is answered `429`. `None`: only `max_waiters` bounds it.
    pub max_waiters_per_client: Option<usize>,
    /// Publishes per second one client may sustain (`--publish-rate`); a
    /// faster one is answered `429`. `None`: no rate limit.
    pub publish_rate_per_second: Option<f64>,
    /// Publishes one client may make at once before the rate applies
    /// (`--publish-burst`); `None`: `DEFAULT_PUBLISH_BURST`, or one second's
    /// worth at a higher rate.
    pub publish_burst: Option<u32>,
    /// Proxies whose `X-Forwarded-For` names the client (`--trust-proxy`);
    /// from any other address the header is ignored.
    pub trust_proxy: Vec<IpNet>,
    /// `Access-Control-Allow-Origin` value; `None` sends no CORS headers.
    pub cors_origin: Option<String>,
    /// No access log.
    pub quiet: bool,
    /// Serve the demo page at `/`.
    pub demo: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_waiters: 512,
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(60),
            buffer_events: 256,
            event_ttl: None,
            max_event_bytes: 65536,
            max_channels: 10_000,
            max_stored_bytes: 64 * 1024 * 1024,
            idle_timeout: Duration::from_secs(75),
            write_timeout: Duration::from_secs(10),
            max_writers: 64,
            max_backlog: 1024,
            max_pipelined_requests: 64,
            max_pipelined_bytes: 64 * 1024,
            sse_heartbeat: Duration::from_secs(25),
            max_stream: None,
            data_dir: None,
            sync: Sync::Normal,
            auth_file: None,
            redis: None,
            redis_ca: None,
            public_metrics: false,
            max_waiters_per_client: None,
            publish_rate_per_second: None,
            publish_burst: None,
            trust_proxy: Vec::new(),
            cors_origin: None,
            quiet: false,
            demo: true,
        }
    }
}

/// Why a `Config` was refused; the message names the flag.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// The burst of `--publish-rate`: `--publish-burst`, else the larger of
    /// `DEFAULT_PUBLISH_BURST` and one second of the rate.
    pub fn publish_burst(&self) -> u32 {
        self.publish_burst.unwrap_or_else(|| {
            let second = self.publish_rate_per_second.unwrap_or(0.0).ceil() as u32;
            second.max(DEFAULT_PUBLISH_BURST)
        })
    }

    /// Refuses values the server cannot honour.
    pub fn check(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError(msg));
        if !(1..=100_000).contains(&self.max_waiters) {
            return fail(format!(
                "--max-waiters must be between 1 and 100000, got {}",
                self.max_waiters
            ));
        }
        if self.max_timeout.as_secs() > 3600 {
            return fail(format!(
                "--max-timeout must be at most 3600 seconds, got {}",
                self.max_timeout.as_secs()
            ));
        }
        if self.default_timeout > self.max_timeout {
            return fail(format!(
                "--default-timeout ({}) must not exceed --max-timeout ({})",
                self.default_timeout.as_secs(),
                self.max_timeout.as_secs()
            ));
        }
        if !(1..=1_000_000).contains(&self.buffer_events) {
            return fail(format!(
                "--buffer must be between 1 and 1000000 events, got {}",
                self.buffer_events
            ));
        }
        if !(1..=MAX_EVENT_BYTES_LIMIT).contains(&self.max_event_bytes) {
            return fail(format!(
                "--max-event-bytes must be between 1 and {MAX_EVENT_BYTES_LIMIT}, got {}",
                self.max_event_bytes
            ));
        }
        if self.max_channels == 0 {
            return fail("--max-channels must be at least 1".into());
        }
        if self.max_stored_bytes < self.max_event_bytes {
            return fail(format!(
                "--max-stored-bytes ({}) must be at least --max-event-bytes ({})",
                self.max_stored_bytes, self.max_event_bytes
            ));
        }
        if self.idle_timeout.is_zero() {
            return fail("--idle-timeout must be at least 1 second".into());
        }
        // While a poll is held, tiny_http reads the next request on that
        // connection with the idle timeout; a hold that outlived it would be
        // answered on a connection already given up.
        let longest_hold = self.max_timeout + self.max_timeout / 16;
        if longest_hold >= self.idle_timeout {
            return fail(format!(
                "--max-timeout ({} s, so holds of up to {:.1} s with their 1/16 jitter) must stay \
                 below --idle-timeout ({} s): raise --idle-timeout or lower --max-timeout",
                self.max_timeout.as_secs(),
                longest_hold.as_secs_f64(),
                self.idle_timeout.as_secs()
            ));
        }
        if self.write_timeout.is_zero() {
            return fail("--write-timeout must be at least 1 second".into());
        }
        if !(1..=10_000).contains(&self.max_writers) {
            return fail(format!(
                "--max-writers must be between 1 and 10000, got {}",
                self.max_writers
            ));
        }
        if !(1..=1_000_000).contains(&self.max_backlog) {
            return fail(format!(
                "--max-backlog must be between 1 and 1000000 requests, got {}",
                self.max_backlog
            ));
        }
        if !(1..=10_000).contains(&self.max_pipelined_requests) {
            return fail(format!(
                "--max-pipelined-requests must be between 1 and 10000, got {}",
                self.max_pipelined_requests
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_pipelined_bytes) {
            return fail(format!(
                "--max-pipelined-bytes must be between 1024 and 16777216, got {}",
                self.max_pipelined_bytes
            ));
        }
        if !(1..=3600).contains(&self.sse_heartbeat.as_secs()) {
            return fail(format!(
                "--sse-heartbeat must be between 1 and 3600 seconds, got {}",
                self.sse_heartbeat.as_secs()
            ));
        }
        if self.max_stream.is_some_and(|m| m.is_zero()) {
            return fail("--max-stream-seconds must be at least 1 (or absent)".into());
        }
        if self
            .data_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return fail("--data-dir must name a directory".into());
        }
        if let Some(url) = &self.redis {
            if self.data_dir.is_some() {
                return fail(
                    "--redis and --data-dir do not go together: with --redis, Redis keeps the events \
                     (give it append-only persistence)"
                        .into(),
                );
            }
            if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                return fail(format!(
                    "--redis must be a redis://HOST:PORT/DB (or rediss:// for TLS) address, got {}",
                    crate::store::redis::redact_url(url)
                ));
            }
        }
        if self.redis_ca.is_some()
            && !self
                .redis
                .as_deref()
                .is_some_and(|url| url.starts_with("rediss://"))
        {
            return fail("--redis-ca goes with a --redis rediss:// (TLS) address".into());
        }
        if self
            .auth_file
            .as_ref()
            .is_some_and(|f| f.as_os_str().is_empty())
        {
            return fail("--auth-file must name a file".into());
        }
        if let Some(share) = self.max_waiters_per_client {
            if !(1..=self.max_waiters).contains(&share) {
                return fail(format!(
                    "--max-waiters-per-client must be between 1 and --max-waiters ({}), got {share}",
                    self.max_waiters
                ));
            }
        }
        if let Some(rate) = self.publish_rate_per_second {
            if !(rate > 0.0 && rate <= MAX_PUBLISH_RATE) {
                return fail(format!(
                    "--publish-rate must be above 0 and at most {MAX_PUBLISH_RATE} events per second, got {rate}"
                ));
            }
        }
        match self.publish_burst {
            Some(_) if self.publish_rate_per_second.is_none() => {
                return fail("--publish-burst needs --publish-rate".into());
            }
            Some(burst) if !(1..=1_000_000).contains(&burst) => {
                return fail(format!(
                    "--publish-burst must be between 1 and 1000000 events, got {burst}"
                ));
            }
            _ => {}
        }
        if let Some(origin) = &self.cors_origin {
            let printable = origin.bytes().all(|b| (0x21..0x7f).contains(&b));
            if origin.is_empty() || !printable {
                return fail(format!(
                    "--cors-origin must be `*` or an origin such as https://example.com, got {origin:?}"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded defaults are a valid configuration (what `make run` serves with).
    #[test]
    fn defaults_pass_the_check() {
        assert_eq!(Config::default().check(), Ok(()));
    }

    /// A default timeout above the maximum is refused, naming the flag.
    #[test]
    fn default_timeout_above_max_timeout_is_refused() {
        let config = Config {
            default_timeout: Duration::from_secs(200),
            ..Config::default()
        };
        let err = config.check().unwrap_err();
        assert!(err.0.contains("--default-timeout"), "{err}");
    }

    /// A hold (with its jitter) that would outlive the connection's idle timeout is refused, naming both flags.
    #[test]
    fn holds_must_end_before_the_idle_timeout() {
        let config = Config {
            max_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(75),
            ..Config::default()
        };
        let err = config.check().unwrap_err();
        assert!(
            err.0.contains("--max-timeout") && err.0.contains("--idle-timeout"),
            "{err}"
        );
        let edge = Config {
            max_timeout: Duration::from_secs(64),
            idle_timeout: Duration::from_secs(68),
            ..Config::default()
        };
        assert!(edge.check().is_err(), "64 s + 4 s of jitter reaches 68 s");
        let fits = Config {
            idle_timeout: Duration::from_secs(69),
            ..edge
        };
        assert_eq!(fits.check(), Ok(()));
    }

    /// Zero wait slots and an origin with spaces are refused, naming their flags.
    #[test]
    fn zero_waiters_and_bad_origin_are_refused() {
        let config = Config {
            max_waiters: 0,
            ..Config::default()
        };
        assert!(config.check().unwrap_err().0.contains("--max-waiters"));
        let config = Config {
            cors_origin: Some("a b".into()),
            ..Config::default()
        };
        assert!(config.check().unwrap_err().0.contains("--cors-origin"));
    }

    /// Fair-share settings out of range are refused, naming their flags; any share up to --max-waiters is accepted.
    #[test]
    fn share_settings_out_of_range_are_refused() {
        let refused = |config: Config, flag: &str| {
            let err = config.check().unwrap_err();
            assert!(err.0.contains(flag), "{err}");
        };
        refused(
            Config {
                max_waiters_per_client: Some(513),
                ..Config::default()
            },
            "--max-waiters-per-client",
        );
        refused(
            Config {
                max_waiters_per_client: Some(0),
                ..Config::default()
            },
            "--max-waiters-per-client",
        );
        for rate in [0.0, -1.0, f64::NAN, 2e6] {
            refused(
                Config {
                    publish_rate_per_second: Some(rate),
                    ..Config::default()
                },
                "--publish-rate",
            );
        }
        refused(
            Config {
                publish_burst: Some(5),
                ..Config::default()
            },
            "--publish-burst",
        );
        let fits = Config {
            max_waiters_per_client: Some(512),
            publish_rate_per_second: Some(0.5),
            ..Config::default()
        };
        assert_eq!(fits.check(), Ok(()));
        assert_eq!(fits.publish_burst(), DEFAULT_PUBLISH_BURST);
        let fast = Config {
            publish_rate_per_second: Some(100.5),
            ..Config::default()
        };
        assert_eq!(fast.publish_burst(), 101);
    }

    /// Stream settings out of range are refused, naming their flags.
    #[test]
    fn stream_settings_out_of_range_are_refused() {
        let config = Config {
            sse_heartbeat: Duration::ZERO,
            ..Config::default()
        };
        assert!(config.check().unwrap_err().0.contains("--sse-heartbeat"));
        let config = Config {
            max_stream: Some(Duration::ZERO),
            ..Config::default()
        };
        assert!(
            config
                .check()
                .unwrap_err()
                .0
                .contains("--max-stream-seconds")
        );
    }
}
