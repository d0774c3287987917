//! How a request's head frames its body, and the heads abide refuses.
//!
//! Owns the checks abide makes itself on every request head, whatever its
//! HTTP layer already did (defence in depth against request smuggling and
//! header injection): the request target's length and bytes, header values'
//! bytes, and the `Content-Length` / `Transfer-Encoding` rules of RFC 9112
//! section 6. Pure: it sees the head as strings, never a socket; the dispatch
//! thread calls it before routing, so it must stay linear in the head's size.

use crate::error::Error;

/// Longest request target accepted; a longer one is answered `414` before
/// any other parsing.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;

/// How the body of an accepted head is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (no `Content-Length`, or `Content-Length: 0`).
    None,
    /// `Content-Length`, as declared (it may exceed what abide accepts).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A refused head: the error to answer, and whether the connection must be
/// closed after it (when the body's framing is unknown, nothing after it on
/// the connection can be trusted to be a request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub error: Error,
    pub close: bool,
}

/// Checks a request head: `target` as sent, `headers` as (name, value)
/// pairs in order, `http_1_0` for an HTTP/1.0 request line.
pub fn check_head<'a>(
    target: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    http_1_0: bool,
) -> Result<BodyFraming, Refusal> {
    if target.len() > MAX_TARGET_BYTES {
        return Err(Refusal {
            error: Error::UriTooLong {
                limit_bytes: MAX_TARGET_BYTES,
            },
            close: false,
        });
    }
    let bad = |message: String| Refusal {
        error: Error::BadRequest(message),
        close: true,
    };
    if let Some(b) = target.bytes().find(|b| is_control(*b)) {
        return Err(bad(format!(
            "request target contains the control byte 0x{b:02x}"
        )));
    }
    let mut length: Option<u64> = None;
    let mut codings: Vec<String> = Vec::new();
    for (name, value) in headers {
        if let Some(b) = value.bytes().find(|b| is_control(*b) && *b != b'\t') {
            return Err(bad(format!(
                "header {} contains the control byte 0x{b:02x}",
                shown(name)
            )));
        }
        if name.eq_ignore_ascii_case("Content-Length") {
            // A list ("5, 5") is allowed when every member agrees (RFC 9110 8.6).
            for member in value.split(',') {
                let declared = parse_length(member.trim()).ok_or_else(|| {
                    bad(format!(
                        "header Content-Length must be a non-negative integer, got {:?}",
                        shown(value)
                    ))
                })?;
                if length.is_some_and(|l| l != declared) {
                    return Err(bad(
                        "several Content-Length headers with different values".into()
                    ));
                }
                length = Some(declared);
            }
        } else if name.eq_ignore_ascii_case("Transfer-Encoding") {
            codings.extend(
                value
                    .split(',')
                    .map(|c| c.trim().to_ascii_lowercase())
                    .filter(|c| !c.is_empty()),
            );
            if codings.len() > 8 {
                return Err(bad("header Transfer-Encoding lists too many codings".into()));
            }
        }
    }
    let has_transfer_encoding = !codings.is_empty();
    match (has_transfer_encoding, length) {
        (true, Some(_)) => Err(bad(
            "both Transfer-Encoding and Content-Length given; send one".into(),
        )),
        (true, None) if http_1_0 => Err(bad(
            "Transfer-Encoding is not allowed in an HTTP/1.0 request".into(),
        )),
        (true, None) if codings != ["chunked"] => Err(Refusal {
            error: Error::NotImplemented(format!(
                "transfer coding {:?} is not supported; send Content-Length or Transfer-Encoding: chunked",
                shown(&codings.join(", "))
            )),
            close: true,
        }),
        (true, None) => Ok(BodyFraming::Chunked),
        (false, Some(0) | None) => Ok(BodyFraming::None),
        (false, Some(n)) => Ok(BodyFraming::Length(n)),
    }
}

/// CR, LF, NUL and the other C0 controls, and DEL.
fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// Digits only (no sign, no spaces inside). A length beyond `u64` is still a
/// length (far over any limit): it saturates, and is answered `413`.
fn parse_length(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(u64::MAX))
}

/// At most 40 characters of a client's text, for an error message.
fn shown(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(headers: &[(&str, &str)]) -> Result<BodyFraming, Refusal> {
        check_head("/channels/a/events", headers.iter().copied(), false)
    }

    fn refused(headers: &[(&str, &str)]) -> (u16, bool, String) {
        let r = check(headers).unwrap_err();
        (r.error.status(), r.close, r.error.to_string())
    }

    /// Plain heads pass: no body, a length, chunked, equal repeated lengths.
    #[test]
    fn ordinary_heads_pass() {
        assert_eq!(check(&[("Host", "x")]), Ok(BodyFraming::None));
        assert_eq!(check(&[("Content-Length", "0")]), Ok(BodyFraming::None));
        assert_eq!(
            check(&[("content-length", " 12 ")]),
            Ok(BodyFraming::Length(12))
        );
        assert_eq!(
            check(&[("Transfer-Encoding", "Chunked")]),
            Ok(BodyFraming::Chunked)
        );
        assert_eq!(
            check(&[("Content-Length", "5"), ("Content-Length", "5, 5")]),
            Ok(BodyFraming::Length(5))
        );
        assert_eq!(
            check(&[("Content-Length", "100000000000000")]),
            Ok(BodyFraming::Length(100_000_000_000_000))
        );
        assert_eq!(
            check(&[("Content-Length", "99999999999999999999999")]),
            Ok(BodyFraming::Length(u64::MAX))
        );
        assert_eq!(
            check(&[("User-Agent", "a\tb")]),
            Ok(BodyFraming::None),
            "a tab is allowed in a value"
        );
    }

    /// The smuggling pairs are refused with 400 and a close: both framings, differing lengths, bad lengths.
    #[test]
    fn ambiguous_framing_is_refused_and_closes() {
        for headers in [
            &[
                ("Content-Length", "5"),
                ("Transfer-Encoding", "chunked, identity"),
            ][..],
            &[("Transfer-Encoding", "chunked"), ("Content-Length", "0")],
            &[("Content-Length", "5"), ("Content-Length", "6")],
            &[("Content-Length", "5, 6")],
            &[("Content-Length", "+5")],
            &[("Content-Length", "5 5")],
            &[("Content-Length", "")],
            &[("Content-Length", "-1")],
        ] {
            let (status, close, message) = refused(headers);
            assert_eq!((status, close), (400, true), "{headers:?}: {message}");
        }
        let (_, _, message) = refused(&[("Content-Length", "5"), ("Transfer-Encoding", "chunked")]);
        assert!(
            message.contains("Transfer-Encoding and Content-Length"),
            "{message}"
        );
    }

    /// Any coding other than exactly chunked is 501 and closes; chunked in HTTP/1.0 is 400.
    #[test]
    fn unknown_transfer_codings_are_not_implemented() {
        for value in ["gzip", "gzip, chunked", "chunked, chunked", "identity", "x"] {
            let (status, close, message) = refused(&[("Transfer-Encoding", value)]);
            assert_eq!((status, close), (501, true), "{value}: {message}");
            assert!(message.contains("transfer coding"), "{message}");
        }
        let (status, close, _) = refused(&[
            ("Transfer-Encoding", "chunked"),
            ("Transfer-Encoding", "gzip"),
        ]);
        assert_eq!((status, close), (501, true));
        let r = check_head("/", [("Transfer-Encoding", "chunked")], true).unwrap_err();
        assert_eq!((r.error.status(), r.close), (400, true));
    }

    /// CR, LF and NUL in a header value or the target are refused with 400 and a close, naming the header.
    #[test]
    fn control_bytes_are_refused() {
        for value in ["a\rb", "a\nb", "a\0b", "\x7f"] {
            let (status, close, message) = refused(&[("X-Test", value)]);
            assert_eq!((status, close), (400, true));
            assert!(message.contains("X-Test"), "{message}");
        }
        for target in ["/healthz\n", "/a\rb", "/\0", "/\x1b[31m"] {
            let r = check_head(target, [], false).unwrap_err();
            assert_eq!((r.error.status(), r.close), (400, true), "{target:?}");
            assert!(r.error.to_string().contains("request target"));
        }
    }

    /// A target over the limit is 414 whatever it holds; the connection stays usable.
    #[test]
    fn long_targets_are_414() {
        let long = format!("/events?channels={}", "a".repeat(MAX_TARGET_BYTES));
        let r = check_head(&long, [], false).unwrap_err();
        assert_eq!((r.error.status(), r.close), (414, false));
        assert!(r.error.to_string().contains("8192"), "{}", r.error);
        let fits = format!("/{}", "a".repeat(MAX_TARGET_BYTES - 1));
        assert_eq!(check_head(&fits, [], false), Ok(BodyFraming::None));
    }
}
