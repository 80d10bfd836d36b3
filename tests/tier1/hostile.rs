//! The framing rules of the one HTTP/1 implementation, as an attacker tries
//! them. Each request rule: the status edge answers, that the upstream never
//! saw the request, and that a clean request is served afterwards. Each
//! answer rule: what the client gets, and that a connection the rule spoils
//! is never reused for another client's request.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

const HOST: &str = "app.example.test";

async fn setup(site_keys: &str) -> (Upstream, Edge) {
    let up = Upstream::start(|s| ok(&format!("{} {} {}", s.method, s.target, s.body.len()))).await;
    let edge = Edge::start(&site(&[HOST], &[&up.addr()], site_keys)).await;
    (up, edge)
}

/// Sends `request` raw on a new connection; everything edge sent back until
/// it closed (or 10 s of the test's clock).
async fn raw(edge: &Edge, request: &[u8]) -> String {
    let mut c = tls(edge.https(), HOST).await;
    c.write_all(request).await.unwrap();
    let got = within(secs(30), "the close", read_to_close(&mut c)).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// The three-part check for a request edge must refuse.
async fn refused(up: &Upstream, edge: &Edge, request: &[u8], status: u16) {
    let before = up.count();
    let out = raw(edge, request).await;
    assert!(
        out.starts_with(&format!("HTTP/1.1 {status} ")),
        "expected {status} for {:?}, got {out:?}",
        String::from_utf8_lossy(request)
    );
    assert_eq!(
        out.matches("HTTP/1.1 ").count(),
        1,
        "more than one answer: {out:?}"
    );
    assert_eq!(
        up.count(),
        before,
        "the upstream saw {:?}",
        up.seen()
            .last()
            .map(|s| String::from_utf8_lossy(&s.raw).into_owned())
    );
    let a = get(edge.https(), HOST, "/clean").await;
    assert_eq!((a.status, a.text().as_str()), (200, "GET /clean 0"));
}

#[tokio::test(start_paused = true)]
async fn content_length_with_transfer_encoding_is_400_however_the_head_ends() {
    let (up, edge) = setup("").await;
    for req in [
        &b"POST /s HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app.example.test\r\n\r\n"[..],
        b"POST /s HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\n",
        // A head ending in a bare LF, and one ending in LF CRLF.
        b"POST /s HTTP/1.1\nHost: app.example.test\nContent-Length: 6\nTransfer-Encoding: chunked\n\n0\r\n\r\n",
        b"POST /s HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\n\r\n0\r\n\r\n",
        // After a plain request on the same connection.
        b"GET /first HTTP/1.1\r\nHost: app.example.test\r\n\r\nPOST /s HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let before = up.count();
        let out = raw(&edge, req).await;
        let first = req.starts_with(b"GET /first");
        assert!(out.contains("HTTP/1.1 400 "), "{out:?}");
        assert_eq!(up.count(), before + usize::from(first), "{:?}", up.seen());
        assert!(up.seen().iter().all(|s| s.target != "/s" && s.target != "/smuggled"));
    }
    assert_eq!(get(edge.https(), HOST, "/clean").await.status, 200);
}

#[tokio::test(start_paused = true)]
async fn lengths_that_differ_are_listed_or_repeated_are_400() {
    let (up, edge) = setup("").await;
    for req in [
        &b"POST /d HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"[..],
        b"POST /d HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nabcde",
        b"POST /d HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 5, 5\r\n\r\nabcde",
        b"POST /d HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: +5\r\n\r\nabcde",
        b"POST /d HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 0x5\r\n\r\nabcde",
    ] {
        refused(&up, &edge, req, 400).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_transfer_coding_other_than_chunked_is_501_and_on_http10_400() {
    let (up, edge) = setup("").await;
    for te in ["gzip", "gzip, chunked", "chunked, chunked", "identity"] {
        let req = format!(
            "POST /te HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: {te}\r\n\r\n0\r\n\r\n"
        );
        refused(&up, &edge, req.as_bytes(), 501).await;
    }
    refused(
        &up,
        &edge,
        b"POST /te HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        501,
    )
    .await;
    refused(
        &up,
        &edge,
        b"POST /te10 HTTP/1.0\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_asterisk_target_is_400_except_for_options() {
    let (up, edge) = setup("").await;
    refused(
        &up,
        &edge,
        b"GET * HTTP/1.1\r\nHost: app.example.test\r\n\r\n",
        400,
    )
    .await;
    let mut c = tls(edge.https(), HOST).await;
    let a = exchange(
        &mut c,
        b"OPTIONS * HTTP/1.1\r\nHost: app.example.test\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(up.seen().last().unwrap().target, "*");
}

#[tokio::test(start_paused = true)]
async fn a_chunk_size_over_16_hex_digits_is_400() {
    let (up, edge) = setup("").await;
    refused(
        &up,
        &edge,
        b"POST /big HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000001\r\na\r\n0\r\n\r\n",
        400,
    )
    .await;
    refused(
        &up,
        &edge,
        b"POST /big HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
        400,
    )
    .await;
    // A chunked body whose sizes are fine arrives whole.
    let mut c = tls(edge.https(), HOST).await;
    let a = exchange(
        &mut c,
        b"POST /fine HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0000000000000001\r\n!\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(a.text(), "POST /fine 6");
}

/// `Expect: 100-continue` is answered by edge when the body is first read,
/// and never forwarded; an expectation edge does not know is 417.
#[tokio::test(start_paused = true)]
async fn expect_is_answered_by_edge_and_never_forwarded() {
    let (up, edge) = setup("").await;
    let mut c = tls(edge.https(), HOST).await;
    c.write_all(b"POST /e HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        assert!(fill(&mut c, &mut buf).await);
    }
    assert!(
        buf.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    buf.drain(..25);
    c.write_all(b"hello").await.unwrap();
    let a = within(secs(10), "answer", read_answer(&mut c, &mut buf, false))
        .await
        .unwrap();
    assert_eq!(a.text(), "POST /e 5");
    assert!(
        up.seen()[0].header("expect").is_none(),
        "Expect was forwarded"
    );
    refused(
        &up,
        &edge,
        b"POST /e HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 5\r\nExpect: something-else\r\n\r\nhello",
        417,
    )
    .await;
}

/// Requests pipelined in one write: plain ones, a HEAD, a POST with a body
/// that looks like a request, another after it. Each answered once, in
/// order; HEAD's answer has no body.
#[tokio::test(start_paused = true)]
async fn pipelined_requests_with_bodies_are_answered_in_order() {
    let (up, edge) = setup("").await;
    let body = "GET /in-body HTTP/1.1\r\nHost: app.example.test\r\n\r\n";
    let req = format!(
        "GET /1 HTTP/1.1\r\nHost: app.example.test\r\n\r\n\
         HEAD /h HTTP/1.1\r\nHost: app.example.test\r\n\r\n\
         POST /2 HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: {}\r\n\r\n{body}\
         GET /3 HTTP/1.1\r\nHost: app.example.test\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut c = tls(edge.https(), HOST).await;
    c.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut got = Vec::new();
    for head in [false, true, false, false] {
        got.push(
            within(secs(10), "answer", read_answer(&mut c, &mut buf, head))
                .await
                .unwrap(),
        );
    }
    assert!(closed(&mut c).await);
    let texts: Vec<String> = got.iter().map(Answer::text).collect();
    assert_eq!(
        texts,
        [
            "GET /1 0",
            "",
            &format!("POST /2 {}", body.len()),
            "GET /3 0"
        ]
    );
    assert!(up.seen().iter().all(|s| s.target != "/in-body"));
    assert_eq!(got[3].header("connection"), Some("close"));
}

/// HTTP/1.0: closed after the answer unless it asks to be kept, and never
/// sent a chunked body.
#[tokio::test(start_paused = true)]
async fn http10_is_kept_alive_only_when_it_asks_and_never_chunked() {
    let up = Upstream::start(|_| {
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        )
    })
    .await;
    let edge = Edge::start(&site(&[HOST], &[&up.addr()], "")).await;
    let out = raw(&edge, b"GET / HTTP/1.0\r\nHost: app.example.test\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 200 "), "{out:?}");
    assert!(
        !out.to_ascii_lowercase().contains("transfer-encoding"),
        "{out:?}"
    );
    assert!(out.ends_with("\r\n\r\nhello"), "{out:?}");
    let mut c = tls(edge.https(), HOST).await;
    let a = exchange(
        &mut c,
        b"GET / HTTP/1.0\r\nHost: app.example.test\r\nConnection: keep-alive\r\n\r\n",
    )
    .await
    .unwrap();
    // A length it does not know ends with the connection, even when asked to keep it.
    assert_eq!(a.text(), "hello");
}

/// A client that opens with the HTTP/2 preface and no ALPN gets HTTP/2.
#[tokio::test(start_paused = true)]
async fn http2_with_prior_knowledge_and_no_alpn_is_served() {
    let (_up, edge) = setup("").await;
    let tls = tls_alpn(edge.https(), HOST, &[]).await;
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut send = send;
    let req = http::Request::get(format!("https://{HOST}/h2"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let (status, _, body) = h2_request(&mut send, req).await;
    assert_eq!((status.as_u16(), body.as_slice()), (200, &b"GET /h2 0"[..]));
}

/// Answers whose framing edge cannot trust are 502 and never passed on
/// with their own framing fields.
#[tokio::test(start_paused = true)]
async fn answers_with_framing_edge_cannot_trust_are_502() {
    let up = Upstream::start(|s| {
        let raw: &[u8] = match s.target.as_str() {
            "/listed" => b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
            "/twice" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
            "/differ" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
            "/both" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            "/te10" => b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            "/gzip" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        };
        Reply::Raw(raw.to_vec())
    })
    .await;
    let edge = Edge::start(&site(&[HOST], &[&up.addr()], "max_fails = 0")).await;
    for path in ["/listed", "/twice", "/differ", "/both", "/te10", "/gzip"] {
        let a = get(edge.https(), HOST, path).await;
        assert_eq!(a.status, 502, "{path}: {}", a.text());
    }
    // A good one: one canonical length, the upstream's own field not copied.
    let out = raw(
        &edge,
        b"GET /good HTTP/1.1\r\nHost: app.example.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        out.to_ascii_lowercase()
            .matches("content-length: 2\r\n")
            .count(),
        1,
        "{out}"
    );
    assert!(out.contains("content-length: 2\r\n"), "{out}");
}

/// An upstream that writes a HEAD answer's body anyway, in a later segment
/// (as gunicorn does), or bytes past an answer's end: what it planted never
/// becomes another client's answer.
#[tokio::test(start_paused = true)]
async fn bytes_an_upstream_plants_after_an_answer_never_reach_another_client() {
    let up = Upstream::start(|s| match s.target.as_str() {
        "/head" => Reply::Pieces(
            vec![
                (Duration::ZERO, b"HTTP/1.1 200 OK\r\ncontent-length: 46\r\n\r\n".to_vec()),
                (
                    Duration::from_millis(50),
                    b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nplanted".to_vec(),
                ),
            ],
            false,
        ),
        "/past" => Reply::Raw(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nplanted"
                .to_vec(),
        ),
        _ => ok("mine"),
    })
    .await;
    let edge = Edge::start(&site(&[HOST], &[&up.addr()], "")).await;
    for path in ["/head", "/past"] {
        let mut c = tls(edge.https(), HOST).await;
        let method = if path == "/head" { "HEAD" } else { "GET" };
        c.write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: app.example.test\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        let a = read_answer(&mut c, &mut buf, method == "HEAD")
            .await
            .unwrap();
        assert_eq!(a.status, 200);
        // Another client, on another connection, at once: before the
        // planted bytes arrive (the pool's peek would see them after).
        for _ in 0..3 {
            let a = get(edge.https(), HOST, "/other").await;
            assert_eq!(a.text(), "mine", "after {path}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A WebSocket tunnel in which neither side sends for response_timeout is
/// closed; traffic in either direction keeps it open.
#[tokio::test(start_paused = true)]
async fn an_idle_tunnel_is_closed_at_response_timeout_and_traffic_keeps_it() {
    let up = Upstream::start(|s| {
        if s.header("upgrade").is_some() {
            Reply::Upgrade
        } else {
            ok("plain")
        }
    })
    .await;
    let edge = Edge::start(&site(&[HOST], &[&up.addr()], "response_timeout = \"30s\"")).await;
    let mut c = tls(edge.https(), HOST).await;
    let a = exchange(
        &mut c,
        b"GET /ws HTTP/1.1\r\nHost: app.example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 101);
    // Traffic every 20 s for two minutes: open throughout.
    for i in 0..6u8 {
        tokio::time::sleep(secs(20)).await;
        c.write_all(&[b'a' + i]).await.unwrap();
        let mut b = [0u8; 1];
        within(secs(5), "echo", c.read_exact(&mut b)).await.unwrap();
        assert_eq!(b[0], b'a' + i);
    }
    // Then silence: closed at 30 s.
    let (gone, took) = timed(within(secs(120), "close", closed(&mut c))).await;
    assert!(gone);
    assert!(
        took >= secs(30) && took <= secs(31),
        "closed after {took:?}"
    );
}

/// At most max_tunnels tunnels to one upstream: the next handshake is 503
/// and never reaches it; a closed tunnel gives its place back.
#[tokio::test(start_paused = true)]
async fn tunnels_past_max_tunnels_are_503_and_never_forwarded() {
    let up = Upstream::start(|s| {
        if s.header("upgrade").is_some() {
            Reply::Upgrade
        } else {
            ok("plain")
        }
    })
    .await;
    let edge = Edge::start(&site(&[HOST], &[&up.addr()], "max_tunnels = 1")).await;
    let handshake = b"GET /ws HTTP/1.1\r\nHost: app.example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let mut first = tls(edge.https(), HOST).await;
    assert_eq!(exchange(&mut first, handshake).await.unwrap().status, 101);
    let mut second = tls(edge.https(), HOST).await;
    let a = exchange(&mut second, handshake).await.unwrap();
    assert_eq!(a.status, 503);
    assert_eq!(up.count(), 1, "the second handshake reached the upstream");
    drop(first);
    tokio::time::sleep(SECOND).await;
    let mut third = tls(edge.https(), HOST).await;
    assert_eq!(exchange(&mut third, handshake).await.unwrap().status, 101);
    // Ordinary requests are not counted against tunnels.
    assert_eq!(get(edge.https(), HOST, "/").await.text(), "plain");
}
