//! What a request asks for and what it gets back, as plain values.
//!
//! Pure: nothing here touches a socket or tiny_http, and any thread may call
//! it. `auth` decides who may do what, `framing` checks a request head's
//! framing, `request` routes and checks parameters, `reply` builds answers.

pub mod auth;
pub mod framing;
pub mod reply;
pub mod request;
