//! ACME profiles against Pebble v2.10.1 (`../shared/pebble/`): a profile
//! the CA lacks fails the order when required and falls back (said in the
//! output) when preferred; the chosen profile decides the certificate's
//! lifetime and is kept for renewals.

use std::path::Path;
use std::process::Command;

use crate::common::*;

/// Days between notBefore and notAfter of a PEM certificate.
fn lifetime_days(pem: &Path) -> f64 {
    let o = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-startdate",
            "-enddate",
            "-dateopt",
            "iso_8601",
            "-in",
        ])
        .arg(pem)
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    let date = |k: &str| {
        let v = t
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {t}"))
            .trim()
            .to_string();
        let o = Command::new("date")
            .args(["-u", "-d", &v, "+%s"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse::<f64>()
            .unwrap()
    };
    (date("notAfter=") - date("notBefore=")) / 86400.0
}

fn profile_config(p: &Pebble, acme_extra: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let acme =
        p.acme_toml(&p.challtestsrv_dns())
            .replacen("[dns]", &format!("{acme_extra}\n[dns]"), 1);
    config(&format!(
        "{}{acme}{}",
        listen_any(),
        site(&["flask.test"], &["127.0.0.1:9".to_string()])
    ))
}

#[test]
fn a_required_profile_the_ca_lacks_fails_clearly_and_a_preferred_one_falls_back() {
    let p = Pebble::current(&[("default", 90 * 86400), ("shortlived", 6 * 86400)]);
    let (_d, cfg) = profile_config(&p, "profile = \"tlsserver\"\nprofile_required = true");
    let o = edge(&["obtain", "--domain", "flask.test"], &cfg);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("\"tlsserver\"") && t.contains("default") && t.contains("shortlived"),
        "the error names the profile and what the CA offers: {t}"
    );

    let (dir, cfg) = profile_config(&p, "profile = \"tlsserver\"");
    let o = edge(&["obtain", "--domain", "flask.test"], &cfg);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("does not offer profile \"tlsserver\""), "{t}");
    assert!(dir
        .path()
        .join("state/live/flask.test/fullchain.pem")
        .exists());
}

#[test]
fn the_chosen_profile_sets_the_lifetime_and_renewals_keep_it() {
    let p = Pebble::current(&[("default", 90 * 86400), ("shortlived", 6 * 86400)]);
    let (dir, cfg) = profile_config(&p, "profile = \"shortlived\"");
    let o = edge(&["obtain", "--domain", "flask.test"], &cfg);
    assert!(o.status.success(), "{}", text(&o));
    let cert = dir.path().join("state/live/flask.test/cert.pem");
    let days = lifetime_days(&cert);
    assert!(
        (5.9..=6.1).contains(&days),
        "a shortlived certificate lives {days} days"
    );
    let o = edge(&["certs"], &cfg);
    assert!(text(&o).contains("Profile: shortlived"), "{}", text(&o));

    // The profile line removed from the config: the renewal state keeps it.
    let (_plain_dir, plain) = profile_config(&p, "");
    let state = dir.path().join("state");
    let body = std::fs::read_to_string(&plain).unwrap();
    let body = body.replace(
        &body.lines().next().unwrap().to_string(),
        &format!("state_dir = \"{}\"", state.display()),
    );
    std::fs::write(&plain, body).unwrap();
    let o = edge(&["renew", "--force"], &plain);
    assert!(o.status.success(), "{}", text(&o));
    let days = lifetime_days(&cert);
    assert!((5.9..=6.1).contains(&days), "the renewal lives {days} days");

    // A 6-day certificate is due at half its lifetime: not yet.
    let o = edge(&["certs"], &plain);
    let t = text(&o);
    assert!(t.contains("Next renewal: 20"), "{t}");
}

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// `edge serve` under a clock moved ahead (libfaketime preloaded into the
/// edge process itself, so killing it stops edge; no 3-day wait).
fn serve_shifted(cfg: &Path, shift: &str) -> (Proc, u16) {
    let mut cmd = Command::new(edge_bin());
    cmd.arg("serve")
        .arg("--config")
        .arg(cfg)
        .env("RUST_LOG", "info")
        .env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME", shift);
    let proc = Proc::spawn("edge", cmd);
    let line = proc.wait_for("edge ready", std::time::Duration::from_secs(20));
    let port = line
        .split("https=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    (proc, port)
}

/// A 6-day certificate is renewed by the daemon on its own once half its
/// life has passed, not before: at +2 days it is left alone; at +5 days the
/// daemon asks the CA's ARI endpoint, renews (replacing the old one, which
/// Pebble checks), and serves the new certificate without a restart.
#[test]
fn a_six_day_certificate_is_renewed_by_the_daemon_at_half_its_life() {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "libfaketime missing: scripts/install-deps installs it (faketime)"
    );
    let p = Pebble::current(&[("default", 90 * 86400), ("shortlived", 6 * 86400)]);
    let (dir, cfg) = profile_config(&p, "profile = \"shortlived\"");
    let o = edge(&["obtain", "--domain", "flask.test"], &cfg);
    assert!(o.status.success(), "{}", text(&o));
    let live = dir.path().join("state/live/flask.test/cert.pem");
    let first = std::fs::read_to_string(&live).unwrap();

    let (mut early, _) = serve_shifted(&cfg, "+2d");
    std::thread::sleep(std::time::Duration::from_secs(3));
    early.kill();
    assert_eq!(
        std::fs::read_to_string(&live).unwrap(),
        first,
        "renewed at +2 days"
    );
    assert!(
        !early.output().contains("renewal succeeded"),
        "{}",
        early.output()
    );

    let (late, port) = serve_shifted(&cfg, "+5d");
    let line = late.wait_for("renewal succeeded", std::time::Duration::from_secs(30));
    assert!(line.contains("flask.test"), "{line}");
    let out = late.output();
    assert!(
        out.contains("inside the CA's renewal window (ARI)"),
        "{out}"
    );
    let renewed = std::fs::read_to_string(&live).unwrap();
    assert_ne!(renewed, first);
    assert!(
        (5.9..=6.1).contains(&lifetime_days(&live)),
        "the renewal kept the profile"
    );
    let served = served_serial(port, "flask.test");
    let serial = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(&live)
        .output()
        .unwrap();
    assert!(
        served.contains(String::from_utf8_lossy(&serial.stdout).trim()),
        "not swapped in: {served}"
    );
}

/// Real ARI (Pebble v2.10.1 instead of a double): the CA moves a
/// certificate's renewal window into the past through its management API;
/// the next plain `edge renew` (not forced) renews it at once, and
/// its order carries `replaces`, which Pebble checks (same account, a shared
/// name); the renewed certificate is not due again.
#[test]
fn a_renewal_window_the_ca_moves_into_the_past_renews_with_replaces() {
    let p = Pebble::current(&[("default", 90 * 86400)]);
    let (dir, cfg) = profile_config(&p, "profile = \"default\"");
    let o = edge(&["obtain", "--domain", "flask.test"], &cfg);
    assert!(o.status.success(), "{}", text(&o));
    // (Before the CA moves it, a renew would skip it, and then respect the
    // CA's Retry-After of 6 hours before asking again.)
    let cert = std::fs::read_to_string(dir.path().join("state/live/flask.test/cert.pem")).unwrap();
    let ari = serde_json::json!({"suggestedWindow": {
        "start": "2020-01-01T00:00:00Z", "end": "2020-01-02T00:00:00Z"}});
    let body = serde_json::json!({"Certificate": cert, "ARIResponse": ari.to_string()}).to_string();
    let st = Command::new("curl")
        .args(["-sS", "-f", "-X", "POST", "--cacert"])
        .arg(&p.ca_bundle)
        .args(["-d", &body])
        .arg(format!("{}/set-renewal-info/", p.mgmt))
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", text(&st));

    let o = edge(&["renew"], &cfg);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("flask.test: renewed"), "{t}");
    // The order said it replaces the old certificate: Pebble took it as
    // such, or (its own bookkeeping race) refused the replacement, and edge
    // ordered again without it, as RFC 9773 allows.
    let refused = t.contains("the CA refused the order as a replacement");
    if !refused {
        p.pebble
            .wait_for("is a replacement of", std::time::Duration::from_secs(5));
    }
    let renewed =
        std::fs::read_to_string(dir.path().join("state/live/flask.test/cert.pem")).unwrap();
    assert_ne!(renewed, cert);
    let o = edge(&["renew"], &cfg);
    assert!(text(&o).contains("not due"), "{}", text(&o));
}
