//! What an operator sees: one access-log line per request whatever became of
//! it, in both formats, and no daemon log line a peer can produce at will.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::harness::logs::Captured;
use crate::harness::*;

const HOST: &str = "watch.example.test";
const N: usize = 3;

/// The upstream: `/slow` answers after 2 s; `/long` sends its head and a
/// first piece, then the rest in pieces a second apart; the rest at once.
async fn upstream() -> Upstream {
    Upstream::start(|s| match s.target.as_str() {
        "/slow" | "/slow2" => Reply::After(secs(2), Box::new(ok("late"))),
        "/long" => {
            let mut pieces = vec![(
                Duration::ZERO,
                b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\nfirst".to_vec(),
            )];
            for _ in 0..20 {
                pieces.push((SECOND, vec![b'x'; 49_999]));
            }
            Reply::Pieces(pieces, true)
        }
        _ => ok("fine"),
    })
    .await
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    // Text: `name=value`; JSON: `"name":value` or `"name":"value"`.
    if let Some(i) = line.find(&format!("\"{name}\":")) {
        let rest = &line[i + name.len() + 3..];
        let rest = rest.strip_prefix('"').unwrap_or(rest);
        return rest.split(['"', ',', '}']).next();
    }
    let i = line.find(&format!(" {name}="))?;
    line[i + name.len() + 2..].split(' ').next()
}

fn count(lines: &[String], path: &str, status: &str, end: &str) -> usize {
    lines
        .iter()
        .filter(|l| {
            field(l, "path") == Some(path)
                && field(l, "status") == Some(status)
                && field(l, "end") == Some(end)
        })
        .count()
}

async fn abandoned_h1(edge: &Edge, path: &str, after: Duration) {
    let mut c = tls(edge.https(), HOST).await;
    c.write_all(format!("GET {path} HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(after).await;
    drop(c);
}

async fn every_kind_of_request_gets_exactly_one_line(json: bool) {
    let log = Captured::start(json);
    let up = upstream().await;
    let edge = Edge::start(&site(&[HOST], &[&up.addr()], "")).await;

    // Completed, over HTTP/1.1 and HTTP/2.
    for _ in 0..N {
        assert_eq!(get(edge.https(), HOST, "/done").await.status, 200);
    }
    let mut h2c = h2(edge.https(), HOST).await;
    for _ in 0..N {
        let req = http::Request::get(format!("https://{HOST}/done2"))
            .body(Default::default())
            .unwrap();
        assert_eq!(h2_request(&mut h2c, req).await.0, 200);
    }
    // Abandoned before the answer: the client leaves after 0.5 s of the
    // upstream's 2 s. HTTP/1.1 closes; HTTP/2 resets the stream.
    for _ in 0..N {
        abandoned_h1(&edge, "/slow", Duration::from_millis(500)).await;
    }
    let tls2 = tls_alpn(edge.https(), HOST, &[b"h2"]).await;
    let (mut raw2, conn) = h2::client::handshake(tls2).await.unwrap();
    let driver = tokio::spawn(conn);
    for _ in 0..N {
        raw2 = raw2.ready().await.unwrap();
        let req = http::Request::get(format!("https://{HOST}/slow2"))
            .body(())
            .unwrap();
        let (_answer, mut stream) = raw2.send_request(req, true).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        stream.send_reset(h2::Reason::CANCEL);
    }
    // Abandoned mid-answer: the head and a first piece came, then the
    // client left.
    for _ in 0..N {
        abandoned_h1(&edge, "/long", Duration::from_millis(1500)).await;
    }
    // Refused by edge before routing: a malformed head (400).
    for _ in 0..N {
        let mut c = tls(edge.https(), HOST).await;
        c.write_all(b"GET /bad HTTP/1.1\r\nhost: a\r\nno colon here\r\n\r\n")
            .await
            .unwrap();
        let _ = read_to_close(&mut c).await;
    }
    // Reset by edge: an HTTP/2 request whose DATA overruns its declared
    // content-length is malformed (RFC 9113 §8.1.1); the stream is reset,
    // never answered.
    for _ in 0..N {
        raw2 = raw2.ready().await.unwrap();
        let req = http::Request::post(format!("https://{HOST}/overrun"))
            .header("content-length", "5")
            .body(())
            .unwrap();
        let (answer, mut stream) = raw2.send_request(req, false).unwrap();
        stream
            .send_data(bytes::Bytes::from_static(b"0123456789"), true)
            .unwrap();
        let got = within(secs(10), "the overrun stream's end", answer).await;
        assert!(got.is_err(), "an overrun stream was answered: {got:?}");
    }
    tokio::time::sleep(secs(30)).await;
    drop(raw2);
    driver.abort();

    let lines = log.access();
    let all = || lines.join("\n");
    assert_eq!(count(&lines, "/done", "200", "done"), N, "{}", all());
    assert_eq!(count(&lines, "/done2", "200", "done"), N, "{}", all());
    assert_eq!(
        count(&lines, "/slow", "499", "client_closed"),
        N,
        "{}",
        all()
    );
    assert_eq!(
        count(&lines, "/slow2", "499", "client_closed"),
        N,
        "{}",
        all()
    );
    assert_eq!(count(&lines, "/long", "200", "cut"), N, "{}", all());
    assert_eq!(count(&lines, "/bad", "400", "done"), N, "{}", all());
    assert_eq!(
        lines
            .iter()
            .filter(|l| field(l, "path") == Some("/overrun"))
            .count(),
        N,
        "{}",
        all()
    );
    assert!(
        lines
            .iter()
            .filter(|l| field(l, "path") == Some("/overrun"))
            .all(|l| field(l, "end") == Some("reset")),
        "{}",
        all()
    );
    assert_eq!(
        lines.len(),
        7 * N,
        "one line per request, no more: {}",
        all()
    );
    // The abandoned requests were dropped at once: the upstream's late
    // answers went to no one, and nothing was written for them.
    assert!(up.count() >= 5 * N);
}

#[tokio::test(start_paused = true)]
async fn every_kind_of_request_gets_exactly_one_access_line_in_text() {
    every_kind_of_request_gets_exactly_one_line(false).await;
}

#[tokio::test(start_paused = true)]
async fn every_kind_of_request_gets_exactly_one_access_line_in_json() {
    every_kind_of_request_gets_exactly_one_line(true).await;
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Sends `frames` on a fresh HTTP/2 connection after the preface, reading
/// what edge sends, until edge closes or a while has passed.
async fn h2_flood(edge: &Edge, frames: &[u8]) {
    let mut c = tls_alpn(edge.https(), HOST, &[b"h2"]).await;
    let mut all = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    all.extend(h2_frame(4, 0, 0, &[]));
    all.extend_from_slice(frames);
    let _ = c.write_all(&all).await;
    let _ = tokio::time::timeout(secs(2), read_to_close(&mut c)).await;
}

/// Each thing a peer can repeat at will, flooded: the daemon's own log (not
/// the access log, which has its line per request by design) grows by a few
/// lines at most, and edge still serves.
#[tokio::test(start_paused = true)]
async fn no_peer_can_flood_the_daemon_log() {
    let _ = tracing_log::LogTracer::init();
    let up = upstream().await;
    let edge = Edge::start(&format!(
        "[limits]\nmax_connections_per_ip = 4\nheader_read_timeout = \"1s\"\n{}",
        site(&[HOST], &[&up.addr()], "")
    ))
    .await;
    let log = Captured::start(false);
    let base = log.daemon().len();

    // Unsolicited PING acks and frames of unknown types, 2,000 each.
    let mut pings = Vec::new();
    for i in 0..2000u64 {
        pings.extend(h2_frame(6, 1, 0, &i.to_be_bytes()));
    }
    h2_flood(&edge, &pings).await;
    let mut unknown = Vec::new();
    for _ in 0..2000 {
        unknown.extend(h2_frame(0xb7, 0, 0, b"junk"));
    }
    h2_flood(&edge, &unknown).await;
    // Bad TLS records and malformed HTTP/1 heads, one connection each.
    for _ in 0..100 {
        let mut c = connect(edge.https()).await;
        let _ = c.write_all(b"\x16\x03\x01\x00\x10not a handshake!").await;
        let _ = tokio::time::timeout(secs(1), read_to_close(&mut c)).await;
        let mut c = tls(edge.https(), HOST).await;
        let _ = c
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\nno colon\r\n\r\n")
            .await;
        let _ = tokio::time::timeout(secs(1), read_to_close(&mut c)).await;
    }
    // Heads that never finish (closed at header_read_timeout), in batches within
    // the per-address cap.
    for _ in 0..25 {
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut c = tls(edge.https(), HOST).await;
            let _ = c.write_all(b"GET / HTTP/1.1\r\n").await;
            held.push(c);
        }
        for mut c in held {
            let _ = tokio::time::timeout(secs(3), read_to_close(&mut c)).await;
        }
    }
    // Connections past the per-address cap.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tls(edge.https(), HOST).await);
    }
    for _ in 0..300 {
        let mut c = connect(edge.https()).await;
        let _ = tokio::time::timeout(secs(1), read_to_close(&mut c)).await;
    }
    drop(held);
    tokio::time::sleep(secs(1)).await;

    let grew: Vec<String> = log.daemon().split_off(base);
    assert!(
        grew.len() <= 6,
        "{} daemon log lines from the floods:\n{}",
        grew.len(),
        grew.join("\n")
    );
    assert_eq!(get(edge.https(), HOST, "/after").await.status, 200);
}

/// A certificate and key for `names` that expires in `days` (and began 85
/// days before now).
fn expiring(names: &[&str], days: i64) -> (String, String) {
    let mut p =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(85);
    p.not_after = now + time::Duration::days(days);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// One HTTP/1.0 request to the metrics listener: status and body.
async fn metrics_get(edge: &Edge, path: &str, auth: Option<&str>) -> (u16, String) {
    let mut c = connect(edge.bound.metrics.expect("metrics on")).await;
    let auth = auth
        .map(|a| format!("authorization: {a}\r\n"))
        .unwrap_or_default();
    c.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n{auth}\r\n").as_bytes())
        .await
        .unwrap();
    let raw = within(
        secs(10),
        "the metrics listener's answer",
        read_to_close(&mut c),
    )
    .await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The status page, its JSON and `edge status`'s snapshot say which
/// certificate each name is served with, how long it has left, and which
/// upstream is out and why; a certificate a week from expiry and a long
/// outage are what needs a person.
#[tokio::test(start_paused = true)]
async fn the_status_page_and_edge_status_show_certificates_and_a_down_upstream() {
    let up = upstream().await;
    let dead = refusing().await;
    let body =
        format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n[acme]\ndirectory = \"http://127.0.0.1:9/dir\"\n{}{}",
        site(&["one.test"], &[&up.addr()], ""),
        site(&["two.test"], &[&up.addr(), &dead], "max_fails = 1\nfail_timeout = \"2s\"")
    );
    let edge = Edge::start_with(&body, false).await;
    let (c1, k1) = expiring(&["one.test"], 60);
    put_live(&edge.state(), "one.test", &c1, &k1);
    let (c2, k2) = expiring(&["two.test"], 5);
    put_live(&edge.state(), "two.test", &c2, &k2);
    edge.reload(&body).await;
    for _ in 0..4 {
        let _ = get(edge.https(), "two.test", "/").await;
    }
    assert_eq!(get(edge.https(), "one.test", "/").await.status, 200);

    let (status, json) = metrics_get(&edge, "/status.json", None).await;
    assert_eq!(status, 200, "{json}");
    let snap: edge::status::Snapshot = serde_json::from_str(&json).unwrap();
    let one = snap
        .certificates
        .iter()
        .find(|c| c.names == ["one.test"])
        .unwrap();
    assert_eq!(one.lineage.as_deref(), Some("one.test"));
    assert!((59.0..=60.5).contains(&one.days_left), "{}", one.days_left);
    assert!(one.next_renewal.is_some(), "{one:?}");
    let two = snap
        .certificates
        .iter()
        .find(|c| c.names == ["two.test"])
        .unwrap();
    assert!(two.days_left < 7.0);
    let site2 = snap.sites.iter().find(|s| s.name == "two.test").unwrap();
    let down = site2.upstreams.iter().find(|u| u.addr == dead).unwrap();
    assert!(!down.up);
    assert_eq!(down.down_why.as_deref(), Some("refused"));
    let alive = site2
        .upstreams
        .iter()
        .find(|u| u.addr == up.addr())
        .unwrap();
    assert!(alive.up);
    // Within the week, the certificate needs a person; the outage does once
    // it has lasted ten times fail_timeout.
    let problems = snap.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("two.test: certificate expires in"),
        "{problems:?}"
    );

    let (status, html) = metrics_get(&edge, "/", None).await;
    assert_eq!(status, 200);
    for want in [
        "one.test",
        "two.test",
        "DOWN",
        "refused",
        &dead,
        "http-equiv=\"refresh\"",
    ] {
        assert!(html.contains(want), "no {want:?} in the page:\n{html}");
    }
    assert!(!html.contains("<script"), "the page needs no script");
    let (status, metrics) = metrics_get(&edge, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(metrics.contains("edge_requests_total"));

    // `edge status` asks the same over the control socket.
    tokio::time::sleep(secs(25)).await;
    let asked = within(secs(10), "edge status", edge::certs::status(&edge.state()))
        .await
        .unwrap();
    let problems = asked.problems();
    assert_eq!(problems.len(), 2, "{problems:?} {:?}", asked.sites);
    assert!(
        problems[1].contains(&format!("upstream {dead} down for")),
        "{problems:?}"
    );
    let text = edge::status::text::render(&asked);
    assert!(
        text.contains("Needs a person:") && text.contains("two.test"),
        "{text}"
    );
}

/// With `[metrics] username` and `password_file`, everything on the
/// listener needs them.
#[tokio::test(start_paused = true)]
async fn the_status_page_takes_basic_auth_when_set() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "s3cret\n").unwrap();
    let body = format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\nusername = \"ops\"\npassword_file = {:?}\n{}",
        pass.display().to_string(),
        site(&[HOST], &[&up.addr()], "")
    );
    let edge = Edge::start(&body).await;
    for path in ["/", "/status.json", "/metrics"] {
        assert_eq!(metrics_get(&edge, path, None).await.0, 401, "{path}");
        let wrong = edge::status::listener::basic_auth("ops", "guess");
        assert_eq!(
            metrics_get(&edge, path, Some(&wrong)).await.0,
            401,
            "{path}"
        );
        let right = edge::status::listener::basic_auth("ops", "s3cret");
        assert_eq!(
            metrics_get(&edge, path, Some(&right)).await.0,
            200,
            "{path}"
        );
    }
}

fn v1(client: &str, port: u16) -> Vec<u8> {
    let family = if client.contains(':') { "TCP6" } else { "TCP4" };
    let dst = if client.contains(':') {
        "::1"
    } else {
        "10.0.0.1"
    };
    format!("PROXY {family} {client} {dst} {port} 443\r\n").into_bytes()
}

fn v2(client: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    h.extend(client);
    h.extend([10, 0, 0, 1]);
    h.extend(port.to_be_bytes());
    h.extend(443u16.to_be_bytes());
    h
}

async fn pp_edge(from: &str, limits: &str, up: &Upstream) -> Edge {
    Edge::start(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\nproxy_protocol = true\nproxy_protocol_from = [{from:?}]\n[limits]\n{limits}\n{}",
        site(&[HOST], &[&up.addr()], "")
    ))
    .await
}

/// PROXY protocol v1 and v2 from an allowed balancer: the carried address
/// is the client's in X-Forwarded-For, X-Real-IP and the access log, on the
/// HTTPS and the plain-HTTP listener.
#[tokio::test(start_paused = true)]
async fn proxy_protocol_carries_the_client_address() {
    let log = Captured::start(false);
    let up = upstream().await;
    let edge = pp_edge("127.0.0.0/8", "", &up).await;
    for (header, client) in [
        (v1("203.0.113.7", 51000), "203.0.113.7"),
        (v1("2001:db8::7", 51001), "2001:db8::7"),
        (v2([198, 51, 100, 9], 40000), "198.51.100.9"),
    ] {
        let mut c = tls_after(edge.https(), HOST, &header).await.unwrap();
        let a = exchange(
            &mut c,
            format!("GET /pp HTTP/1.1\r\nhost: {HOST}\r\nx-forwarded-for: 6.6.6.6\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(a.status, 200);
        let seen = up.seen().pop().unwrap();
        assert_eq!(seen.header("x-forwarded-for"), Some(client));
        assert_eq!(seen.header("x-real-ip"), Some(client));
        assert!(
            log.access()
                .iter()
                .any(|l| l.contains(&format!("client={client} ")) && l.contains("path=/pp")),
            "{:?}",
            log.access()
        );
    }
    // The redirect listener reads it too.
    let mut c = connect(edge.http()).await;
    let mut req = v1("192.0.2.44", 50000);
    req.extend(format!("GET /r HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes());
    let a = exchange(&mut c, &req).await.unwrap();
    assert_eq!(a.status, 308);
    assert!(
        log.access()
            .iter()
            .any(|l| l.contains("client=192.0.2.44 ") && l.contains("path=/r")),
        "{:?}",
        log.access()
    );
}

/// From an address not in proxy_protocol_from, with a malformed header, or
/// with none: closed, nothing forwarded; the same header from the balancer
/// works.
#[tokio::test(start_paused = true)]
async fn proxy_protocol_from_elsewhere_or_malformed_is_closed() {
    let up = upstream().await;
    let edge = pp_edge("10.9.9.9/32", "", &up).await;
    assert!(
        tls_after(edge.https(), HOST, &v1("203.0.113.7", 1))
            .await
            .is_err(),
        "from elsewhere"
    );
    let mut c = connect(edge.http()).await;
    let _ = c
        .write_all(
            &[
                v1("203.0.113.7", 1),
                b"GET / HTTP/1.1\r\nhost: a\r\n\r\n".to_vec(),
            ]
            .concat(),
        )
        .await;
    assert!(
        read_to_close(&mut c).await.is_empty(),
        "answered from elsewhere"
    );

    let edge = pp_edge("127.0.0.1/32", "", &up).await;
    for bad in [
        b"PROXY TCP4 999.1.1.1 10.0.0.1 1 443\r\n".to_vec(),
        b"PROXY SPX 1 2 3 4\r\n".to_vec(),
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff".to_vec(),
    ] {
        assert!(
            tls_after(edge.https(), HOST, &bad).await.is_err(),
            "{bad:?}"
        );
    }
    // No header at all: the ClientHello is not one.
    assert!(
        tls_after(edge.https(), HOST, b"").await.is_err(),
        "no header"
    );
    // A header that never finishes: closed at handshake_timeout.
    let mut c = connect(edge.https()).await;
    c.write_all(b"PROXY TCP4 203.0.113.7").await.unwrap();
    assert!(within(secs(60), "the close", read_to_close(&mut c))
        .await
        .is_empty());
    assert_eq!(up.count(), 0, "something was forwarded");
    let mut ok = tls_after(edge.https(), HOST, &v1("203.0.113.8", 2))
        .await
        .unwrap();
    let a = exchange(
        &mut ok,
        format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
}

/// 300 clients through one balancer address, each connection held open,
/// with a per-address cap of 2: the cap counts the carried addresses, so
/// all are served.
#[tokio::test(start_paused = true)]
async fn three_hundred_clients_through_one_balancer_are_all_served() {
    let up = upstream().await;
    let edge = pp_edge("127.0.0.1", "max_connections_per_ip = 2", &up).await;
    let mut held = Vec::new();
    for i in 0..300u32 {
        let client = format!("100.64.{}.{}", i / 250, i % 250 + 1);
        let mut c = tls_after(edge.https(), HOST, &v1(&client, 40000))
            .await
            .unwrap_or_else(|e| panic!("client {i}: {e}"));
        let a = exchange(
            &mut c,
            format!("GET /{i} HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(a.status, 200, "client {i}");
        held.push(c);
    }
    assert_eq!(up.count(), 300);
    // The cap still holds per carried address: 100.64.0.1 holds one, may
    // open one more, not two.
    let second = tls_after(edge.https(), HOST, &v1("100.64.0.1", 1)).await;
    assert!(second.is_ok());
    let third = tls_after(edge.https(), HOST, &v1("100.64.0.1", 2)).await;
    assert!(third.is_err(), "a third connection for one carried address");
}
