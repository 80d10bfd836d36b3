//! Reload and shutdown with connections open, under paused time.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::harness::*;

const HOST: &str = "app.example.test";

fn slow_upstream(delay: Duration) -> impl Fn(&Seen) -> Reply + Send + Sync + 'static {
    move |s| {
        if s.target == "/slow" {
            Reply::After(delay, Box::new(ok("slow done")))
        } else {
            ok("quick")
        }
    }
}

#[tokio::test(start_paused = true)]
async fn reload_adds_an_upstream_while_a_keep_alive_connection_stays_open() {
    let a = Upstream::named("a").await;
    let b = Upstream::named("b").await;
    let mut edge = Edge::start(&site(&[HOST], &[&a.addr()], "")).await;
    let mut c = tls(edge.https(), HOST).await;
    let first = exchange(&mut c, b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(first.text(), "a");
    edge.reload(&site(&[HOST], &[&a.addr(), &b.addr()], ""))
        .await;
    // The open connection goes on, now with both upstreams.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let r = exchange(&mut c, b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
            .await
            .expect("the kept-alive connection was closed by the reload");
        seen.insert(r.text());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["a", "b"]);
    // A config that does not hold together is refused; the running one stays.
    let bad = site(
        &[HOST],
        &[&a.addr()],
        "error_pages = { 502 = \"/no/such/page.html\" }",
    );
    edge.reload(&bad).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(get(edge.https(), HOST, "/").await.text());
    }
    assert_eq!(seen.len(), 2, "the refused config was applied: {seen:?}");
    let r = edge.stop();
    within(secs(60), "stop", r.wait()).await;
}

/// A reload that adds a site serves it at once, with a placeholder until its
/// certificate comes, and the new name routes.
#[tokio::test(start_paused = true)]
async fn reload_adds_a_site_that_is_served_at_once() {
    let a = Upstream::named("a").await;
    let b = Upstream::named("b").await;
    let edge = Edge::start(&site(&[HOST], &[&a.addr()], "")).await;
    let other = "other.example.test";
    // Before: not covered by any certificate, so 421.
    assert_eq!(get(edge.https(), other, "/").await.status, 421);
    edge.reload(&format!(
        "{}{}",
        site(&[HOST], &[&a.addr()], ""),
        site(&[other], &[&b.addr()], "")
    ))
    .await;
    let c = tls(edge.https(), other).await;
    assert_eq!(served_names(&c), [other]);
    assert_eq!(get(edge.https(), other, "/").await.text(), "b");
    edge.shutdown().await;
}

async fn slow_request_finishes_after_stop(h2c: bool) {
    let up = Upstream::start(slow_upstream(secs(20))).await;
    let mut edge = Edge::start(&format!(
        "[limits]\nshutdown_grace = \"30s\"\n{}",
        site(&[HOST], &[&up.addr()], "")
    ))
    .await;
    let https = edge.https();
    let req = tokio::spawn(async move {
        if h2c {
            let mut send = h2(https, HOST).await;
            let req = http::Request::get(format!("https://{HOST}/slow"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            let (status, _, body) = h2_request(&mut send, req).await;
            (status.as_u16(), String::from_utf8(body).unwrap())
        } else {
            let a = get(https, HOST, "/slow").await;
            (a.status, a.text())
        }
    });
    within(secs(5), "the slow request upstream", async {
        while up.count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let running = edge.stop();
    let (got, took) = timed(async { req.await.unwrap() }).await;
    assert_eq!(
        got,
        (200, "slow done".to_string()),
        "the in-flight request was cut"
    );
    assert!(took <= secs(21), "{took:?}");
    within(secs(60), "exit", running.wait()).await;
    // Stopped accepting.
    assert!(tokio::net::TcpStream::connect(https).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn stop_lets_a_slow_request_finish() {
    slow_request_finishes_after_stop(false).await;
}

/// HTTP/2 streams run inside their connection's task; the drain waits for them.
#[tokio::test(start_paused = true)]
async fn stop_lets_a_slow_http2_request_finish() {
    slow_request_finishes_after_stop(true).await;
}

#[tokio::test(start_paused = true)]
async fn stop_cuts_what_outlives_shutdown_grace() {
    let up = Upstream::start(slow_upstream(secs(3600))).await;
    let mut edge = Edge::start(&format!(
        "[limits]\nshutdown_grace = \"30s\"\n{}",
        site(&[HOST], &[&up.addr()], "response_timeout = \"2h\"")
    ))
    .await;
    let https = edge.https();
    let mut c = tls(https, HOST).await;
    c.write_all(b"GET /slow HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
        .await
        .unwrap();
    within(secs(5), "upstream", async {
        while up.count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let running = edge.stop();
    let (_, took) = timed(within(secs(120), "exit", running.wait())).await;
    assert!(
        took >= secs(30) && took <= secs(31),
        "exited after {took:?}, grace is 30 s"
    );
    let got = within(secs(5), "the cut", read_to_close(&mut c)).await;
    assert!(
        got.is_empty(),
        "the slow request was answered: {:?}",
        String::from_utf8_lossy(&got)
    );
}

/// An idle keep-alive connection is closed at once on stop (one in the
/// middle of a request gets its answer first), so edge exits without
/// waiting out shutdown_grace for a client that may never send again.
#[tokio::test(start_paused = true)]
async fn stop_closes_idle_keep_alive_connections_at_once() {
    let up = Upstream::named("v1").await;
    let mut edge = Edge::start(&format!(
        "[limits]\nshutdown_grace = \"30s\"\n{}",
        site(&[HOST], &[&up.addr()], "")
    ))
    .await;
    let mut idle = tls(edge.https(), HOST).await;
    exchange(
        &mut idle,
        b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n",
    )
    .await
    .unwrap();
    let running = edge.stop();
    let (_, took) = timed(within(secs(60), "exit", running.wait())).await;
    assert!(
        took < SECOND,
        "exit took {took:?}: the idle connection was held"
    );
    assert!(within(secs(5), "close", closed(&mut idle)).await);
}
