//! The plain-HTTP listener: redirects only, under paused time.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::harness::*;

const HOST: &str = "app.example.test";

async fn edge(extra_listen: &str, limits: &str, up: &Upstream) -> Edge {
    Edge::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\n{extra_listen}\n[limits]\n{limits}\n{}",
        site(&[HOST], &[&up.addr()], "")
    ))
    .await
}

async fn answers(c: &mut TcpStream, n: usize) -> Vec<Answer> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for _ in 0..n {
        let a = within(secs(10), "an answer", read_answer(c, &mut buf, false))
            .await
            .expect("closed before an answer");
        out.push(a);
    }
    out
}

#[tokio::test(start_paused = true)]
async fn pipelined_requests_get_308s_in_order_and_nothing_is_forwarded() {
    let up = Upstream::named("v1").await;
    let edge = edge("", "", &up).await;
    let port = edge.https().port();
    let mut c = connect(edge.http()).await;
    let body = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let three = format!(
        "GET /1?a=b HTTP/1.1\r\nHost: app.example.test\r\n\r\n\
         POST /2 HTTP/1.1\r\nHost: App.Example.Test:80\r\nContent-Length: {}\r\n\r\n{body}\
         GET /3 HTTP/1.1\r\nHost: app.example.test\r\n\r\n",
        body.len()
    );
    c.write_all(three.as_bytes()).await.unwrap();
    let got = answers(&mut c, 3).await;
    let locations: Vec<&str> = got.iter().map(|a| a.header("location").unwrap()).collect();
    assert_eq!(
        locations,
        [
            format!("https://app.example.test:{port}/1?a=b"),
            format!("https://app.example.test:{port}/2"),
            format!("https://app.example.test:{port}/3"),
        ]
    );
    assert!(got
        .iter()
        .all(|a| a.status == 308 && a.header("date").is_some()));
    // An HTTP-01 path is kept free: 404, connection kept.
    c.write_all(b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(answers(&mut c, 1).await[0].status, 404);
    // Connection: close: answered, then closed.
    c.write_all(b"GET /5 HTTP/1.1\r\nHost: app.example.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        answers(&mut c, 1).await[0].header("connection"),
        Some("close")
    );
    assert!(closed(&mut c).await);
    assert_eq!(up.count(), 0, "the plain listener forwarded something");
}

#[tokio::test(start_paused = true)]
async fn redirect_301_when_configured_and_400_without_a_usable_host() {
    let up = Upstream::named("v1").await;
    let edge = edge("redirect = 301", "", &up).await;
    let mut c = connect(edge.http()).await;
    c.write_all(b"GET /x HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(answers(&mut c, 1).await[0].status, 301);
    for bad in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: evil.test\"><script>\r\n\r\n",
        b"CONNECT app.example.test:443 HTTP/1.1\r\nHost: app.example.test\r\n\r\n",
    ] {
        let mut c = connect(edge.http()).await;
        c.write_all(bad).await.unwrap();
        let a = &answers(&mut c, 1).await[0];
        assert_eq!(a.status, 400, "{bad:?}");
        assert!(a.header("location").is_none());
        assert!(closed(&mut c).await);
    }
}

/// A client that pipelines requests and never reads the answers is cut once
/// edge's write has waited send_timeout; others are served throughout.
#[tokio::test(start_paused = true)]
async fn a_pipelining_client_that_never_reads_is_cut_at_send_timeout() {
    let up = Upstream::named("v1").await;
    let edge = edge("", "send_timeout = \"60s\"", &up).await;
    let addr = edge.http();
    let mut c = connect(addr).await;
    let req = b"GET /.well-known/acme-challenge/x HTTP/1.1\r\nHost: app.example.test\r\n\r\n";
    let batch = req.repeat(1000);
    let start = tokio::time::Instant::now();
    let mut sent = 0usize;
    let err = within(secs(300), "the cut", async {
        loop {
            match c.write_all(&batch).await {
                Ok(()) => sent += batch.len(),
                Err(e) => return e,
            }
            assert!(sent < 200_000_000, "edge took {sent} bytes without a cut");
        }
    })
    .await;
    let took = start.elapsed();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{err}"
    );
    assert!(took >= secs(60) && took <= secs(61), "cut after {took:?}");
    let mut other = connect(addr).await;
    other
        .write_all(b"GET /ok HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(answers(&mut other, 1).await[0].status, 308);
}

/// Stop: an idle connection is closed at once; one in the middle of a head
/// still gets its answer, with `Connection: close`.
#[tokio::test(start_paused = true)]
async fn stop_closes_idle_connections_and_answers_a_head_in_progress() {
    let up = Upstream::named("v1").await;
    let mut edge = edge("", "shutdown_grace = \"20s\"", &up).await;
    let mut idle = connect(edge.http()).await;
    idle.write_all(b"GET /idle HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
        .await
        .unwrap();
    answers(&mut idle, 1).await;
    let mut half = connect(edge.http()).await;
    half.write_all(b"GET /first HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
        .await
        .unwrap();
    answers(&mut half, 1).await;
    half.write_all(b"GET /half HTTP/1.1\r\nHost: app.example.test\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let running = edge.stop();
    assert!(within(secs(2), "idle closed", closed(&mut idle)).await);
    half.write_all(b"\r\n").await.unwrap();
    let a = &answers(&mut half, 1).await[0];
    assert_eq!(a.status, 308);
    assert_eq!(a.header("connection"), Some("close"));
    assert!(closed(&mut half).await);
    let (_, took) = timed(within(secs(60), "exit", running.wait())).await;
    assert!(took < secs(20), "waited out the grace: {took:?}");
}
