//! The plain-HTTP listener answers every request itself (no hyper server
//! behind it): what a client sees on one TCP connection, checked byte for
//! byte, and how the listener drains on SIGTERM.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::*;

fn edge_with(limits: &str) -> (Flask, tempfile::TempDir, Edge) {
    let flask = Flask::start(1);
    let (dir, edge) = edge_for(&flask.addr(), limits, "");
    (flask, dir, edge)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c
}

/// Reads until `n` complete answers (head plus `content-length` body) have
/// arrived; returns them whole.
fn read_answers(c: &mut TcpStream, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    let mut answers = Vec::new();
    let mut buf = [0u8; 4096];
    while answers.len() < n {
        let k = c.read(&mut buf).expect("edge stopped answering");
        assert!(k > 0, "closed after {} answers: {answers:?}", answers.len());
        got.extend_from_slice(&buf[..k]);
        while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end + 4]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if got.len() < end + 4 + len {
                break;
            }
            let whole: Vec<u8> = got.drain(..end + 4 + len).collect();
            answers.push(String::from_utf8_lossy(&whole).into_owned());
        }
    }
    assert!(got.is_empty(), "bytes past the answers: {got:?}");
    answers
}

/// The connection is closed by edge (EOF, or a reset after it) within 5 s.
fn assert_closed(c: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match c.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("more after the last answer: {:?}", &buf[..n]),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

fn location(answer: &str) -> &str {
    answer
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap_or_else(|| panic!("no location in {answer}"))
}

#[test]
fn one_connection_pipelined_bodies_limits_and_close() {
    let (flask, _dir, edge) = edge_with("max_header_bytes = \"8k\"");
    let port = edge.https.port();

    // Three requests in one write, a POST with a body between them whose body
    // looks like a request: three answers, in order, and the connection stays.
    let mut c = connect(edge.http);
    let body = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let three = format!(
        "GET /1?a=b HTTP/1.1\r\nHost: flask.test\r\n\r\n\
         POST /2 HTTP/1.1\r\nHost: Flask.Test:80\r\nContent-Length: {}\r\n\r\n{body}\
         HEAD /3 HTTP/1.1\r\nHost: flask.test\r\n\r\n",
        body.len()
    );
    c.write_all(three.as_bytes()).unwrap();
    let a = read_answers(&mut c, 3);
    let locations: Vec<&str> = a.iter().map(|x| location(x)).collect();
    assert_eq!(
        locations,
        [
            format!("https://flask.test:{port}/1?a=b"),
            format!("https://flask.test:{port}/2"),
            format!("https://flask.test:{port}/3"),
        ]
    );
    for x in &a {
        assert!(x.starts_with("HTTP/1.1 308 Permanent Redirect\r\n"), "{x}");
        assert!(x.contains("\r\ndate: "), "{x}");
        assert!(!x.contains("connection: close"), "{x}");
    }
    // Still open: a request split over two writes is answered too (the pause
    // only makes the two halves likely to arrive in two reads).
    c.write_all(b"GET /4 HTTP/1.1\r\nHo").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    c.write_all(b"st: flask.test\r\n\r\n").unwrap();
    assert_eq!(
        location(&read_answers(&mut c, 1)[0]),
        format!("https://flask.test:{port}/4")
    );
    // An HTTP-01 path is kept free: 404, connection kept.
    c.write_all(b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: flask.test\r\n\r\n")
        .unwrap();
    let a = read_answers(&mut c, 1);
    assert!(a[0].starts_with("HTTP/1.1 404 Not Found\r\n"), "{}", a[0]);
    assert!(a[0].contains("<h1>404 Not Found</h1>"), "{}", a[0]);
    // `Connection: close`: answered, then closed.
    c.write_all(b"GET /5 HTTP/1.1\r\nHost: flask.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let a = read_answers(&mut c, 1);
    assert!(a[0].contains("connection: close\r\n"), "{}", a[0]);
    assert_closed(&mut c);

    // HTTP/1.0 without keep-alive: answered and closed; with it, kept.
    let mut c = connect(edge.http);
    c.write_all(b"GET /6 HTTP/1.0\r\nHost: flask.test\r\n\r\n")
        .unwrap();
    read_answers(&mut c, 1);
    assert_closed(&mut c);
    let mut c = connect(edge.http);
    c.write_all(b"GET /7 HTTP/1.0\r\nHost: flask.test\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    assert!(read_answers(&mut c, 1)[0].contains("connection: keep-alive\r\n"));
    c.write_all(b"GET /8 HTTP/1.0\r\nHost: flask.test\r\n\r\n")
        .unwrap();
    read_answers(&mut c, 1);
    assert_closed(&mut c);

    // A chunked body is not read: answered with close, then closed, and what
    // followed it is never answered.
    let mut c = connect(edge.http);
    c.write_all(
        b"POST /9 HTTP/1.1\r\nHost: flask.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let a = read_answers(&mut c, 1);
    assert!(a[0].starts_with("HTTP/1.1 308 "), "{}", a[0]);
    assert!(a[0].contains("connection: close\r\n"), "{}", a[0]);
    assert_closed(&mut c);

    // A head over max_header_bytes: 431 before it is even complete, and closed.
    let mut c = connect(edge.http);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: flask.test\r\nX-Big: {}",
        "a".repeat(10_000)
    );
    c.write_all(big.as_bytes()).unwrap();
    let a = read_answers(&mut c, 1);
    assert!(
        a[0].starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{}",
        a[0]
    );
    assert_closed(&mut c);

    // No Host, a malformed head, a CONNECT: 400 and closed, no Location.
    for bad in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost flask.test\r\n\r\n",
        b"CONNECT flask.test:443 HTTP/1.1\r\nHost: flask.test\r\n\r\n",
    ] {
        let mut c = connect(edge.http);
        c.write_all(bad).unwrap();
        let a = read_answers(&mut c, 1);
        assert!(
            a[0].starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{bad:?}: {}",
            a[0]
        );
        assert!(!a[0].contains("location"), "{}", a[0]);
        assert_closed(&mut c);
    }

    // One access-log line per answered request, with the path and status.
    edge.proc
        .wait_for("path=/9 status=308", Duration::from_secs(5));
    assert!(edge
        .proc
        .output()
        .contains("path=/.well-known/acme-challenge/tok status=404"));
    assert!(
        !edge.proc.output().contains("smuggled"),
        "{}",
        edge.proc.output()
    );
    // Nothing on this listener reaches a backend.
    assert!(
        !flask.proc.output().contains("GET /"),
        "{}",
        flask.proc.output()
    );
}

/// A client that pipelines requests and never reads the answers: once edge's
/// write has waited `send_timeout`, the connection is cut (edge reads no more
/// of it meanwhile, so neither its buffer nor the answers pile up), and other
/// clients are served throughout.
#[test]
fn a_pipelining_client_that_never_reads_is_cut_at_send_timeout() {
    let (_flask, _dir, edge) = edge_with("send_timeout = \"1s\"");
    let addr = edge.http;
    let writer = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        // Each answers with a whole error page, about four times its size.
        let req = b"GET /.well-known/acme-challenge/x HTTP/1.1\r\nHost: flask.test\r\n\r\n";
        let batch = req.repeat(1000);
        let mut sent = 0usize;
        loop {
            match c.write_all(&batch) {
                Ok(()) => sent += batch.len(),
                Err(e) => return (sent, e.kind()),
            }
            assert!(sent < 200_000_000, "edge took {sent} bytes without a cut");
        }
    });
    edge.proc.wait_for(
        "the client took no response bytes within send_timeout",
        Duration::from_secs(20),
    );
    // Served meanwhile.
    let mut c = connect(edge.http);
    c.write_all(b"GET /ok HTTP/1.1\r\nHost: flask.test\r\n\r\n")
        .unwrap();
    assert!(read_answers(&mut c, 1)[0].starts_with("HTTP/1.1 308 "));
    // The blocked writer sees the connection go.
    let (sent, why) = writer.join().unwrap();
    assert!(
        matches!(
            why,
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{why:?} after {sent} bytes"
    );
}

/// SIGTERM: an idle connection is closed at once, one in the middle of a
/// head still gets its answer (with `Connection: close`), and edge exits
/// without waiting out `shutdown_grace`.
#[test]
fn sigterm_closes_idle_connections_and_answers_a_head_in_progress() {
    let (_flask, _dir, mut edge) = edge_with("shutdown_grace = \"20s\"");
    let mut idle = connect(edge.http);
    idle.write_all(b"GET /idle HTTP/1.1\r\nHost: flask.test\r\n\r\n")
        .unwrap();
    read_answers(&mut idle, 1);
    // A connection edge has accepted (an answer says so; one still in the
    // accept queue at SIGTERM is reset), then half a head on it.
    let mut half = connect(edge.http);
    half.write_all(b"GET /first HTTP/1.1\r\nHost: flask.test\r\n\r\n")
        .unwrap();
    read_answers(&mut half, 1);
    half.write_all(b"GET /half HTTP/1.1\r\nHost: flask.test\r\n")
        .unwrap();
    // Sent before the signal: on loopback the bytes are in edge's socket now.

    let start = Instant::now();
    edge.proc.signal("TERM");
    assert_closed(&mut idle);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    half.write_all(b"\r\n").unwrap();
    let a = read_answers(&mut half, 1);
    assert!(a[0].starts_with("HTTP/1.1 308 "), "{}", a[0]);
    assert!(a[0].contains("connection: close\r\n"), "{}", a[0]);
    assert_closed(&mut half);
    assert_eq!(edge.proc.wait_exit(Duration::from_secs(10)), 0);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "waited {:?}",
        start.elapsed()
    );
}
