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
