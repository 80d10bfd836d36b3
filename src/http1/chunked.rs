//! Decoding a chunked response body (RFC 9112 §7.1) from an upstream's read buffer.
//!
//! Kept apart from the socket so every malformed input can be tested byte by
//! byte. It is strict where leniency lets two parsers disagree about where a
//! message ends (the root of response splitting): sizes are hex digits only and
//! bounded, every line ends in CRLF, and the size line and trailers are capped.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// A chunk-size line, extensions included, longer than this is refused.
const MAX_SIZE_LINE: usize = 4096;
/// The trailer section, all fields together.
const MAX_TRAILERS: usize = 16 * 1024;
const MAX_TRAILER_FIELDS: usize = 64;

#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The buffer ends mid-element: read more and call again.
    More,
    Data(Bytes),
    /// The body is complete; its trailer fields, if it had any.
    End(Option<HeaderMap>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    /// In the trailer section; the bytes of its lines checked so far.
    Trailers(usize),
    Done,
}

#[derive(Debug)]
pub struct Decoder(State);

impl Default for Decoder {
    fn default() -> Self {
        Decoder(State::Size)
    }
}

impl Decoder {
    /// Consumes what it can from `buf`. Data is handed out as soon as any of
    /// it is buffered, so a streamed response is not held back to chunk size.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, &'static str> {
        loop {
            match self.0 {
                State::Size => {
                    let Some(eol) = line_end(buf)? else {
                        if buf.len() > MAX_SIZE_LINE {
                            return Err("chunk size line too long");
                        }
                        return Ok(Step::More);
                    };
                    if eol > MAX_SIZE_LINE {
                        return Err("chunk size line too long");
                    }
                    let size = parse_size(&buf[..eol])?;
                    buf.advance(eol + 2);
                    self.0 = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = left.min(buf.len() as u64) as usize;
                    let data = super::client::take(buf, n);
                    self.0 = if n as u64 == left {
                        State::DataEnd
                    } else {
                        State::Data(left - n as u64)
                    };
                    return Ok(Step::Data(data));
                }
                State::DataEnd => {
                    if buf.len() < 2 && buf.first().is_none_or(|&b| b == b'\r') {
                        return Ok(Step::More);
                    }
                    if buf.len() < 2 || &buf[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF");
                    }
                    buf.advance(2);
                    self.0 = State::Size;
                }
                State::Trailers(mut at) => {
                    // Line by line, CRLF only, each field checked as it
                    // completes, so the section ends where every strict
                    // reader says it does: a bare LF is an error, not a line
                    // end another parser may not see.
                    loop {
                        let Some(eol) = line_end(&buf[at..])? else {
                            if buf.len() > MAX_TRAILERS {
                                return Err("trailer section too large");
                            }
                            self.0 = State::Trailers(at);
                            return Ok(Step::More);
                        };
                        if at + eol > MAX_TRAILERS {
                            return Err("trailer section too large");
                        }
                        if eol == 0 {
                            break;
                        }
                        trailer(&buf[at..at + eol])?;
                        at += eol + 2;
                    }
                    let trailers = if at == 0 {
                        None
                    } else {
                        let mut map = HeaderMap::new();
                        for l in buf[..at].split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                            let (name, value) = trailer(&l[..l.len() - 1])?;
                            map.append(name, value);
                            if map.len() > MAX_TRAILER_FIELDS {
                                return Err("too many trailer fields");
                            }
                        }
                        Some(map)
                    };
                    buf.advance(at + 2);
                    self.0 = State::Done;
                    return Ok(Step::End(trailers));
                }
                State::Done => return Ok(Step::End(None)),
            }
        }
    }
}

/// Where the line at the front of `buf` ends (its CRLF), `None` while no
/// CRLF has come, or an error for a CR or LF that is not part of one.
fn line_end(buf: &[u8]) -> Result<Option<usize>, &'static str> {
    let Some(i) = buf.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return Ok(None);
    };
    match (buf[i], buf.get(i + 1)) {
        (b'\r', Some(b'\n')) => Ok(Some(i)),
        (b'\r', None) => Ok(None),
        _ => Err("a bare CR or LF in a chunked body's lines"),
    }
}

/// `1*HEXDIG [ BWS ";" extensions ]`; extensions are ignored, as every proxy does.
fn parse_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let rest = &line[digits..];
    // Extensions are read past, not parsed; they hold no control byte but
    // tab, so no reader can find a line end or anything else inside them.
    let rest_ok = rest.is_empty()
        || (rest
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t'))
            .is_some_and(|i| rest[i] == b';')
            && rest.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)));
    if digits == 0 || !rest_ok {
        return Err("invalid chunk size");
    }
    if digits > 16 {
        return Err("chunk size too large");
    }
    let mut n: u64 = 0;
    for b in &line[..digits] {
        let d = (*b as char).to_digit(16).unwrap_or(0) as u64;
        n = n
            .checked_mul(16)
            .and_then(|n| n.checked_add(d))
            .ok_or("chunk size too large")?;
    }
    Ok(n)
}

/// One trailer field line, CRLF taken off: `token ":" OWS value OWS`.
fn trailer(line: &[u8]) -> Result<(HeaderName, HeaderValue), &'static str> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or("a trailer line without a colon")?;
    let name = HeaderName::from_bytes(&line[..colon]).map_err(|_| "invalid trailer name")?;
    let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii())
        .map_err(|_| "invalid trailer value")?;
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `piece` bytes; returns the body, trailers.
    fn decode(input: &[u8], piece: usize) -> Result<(Vec<u8>, Option<HeaderMap>), &'static str> {
        let mut d = Decoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match d.step(&mut buf)? {
                Step::More => {
                    if fed == input.len() {
                        return Err("ran out of input");
                    }
                    let end = (fed + piece).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
                Step::Data(b) => body.extend_from_slice(&b),
                Step::End(t) => {
                    assert!(buf.is_empty(), "left over: {buf:?}");
                    return Ok((body, t));
                }
            }
        }
    }

    #[test]
    fn decodes_in_any_split_with_extensions_and_trailers() {
        let input = b"5\r\nhello\r\n7 ;ext=\"a\"\r\n, world\r\nA\r\n0123456789\r\n0\r\nx-sum: 42\r\nx-b: c\r\n\r\n";
        for piece in [1, 2, 3, 7, input.len()] {
            let (body, trailers) = decode(input, piece).unwrap();
            assert_eq!(body, b"hello, world0123456789", "piece {piece}");
            let t = trailers.unwrap();
            assert_eq!(t["x-sum"], "42");
            assert_eq!(t["x-b"], "c");
        }
        let (body, trailers) = decode(b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!(body, b"abc");
        assert!(trailers.is_none());
    }

    #[test]
    fn refuses_what_could_be_read_two_ways() {
        for (input, why) in [
            (&b"x\r\nabc\r\n0\r\n\r\n"[..], "not hex"),
            (b"\r\nabc\r\n0\r\n\r\n", "empty size"),
            (b"-3\r\nabc\r\n0\r\n\r\n", "sign"),
            (b"0x3\r\nabc\r\n0\r\n\r\n", "0x prefix"),
            (b"3 junk\r\nabc\r\n0\r\n\r\n", "junk after size"),
            (b"3\nabc\r\n0\r\n\r\n", "bare LF after size"),
            (b"3\r\nabcX\r\n0\r\n\r\n", "data longer than size"),
            (b"3\r\nabc\n0\r\n\r\n", "bare LF after data"),
            (b"10000000000000000\r\n", "size over 64 bits"),
            (b"00000000000000001\r\na\r\n0\r\n\r\n", "17 digits"),
            (b"0\r\nbad header\r\n\r\n", "bad trailer"),
        ] {
            assert!(decode(input, 1).is_err(), "{why}: accepted");
            assert!(decode(input, input.len()).is_err(), "{why}: accepted whole");
        }
    }

    #[test]
    fn caps_the_size_line_and_the_trailers() {
        let mut long_ext = b"3;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'a', MAX_SIZE_LINE + 10));
        assert_eq!(
            decode(&long_ext, 64).unwrap_err(),
            "chunk size line too long",
            "an endless size line must fail before the end of input"
        );
        let mut big = b"0\r\n".to_vec();
        for i in 0..2000 {
            big.extend_from_slice(format!("x-{i}: {}\r\n", "v".repeat(20)).as_bytes());
        }
        assert_eq!(decode(&big, 512).unwrap_err(), "trailer section too large");
    }

    #[test]
    fn a_chunk_as_large_as_u64_allows_is_counted_not_buffered() {
        let mut d = Decoder::default();
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nabc"[..]);
        assert_eq!(
            d.step(&mut buf).unwrap(),
            Step::Data(Bytes::from_static(b"abc"))
        );
        assert_eq!(d.0, State::Data(u64::MAX - 3));
        assert_eq!(d.step(&mut buf).unwrap(), Step::More);
    }
}
