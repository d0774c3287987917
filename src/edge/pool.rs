//! Elastic pools of small-stack threads that run blocking jobs.
//!
//! Owns the worker threads for waiting polls and for writing answers (two
//! pools, one job type each, run by a handler given at creation). `submit`
//! never blocks: a job goes to a worker blocked in `select` over a
//! zero-capacity crossbeam channel (the handoff succeeds only if one is really
//! waiting, so no count can go stale); otherwise a new thread is spawned, up to
//! `max_threads`; at the cap the job waits in the backlog channel, which every
//! worker also selects on, so it is taken by the first worker to come free and
//! can never be stranded. The backlog holds at most `max_backlog` jobs: one
//! more is given back, as is a job no thread could be spawned for. Idle workers retire after `WORKER_IDLE_RETIRE`, so
//! an idle server holds no pool threads. A panic in the handler is caught and
//! the worker lives on. Submitted from the dispatch thread and from workers.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, select};
use parking_lot::{Condvar, Mutex};

/// An idle worker exits after this long without a job.
pub const WORKER_IDLE_RETIRE: Duration = Duration::from_secs(10);

pub struct Pool<J> {
    name: &'static str,
    max_threads: usize,
    max_backlog: usize,
    stack_bytes: usize,
    handoff_tx: Sender<Msg<J>>,
    handoff_rx: Receiver<Msg<J>>,
    backlog_tx: Sender<Msg<J>>,
    backlog_rx: Receiver<Msg<J>>,
    handler: Arc<dyn Fn(J) + Send + Sync>,
    live: Arc<Live>,
}

/// What a worker receives: a job, or the order to leave (from `join`).
enum Msg<J> {
    Job(J),
    Stop,
}

/// Live worker count; its lock also orders "at the cap, queue in the backlog"
/// against "retire only when the backlog is empty".
#[derive(Default)]
struct Live {
    count: Mutex<usize>,
    zero: Condvar,
}

impl<J: Send + 'static> Pool<J> {
    pub fn new(
        name: &'static str,
        max_threads: usize,
        max_backlog: usize,
        stack_bytes: usize,
        handler: impl Fn(J) + Send + Sync + 'static,
    ) -> Pool<J> {
        let (handoff_tx, handoff_rx) = crossbeam_channel::bounded(0);
        let (backlog_tx, backlog_rx) = crossbeam_channel::unbounded();
        Pool {
            name,
            max_threads,
            max_backlog,
            stack_bytes,
            handoff_tx,
            handoff_rx,
            backlog_tx,
            backlog_rx,
            handler: Arc::new(handler),
            live: Arc::new(Live::default()),
        }
    }

    /// Runs `job` on an idle worker, a new one, or the first to come free.
    /// Gives the job back if the backlog is full, or if a thread was needed
    /// and none could be spawned.
    pub fn submit(&self, job: J) -> Result<(), J> {
        let job = match self.handoff_tx.try_send(Msg::Job(job)) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(msg) | TrySendError::Disconnected(msg)) => msg,
        };
        let Msg::Job(job) = job else {
            unreachable!("a job was sent")
        };
        let mut live = self.live.count.lock();
        if *live >= self.max_threads {
            if self.backlog_tx.len() >= self.max_backlog {
                return Err(job);
            }
            // Every worker is busy; the first to finish takes it.
            return self
                .backlog_tx
                .send(Msg::Job(job))
                .map_err(|e| match e.into_inner() {
                    Msg::Job(job) => job,
                    Msg::Stop => unreachable!("a job was sent"),
                });
        }
        *live += 1;
        drop(live);
        self.spawn(job)
    }

    fn spawn(&self, job: J) -> Result<(), J> {
        let worker = Worker {
            handoff: self.handoff_rx.clone(),
            backlog: self.backlog_rx.clone(),
            handler: self.handler.clone(),
            live: self.live.clone(),
        };
        let first = Arc::new(Mutex::new(Some(job)));
        let given = first.clone();
        let spawned = thread::Builder::new()
            .name(self.name.into())
            .stack_size(self.stack_bytes)
            .spawn(move || {
                let job = given.lock().take();
                drop(given);
                worker.run(job);
            });
        match spawned {
            Ok(_detached) => Ok(()),
            Err(_) => {
                self.live.leave();
                Err(first.lock().take().expect("the thread never started"))
            }
        }
    }

    /// Threads alive now.
    #[cfg(test)]
    pub fn threads(&self) -> usize {
        *self.live.count.lock()
    }

    /// Tells every worker to leave once the jobs queued before are done, and
    /// waits until they have, or `deadline` passes. Returns the threads still
    /// alive. (Jobs submitted later start new workers, which retire when idle.)
    pub fn join(&self, deadline: Instant) -> usize {
        let mut count = self.live.count.lock();
        for _ in 0..*count {
            let _ = self.backlog_tx.send(Msg::Stop);
        }
        while *count > 0 {
            if self.live.zero.wait_until(&mut count, deadline).timed_out() {
                break;
            }
        }
        *count
    }
}

impl Live {
    fn leave(&self) {
        let mut count = self.count.lock();
        *count -= 1;
        if *count == 0 {
            self.zero.notify_all();
        }
    }
}

struct Worker<J> {
    handoff: Receiver<Msg<J>>,
    backlog: Receiver<Msg<J>>,
    handler: Arc<dyn Fn(J) + Send + Sync>,
    live: Arc<Live>,
}

impl<J> Worker<J> {
    fn run(self, first: Option<J>) {
        if let Some(job) = first {
            self.handle(job);
        }
        self.serve();
    }

    /// Takes jobs until idle or stopped. Kept out of `run` so that the first
    /// job (often a poll that waits for a long time) runs on a shallow stack:
    /// only the stack pages a thread touches cost resident memory.
    #[inline(never)]
    fn serve(self) {
        loop {
            let msg = select! {
                recv(self.backlog) -> msg => msg.ok(),
                recv(self.handoff) -> msg => msg.ok(),
                default(WORKER_IDLE_RETIRE) => None,
            };
            match msg {
                Some(Msg::Job(job)) => self.handle(job),
                Some(Msg::Stop) => return self.live.leave(),
                None => {
                    // Idle (or the pool is gone): leave, unless a job was
                    // queued at the cap in the meantime.
                    let mut count = self.live.count.lock();
                    if let Ok(Msg::Job(job)) = self.backlog.try_recv() {
                        drop(count);
                        self.handle(job);
                        continue;
                    }
                    *count -= 1;
                    if *count == 0 {
                        self.live.zero.notify_all();
                    }
                    return;
                }
            }
        }
    }

    fn handle(&self, job: J) {
        let _ = catch_unwind(AssertUnwindSafe(|| (self.handler)(job)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;

    type Job = Box<dyn FnOnce() + Send>;

    fn pool(max_threads: usize) -> Pool<Job> {
        Pool::new("test", max_threads, 2, 64 * 1024, |job: Job| job())
    }

    /// The pool never runs more threads than its cap; jobs beyond it wait and run when a worker frees.
    #[test]
    fn caps_threads_and_queues_beyond_the_cap() {
        let pool = pool(2);
        let (release_tx, release_rx) = bounded::<()>(0);
        let (done_tx, done_rx) = bounded::<u32>(8);
        for i in 0..3 {
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
        for _ in 0..3 {
            release_tx.send(()).unwrap();
        }
        let mut got: Vec<u32> = (0..3).map(|_| done_rx.recv().unwrap()).collect();
        got.sort();
        assert_eq!(got, [0, 1, 2]);
        assert!(pool.threads() <= 2);
        assert_eq!(pool.join(Instant::now() + Duration::from_secs(5)), 0);
    }

    /// Beyond its cap and a full backlog, a job is given back at once, never queued.
    #[test]
    fn a_full_backlog_gives_the_job_back() {
        let pool = pool(1);
        let (release_tx, release_rx) = bounded::<()>(0);
        let (done_tx, done_rx) = bounded::<u32>(8);
        for i in 0..3 {
            let release = release_rx.clone();
            let done = done_tx.clone();
            pool.submit(Box::new(move || {
                release.recv().unwrap();
                done.send(i).unwrap();
            }))
            .map_err(|_| ())
            .expect("one running, two in the backlog");
        }
        let refused = pool.submit(Box::new(|| unreachable!("never runs")));
        assert!(refused.is_err(), "the backlog holds two");
        for _ in 0..3 {
            release_tx.send(()).unwrap();
        }
        let mut got: Vec<u32> = (0..3).map(|_| done_rx.recv().unwrap()).collect();
        got.sort();
        assert_eq!(got, [0, 1, 2]);
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
