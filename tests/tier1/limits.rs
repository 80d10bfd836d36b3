//! Every limit and timeout, under paused time: the status edge answers (or
//! that it closes), that the upstream never saw what was refused, and that a
//! clean request works afterwards. The clock jumps to each deadline, so the
//! tests use the real defaults or round numbers, and assert the time edge
//! took on the test's clock exactly where it matters.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

const HOST: &str = "app.example.test";

async fn edge_with(limits: &str, site_keys: &str, up: &Upstream) -> Edge {
    Edge::start(&format!(
        "[limits]\n{limits}\n{}",
        site(&[HOST], &[&up.addr()], site_keys)
    ))
    .await
}

/// A clean request is still served, and the upstream saw `before` + 1 requests.
async fn still_serves(edge: &Edge, up: &Upstream, before: usize) {
    let a = get(edge.https(), HOST, "/after").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        up.count(),
        before + 1,
        "the upstream saw what was refused: {:?}",
        up.seen()
    );
}

/// Sends `request` raw on a new connection; the answer's status.
async fn status_of(edge: &Edge, request: &[u8]) -> Option<u16> {
    let mut c = tls(edge.https(), HOST).await;
    exchange(&mut c, request).await.map(|a| a.status)
}

#[tokio::test(start_paused = true)]
async fn a_head_dribbled_slower_than_header_read_timeout_is_cut_at_it() {
    let up = Upstream::named("v1").await;
    let edge = edge_with("header_read_timeout = \"30s\"", "", &up).await;
    let mut c = tls(edge.https(), HOST).await;
    let start = tokio::time::Instant::now();
    let mut cut = None;
    for &b in b"GET /dribble HTTP/1.1\r\nHost: app.example.test\r\n\r\n" {
        tokio::time::sleep(secs(5)).await;
        if c.write_all(&[b]).await.is_err() || c.flush().await.is_err() {
            cut = Some(start.elapsed());
            break;
        }
    }
    // The write after the cut may still succeed (the kernel takes it); the
    // read then sees the close.
    let took = match cut {
        Some(t) => t,
        None => {
            assert!(within(secs(60), "close", closed(&mut c)).await);
            start.elapsed()
        }
    };
    assert!(
        took >= secs(30) && took <= secs(36),
        "cut after {took:?}, header_read_timeout is 30 s"
    );
    still_serves(&edge, &up, 0).await;
}

#[tokio::test(start_paused = true)]
async fn a_new_connection_that_sends_nothing_is_closed_at_header_read_timeout_not_keepalive() {
    let up = Upstream::named("v1").await;
    let edge = edge_with(
        "header_read_timeout = \"10s\"\nkeepalive_timeout = \"75s\"",
        "",
        &up,
    )
    .await;
    let mut c = tls(edge.https(), HOST).await;
    let (gone, took) = timed(within(secs(100), "close", closed(&mut c))).await;
    assert!(gone);
    assert!(took >= secs(9) && took <= secs(11), "closed after {took:?}");
    // The plain-HTTP listener counts from accept too.
    let mut p = connect(edge.http()).await;
    let (gone, took) = timed(within(secs(100), "close", closed(&mut p))).await;
    assert!(gone);
    assert!(
        took >= secs(9) && took <= secs(11),
        "plain HTTP closed after {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_is_closed_at_keepalive_timeout_counted_from_the_answer() {
    let up = Upstream::named("v1").await;
    let edge = edge_with(
        "header_read_timeout = \"10s\"\nkeepalive_timeout = \"75s\"",
        "",
        &up,
    )
    .await;
    let mut c = tls(edge.https(), HOST).await;
    let a = exchange(&mut c, b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    let (gone, took) = timed(within(secs(200), "close", closed(&mut c))).await;
    assert!(gone);
    assert!(
        took >= secs(74) && took <= secs(76),
        "idle keep-alive closed after {took:?}, keepalive_timeout is 75 s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_busy_connection_is_never_idle_and_a_slow_answer_is_not_cut_by_keepalive() {
    let up = Upstream::start(|s| {
        if s.target == "/slow" {
            Reply::After(secs(120), Box::new(ok("slow")))
        } else {
            ok("v1")
        }
    })
    .await;
    let edge = edge_with(
        "keepalive_timeout = \"10s\"",
        "response_timeout = \"300s\"",
        &up,
    )
    .await;
    let mut c = tls(edge.https(), HOST).await;
    // Twenty requests 8 s apart: 160 s in all, never 10 s quiet.
    for _ in 0..20 {
        tokio::time::sleep(secs(8)).await;
        let a = exchange(&mut c, b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
            .await
            .expect("the busy connection was closed");
        assert_eq!(a.status, 200);
    }
    // An answer that takes 120 s: the request is in flight, so not idle.
    let a = exchange(
        &mut c,
        b"GET /slow HTTP/1.1\r\nHost: app.example.test\r\n\r\n",
    )
    .await
    .expect("closed while its request was in flight");
    assert_eq!(a.text(), "slow");
}

#[tokio::test(start_paused = true)]
async fn a_declared_body_over_max_body_bytes_is_413_before_anything_is_forwarded() {
    let up = Upstream::named("v1").await;
    let edge = edge_with("max_body_bytes = \"1k\"", "", &up).await;
    let mut req = b"POST /big HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 2048\r\nConnection: close\r\n\r\n".to_vec();
    req.extend(vec![b'a'; 2048]);
    assert_eq!(status_of(&edge, &req).await, Some(413));
    still_serves(&edge, &up, 0).await;
}

#[tokio::test(start_paused = true)]
async fn a_chunked_body_over_max_body_bytes_is_413_once_counted() {
    let up = Upstream::named("v1").await;
    let edge = edge_with("max_body_bytes = \"1k\"", "", &up).await;
    let mut req = b"POST /chunked HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..4 {
        req.extend(b"200\r\n");
        req.extend(vec![b'a'; 0x200]);
        req.extend(b"\r\n");
    }
    req.extend(b"0\r\n\r\n");
    assert_eq!(status_of(&edge, &req).await, Some(413));
    // The upstream may have seen the start of the stream, never a whole request.
    let seen = up.seen();
    assert!(
        seen.is_empty(),
        "a request over the limit arrived whole: {seen:?}"
    );
    still_serves(&edge, &up, 0).await;
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stalls_gets_408_at_body_idle_timeout() {
    let up = Upstream::named("v1").await;
    let edge = edge_with("body_idle_timeout = \"60s\"", "", &up).await;
    let mut c = tls(edge.https(), HOST).await;
    c.write_all(b"POST /stall HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 10\r\n\r\nab")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let (a, took) = timed(within(
        secs(300),
        "408",
        read_answer(&mut c, &mut buf, false),
    ))
    .await;
    assert_eq!(a.unwrap().status, 408);
    assert!(took >= secs(60) && took <= secs(61), "408 after {took:?}");
    assert!(up.seen().is_empty());
    still_serves(&edge, &up, 0).await;
}

#[tokio::test(start_paused = true)]
async fn a_head_over_max_header_bytes_or_100_fields_is_431() {
    let up = Upstream::named("v1").await;
    let edge = edge_with("max_header_bytes = \"16k\"", "", &up).await;
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: app.example.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    assert_eq!(status_of(&edge, big.as_bytes()).await, Some(431));
    let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    let many = format!("GET /many HTTP/1.1\r\nHost: app.example.test\r\n{many}\r\n");
    assert_eq!(status_of(&edge, many.as_bytes()).await, Some(431));
    // Just under the limit is served.
    let fits = format!(
        "GET /fits HTTP/1.1\r\nHost: app.example.test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(12 * 1024)
    );
    assert_eq!(status_of(&edge, fits.as_bytes()).await, Some(200));
    assert_eq!(up.count(), 1);
    still_serves(&edge, &up, 1).await;
}

#[tokio::test(start_paused = true)]
async fn a_stalled_tls_handshake_is_dropped_at_handshake_timeout() {
    let up = Upstream::named("v1").await;
    let edge = Edge::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\nhandshake_timeout = \"10s\"\n{}",
        site(&[HOST], &[&up.addr()], "")
    ))
    .await;
    let mut raw = connect(edge.https()).await;
    // Half a ClientHello record header, then nothing.
    raw.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let (gone, took) = timed(within(secs(60), "close", closed(&mut raw))).await;
    assert!(gone);
    assert!(
        took >= secs(10) && took <= secs(11),
        "dropped after {took:?}"
    );
    still_serves(&edge, &up, 0).await;
}

/// Two idle connections take both slots; a third is closed unserved; the
/// slots come back when they close.
async fn connections_are_capped(key: &str) {
    let up = Upstream::named("v1").await;
    let edge = edge_with(&format!("{key} = 2"), "", &up).await;
    let a = tls(edge.https(), HOST).await;
    let b = tls(edge.https(), HOST).await;
    let mut third = connect(edge.https()).await;
    assert!(within(secs(5), "refusal", closed(&mut third)).await);
    assert_eq!(up.count(), 0);
    drop((a, b));
    // The slots come back once edge has seen the connections close.
    within(secs(5), "slots back", async {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let tcp = connect(edge.https()).await;
            let name = rustls::pki_types::ServerName::try_from(HOST).unwrap();
            if tokio_rustls::TlsConnector::from(client_config(&[b"http/1.1"]))
                .connect(name, tcp)
                .await
                .is_ok()
            {
                return;
            }
        }
    })
    .await;
    still_serves(&edge, &up, 0).await;
}

#[tokio::test(start_paused = true)]
async fn connections_per_ip_are_capped() {
    connections_are_capped("max_connections_per_ip").await;
}

#[tokio::test(start_paused = true)]
async fn connections_in_all_are_capped() {
    connections_are_capped("max_connections").await;
}

#[tokio::test(start_paused = true)]
async fn no_answer_within_response_timeout_is_504() {
    let up = Upstream::start(|_| Reply::Hang).await;
    let edge = edge_with("", "response_timeout = \"60s\"", &up).await;
    let (a, took) = timed(get(edge.https(), HOST, "/")).await;
    assert_eq!(a.status, 504);
    assert!(took >= secs(60) && took <= secs(61), "504 after {took:?}");
}

#[tokio::test(start_paused = true)]
async fn an_upstream_that_stops_mid_body_is_cut_at_response_timeout() {
    let up = Upstream::start(|_| {
        Reply::Pieces(
            vec![
                (
                    Duration::ZERO,
                    b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nfirst part".to_vec(),
                ),
                (secs(3600), Vec::new()),
            ],
            false,
        )
    })
    .await;
    let edge = edge_with("", "response_timeout = \"30s\"", &up).await;
    let mut c = tls(edge.https(), HOST).await;
    c.write_all(b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
        .await
        .unwrap();
    let (got, took) = timed(within(secs(100), "cut", read_to_close(&mut c))).await;
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 200") && got.ends_with("first part"),
        "{got:?}"
    );
    assert!(took >= secs(30) && took <= secs(31), "cut after {took:?}");
}

/// response_timeout counts from the end of the request, as nginx's
/// proxy_read_timeout does: an upload three times as long is answered.
#[tokio::test(start_paused = true)]
async fn an_upload_slower_than_response_timeout_is_answered() {
    let up = Upstream::start(|s| ok(&format!("got {}", s.body.len()))).await;
    let edge = edge_with("", "response_timeout = \"10s\"", &up).await;
    for chunked in [false, true] {
        let mut c = tls(edge.https(), HOST).await;
        let head = if chunked {
            "POST /up HTTP/1.1\r\nHost: app.example.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_string()
        } else {
            "POST /up HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 30000\r\n\r\n"
                .to_string()
        };
        c.write_all(head.as_bytes()).await.unwrap();
        // 30 pieces of 1000 bytes, one a second: 30 s in all.
        for _ in 0..30 {
            tokio::time::sleep(SECOND).await;
            if chunked {
                c.write_all(b"3e8\r\n").await.unwrap();
            }
            c.write_all(&[b'u'; 1000]).await.unwrap();
            if chunked {
                c.write_all(b"\r\n").await.unwrap();
            }
        }
        if chunked {
            c.write_all(b"0\r\n\r\n").await.unwrap();
        }
        let mut buf = Vec::new();
        let a = within(secs(60), "answer", read_answer(&mut c, &mut buf, false))
            .await
            .unwrap();
        assert_eq!(
            (a.status, a.text().as_str()),
            (200, "got 30000"),
            "chunked: {chunked}"
        );
    }
}

/// A client that asks for a large answer and stops reading is cut off after
/// send_timeout, and the upstream connection it held is freed: with
/// max_conns = 1, the next request is served at once.
#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_cut_at_send_timeout_and_frees_the_upstream() {
    let big = vec![b'x'; 48 << 20];
    let up = Upstream::start(move |s| {
        if s.target == "/big" {
            Reply::Answer(200, vec![], big.clone())
        } else {
            ok("small")
        }
    })
    .await;
    let edge = edge_with("send_timeout = \"60s\"", "max_conns = 1", &up).await;
    let mut stalled = tls(edge.https(), HOST).await;
    stalled
        .write_all(b"GET /big HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
        .await
        .unwrap();
    // Read nothing; a second client waits for the only upstream slot.
    let (a, took) = timed(get(edge.https(), HOST, "/small")).await;
    assert_eq!(a.text(), "small");
    assert!(
        took >= secs(60) && took <= secs(91),
        "the slot came back after {took:?}"
    );
    // What the stalled client can still read ends short: cut, not finished.
    let got = within(secs(10), "rest", read_to_close(&mut stalled)).await;
    assert!(got.len() < 48 << 20, "the whole answer arrived");
}

#[tokio::test(start_paused = true)]
async fn max_conns_queues_in_edge_and_gives_503_with_retry_after_after_connect_timeout() {
    let up = Upstream::start(|s| {
        if s.target == "/slow" {
            Reply::After(secs(100), Box::new(ok("slow")))
        } else {
            ok("quick")
        }
    })
    .await;
    let edge = edge_with(
        "",
        "max_conns = 1\nconnect_timeout = \"30s\"\nresponse_timeout = \"300s\"",
        &up,
    )
    .await;
    let https = edge.https();
    let slow = tokio::spawn(async move { get(https, HOST, "/slow").await });
    tokio::time::sleep(SECOND).await;
    // The second waits in edge's queue, not at the upstream, and gets 503
    // once connect_timeout has passed.
    let (a, took) = timed(get(https, HOST, "/queued")).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.header("retry-after"), Some("5"));
    assert!(took >= secs(30) && took <= secs(31), "503 after {took:?}");
    assert_eq!(
        up.connections(),
        1,
        "the queued request reached the upstream"
    );
    assert_eq!(slow.await.unwrap().text(), "slow");
    // A queued request that gets the slot in time is served.
    let slow = tokio::spawn(async move { get(https, HOST, "/slow").await });
    tokio::time::sleep(secs(80)).await;
    let (a, took) = timed(get(https, HOST, "/queued")).await;
    assert_eq!(a.text(), "quick");
    assert!(
        took >= secs(19) && took <= secs(21),
        "served after {took:?}"
    );
    slow.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_upstream_that_fails_is_out_for_fail_timeout_then_back() {
    let a_up = Upstream::named("a").await;
    let b_addr = refusing().await;
    let edge = Edge::start(&site(
        &[HOST],
        &[&a_up.addr(), &b_addr],
        "max_fails = 1\nfail_timeout = \"10s\"",
    ))
    .await;
    // Round robin: the first request to b fails over to a; b is then out.
    for _ in 0..4 {
        assert_eq!(get(edge.https(), HOST, "/").await.text(), "a");
    }
    // b comes up on its port; still out until fail_timeout has passed.
    let b_up = Upstream::on(
        tokio::net::TcpListener::bind(&b_addr).await.unwrap(),
        |_| ok("b"),
    );
    for _ in 0..4 {
        assert_eq!(get(edge.https(), HOST, "/").await.text(), "a");
    }
    assert_eq!(b_up.connections(), 0, "tried while out");
    tokio::time::sleep(secs(11)).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(get(edge.https(), HOST, "/").await.text());
    }
    assert!(
        seen.contains(&"b".to_string()),
        "b never came back: {seen:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn active_health_checks_take_an_upstream_out_and_put_it_back() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let healthy = Arc::new(AtomicBool::new(true));
    let h = healthy.clone();
    let a_up = Upstream::start(move |s| {
        if s.target == "/healthz" {
            status(if h.load(Ordering::SeqCst) { 200 } else { 500 })
        } else {
            ok("a")
        }
    })
    .await;
    let b_up = Upstream::start(|_| ok("b")).await;
    let edge = Edge::start(&site(
        &[HOST],
        &[&a_up.addr(), &b_up.addr()],
        "health_check = { path = \"/healthz\", interval = \"5s\", timeout = \"2s\", rise = 2, fall = 3 }",
    ))
    .await;
    let spread = || async {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(get(edge.https(), HOST, "/").await.text());
        }
        v
    };
    assert!(spread().await.contains(&"a".to_string()));
    healthy.store(false, Ordering::SeqCst);
    // fall = 3 probes 5 s apart.
    tokio::time::sleep(secs(16)).await;
    assert!(
        spread().await.iter().all(|v| v == "b"),
        "a still served while unhealthy"
    );
    healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(secs(11)).await;
    assert!(
        spread().await.contains(&"a".to_string()),
        "a not back after rise = 2"
    );
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

async fn read_h2_frame(io: &mut Tls, buf: &mut Vec<u8>) -> Option<(u8, u8, u32, Vec<u8>)> {
    while buf.len() < 9 || buf.len() < 9 + u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize
    {
        if !fill(io, buf).await {
            return None;
        }
    }
    let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
    let frame: Vec<u8> = buf.drain(..9 + len).collect();
    let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
    Some((frame[3], frame[4], stream, frame[9..].to_vec()))
}

/// A client that opens more streams at once than `h2_max_concurrent_streams`
/// (which the h2 client crate never does, so the frames are written by hand)
/// gets REFUSED_STREAM for the extra one, which never reaches the upstream;
/// the streams within the limit are answered.
#[tokio::test(start_paused = true)]
async fn http2_streams_past_the_concurrency_limit_are_refused() {
    let up = Upstream::named("v1").await;
    let edge = edge_with("h2_max_concurrent_streams = 2", "", &up).await;
    let mut c = tls_alpn(edge.https(), HOST, &[b"h2"]).await;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(4, 0, 0, &[]));
    c.write_all(&out).await.unwrap();
    let mut buf = Vec::new();
    loop {
        let (kind, flags, _, payload) = read_h2_frame(&mut c, &mut buf).await.unwrap();
        if kind == 4 && flags & 1 == 0 {
            let advertised = payload
                .chunks(6)
                .find(|p| p[..2] == [0, 3])
                .map(|p| u32::from_be_bytes([p[2], p[3], p[4], p[5]]));
            assert_eq!(advertised, Some(2), "SETTINGS_MAX_CONCURRENT_STREAMS");
            break;
        }
    }
    // SETTINGS ACK and three GETs in one write: read together, before either
    // of the first two is answered.
    let mut out = h2_frame(4, 1, 0, &[]);
    for (stream, path) in [(1, "/s1"), (3, "/s2"), (5, "/refused-stream")] {
        // HPACK: :method GET, :scheme https (static table), then :path and
        // :authority as literals without indexing.
        let mut block = vec![0x82, 0x87, 0x04, path.len() as u8];
        block.extend_from_slice(path.as_bytes());
        block.extend_from_slice(&[0x01, HOST.len() as u8]);
        block.extend_from_slice(HOST.as_bytes());
        out.extend(h2_frame(1, 0x5, stream, &block));
    }
    c.write_all(&out).await.unwrap();
    let (mut refused, mut ended) = (None, Vec::new());
    while refused.is_none() || ended.len() < 2 {
        let (kind, flags, stream, payload) =
            within(secs(5), "frames", read_h2_frame(&mut c, &mut buf))
                .await
                .unwrap_or_else(|| panic!("closed: refused {refused:?}, ended {ended:?}"));
        match kind {
            3 => refused = Some((stream, u32::from_be_bytes(payload[..4].try_into().unwrap()))),
            0 | 1 if flags & 1 == 1 => ended.push(stream),
            7 => panic!("GOAWAY: {payload:?}"),
            _ => {}
        }
    }
    // 0x7: REFUSED_STREAM, which tells the client it may retry the request.
    assert_eq!(refused, Some((5, 7)));
    ended.sort();
    assert_eq!(ended, [1, 3]);
    assert!(up.seen().iter().all(|s| s.target != "/refused-stream"));
    still_serves(&edge, &up, 2).await;
}

#[tokio::test(start_paused = true)]
async fn http2_rapid_reset_gets_goaway_and_no_reset_stream_reaches_the_upstream() {
    let up = Upstream::named("v1").await;
    let edge = edge_with("h2_max_pending_resets = 10", "", &up).await;
    let tls = tls_alpn(edge.https(), HOST, &[b"h2"]).await;
    let (mut client, conn) = h2::client::handshake(tls).await.unwrap();
    let driver = tokio::spawn(conn);
    for i in 0..200 {
        let req = http::Request::get(format!("https://{HOST}/reset{i}"))
            .body(())
            .unwrap();
        let Ok(ready) = client.clone().ready().await else {
            break;
        };
        client = ready;
        match client.send_request(req, true) {
            Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(_) => break,
        }
    }
    // The connection ends with GOAWAY (the driver finishes, with an error).
    let ended = within(secs(10), "GOAWAY", driver).await.unwrap();
    assert!(ended.is_err() || ended.is_ok());
    assert!(
        up.seen().iter().all(|s| !s.target.starts_with("/reset")),
        "a reset stream reached the upstream: {}",
        up.count()
    );
    still_serves(&edge, &up, up.count()).await;
}

/// A WebSocket tunnel echoes both ways; other upgrades get 400 and reach no one.
#[tokio::test(start_paused = true)]
async fn websocket_is_tunnelled_and_other_upgrades_refused() {
    let up = Upstream::start(|s| {
        if s.header("upgrade").is_some() {
            Reply::Upgrade
        } else {
            ok("plain")
        }
    })
    .await;
    let edge = edge_with("", "", &up).await;
    let mut c = tls(edge.https(), HOST).await;
    let a = exchange(
        &mut c,
        b"GET /ws HTTP/1.1\r\nHost: app.example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 101);
    assert_eq!(a.header("upgrade"), Some("websocket"));
    c.write_all(b"ping through the tunnel").await.unwrap();
    let mut got = vec![0u8; 23];
    within(secs(5), "echo", c.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(&got, b"ping through the tunnel");
    let n = up.count();
    assert_eq!(
        status_of(&edge, b"GET /h2c HTTP/1.1\r\nHost: app.example.test\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n").await,
        Some(400)
    );
    assert_eq!(up.count(), n);
    still_serves(&edge, &up, n).await;
}
