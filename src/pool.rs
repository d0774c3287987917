//! Elastic pools of small-stack threads that run blocking jobs.
//!
//! Owns the worker threads for waiting polls and for writing answers (two
//! pools, one job type each, run by a handler given at creation). A job is
//! handed over a zero-capacity crossbeam channel to a worker blocked in
//! `recv`; when none is idle, a new thread is spawned, up to `max_threads`.
//! Idle workers retire after `WORKER_IDLE_RETIRE`, so an idle server holds no
//! pool threads. Jobs must not panic out (callers catch panics); a worker
//! never touches shared state itself; a panic in the handler is caught so that
//! the worker lives on. Submitted from the dispatch thread.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, TrySendError};
use parking_lot::{Condvar, Mutex};

/// An idle worker exits after this long without a job.
pub const WORKER_IDLE_RETIRE: Duration = Duration::from_secs(10);

/// How long `submit` waits for a worker to come free when all threads are busy.
const HANDOFF_WAIT: Duration = Duration::from_secs(1);

pub struct Pool<J> {
    name: &'static str,
    max_threads: usize,
    stack_bytes: usize,
    jobs_tx: Sender<J>,
    jobs_rx: Receiver<J>,
    handler: Arc<dyn Fn(J) + Send + Sync>,
    live: Arc<Live>,
}

/// Live worker count, with a condvar to wait for it to reach zero.
#[derive(Default)]
struct Live {
    count: Mutex<usize>,
    zero: Condvar,
    /// Spawned-or-reserved threads, for the cap (lock-free fast path).
    reserved: AtomicUsize,
}

impl<J: Send + 'static> Pool<J> {
    pub fn new(
        name: &'static str,
        max_threads: usize,
        stack_bytes: usize,
        handler: impl Fn(J) + Send + Sync + 'static,
    ) -> Pool<J> {
        let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(0);
        Pool {
            name,
            max_threads,
            stack_bytes,
            jobs_tx,
            jobs_rx,
            handler: Arc::new(handler),
            live: Arc::new(Live::default()),
        }
    }

    /// Runs `job` on an idle worker, or a new one. Gives the job back when every
    /// thread stayed busy for `HANDOFF_WAIT` or a thread could not be spawned.
    pub fn submit(&self, job: J) -> Result<(), J> {
        let job = match self.jobs_tx.try_send(job) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => job,
        };
        let job = match self.spawn(job) {
            Ok(()) => return Ok(()),
            Err(job) => job,
        };
        match self.jobs_tx.send_timeout(job, HANDOFF_WAIT) {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Timeout(job) | SendTimeoutError::Disconnected(job)) => Err(job),
        }
    }

    fn spawn(&self, job: J) -> Result<(), J> {
        let reserved = self
            .live
            .reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_threads).then_some(n + 1)
            });
        if reserved.is_err() {
            return Err(job);
        }
        *self.live.count.lock() += 1;
        let jobs = self.jobs_rx.clone();
        let handler = self.handler.clone();
        let live = self.live.clone();
        let slot = Arc::new(Mutex::new(Some(job)));
        let first = slot.clone();
        let spawned = thread::Builder::new()
            .name(self.name.into())
            .stack_size(self.stack_bytes)
            .spawn(move || {
                let _exit = ExitGuard(live);
                let run = |job: J| {
                    let _ = catch_unwind(AssertUnwindSafe(|| handler(job)));
                };
                if let Some(job) = first.lock().take() {
                    run(job);
                }
                drop(first);
                loop {
                    match jobs.recv_timeout(WORKER_IDLE_RETIRE) {
                        Ok(job) => run(job),
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
                    }
                }
            });
        match spawned {
            Ok(_detached) => Ok(()),
            Err(_) => {
                drop(ExitGuard(self.live.clone()));
                Err(slot.lock().take().expect("thread never started"))
            }
        }
    }

    /// Threads alive now.
    pub fn threads(&self) -> usize {
        *self.live.count.lock()
    }

    /// Stops handing out jobs and waits until every worker has exited or
    /// `deadline` passes. Returns the threads still alive.
    pub fn join(self, deadline: Instant) -> usize {
        let Pool {
            jobs_tx,
            jobs_rx,
            live,
            ..
        } = self;
        drop(jobs_tx);
        drop(jobs_rx);
        let mut count = live.count.lock();
        while *count > 0 {
            if live.zero.wait_until(&mut count, deadline).timed_out() {
                break;
            }
        }
        *count
    }
}

/// Counts a worker out when its thread ends (or never started).
struct ExitGuard(Arc<Live>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.reserved.fetch_sub(1, Ordering::AcqRel);
        let mut count = self.0.count.lock();
        *count -= 1;
        if *count == 0 {
            self.0.zero.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;

    type Job = Box<dyn FnOnce() + Send>;

    fn pool(max_threads: usize) -> Pool<Job> {
        Pool::new("test", max_threads, 64 * 1024, |job: Job| job())
    }

    /// The pool never runs more threads than its cap, gives a job back when all stay busy, and reuses idle workers.
    #[test]
    fn runs_jobs_and_caps_threads() {
        let pool = pool(2);
        let (release_tx, release_rx) = bounded::<()>(0);
        let (done_tx, done_rx) = bounded::<u32>(8);
        for i in 0..2 {
            let release = release_rx.clone();
            let done = done_tx.clone();
            pool.submit(Box::new(move || {
                release.recv().unwrap();
                done.send(i).unwrap();
            }))
            .map_err(|_| ())
            .unwrap();
        }
        assert_eq!(pool.threads(), 2);
        // Both threads are blocked: a third job is given back after HANDOFF_WAIT.
        assert!(pool.submit(Box::new(|| {})).is_err());
        release_tx.send(()).unwrap();
        release_tx.send(()).unwrap();
        let mut got = [done_rx.recv().unwrap(), done_rx.recv().unwrap()];
        got.sort();
        assert_eq!(got, [0, 1]);
        // A freed worker takes the next job instead of a new thread.
        let done = done_tx.clone();
        pool.submit(Box::new(move || done.send(9).unwrap()))
            .map_err(|_| ())
            .unwrap();
        assert_eq!(done_rx.recv().unwrap(), 9);
        assert!(pool.threads() <= 2);
        assert_eq!(pool.join(Instant::now() + Duration::from_secs(5)), 0);
    }

    /// A job that panics neither kills the pool nor leaks its thread count.
    #[test]
    fn a_panicking_job_does_not_lose_the_worker_count() {
        let pool = pool(1);
        pool.submit(Box::new(|| panic!("boom")))
            .map_err(|_| ())
            .unwrap();
        let (tx, rx) = bounded(1);
        pool.submit(Box::new(move || tx.send(1).unwrap()))
            .map_err(|_| ())
            .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
        assert_eq!(pool.join(Instant::now() + Duration::from_secs(5)), 0);
    }
}
