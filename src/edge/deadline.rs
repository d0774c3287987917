//! A total deadline for writing each answer.
//!
//! `--write-timeout` is also every accepted socket's `SO_SNDTIMEO`, but that
//! bounds one `send`: a client that reads a trickle lets each send make a
//! little progress, and a 1 MiB answer could then hold its thread for many
//! timeouts. So writer and waiter threads register each answer they write
//! (`AnswerDeadlines::watch`, ended when the returned guard drops), and one
//! thread, "abide-deadline", sleeps until the earliest deadline: an answer
//! still being written then gets `on_expiry` (the writer cuts its
//! connection, which fails the blocked send at once).
//!
//! Owns that thread and the table of answers being written. Must not touch
//! a socket itself. With nothing being written the thread waits without a
//! timeout: idle costs no wake-up.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

/// Stack of the deadline thread.
const DEADLINE_STACK_BYTES: usize = 64 * 1024;

/// The answers being written, and the thread that watches their deadlines.
pub struct AnswerDeadlines {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when an answer's deadline becomes the earliest, and on stop.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Answers being written, by deadline (then by registration number).
    writing: BTreeMap<(Instant, u64), SocketAddr>,
    next_number: u64,
    stopped: bool,
}

/// One answer being written; its deadline ends when this drops.
pub struct Watch<'a> {
    shared: &'a Shared,
    key: (Instant, u64),
}

impl AnswerDeadlines {
    /// Starts the deadline thread; `on_expiry` runs on it, with the peer of
    /// each answer still being written at its deadline.
    pub fn start(on_expiry: impl Fn(SocketAddr) + Send + 'static) -> io::Result<AnswerDeadlines> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let watched = shared.clone();
        let thread = thread::Builder::new()
            .name("abide-deadline".into())
            .stack_size(DEADLINE_STACK_BYTES)
            .spawn(move || watched.run(&on_expiry))?;
        Ok(AnswerDeadlines {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Registers an answer to `peer` that must be written by `deadline`.
    pub fn watch(&self, peer: SocketAddr, deadline: Instant) -> Watch<'_> {
        let mut state = self.shared.state.lock();
        let key = (deadline, state.next_number);
        state.next_number += 1;
        state.writing.insert(key, peer);
        let earliest = state.writing.first_key_value().map(|(k, _)| *k) == Some(key);
        drop(state);
        if earliest {
            self.shared.changed.notify_one();
        }
        Watch {
            shared: &self.shared,
            key,
        }
    }

    /// Ends the thread (answers still registered are left alone).
    pub fn stop(&self) {
        self.shared.state.lock().stopped = true;
        self.shared.changed.notify_one();
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        self.shared.state.lock().writing.remove(&self.key);
    }
}

impl Shared {
    fn run(&self, on_expiry: &impl Fn(SocketAddr)) {
        let mut state = self.state.lock();
        loop {
            if state.stopped {
                return;
            }
            let expired = state.take_expired(Instant::now());
            if !expired.is_empty() {
                drop(state);
                expired.into_iter().for_each(on_expiry);
                state = self.state.lock();
                continue;
            }
            match state.writing.first_key_value() {
                Some((&(deadline, _), _)) => {
                    self.changed.wait_until(&mut state, deadline);
                }
                None => self.changed.wait(&mut state),
            }
        }
    }
}

impl State {
    /// Removes and returns the peers of answers whose deadline is `now` or earlier.
    fn take_expired(&mut self, now: Instant) -> Vec<SocketAddr> {
        let mut expired = Vec::new();
        while let Some(entry) = self.writing.first_entry() {
            if entry.key().0 > now {
                break;
            }
            expired.push(entry.remove());
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// An answer still being written at its deadline is reported; one finished before it never is.
    #[test]
    fn only_answers_past_their_deadline_are_reported() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let deadlines = AnswerDeadlines::start(move |p| tx.send(p).unwrap()).unwrap();
        let now = Instant::now();
        let finished = deadlines.watch(peer(1), now + Duration::from_millis(50));
        drop(finished);
        let _slow = deadlines.watch(peer(2), now + Duration::from_millis(100));
        let _later = deadlines.watch(peer(3), now + Duration::from_secs(600));
        let got = rx.recv_timeout(Duration::from_secs(10)).expect("reported");
        assert_eq!(got, peer(2));
        assert!(Instant::now() >= now + Duration::from_millis(100));
        assert!(rx.try_recv().is_err(), "nothing else is due");
        deadlines.stop();
    }

    /// Expired entries come out in deadline order and leave the later ones.
    #[test]
    fn take_expired_takes_only_what_is_due() {
        let now = Instant::now();
        let mut state = State::default();
        for (i, secs) in [3u64, 1, 2].into_iter().enumerate() {
            state.writing.insert(
                (now + Duration::from_secs(secs), i as u64),
                peer(secs as u16),
            );
        }
        assert_eq!(
            state.take_expired(now + Duration::from_secs(2)),
            [peer(1), peer(2)]
        );
        assert_eq!(state.writing.len(), 1);
    }
}
