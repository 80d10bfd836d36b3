//! How an HTTP/1 message's body is delimited: one rule set for requests and
//! answers (RFC 9112 §6), strict where two parsers could disagree about where
//! a message ends, which is what request smuggling and response splitting
//! live on.
//!
//! A head's fields are read once ([`Facts::observe`], as the caller walks
//! them for its own purposes), then [`request`] or [`answer`] decides. A
//! request edge cannot frame the one way every other parser would is refused
//! (400, or 501 for a transfer coding edge does not implement); an answer is
//! refused as a bad gateway (502). Neither is ever passed on with its own
//! framing fields: edge writes its own length or chunking.

use http::{Method, StatusCode, Version};

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (answers only).
    Close,
    /// The connection becomes a tunnel (a `101` answer).
    Tunnel,
}

/// What the fields that decide framing and the connection said.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    /// The value of the one `Content-Length` field, if it parsed.
    length: Option<u64>,
    /// `Content-Length` fields seen.
    length_fields: u8,
    /// A `Content-Length` was a list or not digits.
    length_bad: bool,
    /// `Transfer-Encoding` fields seen.
    te_fields: u8,
    /// Every `Transfer-Encoding` together was exactly `chunked`.
    te_chunked: bool,
    pub connection: ConnectionTokens,
    /// `Expect` fields: whether all were `100-continue`, and whether any came.
    pub expect_continue: bool,
    pub expect_other: bool,
    pub upgrade: bool,
    /// `TE` (trailers asked for).
    pub te_header: bool,
    pub dated: bool,
}

/// What one `Connection` field lists.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionTokens {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// Anything else (a header name to drop, an empty or non-text token).
    pub other: bool,
}

/// Reads a `Connection` field's comma-separated tokens, case-insensitively.
pub fn connection_tokens(value: &[u8]) -> ConnectionTokens {
    let mut t = ConnectionTokens::default();
    for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        if token.eq_ignore_ascii_case(b"close") {
            t.close = true;
        } else if token.eq_ignore_ascii_case(b"keep-alive") {
            t.keep_alive = true;
        } else if token.eq_ignore_ascii_case(b"upgrade") {
            t.upgrade = true;
        } else {
            t.other = true;
        }
    }
    t
}

/// What a field is to the one reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Decides framing (`Content-Length`, `Transfer-Encoding`): never passed on.
    Framing,
    /// `Connection` saying no more than keep-alive or close: never passed on.
    Connection,
    /// Another hop-by-hop field, or a `Connection` naming one: the caller strips.
    HopByHop,
    /// `Expect`: answered by edge, never passed on.
    Expect,
    Date,
    Other,
}

/// The hop-by-hop fields besides the framing ones (RFC 9110 §7.6.1).
fn is_hop_by_hop(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 6] = [
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name)) || name.eq_ignore_ascii_case(b"upgrade")
}

impl Facts {
    /// Takes one field into account; says what it is.
    pub fn observe(&mut self, name: &[u8], value: &[u8]) -> Role {
        let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
        match name.len() {
            4 if is(b"date") => {
                self.dated = true;
                Role::Date
            }
            6 if is(b"expect") => {
                if value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                    self.expect_continue = true;
                } else {
                    self.expect_other = true;
                }
                Role::Expect
            }
            7 if is(b"upgrade") => {
                self.upgrade = true;
                Role::HopByHop
            }
            10 if is(b"connection") => {
                let t = connection_tokens(value);
                self.connection.close |= t.close;
                self.connection.keep_alive |= t.keep_alive;
                self.connection.upgrade |= t.upgrade;
                self.connection.other |= t.other;
                if t.upgrade || t.other {
                    Role::HopByHop
                } else {
                    Role::Connection
                }
            }
            14 if is(b"content-length") => {
                self.length_fields = self.length_fields.saturating_add(1);
                match content_length(value) {
                    Some(n) => self.length = Some(n),
                    None => self.length_bad = true,
                }
                Role::Framing
            }
            17 if is(b"transfer-encoding") => {
                self.te_fields = self.te_fields.saturating_add(1);
                // Exactly one coding, `chunked`, in one field.
                self.te_chunked =
                    self.te_fields == 1 && value.trim_ascii().eq_ignore_ascii_case(b"chunked");
                Role::Framing
            }
            2 if is(b"te") => {
                self.te_header = true;
                Role::HopByHop
            }
            _ if is_hop_by_hop(name) => Role::HopByHop,
            _ => Role::Other,
        }
    }

    /// The one `Content-Length`, when there is exactly one valid field.
    pub fn declared_length(&self) -> Option<u64> {
        (self.length_fields == 1 && !self.length_bad)
            .then_some(self.length)
            .flatten()
    }

    /// The message declares a body (a length above zero, or a transfer coding).
    pub fn declares_body(&self) -> bool {
        self.te_fields > 0 || self.length.is_some_and(|n| n > 0) || self.length_bad
    }
}

/// `Content-Length`: 1 to 19 ASCII digits, nothing else (no sign, no list).
pub fn content_length(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Why a message is refused: what the client gets, and what the log says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub why: &'static str,
}

const fn refuse(status: StatusCode, why: &'static str) -> Refusal {
    Refusal { status, why }
}

/// The framing shared by both directions: the length fields and the
/// transfer coding, or why they cannot be trusted.
fn body_framing(f: &Facts, version: Version) -> Result<Option<Framing>, &'static str> {
    if f.length_fields > 0 && f.te_fields > 0 {
        return Err("both Content-Length and Transfer-Encoding");
    }
    if f.length_fields > 1 {
        return Err("more than one Content-Length");
    }
    if f.length_bad {
        return Err("invalid Content-Length (a list, a sign or not digits)");
    }
    if f.te_fields > 0 {
        if version == Version::HTTP_10 {
            return Err("Transfer-Encoding in an HTTP/1.0 message");
        }
        if !f.te_chunked {
            return Err("a transfer coding other than chunked");
        }
        return Ok(Some(Framing::Chunked));
    }
    Ok(f.length.map(Framing::Length))
}

/// A request's framing, or why it is refused. `target` is the request
/// target as sent.
pub fn request(
    f: &Facts,
    method: &Method,
    target: &[u8],
    version: Version,
) -> Result<Framing, Refusal> {
    if target == b"*" && method != Method::OPTIONS {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "asterisk-form target on a method other than OPTIONS",
        ));
    }
    if f.expect_other {
        return Err(refuse(
            StatusCode::EXPECTATION_FAILED,
            "an expectation other than 100-continue",
        ));
    }
    match body_framing(f, version) {
        Ok(framing) => Ok(framing.unwrap_or(Framing::None)),
        // A coding edge does not implement is 501 (RFC 9112 §6.1), unless
        // the message was faulty anyway.
        Err(why) if why == "a transfer coding other than chunked" && f.length_fields == 0 => {
            Err(refuse(StatusCode::NOT_IMPLEMENTED, why))
        }
        Err(why) => Err(refuse(StatusCode::BAD_REQUEST, why)),
    }
}

/// An answer's framing and whether its connection can carry another
/// request, or why it is a bad gateway. `method` is the request's.
pub fn answer(
    f: &Facts,
    status: u16,
    version: Version,
    method: &Method,
) -> Result<(Framing, bool), &'static str> {
    let persistent = match version {
        Version::HTTP_10 => f.connection.keep_alive && !f.connection.close,
        _ => !f.connection.close,
    };
    if status == 101 {
        return Ok((Framing::Tunnel, false));
    }
    let framing = body_framing(f, version)?;
    let bodiless =
        method == Method::HEAD || (100..200).contains(&status) || status == 204 || status == 304;
    if bodiless {
        // No body follows, whatever the head declared. An upstream that
        // declared one may send it anyway (gunicorn does for HEAD, in a later
        // segment), and those bytes would be read as the next request's
        // answer, on another client's behalf: such a connection is closed.
        return Ok((Framing::None, persistent && !f.declares_body()));
    }
    Ok(match framing {
        Some(framing) => (framing, persistent),
        None => (Framing::Close, false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(fields: &[(&str, &str)]) -> Facts {
        let mut f = Facts::default();
        for (k, v) in fields {
            f.observe(k.as_bytes(), v.as_bytes());
        }
        f
    }

    fn req(fields: &[(&str, &str)]) -> Result<Framing, u16> {
        request(&facts(fields), &Method::POST, b"/", Version::HTTP_11)
            .map_err(|r| r.status.as_u16())
    }

    #[test]
    fn request_framing_one_rule_each() {
        assert_eq!(req(&[]), Ok(Framing::None));
        assert_eq!(req(&[("Content-Length", "5")]), Ok(Framing::Length(5)));
        assert_eq!(
            req(&[("Transfer-Encoding", "Chunked")]),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            req(&[("Content-Length", "5"), ("Transfer-Encoding", "chunked")]),
            Err(400)
        );
        assert_eq!(
            req(&[("Transfer-Encoding", "chunked"), ("Content-Length", "5")]),
            Err(400)
        );
        assert_eq!(
            req(&[("Content-Length", "5"), ("Content-Length", "5")]),
            Err(400)
        );
        assert_eq!(
            req(&[("Content-Length", "5"), ("Content-Length", "6")]),
            Err(400)
        );
        assert_eq!(req(&[("Content-Length", "5, 5")]), Err(400));
        assert_eq!(req(&[("Content-Length", "+5")]), Err(400));
        assert_eq!(req(&[("Content-Length", "")]), Err(400));
        assert_eq!(req(&[("Content-Length", "99999999999999999999")]), Err(400));
        assert_eq!(req(&[("Transfer-Encoding", "gzip")]), Err(501));
        assert_eq!(req(&[("Transfer-Encoding", "gzip, chunked")]), Err(501));
        assert_eq!(req(&[("Transfer-Encoding", "chunked, chunked")]), Err(501));
        assert_eq!(
            req(&[
                ("Transfer-Encoding", "chunked"),
                ("Transfer-Encoding", "chunked")
            ]),
            Err(501)
        );
        assert_eq!(req(&[("Expect", "100-continue")]), Ok(Framing::None));
        assert_eq!(req(&[("Expect", "something-else")]), Err(417));
        let f = facts(&[("Transfer-Encoding", "chunked")]);
        assert_eq!(
            request(&f, &Method::POST, b"/", Version::HTTP_10).map_err(|r| r.status.as_u16()),
            Err(400)
        );
        let none = Facts::default();
        assert!(request(&none, &Method::GET, b"*", Version::HTTP_11).is_err());
        assert!(request(&none, &Method::OPTIONS, b"*", Version::HTTP_11).is_ok());
    }

    fn ans(
        status: u16,
        method: Method,
        fields: &[(&str, &str)],
    ) -> Result<(Framing, bool), &'static str> {
        answer(&facts(fields), status, Version::HTTP_11, &method)
    }

    #[test]
    fn answer_framing_and_reuse() {
        assert_eq!(
            ans(200, Method::GET, &[("Content-Length", "2")]),
            Ok((Framing::Length(2), true))
        );
        assert_eq!(ans(200, Method::GET, &[]), Ok((Framing::Close, false)));
        assert_eq!(
            ans(200, Method::GET, &[("transfer-encoding", "chunked")]),
            Ok((Framing::Chunked, true))
        );
        assert!(ans(200, Method::GET, &[("Content-Length", "2, 2")]).is_err());
        assert!(ans(
            200,
            Method::GET,
            &[("Content-Length", "2"), ("Content-Length", "2")]
        )
        .is_err());
        assert!(ans(
            200,
            Method::GET,
            &[("Content-Length", "2"), ("Transfer-Encoding", "chunked")]
        )
        .is_err());
        assert!(ans(200, Method::GET, &[("Transfer-Encoding", "gzip, chunked")]).is_err());
        assert!(answer(
            &facts(&[("Transfer-Encoding", "chunked")]),
            200,
            Version::HTTP_10,
            &Method::GET
        )
        .is_err());
        // Bodiless by method or status; a declared body ends the connection.
        assert_eq!(
            ans(200, Method::HEAD, &[("Content-Length", "100")]),
            Ok((Framing::None, false))
        );
        assert_eq!(
            ans(200, Method::HEAD, &[("Content-Length", "0")]),
            Ok((Framing::None, true))
        );
        assert_eq!(
            ans(204, Method::GET, &[("Content-Length", "7")]),
            Ok((Framing::None, false))
        );
        assert_eq!(ans(204, Method::GET, &[]), Ok((Framing::None, true)));
        assert_eq!(
            ans(304, Method::GET, &[("Content-Length", "7")]),
            Ok((Framing::None, false))
        );
        assert_eq!(
            ans(103, Method::GET, &[("Content-Length", "7")]),
            Ok((Framing::None, false))
        );
        assert_eq!(
            ans(200, Method::HEAD, &[("Transfer-Encoding", "chunked")]),
            Ok((Framing::None, false))
        );
        assert_eq!(
            ans(101, Method::GET, &[("Upgrade", "websocket")]),
            Ok((Framing::Tunnel, false))
        );
        assert_eq!(
            ans(
                200,
                Method::GET,
                &[("Connection", "close"), ("Content-Length", "0")]
            ),
            Ok((Framing::Length(0), false))
        );
        let f = facts(&[("Connection", "keep-alive"), ("Content-Length", "0")]);
        assert_eq!(
            answer(&f, 200, Version::HTTP_10, &Method::GET),
            Ok((Framing::Length(0), true))
        );
        let f = facts(&[("Content-Length", "0")]);
        assert_eq!(
            answer(&f, 200, Version::HTTP_10, &Method::GET),
            Ok((Framing::Length(0), false))
        );
    }
}
