//! The `abide` command: turns flags into a checked `Config` and calls
//! `abide::run`. Runs on the main thread; owns no state of its own.

use std::net::SocketAddr;
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
enum Command {
    Serve(Serve),
}

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
    /// longest wait in seconds; larger timeouts are clamped (default 120)
    #[argh(option, default = "120")]
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
    /// most channels at once; more is refused with 503 (default 10000)
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
    /// send Access-Control-Allow-Origin with this value (an origin, or *) and answer preflights
    #[argh(option)]
    cors_origin: Option<String>,
    /// no access log on stderr
    #[argh(switch)]
    quiet: bool,
}

impl Serve {
    fn into_config(self) -> abide::Config {
        abide::Config {
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
            cors_origin: self.cors_origin,
            quiet: self.quiet,
        }
    }
}

/// Stack of the threads tiny_http spawns for connections (it uses
/// `std::thread::spawn`, which reads `RUST_MIN_STACK`). The default 2 MiB
/// would cost a 32-bit Pi 2 GB of address space for 1,000 connections.
const CONNECTION_STACK_BYTES: &str = "131072";

fn main() -> ExitCode {
    if std::env::var_os("RUST_MIN_STACK").is_none() {
        // SAFETY: no other thread exists yet, so nothing reads the environment concurrently.
        unsafe { std::env::set_var("RUST_MIN_STACK", CONNECTION_STACK_BYTES) };
    }
    let cli = match parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match cli.command {
        Command::Serve(serve) => {
            let config = serve.into_config();
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
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    Cli::from_args(&["abide"], &rest).map_err(|EarlyExit { output, status }| match status {
        Ok(()) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(()) => {
            eprintln!("{output}");
            eprintln!("Run abide serve --help for the flags.");
            ExitCode::from(2)
        }
    })
}
