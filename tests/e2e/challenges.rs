//! HTTP-01 and TLS-ALPN-01 through edge's own listeners, against a real
//! Pebble: the daemon obtains certificates for two sites (one each) while
//! the same listeners keep proxying under load with no failed request; and
//! `edge obtain` with no daemon answers on the configured address itself.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

/// Pebble whose validation authority connects to these ports for http-01
/// and tls-alpn-01 (every name resolves to 127.0.0.1 in its challtestsrv).
fn pebble_for(http: u16, https: u16) -> Pebble {
    let p = Pebble::start_patched(&move |c| {
        c["pebble"]["httpPort"] = http.into();
        c["pebble"]["tlsPort"] = https.into();
    });
    // edge listens on 127.0.0.1: no AAAA answers, so the VA connects there.
    cts_post(
        &p.cts_url,
        "/set-default-ipv6",
        serde_json::json!({"ip": ""}),
    );
    p
}

fn config_for(
    p: &Pebble,
    http: u16,
    https: u16,
    sites: &str,
) -> (tempfile::TempDir, std::path::PathBuf) {
    config(&format!(
        "[listen]\nhttp = \"127.0.0.1:{http}\"\nhttps = \"127.0.0.1:{https}\"\n{}{sites}",
        p.acme_toml(&p.challtestsrv_dns()),
    ))
}

fn issued_by_pebble(port: u16, name: &str) -> bool {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername {name} </dev/null 2>/dev/null | openssl x509 -noout -issuer"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("Pebble")
}

#[test]
fn the_daemon_obtains_over_http01_and_tls_alpn01_while_serving_under_load() {
    let flask = Flask::start(1);
    let (http, https) = (free_port(), free_port());
    let p = pebble_for(http, https);
    let sites = format!(
        "{}challenge = \"http-01\"\n{}challenge = \"tls-alpn-01\"\n",
        site(&["h1.test"], &[flask.addr()]),
        site(&["t1.test"], &[flask.addr()]),
    );
    let (_dir, cfg) = config_for(&p, http, https, &sites);
    let edge = Edge::serve(&cfg);
    // Load on both names and on the redirect listener while the orders run.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = ["h1.test", "t1.test"]
        .into_iter()
        .map(|name| {
            let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (code, body) = curl(name, https, "/", &["-k"]);
                    let redirect = raw(
                        ([127, 0, 0, 1], http).into(),
                        format!("GET /x HTTP/1.1\r\nhost: {name}\r\nconnection: close\r\n\r\n")
                            .as_bytes(),
                    );
                    let redirected = redirect.starts_with("HTTP/1.1 308");
                    if code == 200 && body.contains("Version1") && redirected {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("{name}: {code} {redirect:?} {body:?}");
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(issued_by_pebble(https, "h1.test") && issued_by_pebble(https, "t1.test")) {
        assert!(
            Instant::now() < deadline,
            "no Pebble certificates within 60 s; edge:\n{}",
            edge.proc.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the orders"
    );
    assert!(done.load(Ordering::Relaxed) > 10);
    let out = edge.proc.output();
    assert!(
        out.contains("http-01") && out.contains("tls-alpn-01"),
        "{out}"
    );
}

#[test]
fn edge_obtain_without_a_daemon_answers_on_the_configured_address() {
    for challenge in ["http-01", "tls-alpn-01"] {
        let (http, https) = (free_port(), free_port());
        let p = pebble_for(http, https);
        let sites = format!(
            "{}challenge = \"{challenge}\"\n",
            site(&["solo.test"], &["127.0.0.1:9".to_string()])
        );
        let (dir, cfg) = config_for(&p, http, https, &sites);
        let o = edge(&["obtain", "--domain", "solo.test"], &cfg);
        let t = text(&o);
        assert!(o.status.success(), "{challenge}: {t}");
        assert!(
            t.contains(&format!("Answering {challenge} on 127.0.0.1:")),
            "{t}"
        );
        assert!(dir
            .path()
            .join("state/live/solo.test/fullchain.pem")
            .exists());
    }
}

#[test]
fn a_wildcard_with_http01_is_a_config_error_naming_the_fix() {
    let (_d, cfg) = config(&format!(
        "{}{}challenge = \"http-01\"\n",
        listen_any(),
        site(&["*.w.test"], &["127.0.0.1:9".to_string()])
    ));
    let o = edge(&["check"], &cfg);
    let t = text(&o);
    assert_ne!(o.status.code(), Some(0), "{t}");
    assert!(
        t.contains("site[0].challenge") && t.contains("dns-01"),
        "{t}"
    );
}

/// An IP-address certificate (RFC 8738) for 127.0.0.1 over http-01, served
/// to a client that sends no SNI (it connects by address), and the site
/// answers requests for that address.
#[test]
fn an_ip_certificate_is_obtained_and_served_without_sni() {
    let flask = Flask::start(1);
    let (http, https) = (free_port(), free_port());
    let p = pebble_for(http, https);
    let sites = format!(
        "{}challenge = \"http-01\"\n",
        site(&["127.0.0.1"], &[flask.addr()])
    );
    let (dir, cfg) = config_for(&p, http, https, &sites);
    let edge = Edge::serve(&cfg);
    let cert = dir.path().join("state/live/127.0.0.1/cert.pem");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cert.exists() {
        assert!(
            Instant::now() < deadline,
            "no certificate; edge:\n{}",
            edge.proc.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{https} -noservername </dev/null 2>/dev/null | openssl x509 -noout -issuer -ext subjectAltName"
        ))
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        t.contains("Pebble") && t.contains("IP Address:127.0.0.1"),
        "{t}"
    );
    let o = std::process::Command::new("curl")
        .args(["-sk", "--max-time", "10"])
        .arg(format!("https://127.0.0.1:{https}/"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("Version1"),
        "{}",
        text(&o)
    );
}
