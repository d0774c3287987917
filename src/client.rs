//! A blocking client for abide that follows the long-polling rules.
//!
//! Owns `Client` (publish, one poll, one Server-Sent Events stream),
//! `Backoff` (exponential, full jitter) and `Watcher` (the poll or stream
//! loop: cursor, cursor file, retries, gaps). It is
//! what `abide publish` and `abide watch` use, and a Rust program can use it
//! too. It never runs inside the server; it runs on the caller's thread and
//! blocks in HTTP calls (ureq, one keep-alive connection reused) and backoff
//! waits (which a `Shutdown` cuts short).
//!
//! The rules: the read timeout is the poll timeout plus its jitter plus a
//! margin, so the server's `204` always comes first (and a client-side timeout
//! is just an empty poll); network errors and `5xx` are retried with
//! exponential backoff and full jitter, honouring `Retry-After`, and the
//! backoff resets after a success; other `4xx` (not `408`/`429`) stop, among
//! them a refused token (`401`, `403`). A token (`Client::with_token`,
//! `WatchOptions::token`) goes with every request as `Authorization: Bearer`.

use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;

use crate::shutdown::Shutdown;

/// Extra read time beyond the poll's own timeout and jitter.
pub const READ_MARGIN: Duration = Duration::from_secs(10);
/// Largest answer body the client reads (1000 events of 64 KiB fit).
const MAX_ANSWER_BYTES: u64 = 128 * 1024 * 1024;
/// A stream is reopened after this many `--timeout`s at the latest.
const STREAM_OPEN_TIMEOUTS: u32 = 10;
/// Longest line of a stream the client reads (an event of 16 MiB fits).
const MAX_STREAM_LINE_BYTES: u64 = 32 * 1024 * 1024;
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// What went wrong with one request.
#[derive(Debug)]
pub enum ClientError {
    /// The server answered with an error status.
    Status {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    /// No answer: connection refused or reset, DNS, timeouts while connecting.
    Network(String),
    /// An answer that is not what the API promises.
    BadAnswer(String),
    /// The request could not be made as asked (a bad URL or channel name).
    Invalid(String),
}

impl ClientError {
    /// Worth trying again: network trouble, `5xx`, `408`, `429`.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Status { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            ClientError::Network(_) => true,
            ClientError::BadAnswer(_) | ClientError::Invalid(_) => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Status {
                status, message, ..
            } => write!(f, "server answered {status}: {message}"),
            ClientError::Network(msg) => write!(f, "network error: {msg}"),
            ClientError::BadAnswer(msg) => write!(f, "unexpected answer: {msg}"),
            ClientError::Invalid(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for ClientError {}

/// The answer to one poll.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Events in id order (empty after a timeout).
    pub events: Vec<Value>,
    /// The server marked a gap (`Abide-Missed: true`).
    pub missed: bool,
}

impl Batch {
    /// The id of the last event, if any.
    pub fn last_id(&self) -> Option<u64> {
        self.events.last().and_then(|e| e["id"].as_u64())
    }
}

/// One message of a Server-Sent Events stream (`Client::stream`).
#[derive(Debug, Clone, PartialEq)]
pub enum StreamMessage {
    /// An event: the event object, as a poll answer holds it.
    Event(Value),
    /// Events after the cursor were dropped before they could be sent.
    Missed,
    /// The channel was deleted; the stream ends.
    Gone(String),
}

/// A connection to one abide server.
pub struct Client {
    agent: ureq::Agent,
    base_url: String,
    /// `Bearer TOKEN`, sent with every request when a token is set.
    authorization: Option<String>,
}

impl Client {
    /// A client for polls of at most `poll_timeout`.
    pub fn new(base_url: &str, poll_timeout: Duration) -> Client {
        let read_timeout = poll_timeout + poll_timeout / 16 + READ_MARGIN;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_send_request(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(read_timeout))
            .timeout_recv_body(Some(read_timeout))
            .build()
            .into();
        Client {
            agent,
            base_url: base_url.trim_end_matches('/').to_string(),
            authorization: None,
        }
    }

    /// The same client presenting `token` (`Authorization: Bearer TOKEN`)
    /// with every request it makes; `None` presents none.
    pub fn with_token(mut self, token: Option<&str>) -> Client {
        self.authorization = token.map(|token| format!("Bearer {token}"));
        self
    }

    /// `request` with the token, if there is one.
    fn authorized<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.authorization {
            Some(value) => request.header("Authorization", value),
            None => request,
        }
    }

    /// Publishes one JSON value; returns the stored event.
    pub fn publish(&self, channel: &str, json: &str) -> Result<Value, ClientError> {
        check_channel(channel)?;
        let url = format!("{}/channels/{channel}/events", self.base_url);
        let result = self
            .authorized(self.agent.post(&url))
            .header("Content-Type", "application/json")
            .send(json);
        let (status, _missed, body) = read_answer(result)?;
        if status != 201 {
            return Err(status_error(status, &body, None));
        }
        serde_json::from_str(&body).map_err(|e| ClientError::BadAnswer(e.to_string()))
    }

    /// The URL of `channels`' events after `cursor`, with `params`: one
    /// channel's own route, or `/events?channels=…` for several.
    fn events_url(&self, channels: &[String], cursor: u64, params: &[(&str, String)]) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("last_event_id", &cursor.to_string());
        for (name, value) in params {
            query.append_pair(name, value);
        }
        match channels {
            [one] => format!("{}/channels/{one}/events?{}", self.base_url, query.finish()),
            many => {
                query.append_pair("channels", &many.join(","));
                format!("{}/events?{}", self.base_url, query.finish())
            }
        }
    }

    /// One long poll. A client-side read timeout counts as an empty answer.
    pub fn poll(
        &self,
        channels: &[String],
        cursor: u64,
        timeout: Duration,
        limit: usize,
    ) -> Result<Batch, ClientError> {
        let url = self.events_url(
            channels,
            cursor,
            &[
                ("timeout", timeout.as_secs().to_string()),
                ("limit", limit.to_string()),
            ],
        );
        let result = self.authorized(self.agent.get(&url)).call();
        if let Err(ureq::Error::Timeout(_)) = result {
            return Ok(Batch {
                events: Vec::new(),
                missed: false,
            });
        }
        let (status, missed, body) = read_answer(result)?;
        match status {
            200 => {
                let events: Vec<Value> = serde_json::from_str(&body)
                    .map_err(|e| ClientError::BadAnswer(format!("poll answer: {e}")))?;
                Ok(Batch { events, missed })
            }
            204 => Ok(Batch {
                events: Vec::new(),
                missed,
            }),
            _ => Err(status_error(status, &body, None)),
        }
    }

    /// Opens a Server-Sent Events stream of `channels` after `cursor` and
    /// hands each message to `each`, until the server ends the stream, `each`
    /// fails, or `max_open` passes (a connection that went silent is noticed
    /// then; the caller reopens the stream from its cursor).
    pub fn stream(
        &self,
        channels: &[String],
        cursor: u64,
        max_open: Duration,
        each: &mut dyn FnMut(StreamMessage) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        let url = self.events_url(channels, cursor, &[]);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_send_request(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(30)))
            .timeout_recv_body(Some(max_open))
            .build()
            .into();
        let result = self
            .authorized(agent.get(&url))
            .header("Accept", "text/event-stream")
            .call();
        let response = match result {
            Ok(response) if response.status() == 200 => response,
            other => {
                let (status, _, body) = read_answer(other)?;
                return Err(status_error(status, &body, None));
            }
        };
        let event_stream = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !event_stream {
            return Err(ClientError::BadAnswer(
                "the server answered a stream request with something else".into(),
            ));
        }
        let mut reader = BufReader::new(response.into_body().into_reader());
        let mut fields = SseFields::default();
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = (&mut reader)
                .take(MAX_STREAM_LINE_BYTES)
                .read_until(b'\n', &mut line);
            match read {
                Ok(0) => return Ok(()),
                Ok(_) if !line.ends_with(b"\n") => {
                    return Err(ClientError::BadAnswer("a stream line is too long".into()));
                }
                Ok(_) => {}
                // The server went away, or `max_open` passed: reopen.
                Err(_) => return Ok(()),
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\n', '\r']);
            if text.is_empty() {
                if let Some(message) = fields.take()? {
                    each(message)?;
                }
                continue;
            }
            if text.starts_with(':') {
                continue; // a heartbeat
            }
            let (field, value) = text.split_once(':').unwrap_or((text, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => fields.event = Some(value.to_string()),
                "data" => fields.data = Some(value.to_string()),
                _ => {} // id (the data carries it), retry
            }
        }
    }
}

/// The fields of the stream message being read.
#[derive(Default)]
struct SseFields {
    event: Option<String>,
    data: Option<String>,
}

impl SseFields {
    /// The message the fields make (at a blank line), and a fresh start.
    fn take(&mut self) -> Result<Option<StreamMessage>, ClientError> {
        let SseFields { event, data } = std::mem::take(self);
        let parse = |data: Option<String>| -> Result<Value, ClientError> {
            serde_json::from_str(data.as_deref().unwrap_or(""))
                .map_err(|e| ClientError::BadAnswer(format!("stream data: {e}")))
        };
        match event.as_deref() {
            None | Some("message") if data.is_none() => Ok(None),
            None | Some("message") => Ok(Some(StreamMessage::Event(parse(data)?))),
            Some("missed") => Ok(Some(StreamMessage::Missed)),
            Some("gone") => {
                let channel = parse(data)?["channel"].as_str().unwrap_or("").to_string();
                Ok(Some(StreamMessage::Gone(channel)))
            }
            Some(_) => Ok(None),
        }
    }
}

/// Refuses a channel name the server would refuse, before asking it.
fn check_channel(name: &str) -> Result<(), ClientError> {
    if crate::api::request::valid_channel_name(name) {
        Ok(())
    } else {
        Err(ClientError::Invalid(format!(
            "invalid channel name {name:?}: use 1-64 ASCII letters, digits, '-', '_' or '.'"
        )))
    }
}

/// Status, missed flag and body of an answer, or the error that replaced it.
fn read_answer(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, bool, String), ClientError> {
    let mut response = result.map_err(|e| match e {
        ureq::Error::BadUri(_) | ureq::Error::Http(_) => {
            ClientError::Invalid(format!("cannot make the request: {e}"))
        }
        e => ClientError::Network(e.to_string()),
    })?;
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let missed = header("abide-missed").is_some_and(|v| v == "true");
    let retry_after = header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER_BYTES)
        .read_to_string()
        .map_err(|e| ClientError::Network(format!("reading the answer: {e}")))?;
    if status >= 400 {
        return Err(status_error(status, &body, retry_after));
    }
    Ok((status, missed, body))
}

fn status_error(status: u16, body: &str, retry_after: Option<Duration>) -> ClientError {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(200).collect());
    ClientError::Status {
        status,
        message,
        retry_after,
    }
}

/// Exponential backoff with full jitter: the n-th delay is uniform in
/// `[0, min(max, initial * 2^n)]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            failures: 0,
        }
    }

    /// The bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(30)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next delay, and one more failure counted.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        Duration::from_nanos(fastrand::u64(0..=ceiling.as_nanos() as u64))
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// What `Watcher::run` is told to do.
#[derive(Clone)]
pub struct WatchOptions {
    pub base_url: String,
    pub channels: Vec<String>,
    /// Start after this id; wins over the cursor file.
    pub from: Option<u64>,
    /// Read at start, written (atomically) after each delivered batch.
    pub cursor_file: Option<PathBuf>,
    pub timeout: Duration,
    pub limit: usize,
    /// Read a Server-Sent Events stream instead of polling.
    pub stream: bool,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Presented with every poll and stream (`Authorization: Bearer`).
    pub token: Option<String>,
}

/// Every field but the token's text (it is a password).
impl fmt::Debug for WatchOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchOptions")
            .field("base_url", &self.base_url)
            .field("channels", &self.channels)
            .field("from", &self.from)
            .field("cursor_file", &self.cursor_file)
            .field("timeout", &self.timeout)
            .field("limit", &self.limit)
            .field("stream", &self.stream)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("token", &self.token.as_ref().map(|_| "REDACTED"))
            .finish()
    }
}

impl WatchOptions {
    /// A fresh client for these options (server, timeout, token).
    fn client(&self) -> Client {
        Client::new(&self.base_url, self.timeout).with_token(self.token.as_deref())
    }
}

/// Things the loop reports besides events.
#[derive(Debug)]
pub enum Note<'a> {
    /// A poll failed and will be retried after `delay`.
    Retrying {
        error: &'a ClientError,
        delay: Duration,
    },
    /// The server said events after `cursor` were dropped before delivery.
    Missed { cursor: u64 },
}

/// How a watch ended.
#[derive(Debug)]
pub enum WatchEnd {
    /// `Shutdown` was triggered.
    Stopped,
    /// An error not worth retrying (a `4xx` such as a refused token, a bad
    /// answer, a cursor file error).
    Failed(ClientError),
}

/// The poll loop: keeps the cursor, writes the cursor file, retries.
pub struct Watcher {
    options: WatchOptions,
    client: Client,
    cursor: u64,
    backoff: Backoff,
    /// Held while a batch is handed out and the cursor saved; a signal handler
    /// takes it before exiting so that no batch is half delivered.
    delivery: Arc<Mutex<()>>,
}

impl Watcher {
    /// Reads the cursor file (when there is one and `from` is not given).
    pub fn new(options: WatchOptions) -> Result<Watcher, String> {
        for channel in &options.channels {
            check_channel(channel).map_err(|e| e.to_string())?;
        }
        let cursor = match (options.from, &options.cursor_file) {
            (Some(from), _) => from,
            (None, Some(path)) => read_cursor(path)?,
            (None, None) => 0,
        };
        Ok(Watcher {
            client: options.client(),
            backoff: Backoff::new(options.backoff_initial, options.backoff_max),
            options,
            cursor,
            delivery: Arc::new(Mutex::new(())),
        })
    }

    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The lock held while a batch is delivered and its cursor saved.
    pub fn delivery_lock(&self) -> Arc<Mutex<()>> {
        self.delivery.clone()
    }

    /// One stream, read until it ends: each event is delivered alone and
    /// the cursor saved after it; a gap is noted; a deleted channel is an
    /// error, as a `410` is for a poll.
    fn stream_once(
        &mut self,
        deliver: &mut dyn FnMut(&Batch) -> std::io::Result<()>,
        note: &mut dyn FnMut(Note<'_>),
    ) -> Result<Batch, ClientError> {
        let Watcher {
            options,
            client,
            cursor,
            delivery,
            ..
        } = self;
        // A silent connection (no heartbeat) is noticed by this bound.
        let max_open = options.timeout * STREAM_OPEN_TIMEOUTS;
        let from = *cursor;
        let mut each = |message: StreamMessage| -> Result<(), ClientError> {
            match message {
                StreamMessage::Event(event) => {
                    let id = event["id"].as_u64().ok_or_else(|| {
                        ClientError::BadAnswer("a stream event without an id".into())
                    })?;
                    let _delivering = delivery.lock();
                    let batch = Batch {
                        events: vec![event],
                        missed: false,
                    };
                    deliver(&batch).map_err(|e| ClientError::BadAnswer(format!("output: {e}")))?;
                    *cursor = id;
                    if let Some(path) = &options.cursor_file {
                        write_cursor(path, id).map_err(|e| {
                            ClientError::BadAnswer(format!("cursor file {}: {e}", path.display()))
                        })?;
                    }
                    Ok(())
                }
                StreamMessage::Missed => {
                    note(Note::Missed { cursor: *cursor });
                    Ok(())
                }
                StreamMessage::Gone(channel) => Err(ClientError::Status {
                    status: 410,
                    message: format!("channel {channel} was deleted"),
                    retry_after: None,
                }),
            }
        };
        client.stream(&options.channels, from, max_open, &mut each)?;
        Ok(Batch {
            events: Vec::new(),
            missed: false,
        })
    }

    /// One poll, no retry: the batch is delivered to `deliver` and the cursor
    /// saved before it returns.
    pub fn poll_once(
        &mut self,
        deliver: &mut dyn FnMut(&Batch) -> std::io::Result<()>,
        note: &mut dyn FnMut(Note<'_>),
    ) -> Result<Batch, ClientError> {
        let o = &self.options;
        let batch = self
            .client
            .poll(&o.channels, self.cursor, o.timeout, o.limit)?;
        if batch.missed {
            note(Note::Missed {
                cursor: self.cursor,
            });
        }
        let _delivering = self.delivery.lock();
        if !batch.events.is_empty() {
            deliver(&batch).map_err(|e| ClientError::BadAnswer(format!("output: {e}")))?;
        }
        let next = match batch.last_id() {
            Some(id) => id,
            // Nothing held past a cursor the server could not have issued: start over.
            None if batch.missed => 0,
            None => self.cursor,
        };
        if next != self.cursor {
            self.cursor = next;
            if let Some(path) = &self.options.cursor_file {
                write_cursor(path, next).map_err(|e| {
                    ClientError::BadAnswer(format!("cursor file {}: {e}", path.display()))
                })?;
            }
        }
        Ok(batch)
    }

    /// Polls until `stop` is triggered or an error not worth retrying.
    pub fn run(
        &mut self,
        stop: &Shutdown,
        deliver: &mut dyn FnMut(&Batch) -> std::io::Result<()>,
        note: &mut dyn FnMut(Note<'_>),
    ) -> WatchEnd {
        while !stop.is_triggered() {
            let outcome = if self.options.stream {
                self.stream_once(deliver, note)
            } else {
                self.poll_once(deliver, note)
            };
            match outcome {
                Ok(_) => self.backoff.reset(),
                Err(error) if error.is_retryable() => {
                    // Next time, a fresh connection: the failed one may lead
                    // to a server that is going away.
                    self.client = self.options.client();
                    let jittered = self.backoff.next_delay();
                    let delay = error.retry_after().unwrap_or(jittered);
                    note(Note::Retrying {
                        error: &error,
                        delay,
                    });
                    if stop.wait_timeout(delay) {
                        break;
                    }
                }
                Err(error) => return WatchEnd::Failed(error),
            }
        }
        WatchEnd::Stopped
    }
}

/// The cursor stored in `path`, or 0 when the file does not exist yet.
pub fn read_cursor(path: &Path) -> Result<u64, String> {
    match fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map_err(|_| {
            format!(
                "cursor file {} does not hold an event id: {:?}",
                path.display(),
                text.chars().take(40).collect::<String>()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(format!("cursor file {}: {e}", path.display())),
    }
}

/// Writes `cursor` to `path` atomically: a synced temporary file, then rename.
pub fn write_cursor(path: &Path, cursor: u64) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = fs::File::create(&tmp)?;
    writeln!(file, "{cursor}")?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backoff ceilings double from the initial delay up to the cap, and every delay stays within its ceiling.
    #[test]
    fn backoff_grows_is_capped_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            let ceiling = backoff.ceiling();
            ceilings.push(ceiling.as_millis());
            assert!(backoff.next_delay() <= ceiling);
        }
        assert_eq!(
            ceilings,
            [
                500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000
            ]
        );
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(500));
    }

    /// Which failures are retried: network, 5xx, 408 and 429; not other 4xx.
    #[test]
    fn only_transient_failures_are_retried() {
        let status = |status| ClientError::Status {
            status,
            message: String::new(),
            retry_after: None,
        };
        assert!(status(503).is_retryable());
        assert!(status(500).is_retryable());
        assert!(status(408).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(400).is_retryable());
        assert!(!status(401).is_retryable());
        assert!(!status(403).is_retryable());
        assert!(!status(404).is_retryable());
        assert!(!status(410).is_retryable());
        assert!(ClientError::Network("refused".into()).is_retryable());
    }

    /// A token set in WatchOptions is not shown by Debug (it is a password).
    #[test]
    fn watch_options_debug_hides_the_token() {
        let options = WatchOptions {
            base_url: "http://127.0.0.1:8080".into(),
            channels: vec!["chat".into()],
            from: None,
            cursor_file: None,
            timeout: Duration::from_secs(30),
            limit: 100,
            stream: false,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            token: Some("abide_secret-token".into()),
        };
        let shown = format!("{options:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("REDACTED"), "{shown}");
    }

    /// The cursor file round-trips, starts at 0 when absent, and refuses garbage.
    #[test]
    fn cursor_file_round_trips() {
        let dir = std::env::temp_dir().join(format!("abide-cursor-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cursor");
        let _ = fs::remove_file(&path);
        assert_eq!(read_cursor(&path), Ok(0));
        write_cursor(&path, 1795514610318837).unwrap();
        assert_eq!(read_cursor(&path), Ok(1795514610318837));
        fs::write(&path, "nope").unwrap();
        assert!(
            read_cursor(&path)
                .unwrap_err()
                .contains("does not hold an event id")
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
