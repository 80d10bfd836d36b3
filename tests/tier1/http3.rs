//! HTTP/3: QUIC on the HTTPS port's UDP twin, one more session kind of the
//! same request path. Routing, forwarding headers, balancing, bodies and
//! certificates as over TCP; Alt-Svc on TCP answers; drain on shutdown.

use std::time::Duration;

use crate::harness::h3::H3;
use crate::harness::*;

const HOST: &str = "app.example.test";

fn udp(edge: &Edge) -> std::net::SocketAddr {
    edge.bound.http3.expect("HTTP/3 is on by default")
}

/// Three upstreams answer in turn over HTTP/3, with the forwarding headers
/// edge sets (a client's own replaced), and the upstream gets HTTP/1.1.
#[tokio::test(start_paused = true)]
async fn three_upstreams_answer_in_turn_with_the_forwarding_headers_replaced() {
    let ups = [
        Upstream::named("Version 1").await,
        Upstream::named("Version 2").await,
        Upstream::named("Version 3").await,
    ];
    let addrs: Vec<String> = ups.iter().map(Upstream::addr).collect();
    let edge = Edge::start(&site(&[HOST], &[&addrs[0], &addrs[1], &addrs[2]], "")).await;
    assert_eq!(udp(&edge).port(), edge.https().port(), "UDP on TCP's port");
    let mut h3 = H3::connect(udp(&edge), HOST).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let req = http::Request::get(format!("https://{HOST}/who"))
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-real-ip", "6.6.6.6")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(())
            .unwrap();
        let a = h3.request(req, None).await;
        assert_eq!(a.status, 200);
        assert!(
            a.headers.get("alt-svc").is_none(),
            "Alt-Svc over HTTP/3 itself"
        );
        got.push(a.text());
    }
    got.sort();
    assert_eq!(got, ["Version 1", "Version 2", "Version 3"]);
    for up in &ups {
        let s = &up.seen()[0];
        assert_eq!(s.header("x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(s.header("x-real-ip"), Some("127.0.0.1"));
        assert_eq!(s.header("x-forwarded-proto"), Some("https"));
        assert_eq!(s.header("host"), Some(HOST));
        assert_eq!(s.all("cookie"), ["a=1; b=2"], "cookies joined for HTTP/1.1");
        assert!(
            String::from_utf8_lossy(&s.raw).starts_with("GET /who HTTP/1.1\r\n"),
            "{:?}",
            String::from_utf8_lossy(&s.raw)
        );
        assert!(
            s.header("transfer-encoding").is_none(),
            "a GET went with a body"
        );
    }
}

/// The same rules for names as on TCP: 421 for a name the connection's
/// certificate does not cover, 404 for a covered name with no site.
#[tokio::test(start_paused = true)]
async fn another_name_gets_421_and_a_covered_name_without_a_site_404() {
    let up = Upstream::named("v1").await;
    let body = site(&[HOST], &[&up.addr()], "");
    let dir = tempfile::tempdir().unwrap();
    let cfg = parse(dir.path(), &body);
    let (c, k) = self_signed(&[HOST, "spare.example.test"]);
    put_live(&dir.path().join("state"), HOST, &c, &k);
    let running = within(secs(30), "start", edge::daemon::start(cfg))
        .await
        .unwrap();
    let mut h3 = H3::connect(running.bound.http3.unwrap(), HOST).await;
    assert_eq!(h3.get("other.test", "/").await.status, 421);
    assert_eq!(h3.get("spare.example.test", "/").await.status, 404);
    assert_eq!(h3.get(HOST, "/").await.text(), "v1");
    assert_eq!(up.count(), 1);
    running.shutdown().await;
}

/// A 1 MiB upload arrives whole: chunked to the upstream when the client
/// sent no length (DATA frames only), with its length when it sent one.
#[tokio::test(start_paused = true)]
async fn a_one_mebibyte_post_arrives_intact_chunked_without_a_length() {
    let up = Upstream::start(|s| ok(&format!("{} bytes", s.body.len()))).await;
    let edge = Edge::start(&site(&[HOST], &[&up.addr()], "")).await;
    let body: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    let mut h3 = H3::connect(udp(&edge), HOST).await;
    let req = http::Request::post(format!("https://{HOST}/up"))
        .body(())
        .unwrap();
    let a = h3.request(req, Some(body.clone())).await;
    assert_eq!((a.status, a.text()), (200, "1048576 bytes".to_string()));
    let s = &up.seen()[0];
    assert_eq!(s.body, body, "the body changed on the way");
    assert_eq!(s.header("transfer-encoding"), Some("chunked"));
    let req = http::Request::post(format!("https://{HOST}/up"))
        .header("content-length", body.len())
        .body(())
        .unwrap();
    let a = h3.request(req, Some(body.clone())).await;
    assert_eq!(a.status, 200);
    let s = &up.seen()[1];
    assert_eq!(s.header("content-length"), Some("1048576"));
    assert_eq!(s.body, body);
}

/// HTTP/1.1 and HTTP/2 answers say where HTTP/3 is; with `http3 = false`
/// nothing listens on UDP and nothing says so.
#[tokio::test(start_paused = true)]
async fn tcp_answers_carry_alt_svc_while_http3_is_on() {
    let up = Upstream::named("v1").await;
    let edge = Edge::start(&site(&[HOST], &[&up.addr()], "")).await;
    let want = format!("h3=\":{}\"; ma=86400", edge.https().port());
    let a = get(edge.https(), HOST, "/").await;
    assert_eq!(a.header("alt-svc"), Some(want.as_str()));
    let mut send = h2(edge.https(), HOST).await;
    let req = http::Request::get(format!("https://{HOST}/"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let (status, headers, _) = h2_request(&mut send, req).await;
    assert_eq!(status, 200);
    assert_eq!(headers.get("alt-svc").unwrap(), want.as_str());
    // Errors too: a browser may learn it from any answer.
    assert_eq!(
        get(edge.https(), "nothing.test", "/")
            .await
            .header("alt-svc"),
        Some(want.as_str())
    );
    edge.shutdown().await;

    let edge = Edge::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\nhttp3 = false\n{}",
        site(&[HOST], &[&up.addr()], "")
    ))
    .await;
    assert!(edge.bound.http3.is_none());
    assert!(get(edge.https(), HOST, "/")
        .await
        .header("alt-svc")
        .is_none());
    assert!(
        H3::try_connect(edge.https(), HOST).await.is_err(),
        "a QUIC handshake succeeded with http3 = false"
    );
}

/// A renewed certificate reaches the next QUIC handshake with no restart,
/// and a connection opened before keeps being served.
#[tokio::test(start_paused = true)]
async fn a_certificate_swapped_in_is_served_to_the_next_quic_connection() {
    let up = Upstream::named("v1").await;
    let edge = Edge::start(&site(&[HOST], &[&up.addr()], "")).await;
    let mut old = H3::connect(udp(&edge), HOST).await;
    let before = old.served_serial();
    let (c, k) = self_signed(&[HOST]);
    put_live(&edge.state(), HOST, &c, &k);
    let want = edge::certinfo::inspect(&edge::certinfo::parse_chain(c.as_bytes()).unwrap()[0])
        .unwrap()
        .serial;
    within(secs(10), "the new certificate over QUIC", async {
        while H3::connect(udp(&edge), HOST).await.served_serial() != want {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_ne!(before, want);
    assert_eq!(
        old.get(HOST, "/").await.text(),
        "v1",
        "the old connection still served"
    );
}

/// Shutdown: a request in flight on HTTP/3 finishes; then nothing new is
/// accepted.
#[tokio::test(start_paused = true)]
async fn shutdown_lets_a_request_in_flight_finish() {
    let up = Upstream::start(|_| Reply::After(secs(2), Box::new(ok("slow but whole")))).await;
    let edge = Edge::start(&site(&[HOST], &[&up.addr()], "")).await;
    let addr = udp(&edge);
    let mut h3 = H3::connect(addr, HOST).await;
    let pending = tokio::spawn(async move { h3.get(HOST, "/slow").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let running = {
        let mut edge = edge;
        edge.stop()
    };
    let a = within(secs(30), "the answer in flight", pending)
        .await
        .unwrap();
    assert_eq!((a.status, a.text()), (200, "slow but whole".to_string()));
    within(secs(60), "shutdown", running.wait()).await;
    assert!(
        H3::try_connect(addr, HOST).await.is_err(),
        "accepted after shutdown"
    );
}

/// The metrics and the access log say which protocol carried a request.
#[tokio::test(start_paused = true)]
async fn metrics_count_http3_requests_by_protocol() {
    let up = Upstream::named("v1").await;
    let name = "metrics.http3.test";
    let edge = Edge::start(&site(&[name], &[&up.addr()], "")).await;
    let mut h3 = H3::connect(udp(&edge), name).await;
    assert_eq!(h3.get(name, "/").await.status, 200);
    assert_eq!(get(edge.https(), name, "/").await.status, 200);
    let m = edge::metrics::METRICS.encode();
    for proto in ["http3", "http1"] {
        let line = format!(
            "edge_requests_total{{site=\"{name}\",class=\"2xx\",upstream=\"{}\",proto=\"{proto}\"}} 1",
            up.addr()
        );
        assert!(m.contains(&line), "no {line:?} in\n{m}");
    }
}

async fn edge_with_limits(limits: &str, up: &Upstream) -> Edge {
    Edge::start(&format!(
        "[limits]\n{limits}\n{}",
        site(&[HOST], &[&up.addr()], "")
    ))
    .await
}

/// Streams opened and reset at once, in a loop (HTTP/3's rapid reset): none
/// reaches the upstream, the connection is closed once it passes
/// `h2_max_pending_resets`, and other clients are served.
#[tokio::test(start_paused = true)]
async fn streams_reset_at_once_reach_no_upstream_and_a_flood_is_cut() {
    let up = Upstream::named("v1").await;
    let edge = edge_with_limits("h2_max_pending_resets = 10", &up).await;
    let mut h3 = H3::connect(udp(&edge), HOST).await;
    let mut sent = 0;
    for i in 0..200 {
        let req = http::Request::get(format!("https://{HOST}/reset{i}"))
            .body(())
            .unwrap();
        if h3.send_and_reset(req).await.is_err() {
            break;
        }
        sent += 1;
        tokio::task::yield_now().await;
    }
    assert!(sent > 10, "only {sent} streams went out");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        up.seen().iter().all(|s| !s.target.starts_with("/reset")),
        "a reset stream reached the upstream: {:?}",
        up.seen().iter().map(|s| &s.target).collect::<Vec<_>>()
    );
    assert!(
        h3.try_request(
            http::Request::get(format!("https://{HOST}/more"))
                .body(())
                .unwrap(),
            None
        )
        .await
        .is_err(),
        "the flooding connection is still open"
    );
    let mut other = H3::connect(udp(&edge), HOST).await;
    assert_eq!(other.get(HOST, "/after").await.text(), "v1");
}

/// A header section over `max_header_bytes`: refused (431 or the stream
/// closed), nothing forwarded, and the next request is served.
#[tokio::test(start_paused = true)]
async fn an_oversized_header_section_reaches_no_upstream() {
    let up = Upstream::named("v1").await;
    let edge = edge_with_limits("max_header_bytes = \"16k\"", &up).await;
    let mut h3 = H3::connect(udp(&edge), HOST).await;
    let req = http::Request::get(format!("https://{HOST}/big"))
        .header("x-big", "a".repeat(20 * 1024))
        .body(())
        .unwrap();
    match h3.try_request(req, None).await {
        Ok(a) => assert_eq!(a.status, 431),
        Err(e) => assert!(!e.is_empty()),
    }
    assert_eq!(up.count(), 0);
    let mut other = H3::connect(udp(&edge), HOST).await;
    assert_eq!(other.get(HOST, "/after").await.text(), "v1");
}

/// QUIC connections count against the same per-address budget as TCP ones.
#[tokio::test(start_paused = true)]
async fn quic_and_tcp_share_the_per_address_connection_limit() {
    let up = Upstream::named("v1").await;
    let edge = edge_with_limits("max_connections_per_ip = 3", &up).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(H3::connect(udp(&edge), HOST).await);
    }
    let tcp = tls(edge.https(), HOST).await;
    assert!(
        H3::try_connect(udp(&edge), HOST).await.is_err(),
        "a fourth connection from one address was accepted"
    );
    drop(tcp);
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = H3::connect(udp(&edge), HOST).await;
    assert_eq!(again.get(HOST, "/").await.text(), "v1");
}

/// Initial packets, each a new handshake, captured from a real QUIC client
/// that never hears back (so each has its own connection IDs).
async fn initials(n: usize) -> Vec<Vec<u8>> {
    let sink = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = sink.local_addr().unwrap();
    let tls = crate::harness::client::client_config(&[b"h3"]);
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 2048];
    while got.len() < n {
        pending.push(client.connect(to, HOST).unwrap());
        let (len, _) = within(secs(5), "an Initial", sink.recv_from(&mut buf))
            .await
            .unwrap();
        // Long header, type Initial (RFC 9000 §17.2.2); a retransmission of
        // an earlier one would repeat its connection ID, so keep the new.
        let dcid = |p: &[u8]| p[5..6 + p[5] as usize].to_vec();
        if buf[0] & 0xb0 == 0x80 && !got.iter().any(|g| dcid(g) == dcid(&buf)) {
            got.push(buf[..len].to_vec());
        }
    }
    got
}

/// A flood of Initial packets from one address: past a few dozen handshakes
/// in progress, edge answers each new one with a stateless Retry instead of
/// a handshake, so the flood cannot make it hold hundreds; nothing reaches
/// the upstream, and another client (which answers the Retry) is served.
#[tokio::test(start_paused = true)]
async fn a_flood_of_initial_packets_gets_retry_and_other_clients_are_served() {
    let up = Upstream::named("v1").await;
    let edge = edge_with_limits("", &up).await;
    let flood = initials(400).await;
    let attacker = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    // Edge's answers, by the connection ID they are addressed to (the
    // client's source ID): a Retry (type 3) or a handshake (Initial, type
    // 0). Read while the flood goes out, so none is lost to a full buffer.
    let listen = attacker.clone();
    let answers = tokio::spawn(async move {
        let (mut retries, mut handshakes) = (
            std::collections::HashSet::new(),
            std::collections::HashSet::new(),
        );
        let mut buf = vec![0u8; 65536];
        while let Ok(Ok((len, _))) =
            tokio::time::timeout(Duration::from_millis(300), listen.recv_from(&mut buf)).await
        {
            let p = &buf[..len];
            if p[0] & 0x80 == 0 {
                continue;
            }
            let dcid = p[6..6 + p[5] as usize].to_vec();
            match (p[0] >> 4) & 3 {
                3 => retries.insert(dcid),
                0 => handshakes.insert(dcid),
                _ => false,
            };
        }
        (retries, handshakes)
    });
    for (i, p) in flood.iter().enumerate() {
        attacker.send_to(p, udp(&edge)).await.unwrap();
        if i % 8 == 7 {
            tokio::task::yield_now().await;
        }
    }
    let (retries, handshakes) = answers.await.unwrap();
    assert!(
        handshakes.len() <= 64,
        "{} handshakes begun for one address's flood",
        handshakes.len()
    );
    assert!(
        retries.len() >= 330,
        "only {} of 400 Initials were answered with Retry",
        retries.len()
    );
    let mut other = H3::connect(udp(&edge), HOST).await;
    assert_eq!(other.get(HOST, "/after").await.text(), "v1");
    assert_eq!(
        up.count(),
        1,
        "only the other client's request went upstream"
    );
}
