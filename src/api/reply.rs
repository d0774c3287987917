//! HTTP answers as plain values, before they meet a socket.
//!
//! Owns `Reply` (status, headers, body) and how each outcome becomes one:
//! poll answers, errors, JSON documents. Pure: `edge/writer.rs` turns a
//! `Reply` into a tiny_http response on the pool thread that writes it.

use crate::api::auth;
use crate::error::Error;
use crate::hub::Answer;

/// Header that marks a poll answer after which the client has a gap.
pub const MISSED_HEADER: &str = "Abide-Missed";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Events carried in the body (for `events_delivered`).
    pub events: usize,
}

impl Reply {
    pub fn json(status: u16, body: String) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type", "application/json".into())],
            body: body.into_bytes(),
            events: 0,
        }
    }

    pub fn text(status: u16, content_type: &'static str, body: String) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type", content_type.into())],
            body: body.into_bytes(),
            events: 0,
        }
    }

    /// A body-less answer, such as `204`.
    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            events: 0,
        }
    }

    pub fn error(err: &Error) -> Reply {
        let mut reply = Reply::json(err.status(), err.to_json());
        match err {
            Error::MethodNotAllowed { allow } => reply.headers.push(("Allow", (*allow).into())),
            Error::Busy {
                retry_after_secs, ..
            }
            | Error::TooManyRequests {
                retry_after_secs, ..
            }
            | Error::StorageFull {
                retry_after_secs, ..
            } => reply
                .headers
                .push(("Retry-After", retry_after_secs.to_string())),
            Error::Unauthorized { invalid_token, .. } => {
                let mut challenge = format!("Bearer realm=\"{}\"", auth::REALM);
                if *invalid_token {
                    challenge.push_str(", error=\"invalid_token\"");
                }
                reply.headers.push(("WWW-Authenticate", challenge));
            }
            Error::Forbidden(_) => reply.headers.push((
                "WWW-Authenticate",
                format!(
                    "Bearer realm=\"{}\", error=\"insufficient_scope\"",
                    auth::REALM
                ),
            )),
            _ => {}
        }
        reply
    }

    /// The answer to a poll: `200` with a JSON array, `204`, or `410`.
    pub fn poll(answer: Answer) -> Reply {
        let (mut reply, missed) = match answer {
            Answer::Events { events, missed } => {
                let len = 2 + events.iter().map(|e| e.json.len() + 1).sum::<usize>();
                let mut body = Vec::with_capacity(len);
                body.push(b'[');
                for (i, event) in events.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(event.json.as_bytes());
                }
                body.push(b']');
                let reply = Reply {
                    status: 200,
                    headers: vec![("Content-Type", "application/json".into())],
                    body,
                    events: events.len(),
                };
                (reply, missed)
            }
            Answer::Empty { missed } => (Reply::empty(204), missed),
            Answer::Gone { channel } => (Reply::error(&Error::Gone(channel)), false),
        };
        reply.headers.push(("Cache-Control", "no-store".into()));
        if missed {
            reply.headers.push((MISSED_HEADER, "true".into()));
        }
        reply
    }

    #[cfg(test)]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::event::Event;
    use std::time::{Instant, SystemTime};

    /// Poll answers are a JSON array of the stored events, marked no-store and missed when asked.
    #[test]
    fn events_become_a_json_array_marked_no_store() {
        let events = vec![
            Event::new(1, "a", SystemTime::now(), Instant::now(), "1"),
            Event::new(2, "a", SystemTime::now(), Instant::now(), r#""two""#),
        ];
        let reply = Reply::poll(Answer::Events {
            events,
            missed: true,
        });
        assert_eq!(reply.status, 200);
        assert_eq!(reply.events, 2);
        assert_eq!(reply.header("cache-control"), Some("no-store"));
        assert_eq!(reply.header(MISSED_HEADER), Some("true"));
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body[0]["data"], 1);
        assert_eq!(body[1]["data"], "two");
    }

    /// Empty polls are a bodiless 204; 503 carries Retry-After, 405 carries Allow, Gone is 410.
    #[test]
    fn timeouts_are_204_and_errors_carry_their_headers() {
        let reply = Reply::poll(Answer::Empty { missed: false });
        assert_eq!((reply.status, reply.body.len()), (204, 0));
        assert_eq!(reply.header(MISSED_HEADER), None);
        let reply = Reply::error(&Error::Busy {
            message: "full".into(),
            retry_after_secs: 3,
        });
        assert_eq!(reply.status, 503);
        assert_eq!(reply.header("Retry-After"), Some("3"));
        let reply = Reply::error(&Error::MethodNotAllowed { allow: "GET" });
        assert_eq!(reply.header("Allow"), Some("GET"));
        let reply = Reply::poll(Answer::Gone {
            channel: "x".into(),
        });
        assert_eq!(reply.status, 410);
    }
}
