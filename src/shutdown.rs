//! Shutdown as a value every long-lived thread can see.
//!
//! `Shutdown` is a cloneable flag with a condvar: `trigger` sets it once,
//! `is_triggered` reads it, `wait` and `wait_timeout` block until it is set.
//! It does nothing by itself; `server.rs` reacts to it by answering pending
//! polls and joining threads. Any thread may trigger it (signal thread, tests).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<(Mutex<bool>, Condvar)>,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    pub fn trigger(&self) {
        let (flag, condvar) = &*self.inner;
        *flag.lock() = true;
        condvar.notify_all();
    }

    pub fn is_triggered(&self) -> bool {
        *self.inner.0.lock()
    }

    /// Blocks until triggered.
    pub fn wait(&self) {
        let (flag, condvar) = &*self.inner;
        let mut triggered = flag.lock();
        while !*triggered {
            condvar.wait(&mut triggered);
        }
    }

    /// Blocks until triggered or `timeout` passes; returns whether triggered.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let (flag, condvar) = &*self.inner;
        let mut triggered = flag.lock();
        if !*triggered {
            condvar.wait_for(&mut triggered, timeout);
        }
        *triggered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    /// Triggering shutdown wakes a thread waiting on it, and stays triggered.
    #[test]
    fn trigger_wakes_a_waiting_thread() {
        let shutdown = Shutdown::new();
        assert!(!shutdown.wait_timeout(Duration::from_millis(1)));
        let waiter = {
            let shutdown = shutdown.clone();
            thread::spawn(move || shutdown.wait())
        };
        shutdown.trigger();
        waiter.join().unwrap();
        assert!(shutdown.is_triggered());
        assert!(shutdown.wait_timeout(Duration::from_secs(60)));
    }
}
