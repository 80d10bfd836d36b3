//! `edge obtain` / `edge renew` against a real Pebble and challtestsrv.
//! Pebble keeps its default bad-nonce rejection (5%; one test raises it to
//! 60%) and authz reuse on in every test here, so edge's retries and reused
//! authorizations are exercised.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn acme_config(p: &Pebble, provider: &str, extra: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    config(&format!(
        "{}{}{extra}{}",
        listen_any(),
        p.acme_toml(provider),
        site(&["flask.test"], &["127.0.0.1:9".to_string()])
    ))
}

fn state(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("state")
}

fn serial_of(pem_path: &Path) -> String {
    let o = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(pem_path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn verify_chain(p: &Pebble, live: &Path) {
    let root = live.parent().unwrap().join("pebble-root.pem");
    std::fs::write(&root, p.root_pem()).unwrap();
    let o = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&root)
        .arg("-untrusted")
        .arg(live.join("chain.pem"))
        .arg(live.join("cert.pem"))
        .output()
        .unwrap();
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("OK"),
        "chain does not verify: {}",
        text(&o)
    );
}

#[test]
fn obtain_one_name_stores_a_verifiable_chain_safely() {
    let p = Pebble::start();
    let (dir, cfg) = acme_config(&p, &p.challtestsrv_dns(), "");
    let o = edge(&["obtain", "--domain", "flask.test"], &cfg);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("Successfully received certificate."), "{t}");
    assert!(t.contains("live/flask.test/fullchain.pem"), "{t}");
    let live = state(&dir).join("live/flask.test");
    verify_chain(&p, &live);
    let mode = |f: &Path| std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&live.join("privkey.pem")), 0o600);
    assert_eq!(mode(&state(&dir)), 0o700);
    assert_eq!(mode(&state(&dir).join("accounts")), 0o700);
    let acct = std::fs::read_dir(state(&dir).join("accounts"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("account.json");
    assert_eq!(mode(&acct), 0o600);
    // The key is never printed.
    let key = std::fs::read_to_string(live.join("privkey.pem")).unwrap();
    let body: String = key.lines().nth(1).unwrap().to_string();
    assert!(!t.contains(&body));
    // `edge certs` lists it.
    let c = edge(&["certs"], &cfg);
    let ct = text(&c);
    assert!(
        c.status.success()
            && ct.contains("Certificate Name: flask.test")
            && ct.contains("Pebble Intermediate"),
        "{ct}"
    );
    // The served certificate is the one obtained.
    let edge_d = Edge::serve(&cfg);
    let served = served_serial(edge_d.https.port(), "flask.test");
    assert!(
        served.contains(&serial_of(&live.join("cert.pem"))),
        "{served}"
    );
}

/// RFC 8555 §6.5: a `badNonce` refusal means the CA did nothing with the
/// request, and the client should send it again. With Pebble refusing 60% of
/// nonces, instant-acme's own three tries lose about one request in five, so an
/// order of a dozen requests would almost never complete without edge's rounds.
/// Two obtains started together on one state directory (as two nodes of a
/// fleet at their first start): one registers the account, the other waits
/// for it and orders with the same one.
#[test]
fn two_obtains_at_once_register_one_account() {
    let p = Pebble::start();
    let (dir, cfg) = acme_config(&p, &p.challtestsrv_dns(), "");
    let outs: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = ["one.test", "two.test"]
            .map(|d| {
                let cfg = &cfg;
                s.spawn(move || {
                    let o = edge(&["obtain", "--domain", d], cfg);
                    assert!(o.status.success(), "{}", text(&o));
                    text(&o)
                })
            })
            .into_iter()
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let all = outs.concat();
    assert_eq!(
        all.matches("Registering an ACME account").count(),
        1,
        "{all}"
    );
    for d in ["one.test", "two.test"] {
        verify_chain(&p, &state(&dir).join("live").join(d));
    }
}

#[test]
fn obtain_completes_while_the_ca_refuses_most_nonces() {
    let p = Pebble::start_env(3600, &[("PEBBLE_WFE_NONCEREJECT", "60")]);
    let (dir, cfg) = acme_config(&p, &p.challtestsrv_dns(), "");
    let o = edge(&["obtain", "-d", "flask.test", "-d", "*.flask.test"], &cfg);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("Successfully received certificate."), "{t}");
    verify_chain(&p, &state(&dir).join("live/flask.test"));
}

/// A record edge sees but the CA does not (split DNS: edge's resolver is not
/// the CA's): the CA's validation fails, and the error names each name and
/// what the CA said about it, with no certificate stored.
#[test]
fn a_validation_the_ca_fails_names_each_name_and_the_cas_reason() {
    let p = Pebble::start();
    // Records go to a second challtestsrv, which edge also asks; Pebble asks its own.
    let (_other, other_dns, other_mgmt) = challtestsrv();
    let provider =
        format!("provider = \"pebble-challtestsrv\"\nurl = \"http://127.0.0.1:{other_mgmt}\"");
    let (dir, cfg) = acme_config(&p, &provider, "");
    let text_cfg = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("resolvers = [\"{}\"]", p.dns),
        &format!("resolvers = [\"127.0.0.1:{other_dns}\"]"),
    );
    std::fs::write(&cfg, text_cfg).unwrap();
    let o = edge(
        &["obtain", "-d", "split.test", "-d", "www.split.test"],
        &cfg,
    );
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("validation failed"), "{t}");
    for name in ["split.test:", "www.split.test:"] {
        assert!(t.contains(name), "{name} missing: {t}");
    }
    assert!(t.to_ascii_lowercase().contains("txt"), "{t}");
    assert!(!state(&dir).join("live/split.test").exists());
}

#[test]
fn apex_wildcard_and_another_name_in_one_order() {
    let p = Pebble::start();
    let (dir, cfg) = acme_config(&p, &p.challtestsrv_dns(), "");
    let o = edge(
        &[
            "obtain",
            "-d",
            "example.test",
            "-d",
            "*.example.test",
            "-d",
            "www.other.test",
        ],
        &cfg,
    );
    assert!(o.status.success(), "{}", text(&o));
    let live = state(&dir).join("live/example.test");
    verify_chain(&p, &live);
    let sans = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(live.join("cert.pem"))
        .output()
        .unwrap();
    let sans = String::from_utf8_lossy(&sans.stdout);
    for n in [
        "DNS:example.test",
        "DNS:*.example.test",
        "DNS:www.other.test",
    ] {
        assert!(sans.contains(n), "{n} missing: {sans}");
    }
}

#[test]
fn rsa_key_type() {
    let p = Pebble::start();
    let (dir, cfg) = acme_config(&p, &p.challtestsrv_dns(), "");
    let text_cfg = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("ca_bundle =", "key_type = \"rsa2048\"\nca_bundle =");
    std::fs::write(&cfg, text_cfg).unwrap();
    let o = edge(&["obtain", "--domain", "rsa.test"], &cfg);
    assert!(o.status.success(), "{}", text(&o));
    let live = state(&dir).join("live/rsa.test");
    let info = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(live.join("cert.pem"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&info.stdout).contains("rsaEncryption"));
    verify_chain(&p, &live);
}

/// Reads the record edge prints, sets it like a person would, and lets edge
/// notice it by itself.
#[test]
fn manual_provider_detects_the_record_a_person_sets() {
    let p = Pebble::start();
    let (dir, cfg) = acme_config(&p, "provider = \"manual\"", "");
    let mut cmd = Command::new(edge_bin());
    cmd.args(["obtain", "--domain", "flask.ashna.test", "--config"])
        .arg(&cfg);
    let mut proc = Proc::spawn("edge obtain", cmd);
    proc.wait_for(
        "Please deploy a DNS TXT record under the name",
        Duration::from_secs(20),
    );
    let line = proc.wait_for("_acme-challenge.flask.ashna.test.", Duration::from_secs(5));
    // "_acme-challenge.flask.ashna.test.  60  IN  TXT  "value""
    let value = line.split('"').nth(1).expect("quoted value").to_string();
    assert!(line.contains(" IN  TXT "), "{line}");
    p.set_txt("_acme-challenge.flask.ashna.test.", &value);
    assert_eq!(
        proc.wait_exit(Duration::from_secs(30)),
        0,
        "{}",
        proc.output()
    );
    assert!(
        proc.output().contains("unattended renewal"),
        "manual must warn about renewals"
    );
    assert!(state(&dir)
        .join("live/flask.ashna.test/fullchain.pem")
        .exists());
}

/// With Enter on stdin, edge proceeds even though its own check cannot see the
/// record (its resolver here is a dead port): the person vouched for it.
#[test]
fn manual_provider_proceeds_on_enter() {
    let p = Pebble::start();
    let dead = format!("127.0.0.1:{}", free_port());
    let (dir, cfg) = config(&format!(
        "{}[acme]\ndirectory = \"{}\"\nca_bundle = \"{}\"\n[dns]\nprovider = \"manual\"\nresolvers = [\"{dead}\"]\npropagation_timeout = \"60s\"\n{}",
        listen_any(),
        p.directory,
        p.ca_bundle.display(),
        site(&["flask.test"], &["127.0.0.1:9".to_string()])
    ));
    let mut cmd = Command::new(edge_bin());
    cmd.args(["obtain", "--domain", "enter.test", "--config"])
        .arg(&cfg);
    let mut proc = Proc::spawn("edge obtain", cmd);
    let line = proc.wait_for("_acme-challenge.enter.test.", Duration::from_secs(20));
    let value = line.split('"').nth(1).unwrap().to_string();
    p.set_txt("_acme-challenge.enter.test.", &value);
    proc.write_stdin("\n");
    assert_eq!(
        proc.wait_exit(Duration::from_secs(30)),
        0,
        "{}",
        proc.output()
    );
    assert!(proc.output().contains("Enter pressed"));
    assert!(state(&dir).join("live/enter.test/fullchain.pem").exists());
}

/// A certbot manual-hook script, unchanged: it tells present from cleanup by
/// CERTBOT_AUTH_OUTPUT, as certbot hook scripts do.
#[test]
fn exec_provider_runs_a_certbot_style_hook() {
    let p = Pebble::start();
    let hookdir = tempfile::tempdir().unwrap();
    let hook = hookdir.path().join("certbot-hook.sh");
    let log = hookdir.path().join("hook.log");
    std::fs::write(
        &hook,
        format!(
            r#"#!/bin/sh
set -e
if [ -z "$CERTBOT_AUTH_OUTPUT" ]; then
  curl -sSf -X POST -d "{{\"host\":\"_acme-challenge.$CERTBOT_DOMAIN.\",\"value\":\"$CERTBOT_VALIDATION\"}}" {url}/set-txt
  echo "present $CERTBOT_DOMAIN $CERTBOT_VALIDATION remaining=$CERTBOT_REMAINING_CHALLENGES all=$CERTBOT_ALL_DOMAINS edge=$EDGE_FQDN" >> {log}
  echo "added-$CERTBOT_DOMAIN"
else
  curl -sSf -X POST -d "{{\"host\":\"_acme-challenge.$CERTBOT_DOMAIN.\"}}" {url}/clear-txt
  echo "cleanup $CERTBOT_DOMAIN output=$CERTBOT_AUTH_OUTPUT" >> {log}
fi
"#,
            url = p.cts_url,
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (dir, cfg) = acme_config(
        &p,
        &format!("provider = \"exec\"\ncommand = \"{}\"", hook.display()),
        "",
    );
    let o = edge(&["obtain", "-d", "hook.test", "-d", "*.hook.test"], &cfg);
    assert!(o.status.success(), "{}", text(&o));
    let l = std::fs::read_to_string(&log).unwrap();
    assert_eq!(l.matches("present hook.test ").count(), 2, "{l}");
    assert!(
        l.contains("remaining=1") && l.contains("remaining=0"),
        "{l}"
    );
    assert!(
        l.contains("all=hook.test,*.hook.test") || l.contains("all=*.hook.test,hook.test"),
        "{l}"
    );
    assert!(l.contains("edge=_acme-challenge.hook.test."), "{l}");
    assert!(
        l.contains("cleanup hook.test output=added-hook.test"),
        "{l}"
    );
    assert!(state(&dir).join("live/hook.test/fullchain.pem").exists());

    // A failing hook: a clear error naming the hook and its stderr.
    let bad = hookdir.path().join("bad.sh");
    std::fs::write(&bad, "#!/bin/sh\necho 'zone is locked' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (_d2, cfg2) = acme_config(
        &p,
        &format!("provider = \"exec\"\ncommand = \"{}\"", bad.display()),
        "",
    );
    let o = edge(&["obtain", "-d", "bad.test"], &cfg2);
    let t = text(&o);
    assert!(!o.status.success());
    assert!(
        t.contains("bad.sh") && t.contains("status 3") && t.contains("zone is locked"),
        "{t}"
    );
}

#[test]
fn renew_skips_when_not_due_forces_and_keeps_old_files_on_failure() {
    // No authorization reuse: the failing renewal below must really need DNS.
    let p = Pebble::start_env(3600, &[("PEBBLE_AUTHZREUSE", "0")]);
    let (dir, cfg) = acme_config(&p, &p.challtestsrv_dns(), "");
    assert!(edge(&["obtain", "-d", "flask.test"], &cfg).status.success());
    let live = state(&dir).join("live/flask.test");
    let first = serial_of(&live.join("cert.pem"));

    let o = edge(&["renew"], &cfg);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("flask.test: not due until"),
        "{}",
        text(&o)
    );
    assert_eq!(serial_of(&live.join("cert.pem")), first);

    let o = edge(&["renew", "--force"], &cfg);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("flask.test: renewed"), "{}", text(&o));
    let second = serial_of(&live.join("cert.pem"));
    assert_ne!(first, second);
    let archive = state(&dir).join("archive/flask.test");
    assert_eq!(serial_of(&archive.join("cert1.pem")), first);
    assert_eq!(serial_of(&archive.join("cert2.pem")), second);

    // A renewal whose TXT record never appears: exit non-zero, live/ untouched.
    let noop = dir.path().join("noop.sh");
    std::fs::write(&noop, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&noop, std::fs::Permissions::from_mode(0o755)).unwrap();
    let broken = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            &p.challtestsrv_dns(),
            &format!("provider = \"exec\"\ncommand = \"{}\"", noop.display()),
        )
        .replace(
            "propagation_timeout = \"20s\"",
            "propagation_timeout = \"1s\"",
        );
    std::fs::write(&cfg, broken).unwrap();
    // A fresh account, so Pebble has no valid authorization to hand back: even
    // with PEBBLE_AUTHZREUSE=0 it reuses one 1% of the time (it reuses unless
    // rand.Intn(100) > 0), and this renewal then succeeded without DNS.
    std::fs::remove_dir_all(state(&dir).join("accounts")).unwrap();
    let before: Vec<Vec<u8>> = ["fullchain.pem", "privkey.pem", "cert.pem", "chain.pem"]
        .iter()
        .map(|f| std::fs::read(live.join(f)).unwrap())
        .collect();
    let o = edge(&["renew", "--force", "--domain", "flask.test"], &cfg);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("flask.test: FAILED") && t.contains("did not appear"),
        "{t}"
    );
    let after: Vec<Vec<u8>> = ["fullchain.pem", "privkey.pem", "cert.pem", "chain.pem"]
        .iter()
        .map(|f| std::fs::read(live.join(f)).unwrap())
        .collect();
    assert_eq!(before, after, "a failed renewal changed live/");
    // The failure is remembered: a plain `edge renew` now backs off.
    let o = edge(&["renew"], &cfg);
    assert!(
        text(&o).contains("flask.test: last attempt failed; backing off until"),
        "{}",
        text(&o)
    );
    let c = edge(&["certs"], &cfg);
    assert!(text(&c).contains("Last error"), "{}", text(&c));
}

#[test]
fn bad_input_gets_clear_errors() {
    let p = Pebble::start();
    let (_dir, cfg) = acme_config(&p, &p.challtestsrv_dns(), "");
    for (name, needle) in [
        ("1.2.3.4", "IP address"),
        ("../etc.test", "path separator"),
        ("a_b.test", "letters, digits"),
        ("localhost", "single label"),
    ] {
        let o = edge(&["obtain", "--domain", name], &cfg);
        assert_eq!(o.status.code(), Some(1));
        assert!(text(&o).contains(needle), "{name}: {}", text(&o));
    }
    // Unreachable directory.
    let dead = free_port();
    let t = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&p.directory, &format!("https://127.0.0.1:{dead}/dir"));
    let (_d2, cfg2) = config(t.split_once('\n').unwrap().1);
    let o = edge(&["obtain", "--domain", "x.test"], &cfg2);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("cannot reach the ACME directory")
            && text(&o).contains(&dead.to_string()),
        "{}",
        text(&o)
    );
    // A ca_bundle that does not hold Pebble's root.
    let (other_ca, _, _) = test_ca_and_leaf(&["x"], &[]);
    let wrong = p.dir.path().join("wrong-ca.pem");
    std::fs::write(&wrong, other_ca).unwrap();
    let t = std::fs::read_to_string(&cfg).unwrap().replace(
        &p.ca_bundle.display().to_string(),
        &wrong.display().to_string(),
    );
    let (_d3, cfg3) = config(t.split_once('\n').unwrap().1);
    let o = edge(&["obtain", "--domain", "x.test"], &cfg3);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("invalid peer certificate") && text(&o).contains("acme.ca_bundle"),
        "{}",
        text(&o)
    );
    // A ca_bundle that is not a certificate at all.
    std::fs::write(&wrong, "hello").unwrap();
    let o = edge(&["obtain", "--domain", "x.test"], &cfg3);
    assert!(
        text(&o).contains("acme.ca_bundle") && text(&o).contains("no PEM certificate"),
        "{}",
        text(&o)
    );
}

/// A tiny ACME directory double that offers `renewalInfo`, which Pebble 2.4 does
/// not. It answers just enough (directory, nonce, account) for edge to ask for
/// the ARI window, and records the payload of any new-order request. It is a
/// stand-in for a CA feature, not for a CA: the order flow itself is tested
/// against Pebble above.
struct AriDouble {
    url: String,
    orders: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

fn ari_double(window: (i64, i64)) -> AriDouble {
    use base64::Engine;
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let orders = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (b, o) = (base.clone(), orders.clone());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let (status, extra, resp) = match path.as_str() {
                "/dir" => (
                    "200 OK",
                    String::new(),
                    serde_json::json!({
                        "newNonce": format!("{b}/nonce"), "newAccount": format!("{b}/acct"),
                        "newOrder": format!("{b}/order"), "renewalInfo": format!("{b}/renewal-info")
                    })
                    .to_string(),
                ),
                "/nonce" => ("200 OK", String::new(), String::new()),
                "/acct" => (
                    "201 Created",
                    format!("Location: {b}/acct/1\r\n"),
                    "{\"status\":\"valid\"}".into(),
                ),
                p if p.starts_with("/renewal-info/") => (
                    "200 OK",
                    "Retry-After: 3600\r\n".into(),
                    serde_json::json!({
                        "suggestedWindow": {"start": time_fmt(window.0), "end": time_fmt(window.1)}
                    })
                    .to_string(),
                ),
                "/order" => {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let payload = v["payload"].as_str().unwrap_or("");
                    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(payload)
                        .unwrap_or_default();
                    o.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&decoded).into_owned());
                    ("403 Forbidden", String::new(), "{\"type\":\"urn:ietf:params:acme:error:unauthorized\",\"detail\":\"the ARI double issues no certificates\"}".into())
                }
                _ => ("404 Not Found", String::new(), String::new()),
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nReplay-Nonce: n{}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{resp}",
                rand_nonce(),
                resp.len()
            );
        }
    });
    AriDouble {
        url: format!("{base}/dir"),
        orders,
    }
}

fn rand_nonce() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn time_fmt(t: i64) -> String {
    let o = Command::new("date")
        .args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A certificate with an Authority Key Identifier (so it has an ARI id), stored
/// as lineage `ari.test`; its lifetime alone would make it due in centuries.
fn store_ari_cert(state: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["ari.test".to_string()]).unwrap();
    p.use_authority_key_identifier_extension = true;
    let cert = p.signed_by(&key, &issuer).unwrap();
    let live = state.join("live/ari.test");
    std::fs::create_dir_all(&live).unwrap();
    std::fs::write(live.join("fullchain.pem"), cert.pem()).unwrap();
    std::fs::write(live.join("privkey.pem"), key.serialize_pem()).unwrap();
}

fn ari_config(url: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let (dir, cfg) = config(&format!(
        "{}[acme]\ndirectory = \"{url}\"\n[dns]\nprovider = \"pebble-challtestsrv\"\nurl = \"http://127.0.0.1:9\"\n{}",
        listen_any(),
        site(&["ari.test"], &["127.0.0.1:9".to_string()])
    ));
    store_ari_cert(&state(&dir));
    (dir, cfg)
}

#[test]
fn ari_window_in_the_future_sets_the_due_time() {
    let now = rand_nonce() as i64 / 1_000_000_000;
    let (start, end) = (now + 3600, now + 7200);
    let double = ari_double((start, end));
    let (_dir, cfg) = ari_config(&double.url);
    let o = edge(&["renew"], &cfg);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let line = t
        .lines()
        .find(|l| l.starts_with("ari.test: not due until "))
        .unwrap_or_else(|| panic!("{t}"));
    let when = line
        .trim_start_matches("ari.test: not due until ")
        .split(';')
        .next()
        .unwrap();
    assert!(
        when >= time_fmt(start).as_str() && when <= time_fmt(end).as_str(),
        "{when} not in the window: {t}"
    );
    // The point is kept: a second run reports the same time.
    let t2 = text(&edge(&["renew"], &cfg));
    assert!(t2.contains(line), "{t2}");
    assert!(double.orders.lock().unwrap().is_empty());
}

#[test]
fn ari_window_in_the_past_renews_and_sends_replaces() {
    let now = rand_nonce() as i64 / 1_000_000_000;
    let double = ari_double((now - 7200, now - 3600));
    let (_dir, cfg) = ari_config(&double.url);
    let o = edge(&["renew"], &cfg);
    let t = text(&o);
    // The double refuses to issue, so the renewal fails; what matters is that it was attempted with `replaces`.
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("ari.test: FAILED") && t.contains("ARI double issues no certificates"),
        "{t}"
    );
    // The order as a replacement first; refused, the same order without
    // `replaces` (a renewal must not fail on it, RFC 9773).
    let orders = double.orders.lock().unwrap();
    assert_eq!(orders.len(), 2, "{t}");
    assert!(orders[0].contains("\"replaces\""), "{}", orders[0]);
    assert!(!orders[1].contains("\"replaces\""), "{}", orders[1]);
    assert!(t.contains("ordering without `replaces`"), "{t}");
}

/// External Account Binding against a Pebble that requires it.
#[test]
fn external_account_binding() {
    use base64::Engine;
    let hmac = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(b"edge-test-eab-hmac-key-0123456789");
    // Pebble's config is patched to require EAB before Pebble reads it.
    let p = Pebble::start_patched(&|cfg: &mut serde_json::Value| {
        cfg["pebble"]["externalAccountBindingRequired"] = true.into();
        cfg["pebble"]["externalAccountMACKeys"] = serde_json::json!({ "kid-edge": hmac });
    });
    let (_d, cfg) = acme_config(&p, &p.challtestsrv_dns(), "");
    // Without EAB: refused, and the error says so.
    let o = edge(&["obtain", "-d", "eab.test"], &cfg);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("External Account Binding") && text(&o).contains("[acme] eab"),
        "{}",
        text(&o)
    );
    let with = std::fs::read_to_string(&cfg).unwrap().replace(
        "ca_bundle =",
        &format!("eab = {{ kid = \"kid-edge\", hmac = \"{hmac}\" }}\nca_bundle ="),
    );
    std::fs::write(&cfg, with).unwrap();
    let o = edge(&["obtain", "-d", "eab.test"], &cfg);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains(&hmac), "the EAB HMAC was printed");
}
