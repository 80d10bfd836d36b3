//! dns-persist-01 against Pebble v2.10.1: the `_validation-persist` record
//! is set once through the DNS provider, and renewals after it make no DNS
//! change at all; a wildcard gets `policy=wildcard`; a CA without the
//! challenge (Debian's Pebble 2.4) falls back to dns-01 and says so.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::common::*;

/// An exec hook that logs every call and sets the record in challtestsrv.
fn hook(dir: &Path, cts: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let log = dir.join("hook.log");
    let path = dir.join("hook.sh");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$1 $2 $3\" >> {log}\nif [ \"$1\" = present ]; then\n  curl -sSf -X POST -d \"{{\\\"host\\\":\\\"$2\\\",\\\"value\\\":\\\"$3\\\"}}\" {cts}/set-txt >/dev/null\nelse\n  curl -sSf -X POST -d \"{{\\\"host\\\":\\\"$2\\\"}}\" {cts}/clear-txt >/dev/null\nfi\n",
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    (path, log)
}

fn persist_config(
    p: &Pebble,
    domains: &[&str],
) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let (dir, cfg) = config(&format!(
        "{}{}{}challenge = \"dns-persist-01\"\n",
        listen_any(),
        p.acme_toml("provider = \"exec\"\ncommand = \"HOOK\""),
        site(domains, &["127.0.0.1:9".to_string()])
    ));
    let (script, log) = hook(dir.path(), &p.cts_url);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"HOOK\"", &format!("{:?}", script.display().to_string()));
    std::fs::write(&cfg, text).unwrap();
    (dir, cfg, log)
}

fn calls(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn the_record_is_set_once_and_renewals_make_no_dns_change() {
    // No reused authorizations: every renewal is validated again.
    let p = Pebble::current_env(&[("default", 90 * 86400)], &[("PEBBLE_AUTHZREUSE", "0")]);
    let (dir, cfg, log) = persist_config(&p, &["persist.test"]);
    let o = edge(&["obtain", "--domain", "persist.test"], &cfg);
    assert!(o.status.success(), "{}", text(&o));
    let first = calls(&log);
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(
        first[0].starts_with(
            "present _validation-persist.persist.test. pebble.letsencrypt.org; accounturi=https://"
        ),
        "{first:?}"
    );
    let serial =
        |d: &Path| std::fs::read_to_string(d.join("state/live/persist.test/cert.pem")).unwrap();
    let mut seen = vec![serial(dir.path())];
    for i in 0..3 {
        let o = edge(&["renew", "--force"], &cfg);
        let t = text(&o);
        assert!(o.status.success(), "renewal {i}: {t}");
        // Pebble reuses a valid authorization 1% of the time even with
        // PEBBLE_AUTHZREUSE=0 (its test is `rand.Intn(100) > percent`):
        // then there is nothing to validate, and no DNS change either.
        assert!(
            t.contains("already in place: no DNS change")
                || t.contains("the CA already holds a valid authorization"),
            "{t}"
        );
        let s = serial(dir.path());
        assert!(!seen.contains(&s), "renewal {i} stored no new certificate");
        seen.push(s);
    }
    assert_eq!(calls(&log), first, "a renewal changed DNS");
}

#[test]
fn a_wildcard_gets_policy_wildcard() {
    let p = Pebble::current(&[("default", 90 * 86400)]);
    let (_dir, cfg, log) = persist_config(&p, &["wild.test", "*.wild.test"]);
    let o = edge(
        &["obtain", "--domain", "wild.test", "--domain", "*.wild.test"],
        &cfg,
    );
    assert!(o.status.success(), "{}", text(&o));
    let c = calls(&log);
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(c[0].ends_with("; policy=wildcard"), "{c:?}");
}

#[test]
fn a_ca_without_dns_persist_01_falls_back_to_dns_01_and_says_so() {
    let p = Pebble::start();
    let (_dir, cfg, log) = persist_config(&p, &["old.test"]);
    let o = edge(&["obtain", "--domain", "old.test"], &cfg);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("does not offer dns-persist-01 for old.test; using Dns01"),
        "{t}"
    );
    let c = calls(&log);
    assert!(
        c.iter()
            .any(|l| l.starts_with("present _acme-challenge.old.test.")),
        "{c:?}"
    );
}

/// Through a real Knot with RFC 2136: the record is added once (one signed
/// update, one serial step), Pebble validates every order against Knot, and
/// three renewals leave the zone's serial where it was.
#[test]
fn through_knot_the_zone_serial_stays_after_the_first_order() {
    let knot = Knot::start("example.test");
    let p = Pebble::current_dns(
        &[("default", 90 * 86400)],
        Some(&knot.addr.to_string()),
        &[("PEBBLE_AUTHZREUSE", "0")],
    );
    let provider = format!(
        "provider = \"rfc2136\"\nserver = \"{}\"\ntsig_key = \"{}\"\ntsig_secret_file = \"SECRET\"",
        knot.addr, knot.key_name
    );
    let (dir, cfg) = config(&format!(
        "{}{}{}challenge = \"dns-persist-01\"\n",
        listen_any(),
        p.acme_toml(&provider),
        site(&["k.example.test"], &["127.0.0.1:9".to_string()])
    ));
    let secret = dir.path().join("tsig.secret");
    std::fs::write(&secret, &knot.secret).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text_cfg = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"SECRET\"", &format!("{:?}", secret.display().to_string()));
    std::fs::write(&cfg, text_cfg).unwrap();
    let serial = || knot.dig("example.test", "SOA");
    let o = edge(&["obtain", "--domain", "k.example.test"], &cfg);
    assert!(
        o.status.success(),
        "{}\nknot:\n{}",
        text(&o),
        knot.proc.output()
    );
    assert_eq!(
        knot.proc.count("DDNS, finished, serial"),
        1,
        "{}",
        knot.proc.output()
    );
    assert!(knot
        .dig("_validation-persist.k.example.test", "TXT")
        .contains("accounturi="));
    let after_first = serial();
    for i in 0..3 {
        let o = edge(&["renew", "--force"], &cfg);
        assert!(o.status.success(), "renewal {i}: {}", text(&o));
    }
    assert_eq!(serial(), after_first, "a renewal changed the zone");
    assert_eq!(
        knot.proc.count("DDNS, finished, serial"),
        1,
        "{}",
        knot.proc.output()
    );
}

/// A record someone gave a `persistUntil`: still in place (no DNS change)
/// and warned about when it runs out within 30 days; once it has run out,
/// edge publishes its own again.
/// `edge renew --force` until a renewal that the CA validated: Pebble
/// reuses a valid authorization 1% of the time even with
/// PEBBLE_AUTHZREUSE=0, and such an order looks at no record at all.
fn renew_validated(cfg: &Path) -> String {
    for _ in 0..3 {
        let o = edge(&["renew", "--force"], cfg);
        let t = text(&o);
        assert!(o.status.success(), "{t}");
        if !t.contains("the CA already holds a valid authorization") {
            return t;
        }
    }
    panic!("three renewals in a row were answered from reused authorizations");
}

#[test]
fn a_persist_until_is_warned_about_and_a_lapsed_record_replaced() {
    let p = Pebble::current_env(&[("default", 90 * 86400)], &[("PEBBLE_AUTHZREUSE", "0")]);
    let (_dir, cfg, log) = persist_config(&p, &["until.test"]);
    let o = edge(&["obtain", "--domain", "until.test"], &cfg);
    assert!(o.status.success(), "{}", text(&o));
    let first = calls(&log);
    let value = first[0]
        .strip_prefix("present _validation-persist.until.test. ")
        .unwrap()
        .to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let set = |v: String| {
        cts_post(
            &p.cts_url,
            "/clear-txt",
            serde_json::json!({"host": "_validation-persist.until.test."}),
        );
        cts_post(
            &p.cts_url,
            "/set-txt",
            serde_json::json!({"host": "_validation-persist.until.test.", "value": v}),
        );
    };
    set(format!("{value}; persistUntil={}", now + 10 * 86400));
    let t = renew_validated(&cfg);
    assert!(
        t.contains("stops validating at") && t.contains("persistUntil"),
        "{t}"
    );
    assert_eq!(calls(&log), first, "a record in place was set again");

    set(format!("{value}; persistUntil={}", now - 60));
    renew_validated(&cfg);
    assert_eq!(
        calls(&log).len(),
        2,
        "a lapsed record was not replaced: {:?}",
        calls(&log)
    );
}

/// Through the built-in zone: the site's zone (Knot) gets one CNAME for
/// `_validation-persist` into edge's delegated zone, once; Pebble v2.10.1
/// asks a real recursive resolver (Unbound); renewals change nothing in
/// the site's zone (its serial stays).
#[test]
fn through_the_built_in_zone_behind_one_cname() {
    let label = edge::dns::builtin::label_for("flask.other.test");
    let knot = Knot::start_with(
        "other.test",
        &format!("_validation-persist.flask CNAME {label}.acme.other.test.\n"),
    );
    let edge_dns = free_port();
    let (unbound, unbound_port, _udir) = unbound(&[
        ("other.test", knot.addr.to_string()),
        ("acme.other.test", format!("127.0.0.1:{edge_dns}")),
    ]);
    let p = Pebble::current_dns(
        &[("default", 90 * 86400)],
        Some(&format!("127.0.0.1:{unbound_port}")),
        &[("PEBBLE_AUTHZREUSE", "0")],
    );
    let provider = format!(
        "provider = \"builtin\"\nlisten = \"127.0.0.1:{edge_dns}\"\nzone = \"acme.other.test\""
    );
    let (_dir, cfg) = config(&format!(
        "{}{}{}challenge = \"dns-persist-01\"\n",
        listen_any(),
        p.acme_toml(&provider),
        site(&["flask.other.test"], &["127.0.0.1:9".to_string()])
    ));
    let serial = knot.dig("other.test", "SOA");
    let o = edge(&["obtain", "--domain", "flask.other.test"], &cfg);
    let t = text(&o);
    assert!(o.status.success(), "{t}\nunbound:\n{}", unbound.output());
    assert!(t.contains(&format!("{label}.acme.other.test")), "{t}");
    // The renewals go to a running daemon, whose responder stays up as in
    // production (a command's own responder is gone between two commands,
    // and Unbound remembers a server that did not answer).
    let _daemon = Edge::serve(&cfg);
    for i in 0..3 {
        let o = edge(&["renew", "--force"], &cfg);
        assert!(o.status.success(), "renewal {i}: {}", text(&o));
    }
    assert_eq!(
        knot.dig("other.test", "SOA"),
        serial,
        "the site's zone changed"
    );
}
