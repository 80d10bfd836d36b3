//! The request path: routing, forwarding headers, balancing, failover.

use crate::harness::*;

#[tokio::test(start_paused = true)]
async fn a_get_reaches_the_upstream_with_the_forwarding_headers() {
    let up = Upstream::named("v1").await;
    let edge = Edge::start(&site(&["app.example.test"], &[&up.addr()], "")).await;
    let a = get(edge.https(), "app.example.test", "/hello?x=1").await;
    assert_eq!((a.status, a.text().as_str()), (200, "v1"));
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.target, "/hello?x=1");
    assert_eq!(r.header("host"), Some("app.example.test"));
    assert_eq!(r.header("x-forwarded-proto"), Some("https"));
    assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(r.header("x-real-ip"), Some("127.0.0.1"));
    edge.shutdown().await;
}

const HOST: &str = "app.example.test";

/// A connection may only carry requests for names its certificate covers:
/// another name is 421; a covered name with no site is 404. Nothing reaches
/// an upstream either way.
#[tokio::test(start_paused = true)]
async fn hosts_the_certificate_does_not_cover_are_421_and_covered_ones_without_a_site_404() {
    let up = Upstream::named("v1").await;
    let edge = Edge::start(&site(&["*.example.test"], &[&up.addr()], "")).await;
    // Covered by the wildcard, served.
    assert_eq!(get(edge.https(), "a.example.test", "/").await.status, 200);
    // SNI a.example.test, Host of another domain: 421.
    let mut c = tls(edge.https(), "a.example.test").await;
    let a = exchange(
        &mut c,
        b"GET / HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 421);
    // The wildcard covers one label only.
    let mut c = tls(edge.https(), "a.example.test").await;
    let a = exchange(
        &mut c,
        b"GET / HTTP/1.1\r\nHost: b.a.example.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 421);
    assert_eq!(up.count(), 1);
    edge.shutdown().await;

    let up = Upstream::named("v1").await;
    let edge = Edge::start(&format!(
        "{}{}",
        site(&[HOST], &[&up.addr()], ""),
        site(&["other.example.test"], &[&up.addr()], "")
    ))
    .await;
    // A certificate per name: each SNI gets its own.
    assert_eq!(served_names(&tls(edge.https(), HOST).await), [HOST]);
    assert_eq!(
        served_names(&tls(edge.https(), "other.example.test").await),
        ["other.example.test"]
    );
    assert_eq!(get(edge.https(), "nothing.test", "/").await.status, 421);
    assert_eq!(up.count(), 0);
    edge.shutdown().await;

    // A certificate that covers a name no site serves: 404 for it.
    let up = Upstream::named("v1").await;
    let body = site(&[HOST], &[&up.addr()], "");
    let dir = tempfile::tempdir().unwrap();
    let cfg = parse(dir.path(), &body);
    let (c, k) = self_signed(&[HOST, "spare.example.test"]);
    put_live(&dir.path().join("state"), HOST, &c, &k);
    let running = edge::daemon::start(cfg).await.unwrap();
    let mut conn = tls(running.bound.https, HOST).await;
    let a = exchange(
        &mut conn,
        b"GET / HTTP/1.1\r\nHost: spare.example.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 404);
    assert_eq!(up.count(), 0);
    running.shutdown().await;
}

/// The client's own forwarding claims are replaced, each sent once; names
/// listed in Connection are removed first, but never Host; `_` names dropped.
#[tokio::test(start_paused = true)]
async fn forwarding_headers_are_edges_own_and_cannot_be_smuggled() {
    let up = Upstream::named("v1").await;
    let edge = Edge::start(&site(&[HOST], &[&up.addr()], "")).await;
    let mut c = tls(edge.https(), HOST).await;
    let a = exchange(
        &mut c,
        b"GET /h HTTP/1.1\r\nHost: app.example.test\r\nX_Forwarded_For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\nX-Forwarded-Host: evil.test\r\nX-Forwarded-Proto: http\r\nX-Real-IP: 8.8.8.8\r\nConnection: close, X-Forwarded-For, X-Real-IP, Host\r\nKeep-Alive: 5\r\nX-Keep: 1\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    let r = &up.seen()[0];
    assert_eq!(r.all("host"), ["app.example.test"]);
    assert_eq!(r.all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(r.all("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(r.all("x-forwarded-host"), ["app.example.test"]);
    assert_eq!(r.all("x-forwarded-proto"), ["https"]);
    assert_eq!(r.header("x-keep"), Some("1"));
    for gone in ["x_forwarded_for", "keep-alive", "connection"] {
        assert!(
            r.header(gone).is_none(),
            "{gone} was forwarded: {:?}",
            r.headers
        );
    }
}

/// Behind a trusted proxy the chain is appended to and the real client is
/// the right-most untrusted address.
#[tokio::test(start_paused = true)]
async fn a_trusted_proxys_chain_is_appended_to() {
    let up = Upstream::named("v1").await;
    let edge = Edge::start(&site(
        &[HOST],
        &[&up.addr()],
        "trusted_proxies = [\"127.0.0.0/8\"]",
    ))
    .await;
    let mut c = tls(edge.https(), HOST).await;
    exchange(
        &mut c,
        b"GET / HTTP/1.1\r\nHost: app.example.test\r\nX-Forwarded-For: 203.0.113.9, 10.0.0.7\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let r = &up.seen()[0];
    assert_eq!(
        r.header("x-forwarded-for"),
        Some("203.0.113.9, 10.0.0.7, 127.0.0.1")
    );
    assert_eq!(r.header("x-real-ip"), Some("10.0.0.7"));
}

/// HTTP/2: :authority routes, the forwarding headers are the same, split
/// cookies are joined for the HTTP/1.1 upstream, bodies arrive whole.
#[tokio::test(start_paused = true)]
async fn http2_requests_are_forwarded_like_http1_ones() {
    let up = Upstream::start(|s| ok(&format!("{} {}", s.method, s.body.len()))).await;
    let edge = Edge::start(&site(&[HOST], &[&up.addr()], "")).await;
    let mut send = h2(edge.https(), HOST).await;
    let req = http::Request::get(format!("https://{HOST}/two?x=1"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("x-forwarded-for", "6.6.6.6")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let (status, _, body) = h2_request(&mut send, req).await;
    assert_eq!((status.as_u16(), body.as_slice()), (200, &b"GET 0"[..]));
    let data = vec![b'p'; 300_000];
    let req = http::Request::post(format!("https://{HOST}/upload"))
        .body(http_body_util::Full::new(bytes::Bytes::from(data)))
        .unwrap();
    let (status, _, body) = h2_request(&mut send, req).await;
    assert_eq!(
        (status.as_u16(), body.as_slice()),
        (200, &b"POST 300000"[..])
    );
    let seen = up.seen();
    let r = &seen[0];
    assert_eq!(r.target, "/two?x=1");
    assert_eq!(r.header("host"), Some(HOST));
    assert_eq!(r.all("cookie"), ["a=1; b=2"]);
    assert_eq!(r.all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(r.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen[1].body.len(), 300_000);
    // Another name on this connection: 421.
    let req = http::Request::get("https://other.test/")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(h2_request(&mut send, req).await.0.as_u16(), 421);
}

/// Round robin over three, a refused upstream skipped without losing the
/// request, 502 with the site's own page when none answers.
#[tokio::test(start_paused = true)]
async fn round_robin_fails_over_and_answers_502_with_the_sites_page_when_all_are_down() {
    let ups = [
        Upstream::named("a").await,
        Upstream::named("b").await,
        Upstream::named("c").await,
    ];
    let addrs: Vec<String> = ups.iter().map(Upstream::addr).collect();
    let refused = refusing().await;
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("50x.html");
    std::fs::write(&page, "<p>our own outage page</p>").unwrap();
    let edge = Edge::start(&site(
        &[HOST],
        &[&addrs[0], &addrs[1], &refused, &addrs[2]],
        &format!("error_pages = {{ 502 = {:?} }}", page.display().to_string()),
    ))
    .await;
    let mut got = Vec::new();
    for _ in 0..8 {
        let a = get(edge.https(), HOST, "/").await;
        assert_eq!(a.status, 200);
        got.push(a.text());
    }
    // Every request answered; the three live ones share the load.
    for name in ["a", "b", "c"] {
        assert!(got.iter().filter(|g| *g == name).count() >= 2, "{got:?}");
    }
    edge.shutdown().await;
    drop(ups);
    let edge = Edge::start(&site(
        &[HOST],
        &[&refused],
        &format!("error_pages = {{ 502 = {:?} }}", page.display().to_string()),
    ))
    .await;
    let a = get(edge.https(), HOST, "/").await;
    assert_eq!(a.status, 502);
    assert_eq!(a.text(), "<p>our own outage page</p>");
}

/// Bodies both ways, large and streamed: what arrives is what was sent.
#[tokio::test(start_paused = true)]
async fn large_bodies_arrive_whole_both_ways() {
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    let b2 = big.clone();
    let up = Upstream::start(move |s| {
        if s.method == "POST" {
            assert_eq!(s.body.len(), 3_000_000);
            ok("uploaded")
        } else {
            Reply::Answer(200, vec![], b2.clone())
        }
    })
    .await;
    let edge = Edge::start(&site(&[HOST], &[&up.addr()], "")).await;
    let a = get(edge.https(), HOST, "/big").await;
    assert_eq!(a.body.len(), big.len());
    assert!(a.body == big, "the body changed on the way");
    let mut c = tls(edge.https(), HOST).await;
    let mut req = b"POST /up HTTP/1.1\r\nHost: app.example.test\r\nContent-Length: 3000000\r\nConnection: close\r\n\r\n".to_vec();
    req.extend(vec![b'u'; 3_000_000]);
    let a = exchange(&mut c, &req).await.unwrap();
    assert_eq!(a.text(), "uploaded");
}

/// Each way an upstream can fail keeps its kind: its status for the client
/// (502, or 504 for a timeout), and its count in
/// `edge_upstream_failures_total` by kind, for the operator.
#[tokio::test(start_paused = true)]
async fn upstream_failures_keep_their_kind_in_the_status_and_the_metrics() {
    let refused = refusing().await;
    let closes = Upstream::start(|_| Reply::Close).await;
    let garbage = Upstream::start(|_| Reply::Raw(b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec())).await;
    let hangs = Upstream::start(|_| Reply::Hang).await;
    let cases = [
        ("refused.test", refused.clone(), "refused", 502),
        ("reset.test", closes.addr(), "reset", 502),
        ("bad.test", garbage.addr(), "bad_answer", 502),
        ("slow.test", hangs.addr(), "timeout", 504),
    ];
    let mut config = String::new();
    for (name, addr, _, _) in &cases {
        config.push_str(&site(
            &[name],
            &[addr],
            "max_fails = 0\nresponse_timeout = \"5s\"",
        ));
    }
    let edge = Edge::start(&config).await;
    for (name, _, _, status) in &cases {
        assert_eq!(get(edge.https(), name, "/").await.status, *status, "{name}");
    }
    let metrics = edge::metrics::METRICS.encode();
    for (name, addr, kind, _) in &cases {
        let line = format!(
            "edge_upstream_failures_total{{site=\"{name}\",upstream=\"{addr}\",kind=\"{kind}\"}} 1"
        );
        assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");
    }
}
