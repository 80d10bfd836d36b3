//! HTTP/3 against the edge binary, with a real browser: Debian's chromium,
//! headless, loads the Flask page over QUIC (forced for the test's origin,
//! the placeholder certificate trusted by its key's hash), and edge's access
//! log says the request came over HTTP/3.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn chromium() -> &'static str {
    for c in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(c).exists() {
            return c;
        }
    }
    panic!("chromium not found: scripts/install-deps installs Debian's chromium");
}

/// The base64 SHA-256 of the public key edge serves for `name`.
fn spki_hash(port: u16, name: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername {name} </dev/null 2>/dev/null \
             | openssl x509 -pubkey -noout | openssl pkey -pubin -outform der \
             | openssl dgst -sha256 -binary | base64"
        ))
        .output()
        .unwrap();
    let h = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(h.len(), 44, "no key hash: {h:?}");
    h
}

#[test]
fn chromium_loads_the_flask_page_over_http3() {
    let chromium = chromium();
    let flask = Flask::start(1);
    let (dir, edge) = edge_for(&flask.addr(), "", "");
    let port = edge.https.port();
    let spki = spki_hash(port, "flask.test");
    let profile = dir.path().join("chromium");
    let out = Command::new("timeout")
        .arg("90")
        .arg(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--enable-quic",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--origin-to-force-quic-on=flask.test:{port}"))
        .arg("--host-resolver-rules=MAP flask.test 127.0.0.1")
        .arg(format!("--ignore-certificate-errors-spki-list={spki}"))
        .arg("--dump-dom")
        .arg(format!("https://flask.test:{port}/"))
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.contains("This is Flask Application - Version1"),
        "chromium got no Flask page; stdout:\n{page}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The access log names the protocol of the request that served it.
    let line = edge.proc.wait_for("proto=HTTP/3", Duration::from_secs(10));
    assert!(line.contains("status=200"), "{line}");
}
