//! The `abide` command: turns flags into a checked `Config` and calls
//! `abide::run`. Runs on the main thread; owns no state of its own.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use argh::{EarlyExit, FromArgs};

/// abide: a small long-polling pub/sub server.
#[derive(FromArgs)]
struct Cli {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
// Parsed once at start; argh cannot box a subcommand.
#[allow(clippy::large_enum_variant)]
enum Command {
    Serve(Serve),
    Publish(Publish),
    Watch(Watch),
    Token(Token),
}

/// Make tokens for --auth-file.
#[derive(FromArgs)]
#[argh(subcommand, name = "token")]
struct Token {
    #[argh(subcommand)]
    command: TokenCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum TokenCommand {
    New(TokenNew),
    Hash(TokenHash),
}

/// Print a new random token (first line; shown once) and the rule to add to the --auth-file (second line; it holds only the token's hash).
#[derive(FromArgs)]
#[argh(subcommand, name = "new")]
struct TokenNew {
    /// the token's name in the rule and in refusals (default: derived from its hash)
    #[argh(positional)]
    name: Option<String>,
    /// rights, joined by commas: publish, subscribe, admin (default publish,subscribe)
    #[argh(option, default = "String::from(\"publish,subscribe\")")]
    rights: String,
    /// channel patterns: *, a name, or a prefix such as sensors.* (repeat or separate by commas; default *)
    #[argh(option)]
    channels: Vec<String>,
}

/// Print the sha256: hash of a token read from standard input (one line), as an --auth-file rule holds it.
#[derive(FromArgs)]
#[argh(subcommand, name = "hash")]
struct TokenHash {}

/// Random bytes in a new token (192 bits).
const TOKEN_RANDOM_BYTES: usize = 24;

/// Publish one JSON value on a channel and print the stored event.
#[derive(FromArgs)]
#[argh(subcommand, name = "publish")]
struct Publish {
    /// server URL (default http://127.0.0.1:8080)
    #[argh(option, default = "String::from(DEFAULT_URL)")]
    url: String,
    /// token to present (Authorization: Bearer) where the server's --auth-file asks for one; default: the ABIDE_TOKEN environment variable, which keeps it out of ps and shell history (empty: none)
    #[argh(option)]
    token: Option<String>,
    /// channel to publish on
    #[argh(positional)]
    channel: String,
    /// the JSON value; standard input when absent or -
    #[argh(positional)]
    json: Option<String>,
}

/// Long-poll channels and print each event as one JSON line, in order, once.
#[derive(FromArgs)]
#[argh(subcommand, name = "watch")]
struct Watch {
    /// server URL (default http://127.0.0.1:8080)
    #[argh(option, default = "String::from(DEFAULT_URL)")]
    url: String,
    /// token to present (Authorization: Bearer) where the server's --auth-file asks for one; default: the ABIDE_TOKEN environment variable, which keeps it out of ps and shell history (empty: none)
    #[argh(option)]
    token: Option<String>,
    /// channels to watch (one or more)
    #[argh(positional)]
    channels: Vec<String>,
    /// start after this event id (wins over --cursor-file); default: the cursor file, else 0
    #[argh(option)]
    from: Option<u64>,
    /// file that keeps the cursor across restarts (written atomically after each batch)
    #[argh(option)]
    cursor_file: Option<PathBuf>,
    /// seconds each poll may wait (default 30)
    #[argh(option, default = "30")]
    timeout: u64,
    /// most events per poll, 1-1000 (default 100)
    #[argh(option, default = "100")]
    limit: usize,
    /// one poll, print, exit: 0 with events, 3 when none came before the timeout
    #[argh(switch)]
    once: bool,
    /// read a Server-Sent Events stream instead of polling (reopened from the cursor whenever it ends, and at least every 10 x --timeout)
    #[argh(switch)]
    stream: bool,
}

const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// Where `abide publish` and `abide watch` find a token without `--token`.
const TOKEN_VARIABLE: &str = "ABIDE_TOKEN";
/// Exit code of `watch --once` when the poll timed out.
const EXIT_NO_EVENTS: u8 = 3;

/// Serve the HTTP API.
#[derive(FromArgs)]
#[argh(subcommand, name = "serve")]
struct Serve {
    /// address to listen on (default 127.0.0.1:8080; use 0.0.0.0:8080 for all interfaces)
    #[argh(option, default = "SocketAddr::from(([127, 0, 0, 1], 8080))")]
    listen: SocketAddr,
    /// polls that may wait at once; one more is answered 503 (default 512)
    #[argh(option, default = "512")]
    max_waiters: usize,
    /// seconds a poll waits when it names no timeout (default 30)
    #[argh(option, default = "30")]
    default_timeout: u64,
    /// longest wait in seconds; larger timeouts are clamped; with its 1/16 jitter it must stay below --idle-timeout (default 60)
    #[argh(option, default = "60")]
    max_timeout: u64,
    /// newest events kept per channel (default 256)
    #[argh(option, default = "256")]
    buffer: usize,
    /// seconds after which events are dropped; 0 keeps them until overwritten (default 0)
    #[argh(option, default = "0")]
    event_ttl: u64,
    /// largest event body in bytes; larger is answered 413 (default 65536)
    #[argh(option, default = "65536")]
    max_event_bytes: usize,
    /// most channels at once; a new one evicts the oldest channel nobody waits on (default 10000)
    #[argh(option, default = "10000")]
    max_channels: usize,
    /// bytes of stored events over all channels; beyond it the oldest are dropped (default 67108864)
    #[argh(option, default = "64 * 1024 * 1024")]
    max_stored_bytes: usize,
    /// seconds a connection may stay silent before it is closed (default 75)
    #[argh(option, default = "75")]
    idle_timeout: u64,
    /// seconds a write may wait for a client that does not read (default 10)
    #[argh(option, default = "10")]
    write_timeout: u64,
    /// threads that may write answers and read bodies at once (default 64)
    #[argh(option, default = "64")]
    max_writers: usize,
    /// requests that may wait for a writer thread when all are busy; one more is answered 503 (default 1024)
    #[argh(option, default = "1024")]
    max_backlog: usize,
    /// requests one connection may queue behind the one being answered; one more ends the connection (default 64)
    #[argh(option, default = "64")]
    max_pipelined_requests: usize,
    /// bytes of request heads one connection may queue behind the one being answered; more ends the connection (default 65536)
    #[argh(option, default = "65536")]
    max_pipelined_bytes: usize,
    /// seconds between the comments a Server-Sent Events stream writes while nothing comes (default 25, below common proxy timeouts)
    #[argh(option, default = "25")]
    sse_heartbeat: u64,
    /// end each Server-Sent Events stream after this many seconds (the browser reconnects and resumes), so that long-lived streams rebalance; default: never
    #[argh(option)]
    max_stream_seconds: Option<u64>,
    /// keep events in an SQLite database in this directory (created if missing), so that they survive restarts; default: in memory only
    #[argh(option)]
    data_dir: Option<PathBuf>,
    /// with --data-dir: normal (default; a killed process loses nothing acknowledged, a power cut may lose the last moments) or full (an fsync per commit; a power cut loses nothing acknowledged)
    #[argh(option)]
    sync: Option<abide::Sync>,
    /// share events, ids and cursors with every abide node using this Redis (redis://HOST:PORT/DB; README: "More than one machine"); each node keeps its own waiters and limits. Default: this node alone
    #[argh(option)]
    redis: Option<String>,
    /// with --redis rediss://…: trust only the CA certificates in this PEM file (for a Redis with a private CA); default: the system's CAs
    #[argh(option)]
    redis_ca: Option<PathBuf>,
    /// a file of rules: which token (by its SHA-256) may publish, subscribe or administer which channels (README: "Access control"; `abide token new` makes a token); re-read on SIGHUP. Default: everything open to everyone
    #[argh(option)]
    auth_file: Option<PathBuf>,
    /// with --auth-file: /stats and /metrics open to anyone (for a scraper on a private network); default: they need the admin right on *
    #[argh(switch)]
    public_metrics: bool,
    /// polls and streams one client (its token, else its address) may hold at once, 1 to --max-waiters; one more is answered 429. Default: no share (many clients may share one address behind NAT)
    #[argh(option)]
    max_waiters_per_client: Option<usize>,
    /// events per second one client (its token, else its address) may publish, with bursts of --publish-burst; faster is answered 429 with Retry-After. Default: no limit
    #[argh(option)]
    publish_rate: Option<f64>,
    /// with --publish-rate: events a client may publish at once before the rate applies (default 10, or one second of the rate if more)
    #[argh(option)]
    publish_burst: Option<u32>,
    /// addresses of proxies (CIDR, such as 127.0.0.1/32; repeat or separate by commas) whose X-Forwarded-For names the client; from any other address it is ignored
    #[argh(option)]
    trust_proxy: Vec<String>,
    /// send Access-Control-Allow-Origin with this value (an origin, or *) and answer preflights
    #[argh(option)]
    cors_origin: Option<String>,
    /// no access log on stderr
    #[argh(switch)]
    quiet: bool,
    /// do not serve the demo page at /
    #[argh(switch)]
    no_demo: bool,
}

impl Serve {
    fn into_config(self) -> Result<abide::Config, String> {
        let mut trust_proxy = Vec::new();
        for net in self.trust_proxy.iter().flat_map(|v| v.split(',')) {
            let net = net.trim();
            let parsed = net
                .parse::<ipnet::IpNet>()
                .or_else(|_| net.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    format!("--trust-proxy: {net:?} is not an address or CIDR such as 10.0.0.0/8")
                })?;
            trust_proxy.push(parsed);
        }
        Ok(abide::Config {
            listen: self.listen,
            max_waiters: self.max_waiters,
            default_timeout: Duration::from_secs(self.default_timeout),
            max_timeout: Duration::from_secs(self.max_timeout),
            buffer_events: self.buffer,
            event_ttl: (self.event_ttl > 0).then(|| Duration::from_secs(self.event_ttl)),
            max_event_bytes: self.max_event_bytes,
            max_channels: self.max_channels,
            max_stored_bytes: self.max_stored_bytes,
            idle_timeout: Duration::from_secs(self.idle_timeout),
            write_timeout: Duration::from_secs(self.write_timeout),
            max_writers: self.max_writers,
            max_backlog: self.max_backlog,
            max_pipelined_requests: self.max_pipelined_requests,
            max_pipelined_bytes: self.max_pipelined_bytes,
            sse_heartbeat: Duration::from_secs(self.sse_heartbeat),
            max_stream: self.max_stream_seconds.map(Duration::from_secs),
            data_dir: self.data_dir,
            sync: self.sync.unwrap_or(abide::Sync::Normal),
            cors_origin: self.cors_origin,
            quiet: self.quiet,
            demo: !self.no_demo,
            auth_file: self.auth_file,
            redis: self.redis,
            redis_ca: self.redis_ca,
            public_metrics: self.public_metrics,
            max_waiters_per_client: self.max_waiters_per_client,
            publish_rate_per_second: self.publish_rate,
            publish_burst: self.publish_burst,
            trust_proxy,
        })
    }
}

/// Stack of the threads tiny_http spawns for connections (it uses
/// `std::thread::spawn`, which reads `RUST_MIN_STACK`). The default 2 MiB
/// would cost a 32-bit Pi 2 GB of address space for 1,000 connections.
const CONNECTION_STACK_BYTES: &str = "131072";

fn main() -> ExitCode {
    // glibc reserves 64 MiB of address space per malloc arena, up to 8 per
    // core; with hundreds of threads that exhausts a 32-bit Pi's 3 GB (or a
    // `prlimit --as` of 512 MiB) long before memory. Two arenas cost nothing
    // measurable here (benches: same resident memory per held poll).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called before any other thread exists; mallopt only sets a tunable.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    if std::env::var_os("RUST_MIN_STACK").is_none() {
        // SAFETY: no other thread exists yet, so nothing reads the environment concurrently.
        unsafe { std::env::set_var("RUST_MIN_STACK", CONNECTION_STACK_BYTES) };
    }
    let cli = match parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match cli.command {
        Command::Publish(publish) => publish_command(publish),
        Command::Watch(watch) => watch_command(watch),
        Command::Token(Token {
            command: TokenCommand::New(new),
        }) => token_new_command(new),
        Command::Token(Token {
            command: TokenCommand::Hash(TokenHash {}),
        }) => token_hash_command(),
        Command::Serve(serve) => {
            if serve.sync.is_some() && serve.data_dir.is_none() {
                eprintln!("abide: --sync needs --data-dir (without it events are in memory only)");
                return ExitCode::from(2);
            }
            if serve.public_metrics && serve.auth_file.is_none() {
                eprintln!(
                    "abide: --public-metrics goes with --auth-file (without it all is public)"
                );
                return ExitCode::from(2);
            }
            let config = match serve.into_config() {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("abide: {err}");
                    return ExitCode::from(2);
                }
            };
            if let Err(err) = config.check() {
                eprintln!("abide: {err}");
                return ExitCode::from(2);
            }
            match abide::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("abide: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Parses the command line; `--help` exits 0, a bad flag or value exits 2.
fn parse_args() -> Result<Cli, ExitCode> {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    stdin_argument_last(&mut rest);
    Cli::from_args(&["abide"], &rest).map_err(|EarlyExit { output, status }| match status {
        Ok(()) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(()) => {
            eprintln!("{output}");
            eprintln!("Run abide <serve|publish|watch|token> --help for the flags.");
            ExitCode::from(2)
        }
    })
}

/// `abide publish CHANNEL -` reads the value from standard input, but argh
/// takes a lone `-` for an unknown flag. Its last positional (the value) may
/// follow `--`, so a lone `-` before any `--` is moved there.
fn stdin_argument_last(args: &mut Vec<&str>) {
    if args.first() != Some(&"publish") {
        return;
    }
    let options_end = args.iter().position(|a| *a == "--").unwrap_or(args.len());
    if let Some(i) = args[..options_end].iter().position(|a| *a == "-") {
        args.remove(i);
        if !args.contains(&"--") {
            args.push("--");
        }
        args.push("-");
    }
}

/// A token a client command presents, and where it came from (for hints).
struct GivenToken {
    text: String,
    from: &'static str,
}

/// The token of `abide publish` or `abide watch`: `--token`, else
/// `ABIDE_TOKEN`; an empty one is none (so `--token ""` sends none).
fn given_token(flag: Option<String>) -> Result<Option<GivenToken>, String> {
    let given = match flag {
        Some(text) => Some(GivenToken {
            text,
            from: "--token",
        }),
        None => std::env::var_os(TOKEN_VARIABLE).map(|text| GivenToken {
            text: text.to_string_lossy().into_owned(),
            from: TOKEN_VARIABLE,
        }),
    };
    match given {
        Some(token) if token.text.is_empty() => Ok(None),
        Some(token) if token.text.chars().any(char::is_control) => Err(format!(
            "the token in {} holds a control character (a line break?)",
            token.from
        )),
        other => Ok(other),
    }
}

/// Prints `error`, and for a refused token (401, 403) what to do about it.
fn report_error(command: &str, error: &abide::client::ClientError, token: Option<&GivenToken>) {
    eprintln!("abide {command}: {error}");
    let abide::client::ClientError::Status { status, .. } = error else {
        return;
    };
    let hint = match (status, token) {
        (401, None) => format!(
            "this server needs a token here: give one with --token TOKEN or the {TOKEN_VARIABLE} \
             variable (its operator makes one with abide token new)"
        ),
        (401, Some(token)) => format!(
            "the server refused the token from {}: check it, or ask for a new one",
            token.from
        ),
        (403, Some(token)) => format!(
            "the token from {} is known, but the server's rules do not give it that right",
            token.from
        ),
        _ => return,
    };
    eprintln!("abide {command}: hint: {hint}");
}

fn publish_command(args: Publish) -> ExitCode {
    let token = match given_token(args.token) {
        Ok(token) => token,
        Err(err) => {
            eprintln!("abide publish: {err}");
            return ExitCode::from(2);
        }
    };
    let json = match args.json.as_deref() {
        Some(json) if json != "-" => json.to_string(),
        _ => {
            let mut input = String::new();
            if let Err(err) = std::io::stdin().read_to_string(&mut input) {
                eprintln!("abide publish: reading standard input: {err}");
                return ExitCode::FAILURE;
            }
            input
        }
    };
    let client = abide::client::Client::new(&args.url, Duration::from_secs(30))
        .with_token(token.as_ref().map(|t| t.text.as_str()));
    match client.publish(&args.channel, &json) {
        Ok(event) => {
            println!("{event}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            report_error("publish", &err, token.as_ref());
            ExitCode::FAILURE
        }
    }
}

fn token_new_command(args: TokenNew) -> ExitCode {
    use base64::Engine;

    let mut random = [0u8; TOKEN_RANDOM_BYTES];
    if let Err(err) = getrandom::fill(&mut random) {
        eprintln!("abide token new: no randomness from the system: {err}");
        return ExitCode::FAILURE;
    }
    let token = format!(
        "abide_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
    );
    let hash = abide::token_hash_text(&token);
    let name = args
        .name
        .unwrap_or_else(|| format!("t{}", &hash["sha256:".len()..][..8]));
    let channels: Vec<&str> = args
        .channels
        .iter()
        .flat_map(|c| c.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    let channels = if channels.is_empty() {
        "*".to_string()
    } else {
        channels.join(" ")
    };
    if name.is_empty() || name.contains(char::is_whitespace) {
        eprintln!("abide token new: the name must be one word, such as alice or sensor-7");
        return ExitCode::from(2);
    }
    let rule = format!("token {name} {hash} {} {channels}", args.rights);
    if let Err(err) = abide::Rules::parse(&rule) {
        eprintln!("abide token new: {}", err.message);
        return ExitCode::from(2);
    }
    println!("{token}");
    println!("{rule}");
    eprintln!(
        "abide: line 1 is the token, shown only now (abide keeps its hash, not the token); \
         add line 2 to the --auth-file and reload abide (kill -HUP, or systemctl reload abide)"
    );
    ExitCode::SUCCESS
}

fn token_hash_command() -> ExitCode {
    let mut line = String::new();
    if let Err(err) = std::io::stdin().read_line(&mut line) {
        eprintln!("abide token hash: reading standard input: {err}");
        return ExitCode::FAILURE;
    }
    let token = line.trim_end_matches(['\r', '\n']);
    if token.is_empty() {
        eprintln!("abide token hash: give the token on standard input");
        return ExitCode::from(2);
    }
    println!("{}", abide::token_hash_text(token));
    ExitCode::SUCCESS
}

fn watch_command(args: Watch) -> ExitCode {
    use abide::client::{Note, WatchEnd, WatchOptions, Watcher};

    if args.channels.is_empty() {
        eprintln!("abide watch: name at least one channel");
        return ExitCode::from(2);
    }
    if args.once && args.stream {
        eprintln!("abide watch: --once polls once; it does not go with --stream");
        return ExitCode::from(2);
    }
    let token = match given_token(args.token) {
        Ok(token) => token,
        Err(err) => {
            eprintln!("abide watch: {err}");
            return ExitCode::from(2);
        }
    };
    let options = WatchOptions {
        base_url: args.url,
        channels: args.channels,
        from: args.from,
        cursor_file: args.cursor_file,
        timeout: Duration::from_secs(args.timeout),
        limit: args.limit,
        stream: args.stream,
        backoff_initial: Duration::from_millis(500),
        backoff_max: Duration::from_secs(30),
        token: token.as_ref().map(|t| t.text.clone()),
    };
    let mut watcher = match Watcher::new(options) {
        Ok(watcher) => watcher,
        Err(err) => {
            eprintln!("abide watch: {err}");
            return ExitCode::FAILURE;
        }
    };
    let stop = abide::Shutdown::new();
    if let Err(err) = exit_on_signal(watcher.delivery_lock()) {
        eprintln!("abide watch: cannot install signal handlers: {err}");
        return ExitCode::FAILURE;
    }
    let mut deliver = |batch: &abide::client::Batch| -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        for event in &batch.events {
            writeln!(out, "{event}")?;
        }
        out.flush()
    };
    let mut note = |note: Note<'_>| match note {
        Note::Retrying { error, delay } => {
            eprintln!(
                "abide watch: {error}; retrying in {:.1} s",
                delay.as_secs_f64()
            );
        }
        Note::Missed { cursor } => eprintln!(
            "abide watch: warning: events after id {cursor} were dropped by the server before \
             they could be delivered (Abide-Missed); there is a gap"
        ),
    };
    if args.once {
        return match watcher.poll_once(&mut deliver, &mut note) {
            Ok(batch) if batch.events.is_empty() => ExitCode::from(EXIT_NO_EVENTS),
            Ok(_) => ExitCode::SUCCESS,
            Err(err) => {
                report_error("watch", &err, token.as_ref());
                ExitCode::FAILURE
            }
        };
    }
    match watcher.run(&stop, &mut deliver, &mut note) {
        WatchEnd::Stopped => ExitCode::SUCCESS,
        WatchEnd::Failed(err) => {
            report_error("watch", &err, token.as_ref());
            ExitCode::FAILURE
        }
    }
}

/// On SIGINT or SIGTERM, waits until no batch is being delivered (so the
/// cursor file matches what was printed), then exits 0. A poll in flight is
/// simply abandoned: its events stay on the server for the next run.
fn exit_on_signal(delivery: std::sync::Arc<parking_lot::Mutex<()>>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("abide-signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            if signals.forever().next().is_some() {
                let _idle = delivery.lock();
                let _ = std::io::stdout().flush();
                std::process::exit(0);
            }
        })?;
    Ok(())
}
