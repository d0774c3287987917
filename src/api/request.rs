//! What a request asks for: routing and parameter checks.
//!
//! Turns a method, a request target and the one header that matters
//! (`Last-Event-ID`) into an `Action`, or an `Error` naming what was wrong.
//! Pure: it never sees a socket or tiny_http; the dispatch thread calls it.

use std::time::Duration;

use crate::api::auth::Client;
use crate::error::Error;

/// Most channels one `/events` poll may name.
pub const MAX_POLL_CHANNELS: usize = 32;
/// Largest `limit` a poll may ask for.
pub const MAX_POLL_LIMIT: usize = 1000;
/// `limit` when the poll names none.
pub const DEFAULT_POLL_LIMIT: usize = 100;
/// Longest channel name.
pub const MAX_CHANNEL_NAME_BYTES: usize = 64;

/// A long poll over one or more channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollSpec {
    /// Distinct, valid channel names, in the order given.
    pub channels: Vec<String>,
    /// Deliver events with ids above this.
    pub cursor: u64,
    /// How long to hold, already clamped to `--max-timeout` (zero: answer now).
    pub timeout: Duration,
    /// At most this many events in the answer.
    pub limit: usize,
    /// Answer with a stream of Server-Sent Events instead of one answer
    /// (the request accepts `text/event-stream`; see `wants_event_stream`).
    pub stream: bool,
    /// Who asks, for `--max-waiters-per-client` (set by the edge once the
    /// request is admitted; `None`: not counted).
    pub client: Option<Client>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Publish {
        channel: String,
    },
    Poll(PollSpec),
    ChannelInfo {
        channel: String,
    },
    DeleteChannel {
        channel: String,
    },
    Healthz,
    Stats,
    Metrics,
    /// The demo page at `/`.
    Demo,
    /// `OPTIONS` on a known route: `allow` lists its methods.
    Options {
        allow: &'static str,
    },
}

/// The settings routing depends on (from `Config`).
#[derive(Debug, Clone, Copy)]
pub struct RouteSettings {
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    /// Whether `/` (the demo page) is a route at all.
    pub demo: bool,
}

const ALLOW_CHANNEL_EVENTS: &str = "GET, POST, OPTIONS";
const ALLOW_CHANNEL: &str = "GET, HEAD, DELETE, OPTIONS";
const ALLOW_READ_ONLY: &str = "GET, HEAD, OPTIONS";
const ALLOW_POLL: &str = "GET, OPTIONS";

/// Deepest nesting of arrays and objects accepted in an event body. serde_json
/// stops at 128 by itself, but parsing, printing and dropping a value recurse,
/// and this keeps that recursion well inside a writer thread's stack.
pub const MAX_JSON_DEPTH: usize = 64;

/// Refuses a body whose arrays and objects nest deeper than `max_depth`,
/// with one pass over its bytes (strings and their escapes skipped).
pub fn check_json_depth(body: &[u8], max_depth: usize) -> Result<(), Error> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(Error::BadRequest(format!(
                        "body JSON nests arrays and objects deeper than {max_depth} levels"
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// 1–64 ASCII letters, digits, `-`, `_` or `.`.
pub fn valid_channel_name(name: &str) -> bool {
    (1..=MAX_CHANNEL_NAME_BYTES).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn channel_name(name: &str) -> Result<String, Error> {
    if valid_channel_name(name) {
        Ok(name.to_owned())
    } else {
        let shown: String = name.chars().take(80).collect();
        Err(Error::BadRequest(format!(
            "invalid channel name {shown:?}: use 1-64 ASCII letters, digits, '-', '_' or '.'"
        )))
    }
}

/// Routes a request. `target` is the request target as sent (`/path?query`).
pub fn route(
    method: &str,
    target: &str,
    last_event_id_header: Option<&str>,
    limits: RouteSettings,
) -> Result<Action, Error> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segments: Vec<&str> = path.split('/').collect();
    let (allow, action) = match segments.as_slice() {
        ["", "channels", name, "events"] => (
            ALLOW_CHANNEL_EVENTS,
            match method {
                "POST" => Some(Action::Publish {
                    channel: channel_name(name)?,
                }),
                "GET" => {
                    let channels = vec![channel_name(name)?];
                    Some(Action::Poll(poll_spec(
                        channels,
                        &Query::parse(query)?,
                        last_event_id_header,
                        limits,
                    )?))
                }
                _ => None,
            },
        ),
        ["", "events"] => (
            ALLOW_POLL,
            match method {
                "GET" => {
                    let query = Query::parse(query)?;
                    Some(Action::Poll(poll_spec(
                        channel_list(&query)?,
                        &query,
                        last_event_id_header,
                        limits,
                    )?))
                }
                _ => None,
            },
        ),
        ["", "channels", name] => (
            ALLOW_CHANNEL,
            match method {
                "GET" | "HEAD" => Some(Action::ChannelInfo {
                    channel: channel_name(name)?,
                }),
                "DELETE" => Some(Action::DeleteChannel {
                    channel: channel_name(name)?,
                }),
                _ => None,
            },
        ),
        ["", ""] if limits.demo => (ALLOW_READ_ONLY, get_or_head(method, Action::Demo)),
        ["", "healthz"] => (ALLOW_READ_ONLY, get_or_head(method, Action::Healthz)),
        ["", "stats"] => (ALLOW_READ_ONLY, get_or_head(method, Action::Stats)),
        ["", "metrics"] => (ALLOW_READ_ONLY, get_or_head(method, Action::Metrics)),
        _ => {
            let shown: String = path.chars().take(80).collect();
            return Err(Error::NotFound(format!("no route for path {shown:?}")));
        }
    };
    match action {
        Some(action) => Ok(action),
        None if method == "OPTIONS" => Ok(Action::Options { allow }),
        None => Err(Error::MethodNotAllowed { allow }),
    }
}

fn get_or_head(method: &str, action: Action) -> Option<Action> {
    matches!(method, "GET" | "HEAD").then_some(action)
}

/// The query parameters routes read. Others are ignored without being kept,
/// so that reading a query stays linear in its length.
const KNOWN_PARAMS: [&str; 4] = ["channels", "last_event_id", "timeout", "limit"];

/// The known parameters of a query, each given at most once.
#[derive(Default)]
struct Query {
    values: [Option<String>; KNOWN_PARAMS.len()],
}

impl Query {
    fn parse(query: &str) -> Result<Query, Error> {
        let mut parsed = Query::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let Some(i) = KNOWN_PARAMS.iter().position(|k| *k == key) else {
                continue;
            };
            if parsed.values[i].is_some() {
                return Err(Error::BadRequest(format!(
                    "parameter {key} given more than once"
                )));
            }
            parsed.values[i] = Some(value.into_owned());
        }
        Ok(parsed)
    }

    fn get(&self, name: &str) -> Option<&str> {
        let i = KNOWN_PARAMS.iter().position(|k| *k == name)?;
        self.values[i].as_deref()
    }
}

/// The distinct channels of `?channels=a,b`, refusing the 33rd as soon as it
/// is read (so a long list costs no more than its first 33 names).
fn channel_list(query: &Query) -> Result<Vec<String>, Error> {
    let list = query.get("channels").ok_or_else(|| {
        Error::BadRequest("parameter channels is required, e.g. ?channels=a,b".into())
    })?;
    let mut channels: Vec<String> = Vec::new();
    for name in list.split(',') {
        let name = channel_name(name)?;
        if channels.contains(&name) {
            continue;
        }
        if channels.len() == MAX_POLL_CHANNELS {
            return Err(Error::BadRequest(format!(
                "parameter channels names more than {MAX_POLL_CHANNELS} channels; at most {MAX_POLL_CHANNELS} are allowed"
            )));
        }
        channels.push(name);
    }
    Ok(channels)
}

fn poll_spec(
    channels: Vec<String>,
    query: &Query,
    last_event_id_header: Option<&str>,
    limits: RouteSettings,
) -> Result<PollSpec, Error> {
    let cursor = match (query.get("last_event_id"), last_event_id_header) {
        (Some(value), _) => parse_u64("parameter last_event_id", value)?,
        (None, Some(value)) => parse_u64("header Last-Event-ID", value.trim())?,
        (None, None) => 0,
    };
    let timeout = match query.get("timeout") {
        Some(value) => {
            Duration::from_secs(parse_u64("parameter timeout", value)?).min(limits.max_timeout)
        }
        None => limits.default_timeout,
    };
    let limit = match query.get("limit") {
        Some(value) => {
            let limit = parse_u64("parameter limit", value)?;
            if !(1..=MAX_POLL_LIMIT as u64).contains(&limit) {
                return Err(Error::BadRequest(format!(
                    "parameter limit must be between 1 and {MAX_POLL_LIMIT}, got {limit}"
                )));
            }
            limit as usize
        }
        None => DEFAULT_POLL_LIMIT,
    };
    Ok(PollSpec {
        channels,
        cursor,
        timeout,
        limit,
        stream: false,
        client: None,
    })
}

/// Whether an `Accept` header asks for Server-Sent Events: one of its media
/// ranges is `text/event-stream` (any case, parameters ignored), not refused
/// with `q=0`. `*/*` alone keeps the long poll, which every client reads.
pub fn wants_event_stream(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| {
        accept.split(',').any(|range| {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .or_else(|| p.strip_prefix("Q="))
                    .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q == 0.0))
            });
            media.eq_ignore_ascii_case("text/event-stream") && !refused
        })
    })
}

fn parse_u64(what: &str, value: &str) -> Result<u64, Error> {
    let digits_only = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    match value.parse::<u64>() {
        Ok(n) if digits_only => Ok(n),
        _ => {
            let shown: String = value.chars().take(40).collect();
            Err(Error::BadRequest(format!(
                "{what} must be a non-negative integer, got {shown:?}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RouteSettings = RouteSettings {
        default_timeout: Duration::from_secs(30),
        max_timeout: Duration::from_secs(120),
        demo: true,
    };

    fn poll(target: &str, header: Option<&str>) -> Result<PollSpec, Error> {
        match route("GET", target, header, LIMITS)? {
            Action::Poll(spec) => Ok(spec),
            other => panic!("not a poll: {other:?}"),
        }
    }

    /// Channel names are 1-64 ASCII letters, digits, dash, underscore or dot, nothing else.
    #[test]
    fn channel_names_follow_the_contract() {
        assert!(valid_channel_name("a"));
        assert!(valid_channel_name("Sensor_1.temp-c"));
        assert!(valid_channel_name(&"x".repeat(64)));
        assert!(!valid_channel_name(""));
        assert!(!valid_channel_name(&"x".repeat(65)));
        assert!(!valid_channel_name("a b"));
        assert!(!valid_channel_name("a/b"));
        assert!(!valid_channel_name("é"));
        assert!(!valid_channel_name("a%20b"));
    }

    /// Poll parameters default as documented and a timeout above the maximum is clamped.
    #[test]
    fn poll_defaults_and_clamping() {
        let spec = poll("/channels/a/events", None).unwrap();
        assert_eq!(spec.channels, ["a"]);
        assert_eq!(spec.cursor, 0);
        assert_eq!(spec.timeout, Duration::from_secs(30));
        assert_eq!(spec.limit, DEFAULT_POLL_LIMIT);
        let spec = poll(
            "/channels/a/events?timeout=999&limit=1000&last_event_id=5",
            None,
        )
        .unwrap();
        assert_eq!(spec.timeout, Duration::from_secs(120));
        assert_eq!(spec.limit, 1000);
        assert_eq!(spec.cursor, 5);
        assert_eq!(
            poll("/channels/a/events?timeout=0", None).unwrap().timeout,
            Duration::ZERO
        );
    }

    /// The cursor comes from last_event_id, then Last-Event-ID, then 0.
    #[test]
    fn cursor_comes_from_the_parameter_then_the_header() {
        assert_eq!(poll("/channels/a/events", Some("42")).unwrap().cursor, 42);
        assert_eq!(
            poll("/channels/a/events?last_event_id=7", Some("42"))
                .unwrap()
                .cursor,
            7
        );
        let err = poll("/channels/a/events", Some("x")).unwrap_err();
        assert!(err.to_string().contains("Last-Event-ID"), "{err}");
    }

    /// Every malformed parameter is a 400 whose message names it.
    #[test]
    fn bad_parameters_name_themselves() {
        for (target, word) in [
            ("/channels/a/events?last_event_id=-1", "last_event_id"),
            ("/channels/a/events?last_event_id=%2B1", "last_event_id"),
            (
                "/channels/a/events?last_event_id=99999999999999999999999",
                "last_event_id",
            ),
            ("/channels/a/events?timeout=1.5", "timeout"),
            ("/channels/a/events?timeout=", "timeout"),
            ("/channels/a/events?limit=0", "limit"),
            ("/channels/a/events?limit=1001", "limit"),
            ("/channels/a/events?limit=1&limit=2", "limit"),
            ("/events", "channels"),
            ("/events?channels=a,,b", "channel name"),
            ("/channels/a%20b/events", "channel name"),
        ] {
            let err = poll(target, None).unwrap_err();
            assert_eq!(err.status(), 400, "{target}");
            assert!(err.to_string().contains(word), "{target}: {err}");
        }
    }

    /// Nesting up to the limit passes, one level more is a 400, and brackets inside strings do not count.
    #[test]
    fn json_nesting_is_limited() {
        let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert!(check_json_depth(nested(64).as_bytes(), 64).is_ok());
        let err = check_json_depth(nested(65).as_bytes(), 64).unwrap_err();
        assert!(err.to_string().contains("64 levels"), "{err}");
        let tricky = r#"{"a":"[[[[\"[[[[","b":[1]}"#;
        assert!(check_json_depth(tricky.as_bytes(), 2).is_ok());
    }

    /// Multi-channel polls ignore repeated names and refuse more than 32 channels.
    #[test]
    fn multi_channel_polls_dedupe_and_cap() {
        let spec = poll("/events?channels=a,b,a", None).unwrap();
        assert_eq!(spec.channels, ["a", "b"]);
        let many: Vec<String> = (0..33).map(|i| format!("c{i}")).collect();
        let err = poll(&format!("/events?channels={}", many.join(",")), None).unwrap_err();
        assert!(err.to_string().contains("at most 32"), "{err}");
        let repeats = format!("/events?channels={}", ["a"; 2000].join(","));
        assert_eq!(poll(&repeats, None).unwrap().channels, ["a"]);
    }

    /// Unknown parameters are ignored however often they repeat; known ones may appear once.
    #[test]
    fn unknown_parameters_are_ignored_known_ones_once() {
        let query: Vec<String> = (0..3000).map(|i| format!("x{}=1&y=2", i % 7)).collect();
        let spec = poll(
            &format!("/channels/a/events?{}&limit=3", query.join("&")),
            None,
        )
        .unwrap();
        assert_eq!(spec.limit, 3);
        let err = poll("/events?channels=a&channels=b", None).unwrap_err();
        assert!(
            err.to_string().contains("channels given more than once"),
            "{err}"
        );
    }

    /// Each route takes its methods, others get 405 with Allow, unknown paths get 404.
    #[test]
    fn routes_methods_and_unknown_paths() {
        let r = |m, t| route(m, t, None, LIMITS);
        assert_eq!(
            r("POST", "/channels/a/events").unwrap(),
            Action::Publish {
                channel: "a".into()
            }
        );
        assert_eq!(
            r("DELETE", "/channels/a").unwrap(),
            Action::DeleteChannel {
                channel: "a".into()
            }
        );
        assert_eq!(
            r("GET", "/channels/a").unwrap(),
            Action::ChannelInfo {
                channel: "a".into()
            }
        );
        assert_eq!(r("GET", "/healthz").unwrap(), Action::Healthz);
        assert_eq!(r("GET", "/").unwrap(), Action::Demo);
        assert_eq!(r("GET", "/?x=1").unwrap(), Action::Demo);
        let no_demo = RouteSettings {
            demo: false,
            ..LIMITS
        };
        assert_eq!(route("POST", "/", None, no_demo).unwrap_err().status(), 404);
        assert_eq!(r("HEAD", "/stats").unwrap(), Action::Stats);
        assert_eq!(r("GET", "/metrics?x=1").unwrap(), Action::Metrics);
        assert_eq!(
            r("PUT", "/channels/a/events").unwrap_err(),
            Error::MethodNotAllowed {
                allow: ALLOW_CHANNEL_EVENTS
            }
        );
        assert_eq!(
            r("OPTIONS", "/events").unwrap(),
            Action::Options { allow: ALLOW_POLL }
        );
        assert_eq!(r("GET", "/nope").unwrap_err().status(), 404);
        assert_eq!(r("GET", "/channels/a/events/").unwrap_err().status(), 404);
        assert_eq!(r("GET", "").unwrap_err().status(), 404);
    }

    /// A stream is asked for by `Accept: text/event-stream` (any case, with
    /// parameters, among other ranges), not by `*/*`, not when refused with q=0.
    #[test]
    fn accept_asks_for_a_stream_only_by_name() {
        assert!(wants_event_stream(Some("text/event-stream")));
        assert!(wants_event_stream(Some("Text/Event-Stream; charset=utf-8")));
        assert!(wants_event_stream(Some(
            "application/json, text/event-stream;q=0.5"
        )));
        assert!(!wants_event_stream(Some("*/*")));
        assert!(!wants_event_stream(Some("text/*")));
        assert!(!wants_event_stream(Some("text/event-stream;q=0")));
        assert!(!wants_event_stream(Some("application/json")));
        assert!(!wants_event_stream(None));
    }
}
