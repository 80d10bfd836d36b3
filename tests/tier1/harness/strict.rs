//! An HTTP/1.1 message parser written for the tests alone, independent of
//! httparse and of edge's code, and strict: RFC 9112's grammar exactly, CRLF
//! only, no obsolete folding, one Content-Length or `Transfer-Encoding:
//! chunked` and never both. The corpus tests check that what an upstream
//! received (or a client) parses with it to exactly one message, consuming
//! every byte: that edge sent one clean message, the one it meant.

/// One message as this parser read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `METHOD target` of a request, or the status code of an answer.
    pub start: String,
    pub fields: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Message {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn vchar_or_ws(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b == b' ' || b == b'\t' || b >= 0x80
}

/// Splits one CRLF-terminated line off the front; a bare CR or LF is an error.
fn line(input: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let end = input
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or("no CRLF")?;
    let l = &input[..end];
    if l.contains(&b'\r') || l.contains(&b'\n') {
        return Err(format!("bare CR or LF in {:?}", String::from_utf8_lossy(l)));
    }
    Ok((l, &input[end + 2..]))
}

/// Field lines, as name and value.
type Fields = Vec<(String, String)>;

fn fields(mut rest: &[u8]) -> Result<(Fields, &[u8]), String> {
    let mut out = Vec::new();
    loop {
        let (l, r) = line(rest)?;
        rest = r;
        if l.is_empty() {
            return Ok((out, rest));
        }
        if l[0] == b' ' || l[0] == b'\t' {
            return Err("obsolete line folding".into());
        }
        let colon = l
            .iter()
            .position(|&b| b == b':')
            .ok_or("field without colon")?;
        let (name, value) = (&l[..colon], &l[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| tchar(b)) {
            return Err(format!(
                "bad field name {:?}",
                String::from_utf8_lossy(name)
            ));
        }
        let value = value.trim_ascii();
        if !value.iter().all(|&b| vchar_or_ws(b)) {
            return Err(format!(
                "bad field value {:?}",
                String::from_utf8_lossy(value)
            ));
        }
        out.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
}

fn body<'a>(
    fs: &[(String, String)],
    rest: &'a [u8],
    bodiless: bool,
) -> Result<(Vec<u8>, &'a [u8]), String> {
    let get = |n: &str| -> Vec<&str> {
        fs.iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let (cl, te) = (get("content-length"), get("transfer-encoding"));
    if !cl.is_empty() && !te.is_empty() {
        return Err("both Content-Length and Transfer-Encoding".into());
    }
    if cl.len() > 1 || te.len() > 1 {
        return Err("a framing field twice".into());
    }
    if bodiless {
        return Ok((Vec::new(), rest));
    }
    if let Some(te) = te.first() {
        if !te.eq_ignore_ascii_case("chunked") {
            return Err(format!("transfer coding {te:?}"));
        }
        let mut rest = rest;
        let mut out = Vec::new();
        loop {
            let (l, r) = line(rest)?;
            let size = l.split(|&b| b == b';').next().unwrap_or(b"");
            if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
                return Err(format!("bad chunk size {:?}", String::from_utf8_lossy(l)));
            }
            let n = usize::from_str_radix(std::str::from_utf8(size).unwrap(), 16).unwrap();
            rest = r;
            if n == 0 {
                let (_, r) = fields(rest)?;
                return Ok((out, r));
            }
            if rest.len() < n + 2 || &rest[n..n + 2] != b"\r\n" {
                return Err("chunk data not followed by CRLF".into());
            }
            out.extend_from_slice(&rest[..n]);
            rest = &rest[n + 2..];
        }
    }
    match cl.first() {
        Some(v) => {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("bad Content-Length {v:?}"));
            }
            let n: usize = v.parse().map_err(|_| "Content-Length too large")?;
            if rest.len() < n {
                return Err("body shorter than Content-Length".into());
            }
            Ok((rest[..n].to_vec(), &rest[n..]))
        }
        None => Ok((Vec::new(), rest)),
    }
}

/// Parses `input` as exactly one request, every byte of it.
pub fn request(input: &[u8]) -> Result<Message, String> {
    let (l, rest) = line(input)?;
    let parts: Vec<&[u8]> = l.split(|&b| b == b' ').collect();
    if parts.len() != 3 || parts[2] != b"HTTP/1.1" {
        return Err(format!("bad request line {:?}", String::from_utf8_lossy(l)));
    }
    if parts[0].is_empty() || !parts[0].iter().all(|&b| tchar(b)) {
        return Err("bad method".into());
    }
    if parts[1].is_empty() || !parts[1].iter().all(|&b| (0x21..=0x7e).contains(&b)) {
        return Err("bad target".into());
    }
    let (fs, rest) = fields(rest)?;
    if fs
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("host"))
        .count()
        != 1
    {
        return Err("not exactly one Host".into());
    }
    let (b, rest) = body(&fs, rest, false)?;
    if !rest.is_empty() {
        return Err(format!(
            "{} bytes after the request: {:?}",
            rest.len(),
            String::from_utf8_lossy(rest)
        ));
    }
    Ok(Message {
        start: format!(
            "{} {}",
            String::from_utf8_lossy(parts[0]),
            String::from_utf8_lossy(parts[1])
        ),
        fields: fs,
        body: b,
    })
}

/// Parses `input` as exactly one answer to a request of `method`, every
/// byte of it (an answer without a length runs to the end).
pub fn answer(input: &[u8], method: &str) -> Result<Message, String> {
    let (l, rest) = line(input)?;
    if !l.starts_with(b"HTTP/1.1 ") || l.len() < 12 || !l[9..12].iter().all(u8::is_ascii_digit) {
        return Err(format!("bad status line {:?}", String::from_utf8_lossy(l)));
    }
    let status = String::from_utf8_lossy(&l[9..12]).into_owned();
    let (fs, rest) = fields(rest)?;
    let code: u16 = status.parse().unwrap();
    let bodiless = method == "HEAD" || code < 200 || code == 204 || code == 304;
    let framed = fs.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    });
    let (b, rest) = if !bodiless && !framed {
        (rest.to_vec(), &rest[rest.len()..])
    } else {
        body(&fs, rest, bodiless)?
    };
    if !rest.is_empty() {
        return Err(format!("{} bytes after the answer", rest.len()));
    }
    Ok(Message {
        start: status,
        fields: fs,
        body: b,
    })
}

#[test]
fn the_strict_parser_is_strict() {
    assert!(request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
    for bad in [
        &b"GET / HTTP/1.1\nHost: a\n\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nabc",
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert!(request(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    let m = request(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n0\r\nT: 1\r\n\r\n").unwrap();
    assert_eq!(m.body, b"abc");
}
