//! The HTTP/2 conformance suite (h2spec, `../shared/tools/h2spec`) against
//! a running edge with a Flask backend: every case passes. h2spec takes one
//! name for address, SNI and `:authority`, so it runs in a private mount
//! namespace whose /etc/hosts sends the site's name to loopback (root only,
//! as CI runs).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

fn h2spec() -> PathBuf {
    let bin = std::env::var_os("H2SPEC")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/h2spec")
        });
    assert!(
        bin.exists(),
        "h2spec not found at {} (set H2SPEC to its path; it ships in ../shared/tools)",
        bin.display()
    );
    bin
}

#[test]
fn h2spec_passes_every_case() {
    let bin = h2spec();
    let flask = Flask::start(1);
    let (dir, edge) = edge_for(&flask.addr(), "", "");
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost flask.test\n").unwrap();
    let script = format!(
        "mount --bind {} /etc/hosts && exec timeout 300 {} -t -k -h flask.test -p {} --timeout 3",
        hosts.display(),
        bin.display(),
        edge.https.port()
    );
    let started = Instant::now();
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux) runs h2spec");
    assert!(
        started.elapsed() < Duration::from_secs(300),
        "h2spec ran out of time"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text
        .lines()
        .rev()
        .find(|l| l.contains("tests,") && l.contains("passed"))
        .unwrap_or_else(|| {
            panic!(
                "no h2spec summary; stdout:\n{text}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(
        summary.contains("146 tests, 146 passed, 0 skipped, 0 failed"),
        "{summary}\n{text}"
    );
}
