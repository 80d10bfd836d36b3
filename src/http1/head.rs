//! Reading an HTTP/1 head, request or answer, with httparse underneath. The
//! head stays in its buffer: what is returned is where each part lies, so
//! the caller keeps values as slices of one shared copy (or writes them out
//! again) without an allocation per field.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use http::Version;

/// Fields in one head, at most: more is 431 for a request and a bad answer
/// from an upstream (hyper's limit, and nginx's is about the same in bytes).
pub const MAX_FIELDS: usize = 100;

thread_local! {
    /// The field list of a head whose reader keeps nothing between heads
    /// (an upstream's answer, a request on the redirect listener): one per
    /// thread, borrowed for one synchronous read, so that such a head costs
    /// no allocation for its list.
    static SCRATCH: RefCell<Vec<Field>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with the thread's scratch field list. `f` must not call this
/// again: the list is borrowed for the call.
pub fn with_scratch<R>(f: impl FnOnce(&mut Vec<Field>) -> R) -> R {
    SCRATCH.with_borrow_mut(f)
}

/// Where a part of the head lies in its buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub at: usize,
    pub len: usize,
}

impl Span {
    fn of(base: &[u8], part: &[u8]) -> Span {
        Span {
            at: part.as_ptr() as usize - base.as_ptr() as usize,
            len: part.len(),
        }
    }

    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.at..self.at + self.len]
    }
}

/// One field line: its name as written (any case) and its value.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: Span,
    pub value: Span,
}

/// Why a head cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("head larger than the limit")]
    TooLarge,
    #[error("more than 100 header fields")]
    TooManyFields,
    #[error("malformed head")]
    Malformed,
}

/// A request line and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The head's length, its empty line included.
    pub len: usize,
    pub method: Span,
    pub target: Span,
    pub version: Version,
}

/// A status line and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub version: Version,
}

fn version(minor: Option<u8>) -> Version {
    match minor {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    }
}

/// Reads one request head off `io` into `buf`, for the small servers that
/// answer one request per connection (the metrics listener, the stand-in
/// ACME answerer): `Ok(None)` when the peer closes first, `Ok(Some(Err))`
/// for a head that cannot be read.
pub async fn read_one<R: tokio::io::AsyncRead + Unpin>(
    io: &mut R,
    max: usize,
    buf: &mut Vec<u8>,
    fields: &mut Vec<Field>,
) -> std::io::Result<Option<Result<RequestHead, HeadError>>> {
    use tokio::io::AsyncReadExt;
    loop {
        match request(buf, max, fields) {
            Ok(Some(h)) => return Ok(Some(Ok(h))),
            Ok(None) => {}
            Err(e) => return Ok(Some(Err(e))),
        }
        let mut chunk = [0u8; 1024];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Parses the request head at the front of `buf`: `Ok(None)` while it is
/// incomplete and under `max` bytes. `fields` is filled (and first cleared).
/// httparse is strict where leniency lets two parsers disagree: a field line
/// must end in CRLF (or LF), names are tokens, values carry no control
/// character but tab, obsolete line folding is refused.
pub fn request(
    buf: &[u8],
    max: usize,
    fields: &mut Vec<Field>,
) -> Result<Option<RequestHead>, HeadError> {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_FIELDS] =
        [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) if n <= max => n,
        Ok(httparse::Status::Complete(_)) => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) if buf.len() < max => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(HeadError::TooLarge),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyFields),
        Err(_) => return Err(HeadError::Malformed),
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(HeadError::Malformed);
    };
    fields.clear();
    for f in req.headers.iter() {
        fields.push(Field {
            name: Span::of(buf, f.name.as_bytes()),
            value: Span::of(buf, f.value),
        });
    }
    Ok(Some(RequestHead {
        len,
        method: Span::of(buf, method.as_bytes()),
        target: Span::of(buf, target.as_bytes()),
        version: version(req.version),
    }))
}

/// Parses the answer head at the front of `buf`, as [`request`] does.
pub fn response(
    buf: &[u8],
    max: usize,
    fields: &mut Vec<Field>,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_FIELDS] =
        [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) if n <= max => n,
        Ok(httparse::Status::Complete(_)) => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) if buf.len() <= max => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(HeadError::TooLarge),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyFields),
        Err(_) => return Err(HeadError::Malformed),
    };
    let status = resp
        .code
        .filter(|c| (100..=999).contains(c))
        .ok_or(HeadError::Malformed)?;
    fields.clear();
    for f in resp.headers.iter() {
        fields.push(Field {
            name: Span::of(buf, f.name.as_bytes()),
            value: Span::of(buf, f.value),
        });
    }
    Ok(Some(ResponseHead {
        len,
        status,
        version: version(resp.version),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_point_into_the_buffer() {
        let buf = b"GET /a?b HTTP/1.1\r\nHost: x\r\nX-A:  v w \r\n\r\nrest";
        let mut fields = Vec::new();
        let h = request(buf, 1024, &mut fields).unwrap().unwrap();
        assert_eq!(h.len, buf.len() - 4);
        assert_eq!(h.method.get(buf), b"GET");
        assert_eq!(h.target.get(buf), b"/a?b");
        assert_eq!(h.version, Version::HTTP_11);
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[1].name.get(buf), b"X-A");
        // httparse trims the value's surrounding whitespace.
        assert_eq!(fields[1].value.get(buf), b"v w");
    }

    #[test]
    fn limits_and_malformed_heads() {
        let mut f = Vec::new();
        assert_eq!(request(b"GET / HTTP/1.1\r\nHost", 1024, &mut f), Ok(None));
        assert_eq!(
            request(b"GET / HTTP/1.1\r\nHost: x", 10, &mut f).unwrap_err(),
            HeadError::TooLarge
        );
        assert_eq!(
            request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 10, &mut f).unwrap_err(),
            HeadError::TooLarge
        );
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            request(many.as_bytes(), 65536, &mut f).unwrap_err(),
            HeadError::TooManyFields
        );
        for bad in [
            &b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert_eq!(
                request(bad, 65536, &mut f).map(|h| h.map(|h| h.len)),
                Err(HeadError::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            response(
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n",
                1024,
                &mut f
            )
            .unwrap()
            .unwrap()
            .status,
            200
        );
        assert_eq!(
            response(b"HELLO\r\n\r\n", 1024, &mut f).unwrap_err(),
            HeadError::Malformed
        );
    }
}
