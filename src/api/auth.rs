//! Who may do what: the auth file's rules, tokens, and per-client shares.
//!
//! Owns `Rules` (parsed from the `--auth-file` text: which token, known only
//! by the SHA-256 of its text, holds which rights on which channel patterns,
//! and what a client without a token may do), the decision for one request
//! (`Rules::admit` of a `Need`), how a request presents its token
//! (`presented_token`) and hides it from the log (`redact_token`), how a
//! client is named for its shares (`Client`: its token, else its address,
//! taken from `X-Forwarded-For` only behind a trusted proxy), and
//! `PublishRates` (a token bucket per client, bounded in size).
//!
//! Pure: no file, socket or clock is read here. The edge reads the file and
//! the time and calls in from its dispatch thread; tests pass their own
//! `Instant`s.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::api::request::{Action, valid_channel_name};
use crate::error::Error;

/// Largest auth file read; a larger one is refused (it is a list of rules,
/// not a user database).
pub const MAX_AUTH_FILE_BYTES: u64 = 1024 * 1024;
/// Longest token accepted in a request; longer is refused unhashed.
pub const MAX_TOKEN_BYTES: usize = 256;
/// Clients whose publish rate is tracked at once; beyond it the client
/// closest to a full bucket is forgotten (it loses nothing but its debt).
pub const MAX_RATE_CLIENTS: usize = 10_000;
/// A bucket table is swept of full buckets once it has grown this much.
const MIN_SWEEP_LEN: usize = 64;
/// Bits of an IPv6 address that name one client (a /64 is one site's
/// network; an address inside it costs an attacker nothing).
const IPV6_CLIENT_PREFIX_BITS: u8 = 64;
/// The realm named in `WWW-Authenticate`.
pub const REALM: &str = "abide";

/// What a rule may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// `POST /channels/{name}/events`.
    Publish,
    /// Polls, streams, `GET /channels/{name}`.
    Subscribe,
    /// `DELETE /channels/{name}`; on `*`, also `/stats` and `/metrics`.
    Admin,
}

impl Right {
    pub fn name(self) -> &'static str {
        match self {
            Right::Publish => "publish",
            Right::Subscribe => "subscribe",
            Right::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Right::Publish => 1,
            Right::Subscribe => 2,
            Right::Admin => 4,
        }
    }
}

/// Which channels a rule covers: `*`, a prefix ending in `*`, or one name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    Prefix(String),
    Exact(String),
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, String> {
        if text == "*" {
            return Ok(Pattern::Any);
        }
        let (body, prefix) = match text.strip_suffix('*') {
            Some(body) => (body, true),
            None => (text, false),
        };
        if !valid_channel_name(body) {
            return Err(format!(
                "channel pattern {text:?}: use *, a channel name, or a name's start followed by * (sensors.*)"
            ));
        }
        Ok(match prefix {
            true => Pattern::Prefix(body.to_owned()),
            false => Pattern::Exact(body.to_owned()),
        })
    }

    fn matches(&self, channel: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Prefix(prefix) => channel.starts_with(prefix.as_str()),
            Pattern::Exact(name) => channel == name,
        }
    }
}

/// Rights on some patterns (one rule line).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    rights: u8,
    patterns: Vec<Pattern>,
}

impl Grant {
    fn allows(&self, right: Right, channel: &str) -> bool {
        self.rights & right.bit() != 0 && self.patterns.iter().any(|p| p.matches(channel))
    }

    fn allows_everywhere(&self, right: Right) -> bool {
        self.rights & right.bit() != 0 && self.patterns.contains(&Pattern::Any)
    }
}

/// A token's name (for the log and its shares) and what it may do.
#[derive(Debug, Clone)]
struct Holder {
    name: Arc<str>,
    /// The line that named it first, for error messages.
    line: usize,
    grants: Vec<Grant>,
}

/// Two holders are the same rule whatever line they were written on (a
/// reload that only moved or commented lines changes nothing).
impl PartialEq for Holder {
    fn eq(&self, other: &Holder) -> bool {
        self.name == other.name && self.grants == other.grants
    }
}

impl Eq for Holder {}

/// The rules of an auth file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rules {
    /// Tokens, by the SHA-256 of their text.
    tokens: HashMap<[u8; 32], Holder>,
    /// What a request without a token may do.
    anonymous: Vec<Grant>,
}

/// Why an auth file was refused: the line (1-based) and the reason.
#[derive(Debug, PartialEq, Eq)]
pub struct RulesError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// What a request needs to be admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Need<'a> {
    /// Open to anyone: `/healthz`, the demo page, preflights.
    Nothing,
    /// `right` on every one of `channels`.
    Channels(Right, Vec<&'a str>),
    /// The figures: `admin` on `*`.
    Figures { path: &'static str },
}

impl<'a> Need<'a> {
    /// What `action` needs; `/stats` and `/metrics` need nothing with
    /// `public_metrics`.
    pub fn of(action: &'a Action, public_metrics: bool) -> Need<'a> {
        match action {
            Action::Publish { channel } => Need::Channels(Right::Publish, vec![channel]),
            Action::Poll(spec) => Need::Channels(
                Right::Subscribe,
                spec.channels.iter().map(String::as_str).collect(),
            ),
            Action::ChannelInfo { channel } => Need::Channels(Right::Subscribe, vec![channel]),
            Action::DeleteChannel { channel } => Need::Channels(Right::Admin, vec![channel]),
            Action::Stats if !public_metrics => Need::Figures { path: "/stats" },
            Action::Metrics if !public_metrics => Need::Figures { path: "/metrics" },
            Action::Stats
            | Action::Metrics
            | Action::Healthz
            | Action::Demo
            | Action::Options { .. } => Need::Nothing,
        }
    }
}

/// Who an admitted request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No token (or no auth file at all).
    Anonymous,
    /// The token of this name.
    Token(Arc<str>),
}

/// A client, for its shares: its token when it presented one, else its
/// address (an IPv6 address by its /64).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Client {
    Token(Arc<str>),
    Address(IpAddr),
}

impl Client {
    pub fn new(caller: &Caller, address: IpAddr) -> Client {
        match caller {
            Caller::Token(name) => Client::Token(name.clone()),
            Caller::Anonymous => Client::Address(client_network(address)),
        }
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Client::Token(name) => write!(f, "token {name}"),
            Client::Address(IpAddr::V6(ip)) => write!(f, "{ip}/{IPV6_CLIENT_PREFIX_BITS}"),
            Client::Address(ip) => write!(f, "{ip}"),
        }
    }
}

/// An address as a client: IPv4 (also mapped into IPv6) as it is, IPv6 by
/// its /64.
fn client_network(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let net = ipnet::Ipv6Net::new(v6, IPV6_CLIENT_PREFIX_BITS).expect("prefix ≤ 128");
                IpAddr::V6(net.network())
            }
        },
    }
}

/// The SHA-256 of a token's text: what the auth file holds.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// `sha256:` and the hash in lowercase hex, as written in an auth file.
pub fn token_hash_text(token: &str) -> String {
    let mut text = String::with_capacity(7 + 64);
    text.push_str("sha256:");
    for byte in token_hash(token) {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

fn parse_hash(text: &str) -> Result<[u8; 32], String> {
    let Some(hex) = text.strip_prefix("sha256:") else {
        return Err(format!(
            "{:?} is not a token hash: write sha256: and 64 hex digits, as `abide token new` prints \
             (the file holds hashes of tokens, never tokens)",
            text.chars().take(12).collect::<String>() + "…"
        ));
    };
    let bytes = hex.as_bytes();
    if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
        return Err("sha256: must be followed by 64 hex digits".into());
    }
    let mut hash = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).expect("ASCII");
        hash[i] = u8::from_str_radix(pair, 16).expect("hex digits");
    }
    Ok(hash)
}

fn parse_rights(text: &str) -> Result<u8, String> {
    let mut rights = 0;
    for word in text.split(',') {
        rights |= match word {
            "publish" => Right::Publish.bit(),
            "subscribe" => Right::Subscribe.bit(),
            "admin" => Right::Admin.bit(),
            _ => {
                return Err(format!(
                    "unknown right {word:?}: rights are publish, subscribe and admin, joined by commas"
                ));
            }
        };
    }
    Ok(rights)
}

fn parse_grant<'a>(
    rights: Option<&str>,
    patterns: impl Iterator<Item = &'a str>,
) -> Result<Grant, String> {
    let rights = parse_rights(rights.ok_or("the rights are missing (publish,subscribe,admin)")?)?;
    let patterns = patterns
        .map(Pattern::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if patterns.is_empty() {
        return Err(
            "no channel pattern: end the rule with *, a name, or a prefix such as sensors.*".into(),
        );
    }
    Ok(Grant { rights, patterns })
}

fn valid_token_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

impl Rules {
    /// Parses an auth file. One rule per line; `#` starts a comment:
    ///
    /// ```text
    /// token NAME sha256:HEX RIGHTS PATTERN...
    /// anonymous RIGHTS PATTERN...
    /// ```
    ///
    /// RIGHTS joins `publish`, `subscribe` and `admin` with commas; a
    /// PATTERN is `*`, a channel name, or a name's start and `*`. A token may
    /// have several lines (its rights add up); two names may not share a
    /// hash. Without an `anonymous` line, requests without a token may do
    /// nothing but the open routes.
    pub fn parse(text: &str) -> Result<Rules, RulesError> {
        let mut rules = Rules::default();
        // An editor's byte order mark is not part of the first rule.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (i, line) in text.lines().enumerate() {
            let line_number = i + 1;
            let fail = |message: String| RulesError {
                line: line_number,
                message,
            };
            let content = line.split('#').next().unwrap_or("");
            let mut words = content.split_whitespace();
            match words.next() {
                None => continue,
                Some("anonymous") => {
                    let grant = parse_grant(words.next(), words).map_err(fail)?;
                    rules.anonymous.push(grant);
                }
                Some("token") => {
                    let name = words.next().ok_or_else(|| {
                        fail("a token rule is: token NAME sha256:HEX RIGHTS PATTERN...".into())
                    })?;
                    if !valid_token_name(name) {
                        return Err(fail(format!(
                            "token name {name:?}: use 1-64 ASCII letters, digits, '-', '_', '.' or '@'"
                        )));
                    }
                    let hash = parse_hash(words.next().unwrap_or("")).map_err(fail)?;
                    let grant = parse_grant(words.next(), words).map_err(fail)?;
                    if let Some(other) = rules
                        .tokens
                        .values()
                        .find(|h| &*h.name == name)
                        .filter(|h| rules.tokens.get(&hash) != Some(h))
                    {
                        return Err(fail(format!(
                            "token {name} has another hash on line {}; give each token its own name",
                            other.line
                        )));
                    }
                    match rules.tokens.entry(hash) {
                        Entry::Occupied(mut held) if &*held.get().name == name => {
                            held.get_mut().grants.push(grant);
                        }
                        Entry::Occupied(held) => {
                            return Err(fail(format!(
                                "this hash is already token {}'s (line {}); a token has one name",
                                held.get().name,
                                held.get().line
                            )));
                        }
                        Entry::Vacant(slot) => {
                            slot.insert(Holder {
                                name: Arc::from(name),
                                line: line_number,
                                grants: vec![grant],
                            });
                        }
                    }
                }
                Some(other) => {
                    return Err(fail(format!(
                        "unknown rule {:?}: a line starts with token or anonymous",
                        other.chars().take(40).collect::<String>()
                    )));
                }
            }
        }
        Ok(rules)
    }

    /// Whether requests without a token may do anything beyond the open routes.
    pub fn anonymous_allowed(&self) -> bool {
        !self.anonymous.is_empty()
    }

    /// Tokens the rules know.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// Decides whether a request presenting `token` (if any) gets what it
    /// needs: `401` for an unknown token, or for none where one is needed;
    /// `403` for a known token without the right, naming the channel and
    /// the right. Decided by the rules alone, so a refusal never tells
    /// whether a channel exists.
    pub fn admit(&self, token: Option<&str>, need: &Need<'_>) -> Result<Caller, Error> {
        if *need == Need::Nothing {
            return Ok(Caller::Anonymous);
        }
        let holder =
            match token {
                None => None,
                Some(token) => Some(self.tokens.get(&token_hash(token)).ok_or_else(|| {
                    Error::Unauthorized {
                        message:
                            "the token is not known (revoked, mistyped, or for another server)"
                                .into(),
                        invalid_token: true,
                    }
                })?),
            };
        let grants = holder.map_or(&self.anonymous, |h| &h.grants);
        const PRESENT: &str = "send Authorization: Bearer TOKEN (or ?token=TOKEN)";
        match need {
            Need::Nothing => {}
            Need::Channels(right, channels) => {
                let lacking = channels
                    .iter()
                    .find(|c| !grants.iter().any(|g| g.allows(*right, c)));
                if let Some(channel) = lacking {
                    let right = right.name();
                    return Err(match holder {
                        None => Error::Unauthorized {
                            message: format!(
                                "a token with the {right} right on channel {channel} is needed: {PRESENT}"
                            ),
                            invalid_token: false,
                        },
                        Some(h) => Error::Forbidden(format!(
                            "token {} lacks the {right} right on channel {channel}",
                            h.name
                        )),
                    });
                }
            }
            Need::Figures { path } => {
                if !grants.iter().any(|g| g.allows_everywhere(Right::Admin)) {
                    return Err(match holder {
                        None => Error::Unauthorized {
                            message: format!(
                                "{path} needs a token with the admin right on *: {PRESENT}; \
                                 or start abide with --public-metrics"
                            ),
                            invalid_token: false,
                        },
                        Some(h) => Error::Forbidden(format!(
                            "token {} lacks the admin right on * that {path} needs \
                             (or start abide with --public-metrics)",
                            h.name
                        )),
                    });
                }
            }
        }
        Ok(holder.map_or(Caller::Anonymous, |h| Caller::Token(h.name.clone())))
    }
}

/// The token a request presents: `Authorization: Bearer TOKEN` (other
/// schemes are not abide's and are ignored), or the `token` parameter of
/// its `query`. Both, when they differ, or a parameter given twice, is a
/// `400`.
pub fn presented_token<'a>(
    authorization: Option<&'a str>,
    query: &str,
) -> Result<Option<Cow<'a, str>>, Error> {
    let from_header = authorization.and_then(|value| {
        let (scheme, rest) = value.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| Cow::Borrowed(rest.trim()))
    });
    let mut from_query = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key == "token" {
            if from_query.is_some() {
                return Err(Error::BadRequest(
                    "parameter token given more than once".into(),
                ));
            }
            from_query = Some(value);
        }
    }
    let token = match (from_header, from_query) {
        (Some(header), Some(query)) if header != query => {
            return Err(Error::BadRequest(
                "two different tokens: send one, in Authorization: Bearer or in ?token=".into(),
            ));
        }
        (Some(header), _) => Some(header),
        (None, Some(query)) => Some(Cow::Owned(query.into_owned())),
        (None, None) => None,
    };
    if token.as_ref().is_some_and(|t| t.len() > MAX_TOKEN_BYTES) {
        return Err(Error::Unauthorized {
            message: format!("the token is longer than {MAX_TOKEN_BYTES} bytes"),
            invalid_token: true,
        });
    }
    Ok(token)
}

/// The request target with the value of every `token` parameter replaced
/// by `REDACTED`, for the log. Unchanged (borrowed) when it has none.
pub fn redact_token(target: &str) -> Cow<'_, str> {
    let Some((path, query)) = target.split_once('?') else {
        return Cow::Borrowed(target);
    };
    let is_token = |pair: &str| {
        let key = pair.split('=').next().unwrap_or("");
        form_urlencoded::parse(key.as_bytes()).any(|(k, _)| k == "token")
    };
    if !query.split('&').any(is_token) {
        return Cow::Borrowed(target);
    }
    let pairs: Vec<Cow<'_, str>> = query
        .split('&')
        .map(|pair| match is_token(pair) {
            true => Cow::Owned(format!("{}=REDACTED", pair.split('=').next().unwrap_or(""))),
            false => Cow::Borrowed(pair),
        })
        .collect();
    Cow::Owned(format!("{path}?{}", pairs.join("&")))
}

/// The client's address: the connection's `peer`, or, when the peer is a
/// trusted proxy, the address `X-Forwarded-For` gives. Its entries (every
/// header, in order) are read from the right, the nearest hop first; the
/// first that is not itself a trusted proxy is the client. An entry that is
/// not an address stops the walk at the last good one (what follows it was
/// written by the client and proves nothing).
pub fn client_address(peer: IpAddr, forwarded_for: &[&str], trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    // A listener on `[::]` sees IPv4 peers as `::ffff:a.b.c.d`.
    let peer = peer.to_canonical();
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for entry in forwarded_for
        .iter()
        .rev()
        .flat_map(|value| value.rsplit(','))
    {
        let Some(ip) = parse_forwarded_address(entry.trim()) else {
            return client;
        };
        client = ip;
        if !is_trusted(&ip) {
            return ip;
        }
    }
    client
}

/// An address as proxies write it: `1.2.3.4`, `2001:db8::1`, `[2001:db8::1]`,
/// optionally with a port.
fn parse_forwarded_address(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse().ok())
        })
        .map(|ip: IpAddr| ip.to_canonical())
}

/// Each client's publish allowance: a token bucket of `burst` publishes,
/// refilled at `per_second`. The table is bounded: full buckets (clients
/// that went quiet) are swept out as it grows, and past `MAX_RATE_CLIENTS`
/// the client closest to a full bucket is forgotten.
#[derive(Debug)]
pub struct PublishRates {
    per_second: f64,
    burst: f64,
    buckets: HashMap<Client, Bucket>,
    /// The table is swept when it reaches this many clients.
    sweep_at_len: usize,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn tokens_at(&self, now: Instant, per_second: f64, burst: f64) -> f64 {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * per_second;
        (self.tokens + refill).min(burst)
    }
}

impl PublishRates {
    pub fn new(per_second: f64, burst: u32) -> PublishRates {
        PublishRates {
            per_second,
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
            sweep_at_len: MIN_SWEEP_LEN,
        }
    }

    /// Takes one publish from `client`'s allowance at `now`; when none is
    /// left, how long until one is.
    pub fn take(&mut self, client: &Client, now: Instant) -> Result<(), Duration> {
        let (per_second, burst) = (self.per_second, self.burst);
        if !self.buckets.contains_key(client) {
            self.make_room(now);
        }
        let bucket = self.buckets.entry(client.clone()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let tokens = bucket.tokens_at(now, per_second, burst);
        if tokens >= 1.0 {
            *bucket = Bucket {
                tokens: tokens - 1.0,
                at: now,
            };
            Ok(())
        } else {
            *bucket = Bucket { tokens, at: now };
            Err(Duration::from_secs_f64((1.0 - tokens) / per_second))
        }
    }

    /// Clients tracked now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Before a new client is added: sweeps out full buckets once the table
    /// has doubled since the last sweep, and forgets one client at the bound.
    fn make_room(&mut self, now: Instant) {
        let (per_second, burst) = (self.per_second, self.burst);
        if self.buckets.len() >= self.sweep_at_len {
            self.buckets
                .retain(|_, b| b.tokens_at(now, per_second, burst) < burst);
            self.sweep_at_len = (self.buckets.len() * 2).max(MIN_SWEEP_LEN);
        }
        if self.buckets.len() >= MAX_RATE_CLIENTS {
            let fullest = self
                .buckets
                .iter()
                .max_by(|a, b| {
                    let a = a.1.tokens_at(now, per_second, burst);
                    let b = b.1.tokens_at(now, per_second, burst);
                    a.total_cmp(&b)
                })
                .map(|(client, _)| client.clone());
            if let Some(client) = fullest {
                self.buckets.remove(&client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::request::{RouteSettings, route};

    const ALICE: &str = "abide_alice-token";
    const BOB: &str = "abide_bob-token";
    const PROM: &str = "abide_prom-token";

    fn rules() -> Rules {
        let text = format!(
            "# a comment\n\
             token alice {} publish,subscribe sensors.* chat\n\
             token alice {} subscribe news   # a second line for alice\n\
             \n\
             token bob {} subscribe *\n\
             token prom {} admin *\n\
             anonymous subscribe public.*\n",
            token_hash_text(ALICE),
            token_hash_text(ALICE),
            token_hash_text(BOB),
            token_hash_text(PROM),
        );
        Rules::parse(&text).unwrap()
    }

    fn action(method: &str, target: &str) -> Action {
        let settings = RouteSettings {
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(60),
            demo: true,
        };
        route(method, target, None, settings).unwrap()
    }

    fn admit(token: Option<&str>, method: &str, target: &str) -> Result<Caller, Error> {
        let action = action(method, target);
        rules().admit(token, &Need::of(&action, false))
    }

    /// Each right opens exactly its routes on its patterns; a token's lines add up.
    #[test]
    fn rights_open_their_routes_on_their_patterns() {
        let alice = Ok(Caller::Token("alice".into()));
        assert_eq!(
            admit(Some(ALICE), "POST", "/channels/sensors.t1/events"),
            alice
        );
        assert_eq!(admit(Some(ALICE), "GET", "/channels/chat/events"), alice);
        assert_eq!(admit(Some(ALICE), "GET", "/channels/news"), alice);
        assert_eq!(
            admit(Some(ALICE), "GET", "/events?channels=chat,news"),
            alice
        );
        assert_eq!(
            admit(Some(BOB), "GET", "/events?channels=x,y"),
            Ok(Caller::Token("bob".into()))
        );
        assert_eq!(
            admit(Some(PROM), "DELETE", "/channels/anything"),
            Ok(Caller::Token("prom".into()))
        );
        assert_eq!(
            admit(Some(PROM), "GET", "/metrics"),
            Ok(Caller::Token("prom".into()))
        );
        assert_eq!(
            admit(None, "GET", "/channels/public.news/events"),
            Ok(Caller::Anonymous)
        );
        for open in ["/healthz", "/"] {
            assert_eq!(admit(None, "GET", open), Ok(Caller::Anonymous));
        }
        assert_eq!(admit(None, "OPTIONS", "/events"), Ok(Caller::Anonymous));
        // An unknown token on an open route is not looked at.
        assert_eq!(
            admit(Some("nope"), "GET", "/healthz"),
            Ok(Caller::Anonymous)
        );
    }

    /// A known token without the right gets 403 naming the channel and the right.
    #[test]
    fn missing_rights_are_403_naming_channel_and_right() {
        for (token, method, target, words) in [
            (ALICE, "POST", "/channels/news/events", ["publish", "news"]),
            (
                ALICE,
                "POST",
                "/channels/sensorsX/events",
                ["publish", "sensorsX"],
            ),
            (BOB, "POST", "/channels/a/events", ["publish", "channel a"]),
            (ALICE, "DELETE", "/channels/chat", ["admin", "chat"]),
            (PROM, "GET", "/channels/a/events", ["subscribe", "a"]),
            (ALICE, "GET", "/stats", ["admin", "/stats"]),
            (BOB, "GET", "/metrics", ["admin", "--public-metrics"]),
        ] {
            let err = admit(Some(token), method, target).unwrap_err();
            assert_eq!(err.status(), 403, "{method} {target}");
            for word in words {
                assert!(err.to_string().contains(word), "{method} {target}: {err}");
            }
        }
    }

    /// A poll over several channels needs subscribe on every one: alice cannot read b through a.
    #[test]
    fn multi_channel_poll_needs_every_channel() {
        let err = admit(Some(ALICE), "GET", "/events?channels=chat,secret").unwrap_err();
        assert_eq!(err.status(), 403);
        assert!(err.to_string().contains("channel secret"), "{err}");
    }

    /// No token where one is needed, or an unknown token, is 401; the figures are open with --public-metrics.
    #[test]
    fn missing_or_unknown_tokens_are_401() {
        let err = admit(None, "GET", "/channels/chat/events").unwrap_err();
        assert_eq!(
            err,
            Error::Unauthorized {
                message: "a token with the subscribe right on channel chat is needed: send \
                          Authorization: Bearer TOKEN (or ?token=TOKEN)"
                    .into(),
                invalid_token: false
            }
        );
        let err = admit(Some("abide_wrong"), "GET", "/channels/public.x/events").unwrap_err();
        assert_eq!(err.status(), 401);
        assert!(err.to_string().contains("not known"), "{err}");
        assert_eq!(admit(None, "GET", "/stats").unwrap_err().status(), 401);
        assert_eq!(
            admit(None, "DELETE", "/channels/public.x")
                .unwrap_err()
                .status(),
            401
        );
        let stats = action("GET", "/stats");
        assert_eq!(
            rules().admit(None, &Need::of(&stats, true)),
            Ok(Caller::Anonymous)
        );
    }

    /// Windows line ends, tabs and a byte order mark are read like plain text.
    #[test]
    fn crlf_tabs_and_a_byte_order_mark_are_fine() {
        let text = format!(
            "\u{feff}token\ta\t{}\tpublish\t*\r\nanonymous subscribe x\r\n",
            token_hash_text("t")
        );
        let rules = Rules::parse(&text).unwrap();
        assert_eq!(rules.token_count(), 1);
        assert!(rules.anonymous_allowed());
    }

    /// An empty file admits nothing but the open routes.
    #[test]
    fn an_empty_file_closes_everything_but_open_routes() {
        let rules = Rules::parse("# nobody yet\n").unwrap();
        let poll = action("GET", "/channels/a/events");
        assert_eq!(
            rules
                .admit(None, &Need::of(&poll, false))
                .unwrap_err()
                .status(),
            401
        );
        let health = action("GET", "/healthz");
        assert!(rules.admit(None, &Need::of(&health, false)).is_ok());
    }

    /// Every malformed line is refused with its number and what is wrong, and a raw token is never taken for a hash.
    #[test]
    fn bad_lines_name_their_number_and_fault() {
        let hash = token_hash_text("x");
        for (text, line, words) in [
            (format!("token a {hash} publish\n"), 1, "no channel pattern"),
            (format!("\ntoken a {hash} pubish *\n"), 2, "unknown right"),
            ("token a abide_rawtoken publish *".into(), 1, "never tokens"),
            ("token a sha256:abc publish *".into(), 1, "64 hex digits"),
            (
                format!("token a {hash} publish a/b\n"),
                1,
                "channel pattern",
            ),
            (
                format!("token a {hash} publish s*x\n"),
                1,
                "channel pattern",
            ),
            (
                format!("token a b {hash} publish *\n"),
                1,
                "not a token hash",
            ),
            (format!("token {hash}\n"), 1, "token name"),
            ("user a".into(), 1, "unknown rule"),
            ("anonymous".into(), 1, "rights are missing"),
            (
                format!("token a {hash} publish *\ntoken b {hash} publish *\n"),
                2,
                "already token a's (line 1)",
            ),
            (
                format!(
                    "token a {hash} publish *\ntoken a {} publish *\n",
                    token_hash_text("y")
                ),
                2,
                "another hash on line 1",
            ),
        ] {
            let err = Rules::parse(&text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(err.message.contains(words), "{text:?}: {err}");
        }
    }

    /// The hash written is SHA-256 in hex (the known digest of "abc").
    #[test]
    fn hashes_are_sha256_hex() {
        assert_eq!(
            token_hash_text("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let upper = format!(
            "token a {} publish *",
            token_hash_text("abc")
                .to_uppercase()
                .replace("SHA256", "sha256")
        );
        assert_eq!(Rules::parse(&upper).unwrap().token_count(), 1);
    }

    /// A token comes from Authorization: Bearer or ?token=; two different ones, or a repeated parameter, are a 400.
    #[test]
    fn tokens_are_presented_by_header_or_parameter() {
        let token = |h, q| presented_token(h, q).map(|t| t.map(Cow::into_owned));
        assert_eq!(token(Some("Bearer abc"), ""), Ok(Some("abc".into())));
        assert_eq!(token(Some("bearer  abc "), ""), Ok(Some("abc".into())));
        assert_eq!(token(Some("Basic dXNlcjpwYXNz"), ""), Ok(None));
        assert_eq!(token(None, "a=1&token=x%2By"), Ok(Some("x+y".into())));
        assert_eq!(
            token(Some("Bearer abc"), "token=abc"),
            Ok(Some("abc".into()))
        );
        assert_eq!(
            token(Some("Bearer abc"), "token=abd").unwrap_err().status(),
            400
        );
        assert_eq!(token(None, "token=a&token=a").unwrap_err().status(), 400);
        let long = format!("token={}", "x".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(token(None, &long).unwrap_err().status(), 401);
        assert_eq!(token(None, "tokens=x"), Ok(None));
    }

    /// The log never shows a token: every spelling of the parameter is redacted, nothing else changes.
    #[test]
    fn tokens_are_redacted_from_logged_targets() {
        assert_eq!(
            redact_token("/channels/a/events?token=s3cret&timeout=5"),
            "/channels/a/events?token=REDACTED&timeout=5"
        );
        assert_eq!(
            redact_token("/events?channels=a&%74oken=s3cret&token=x"),
            "/events?channels=a&%74oken=REDACTED&token=REDACTED"
        );
        assert_eq!(redact_token("/events?tokens=1"), "/events?tokens=1");
        assert!(matches!(redact_token("/stats"), Cow::Borrowed(_)));
    }

    /// X-Forwarded-For is read only from a trusted peer, from the right, skipping trusted hops and stopping at junk.
    #[test]
    fn forwarded_for_is_honoured_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let proxy = ip("127.0.0.1");
        assert_eq!(
            client_address(ip("192.0.2.9"), &["6.6.6.6"], &trusted),
            ip("192.0.2.9")
        );
        assert_eq!(
            client_address(proxy, &["192.0.2.1"], &trusted),
            ip("192.0.2.1")
        );
        // The client wrote the leftmost entry itself; the proxy appended the real one.
        assert_eq!(
            client_address(proxy, &["6.6.6.6, 192.0.2.1"], &trusted),
            ip("192.0.2.1")
        );
        assert_eq!(
            client_address(proxy, &["192.0.2.1, 10.1.2.3"], &trusted),
            ip("192.0.2.1")
        );
        assert_eq!(
            client_address(proxy, &["6.6.6.6", "192.0.2.1"], &trusted),
            ip("192.0.2.1")
        );
        assert_eq!(
            client_address(proxy, &["junk, 10.1.2.3"], &trusted),
            ip("10.1.2.3")
        );
        assert_eq!(client_address(proxy, &[], &trusted), proxy);
        assert_eq!(
            client_address(proxy, &["[2001:db8::1]:443"], &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_address(proxy, &["::ffff:192.0.2.7"], &trusted),
            ip("192.0.2.7")
        );
        let mapped_proxy = ip("::ffff:127.0.0.1");
        assert_eq!(
            client_address(mapped_proxy, &["192.0.2.1"], &trusted),
            ip("192.0.2.1")
        );
    }

    /// IPv6 clients are counted by their /64; IPv4 by their address; a token by its name.
    #[test]
    fn clients_are_tokens_or_networks() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = Client::new(&Caller::Anonymous, ip("2001:db8:1:2:aaaa::1"));
        let b = Client::new(&Caller::Anonymous, ip("2001:db8:1:2:bbbb::2"));
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_ne!(
            Client::new(&Caller::Anonymous, ip("192.0.2.1")),
            Client::new(&Caller::Anonymous, ip("192.0.2.2"))
        );
        let t = Client::new(&Caller::Token("alice".into()), ip("192.0.2.1"));
        assert_eq!(
            t,
            Client::new(&Caller::Token("alice".into()), ip("192.0.2.2"))
        );
    }

    /// The bucket gives a burst, then one publish per 1/rate seconds, and says how long to wait (injected clock).
    #[test]
    fn publish_rate_allows_a_burst_then_the_rate() {
        let mut rates = PublishRates::new(2.0, 3);
        let client = Client::Token("a".into());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(rates.take(&client, t0), Ok(()));
        }
        let wait = rates.take(&client, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Half a token after 250 ms: still refused, 250 ms to go.
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(rates.take(&client, t1), Err(Duration::from_millis(250)));
        let t2 = t0 + Duration::from_millis(500);
        assert_eq!(rates.take(&client, t2), Ok(()));
        assert!(rates.take(&client, t2).is_err());
        // Another client has its own bucket.
        assert_eq!(rates.take(&Client::Token("b".into()), t2), Ok(()));
        // Long quiet refills only up to the burst.
        let t3 = t2 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(rates.take(&client, t3), Ok(()));
        }
        assert!(rates.take(&client, t3).is_err());
    }

    /// Clients that went quiet are swept out, and the table never passes its bound.
    #[test]
    fn publish_rate_table_is_bounded() {
        let mut rates = PublishRates::new(1.0, 2);
        let t0 = Instant::now();
        let client = |i: u32| Client::Address(IpAddr::from(i.to_be_bytes()));
        for i in 0..100 {
            rates.take(&client(i), t0).unwrap();
        }
        assert_eq!(rates.len(), 100);
        // Two seconds later all are full again: the next new clients sweep them.
        let t1 = t0 + Duration::from_secs(2);
        for i in 1000..1130 {
            rates.take(&client(i), t1).unwrap();
        }
        assert!(rates.len() <= 130, "{}", rates.len());
        let t2 = t1 + Duration::from_millis(1);
        for i in 0..(MAX_RATE_CLIENTS as u32 + 500) {
            let _ = rates.take(&client(10_000 + i), t2);
            let _ = rates.take(&client(10_000 + i), t2);
        }
        assert!(rates.len() <= MAX_RATE_CLIENTS, "{}", rates.len());
    }
}
