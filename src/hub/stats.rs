//! The server's figures, as JSON (`/stats`) and Prometheus text (`/metrics`).
//!
//! Owns `Stats` and its two renderings, plus a reading of the process's own
//! thread count and resident memory from `/proc/self/status` (Linux; absent
//! elsewhere). Called on the dispatch thread, which builds the answer to
//! `/stats` and `/metrics` (a writer thread then writes it).

use std::fmt::Write as _;

use serde::Serialize;

/// Why a request was refused by the access rules or a client's share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `401`: no token where one is needed, or an unknown one.
    Unauthenticated,
    /// `403`: a known token without the right.
    Forbidden,
    /// `429`: the client holds `--max-waiters-per-client` slots.
    ClientWaiters,
    /// `429`: the client publishes faster than `--publish-rate`.
    PublishRate,
}

impl Refusal {
    pub const ALL: [Refusal; 4] = [
        Refusal::Unauthenticated,
        Refusal::Forbidden,
        Refusal::ClientWaiters,
        Refusal::PublishRate,
    ];

    /// Its name in `/stats` and in the `reason` label of `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::Forbidden => "forbidden",
            Refusal::ClientWaiters => "client_waiters",
            Refusal::PublishRate => "publish_rate",
        }
    }
}

/// Requests refused since start, by `Refusal`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RefusedCounts {
    pub unauthenticated: u64,
    pub forbidden: u64,
    pub client_waiters: u64,
    pub publish_rate: u64,
}

impl RefusedCounts {
    pub fn from_fn(count: impl Fn(Refusal) -> u64) -> RefusedCounts {
        RefusedCounts {
            unauthenticated: count(Refusal::Unauthenticated),
            forbidden: count(Refusal::Forbidden),
            client_waiters: count(Refusal::ClientWaiters),
            publish_rate: count(Refusal::PublishRate),
        }
    }

    fn get(&self, refusal: Refusal) -> u64 {
        match refusal {
            Refusal::Unauthenticated => self.unauthenticated,
            Refusal::Forbidden => self.forbidden,
            Refusal::ClientWaiters => self.client_waiters,
            Refusal::PublishRate => self.publish_rate,
        }
    }
}

/// A snapshot of the server's state and counters.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Polls and streams holding a wait slot now.
    pub waiters: usize,
    /// Of those, open Server-Sent Event streams.
    pub streams: usize,
    pub max_waiters: usize,
    /// Most polls that held a slot at once since start.
    pub peak_waiters: usize,
    /// Channels that hold events or have waiters.
    pub channels: usize,
    pub events_stored: usize,
    pub stored_bytes: usize,
    pub events_published: u64,
    /// Events written in poll answers (counted per answer, per event).
    pub events_delivered: u64,
    /// Events dropped by overflow, age or the memory limit before deletion.
    pub events_dropped: u64,
    pub polls_timed_out: u64,
    /// Polls refused with `503` because every wait slot was taken.
    pub polls_rejected: u64,
    /// Failed `accept` calls (each restarts the listener).
    pub accept_errors: u64,
    /// Connections abide closed after refusing a request on them (untrusted
    /// framing, an oversized or stalled body).
    pub connections_closed: u64,
    /// Connections abide ended without answering: past the pipelining bound
    /// (`--max-pipelined-requests`, `--max-pipelined-bytes`), or a request
    /// found no thread and no room in the backlog.
    pub connections_cut: u64,
    /// Answers written by the dispatch thread itself, without a hand-off to
    /// a writer thread (the socket could take them at once).
    pub answers_inline: u64,
    /// Requests refused (`503`, or their connection cut) because no thread
    /// could take them and the backlog (`--max-backlog`) was full.
    pub requests_overloaded: u64,
    /// Request heads refused as malformed, by tiny_http or by abide.
    pub requests_malformed: u64,
    /// Requests refused by the access rules (`401`, `403`) or a client's
    /// share (`429`), by reason.
    pub requests_refused: RefusedCounts,
    /// Where events are kept: `memory`, `sqlite` (`--data-dir`) or `redis`
    /// (`--redis`).
    pub store: &'static str,
    /// Transactions the store committed (each carries a batch of events).
    pub store_commits: u64,
    /// Commits that failed (disk full, I/O error); their publishes were
    /// refused and nothing of them was stored.
    pub store_errors: u64,
    /// With Redis: whether the node reaches it (subscription and writes);
    /// absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_connected: Option<bool>,
    /// With Redis: times the subscription connected again after losing it.
    pub store_reconnects: u64,
    pub uptime_seconds: u64,
    /// Threads of the process (Linux only).
    pub threads: Option<u64>,
    /// Resident memory of the process in bytes (Linux only).
    pub resident_bytes: Option<u64>,
    /// Bytes the process caused to be written to storage since it started
    /// (`write_bytes` of `/proc/self/io`; Linux only): what an SD card wears by.
    pub disk_written_bytes: Option<u64>,
}

impl Stats {
    /// Fills `threads` and `resident_bytes` from `/proc/self/status`.
    pub fn with_process_figures(mut self) -> Stats {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            self.threads = status_field(&status, "Threads:");
            self.resident_bytes = status_field(&status, "VmRSS:").map(|kib| kib * 1024);
        }
        if let Ok(io) = std::fs::read_to_string("/proc/self/io") {
            self.disk_written_bytes = status_field(&io, "write_bytes:");
        }
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("stats serialize")
    }

    /// The Prometheus text exposition format, version 0.0.4.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, value: Option<u64>| {
            if let Some(value) = value {
                let _ = writeln!(out, "# HELP abide_{name} {help}");
                let _ = writeln!(out, "# TYPE abide_{name} {kind}");
                let _ = writeln!(out, "abide_{name} {value}");
            }
        };
        let n = |v: usize| Some(v as u64);
        metric(
            "waiters",
            "gauge",
            "Polls and streams holding a wait slot.",
            n(self.waiters),
        );
        metric(
            "streams",
            "gauge",
            "Open Server-Sent Event streams (each holds a wait slot).",
            n(self.streams),
        );
        metric(
            "max_waiters",
            "gauge",
            "Wait slots (--max-waiters).",
            n(self.max_waiters),
        );
        metric(
            "peak_waiters",
            "gauge",
            "Most polls waiting at once since start.",
            n(self.peak_waiters),
        );
        metric(
            "channels",
            "gauge",
            "Channels holding events or waiters.",
            n(self.channels),
        );
        metric(
            "events_stored",
            "gauge",
            "Events held in channel buffers.",
            n(self.events_stored),
        );
        metric(
            "stored_bytes",
            "gauge",
            "Bytes counted against --max-stored-bytes.",
            n(self.stored_bytes),
        );
        metric(
            "events_published_total",
            "counter",
            "Events published.",
            Some(self.events_published),
        );
        metric(
            "events_delivered_total",
            "counter",
            "Events written in poll answers.",
            Some(self.events_delivered),
        );
        metric(
            "events_dropped_total",
            "counter",
            "Events dropped by overflow, age or memory limit.",
            Some(self.events_dropped),
        );
        metric(
            "polls_timed_out_total",
            "counter",
            "Polls answered 204 after their timeout.",
            Some(self.polls_timed_out),
        );
        metric(
            "polls_rejected_total",
            "counter",
            "Polls refused because every wait slot was taken.",
            Some(self.polls_rejected),
        );
        metric(
            "accept_errors_total",
            "counter",
            "Failed accept calls.",
            Some(self.accept_errors),
        );
        metric(
            "connections_closed_total",
            "counter",
            "Connections closed after a refused request.",
            Some(self.connections_closed),
        );
        metric(
            "connections_cut_total",
            "counter",
            "Connections ended without an answer (pipelining bound, overload).",
            Some(self.connections_cut),
        );
        metric(
            "answers_inline_total",
            "counter",
            "Answers the dispatch thread wrote itself, without a hand-off.",
            Some(self.answers_inline),
        );
        metric(
            "requests_overloaded_total",
            "counter",
            "Requests refused because no thread or backlog room was left.",
            Some(self.requests_overloaded),
        );
        metric(
            "requests_malformed_total",
            "counter",
            "Request heads refused as malformed.",
            Some(self.requests_malformed),
        );
        if self.store != "memory" {
            metric(
                "store_commits_total",
                "counter",
                "Transactions the store committed.",
                Some(self.store_commits),
            );
            metric(
                "store_errors_total",
                "counter",
                "Store commits that failed (their publishes were refused).",
                Some(self.store_errors),
            );
        }
        if let Some(connected) = self.store_connected {
            metric(
                "redis_connected",
                "gauge",
                "1 while the node reaches Redis (subscription and writes), else 0.",
                Some(u64::from(connected)),
            );
            metric(
                "redis_reconnects_total",
                "counter",
                "Times the subscription connected again after losing Redis.",
                Some(self.store_reconnects),
            );
        }
        metric(
            "disk_written_bytes_total",
            "counter",
            "Bytes the process caused to be written to storage.",
            self.disk_written_bytes,
        );
        metric(
            "uptime_seconds",
            "gauge",
            "Seconds since start.",
            Some(self.uptime_seconds),
        );
        metric("threads", "gauge", "Threads of the process.", self.threads);
        metric(
            "resident_bytes",
            "gauge",
            "Resident memory of the process.",
            self.resident_bytes,
        );
        let _ = writeln!(
            out,
            "# HELP abide_requests_refused_total Requests refused by the access rules or a client's share.\n\
             # TYPE abide_requests_refused_total counter"
        );
        for refusal in Refusal::ALL {
            let _ = writeln!(
                out,
                "abide_requests_refused_total{{reason=\"{}\"}} {}",
                refusal.name(),
                self.requests_refused.get(refusal)
            );
        }
        out
    }
}

/// The number after `field` in a `/proc/self/status` text.
fn status_field(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Thread count and resident memory are read from /proc/self/status text.
    #[test]
    fn reads_proc_status_fields() {
        let status = "Name:\tabide\nVmRSS:\t    2048 kB\nThreads:\t7\n";
        assert_eq!(status_field(status, "Threads:"), Some(7));
        assert_eq!(status_field(status, "VmRSS:"), Some(2048));
        assert_eq!(status_field(status, "VmSwap:"), None);
    }
}
