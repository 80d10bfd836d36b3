//! A corpus of request and answer heads through edge: well-formed ones, and
//! the request-smuggling literature (CL.TE, TE.CL, TE.TE obfuscations, bare
//! LF, obsolete folding, NUL and CR in values, huge chunk sizes, the cases
//! of issue 25). For each, edge's decision (forwarded, or which status), and
//! that what the upstream received (or the client, for answers) parses with
//! an independent strict parser (`harness::strict`) to exactly the one
//! message edge meant.

use tokio::io::AsyncWriteExt;

use crate::harness::strict;
use crate::harness::*;

const HOST: &str = "app.example.test";

/// What edge must do with a request.
#[derive(Debug, Clone)]
enum Want {
    /// Forwarded: the upstream gets exactly this request line and body.
    Forward { start: String, body: Vec<u8> },
    /// Refused with this status, the upstream sees nothing.
    Status(u16),
}

struct Case {
    name: String,
    bytes: Vec<u8>,
    want: Want,
}

fn case(name: impl Into<String>, bytes: impl Into<Vec<u8>>, want: Want) -> Case {
    Case {
        name: name.into(),
        bytes: bytes.into(),
        want,
    }
}

fn fwd(start: &str, body: &[u8]) -> Want {
    Want::Forward {
        start: start.into(),
        body: body.to_vec(),
    }
}

fn head(method: &str, target: &str, lines: &[&str]) -> String {
    let mut h = format!("{method} {target} HTTP/1.1\r\nHost: {HOST}\r\n");
    for l in lines {
        h.push_str(l);
        h.push_str("\r\n");
    }
    h.push_str("\r\n");
    h
}

/// The request corpus.
fn requests() -> Vec<Case> {
    let mut v = Vec::new();
    // Well-formed: methods x targets x bodies.
    // Name, field lines, body as sent, body as the upstream must get it.
    type Body<'a> = (&'a str, &'a [&'a str], &'a [u8], &'a [u8]);
    let bodies: [Body; 5] = [
        ("none", &[], b"", b""),
        ("length", &["Content-Length: 5"], b"hello", b"hello"),
        ("length 0", &["Content-Length: 0"], b"", b""),
        (
            "chunked",
            &["Transfer-Encoding: chunked"],
            b"2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n",
            b"hello",
        ),
        (
            "chunked with extensions and trailers",
            &["Transfer-Encoding: chunked"],
            b"5;name=value;x\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n",
            b"hello",
        ),
    ];
    for method in ["GET", "HEAD", "DELETE", "OPTIONS", "POST", "PUT", "PATCH"] {
        for target in [
            "/",
            "/a/b?c=d&e",
            "/%7Euser/x",
            "/p;q=1?r",
            "/?",
            "/a/../b/./c",
        ] {
            for (name, lines, body, sent) in bodies {
                let mut bytes = head(method, target, lines).into_bytes();
                bytes.extend_from_slice(body);
                v.push(case(
                    format!("{method} {target} body {name}"),
                    bytes,
                    fwd(&format!("{method} {target}"), sent),
                ));
            }
        }
    }
    // Absolute form: the path goes on; its authority stands for Host.
    v.push(case(
        "absolute form",
        format!("GET http://{HOST}/x?y HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
        fwd("GET /x?y", b""),
    ));
    v.push(case(
        "absolute form for another host",
        format!("GET http://other.test/x HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
        Want::Status(421),
    ));
    // CL.TE and TE.CL, with every TE obfuscation: 400, whatever the order.
    let obfuscated = [
        "chunked",
        "Chunked",
        "CHUNKED",
        " chunked",
        "chunked ",
        "\tchunked",
        "xchunked",
        "chunked, identity",
        "identity, chunked",
        "chunked;q=1",
        "chunk",
        "",
    ];
    for te in obfuscated {
        v.push(case(
            format!("CL.TE {te:?}"),
            format!(
                "{}0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {HOST}\r\n\r\n",
                head(
                    "POST",
                    "/clte",
                    &["Content-Length: 6", &format!("Transfer-Encoding: {te}")]
                )
            ),
            Want::Status(400),
        ));
        v.push(case(
            format!("TE.CL {te:?}"),
            format!(
                "{}0\r\n\r\n",
                head(
                    "POST",
                    "/tecl",
                    &[&format!("Transfer-Encoding: {te}"), "Content-Length: 3"]
                )
            ),
            Want::Status(400),
        ));
    }
    // TE alone: exactly chunked (whatever the case and the space around it)
    // is chunked; anything else 501.
    for (te, want) in [
        ("chunked", fwd("POST /te", b"hi")),
        ("Chunked", fwd("POST /te", b"hi")),
        ("CHUNKED", fwd("POST /te", b"hi")),
        (" chunked", fwd("POST /te", b"hi")),
        ("chunked ", fwd("POST /te", b"hi")),
        ("\tchunked", fwd("POST /te", b"hi")),
        ("xchunked", Want::Status(501)),
        ("chunked, identity", Want::Status(501)),
        ("identity, chunked", Want::Status(501)),
        ("identity", Want::Status(501)),
        ("gzip", Want::Status(501)),
        ("gzip, chunked", Want::Status(501)),
        ("chunked, chunked", Want::Status(501)),
        ("chunk", Want::Status(501)),
        ("", Want::Status(501)),
        ("chunked;q=1", Want::Status(501)),
    ] {
        v.push(case(
            format!("TE {te:?}"),
            format!(
                "{}2\r\nhi\r\n0\r\n\r\n",
                head("POST", "/te", &[&format!("Transfer-Encoding: {te}")])
            ),
            want,
        ));
    }
    v.push(case(
        "TE twice",
        format!(
            "{}0\r\n\r\n",
            head(
                "POST",
                "/te",
                &["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"]
            )
        ),
        Want::Status(501),
    ));
    v.push(case(
        "TE with a space before the colon",
        format!(
            "{}0\r\n\r\n",
            head("POST", "/te", &["Transfer-Encoding : chunked"])
        ),
        Want::Status(400),
    ));
    v.push(case(
        "TE with a vertical tab",
        format!(
            "{}0\r\n\r\n",
            head("POST", "/te", &["Transfer-Encoding: \x0bchunked"])
        ),
        Want::Status(400),
    ));
    v.push(case(
        "TE on HTTP/1.0",
        format!("POST /te HTTP/1.0\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        Want::Status(400),
    ));
    // Content-Length: digits only, once.
    for (cl, want) in [
        ("5", fwd("POST /cl", b"hello")),
        ("05", fwd("POST /cl", b"hello")),
        ("0005", fwd("POST /cl", b"hello")),
        (" 5", fwd("POST /cl", b"hello")),
        ("5 ", fwd("POST /cl", b"hello")),
        ("+5", Want::Status(400)),
        ("-5", Want::Status(400)),
        ("5,5", Want::Status(400)),
        ("5, 5", Want::Status(400)),
        ("5, 6", Want::Status(400)),
        ("", Want::Status(400)),
        ("0x5", Want::Status(400)),
        ("5.0", Want::Status(400)),
        ("5e0", Want::Status(400)),
        ("five", Want::Status(400)),
        ("99999999999999999999", Want::Status(400)),
        ("18446744073709551616", Want::Status(400)),
    ] {
        v.push(case(
            format!("Content-Length {cl:?}"),
            format!(
                "{}hello",
                head("POST", "/cl", &[&format!("Content-Length: {cl}")])
            ),
            want,
        ));
    }
    for (name, lines) in [
        (
            "the same length twice",
            ["Content-Length: 5", "Content-Length: 5"],
        ),
        ("two lengths", ["Content-Length: 5", "Content-Length: 6"]),
        (
            "two lengths the other way",
            ["Content-Length: 6", "Content-Length: 5"],
        ),
        (
            "a length and an empty one",
            ["Content-Length: 5", "Content-Length: "],
        ),
    ] {
        v.push(case(
            name,
            format!("{}hello!", head("POST", "/cl", &lines)),
            Want::Status(400),
        ));
    }
    // Bare LF line endings are read (as nginx reads them); edge writes CRLF.
    v.push(case(
        "bare LF throughout",
        format!("GET /lf HTTP/1.1\nHost: {HOST}\nX-A: 1\n\n"),
        fwd("GET /lf", b""),
    ));
    v.push(case(
        "bare LF with a body",
        format!("POST /lf HTTP/1.1\nHost: {HOST}\nContent-Length: 2\n\nhi"),
        fwd("POST /lf", b"hi"),
    ));
    v.push(case(
        "bare LF ending a CRLF head",
        format!("GET /lf HTTP/1.1\r\nHost: {HOST}\r\n\n"),
        fwd("GET /lf", b""),
    ));
    // Obsolete folding, control characters, bad names and lines: 400.
    for (name, line) in [
        ("obs-fold", "X-A: a\r\n b"),
        ("obs-fold with a tab", "X-A: a\r\n\tb"),
        ("NUL in a value", "X-A: a\x00b"),
        ("CR in a value", "X-A: a\rb"),
        ("DEL in a value", "X-A: a\x7fb"),
        ("SOH in a value", "X-A: a\x01b"),
        ("ESC in a value", "X-A: \x1b[31m"),
        ("a space in a name", "X A: 1"),
        ("an empty name", ": 1"),
        ("no colon", "X-A 1"),
        ("a name with a quote", "X\"A: 1"),
        ("a name with a slash", "X/A: 1"),
        ("a name with a colon inside", "X:A:1 x"),
    ] {
        let want = if name == "a name with a colon inside" {
            fwd("GET /bad", b"")
        } else {
            Want::Status(400)
        };
        v.push(case(name, head("GET", "/bad", &[line]), want));
    }
    // Huge and broken chunk sizes.
    for (name, body, want) in [
        ("17 hex digits", "00000000000000001\r\na\r\n0\r\n\r\n", 400),
        (
            "20 hex digits",
            "fffffffffffffffffff\r\na\r\n0\r\n\r\n",
            400,
        ),
        ("a signed size", "-5\r\nhello\r\n0\r\n\r\n", 400),
        ("a 0x size", "0x5\r\nhello\r\n0\r\n\r\n", 400),
        ("a size with space", "5 \r\nhello\r\n0\r\n\r\n", 400),
        ("a size with bare LF", "5\nhello\r\n0\r\n\r\n", 400),
        ("data longer than its size", "3\r\nhello\r\n0\r\n\r\n", 400),
        ("no size", "\r\nhello\r\n0\r\n\r\n", 400),
        (
            "a bare LF in an extension",
            "5;a\nb\r\nhello\r\n0\r\n\r\n",
            400,
        ),
        (
            "a NUL in an extension",
            "5;a\x00b\r\nhello\r\n0\r\n\r\n",
            400,
        ),
        ("a bare CR after the data", "5\r\nhello\r0\r\n\r\n", 400),
        (
            "a bare LF ending the trailers, hiding a request",
            "0\r\nX: a\n\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
        ),
        ("a bare LF ending the last chunk", "2\r\nhi\r\n0\n\r\n", 400),
        ("a trailer without a colon", "0\r\nX-Sum 5\r\n\r\n", 400),
        ("a folded trailer", "0\r\nX-Sum: 5\r\n 6\r\n\r\n", 400),
    ] {
        v.push(case(
            format!("chunked: {name}"),
            format!(
                "{}{body}",
                head("POST", "/chunk", &["Transfer-Encoding: chunked"])
            ),
            Want::Status(want),
        ));
    }
    v.push(case(
        "16 hex digits: more than max_body_bytes once counted",
        format!(
            "{}ffffffffffffffff\r\n{}",
            head("POST", "/chunk", &["Transfer-Encoding: chunked"]),
            "a".repeat(17 << 20)
        ),
        Want::Status(413),
    ));
    // Targets, versions, methods, Host.
    for (name, bytes, want) in [
        (
            "GET *",
            format!("GET * HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
            Want::Status(400),
        ),
        (
            "HEAD *",
            format!("HEAD * HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
            Want::Status(400),
        ),
        (
            "OPTIONS *",
            format!("OPTIONS * HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
            fwd("OPTIONS *", b""),
        ),
        (
            "CONNECT",
            format!("CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n"),
            Want::Status(405),
        ),
        (
            "HTTP/1.0",
            format!("GET /ten HTTP/1.0\r\nHost: {HOST}\r\n\r\n"),
            fwd("GET /ten", b""),
        ),
        (
            "HTTP/1.2",
            format!("GET / HTTP/1.2\r\nHost: {HOST}\r\n\r\n"),
            Want::Status(400),
        ),
        (
            "HTTP/2.0 line",
            format!("GET / HTTP/2.0\r\nHost: {HOST}\r\n\r\n"),
            Want::Status(400),
        ),
        ("HTTP/0.9", "GET /\r\n\r\n".to_string(), Want::Status(400)),
        (
            "two spaces",
            format!("GET  / HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
            Want::Status(400),
        ),
        (
            "a tab for a space",
            format!("GET\t/ HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
            Want::Status(400),
        ),
        (
            "NUL in the target",
            format!("GET /a\x00b HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
            Want::Status(400),
        ),
        (
            "no Host",
            "GET / HTTP/1.1\r\n\r\n".to_string(),
            Want::Status(400),
        ),
        (
            "two Hosts",
            format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nHost: {HOST}\r\n\r\n"),
            Want::Status(400),
        ),
        (
            "Host with a port",
            format!("GET /p HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n"),
            fwd("GET /p", b""),
        ),
        (
            "Host in capitals",
            format!("GET /c HTTP/1.1\r\nHost: {}\r\n\r\n", HOST.to_uppercase()),
            fwd("GET /c", b""),
        ),
        (
            "Host with a slash",
            "GET / HTTP/1.1\r\nHost: app.example.test/x\r\n\r\n".to_string(),
            Want::Status(400),
        ),
        (
            "Host with a quote",
            "GET / HTTP/1.1\r\nHost: app\"example.test\r\n\r\n".to_string(),
            Want::Status(400),
        ),
        (
            "another host",
            "GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n".to_string(),
            Want::Status(421),
        ),
        (
            "an extension method",
            format!("PURGE /x HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
            fwd("PURGE /x", b""),
        ),
        (
            "Expect 100-continue",
            format!(
                "{}hello",
                head("POST", "/e", &["Content-Length: 5", "Expect: 100-continue"])
            ),
            fwd("POST /e", b"hello"),
        ),
        (
            "Expect else",
            format!(
                "{}hello",
                head("POST", "/e", &["Content-Length: 5", "Expect: 200-ok"])
            ),
            Want::Status(417),
        ),
        (
            "Upgrade h2c",
            head(
                "GET",
                "/u",
                &[
                    "Upgrade: h2c",
                    "Connection: Upgrade, HTTP2-Settings",
                    "HTTP2-Settings: AAMAAABkAAQAAP__",
                ],
            ),
            Want::Status(400),
        ),
        (
            "Upgrade websocket without Connection",
            head("GET", "/u", &["Upgrade: websocket"]),
            Want::Status(400),
        ),
        (
            "a head over max_header_bytes",
            head(
                "GET",
                "/big",
                &[&format!("X-Big: {}", "a".repeat(40 * 1024))],
            ),
            Want::Status(431),
        ),
        (
            "101 fields",
            head(
                "GET",
                "/many",
                &(0..100)
                    .map(|i| format!("X-{i}: v"))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            ),
            Want::Status(431),
        ),
    ] {
        v.push(case(name, bytes, want));
    }
    // Forwarding fields a client cannot forge, hop-by-hop fields it cannot
    // pass, and underscores WSGI would fold: forwarded, without them.
    for (name, line) in [
        ("X-Forwarded-For", "X-Forwarded-For: 6.6.6.6"),
        ("X_Forwarded_For", "X_Forwarded_For: 6.6.6.6"),
        (
            "Connection naming X-Forwarded-For",
            "Connection: X-Forwarded-For",
        ),
        ("Connection naming Host", "Connection: Host"),
        ("Keep-Alive", "Keep-Alive: timeout=5"),
        ("Proxy-Authorization", "Proxy-Authorization: Basic eA=="),
        ("TE trailers", "TE: trailers"),
        ("Trailer", "Trailer: X-Sum"),
        ("Proxy-Connection", "Proxy-Connection: keep-alive"),
    ] {
        v.push(case(
            format!("{name} is not passed on"),
            head("GET", "/h", &[line]),
            fwd("GET /h", b""),
        ));
    }
    v
}

/// Fields a request edge forwards may never carry.
const NEVER: [&str; 10] = [
    "expect",
    "keep-alive",
    "proxy-authorization",
    "te",
    "trailer",
    "proxy-connection",
    "upgrade",
    "x_forwarded_for",
    "transfer-encoding-x",
    "connection-x",
];

#[tokio::test(start_paused = true)]
async fn three_hundred_request_heads_get_the_decision_edge_meant() {
    let cases = requests();
    assert!(cases.len() >= 300, "only {} request cases", cases.len());
    let up = Upstream::start(|_| ok("fine")).await;
    let edge = Edge::start(&site(&[HOST], &[&up.addr()], "max_fails = 0")).await;
    let mut failures = Vec::new();
    for c in &cases {
        let before = up.count();
        let mut conn = tls(edge.https(), HOST).await;
        conn.write_all(&c.bytes).await.unwrap();
        let mut buf = Vec::new();
        let head_req = c.bytes.starts_with(b"HEAD ");
        let answer = within(
            secs(120),
            &c.name,
            read_answer(&mut conn, &mut buf, head_req),
        )
        .await;
        let status = answer.as_ref().map(|a| a.status);
        // Give the upstream's reader its turn.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let seen = up.seen();
        let new = &seen[before..];
        match &c.want {
            Want::Status(s) => {
                if status != Some(*s) {
                    failures.push(format!("{}: got {status:?}, want {s}", c.name));
                } else if !new.is_empty() {
                    failures.push(format!(
                        "{}: refused, yet the upstream saw {:?}",
                        c.name,
                        String::from_utf8_lossy(&new[0].raw)
                    ));
                }
            }
            Want::Forward { start, body } => {
                if status != Some(200) {
                    failures.push(format!("{}: got {status:?}, want 200", c.name));
                    continue;
                }
                if new.len() != 1 {
                    failures.push(format!(
                        "{}: the upstream saw {} requests",
                        c.name,
                        new.len()
                    ));
                    continue;
                }
                match strict::request(&new[0].raw) {
                    Err(e) => failures.push(format!(
                        "{}: not one clean request ({e}): {:?}",
                        c.name,
                        String::from_utf8_lossy(&new[0].raw)
                    )),
                    Ok(m) => {
                        if m.start != *start || m.body != *body {
                            failures.push(format!(
                                "{}: the upstream got {:?} with {:?}",
                                c.name,
                                m.start,
                                String::from_utf8_lossy(&m.body)
                            ));
                        }
                        for f in NEVER {
                            if m.field(f).is_some() {
                                failures.push(format!("{}: {f} was passed on", c.name));
                            }
                        }
                        if m.field("x-forwarded-for") != Some("127.0.0.1") {
                            failures.push(format!(
                                "{}: X-Forwarded-For {:?}",
                                c.name,
                                m.field("x-forwarded-for")
                            ));
                        }
                        if m.field("host")
                            .map(str::to_ascii_lowercase)
                            .as_deref()
                            .map(|h| h.trim_end_matches(":443").to_string())
                            != Some(HOST.to_string())
                        {
                            failures.push(format!("{}: Host {:?}", c.name, m.field("host")));
                        }
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // And edge still serves.
    assert_eq!(get(edge.https(), HOST, "/after").await.status, 200);
}

/// What the client must get for an answer.
#[derive(Debug, Clone)]
enum Got {
    /// This status and body, as one clean answer.
    Pass(u16, Vec<u8>),
    /// 502 from edge.
    BadGateway,
    /// The answer's head went out and the body was cut: the client can tell
    /// only from the connection closing short.
    Cut,
}

struct AnswerCase {
    name: String,
    method: &'static str,
    raw: Vec<u8>,
    got: Got,
}

fn answers() -> Vec<AnswerCase> {
    let mut v = Vec::new();
    let mut add = |name: String, method: &'static str, raw: Vec<u8>, got: Got| {
        v.push(AnswerCase {
            name,
            method,
            raw,
            got,
        })
    };
    let hi = |s: u16| Got::Pass(s, b"hi".to_vec());
    for method in ["GET", "POST"] {
        for (cl, got) in [
            ("2", hi(200)),
            ("02", hi(200)),
            (" 2", hi(200)),
            ("2 ", hi(200)),
            ("+2", Got::BadGateway),
            ("-2", Got::BadGateway),
            ("2,2", Got::BadGateway),
            ("2, 2", Got::BadGateway),
            ("2, 3", Got::BadGateway),
            ("", Got::BadGateway),
            ("0x2", Got::BadGateway),
            ("two", Got::BadGateway),
        ] {
            add(
                format!("{method} Content-Length {cl:?}"),
                method,
                format!("HTTP/1.1 200 OK\r\nContent-Length: {cl}\r\n\r\nhi").into_bytes(),
                got,
            );
        }
        for (name, head) in [
            (
                "the same length twice",
                "Content-Length: 2\r\nContent-Length: 2",
            ),
            ("two lengths", "Content-Length: 2\r\nContent-Length: 3"),
            (
                "CL then TE",
                "Content-Length: 2\r\nTransfer-Encoding: chunked",
            ),
            (
                "TE then CL",
                "Transfer-Encoding: chunked\r\nContent-Length: 2",
            ),
            ("TE gzip, chunked", "Transfer-Encoding: gzip, chunked"),
            ("TE chunked, gzip", "Transfer-Encoding: chunked, gzip"),
            ("TE identity", "Transfer-Encoding: identity"),
            (
                "TE twice",
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            ),
            ("TE xchunked", "Transfer-Encoding: xchunked"),
        ] {
            add(
                format!("{method} {name}"),
                method,
                format!("HTTP/1.1 200 OK\r\n{head}\r\n\r\n2\r\nhi\r\n0\r\n\r\n").into_bytes(),
                Got::BadGateway,
            );
        }
        for (name, raw, got) in [
            ("chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nh\r\n1\r\ni\r\n0\r\n\r\n", hi(200)),
            ("Chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", hi(200)),
            ("chunked with trailers", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nhi\r\n0\r\nX-Sum: 2\r\n\r\n", hi(200)),
            ("HTTP/1.0 with TE", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n", Got::BadGateway),
            ("HTTP/1.0 with a length", "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", hi(200)),
            ("interim answers first", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", hi(200)),
            ("an interim answer with a length", "HTTP/1.1 103 Early Hints\r\nContent-Length: 3\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", hi(200)),
            ("204 declaring a body", "HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n", Got::Pass(204, vec![])),
            ("304 declaring a body", "HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n", Got::Pass(304, vec![])),
            ("201 with a body", "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nhi", hi(201)),
            ("404", "HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nhi", hi(404)),
            ("500", "HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nhi", hi(500)),
            ("no reason phrase", "HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\nhi", hi(200)),
            ("bare LF", "HTTP/1.1 200 OK\nContent-Length: 2\n\nhi", hi(200)),
            ("obs-fold", "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nhi", Got::BadGateway),
            ("NUL in a value", "HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nhi", Got::BadGateway),
            ("CR in a value", "HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nhi", Got::BadGateway),
            ("a space in a name", "HTTP/1.1 200 OK\r\nX A: 1\r\nContent-Length: 2\r\n\r\nhi", Got::BadGateway),
            ("status 099", "HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nhi", Got::BadGateway),
            ("status 1000", "HTTP/1.1 1000 Odd\r\nContent-Length: 2\r\n\r\nhi", Got::BadGateway),
            ("HTTP/2 status line", "HTTP/2 200\r\nContent-Length: 2\r\n\r\nhi", Got::BadGateway),
            ("garbage", "SSH-2.0-OpenSSH_9.2\r\n\r\n", Got::BadGateway),
            ("a bad chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n", Got::Cut),
            ("17 hex digits", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000002\r\nhi\r\n0\r\n\r\n", Got::Cut),
            ("chunk data without CRLF", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhiX0\r\n\r\n", Got::Cut),
            ("a body shorter than its length", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhi", Got::Cut),
            ("bytes past the end", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nplanted", hi(200)),
            ("until the connection closes", "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhi", hi(200)),
            ("HTTP/1.0 until close", "HTTP/1.0 200 OK\r\n\r\nhi", hi(200)),
            ("a Connection naming a field", "HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nContent-Length: 2\r\n\r\nhi", hi(200)),
            ("Keep-Alive and Proxy-Authenticate", "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nContent-Length: 2\r\n\r\nhi", hi(200)),
        ] {
            add(format!("{method} {name}"), method, raw.as_bytes().to_vec(), got);
        }
    }
    for (name, raw, got) in [
        (
            "a length",
            "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
            Got::Pass(200, vec![]),
        ),
        (
            "chunked",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Got::Pass(200, vec![]),
        ),
        (
            "a listed length",
            "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n",
            Got::BadGateway,
        ),
        (
            "no length",
            "HTTP/1.1 200 OK\r\n\r\n",
            Got::Pass(200, vec![]),
        ),
    ] {
        add(format!("HEAD {name}"), "HEAD", raw.as_bytes().to_vec(), got);
    }
    v
}

#[tokio::test(start_paused = true)]
async fn a_hundred_answer_heads_reach_the_client_as_one_clean_answer_or_a_502() {
    let cases = answers();
    assert!(cases.len() >= 100, "only {} answer cases", cases.len());
    let raws: Vec<Vec<u8>> = cases.iter().map(|c| c.raw.clone()).collect();
    let up = Upstream::start(move |s| {
        let i: usize = s.target.trim_start_matches('/').parse().unwrap();
        Reply::Pieces(vec![(std::time::Duration::ZERO, raws[i].clone())], true)
    })
    .await;
    let edge = Edge::start(&site(
        &[HOST],
        &[&up.addr()],
        "max_fails = 0\nresponse_timeout = \"5s\"",
    ))
    .await;
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let mut conn = tls(edge.https(), HOST).await;
        let body = if c.method == "POST" {
            "Content-Length: 1\r\n\r\nx"
        } else {
            "\r\n"
        };
        conn.write_all(
            format!(
                "{} /{i} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n{body}",
                c.method
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let wire = within(secs(60), &c.name, read_to_close(&mut conn)).await;
        let parsed = strict::answer(&wire, c.method);
        match (&c.got, parsed) {
            (Got::Pass(s, b), Ok(m)) => {
                if m.start != s.to_string() || m.body != *b {
                    failures.push(format!(
                        "{}: got {} {:?}",
                        c.name,
                        m.start,
                        String::from_utf8_lossy(&m.body)
                    ));
                }
                for f in [
                    "keep-alive",
                    "proxy-authenticate",
                    "x-secret",
                    "transfer-encoding",
                ] {
                    if m.field(f).is_some()
                        && !(f == "transfer-encoding" && m.field(f) == Some("chunked"))
                    {
                        failures.push(format!("{}: {f} passed on", c.name));
                    }
                }
                let lengths = m
                    .fields
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .count();
                if lengths > 1 {
                    failures.push(format!("{}: {lengths} Content-Length fields", c.name));
                }
            }
            (Got::BadGateway, Ok(m)) if m.start == "502" => {}
            (Got::Cut, Err(_)) => {}
            (want, got) => failures.push(format!(
                "{}: want {want:?}, got {:?} ({:?})",
                c.name,
                got.map(|m| m.start),
                String::from_utf8_lossy(&wire)
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
