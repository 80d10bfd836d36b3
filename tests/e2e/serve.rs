//! `edge serve` end to end: three real Flask backends, real curl and openssl.

use std::time::Duration;

use crate::common::*;

fn trio_config(extra_site: &str) -> (Vec<Flask>, tempfile::TempDir, std::path::PathBuf) {
    trio_config_with("", extra_site)
}

/// `top`: top-level keys, which TOML needs before the first table.
fn trio_config_with(
    top: &str,
    extra_site: &str,
) -> (Vec<Flask>, tempfile::TempDir, std::path::PathBuf) {
    let trio = flask_trio();
    let ups: Vec<String> = trio.iter().map(Flask::addr).collect();
    let (dir, path) = config(&format!(
        "{top}{}{}{extra_site}",
        listen_any(),
        site(&["flask.test", "*.apps.test"], &ups)
    ));
    (trio, dir, path)
}

fn version_of(body: &str) -> Option<u32> {
    let i = body.find("Version")? + "Version".len();
    body[i..i + 1].parse().ok()
}

#[test]
fn round_robin_redirect_http2_and_forwarding_headers() {
    // One worker runs tokio's single-threaded scheduler (the others get the
    // default, one per CPU), so this covers both runtimes.
    let (_trio, _dir, cfg) = trio_config_with("workers = 1\n", "");
    let edge = Edge::serve(&cfg);
    let port = edge.https.port();

    // Round robin: 1, 2, 3 in turn, twice.
    let seen: Vec<u32> = (0..6)
        .map(|_| {
            let (code, body) = curl("flask.test", port, "/", &[]);
            assert_eq!(code, 200, "{body}");
            version_of(&body).unwrap()
        })
        .collect();
    assert_eq!(seen, vec![1, 2, 3, 1, 2, 3]);

    // HTTP/2 to the client.
    let (code, v) = curl(
        "flask.test",
        port,
        "/",
        &[
            "--http2",
            "-sSo",
            "/dev/null",
            "-w",
            "%{http_version}\n%{http_code}",
        ],
    );
    assert_eq!(code, 200);
    assert_eq!(v, "2", "expected HTTP/2");

    // A wildcard site name routes too.
    let (code, body) = curl("x.apps.test", port, "/", &[]);
    assert_eq!(code, 200, "{body}");

    // The backend sees edge's forwarding headers, not the client's spoofed ones.
    let (code, body) = curl(
        "flask.test",
        port,
        "/headers",
        &[
            "-H",
            "X-Forwarded-For: 6.6.6.6",
            "-H",
            "X-Real-IP: 6.6.6.6",
            "-H",
            "X_Forwarded_For: 7.7.7.7",
            "-H",
            "X-Forwarded-Proto: http",
            "-H",
            "Connection: keep-alive, X-Forwarded-Host",
        ],
    );
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let h = &v["headers"];
    assert_eq!(h["X-Forwarded-For"], "127.0.0.1", "{body}");
    assert_eq!(h["X-Real-Ip"], "127.0.0.1", "{body}");
    assert_eq!(h["X-Forwarded-Proto"], "https", "{body}");
    assert_eq!(h["X-Forwarded-Host"], "flask.test", "{body}");
    assert_eq!(h["Host"], format!("flask.test:{port}"), "{body}");
    assert_eq!(
        v["environ_forwarded_for"], "127.0.0.1",
        "underscore header reached WSGI: {body}"
    );
    assert!(h
        .get("Connection")
        .is_none_or(|c| c != "keep-alive, X-Forwarded-Host"));

    // HTTP redirects to HTTPS with path and query kept exactly, and the port.
    let out = raw(
        edge.http,
        b"GET /a/b%20c?x=1&y=%2F HTTP/1.1\r\nHost: flask.test\r\nConnection: close\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 308"), "{out}");
    assert!(
        out.contains(&format!(
            "location: https://flask.test:{port}/a/b%20c?x=1&y=%2F\r\n"
        )),
        "{out}"
    );
    // Without a usable Host: 400.
    let out = raw(edge.http, b"GET / HTTP/1.0\r\n\r\n");
    assert!(
        out.starts_with("HTTP/1.0 400") || out.starts_with("HTTP/1.1 400"),
        "{out}"
    );
    let out = raw(
        edge.http,
        b"GET / HTTP/1.1\r\nHost: evil.test/x\r\nConnection: close\r\n\r\n",
    );
    assert!(out.contains(" 400 "), "{out}");

    // One access-log line per request, with the upstream.
    edge.proc
        .wait_for("upstream=\"127.0.0.1:", Duration::from_secs(5));
    // Another process's pipe: the line may arrive after the answer did.
    edge.proc.wait_for("status=308", Duration::from_secs(5));
}

#[test]
fn failover_when_a_backend_stops_and_502_when_all_do() {
    let (mut trio, _dir, cfg) = trio_config("");
    let edge = Edge::serve(&cfg);
    let port = edge.https.port();
    trio[1].proc.kill();
    let mut seen = Vec::new();
    for _ in 0..9 {
        let (code, body) = curl("flask.test", port, "/", &[]);
        assert_eq!(code, 200, "a request failed with one backend down: {body}");
        seen.push(version_of(&body).unwrap());
    }
    assert!(!seen.contains(&2));
    assert!(seen.contains(&1) && seen.contains(&3));
    for f in trio.iter_mut() {
        f.proc.kill();
    }
    let (code, body) = curl("flask.test", port, "/", &[]);
    assert_eq!(code, 502);
    assert!(body.contains("502 Bad Gateway"), "{body}");
}

#[test]
fn custom_error_page_replaces_the_builtin_one() {
    let dead = free_port();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("50x.html");
    std::fs::write(&page, "<h1>we are fixing it</h1>").unwrap();
    let (_d, cfg) = config(&format!(
        "{}{}error_pages = {{ 502 = \"{}\" }}\n",
        listen_any(),
        site(&["flask.test"], &[format!("127.0.0.1:{dead}")]),
        page.display()
    ));
    let edge = Edge::serve(&cfg);
    let (code, body) = curl("flask.test", edge.https.port(), "/", &[]);
    assert_eq!(code, 502);
    assert_eq!(body, "<h1>we are fixing it</h1>");
}

#[test]
fn certificate_per_sni_wildcard_and_placeholder() {
    let trio = [Flask::start(1)];
    let ups: Vec<String> = trio.iter().map(Flask::addr).collect();
    let (dir, cfg) = config(&format!(
        "{}{}{}",
        listen_any(),
        site(&["a.test", "x.wild.test"], &ups),
        site(&["c.test"], &ups)
    ));
    // Two certificates stored as certbot would lay them out.
    let state = dir.path().join("state");
    for (name, names) in [
        ("a.test", vec!["a.test"]),
        ("wild.test", vec!["*.wild.test", "other.wild2.test"]),
    ] {
        let (c, k) = self_signed(&names);
        let live = state.join("live").join(name);
        std::fs::create_dir_all(&live).unwrap();
        std::fs::write(live.join("fullchain.pem"), &c).unwrap();
        std::fs::write(live.join("privkey.pem"), &k).unwrap();
    }
    let edge = Edge::serve(&cfg);
    let port = edge.https.port();
    let a = served_serial(port, "a.test");
    let w = served_serial(port, "x.wild.test");
    let c = served_serial(port, "c.test");
    assert!(a.contains("DNS:a.test"), "{a}");
    assert!(w.contains("DNS:*.wild.test"), "{w}");
    assert!(c.contains("DNS:c.test"), "placeholder for c.test: {c}");
    assert_ne!(a, w);
    edge.proc
        .wait_for("self-signed placeholder", Duration::from_secs(5));

    // Host not covered by the connection's certificate: 421; covered but no site: 404.
    let (code, _) = curl("a.test", port, "/", &["-H", "Host: c.test"]);
    assert_eq!(code, 421);
    let (code, _) = curl("y.wild.test", port, "/", &[]);
    assert_eq!(code, 404);
    let (code, body) = curl("x.wild.test", port, "/", &[]);
    assert_eq!(code, 200, "{body}");
}

#[test]
fn redirect_301_when_configured() {
    let (_d, cfg) = config(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\nredirect = 301\n{}",
        site(&["flask.test"], &["127.0.0.1:9".to_string()])
    ));
    let edge = Edge::serve(&cfg);
    let out = raw(
        edge.http,
        b"GET /x?y HTTP/1.1\r\nHost: flask.test:80\r\nConnection: close\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 301"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains(&format!(
            "location: https://flask.test:{}/x?y",
            edge.https.port()
        )),
        "{out}"
    );
}

#[test]
fn sigterm_stops_cleanly() {
    let (_d, cfg) = config(&format!(
        "{}{}",
        listen_any(),
        site(&["flask.test"], &["127.0.0.1:9".to_string()])
    ));
    let mut edge = Edge::serve(&cfg);
    edge.proc.signal("TERM");
    assert_eq!(edge.proc.wait_exit(Duration::from_secs(40)), 0);
    edge.proc.wait_for("edge stopped", Duration::from_secs(1));
}

#[test]
fn check_rejects_bad_configs_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let o = edge(&["check"], &missing);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("nope.toml") && text(&o).contains("cannot read"),
        "{}",
        text(&o)
    );

    let cases: [(&str, &str, &[&str]); 5] = [
        ("state_dir = \n", "bad TOML", &["line 1"]),
        ("bogus_key = 1\n[[site]]\ndomains=[\"a.test\"]\nupstreams=[\"127.0.0.1:1\"]\n", "unknown key", &["bogus_key"]),
        ("[listen]\nhttps = \"0.0.0.0:99999\"\n[[site]]\ndomains=[\"a.test\"]\nupstreams=[\"127.0.0.1:1\"]\n", "bad address", &["listen.https", "99999"]),
        ("[[site]]\ndomains=[\"a.test\"]\nupstreams=[]\n", "empty upstreams", &["site[0].upstreams", "empty"]),
        ("[[site]]\ndomains=[\"a.test\"]\nupstreams=[\"nohostport\"]\n", "bad upstream", &["site[0].upstreams", "host:port"]),
    ];
    for (body, what, needles) in cases {
        let p = dir.path().join("c.toml");
        std::fs::write(&p, body).unwrap();
        let o = edge(&["check"], &p);
        assert_eq!(o.status.code(), Some(1), "{what}");
        let t = text(&o);
        for n in needles {
            assert!(t.contains(n), "{what}: {n:?} missing in: {t}");
        }
    }

    // A valid config with an unreachable upstream is a problem too.
    let (_d, cfg) = config(&site(&["a.test"], &[format!("127.0.0.1:{}", free_port())]));
    let o = edge(&["check"], &cfg);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("not reachable"), "{}", text(&o));
    // And the tutorial's own configs are valid.
    for f in ["config/edge.toml", "config/local.toml"] {
        let raw = std::fs::read_to_string(repo().join(f)).unwrap();
        assert!(
            edge::config::parse(std::path::Path::new(f), &raw).is_ok(),
            "{f}"
        );
    }
}

#[test]
fn metrics_show_requests_per_upstream_and_certificate_expiry() {
    let trio = flask_trio();
    let ups: Vec<String> = trio.iter().map(Flask::addr).collect();
    let (dir, cfg) = config(&format!(
        "{}[metrics]\nlisten = \"127.0.0.1:0\"\n{}",
        listen_any(),
        site(&["flask.test"], &ups)
    ));
    let live = dir.path().join("state/live/flask.test");
    std::fs::create_dir_all(&live).unwrap();
    let (c, k) = self_signed(&["flask.test"]);
    std::fs::write(live.join("fullchain.pem"), c).unwrap();
    std::fs::write(live.join("privkey.pem"), k).unwrap();
    let edge = Edge::serve(&cfg);
    let line = edge.proc.wait_for("edge ready", Duration::from_secs(1));
    let metrics = line
        .split("metrics=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    for _ in 0..6 {
        assert_eq!(curl("flask.test", edge.https.port(), "/", &[]).0, 200);
    }
    let out = std::process::Command::new("curl")
        .args(["-sS", &format!("http://{metrics}/metrics")])
        .output()
        .unwrap();
    let m = String::from_utf8_lossy(&out.stdout);
    for up in &ups {
        let want =
            // curl speaks HTTP/2 to edge (ALPN); the label says so.
            format!("edge_requests_total{{site=\"flask.test\",class=\"2xx\",upstream=\"{up}\",proto=\"http2\"}} 2");
        assert!(m.contains(&want), "{want} missing:\n{m}");
    }
    assert!(
        m.contains("edge_certificate_expiry_timestamp_seconds{name=\"flask.test\"}"),
        "{m}"
    );
    assert!(
        m.contains("edge_tls_handshakes_total{result=\"ok\"}"),
        "{m}"
    );
    assert!(m.contains("edge_request_duration_seconds_bucket"), "{m}");
    assert!(m.contains("edge_open_connections"), "{m}");
}

#[test]
fn tls_resumes_sessions_and_drops_stalled_handshakes() {
    let (dir, cfg) = config(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\nhandshake_timeout = \"1s\"\n{}",
        site(&["flask.test"], &["127.0.0.1:9".to_string()])
    ));
    let edge = Edge::serve(&cfg);
    let port = edge.https.port();
    // Session resumption with tickets, TLS 1.2 and 1.3, as openssl sees it.
    for (v, flag) in [("1.3", "-tls1_3"), ("1.2", "-tls1_2")] {
        let sess = dir.path().join(format!("sess{v}"));
        let run = |extra: &str| {
            let o = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "printf 'GET / HTTP/1.1\\r\\nHost: flask.test\\r\\nConnection: close\\r\\n\\r\\n' | openssl s_client -ign_eof {flag} -connect 127.0.0.1:{port} -servername flask.test {extra} 2>&1"
                ))
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let first = run(&format!("-sess_out {}", sess.display()));
        assert!(first.contains("New,"), "TLS {v}: {first}");
        // openssl asks for AES-256 first; edge's own order gives AES-128 where
        // the CPU does AES in hardware (its SHA-256 key schedule is cheaper).
        let aes_hw = std::fs::read_to_string("/proc/cpuinfo")
            .map(|c| c.split_whitespace().any(|f| f == "aes"))
            .unwrap_or(false);
        if v == "1.3" && aes_hw {
            assert!(
                first.contains("Cipher is TLS_AES_128_GCM_SHA256"),
                "server suite order not applied: {first}"
            );
        }
        let second = run(&format!("-sess_in {}", sess.display()));
        assert!(
            second.contains("Reused,"),
            "TLS {v} session not resumed: {second}"
        );
    }
    // TLS 1.1 is refused.
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("openssl s_client -tls1_1 -connect 127.0.0.1:{port} -servername flask.test </dev/null 2>&1"))
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("Cipher is ECDHE"),
        "TLS 1.1 accepted"
    );

    // A client that connects and never starts the handshake is dropped at the timeout.
    let start = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect(edge.https).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1];
    let n = std::io::Read::read(&mut s, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the connection to be closed");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );
    // And edge still serves a clean handshake afterwards.
    assert!(served_serial(port, "flask.test").contains("DNS:flask.test"));
}

#[test]
fn systemd_notify_ready_reloading_and_stopping() {
    let (dir, cfg) = config(&format!(
        "{}{}",
        listen_any(),
        site(&["flask.test"], &["127.0.0.1:9".to_string()])
    ));
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut cmd = std::process::Command::new(edge_bin());
    cmd.arg("serve")
        .arg("--config")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path);
    let mut proc = Proc::spawn("edge", cmd);
    let recv = || {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(recv(), "READY=1");
    proc.wait_for("edge ready", Duration::from_secs(5));
    proc.signal("HUP");
    let mut seen = Vec::new();
    while !seen.iter().any(|s: &String| s == "READY=1") {
        let m = recv();
        if !m.starts_with("STATUS=") {
            seen.push(m);
        }
    }
    assert_eq!(seen, vec!["RELOADING=1".to_string(), "READY=1".to_string()]);
    proc.signal("TERM");
    let mut last = recv();
    while last.starts_with("STATUS=") {
        last = recv();
    }
    assert_eq!(last, "STOPPING=1");
    assert_eq!(proc.wait_exit(Duration::from_secs(40)), 0);
}

fn hex_sha256(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Bodies larger than any buffer on the way, both directions, both client
/// protocols: a download the backend streams chunked (2 MB in 10 kB pieces)
/// and uploads with a length, chunked, and over HTTP/2 without a length
/// (which edge sends upstream chunked). Each must arrive byte for byte.
#[test]
fn large_streamed_and_uploaded_bodies_arrive_whole() {
    let (_trio, dir, cfg) = trio_config("");
    let edge = Edge::serve(&cfg);
    let port = edge.https.port();

    let piece: Vec<u8> = b"0123456789".repeat(1000);
    let want = hex_sha256(&piece.repeat(200));
    for proto in ["--http1.1", "--http2"] {
        let (code, version, body) = curl_bytes(
            "flask.test",
            port,
            "/stream?chunks=200&size=10000",
            &[proto],
            dir.path(),
        );
        assert_eq!(code, 200, "{proto}");
        assert_eq!(version, if proto == "--http2" { "2" } else { "1.1" });
        assert_eq!(body.len(), 2_000_000, "{proto}: length");
        assert_eq!(hex_sha256(&body), want, "{proto}: content");
    }
    // HEAD: the headers only (curl -I writes them as the output).
    for proto in ["--http1.1", "--http2"] {
        let (code, _, head) = curl_bytes("flask.test", port, "/stream", &[proto, "-I"], dir.path());
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert_eq!(code, 200, "{proto}: {head}");
        assert!(
            head.contains("content-type: application/octet-stream"),
            "{proto}: {head}"
        );
    }

    // 3 MB that no compression or pattern could fake.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let upload: Vec<u8> = (0..3_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let file = dir.path().join("upload.bin");
    std::fs::write(&file, &upload).unwrap();
    let data = format!("@{}", file.display());
    let want = hex_sha256(&upload);
    for (what, extra) in [
        ("with a length", vec!["--http1.1"]),
        (
            "chunked",
            vec!["--http1.1", "-H", "Transfer-Encoding: chunked"],
        ),
        (
            "HTTP/2 without a length",
            vec!["--http2", "-H", "Transfer-Encoding: chunked"],
        ),
    ] {
        let mut args = extra.clone();
        args.extend([
            "--data-binary",
            &data,
            "-H",
            "Content-Type: application/octet-stream",
        ]);
        let (code, _, body) = curl_bytes("flask.test", port, "/sha256", &args, dir.path());
        let body = String::from_utf8_lossy(&body);
        assert_eq!(code, 200, "{what}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["length"], 3_000_000, "{what}");
        assert_eq!(v["sha256"], want.as_str(), "{what}");
    }
}
