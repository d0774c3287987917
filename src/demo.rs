//! The demo page served at `/`: a live chat room and a panel of `/stats`.
//!
//! Owns the page (compiled into the binary from `demo.html`: no CDN, no build
//! step, no network) and the headers it goes out with. Pure; the dispatch
//! thread calls it for `GET /`. `--no-demo` turns the route off.

use crate::api::reply::Reply;

const PAGE: &str = include_str!("demo.html");

/// The page: HTML with its script and style inline, locked to this origin.
pub fn reply() -> Reply {
    let mut reply = Reply::text(200, "text/html; charset=utf-8", PAGE.to_string());
    reply.headers.extend([
        ("Cache-Control", "no-cache".into()),
        ("X-Content-Type-Options", "nosniff".into()),
        (
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'"
                .into(),
        ),
    ]);
    reply
}
