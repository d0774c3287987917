//! The edge: the only code that touches tiny_http and sockets.
//!
//! `server` owns the listener and the dispatch threads, `writer` the
//! per-connection lanes and everything that blocks on a client, `pool` the
//! small-stack worker threads they run on, `connection` finds a client's socket
//! to close or cut it, `deadline` bounds the time a whole answer may take to
//! write, `watchdog` tells systemd that abide still serves.

pub mod connection;
pub mod deadline;
pub mod pool;
pub mod send_room;
pub mod server;
pub mod watchdog;
pub mod writer;
