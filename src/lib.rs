//! abide: a small long-polling pub/sub server for Raspberry Pi class machines.
//!
//! Clients hold a GET open until something new is published on the channels
//! they watch, or a timeout passes; publishers POST events. The design is
//! synchronous: tiny_http takes requests, and each poll that has to wait is
//! handed to a small-stack worker thread that blocks on a condvar, with the
//! number of such workers capped. See ARCHITECTURE.md for the map.
//!
//! `run` serves until SIGINT/SIGTERM; `start` serves in the background and is
//! what tests use (on port 0).

mod api;
pub mod client;
mod config;
mod demo;
mod edge;
mod error;
mod hub;
mod shutdown;
mod store;

use std::io;

pub use api::auth::{Rules, RulesError, token_hash_text};
pub use config::{Config, ConfigError, Sync};
pub use edge::server::{RulesReload, Running, start};
pub use shutdown::Shutdown;

/// Serves until SIGINT or SIGTERM, then answers every pending poll and
/// returns. With `--auth-file`, SIGHUP re-reads it (without, SIGHUP stops
/// abide as it stops any program).
pub fn run(config: Config) -> io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

    let reload_on_hangup = config.auth_file.is_some();
    let running = start(config)?;
    let shutdown = running.shutdown_handle();
    let rules = running.rules_reload();
    let mut signals = match reload_on_hangup {
        true => signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?,
        false => signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?,
    };
    let signals_handle = signals.handle();
    let signal_thread = std::thread::Builder::new()
        .name("abide-signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    // It logs the outcome; an error keeps the rules in force.
                    let _ = rules.reload();
                    continue;
                }
                shutdown.trigger();
                break;
            }
        })?;
    // Under systemd: ready now (abide accepts), and a watchdog that reports
    // only while abide answers on its own listener.
    edge::watchdog::notify_ready();
    let watchdog = edge::watchdog::start(running.self_check_addr(), running.shutdown_handle())?;
    running.wait();
    edge::watchdog::notify_stopping();
    signals_handle.close();
    let _ = signal_thread.join();
    if let Some(watchdog) = watchdog {
        let _ = watchdog.join();
    }
    Ok(())
}
