//! The floor of the design for scenarios 1 to 3 (memory per held poll,
//! fan-out, deliveries): the thread-per-waiter hold at its barest. A poll
//! with nothing after its cursor is held by a thread spawned for it (64 KiB
//! stack, as abide's waiters) blocked on the floor's one condvar until a
//! publish brings an event after its cursor (then `200`) or its `timeout`
//! passes (then `204`); that thread writes the answer. So a held poll costs
//! two blocked threads, as in abide: tiny_http's connection thread (128 KiB
//! stack, from `RUST_MIN_STACK=131072`, which the harness sets as abide
//! does for itself) waiting for the answer, and this waiter.
//!
//! Omitted on purpose: a pool of waiter threads (each wait spawns one), one
//! condvar per waiter (a publish wakes every waiter; the scenarios use one
//! channel), timeout jitter, and everything `floor_server.rs` omits. Runs in
//! `compare serve-floor --hold-threads`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tiny_http::Request;

use crate::floor_server::{Floor, answer_poll, read_after};

pub fn spawn_waiter(floor: Arc<Floor>, name: String, cursor: u64, limit: usize, request: Request) {
    let timeout = request
        .url()
        .split_once("timeout=")
        .and_then(|(_, t)| t.split('&').next()?.parse().ok())
        .unwrap_or(30);
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let this = floor.clone();
    let spawned = std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut st = this.state.lock().unwrap();
            loop {
                let body = st
                    .channels
                    .get(&name)
                    .and_then(|ch| read_after(ch, cursor, limit));
                let left = deadline.saturating_duration_since(Instant::now());
                if body.is_some() || left.is_zero() {
                    st.waiters -= 1;
                    drop(st);
                    return answer_poll(request, body);
                }
                st = this.wake.wait_timeout(st, left).unwrap().0;
            }
        });
    if spawned.is_err() {
        floor.state.lock().unwrap().waiters -= 1;
    }
}
