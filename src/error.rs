//! The one error type of a request, and how it maps to an HTTP answer.
//!
//! Every refusal the server makes is an `Error`; `status()` gives its HTTP
//! status and `to_json()` its body `{"error": "..."}`. Messages are lowercase
//! and name the parameter or limit at fault. Pure: no I/O, any thread.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A parameter, header, channel name or body is malformed (400).
    BadRequest(String),
    /// A token is needed and none was given, or the one given is not
    /// known (401, with `WWW-Authenticate: Bearer`).
    Unauthorized {
        message: String,
        /// A token was given but is not known (`error="invalid_token"`).
        invalid_token: bool,
    },
    /// The token is known but lacks the right; the message names the
    /// channel and the right (403).
    Forbidden(String),
    /// No such route or channel (404).
    NotFound(String),
    /// The route exists but not for this method (405); `allow` lists the methods it takes.
    MethodNotAllowed { allow: &'static str },
    /// The client took too long to send its body (408).
    BodyTimeout,
    /// The channel was deleted while the poll waited (410).
    Gone(String),
    /// The body is larger than `--max-event-bytes` (413).
    TooLarge { limit_bytes: usize },
    /// The request target is longer than `framing::MAX_TARGET_BYTES` (414).
    UriTooLong { limit_bytes: usize },
    /// The request uses something abide does not implement, such as a
    /// transfer coding other than chunked (501).
    NotImplemented(String),
    /// The client used up its share (`--max-waiters-per-client`,
    /// `--publish-rate`); try again after `retry_after_secs` (429).
    TooManyRequests {
        message: String,
        retry_after_secs: u32,
    },
    /// A limit is reached for now; try again after `retry_after_secs` (503).
    Busy {
        message: String,
        retry_after_secs: u32,
    },
    /// The store's disk is full: the event was not stored; try again after
    /// `retry_after_secs`, once space is freed (507).
    StorageFull {
        message: String,
        retry_after_secs: u32,
    },
    /// A bug: a handler panicked or an invariant broke (500).
    Internal(String),
    /// `504`: the store went away while it had the request, and whether it
    /// was done could not be learnt in time (`--redis` only).
    OutcomeUnknown(String),
}

impl Error {
    pub fn status(&self) -> u16 {
        match self {
            Error::BadRequest(_) => 400,
            Error::Unauthorized { .. } => 401,
            Error::Forbidden(_) => 403,
            Error::NotFound(_) => 404,
            Error::MethodNotAllowed { .. } => 405,
            Error::BodyTimeout => 408,
            Error::Gone(_) => 410,
            Error::TooLarge { .. } => 413,
            Error::UriTooLong { .. } => 414,
            Error::TooManyRequests { .. } => 429,
            Error::NotImplemented(_) => 501,
            Error::Busy { .. } => 503,
            Error::StorageFull { .. } => 507,
            Error::Internal(_) => 500,
            Error::OutcomeUnknown(_) => 504,
        }
    }

    /// The JSON body of the answer.
    pub fn to_json(&self) -> String {
        serde_json::json!({ "error": self.to_string() }).to_string()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadRequest(msg)
            | Error::NotFound(msg)
            | Error::Forbidden(msg)
            | Error::NotImplemented(msg)
            | Error::Internal(msg)
            | Error::OutcomeUnknown(msg) => f.write_str(msg),
            Error::Busy { message, .. }
            | Error::StorageFull { message, .. }
            | Error::TooManyRequests { message, .. }
            | Error::Unauthorized { message, .. } => f.write_str(message),
            Error::MethodNotAllowed { allow } => {
                write!(f, "method not allowed here; allowed: {allow}")
            }
            Error::BodyTimeout => f.write_str("request body not received within --idle-timeout"),
            Error::Gone(channel) => write!(f, "channel {channel} was deleted"),
            Error::UriTooLong { limit_bytes } => {
                write!(f, "request target is longer than {limit_bytes} bytes")
            }
            Error::TooLarge { limit_bytes } => {
                write!(
                    f,
                    "event body exceeds --max-event-bytes ({limit_bytes} bytes)"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Error bodies are valid JSON that names the limit, whatever the message holds.
    #[test]
    fn json_body_names_the_limit_and_escapes() {
        let err = Error::TooLarge { limit_bytes: 10 };
        assert_eq!(err.status(), 413);
        let body: serde_json::Value = serde_json::from_str(&err.to_json()).unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("--max-event-bytes")
        );
        let err = Error::StorageFull {
            message: "the disk is full".into(),
            retry_after_secs: 30,
        };
        assert_eq!(err.status(), 507);
        let err = Error::BadRequest("bad \"quote\"".into());
        let body: serde_json::Value = serde_json::from_str(&err.to_json()).unwrap();
        assert_eq!(body["error"], "bad \"quote\"");
    }
}
