//! What an operator sees, against the edge binary: the status page in a real
//! browser (Debian's chromium, headless), and `edge status` with its exit
//! codes.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

fn chromium() -> &'static str {
    for c in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(c).exists() {
            return c;
        }
    }
    panic!("chromium not found: scripts/install-deps installs Debian's chromium");
}

/// A certificate for `name` valid for `days` from now, stored as certbot
/// lays it out.
fn store_cert(state: &Path, name: &str, days: u32) {
    let dir = state.join("live").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-days", &days.to_string(), "-subj", &format!("/CN={name}")])
        .args(["-addext", &format!("subjectAltName=DNS:{name}")])
        .arg("-keyout")
        .arg(dir.join("privkey.pem"))
        .arg("-out")
        .arg(dir.join("fullchain.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chromium_cmd(profile: &Path) -> Command {
    let mut c = Command::new("timeout");
    c.arg("90")
        .arg(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// A running edge with two certificates and one upstream down: chromium
/// renders the status page, and its text has both names, their days left,
/// the down upstream and why. `edge status` says the same and exits 1 (a
/// certificate 5 days from expiry; the outage once it passes 10 x
/// fail_timeout), `--json` parses; with no daemon it exits 3.
#[test]
fn the_status_page_in_a_browser_and_edge_status() {
    let flask = Flask::start(1);
    let dead = format!("127.0.0.1:{}", free_port());
    let metrics = free_port();
    let (dir, cfg) = config(&format!(
        "{}[acme]\ndirectory = \"http://127.0.0.1:9/dir\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n{}{}max_fails = 1\nfail_timeout = \"500ms\"\n",
        listen_any(),
        site(&["one.test"], &[flask.addr()]),
        site(&["two.test"], &[flask.addr(), dead.clone()]),
    ));
    let state = dir.path().join("state");
    store_cert(&state, "one.test", 60);
    store_cert(&state, "two.test", 5);
    let daemon = Edge::serve(&cfg);
    for _ in 0..4 {
        let (code, _) = curl("two.test", daemon.https.port(), "/", &[]);
        assert_eq!(code, 200);
    }
    // The outage passes 10 x fail_timeout.
    std::thread::sleep(Duration::from_secs(6));

    let url = format!("http://127.0.0.1:{metrics}/");
    let out = chromium_cmd(&dir.path().join("chromium"))
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    // The rendered page's text: the DOM without its tags.
    let shown = dom
        .split('<')
        .map(|part| part.split_once('>').map_or(part, |(_, t)| t))
        .collect::<String>();
    for want in [
        "one.test",
        "two.test",
        "days",
        &dead,
        "DOWN",
        "refused",
        "Needs a person",
    ] {
        assert!(
            shown.contains(want),
            "no {want:?} in the rendered page:\n{shown}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        shown.contains("59.9 of 60 days") || shown.contains("60.0 of 60 days"),
        "{shown}"
    );
    // The screenshot the README shows (doc/status.png is made this way).
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status.png");
    let out = chromium_cmd(&dir.path().join("chromium2"))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1280,1100")
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let o = edge(&["status"], &cfg);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("two.test: certificate expires in"), "{t}");
    assert!(t.contains(&format!("upstream {dead} down for")), "{t}");
    let o = edge(&["status", "--json"], &cfg);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["certificates"].as_array().unwrap().len(), 2, "{j}");

    drop(daemon);
    let start = Instant::now();
    let o = edge(&["status"], &cfg);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(start.elapsed() < Duration::from_secs(10));
}
