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
//! Every deadline is `--write-timeout` after its answer started, so one
//! registered later is never sooner than one registered before. The thread
//! therefore needs waking only when it waits without a timeout: while
//! answers come and go it wakes about once per `--write-timeout` (at the
//! earliest deadline, or, if none is left, one period after that wake-up
//! when answers came meanwhile), not once per answer.
//!
//! Owns that thread and the table of answers being written. Must not touch
//! a socket itself. With nothing being written the thread waits without a
//! timeout: idle costs no wake-up (at most one more, one period after the
//! last answer).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Stack of the deadline thread.
const DEADLINE_STACK_BYTES: usize = 64 * 1024;

/// The answers being written, and the thread that watches their deadlines.
pub struct AnswerDeadlines {
    shared: Arc<Shared>,
    /// How long an answer may take to write (`--write-timeout`).
    timeout: Duration,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when an answer is registered while the thread waits
    /// without a timeout, and on stop.
    changed: Condvar,
    timeout: Duration,
}

#[derive(Default)]
struct State {
    /// Answers being written, by deadline (then by registration number).
    writing: BTreeMap<(Instant, u64), SocketAddr>,
    next_number: u64,
    /// When the thread wakes by itself; `None`: it waits to be notified.
    wake_at: Option<Instant>,
    /// An answer was registered since the thread last woke.
    registered: bool,
    /// Times the thread woke (for the tests).
    wakeups: u64,
    stopped: bool,
}

/// One answer being written; its deadline ends when this drops.
pub struct Watch<'a> {
    shared: &'a Shared,
    key: (Instant, u64),
}

impl AnswerDeadlines {
    /// Starts the deadline thread; `on_expiry` runs on it, with the peer of
    /// each answer still being written `timeout` after it started.
    pub fn start(
        timeout: Duration,
        on_expiry: impl Fn(SocketAddr) + Send + 'static,
    ) -> io::Result<AnswerDeadlines> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            timeout,
        });
        let watched = shared.clone();
        let thread = thread::Builder::new()
            .name("abide-deadline".into())
            .stack_size(DEADLINE_STACK_BYTES)
            .spawn(move || watched.run(&on_expiry))?;
        Ok(AnswerDeadlines {
            shared,
            timeout,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Registers an answer to `peer` that starts now and must be written
    /// within the timeout.
    pub fn watch(&self, peer: SocketAddr) -> Watch<'_> {
        let deadline = Instant::now() + self.timeout;
        let mut state = self.shared.state.lock();
        let key = (deadline, state.next_number);
        state.next_number += 1;
        state.writing.insert(key, peer);
        state.registered = true;
        // A wake-up already set is never later than this deadline.
        let asleep = state.wake_at.is_none();
        drop(state);
        if asleep {
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
            // Whatever is registered from now on is due a timeout from now
            // or later, so waking at either of these misses nothing.
            state.wake_at = match state.writing.first_key_value() {
                Some((&(deadline, _), _)) => Some(deadline),
                None if state.registered => Some(Instant::now() + self.timeout),
                None => None,
            };
            state.registered = false;
            match state.wake_at {
                Some(deadline) => {
                    self.changed.wait_until(&mut state, deadline);
                }
                None => self.changed.wait(&mut state),
            }
            state.wakeups += 1;
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

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// An answer still being written at its deadline is reported; one finished before it never is.
    #[test]
    fn only_answers_past_their_deadline_are_reported() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let timeout = Duration::from_millis(100);
        let deadlines = AnswerDeadlines::start(timeout, move |p| tx.send(p).unwrap()).unwrap();
        let finished = deadlines.watch(peer(1));
        drop(finished);
        let started = Instant::now();
        let _slow = deadlines.watch(peer(2));
        let got = rx.recv_timeout(Duration::from_secs(10)).expect("reported");
        assert_eq!(got, peer(2));
        assert!(started.elapsed() >= timeout);
        assert!(rx.try_recv().is_err(), "nothing else is due");
        deadlines.stop();
    }

    /// Answers written one after another wake the thread about once per
    /// timeout, not once per answer; an answer started while the table is
    /// empty is still caught at its deadline.
    #[test]
    fn a_steady_stream_of_answers_does_not_wake_the_thread_each_time() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let timeout = Duration::from_millis(300);
        let deadlines = AnswerDeadlines::start(timeout, move |p| tx.send(p).unwrap()).unwrap();
        let wakeups = || deadlines.shared.state.lock().wakeups;
        let started = Instant::now();
        let mut answers = 0;
        // Short answers for a little under one timeout.
        while started.elapsed() < timeout * 9 / 10 {
            drop(deadlines.watch(peer(1)));
            answers += 1;
        }
        assert!(answers > 1000, "only {answers} answers");
        assert!(
            wakeups() <= 2,
            "woke {} times for {answers} answers",
            wakeups()
        );
        // The table is empty now; the thread sleeps until its check-in.
        let _slow = deadlines.watch(peer(2));
        let got = rx.recv_timeout(Duration::from_secs(10)).expect("reported");
        assert_eq!(got, peer(2));
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
